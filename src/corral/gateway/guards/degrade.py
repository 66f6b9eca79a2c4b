"""Degrade state: a tool whose breaker is open is not called.

The breaker's state lives in the store, so every process sharing it agrees (see
``corral.controls.breaker``). While a tool is degraded the model is told it is unavailable
(``degrade.on_degraded: tell_model``, the default) or the run stops with
``dependency_degraded`` (``stop``). Either way the tool is left out of the tools
offered until its breaker closes again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.controls import breaker
from corral.exceptions import Stop, ToolRejected

if TYPE_CHECKING:
    from corral.gateway.call import Call


def check(call: Call, *, fresh: bool = False) -> bool:
    """Refuse a call of a degraded tool (its breaker: its ``dependency``, else its name);
    return whether this call is the half-open probe. ``fresh``: read the breaker from the
    store (a call that waited), not as lately read."""
    core, name, dependency = call.run, call.tool_name, call.eff.breaker
    decision, state = breaker.admit(core, dependency or name, fresh=fresh)
    if decision != "open":
        return decision == "probe"
    retry_after = max(0.0, state.until - breaker.wall(core))
    core.events.add("denied", tool=name, why="degraded", retry_after=round(retry_after, 3))
    if core.policy.degrade.on_degraded == "tell_model":
        raise ToolRejected(
            "dependency_degraded",
            f"The tool {name!r} is unavailable right now (its dependency is failing). Do not "
            "call it again in this task; answer with what you have or say it is unavailable.",
            tool=name,
            detail="degraded",
        )
    raise core.stamp(
        Stop(
            "dependency_degraded",
            name,
            tool=name,
            retry_after=retry_after,
            message=f"{name} is degraded (breaker open)",
        )
    )
