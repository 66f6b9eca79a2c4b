"""Time, behind a two-method seam so tests and simulations can run on a virtual clock.

:data:`DEADLINE` carries a run's deadline to code that waits on its behalf without
knowing the run (its store, output hygiene): the run sets it around such work.
"""

from __future__ import annotations

import math
import threading
import time
from contextvars import ContextVar
from typing import Protocol


class Clock(Protocol):
    """A monotonic clock in seconds. ``sleep`` waits (or, on a virtual clock, advances)."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    # The C function itself, not a method wrapping it: the gateway reads the clock several
    # times per call, and a Python frame costs more than the read.
    monotonic = staticmethod(time.monotonic)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()

#: When the work being done now for a run must end (``time.monotonic()`` seconds), or
#: None. A store clamps its waits (lock, busy handler, pool, statements) to it; output
#: hygiene stops parsing at it. Set by the run (see ``RunTime.check`` and
#: ``RunState.store_call``) and by the drivers (``gateway/drivers.py``).
DEADLINE: ContextVar[float | None] = ContextVar("corral_deadline", default=None)
#: What a driver sets DEADLINE to while it runs a flow: no deadline yet (infinitely far),
#: but the run may set its own.
DRIVEN = math.inf


def time_left() -> float | None:
    """Seconds until :data:`DEADLINE` (negative once passed), or None when none is set."""
    deadline = DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


#: Even past :data:`DEADLINE`, a store call gets this long: one attempt without a long wait,
#: so that a healthy store still records what a run does at its very end.
WAIT_FLOOR = 0.02


def wait_budget(default: float) -> float:
    """How long a store may wait now: ``default``, clamped to :data:`DEADLINE` when one is
    set and nearer (never below :data:`WAIT_FLOOR`)."""
    deadline = DEADLINE.get()
    if deadline is None:
        return default
    return min(default, max(deadline - time.monotonic(), WAIT_FLOOR))


class ManualClock:
    """A clock that moves only when told: ``advance(seconds)`` or ``sleep(seconds)``."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        with self._lock:
            self._now += seconds
