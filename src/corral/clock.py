"""Time, behind a two-method seam so tests and simulations can run on a virtual clock.

:data:`DEADLINE` carries a run's deadline to code that waits on its behalf without
knowing the run (its store, output hygiene): the run sets it around such work.
"""

from __future__ import annotations

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

#: When the work being done now must end (``time.monotonic()`` seconds), or None. Set by a
#: run around its store calls and its output hygiene; a store clamps its waits (lock,
#: busy, pool and statement timeouts) to it, hygiene stops parsing at it.
DEADLINE: ContextVar[float | None] = ContextVar("corral_deadline", default=None)


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
