"""Circuit breakers and retry budgets: stop hammering a dependency that is failing.

Each process watches the outcomes of every tool's calls over a sliding window.
When the failure rate passes ``degrade.failure_rate`` (over at least
``degrade.min_calls`` calls), the process opens the tool's breaker *in the store*,
so every process and machine sharing it stops calling the tool at once. After the
cool-down the breaker reads half-open: exactly one call across the fleet (claimed
through the store, like an idempotency key) probes the dependency; its success
closes the breaker, its failure opens it again.

The retry budget keeps retries to a share of calls (``retry_budget_ratio`` of the
calls in the window, plus ``retry_budget_floor``), the standard way to stop retry
amplification during an outage. Outcome windows and retry budgets are counted per
process; the open/closed state is shared.

Times: the shared state uses wall-clock seconds (``time.time()``) with the real
clock, and the run's own clock when a run is driven by a virtual one (simulations).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .clock import SystemClock
from .stores.base import BreakerState

if TYPE_CHECKING:
    from .runtime import RunCore

Decision = Literal["closed", "probe", "open"]


@dataclass
class _Window:
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    retries: deque[float] = field(default_factory=deque)
    failures: int = 0

    def trim(self, now: float, span: float) -> None:
        while self.outcomes and self.outcomes[0][0] < now - span:
            _, ok = self.outcomes.popleft()
            if not ok:
                self.failures -= 1
        while self.retries and self.retries[0] < now - span:
            self.retries.popleft()


_lock = threading.Lock()
# Per store object (weakly held, so a new store never inherits a dead one's counts).
_windows: weakref.WeakKeyDictionary[Any, dict[str, _Window]] = weakref.WeakKeyDictionary()


def wall(core: RunCore) -> float:
    """Seconds comparable across processes: wall time, or the run's virtual clock."""
    return time.time() if isinstance(core.clock, SystemClock) else core.clock.monotonic()


def _window(core: RunCore, name: str) -> _Window:
    per_tool = _windows.get(core.store)
    if per_tool is None:
        per_tool = _windows[core.store] = {}
    w = per_tool.get(name)
    if w is None:
        w = per_tool[name] = _Window()
    return w


def admit(core: RunCore, name: str) -> tuple[Decision, BreakerState]:
    """Whether a call of ``name`` may go ahead: ``closed``, ``probe`` (the one half-open
    call), or ``open`` (degraded)."""
    now = wall(core)
    state = core._store_call(core.store.breaker, name, now=now)
    if state.state == "closed":
        return "closed", state
    if state.state == "open":
        return "open", state
    # Half-open: one probe for the whole fleet, claimed in the store.
    claim = core._store_call(
        core.store.claim,
        f"breaker-probe:{name}:{state.until!r}",
        "probe",
        tenant=None,
        now=now,
        lease=core.policy.degrade.cool_down_seconds,
    )
    return ("probe" if claim.status == "claimed" else "open"), state


def record(core: RunCore, name: str, ok: bool, *, probe: bool) -> None:
    """Count one attempt's outcome; open or close the shared breaker when it is due."""
    rule = core.policy.degrade
    now = wall(core)
    if probe:
        new = (
            BreakerState() if ok else BreakerState(state="open", until=now + rule.cool_down_seconds)
        )
        core._store_call(core.store.set_breaker, name, new)
        core.event("breaker", tool=name, state=new.state, probe=True)
        with _lock:
            _windows.get(core.store, {}).pop(name, None)
        return
    with _lock:
        w = _window(core, name)
        w.outcomes.append((now, ok))
        if not ok:
            w.failures += 1
        w.trim(now, rule.window_seconds)
        calls, failures = len(w.outcomes), w.failures
        trip = not ok and calls >= rule.min_calls and failures / calls >= rule.failure_rate
        if trip:
            w.outcomes.clear()
            w.failures = 0
    if trip:
        core._store_call(
            core.store.set_breaker,
            name,
            BreakerState(state="open", until=now + rule.cool_down_seconds),
        )
        core.event(
            "breaker",
            tool=name,
            state="open",
            failures=failures,
            calls=calls,
            cool_down=rule.cool_down_seconds,
        )


def retry_allowed(core: RunCore, name: str) -> bool:
    """Spend one retry from ``name``'s budget if any is left."""
    rule = core.policy.degrade
    now = wall(core)
    with _lock:
        w = _window(core, name)
        w.trim(now, rule.window_seconds)
        budget = rule.retry_budget_ratio * len(w.outcomes) + rule.retry_budget_floor
        allowed = len(w.retries) + 1 <= budget  # the retry about to be made must fit
        if allowed:
            w.retries.append(now)
    if not allowed:
        core.event("retry_budget", tool=name, exhausted=True)
    return allowed
