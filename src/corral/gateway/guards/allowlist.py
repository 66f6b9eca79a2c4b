"""Names: exact allowlist matching, unknown tools, allowed-but-unregistered tools.

A name matches only itself: no case folding, no trimming, no Unicode
normalisation, and nothing but a ``str`` is a name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corral.exceptions import Stop, ToolRejected
from corral.gateway.guards.denial import count_mistake, deny, offered, one_line, quote
from corral.tools import Tool

if TYPE_CHECKING:
    from corral.gateway.state import RunState


def resolve(core: RunState, name: object) -> Tool:
    """The tool called ``name`` exactly, or a denial.

    Allowed, but its definition does not match its pin (``tools.pins``) →
    ``tool_denied:<name>`` (``why``: ``definition_changed`` or ``definition_not_pinned``).
    Not in the allowlist → ``tool_denied:<name>`` (``why``: ``not_allowed``). Not
    registered by any code (a name the model invented, or an allowed name no code
    provides) → an error handed back to the model listing the tools on offer,
    counted like invalid arguments, then ``tool_denied:<name> (unknown_tool)``.
    """
    tool = core.tools.get(name) if type(name) is str else None
    if tool is not None and tool.name in core.allowed:
        why = core.unpinned.get(tool.name) if core.unpinned else None
        if why is not None:  # tools.pins: its definition is not the one reviewed
            deny(
                core,
                tool.name,
                why,
                f"{tool.name}'s definition is not the one pinned in tools.pins",
                hint=" Pin it again once reviewed (corral check --pin).",
            )
        return tool
    if tool is not None:
        deny(
            core,
            tool.name,
            "not_allowed",
            f"{tool.name} is not in the policy's allowlist",
            hint=f" Tools on offer: {offered(core)}.",
        )
        return tool  # observe mode: recorded, not blocked
    shown = quote(name)
    label = one_line(name if type(name) is str and name else repr(name))
    core.events.add("denied", tool=label, why="unknown_tool", count=core.invalid_calls + 1)
    if count_mistake(core):
        raise core.stamp(
            Stop(
                "tool_denied",
                label,
                tool=label,
                extra={"why": "unknown_tool"},
                message=f"no tool named {shown}; tools on offer: {offered(core)}",
            )
        )
    raise ToolRejected(
        "tool_denied",
        f"There is no tool named {shown}. Tools on offer: {offered(core)}.",
        tool=label,
        detail="unknown_tool",
    )
