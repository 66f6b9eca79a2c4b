"""Loop detection: ``repeats`` identical calls among a run's last ``window`` calls stop it.

Identical means the same tool with the same canonical arguments. Every call that
reaches this guard counts, including calls the read cache would serve for free: a
model asking the same thing again and again is stuck, whatever it costs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exceptions import Stop

if TYPE_CHECKING:
    from ..runtime import RunCore


def check(core: RunCore, tool: str, canonical_args: str) -> None:
    rule = core.policy.loops
    key = (tool, canonical_args)
    recent = core.recent_calls
    recent.append(key)
    if len(recent) > rule.window:
        del recent[0]
    seen = recent.count(key)
    if seen >= rule.repeats:
        core.deny(
            Stop(
                "loop_detected",
                tool,
                tool=tool,
                limit=rule.repeats,
                observed=seen,
                message=f"{tool} was called {seen} times with the same arguments "
                f"in the last {len(recent)} calls",
            ),
            "loops",
        )
