"""What a policy and the registered code say of one tool, read the way the runtime reads it.

``corral check`` judges tools without running them: the checklist and the decision aid
both ask the same questions (which effect, which cost, which arguments), so the answers
live here once. Registered tools are duck-typed: a ``corral.Tool``, a stand-in with the
same attributes, or an MCP tool definition (``inputSchema``, ``annotations``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from corral.policy.schema import Policy


@dataclass(frozen=True, kw_only=True, slots=True)
class CodeTool:
    """What the registered code says of one tool."""

    effect: str | None  # None: not declared
    output_schema: bool
    expensive: bool
    cost_usd: Decimal = Decimal(0)
    args_schema: Mapping[str, Any] = field(default_factory=dict)
    credentials: tuple[str, ...] = ()
    open_world: bool = False  # an MCP server's openWorldHint: true


def name_of(tool: object) -> str:
    name = getattr(tool, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"a registered tool needs a str .name, got {tool!r}")
    return name


def registered(tools: Sequence[object]) -> dict[str, CodeTool]:
    """The registered tools by name (the last of a name wins; duplicates are warned about)."""
    out: dict[str, CodeTool] = {}
    for tool in tools:
        effect = getattr(tool, "effect", None)
        effect = getattr(effect, "value", effect)  # an Enum's value
        if effect not in ("read", "write") or getattr(tool, "effect_declared", True) is False:
            effect = None
        out[name_of(tool)] = CodeTool(
            effect=effect,
            output_schema=bool(getattr(tool, "output_schema", None)),
            expensive=getattr(tool, "expensive", False) is True,
            cost_usd=_cost(getattr(tool, "cost_usd", None)),
            args_schema=_schema(tool),
            credentials=_credentials(getattr(tool, "credentials", None)),
            open_world=_open_world_hint(getattr(tool, "annotations", None)),
        )
    return out


def effect_of(policy: Policy, name: str, code: Mapping[str, CodeTool] | None) -> str | None:
    """The effect corral applies: the stricter of policy and code; ``None`` when neither says."""
    spec = policy.spec(name)
    said = {spec.effect if spec else None, code[name].effect if code and name in code else None}
    said.discard(None)
    if not said:
        return None
    return "write" if "write" in said else "read"


def cost_of(policy: Policy, name: str, code: Mapping[str, CodeTool] | None) -> Decimal:
    """The declared cost per call: the policy's ``cost_usd``, else the code's, else 0."""
    spec = policy.spec(name)
    if spec is not None and spec.cost_usd is not None:
        return spec.cost_usd
    return code[name].cost_usd if code and name in code else Decimal(0)


def expensive(policy: Policy, name: str, code: Mapping[str, CodeTool] | None) -> bool:
    """Marked ``expensive`` (policy first, then code), or costing at least the kill
    switch's ``expensive_cost_usd`` threshold, as the runtime decides it."""
    spec = policy.spec(name)
    if spec is not None and spec.expensive is not None:
        marked = spec.expensive
    else:
        marked = bool(code and name in code and code[name].expensive)
    threshold = policy.kill_switch.expensive_cost_usd
    return marked or (threshold is not None and cost_of(policy, name, code) >= threshold)


def argument_schemas(
    policy: Policy, name: str, code: Mapping[str, CodeTool] | None
) -> dict[str, Mapping[str, Any]]:
    """Each argument's JSON Schema, from the policy's ``args_schema`` and the code's."""
    out: dict[str, Mapping[str, Any]] = {}
    spec = policy.spec(name)
    for schema in (
        code[name].args_schema if code and name in code else {},
        spec and spec.args_schema,
    ):
        properties = schema.get("properties") if isinstance(schema, Mapping) else None
        if isinstance(properties, Mapping):
            for arg, sub in properties.items():
                if isinstance(arg, str) and isinstance(sub, Mapping):
                    out[arg] = sub
    return out


def _cost(value: Any) -> Decimal:
    if isinstance(value, Decimal) and value.is_finite() and value >= 0:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return Decimal(str(value))
    return Decimal(0)


def _schema(tool: object) -> Mapping[str, Any]:
    for attr in ("args_schema", "inputSchema"):  # corral's name, then MCP's
        value = getattr(tool, attr, None)
        if isinstance(value, Mapping):
            return value
    return {}


def _credentials(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        return ()
    return tuple(sorted(v for v in value if isinstance(v, str)))


def _open_world_hint(annotations: Any) -> bool:
    """MCP's ``openWorldHint``, from a mapping or an object. Only ``true`` counts: a
    server's hint may tighten what corral checks, never loosen it."""
    if isinstance(annotations, Mapping):
        return annotations.get("openWorldHint") is True
    return getattr(annotations, "openWorldHint", None) is True
