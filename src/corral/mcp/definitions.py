"""Tools as MCP servers define them: their names in policy, their effects, and the digests
that pin their definitions.

- **Names.** A tool ``t`` of the upstream named ``s`` is ``s.t`` in the policy and on the
  wire to clients (MCP names may hold dots). Two upstream tools mapping to one name are
  refused when the proxy starts.
- **Effects.** The policy's word comes first (``tools.specs.<name>.effect``); a tool it does
  not declare is a write. The server's own annotations may only tighten: a tool the policy
  calls a read is a write when the server says it is not read-only (``readOnlyHint: false``)
  or destructive (``destructiveHint: true``); no annotation ever makes a write a read.
- **Digests.** A definition's digest is the SHA-256 of its canonical wire JSON: name, title,
  description, input and output schema, annotations, execution (everything but ``_meta``,
  which servers use for volatile hints). A tool whose digest no longer matches its pin is
  hidden and denied (:mod:`corral.mcp.pins`).

Imports the policy's schema, the tools and the gateway's canonical JSON.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import mcp_types as types

from corral.exceptions import ConfigError
from corral.gateway.canonical import canonical
from corral.policy.schema import Policy
from corral.tools import Effect, Tool, executed_elsewhere

__all__ = [
    "digest",
    "effect_of",
    "mcp_tool",
    "policy_name",
    "wire_definition",
    "wire_digest",
]


def policy_name(server: str, tool: str) -> str:
    """The name of upstream ``server``'s tool ``tool`` in the policy and to clients."""
    return f"{server}.{tool}"


def wire_definition(tool: types.Tool) -> dict[str, Any]:
    """The tool's definition as it travels, without ``_meta``."""
    data = tool.model_dump(mode="json", by_alias=True, exclude_none=True)
    data.pop("_meta", None)
    return data


def digest(tool: types.Tool) -> str:
    """The SHA-256 of the tool's canonical wire definition (see the module docstring)."""
    return wire_digest(wire_definition(tool))


def wire_digest(wire: Mapping[str, Any]) -> str:
    """The digest of a wire definition (:func:`wire_definition`'s): :func:`digest`."""
    return hashlib.sha256(canonical(wire).encode()).hexdigest()


def effect_of(name: str, tool: types.Tool, policy: Policy) -> Effect:
    """``read`` or ``write``: the policy's word, tightened by the server's annotations."""
    spec = policy.spec(name)
    declared = spec.effect if spec is not None else None
    if declared != "read":
        return "write"
    hints = tool.annotations
    if hints is not None and (hints.read_only_hint is False or hints.destructive_hint is True):
        return "write"
    return "read"


def mcp_tool(name: str, tool: types.Tool, policy: Policy) -> Tool:
    """The corral tool for an upstream tool: governed by ``Run.authorize`` and executed by
    the proxy on the upstream (no function here), its arguments checked against its own
    input schema unless the policy gives one."""
    spec = policy.spec(name)
    schema: Mapping[str, Any] = (
        spec.args_schema if spec is not None and spec.args_schema is not None else tool.input_schema
    )
    try:
        return executed_elsewhere(
            name,
            effect=effect_of(name, tool, policy),
            effect_declared=True,
            description=(spec.description if spec is not None and spec.description else None)
            or tool.description
            or "",
            args_schema=schema,
            validate=True,
        )
    except Exception as exc:
        raise ConfigError(f"the upstream tool {name} cannot be governed: {exc}") from None
