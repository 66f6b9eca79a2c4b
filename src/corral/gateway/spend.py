"""The run's budgets: its own meter (steps, calls, tokens, USD, per-tool caps), the shared
window limits held in the store across runs, and, in observe mode, the shadow meter that
records what the policy's own limits would have stopped.

Reserve, then settle or refund: a charge is held before the action and settled at what it
actually cost (never a credit). Imports the budgets and the stores' types.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from corral.budgets import windows
from corral.budgets.meter import Charge, Hold, Limits, Meter, Usage
from corral.exceptions import Stop
from corral.gateway.deadline import RunTime
from corral.policy.schema import Guard, Policy
from corral.stores.base import Refusal, ScopedCharge, Store

T = TypeVar("T")


class _Run(Protocol):
    """What the budgets need of the run (:class:`~corral.gateway.state.RunState`)."""

    policy: Policy
    tenant: str | None
    agent: str | None
    store: Store
    time: RunTime

    def store_call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T: ...
    def observes(self, guard: Guard) -> bool: ...
    def observed(self, stop: Stop) -> None: ...
    def stamp(self, stop: Stop) -> Stop: ...


#: The run backstops: enforced even in observe mode.
BACKSTOP = Limits()


class RunBudget:
    """What the run may still spend, and what it holds and has spent."""

    __slots__ = ("_grants", "_run", "limits", "meter", "shadow")

    def __init__(self, run: _Run, limits: Limits, prior: Usage | None) -> None:
        self._run = run
        self.limits = limits
        if run.observes("budgets"):
            # Enforce only the backstops; the policy's own limits are watched.
            self.meter = Meter(BACKSTOP, usage=prior)
            self.shadow: Meter | None = Meter(limits, usage=prior)
        else:
            self.meter = Meter(limits, usage=prior)
            self.shadow = None
        # Holds on the shared windows, by the run's hold id: (grant, what was held).
        self._grants: dict[int, tuple[str, list[ScopedCharge]]] = {}

    def fits(self, charge: Charge) -> None:
        """Raise the stop ``charge`` would meet, holding nothing (before an approval)."""
        refusal = self.meter.fits(charge)
        if refusal is not None:
            raise self._run.stamp(refusal)
        self._watch(charge, hold=False)

    def reserve(self, charge: Charge) -> Hold:
        """Hold ``charge`` against the run's budgets and every window limit, all or nothing."""
        try:
            hold = self.meter.reserve(charge)
        except Stop as stop:
            raise self._run.stamp(stop) from None
        if self._run.policy.limits and (charge.tool_calls or charge.usd):
            self._reserve_shared(hold, charge)
        if self.shadow is not None:
            self._watch(charge, hold=True)
        return hold

    def settle(self, hold: Hold, actual: Charge) -> None:
        actual = self.meter.settle(hold, actual)  # as recorded: never a credit
        if self._grants:
            self._settle_shared(hold, actual)
        if self.shadow is not None:
            self.shadow.commit(actual)

    def refund(self, hold: Hold) -> None:
        self.meter.refund(hold)
        if self._grants:
            self._settle_shared(hold, Charge())

    def usage(self) -> Usage:
        """The run's usage so far, with its active and waiting seconds."""
        clock = self._run.time
        return self.meter.usage(
            active_seconds=clock.prior_active + max(0.0, clock.active_seconds()),
            waiting_seconds=clock.prior_waiting + clock.waiting,
        )

    def settle_outstanding(self) -> None:
        """At the run's end: every hold never settled (a call authorized and never reported,
        a model call never settled, a call still running) counts at what it held, as the
        shared windows' holds do (:meth:`take_outstanding`): the action may have happened."""
        for charge in self.meter.commit_outstanding():
            if self.shadow is not None:
                self.shadow.commit(charge)

    def take_outstanding(self) -> list[tuple[str, list[ScopedCharge]]]:
        """The shared holds never settled, no longer tracked (the run's end settles them)."""
        outstanding, self._grants = list(self._grants.values()), {}
        return outstanding

    def _reserve_shared(self, hold: Hold, charge: Charge) -> None:
        run = self._run
        wanted = windows.scoped(
            run.policy, charge, tenant=run.tenant, agent=run.agent, now=time.time()
        )
        if not wanted:
            return
        try:
            grant = run.store_call(run.store.reserve, wanted, now=time.time())
            if isinstance(grant, Refusal) and run.observes("limits"):
                # Observed shared limits are watched like the run's own: the refusal is a
                # would-be stop, and the spend still counts in every scope.
                run.observed(windows.refusal_stop(grant, charge.tool))
                unlimited = [replace(c, max_calls=None, max_usd=None) for c in wanted]
                grant = run.store_call(run.store.reserve, unlimited, now=time.time())
        except Stop:
            self.meter.refund(hold)
            raise
        if isinstance(grant, Refusal):
            self.meter.refund(hold)
            raise run.stamp(windows.refusal_stop(grant, charge.tool))
        self._grants[hold.id] = (grant, wanted)

    def _settle_shared(self, hold: Hold, actual: Charge) -> None:
        entry = self._grants.pop(hold.id, None)
        if entry is not None:
            grant, held = entry
            self._run.store_call(self._run.store.settle, grant, windows.settled(held, actual))

    def _watch(self, charge: Charge, *, hold: bool) -> None:
        if self.shadow is None:
            return
        refusal = self.shadow.fits(charge)
        if refusal is not None and hold:
            self._run.observed(refusal)
