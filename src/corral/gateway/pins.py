"""Pinned in-process tool definitions (``tools.pins``): a tool whose definition changed
since it was reviewed is refused.

A tool's pin is the SHA-256 of the canonical JSON of its governing definition
(:func:`corral.record.recording.tool_definition`, what replay records: name, description,
argument and output schemas, effect, cost, timeout, retries, idempotency, context,
credentials), as ``corral check POLICY --tools MODULE:OBJECT --pin`` writes it to the lock
file the policy names (``tools.pins``). With pins, each allowed ``@corral.tool`` the run is
given must match its pin: one whose definition changed, or that no pin names (a new or
renamed tool), is hidden from the model's tool specs and its calls are refused
(``tool_denied``, why ``definition_changed`` or ``definition_not_pinned``), and the run says
so at its start (a ``warning`` event and the log). Tools described by the policy alone
(no function: their definition is the policy's) are not pinned. A policy without
``tools.pins`` pins nothing.

Imports the recording's tool definition and the gateway's canonical JSON.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping

from corral.gateway.canonical import canonical
from corral.policy.schema import Policy
from corral.record.recording import tool_definition
from corral.tools import Tool

__all__ = ["pin_digest", "unpinned"]

#: id(tool) -> (the tool, weakly; its pin digest): computed once per tool object.
_DIGESTS: dict[int, tuple[weakref.ref[Tool], str]] = {}


def pin_digest(tool: Tool) -> str:
    """The SHA-256 of the canonical JSON of ``tool``'s governing definition."""
    key = id(tool)
    known = _DIGESTS.get(key)
    if known is not None and known[0]() is tool:
        return known[1]
    value = hashlib.sha256(canonical(tool_definition(tool)).encode()).hexdigest()

    def forget(_: object) -> None:
        _DIGESTS.pop(key, None)

    _DIGESTS[key] = (weakref.ref(tool, forget), value)
    return value


def unpinned(policy: Policy, tools: Mapping[str, Tool]) -> dict[str, str]:
    """The allowed, pinnable tools that do not match their pins, each with why
    (``definition_changed``, ``definition_not_pinned``); empty without ``tools.pins``."""
    pins = policy.tools.pins
    if pins is None:
        return {}
    out = {}
    for name, tool in tools.items():
        if tool.described or not policy.allows(name):
            continue
        pinned = pins.get(name)
        if pinned is None:
            out[name] = "definition_not_pinned"
        elif pinned != pin_digest(tool):
            out[name] = "definition_changed"
    return out
