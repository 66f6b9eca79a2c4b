"""The production readiness report: the field guide's checklist, and its decision aid per tool.

>>> from corral.policy import Policy
>>> report = readiness(Policy.from_dict({"tools": {"allow": ["kb.read"]}}))
>>> [item.key for item in report.items if not item.met]
['budgets', 'output_validation', 'monitoring', 'kill_switch']
>>> report.summary
'3/7 checklist items met'
>>> [(t.name, t.kinds, t.missing) for t in report.tools]
[('kb.read', ['write'], [])]
>>> report.tools_summary
'1/1 tools have what they need'

The per-tool part (what a tool that can write, browse or serve several tenants needs)
is :mod:`corral.policy.decision_aid`. ``ready`` is false while either part misses something.

What meets each item (the report reads the config, and the registered tools when given):

- ``allowlist``: ``tools.allow`` names at least one tool and ``mode`` is ``enforce``.
  Default deny is always on; an empty allowlist allows nothing, and ``observe`` only logs.
- ``budgets``: ``budgets.max_usd`` is set. Steps, seconds and tool calls always have a
  limit (30, 90 s and 15 unless the policy names others), so only USD can be missing.
- ``output_validation``: at least one tool is allowed, and every allowed tool has an
  output schema, in ``tools.specs.<name>.output_schema`` or declared by its code.
- ``stop_reasons``: always met; every run ends with a stop reason from a closed list.
- ``monitoring``: drift monitoring is in force: ``monitoring.track`` names all four drift
  signals (tool calls per run, tokens per request, stop reason and p95 latency; spend per
  run may be added), every tracked figure has a threshold (the defaults count; ``null``
  turns one off), and ``monitoring.metrics`` is on, so the tracked figures are exported
  per run wherever the process enables corral's metrics. The figures themselves are read
  from the store's runs and events, which every run with a store records
  (``corral drift`` compares them; docs/drift.md).
- ``kill_switch``: the policy sets ``kill_switch.mode_when_enabled`` itself, so a switch
  thrown without a mode does what was decided, not what a default says.
- ``write_approvals``: ``writes.require_approval`` is on and no allowed tool that writes
  (or whose effect is unknown) turns it off in its spec. Idempotency is always enforced.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.policy._tool_facts import CodeTool, effect_of, name_of, registered
from corral.policy.decision_aid import ToolNeeds, tool_needs
from corral.policy.fields import DRIFT_SIGNALS
from corral.policy.schema import Policy


@dataclass(frozen=True, kw_only=True, slots=True)
class Item:
    """One checklist item: whether the policy meets it, why it matters, how to meet it."""

    key: str
    title: str
    met: bool
    why: str
    hint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "met": self.met,
            "why": self.why,
            "hint": self.hint,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class Report:
    """The checklist items, in the field guide's order, what each allowed tool needs
    (the decision aid), and warnings about the config."""

    items: list[Item]
    warnings: list[str]
    tools: list[ToolNeeds] = field(default_factory=list)

    @property
    def all_met(self) -> bool:
        """Every checklist item is met (the per-tool needs aside)."""
        return all(item.met for item in self.items)

    @property
    def ready(self) -> bool:
        """Every checklist item is met and no tool misses a need (``--strict`` passes)."""
        return self.all_met and not any(t.missing for t in self.tools)

    @property
    def missing(self) -> list[Item]:
        return [item for item in self.items if not item.met]

    @property
    def summary(self) -> str:
        met = sum(item.met for item in self.items)
        return f"{met}/{len(self.items)} checklist items met"

    @property
    def tools_summary(self) -> str:
        """``"2/3 tools have what they need"``; empty when no tool is allowed."""
        if not self.tools:
            return ""
        fine = sum(not t.missing for t in self.tools)
        return f"{fine}/{len(self.tools)} tools have what they need"

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": [i.to_dict() for i in self.items],
            "tools": [t.to_dict() for t in self.tools],
            "warnings": list(self.warnings),
        }


def readiness(policy: Policy, tools: Sequence[object] | None = None) -> Report:
    """Check ``policy`` against the production checklist.

    ``tools`` are the registered tool objects (each with ``.name`` and ``.effect``);
    given, they add warnings where code and policy disagree, a tool's own output
    schema counts for output validation, and its cost, argument schema and
    credentials count in the decision aid.
    """
    code = registered(tools) if tools is not None else None
    items = [
        _allowlist(policy),
        _budgets(policy),
        _output_validation(policy, code),
        _stop_reasons(),
        _monitoring(policy),
        _kill_switch(policy),
        _write_approvals(policy, code),
    ]
    warnings = [*policy.warnings(), *_policy_warnings(policy, code)]
    if tools is not None:
        warnings += _code_warnings(policy, tools, code or {})
    return Report(items=items, warnings=warnings, tools=tool_needs(policy, code))


# -- the items --------------------------------------------------------------------------------


def _allowlist(policy: Policy) -> Item:
    if not policy.tools.allow:
        hint = "list each tool the agent may call under tools.allow, e.g. allow: [search.read]"
    elif "allowlist" in policy.observed_guards:
        hint = "set mode: enforce (in observe mode a tool off the allowlist is logged, not denied)"
    else:
        hint = ""
    return Item(
        key="allowlist",
        title="Tool gateway with a default-deny allowlist",
        met=not hint,
        why="a tool the policy does not allow is never executed; an empty allowlist allows nothing",
        hint=hint,
    )


def _budgets(policy: Policy) -> Item:
    b = policy.budgets
    return Item(
        key="budgets",
        title="Budgets: steps, seconds, tool calls and USD",
        met=b.max_usd is not None,
        why=(
            "a run stops before it spends past a cap; steps, seconds and tool calls always have "
            f"one (here {b.max_steps}, {b.max_seconds:g} s, {b.max_tool_calls}), USD only when set"
        ),
        hint="" if b.max_usd is not None else "add budgets.max_usd, e.g. max_usd: 1.00",
    )


def _output_validation(policy: Policy, code: dict[str, CodeTool] | None) -> Item:
    allowed = policy.tools.allow
    lacking = [
        name
        for name in allowed
        if not _policy_output_schema(policy, name)
        and not (code and name in code and code[name].output_schema)
    ]
    if not allowed:
        hint = "allow tools in tools.allow and give each an output_schema in tools.specs"
    elif lacking:
        hint = f"add tools.specs.<name>.output_schema (JSON Schema) for: {', '.join(lacking)}"
    else:
        hint = ""
    return Item(
        key="output_validation",
        title="Strict validation of tool outputs",
        met=not hint,
        why="an output that does not match its schema stops the run instead of reaching the model",
        hint=hint,
    )


def _stop_reasons() -> Item:
    return Item(
        key="stop_reasons",
        title="Stop reasons returned to the caller",
        met=True,
        why=(
            "always on: every run ends with a stop reason from a closed list (result.stop_reason); "
            "show it so users stop retrying what cannot succeed"
        ),
    )


def _monitoring(policy: Policy) -> Item:
    monitoring = policy.monitoring
    hints = []
    missing = [name for name in DRIFT_SIGNALS if name not in monitoring.track]
    if missing:
        hints.append(f"add to monitoring.track: {', '.join(missing)}")
    unjudged = [name for name in monitoring.track if getattr(monitoring.thresholds, name) is None]
    if unjudged:
        names = ", ".join(f"monitoring.thresholds.{name}" for name in unjudged)
        hints.append(f"give a threshold to {names} (null judges nothing)")
    if not monitoring.metrics:
        hints.append("set monitoring.metrics: true (the tracked figures are not exported)")
    return Item(
        key="monitoring",
        title="Monitoring for drift (tool calls, tokens, stop reasons, latency)",
        met=not hints,
        why="drift shows first in tool calls per run, tokens per request, stop reasons and latency",
        hint="; ".join(hints),
    )


def _kill_switch(policy: Policy) -> Item:
    chosen = "kill_switch" in policy.model_fields_set and (
        "mode_when_enabled" in policy.kill_switch.model_fields_set
    )
    return Item(
        key="kill_switch",
        title="Kill switch (disable writes or expensive tools)",
        met=chosen,
        why=(
            "one action stops writes or expensive tools in every running agent; "
            "the policy says which"
        ),
        hint=""
        if chosen
        else "add kill_switch.mode_when_enabled: disable_writes (or disable_expensive, stop_all)",
    )


def _write_approvals(policy: Policy, code: dict[str, CodeTool] | None) -> Item:
    hints = []
    if not policy.writes.require_approval:
        hints.append("set writes.require_approval: true")
    opted_out = [
        name
        for name in policy.tools.allow
        if (spec := policy.spec(name)) is not None
        and spec.require_approval is False
        and effect_of(policy, name, code) != "read"
    ]
    if opted_out:
        specs = ", ".join(f"tools.specs.{name}" for name in opted_out)
        hints.append(f"remove require_approval: false from {specs} (writes need approval)")
    return Item(
        key="write_approvals",
        title="Approvals and idempotency for writes",
        met=not hints,
        why=(
            "a write waits for a human approval bound to its exact arguments, and runs at most "
            "once per idempotency key (idempotency is always on)"
        ),
        hint="; ".join(hints),
    )


# -- warnings ---------------------------------------------------------------------------------


def _policy_warnings(policy: Policy, code: dict[str, CodeTool] | None) -> list[str]:
    out = []
    observed = policy.observed_guards
    if observed:
        which = "" if policy.mode_name == "observe" else f" ({', '.join(sorted(observed))})"
        out.append(
            f"mode: {policy.mode_name}{which}: what would be denied or stopped is only logged; "
            "set mode: enforce for production (the kill switch, idempotency and default "
            "budgets apply either way)"
        )
    if "approvals" in observed:
        out.append(
            "mode.approvals: observe: writes that need an approval run without one (each is "
            "logged as a would-be approval_denied); never in production"
        )
    if policy.kill_switch.mode_when_enabled == "disable_expensive" and not _anything_expensive(
        policy, code
    ):
        out.append(
            "kill_switch.mode_when_enabled: disable_expensive blocks nothing here: no allowed tool "
            "is marked expensive and kill_switch.expensive_cost_usd is not set"
        )
    return out


def _code_warnings(policy: Policy, tools: Sequence[object], code: dict[str, CodeTool]) -> list[str]:
    out = []
    names = [name_of(t) for t in tools]
    for name in sorted({n for n in names if names.count(n) > 1}):
        out.append(f"tool {name!r}: registered twice")
    for name in policy.tools.allow:
        if name not in code:
            close = difflib.get_close_matches(name, list(code), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(
                f"tools.allow: {name!r} is allowed but no registered tool has that name{hint}"
            )
    for name in sorted(code):
        if not policy.allows(name):
            out.append(f"tool {name!r}: registered but not in tools.allow, so every call is denied")
            continue
        spec = policy.spec(name)
        in_policy = spec.effect if spec is not None else None
        in_code = code[name].effect
        if in_policy and in_code and in_policy != in_code:
            out.append(
                f"tool {name!r}: tools.specs says effect {in_policy}, the code says {in_code}; "
                "treated as write (the stricter effect wins)"
            )
        elif not in_policy and not in_code:
            out.append(
                f"tool {name!r}: no effect declared in code or in tools.specs; treated as write"
            )
    return out


# -- helpers ----------------------------------------------------------------------------------


def _policy_output_schema(policy: Policy, name: str) -> bool:
    spec = policy.spec(name)
    return spec is not None and spec.output_schema is not None


def _anything_expensive(policy: Policy, code: dict[str, CodeTool] | None) -> bool:
    if policy.kill_switch.expensive_cost_usd is not None:
        return True
    for name in policy.tools.allow:
        spec = policy.spec(name)
        if spec is not None and spec.expensive is not None:
            if spec.expensive:
                return True
        elif code and name in code and code[name].expensive:
            return True
    return False
