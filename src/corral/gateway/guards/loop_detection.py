"""Loop detection: ``repeats`` identical calls among a run's last ``window`` calls.

Identical means the same tool with the same canonical arguments. Every call that
reaches this guard counts, including calls the read cache would serve for free: a
model asking the same thing again and again is stuck, whatever it costs. The call
that completes a loop is not run: the run stops with ``loop_detected``
(``loops.on_detected: stop``), or the refusal is handed back to the model
(``tell_model``) and counted with its other mistakes, so a model that keeps looping
still stops once ``tools.max_invalid_args`` is passed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.exceptions import Stop, ToolRejected
from corral.gateway.guards.denial import count_mistake

if TYPE_CHECKING:
    from corral.gateway.call import Call


def check(call: Call) -> None:
    """Refuse (or, observed, record) the call when it repeats too often in the run."""
    core, tool, canonical_args = call.run, call.tool.name, call.text
    rule = core.policy.loops
    key = (tool, canonical_args)
    recent = core.recent_calls
    recent.append(key)
    if len(recent) > rule.window:
        del recent[0]
    seen = recent.count(key)
    if seen < rule.repeats:
        return
    message = (
        f"{tool} was called {seen} times with the same arguments in the last {len(recent)} calls"
    )
    stop = Stop(
        "loop_detected",
        tool,
        tool=tool,
        limit=rule.repeats,
        observed=seen,
        message=message,
    )
    handed_back = rule.on_detected == "tell_model" and not core.observes("loops")
    if handed_back and not count_mistake(core):
        core.events.add(
            "denied", tool=tool, why="loop_detected", handed_back=True, count=core.invalid_calls
        )
        raise ToolRejected(
            "loop_detected",
            f"{message}; it was not run again. The result will not change: use what you "
            "already have, try something else, or answer.",
            tool=tool,
            detail="loop_detected",
        )
    core.deny(stop, "loops")
