"""Denials: stop the run with ``tool_denied``, or hand the denial back to the model.

Every ``tool_denied`` stop has the same shape (see :class:`~corral.stops.StopInfo`):
``detail`` is the tool (for an unknown name, the name as the model sent it, cut to a
readable length), and ``extra["why"]`` says which check refused (``not_allowed``,
``unknown_tool``, ``argument_not_allowed``, ``idempotency_mismatch``, ...), so it
reads ``tool_denied:browser.open`` or ``tool_denied:fetch.get (argument_not_allowed:
host evil.com)``. A denial handed back to the model
(``tools.on_denied: tell_model``) is a :class:`~corral.exceptions.ToolRejected`
whose ``detail`` is that ``why``; it shares the run's count of model mistakes
(``tools.max_invalid_args``), so a model that keeps calling what it may not
cannot keep a loop going for free.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from corral.exceptions import Stop, ToolRejected

if TYPE_CHECKING:
    from corral.gateway.state import RunState

#: The longest piece of a model-chosen name quoted back in messages.
QUOTE_CHARS = 80


def one_line(text: str, limit: int = QUOTE_CHARS) -> str:
    """A model-chosen text shown in a one-line stop (its detail or note): ASCII, so a
    look-alike letter shows as its escape (``d\\u043ecs``), printable, and cut."""
    text = text[: limit + 1].encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote(name: object) -> str:
    """``repr`` of a name the model chose, cut to a readable length."""
    text = repr(name)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 4] + "...'"


def offered(core: RunState) -> str:
    """The tools on offer (allowed and registered), for messages to the model."""
    names = sorted(n for n in core.tools if n in core.allowed)
    return ", ".join(names) if names else "(none)"


def count_mistake(core: RunState) -> bool:
    """Count one mistake handed back to the model; ``True`` once past the bound."""
    core.invalid_calls += 1
    return core.invalid_calls > core.policy.tools.max_invalid_args


def deny(
    core: RunState,
    tool: str,
    why: str,
    message: str,
    *,
    hint: str = "",
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Refuse a call: stop (the default), tell the model, or in observe mode record it.

    Returns only in observe mode, where the call goes ahead.
    """
    stop = Stop(
        "tool_denied", tool, tool=tool, message=message, extra={"why": why, **(extra or {})}
    )
    if core.observes("arguments" if why == "argument_not_allowed" else "allowlist"):
        core.events.add("denied", tool=tool, why=why, observed=True)
        core.observed(stop)
        return
    if core.policy.tools.on_denied == "tell_model" and not count_mistake(core):
        core.events.add("denied", tool=tool, why=why, handed_back=True, count=core.invalid_calls)
        raise ToolRejected("tool_denied", f"{message}.{hint}", tool=tool, detail=why)
    core.events.add("denied", tool=tool, why=why)
    raise core.stamp(stop)
