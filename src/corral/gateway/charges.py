"""What each outcome of a tool call costs — DESIGN.md's table, in one function:

============================================  =================  ===========================
outcome                                       tool-call budget   USD
============================================  =================  ===========================
executed (each attempt, retries included)     1 per attempt      declared cost per attempt
raised, timed out, cancelled in flight        1                  declared cost, unless the
                                                                 tool says
                                                                 ``charge_on_error: false``
``NotExecuted`` (the tool says it did not     1                  0
run: a tool that keeps saying so must not
loop for free)
denied, invalid, refused, not started         refunded           refunded
served from the read cache or a replay        0 (nothing held)   0
============================================  =================  ===========================

Imports the budgets' charges only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from corral.budgets.meter import Charge, Hold

if TYPE_CHECKING:
    from corral.gateway.effective import Effective
    from corral.gateway.spend import RunBudget

#: How an attempt that was held for ended.
Outcome = Literal["ok", "error", "timeout", "cancelled", "not_executed", "not_started"]


def cost(outcome: Outcome, eff: Effective) -> Charge | None:
    """What ``outcome`` of an attempt at ``eff`` costs; None when it is refunded."""
    if outcome == "ok":
        return eff.charge
    if outcome == "not_executed":
        return eff.call_only
    if outcome == "not_started":
        return None
    return eff.charge if eff.charge_on_error else eff.call_only  # raised, timed out, cancelled


def settle(budget: RunBudget, hold: Hold, outcome: Outcome, eff: Effective) -> Charge | None:
    """Settle ``hold`` at what ``outcome`` costs (:func:`cost`), or refund it; what was
    charged (None: refunded)."""
    if outcome == "ok":  # the allow path, without a second call
        budget.settle(hold, eff.charge)
        return eff.charge
    charge = cost(outcome, eff)
    if charge is None:
        budget.refund(hold)
    else:
        budget.settle(hold, charge)
    return charge
