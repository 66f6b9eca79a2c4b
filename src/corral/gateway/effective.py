"""A tool as a run treats it (:class:`Effective`): its declaration merged with the policy,
the stricter wins. Computed once per run and tool.

Imports the policy, the budgets' charges and the tool declarations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from corral.budgets.meter import Charge
from corral.policy.schema import ArgConstraint, Policy
from corral.tools import Tool

#: A tool's timeout when neither it nor the policy sets one (seconds).
DEFAULT_TOOL_TIMEOUT = 30.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Effective:
    """A tool as this run treats it: its declaration merged with the policy (stricter wins)."""

    tool: Tool
    effect: str
    cost_usd: Decimal
    expensive: bool
    timeout: float
    retries: int
    idempotent: bool
    output_schema: Mapping[str, Any] | None
    constraints: Mapping[str, ArgConstraint]
    max_output_chars: int
    strip_html: bool
    cache: bool
    cache_ttl: float
    require_approval: bool
    charge_on_error: bool
    charge: Charge
    """What one attempt reserves: a tool call and the declared cost."""
    call_only: Charge
    """What a failed attempt costs with ``charge_on_error: false``: the call, no USD."""
    policy_args_schema: Mapping[str, Any] | None = None
    """The policy's own schema for the arguments, checked on top of the tool's."""
    breaker: str = ""
    """The breaker the tool's calls count against: its ``dependency``, else its name."""
    credentials: tuple[str, ...] = ()
    """The credentials a call needs: the tool's declaration and the policy's, together."""

    cacheable: bool = False
    """Whether identical calls may be served from the run's read cache (a read, with its
    cache on and a positive time to live): set from the fields above when made."""

    def __post_init__(self) -> None:
        cacheable = self.effect == "read" and self.cache and self.cache_ttl > 0
        object.__setattr__(self, "cacheable", cacheable)


def effective(policy: Policy, tool: Tool, name: str) -> Effective:
    """Tool ``name`` as a run under ``policy`` treats it: the tool's declaration merged with
    the policy's spec (the stricter wins; a write stays a write)."""
    spec = policy.spec(name)
    effect = "write" if "write" in (tool.effect, spec.effect if spec else None) else "read"
    if spec is not None and spec.effect == "read" and not tool.effect_declared:
        effect = "read"
    timeout = spec.timeout_seconds if spec and spec.timeout_seconds else tool.timeout
    retries = spec.retries if spec and spec.retries is not None else tool.retries
    idempotent = spec.idempotent if spec and spec.idempotent is not None else tool.idempotent
    require = (
        spec.require_approval
        if spec and spec.require_approval is not None
        else (effect == "write" and policy.writes.require_approval)
    )
    cost = spec.cost_usd if spec and spec.cost_usd is not None else tool.cost_usd
    threshold = policy.kill_switch.expensive_cost_usd
    expensive = bool(spec.expensive if spec and spec.expensive is not None else tool.expensive)
    if threshold is not None and cost >= threshold:
        expensive = True
    eff = Effective(
        tool=tool,
        effect=effect,
        cost_usd=cost,
        expensive=expensive,
        timeout=timeout or DEFAULT_TOOL_TIMEOUT,
        retries=retries if (effect == "read" or idempotent) else 0,
        idempotent=idempotent,
        output_schema=(spec.output_schema if spec and spec.output_schema else tool.output_schema),
        constraints=spec.constraints if spec else {},
        max_output_chars=(
            spec.max_output_chars
            if spec and spec.max_output_chars
            else policy.observations.max_chars
        ),
        strip_html=(
            spec.strip_html
            if spec and spec.strip_html is not None
            else policy.observations.strip_html
        ),
        cache=spec.cache if spec else True,
        cache_ttl=spec.cache_ttl_seconds if spec else 60.0,
        require_approval=bool(require),
        charge_on_error=spec.charge_on_error if spec else True,
        charge=Charge(tool_calls=1, usd=cost, tool=name),
        call_only=Charge(tool_calls=1, tool=name),
        policy_args_schema=spec.args_schema if spec else None,
        breaker=(spec.dependency if spec and spec.dependency else name),
        credentials=tuple(dict.fromkeys((*tool.credentials, *(spec.credentials if spec else ())))),
    )
    return eff
