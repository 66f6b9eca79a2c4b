"""Circuit breakers and retry budgets: stop hammering a dependency that is failing.

Every process sharing a store counts each tool's (and each model endpoint's)
attempts, failures and retries in the store (``degrade_add``, ``degrade_retry``),
so all of them see one picture of the fleet:

- **the window** is sliding, estimated from two UTC-aligned buckets of
  ``degrade.window_seconds`` (``floor(now / window) * window``): the bucket
  covering now plus the previous one weighted by the share of it still inside the
  window (:class:`~corral.stores.base.DegradeWindow`). Buckets are the same in
  every process, so no coordination is needed beyond the store's atomic adds.
- **the breaker** opens when, after a failure, at least ``degrade.failure_rate``
  of the window's attempts failed (over at least ``degrade.min_calls``), counted
  across every process: several processes each seeing a few failures trip it
  together. It opens *in the store*, so every process stops calling the tool at
  once. After the cool-down it reads half-open: exactly one call across the fleet
  (claimed through the store, like an idempotency key) probes the dependency; its
  success closes the breaker, its failure opens it again; a probe that never
  reports (its process died, or a kill switch cancelled it) opens it again once its
  claim's lease (the cool-down) lapses. Opening or closing it starts a fresh window.
- **the retry budget** keeps retries to ``retry_budget_ratio`` of the window's
  attempts plus ``retry_budget_floor``, checked and spent in one atomic step in
  the store, so N processes share one budget and retries cannot amplify an outage.

The allow path stays free of extra round trips: a successful attempt is counted in
this process and added to the store with the next failure or retry of the tool,
or at most :data:`SYNC_SECONDS` later (with the next success after that), so
other processes see this one's successes within about that; decisions made here
always include them. Failures and retries are written when they happen. Counting
that fails (the store is down) keeps the successes for the next write and never
stops the call it counts; the breaker's state read before a call fails closed. A breaker
read closed is reused for :data:`REFRESH_SECONDS` on a shared store (:class:`BreakerStates`).

Times: the shared state uses wall-clock seconds (``time.time()``) with the real
clock, and the run's own clock when a run is driven by a virtual one (simulations).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar

from corral.clock import Clock, SystemClock
from corral.policy.schema import Policy
from corral.stores.base import BreakerState, DegradeWindow, Store, degrade_bucket
from corral.stores.per_store import PerStore

T = TypeVar("T")


class Events(Protocol):
    def add(self, kind: str, **data: Any) -> None: ...


class _Services(Protocol):
    @property
    def successes(self) -> Successes: ...
    @property
    def breakers(self) -> BreakerStates: ...


class Host(Protocol):
    """What the breaker needs of the run it counts for (the gateway's run state)."""

    breaker_cache: dict[str, float] | None
    """:meth:`BreakerStates.of` the run's store when it may be used (:func:`cache_for`)."""

    @property
    def clock(self) -> Clock: ...
    @property
    def store(self) -> Store: ...
    @property
    def policy(self) -> Policy: ...
    def store_call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...
    @property
    def events(self) -> Events: ...
    @property
    def services(self) -> _Services: ...


Decision = Literal["closed", "probe", "open"]

#: How long successful attempts may wait in this process before they are added to the
#: store's counters (seconds, ``time.monotonic``).
SYNC_SECONDS = 0.1


def wall(core: Host) -> float:
    """Seconds comparable across processes: wall time, or the run's virtual clock."""
    return time.time() if isinstance(core.clock, SystemClock) else core.clock.monotonic()


#: The half-open probe is claimed in the store like a write's idempotency key, under keys
#: starting with this; they are the breaker's own, never a write an operator settles.
PROBE_KEY = "breaker-probe:"


#: How long a closed breaker, once read, is taken as closed without reading it again
#: (seconds, ``time.monotonic``): a breaker another process opened is obeyed within this.
REFRESH_SECONDS = 0.1
_CLOSED = BreakerState()


class BreakerStates:
    """Which breakers this process read closed, and until when it takes them as closed
    without reading the store again (:data:`REFRESH_SECONDS`), per store object.

    Only a closed breaker is kept: an open or half-open one is read on every call (its
    retry time, its probe). A breaker this process opens or closes is forgotten at once, and
    so is one whose tool just failed here: while a dependency fails, every call reads its
    breaker, so a breaker another process opened stops this one's next call.
    Kept only for a store shared with other processes, read on the real clock (the
    in-memory store, and runs on a virtual clock, read the store on every call, as the
    kill switch does).
    """

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: PerStore[dict[str, float]] = PerStore()

    def of(self, store: Store) -> dict[str, float]:
        """Breaker name -> ``time.monotonic()`` until which it is taken as closed."""
        return self._kept.get(store, dict)


#: This process's breaker states (the default :class:`~corral.gateway.services.Services`).
BREAKERS = BreakerStates()


def cache_for(store: Store, clock: Clock, states: BreakerStates) -> dict[str, float] | None:
    """The breakers read closed that a run on ``store`` and ``clock`` may rely on: kept
    only for a shared store on the real clock (see :class:`BreakerStates`)."""
    return states.of(store) if store.shared and isinstance(clock, SystemClock) else None


def _set(core: Host, name: str, state: BreakerState) -> None:
    """Open or close breaker ``name`` in the store (forgotten as closed here first)."""
    core.services.breakers.of(core.store).pop(name, None)
    core.store_call(core.store.set_breaker, name, state)


def read(core: Host, name: str, *, fresh: bool = False) -> BreakerState:
    """Breaker ``name``'s state: taken as closed when read closed within
    :data:`REFRESH_SECONDS` (where the run may rely on that, :func:`cache_for`), else read
    from the store (``fresh``: always)."""
    cache = core.breaker_cache
    if cache is not None and not fresh and time.monotonic() < cache.get(name, 0.0):
        return _CLOSED
    state = core.store_call(core.store.breaker, name, now=wall(core))
    if cache is not None and state.state == "closed":
        cache[name] = time.monotonic() + REFRESH_SECONDS
    return state


def admit(core: Host, name: str, *, fresh: bool = False) -> tuple[Decision, BreakerState]:
    """Whether a call of ``name`` may go ahead: ``closed``, ``probe`` (the one half-open
    call), or ``open`` (degraded). ``fresh``: read the store even if the breaker was read
    closed lately (a call that waited, a retry after a failure)."""
    state = read(core, name, fresh=fresh)
    if state.state == "closed":
        return "closed", state
    now = wall(core)
    if state.state == "open":
        return "open", state
    # Half-open: one probe for the whole fleet, claimed in the store.
    claim = core.store_call(
        core.store.claim,
        f"{PROBE_KEY}{name}:{state.until!r}",
        "probe",
        tenant=None,
        now=now,
        lease=core.policy.degrade.cool_down_seconds,
    )
    if claim.status == "unknown":
        # The probe's lease lapsed without an outcome (its process died, or the call was
        # cancelled): open the breaker for another cool-down, after which a new probe goes.
        state = BreakerState(state="open", until=now + core.policy.degrade.cool_down_seconds)
        _set(core, name, state)
        core.events.add("breaker", tool=name, state="open", probe_lost=True)
    return ("probe" if claim.status == "claimed" else "open"), state


class Successes:
    """Successful attempts this process counted and has not yet added to the store's
    counters, per store object and tool: ``[bucket start, count, monotonic time of the
    last write]``."""

    __slots__ = ("_kept", "_lock")

    def __init__(self) -> None:
        self._kept: PerStore[dict[str, list[float]]] = PerStore()
        self._lock = threading.Lock()

    def take(self, store: Store, name: str, start: float) -> tuple[int, tuple[float, int] | None]:
        """Take the pending successes: those of bucket ``start``, and those of an older
        bucket (to be written there) if any."""
        with self._lock:
            entry = self._kept.get(store, dict).get(name)
            if entry is None or not entry[1]:
                return 0, None
            count = int(entry[1])
            entry[1] = 0
            entry[2] = time.monotonic()
            if entry[0] == start:
                return count, None
            return 0, (entry[0], count)

    def pending(self, store: Store, name: str) -> tuple[float, int] | None:
        """The successes of ``name`` counted here and not yet written: (bucket, count)."""
        with self._lock:
            entry = self._kept.get(store, dict).get(name)
            if entry is None or not entry[1]:
                return None
            return entry[0], int(entry[1])

    def keep(self, store: Store, name: str, start: float, count: int) -> None:
        """Put back successes a write could not add (only while their bucket is current)."""
        with self._lock:
            entry = self._kept.get(store, dict).get(name)
            if entry is not None and entry[0] == start:
                entry[1] += count

    def count(self, store: Store, name: str, now: float, size: float) -> None:
        """Count one success; add the tool's pending ones to the store when due."""
        start = now // size * size
        mono = time.monotonic()
        with self._lock:
            per_tool = self._kept.get(store, dict)
            entry = per_tool.get(name)
            if entry is None:
                entry = per_tool[name] = [start, 0, mono]
            if entry[0] == start:
                entry[1] += 1
                if mono - entry[2] < SYNC_SECONDS:
                    return  # the allow path: counted here, written later
                write = [(start, int(entry[1]))]
            else:  # a new bucket: write the old one's, start counting this one's
                write = [(entry[0], int(entry[1]))] if entry[1] else []
                write.append((start, 1))
            entry[0], entry[1], entry[2] = start, 0, mono
        for bucket, count in write:
            try:
                store.degrade_add(name, now=bucket, size=size, calls=count)
            except Exception:  # whatever the store raises
                self.keep(store, name, bucket, count)


#: This process's pending successes (the default :class:`~corral.gateway.services.Services`).
SUCCESSES = Successes()


def _write_older(core: Host, name: str, size: float, older: tuple[float, int] | None) -> None:
    if older is not None:
        # A past bucket's successes: if they cannot be written, the window has moved on.
        with contextlib.suppress(Exception):  # whatever the store raises
            core.store.degrade_add(name, now=older[0], size=size, calls=older[1])


def _num(x: float) -> float | int:
    return int(x) if x == int(x) else round(x, 3)


def record(core: Host, name: str, ok: bool, *, probe: bool) -> None:
    """Count one attempt's outcome; open or close the shared breaker when it is due."""
    tally = core.services.successes
    rule = core.policy.degrade
    now = wall(core)
    size = rule.window_seconds
    if probe:
        new = (
            BreakerState() if ok else BreakerState(state="open", until=now + rule.cool_down_seconds)
        )
        _set(core, name, new)
        tally.take(core.store, name, degrade_bucket(now, size)[0])
        core.store_call(core.store.degrade_reset, name)  # a fresh window either way
        core.events.add("breaker", tool=name, state=new.state, probe=True)
        return
    if ok:
        tally.count(core.store, name, now, size)
        return
    if core.breaker_cache is not None:
        # A failure may be one of many across the fleet: the next call reads the breaker
        # (another process may just have opened it), not the closed state read lately.
        core.breaker_cache.pop(name, None)
    start, _ = degrade_bucket(now, size)
    calls, older = tally.take(core.store, name, start)
    _write_older(core, name, size, older)
    try:
        window: DegradeWindow = core.store.degrade_add(
            name, now=now, size=size, calls=calls + 1, failures=1
        )
    except Exception:  # whatever the store raises
        tally.keep(core.store, name, start, calls)
        return  # not counted; the breaker's state is read (fail closed) before each call
    trip = window.calls >= rule.min_calls and window.failures >= rule.failure_rate * window.calls
    if not trip:
        return
    _set(core, name, BreakerState(state="open", until=now + rule.cool_down_seconds))
    core.store_call(core.store.degrade_reset, name)
    core.events.add(
        "breaker",
        tool=name,
        state="open",
        failures=_num(window.failures),
        calls=_num(window.calls),
        cool_down=rule.cool_down_seconds,
    )


def retry_allowed(core: Host, name: str) -> bool:
    """Spend one retry from ``name``'s budget, shared by every process, if any is left."""
    tally = core.services.successes
    rule = core.policy.degrade
    now = wall(core)
    size = rule.window_seconds
    start, _ = degrade_bucket(now, size)
    calls, older = tally.take(core.store, name, start)
    _write_older(core, name, size, older)
    try:
        allowed = core.store.degrade_retry(
            name,
            now=now,
            size=size,
            ratio=rule.retry_budget_ratio,
            floor=rule.retry_budget_floor,
            calls=calls,
        )
    except Exception:  # whatever the store raises
        tally.keep(core.store, name, start, calls)
        allowed = False  # no retry without the shared budget (fail closed)
    if not allowed:
        core.events.add("retry_budget", tool=name, exhausted=True)
    return allowed
