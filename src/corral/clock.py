"""Time, behind a two-method seam so tests and simulations can run on a virtual clock."""

from __future__ import annotations

import time
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
