"""Names: exact allowlist matching, unknown tools, allowed-but-unregistered tools."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exceptions import Stop, ToolRejected
from ..tools import Tool

if TYPE_CHECKING:
    from ..runtime import RunCore


def _offered(core: RunCore) -> str:
    names = sorted(n for n in core.tools if core.policy.allows(n))
    return ", ".join(names) if names else "(none)"


def resolve(core: RunCore, name: object) -> Tool:
    """The tool called ``name`` exactly, or a denial.

    Not in the allowlist → ``tool_denied`` (``not_allowed``). Not registered by any
    code (a name the model invented) → an error handed back to the model, counted
    like invalid arguments, then ``tool_denied`` (``unknown_tool``).
    """
    text = name if isinstance(name, str) else repr(name)
    tool = core.tools.get(text) if isinstance(name, str) else None
    if tool is not None and core.policy.allows(text):
        return tool
    if tool is not None:
        stop = Stop("tool_denied", text, tool=text, extra={"why": "not_allowed"},
                    message=f"{text} is not in the policy's allowlist")
        if core.observe:
            core.observed(stop)
            return tool
        if core.policy.tools.on_denied == "tell_model":
            core.event("denied", tool=text, why="not_allowed", handed_back=True)
            raise ToolRejected("tool_denied", f"The tool {text!r} is not allowed. Tools on offer: "
                               f"{_offered(core)}.", tool=text, detail="not_allowed")
        raise core.stamp(stop)
    # Unknown (or allowed but registered by no code): the model may have invented it.
    core.invalid_calls += 1
    core.event("denied", tool=text, why="unknown_tool", count=core.invalid_calls)
    if core.invalid_calls > core.policy.tools.max_invalid_args:
        raise core.stamp(Stop("tool_denied", "unknown_tool", tool=text,
                              message=f"no tool named {text!r}; tools on offer: {_offered(core)}"))
    raise ToolRejected(
        "tool_denied",
        f"There is no tool named {text!r}. Tools on offer: {_offered(core)}.",
        tool=text,
        detail="unknown_tool",
    )
