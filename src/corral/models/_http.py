"""The model adapters' one HTTP seam: POST JSON, retry what may be retried, within the deadline.

Retried: connection failures, timeouts, and responses 408, 409, 429, 5xx and 529
(the provider refused or failed the request). Each retry must be allowed by the
adapter's :class:`RetryBudget` (retries at most ~20% of requests, with a small
floor, so a failing endpoint does not get its load multiplied) and must fit
before the request's deadline: a ``Retry-After`` (or ``retry-after-ms``) is
honoured, but a wait longer than ``max_retry_after`` or past the deadline ends
the call with the last error instead. Anything else (a 400, a 401) is not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from corral.models.base import ModelOutputError

if TYPE_CHECKING:
    import httpx

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
#: Below this many seconds left, another attempt is not started.
MIN_ATTEMPT_SECONDS = 0.01
#: How long one attempt may take when neither the request nor the policy bounds it.
NO_DEADLINE_SECONDS = 600.0


class ModelAPIError(Exception):
    """The model endpoint failed: an HTTP error status, a timeout or a broken connection.

    ``status`` is the HTTP status (``None`` when no response came), ``attempts`` how
    many requests were made, ``retry_after`` the wait the endpoint asked for, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts
        self.retry_after = retry_after


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How an adapter retries one call.

    ``max_attempts`` counts the first request. Backoff is exponential with full
    jitter, from ``backoff`` seconds up to ``max_backoff``. ``attempt_timeout``
    bounds each attempt (else the whole deadline is one attempt's to use, or 600 s
    when the request has no deadline).
    """

    max_attempts: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 30.0
    attempt_timeout: float | None = None
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")


class RetryBudget:
    """Retries allowed over a sliding window: ``ratio`` of the requests, plus ``min_retries``.

    Shared by every call of one adapter, across threads: while an endpoint fails,
    the retries it gets stay a bounded fraction of the traffic.
    """

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_retries: int = 3,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.min_retries = min_retries
        self.window = window
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()
        self._lock = threading.Lock()

    def _trim(self, now: float) -> None:
        for q in (self._requests, self._retries):
            while q and q[0] <= now - self.window:
                q.popleft()

    def request(self) -> None:
        """Count a first attempt."""
        with self._lock:
            now = self._clock()
            self._trim(now)
            self._requests.append(now)

    def try_retry(self) -> bool:
        """Take one retry from the budget; ``False`` when it is spent."""
        with self._lock:
            now = self._clock()
            self._trim(now)
            if len(self._retries) >= self.min_retries + self.ratio * len(self._requests):
                return False
            self._retries.append(now)
            return True


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms``, ``Retry-After`` seconds or date)."""
    ms = response.headers.get("retry-after-ms")
    if ms is not None:
        with contextlib.suppress(ValueError):  # not a number: fall back to Retry-After
            return max(0.0, float(ms) / 1000)
    value = response.headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):  # not seconds: it may be an HTTP date
        return max(0.0, float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_text(response: httpx.Response) -> str:
    """The provider's own error message, short (OpenAI and Anthropic nest it in ``error``)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip()
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
    return json.dumps(body)[:200]


class Caller:
    """POSTs JSON for one adapter: its retry policy, retry budget and HTTP client.

    A client given by the caller is used as it is (and closed by its owner).
    Otherwise one pooled client lives between :meth:`open` and :meth:`aclose`
    (the adapter's ``async with``), and outside that each call uses a client of
    its own, closed after the call: a pool is bound to an event loop, and the
    synchronous ``corral.run`` starts a new loop per run.
    """

    def __init__(
        self,
        *,
        retry: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        client: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.budget = budget or RetryBudget()
        self._client = client
        self._owned: httpx.AsyncClient | None = None
        self._rng = rng or random.Random()

    async def open(self) -> None:
        if self._client is None and self._owned is None:
            import httpx  # here, not at import: the test kit's fakes share this module

            self._owned = httpx.AsyncClient()

    async def aclose(self) -> None:
        owned, self._owned = self._owned, None
        if owned is not None:
            await owned.aclose()

    async def post_json(
        self,
        url: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str],
        timeout: float | None,
    ) -> dict[str, Any]:
        """POST ``body`` and return the JSON object of a 2xx answer, retrying as the
        module says; ``timeout`` bounds the whole call, retries and waits included.

        Raises :class:`ModelAPIError` when the call fails for good, and
        :class:`~corral.ModelOutputError` when a 2xx answer is not a JSON object.
        """
        import httpx  # here, not at import: the test kit's fakes share this module

        policy = self.retry
        deadline = None if timeout is None else time.monotonic() + timeout
        self.budget.request()
        attempt = 0
        while True:
            attempt += 1
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left < MIN_ATTEMPT_SECONDS:
                raise ModelAPIError(f"no time left for a request to {url}", attempts=attempt - 1)
            per_attempt = _smallest(policy.attempt_timeout, left)
            if per_attempt is None:
                per_attempt = NO_DEADLINE_SECONDS  # a call without a deadline is still bounded
            wait: float | None = None
            try:
                async with asyncio.timeout(per_attempt):  # httpx's timeouts are per read
                    response = await self._post(url, body, headers, per_attempt)
            except (httpx.TimeoutException, TimeoutError) as exc:
                error = ModelAPIError(
                    f"{url} gave no answer within {per_attempt:.3g} s ({type(exc).__name__})",
                    attempts=attempt,
                )
            except httpx.TransportError as exc:
                error = ModelAPIError(
                    f"{url} could not be reached ({type(exc).__name__}: {exc})", attempts=attempt
                )
            else:
                if response.is_success:
                    return _json_object(response)
                wait = retry_after(response)
                error = ModelAPIError(
                    f"{url} answered {response.status_code}: {_error_text(response)}",
                    status=response.status_code,
                    attempts=attempt,
                    retry_after=wait,
                )
                if response.status_code not in RETRY_STATUSES:
                    raise error
            if attempt >= policy.max_attempts:
                raise error
            if wait is not None and wait > policy.max_retry_after:
                raise error  # the endpoint asked for longer than we are willing to wait
            pause = wait if wait is not None else _backoff(policy, attempt, self._rng)
            if deadline is not None and time.monotonic() + pause + MIN_ATTEMPT_SECONDS >= deadline:
                raise error  # the wait would end past the deadline: give up now, not later
            if not self.budget.try_retry():
                raise error
            await asyncio.sleep(pause)

    async def _post(
        self,
        url: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        per_attempt: float,
    ) -> httpx.Response:
        import httpx

        connect = _smallest(self.retry.connect_timeout, per_attempt)
        timeout = httpx.Timeout(per_attempt, connect=connect)
        client = self._client or self._owned
        if client is not None:
            return await client.post(url, json=body, headers=dict(headers), timeout=timeout)
        async with httpx.AsyncClient() as own:
            return await own.post(url, json=body, headers=dict(headers), timeout=timeout)


def _smallest(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _backoff(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    return rng.uniform(0, min(policy.max_backoff, policy.backoff * 2 ** (attempt - 1)))


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        kind = response.headers.get("content-type", "no content type")
        raise ModelOutputError(
            f"the endpoint answered {response.status_code} with a body that is not JSON "
            f"({kind}): {response.text[:120]!r}"
        ) from exc
    if not isinstance(body, dict):
        raise ModelOutputError(f"the endpoint answered a JSON {type(body).__name__}, not an object")
    return body


class PooledModel:
    """What the HTTP model adapters share: ``async with model:`` opens one pooled
    connection for its calls, and :meth:`aclose` (or leaving the block) closes it; a client
    the adapter was given is left open."""

    _caller: Caller

    async def __aenter__(self) -> Self:
        await self._caller.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connection opened by ``async with`` (a given client is left open)."""
        await self._caller.aclose()
