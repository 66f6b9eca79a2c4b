"""Runs held elsewhere, behind any load balancer: a request for a run another replica holds
is passed on to that replica, and a run whose replica is gone is taken over.

A run an agent drives over HTTP lives in the replica that started it (its counters, loop
detector, read cache and open tickets are in that process; everything shared is in the
store). The run's record names that replica's address (``served_by``, the address it
advertises). A request reaching another replica — a round-robin balancer, a client that
reconnected — is relayed to the holder, once (a relayed request carries
:data:`RELAYED`, and is never relayed again), and the holder's answer is returned as it is
(also for a run that ended lately: the holder remembers its result).

When the holder cannot be reached, the run is taken over if its holder is known to be gone:
on the same node, its process no longer exists; elsewhere, its heartbeat (renewed by every
write, and by the holder's sweeper while the run is idle) is older than ``takeover_after``
seconds. Taking over is one conditional write (:meth:`~corral.stores.base.RunStore.take_run`:
of the replicas trying at once, one wins; the others relay to it); the run is then resumed
here from its record and events (its usage counted from what its calls recorded), under the
policy with its digest. What was open in the lost replica does not come back: a ticket it
authorized is unknown here (its hold is settled by the store's lease reclaim, a write's
claim resolved as the store resolves a claim whose holder died). A holder that cannot be
reached but may still be alive is never taken from: the request is answered 503
``run_holder_unreachable``, retryable.

Imports the server's runs and errors, the stores' owner, httpx.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.server.errors import answer_for, error, http_answer
from corral.server.runs import Runs
from corral.stores.base import RunRecord
from corral.stores.owner import interruption

log = logging.getLogger("corral.server")

#: The header a relayed request carries (the relaying replica's address).
RELAYED = "corral-relayed-by"
#: A holder whose heartbeat is older than this (seconds) is gone, unless its node's
#: process table says otherwise.
TAKEOVER_AFTER = 90.0
#: How long a relayed request may take (an authorize may be held up to 60 s).
RELAY_SECONDS = 120.0
#: The headers that are the connection's own, not the request's (RFC 9110, 7.6.1).
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)
_PREFIX = "/v1/runs/"


class Relay:
    """ASGI middleware: requests under ``/v1/runs/{id}/`` for a run this replica does not
    hold go to the replica that does (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        runs: Runs,
        address: str,
        takeover_after: float = TAKEOVER_AFTER,
        timeout: float = RELAY_SECONDS,
    ) -> None:
        self.app = app
        self.runs = runs
        self.address = address.rstrip("/")
        self.takeover_after = takeover_after
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        run_id = _run_of(scope)
        if run_id is None or self.runs.holds(run_id) or _header(scope, RELAYED) is not None:
            await self.app(scope, receive, send)
            return
        try:
            await self._route(scope, receive, send, run_id)
        except Exception as exc:  # outside the app's handlers: answered in the one shape here
            answer = answer_for(exc)
            if answer is None:
                raise
            await answer(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send, run_id: str) -> None:
        record = await run_in_threadpool(self.runs.store.get_run, run_id)
        holder = None if record is None else record.served_by
        if record is None or holder is None:
            await self.app(scope, receive, send)  # not found, or not a served run
            return
        running = record.status in ("running", "interrupted")
        if not running and holder == self.address:
            await self.app(scope, receive, send)  # ended here, and forgotten since
            return
        try:
            body = await _body(receive)
        except HTTPException as exc:  # too large, too slow (errors.BodyCap)
            await http_answer(exc)(scope, receive, send)
            return
        replay = _replayed(body, receive)
        if holder != self.address:
            answer = await self._relay(scope, holder, body)
            if answer is not None:
                await answer(scope, replay, send)
                return
            if not running:  # ended, by a holder gone since: answered from the store here
                await self.app(scope, replay, send)
                return
            if not await self._gone(record):
                message = (
                    f"run {run_id!r} is held by {holder}, which does not answer and may still "
                    "be running it: try again shortly"
                )
                await error(503, "run_holder_unreachable", message, **{"Retry-After": "5"})(
                    scope, replay, send
                )
                return
        await self._take_over(scope, replay, send, record, body)

    # -- relay ----------------------------------------------------------------------------
    async def _relay(self, scope: Scope, holder: str, body: bytes) -> Any:
        """The holder's answer to the request, or None when it cannot be reached."""
        client = self._client
        if client is None:
            client = self._client = httpx.AsyncClient(timeout=self.timeout)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP]
        headers.append((RELAYED.encode(), self.address.encode()))
        query = scope.get("query_string", b"").decode("latin-1")
        url = holder + scope["path"] + (f"?{query}" if query else "")
        try:
            got = await client.request(scope["method"], url, headers=headers, content=body)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            return None
        except httpx.HTTPError as exc:
            return error(502, "relay_failed", f"the replica holding the run failed: {exc!r}")
        return _Answer(got.status_code, got.headers.multi_items(), got.content)

    async def _gone(self, record: RunRecord) -> bool:
        """Whether the run's holder is known to be gone (never a guess: see the module
        docstring)."""
        if record.status == "interrupted":
            return True
        why = interruption(
            record.owner,
            heartbeat_at=record.heartbeat_at,
            now=time.time(),
            lease=self.takeover_after,
        )
        return why is not None

    # -- take over ------------------------------------------------------------------------
    async def _take_over(
        self, scope: Scope, receive: Receive, send: Send, record: RunRecord, body: bytes
    ) -> None:
        """Hold the run here (resumed from the store) and answer the request; when another
        replica took it first, relay to that one."""
        taken = await self.runs.take_over(record, self.address)
        if taken is None:
            again = await run_in_threadpool(self.runs.store.get_run, record.id)
            holder = None if again is None else again.served_by
            if holder is not None and holder != self.address:
                answer = await self._relay(scope, holder, body)
                if answer is not None:
                    await answer(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()


class _Answer:
    """The holder's answer, sent on as it came (but for the connection's own headers)."""

    def __init__(self, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in headers
            if k.lower().encode("latin-1") not in _HOP
        ]
        self.headers.append((b"content-length", str(len(body)).encode()))
        self.body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def _run_of(scope: Scope) -> str | None:
    """The run id of a request about one run (``/v1/runs/{id}`` and below), else None."""
    if scope["type"] != "http":
        return None
    path: str = scope["path"]
    if not path.startswith(_PREFIX):
        return None
    run_id = path[len(_PREFIX) :].split("/", 1)[0]
    return run_id or None


def _header(scope: Scope, name: str) -> bytes | None:
    wanted = name.encode()
    for key, value in scope.get("headers") or ():
        if key.lower() == wanted:
            return bytes(value)
    return None


async def _body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def _replayed(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then what the connection says."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
