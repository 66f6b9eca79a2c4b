"""The MCP proxy: corral's gateway in front of MCP servers, with no change to the client or
the servers. Both sides are the official ``mcp`` SDK: upstreams are ``mcp.Client``s (each
negotiates its own protocol era: it probes ``server/discover`` and falls back to
``initialize``), and the downstream side is an ``mcp`` low-level ``Server`` (which speaks
both eras to clients).

- ``tools/list`` offers the upstream tools the policy allows, named ``<server>.<tool>``,
  whose definitions match their pins (:mod:`corral.mcp.pins`); the listing depends on who
  asks, so it is marked private and never cacheable.
- ``tools/call`` is a governed call of the session's run (each downstream session is a run,
  with budgets, stop reasons and a run id in ``corral runs``; over stdio the session is the
  connection, over streamable HTTP its ``Mcp-Session-Id``): ``AsyncRun.authorize``
  (kill switch, allowlist, arguments and constraints, loop detection, degrade, budgets,
  approval, idempotency), then the upstream call, then ``report`` (settlement, output checks
  and hygiene, audit) — the same chain as an in-process call. A result with ``isError`` is
  the tool's answer, passed on; a call that fails (a timeout, the server gone) is the tool
  failing, as in-process (``tool_error`` after the tool's retries). A refusal or a stop reaches
  the client as a tool error result (``isError: true``) with a readable text
  (``tool_denied:git.git_reset (not_allowed)``); the proxy itself never fails on one.
- A write that needs approval is held until it is decided; a 2026-07-28 client is answered
  ``input_required`` instead, and its retry runs the write once approved
  (:mod:`corral.mcp.deferred`).
- An upstream that cannot be reached at start is left out (its tools are not offered; the
  others are served); one that fails a call fails that call (the breaker and retry budget
  of the tool count it).

Its parts: :mod:`.upstreams` (the servers behind and their tools), :mod:`.sessions` (which
session a request is), :mod:`.watch` (calls in flight under the kill switch), :mod:`.results`
(what a client is answered), :mod:`.stdio` (the stdio transport ``corral mcp serve`` uses).

Imports the loop's ``AsyncRun``, the policy, the stores and the ``mcp`` SDK.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from corral._version import __version__
from corral.exceptions import ConfigError, Stop, ToolRejected
from corral.gateway.guards.killswitch import Cancelled
from corral.loop.base import MAX_KEY_CHARS
from corral.loop.run import AsyncRun
from corral.loop.tickets import Ticket
from corral.mcp import deferred
from corral.mcp.definitions import mcp_tool
from corral.mcp.pins import Change, Pins
from corral.mcp.queue import queue
from corral.mcp.results import error, result, stop_text, stopped
from corral.mcp.sessions import connection_of, session_of
from corral.mcp.upstreams import Listed, Upstream, list_tools
from corral.mcp.watch import Watch
from corral.policy.schema import Policy
from corral.stores.base import Store

log = logging.getLogger("corral")

#: How long an upstream may take to connect or list its tools (seconds).
UPSTREAM_SECONDS = 10.0
#: How long a session may go without a request before it is ended, with its run (seconds;
#: the SDK's own default for streamable HTTP sessions: 30 minutes).
IDLE_SECONDS = 1800.0
#: Where a client puts its own idempotency key for a write: the request's ``_meta``.
KEY_META = "io.corral/idempotency-key"

__all__ = ["IDLE_SECONDS", "KEY_META", "Proxy", "Upstream", "session_of", "stop_text"]


class Proxy:
    """The upstreams, the tools they offer, and a governed run per downstream session."""

    def __init__(
        self,
        policy: Policy,
        upstreams: Sequence[Upstream],
        *,
        store: Store,
        pins: Pins | None = None,
        tenant: str | None = None,
        agent: str | None = None,
        idle_seconds: float | None = IDLE_SECONDS,
        input_required: bool = True,
    ) -> None:
        names = [u.name for u in upstreams]
        if idle_seconds is not None and not idle_seconds > 0:
            raise ConfigError(f"idle_seconds must be positive (or None), got {idle_seconds!r}")
        if len(set(names)) != len(names):
            raise ConfigError(f"two upstreams share a name: {', '.join(sorted(names))}")
        for name in names:
            if not name or "." in name:
                raise ConfigError(f"an upstream's name must be non-empty, without dots: {name!r}")
        self.policy = policy
        self.upstreams = {u.name: u for u in upstreams}
        self.store = store
        self.pins = pins if pins is not None else Pins()
        self.tenant = tenant
        self.agent = agent
        self.clients: dict[str, Client] = {}
        self.listed: dict[str, Listed] = {}
        self._governed: tuple[dict[str, Listed], list[Any]] | None = None  # _tools()
        self._runs: dict[str, AsyncRun] = {}
        self._ended: dict[str, Stop] = {}  # the stop of each session whose run stopped
        self._queued: set[tuple[str, str]] = set()  # the definition changes queued already
        self._used: dict[str, float] = {}  # when each session last asked (monotonic)
        self._busy: dict[str, int] = {}  # each session's calls in flight
        self._connections = 0  # sessions named after their connection (stdio, in memory)
        self._named: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._stack = contextlib.AsyncExitStack()
        self._state_key = os.urandom(32)  # seals requestState (this process only)
        self._group: Any = None  # the idle sessions' reaper and the calls' watch
        self._watch = Watch()
        #: How long a session may go without a request before its run is ended (seconds;
        #: None: never). Streamable HTTP sessions with an ``Mcp-Session-Id`` are ended by the
        #: SDK's session manager (give it the same value); stateless clients by the proxy.
        self.idle_seconds = idle_seconds
        #: How long an upstream may take to answer anything but a tool call (connecting,
        #: listing): past it, it is left out (seconds).
        self.timeout = UPSTREAM_SECONDS
        #: Whether a 2026-07-28 client's write that needs approval is answered
        #: ``input_required`` (False: held, as for 2025-11-25 clients).
        self.input_required = input_required

    # -- upstreams ------------------------------------------------------------------------
    async def __aenter__(self) -> Proxy:
        await self._stack.__aenter__()
        for upstream in self.upstreams.values():
            try:
                client = Client(upstream.target, cache=None, read_timeout_seconds=self.timeout)
                self.clients[upstream.name] = await self._stack.enter_async_context(client)
            except Exception as exc:  # left out: the others are served
                log.warning("MCP upstream %s cannot be reached: %s", upstream.name, exc)
        await self.refresh()
        self._group = await self._stack.enter_async_context(anyio.create_task_group())
        self._group.start_soon(self._watch.run)
        if self.idle_seconds is not None:
            self._group.start_soon(self._reap, self.idle_seconds)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._group is not None:
            self._group.cancel_scope.cancel()
        for run in list(self._runs.values()):
            with contextlib.suppress(Exception):
                await self._end(run)
        self._runs.clear()
        await self._stack.__aexit__(None, None, None)

    async def refresh(self) -> None:
        """List every upstream's tools again (a server may change them at any time), and
        read the lock file again if an operator changed it."""
        self.pins.reload()
        self.listed = await list_tools(self.clients)

    def offered(self) -> list[types.Tool]:
        """The tools a client is offered: allowed, and as pinned."""
        allowed = set(self.policy.tools.allow)
        out = []
        for name, entry in sorted(self.listed.items()):
            if name not in allowed or self.pinned(name, entry) is not None:
                continue
            out.append(entry.tool.model_copy(update={"name": name}))
        return out

    def pinned(self, name: str, entry: Listed) -> Change | None:
        """None when tool ``name``'s definition matches its pin; else the change, queued
        for an operator (once per tool and digest: :mod:`corral.mcp.queue`)."""
        change = self.pins.check(name, entry.digest, entry.wire)
        if change is None or (name, change.seen) in self._queued:
            return change
        self._queued.add((name, change.seen))
        try:
            queue(
                self.store,
                name=name,
                server=entry.upstream,
                tool=entry.tool.name,
                pinned=change.pinned,
                digest=change.seen,
                definition=entry.wire,
                pinned_definition=change.pinned_definition,
            )
        except Exception as exc:  # the tool stays hidden and denied; queued at its next sight
            self._queued.discard((name, change.seen))
            log.warning("the definition change of %s cannot be queued: %s", name, exc)
        return change

    # -- runs -----------------------------------------------------------------------------
    def _tools(self) -> list[Any]:
        """Every listed tool, for the run: the allowlist guard refuses the ones the policy
        does not allow (``not_allowed``), as in-process. Built once per listing (their
        argument validators compiled once), shared by the runs started on it."""
        listed = self.listed
        if self._governed is None or self._governed[0] is not listed:
            tools = [mcp_tool(name, entry.tool, self.policy) for name, entry in listed.items()]
            self._governed = (listed, tools)
        return list(self._governed[1])

    async def run_of(self, session: str) -> AsyncRun:
        """The run of a downstream session (started on its first call)."""
        key = session
        run = self._runs.get(key)
        if run is None:
            run = AsyncRun(
                self.policy,
                tools=self._tools(),
                store=self.store,
                tenant=self.tenant,
                agent=self.agent,
                task="MCP session",
            )
            await run.__aenter__()
            self._runs[key] = run
        return run

    async def end_session(self, session: str) -> None:
        """End a session's run (``ok``, or the stop it had): its client closed it (an HTTP
        ``DELETE``, a stdio pipe closed), or it went idle."""
        self._ended.pop(session, None)
        self._used.pop(session, None)
        run = self._runs.pop(session, None)
        if run is not None:
            try:
                await self._end(run)
            except Exception as exc:  # the store: said, and the proxy serves on
                log.warning(
                    "MCP session %s: its run %s did not end cleanly: %s", session, run.id, exc
                )

    async def _reap(self, idle: float) -> None:
        """End the runs of sessions no request came from for ``idle`` seconds."""
        while True:
            await anyio.sleep(min(idle / 4, 5.0))
            now = anyio.current_time()
            for session, used in list(self._used.items()):
                if session.startswith("stdio:"):
                    continue  # a stdio session lasts as long as its pipe
                if now - used >= idle and not self._busy.get(session):
                    log.info("MCP session %s idle for %.0f s: its run ends", session, now - used)
                    await self.end_session(session)

    def _ends_with(self, ctx: ServerRequestContext[Any], session: str) -> None:
        """End ``session``'s run when its connection closes (a stdio client gone, an HTTP
        session deleted or timed out); stateless clients' connections last one request,
        their runs end when idle."""
        connection = connection_of(ctx)
        if connection is None or session.startswith("client:"):
            return
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return  # a connection per request: the run ends with the proxy, or when idle
        if connection.state.get("corral.ends") != session:
            connection.state["corral.ends"] = session
            connection.exit_stack.push_async_callback(self.end_session, session)

    def session_for(self, ctx: ServerRequestContext[Any]) -> str:
        """The session (run) a request belongs to: :func:`session_of`, and for a connection
        with no name of its own (stdio, in memory) a name per connection."""
        session = session_of(ctx)
        if session != "stdio":
            return session
        connection = connection_of(ctx)
        # The stream the requests come on: a 2026-07-28 stream serves each request on a
        # connection of its own, all sharing the stream's outbound channel.
        stream = getattr(connection, "outbound", None)
        if stream is None:
            return session
        named = self._named.get(stream)
        if named is None:
            self._connections += 1
            named = self._named[stream] = f"stdio:{self._connections}"
        return named

    async def _end(self, run: AsyncRun, stop: Stop | None = None) -> None:
        if stop is not None:
            await run.__aexit__(Stop, stop, None)
        else:
            with contextlib.suppress(Stop):
                await run.finish(None)

    # -- a call ---------------------------------------------------------------------------
    async def call(
        self,
        session: str,
        name: str,
        arguments: Mapping[str, Any] | None,
        *,
        key: Any = None,
        attributes: Mapping[str, str] | None = None,
        defer: bool = False,
        state: str | None = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """A client's ``tools/call``, governed (see the module docstring). ``key`` is the
        client's own idempotency key for a write (``_meta["io.corral/idempotency-key"]``);
        ``attributes`` go on the call's ``execute_tool`` span. With ``defer`` (a 2026-07-28
        client) a write that needs approval is answered ``input_required`` rather than held,
        and ``state`` is the (unsealed) state of a retry (:mod:`corral.mcp.deferred`)."""
        self._used[session] = anyio.current_time()
        self._busy[session] = self._busy.get(session, 0) + 1
        try:
            return await self._call(session, name, arguments, key, attributes, defer, state)
        finally:
            left = self._busy[session] = self._busy[session] - 1
            if not left:
                del self._busy[session]
            if session in self._runs or session in self._ended:
                self._used[session] = anyio.current_time()

    async def _call(
        self,
        session: str,
        name: str,
        arguments: Mapping[str, Any] | None,
        key: Any,
        attributes: Mapping[str, str] | None,
        defer: bool = False,
        state: str | None = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        ended = self._ended.get(session)
        if ended is not None:  # every later call of the session: the stop that ended its run
            return stopped(ended)
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS):
            return error(
                stop_text(
                    f"invalid_tool_args:{name}",
                    "idempotency_key",
                    f"_meta[{KEY_META!r}] must be text of 1 to {MAX_KEY_CHARS} characters",
                )
            )
        run = await self.run_of(session)
        entry = self.listed.get(name)
        if entry is not None:
            self.pins.reload()  # an operator may have approved it since
            change = self.pinned(name, entry) if name in self.policy.tools.allow else None
            if change is not None:
                why = "definition_changed" if change.pinned else "definition_not_pinned"
                return error(
                    stop_text(
                        f"tool_denied:{name}",
                        why,
                        "the server's definition of this tool is not the one approved; "
                        "an operator must review it (corral mcp diff) and approve it "
                        "(corral mcp approve-definition)",
                    )
                )
        if entry is not None:
            attributes = {
                **(attributes or {}),
                "mcp.server": entry.upstream,
                "mcp.tool": entry.tool.name,
            }
        try:
            if defer:
                args = dict(arguments or {})
                if state is None:
                    pending = deferred.ask(run, session, name, args)
                else:
                    pending = deferred.resume(run, session, name, args, state)
                if pending is not None:
                    if pending.result is not None:
                        return pending.result
                    return error(pending.refused or "")
            ticket = await run.authorize(
                name, dict(arguments or {}), idempotency_key=key, attributes=attributes
            )
            if ticket.replayed:
                return result(ticket.output)
            try:
                return await self._execute(run, entry, ticket)
            except anyio.get_cancelled_exc_class():
                # The client left mid-call (its pipe or connection closed) or the proxy is
                # stopping: the call is reported cancelled (a write's claim is left unknown:
                # it may have happened, and it is never run again), the run stops.
                with anyio.CancelScope(shield=True):
                    await self._left(session, run, name, ticket)
                raise
        except ToolRejected as rejected:
            return error(stop_text(f"{rejected.reason}:{name}", rejected.detail, rejected.message))
        except Stop as stop:
            self._runs.pop(session, None)
            self._ended[session] = stop
            await self._end(run, stop)
            return stopped(stop)

    async def _left(self, session: str, run: AsyncRun, name: str, ticket: Ticket) -> None:
        stop = Stop("cancelled", "run", message=f"the client left during a call of {name}")
        try:
            await run.report_failure(ticket, Cancelled(stop))
        except Stop as raised:
            stop = raised
        except Exception as exc:  # the store: said; the run still ends
            log.warning("MCP session %s: the call left behind was not recorded: %s", session, exc)
        self._runs.pop(session, None)
        self._ended[session] = stop
        with contextlib.suppress(Exception):
            await self._end(run, stop)

    async def _execute(
        self, run: AsyncRun, entry: Listed | None, ticket: Ticket
    ) -> types.CallToolResult:
        assert entry is not None  # authorize allows only tools the run was given
        client = self.clients[entry.upstream]
        try:
            with anyio.fail_after(max(ticket.timeout, 0.001)):
                answer, killed = await self._watch.call(
                    ticket,
                    lambda: client.call_tool(
                        entry.tool.name,
                        dict(ticket.arguments),
                        read_timeout_seconds=max(ticket.timeout, 0.001) + 1.0,
                    ),
                )
        except TimeoutError as exc:
            observed = await run.report_failure(ticket, exc, timed_out=True)
            return error(str(observed))
        except Exception as exc:
            observed = await run.report_failure(ticket, exc)
            return error(str(observed))
        if killed is not None:  # a stop_all switch: the call was cancelled in flight
            observed = await run.report_failure(ticket, killed)  # raises the run's stop
            return error(str(observed))
        # An error result is the tool's answer (MCP: "so the model can see it and correct
        # itself"), checked and passed on like any output; a call that fails (the server
        # gone, a timeout) is the tool failing, as in-process: the run stops (tool_error).
        assert answer is not None  # killed is None: the call returned
        wire = answer.model_dump(mode="json", by_alias=True, exclude_none=True)
        wire.pop("resultType", None)
        observed = await run.report(ticket, wire)
        return result(observed)

    # -- the downstream server ------------------------------------------------------------
    def server(self) -> Server[Any]:
        """The MCP server clients talk to."""

        async def list_tools(
            ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            await self.refresh()
            return types.ListToolsResult(tools=self.offered(), ttl_ms=0, cache_scope="private")

        async def call_tool(
            ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult | types.InputRequiredResult:
            session = self.session_for(ctx)
            self._ends_with(ctx, session)
            meta = ctx.meta or {}
            connection = connection_of(ctx)
            attributes = {
                "mcp.method": ctx.method,
                "mcp.protocol.version": ctx.protocol_version,
                "mcp.session.id": (connection.session_id if connection else None) or session,
            }
            return await self.call(
                session,
                params.name,
                params.arguments,
                key=meta.get(KEY_META),
                attributes=attributes,
                defer=self.input_required and ctx.protocol_version in MODERN_PROTOCOL_VERSIONS,
                state=params.request_state,
            )

        server: Server[Any] = Server(
            "corral-mcp",
            version=__version__,
            instructions="MCP servers governed by corral: every tool call is checked, "
            "budgeted, approved where needed and audited.",
            on_list_tools=list_tools,
            on_call_tool=call_tool,
        )
        # 2026-07-28 ``requestState`` (approvals answered ``input_required``): sealed by the
        # SDK under this proxy's key, bound to the tool, the exact arguments and the
        # requester (the session), and valid while an approval may be decided.
        security = RequestStateSecurity(
            keys=[self._state_key],
            ttl=self.policy.writes.approval_timeout_seconds + 60.0,
            bind_principal=self.session_for,
        )
        server.middleware.append(RequestStateBoundary(security, default_audience="corral-mcp"))
        return server
