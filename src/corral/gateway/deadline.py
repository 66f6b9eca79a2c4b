"""The run's time: active seconds against ``max_seconds``, the time spent waiting for
approvals (not charged), and the deadline that bounds every wait on the run's behalf.

Imports the clock and the exceptions; the run state gives the rest.
"""

from __future__ import annotations

from typing import Protocol

from corral.clock import DEADLINE, Clock, SystemClock
from corral.exceptions import Stop
from corral.policy.schema import Guard


class _Run(Protocol):
    """What the run's time needs of the run (:class:`~corral.gateway.state.RunState`)."""

    @property
    def clock(self) -> Clock: ...
    def observes(self, guard: Guard) -> bool: ...
    def observed(self, stop: Stop) -> None: ...
    def stamp(self, stop: Stop) -> Stop: ...


class RunTime:
    """When the run started, how long it waited, and how much of its time is left."""

    __slots__ = (
        "_real_clock",
        "_run",
        "_watched",
        "_watching",
        "max_seconds",
        "policy_seconds",
        "prior_active",
        "prior_waiting",
        "started",
        "waiting",
    )

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._real_clock = isinstance(run.clock, SystemClock)
        self.started = run.clock.monotonic()
        self.waiting = 0.0  # seconds spent waiting for approvals: reported, not charged
        self.prior_active = 0.0  # a resumed run's time so far
        self.prior_waiting = 0.0
        self.max_seconds = float("inf")  # enforced; set by the run once its limits are known
        self.policy_seconds = float("inf")  # the policy's own, watched in observe mode
        self._watched = False
        # In observe mode the policy's own time is watched (recorded once when passed).
        self._watching = run.observes("budgets")

    @property
    def real_clock(self) -> bool:
        """Whether the run is on the real clock (waits then end at its deadline)."""
        return self._real_clock

    def resume_from(self, active: float, waiting: float) -> None:
        """Start counting from a resumed run's stored time (and from now)."""
        self.prior_active, self.prior_waiting = active, waiting
        self.started = self._run.clock.monotonic()
        self.waiting = 0.0

    def now(self) -> float:
        return self._run.clock.monotonic()

    def active_seconds(self) -> float:
        return self._run.clock.monotonic() - self.started - self.waiting

    @property
    def deadline(self) -> float:
        """When the run's active time runs out, on the run's clock."""
        return self.started + self.waiting + self.max_seconds - self.prior_active

    def remaining(self) -> float:
        return (
            self.started + self.waiting + self.max_seconds - self.prior_active
        ) - self._run.clock.monotonic()

    def check(self) -> None:
        """Raise ``max_seconds`` when the run's time is up.

        Inside a driver (which sets :data:`~corral.clock.DEADLINE` while it runs a flow),
        also bound the rest of the flow by the run's deadline: the waits on the store and
        output hygiene (until the flow next waits for an approval or a pause).
        """
        deadline = self.started + self.waiting + self.max_seconds - self.prior_active
        over = deadline - self._run.clock.monotonic()
        if over <= 0:
            raise self.out_of_time(over)
        if self._real_clock:
            current = DEADLINE.get()
            if current is not None and current != deadline:
                DEADLINE.set(deadline)
        if self._watching and not self._watched:
            run = self._run
            used = self.prior_active + self.active_seconds()
            limit = self.policy_seconds
            if used > limit:
                self._watched = True
                run.observed(
                    Stop(
                        "max_seconds",
                        "run",
                        scope="run",
                        limit=limit,
                        observed=round(used, 3),
                        message=f"the run has used its {limit:g} s",
                    )
                )

    def out_of_time(self, over: float, why: str | None = None) -> Stop:
        """The run's ``max_seconds`` stop, ``over`` seconds past its deadline (negative)."""
        limit = self.max_seconds
        message = f"the run has used its {limit:g} s" + (f" ({why})" if why else "")
        return self._run.stamp(
            Stop(
                "max_seconds",
                "run",
                scope="run",
                limit=limit,
                observed=round(limit - over, 3),
                message=message,
            )
        )
