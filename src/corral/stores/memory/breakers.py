"""Breakers and their degrade counters in memory (the breakers concern)."""

from __future__ import annotations

from corral.stores.memory.state import MemoryState
from corral.stores.records import BreakerState, DegradeCounts, DegradeWindow
from corral.stores.rules import degrade_bucket, retry_fits

_CLOSED = BreakerState()


class Breakers(MemoryState):
    """The breakers part of :class:`~corral.stores.memory.MemoryStore`."""

    def breaker(self, name: str, *, now: float) -> BreakerState:
        with self._lock:
            self._check()
            state = self._breakers.get(name, _CLOSED)
            if state.state == "open" and now >= state.until:
                return BreakerState(state="half_open", until=state.until)
            return state

    def set_breaker(self, name: str, state: BreakerState) -> None:
        with self._lock:
            self._check()
            self._breakers[name] = state

    def _degrade_window(
        self, name: str, now: float, size: float, calls: int, failures: int, retries: int = 0
    ) -> DegradeWindow:
        start, weight = degrade_bucket(now, size)
        buckets = self._degrade.setdefault(name, {})
        for old in [b for b in buckets if b < start - size]:
            del buckets[old]
        cur = buckets.get(start, DegradeCounts())
        if calls or failures or retries:
            cur = DegradeCounts(
                calls=cur.calls + calls,
                failures=cur.failures + failures,
                retries=cur.retries + retries,
            )
            buckets[start] = cur
        prev = buckets.get(start - size, DegradeCounts())
        return DegradeWindow(current=cur, previous=prev, weight=weight)

    def degrade_add(
        self, name: str, *, now: float, size: float, calls: int = 0, failures: int = 0
    ) -> DegradeWindow:
        with self._lock:
            self._check()
            return self._degrade_window(name, now, size, calls, failures)

    def degrade_retry(
        self, name: str, *, now: float, size: float, ratio: float, floor: int, calls: int = 0
    ) -> bool:
        with self._lock:
            self._check()
            window = self._degrade_window(name, now, size, calls, 0)
            if not retry_fits(window, ratio=ratio, floor=floor):
                return False
            self._degrade_window(name, now, size, 0, 0, retries=1)
            return True

    def degrade_window(self, name: str, *, now: float, size: float) -> DegradeWindow:
        with self._lock:
            self._check()
            start, weight = degrade_bucket(now, size)
            buckets = self._degrade.get(name, {})
            return DegradeWindow(
                current=buckets.get(start, DegradeCounts()),
                previous=buckets.get(start - size, DegradeCounts()),
                weight=weight,
            )

    def load_degrade(self, name: str, buckets: dict[float, DegradeCounts]) -> None:
        """Set ``name``'s counters to ``buckets`` (bucket start -> counts): a replay
        seeds the state a recorded run met."""
        with self._lock:
            self._check()
            self._degrade[name] = dict(buckets)

    def degrade_reset(self, name: str) -> None:
        with self._lock:
            self._check()
            self._degrade.pop(name, None)
