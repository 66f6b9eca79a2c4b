"""The field guide's decision aid, tool by tool: what each allowed tool needs, and what it lacks.

- A tool that **can write** (effect ``write``, or no effect declared) needs approvals,
  idempotency and audit.
- A tool that **can browse** (open world) needs budgets, dedupe and degrade mode, and
  constraints on its URL and host arguments.
- In a **multi-tenant** policy every tool needs scoped credentials.

>>> from corral.policy import Policy
>>> policy = Policy.from_dict({"tools": {"allow": ["browser.open"], "specs": {"browser.open": {
...     "effect": "read", "max_calls": 3,
...     "constraints": {"url": {"schemes": ["https"]}}}}}})
>>> [(t.name, t.kinds, t.missing) for t in tool_needs(policy)]
[('browser.open', ['open_world'], ['degrade', 'argument_constraints'])]
>>> tool_needs(policy)[0].needs
['budgets', 'dedupe', 'degrade', 'argument_constraints']

How each kind is recognised and what meets each need is in docs/decisions.md
(``corral check``); the rules in short:

- *open world*: ``tools.specs.<name>.open_world: true`` (MCP's ``openWorldHint``), or
  unset and the tool is expensive or has a URL or host argument (by name, JSON Schema
  ``format``, or a ``schemes``/``hosts`` constraint). ``open_world: false`` overrides.
- *multi-tenant*: a ``limits`` entry ``per: tenant``, or any allowed tool declaring
  credentials (policy or code).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from corral.policy._tool_facts import CodeTool, argument_schemas, cost_of, effect_of, expensive
from corral.policy.schema import Guard, Policy

Kind = Literal["write", "open_world", "multi_tenant"]
NeedKey = Literal[
    "approvals",
    "idempotency",
    "audit",
    "budgets",
    "dedupe",
    "degrade",
    "argument_constraints",
    "scoped_credentials",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Need:
    """One need of one tool: met or not, and how to meet it."""

    key: NeedKey
    met: bool
    why: str
    hint: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolNeeds:
    """What the decision aid says of one allowed tool."""

    name: str
    kinds: list[Kind]
    because: list[str]  # one line per kind: why the tool is judged so
    details: list[Need] = field(default_factory=list)

    @property
    def needs(self) -> list[str]:
        return [n.key for n in self.details]

    @property
    def missing(self) -> list[str]:
        return [n.key for n in self.details if not n.met]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kinds": list(self.kinds),
            "because": list(self.because),
            "needs": self.needs,
            "missing": self.missing,
            "why": {n.key: n.why for n in self.details},
            "hints": {n.key: n.hint for n in self.details if not n.met},
        }


def tool_needs(policy: Policy, code: Mapping[str, CodeTool] | None = None) -> list[ToolNeeds]:
    """The decision aid for every allowed tool, in ``tools.allow`` order.

    ``code`` is what the registered tools declare (effect, cost, argument schema,
    credentials); without it, the policy alone is read.
    """
    tenants = _multi_tenant(policy, code)
    out = []
    for name in policy.tools.allow:
        kinds: list[Kind] = []
        because: list[str] = []
        details: list[Need] = []
        effect = effect_of(policy, name, code)
        if effect != "read":
            kinds.append("write")
            because.append("can write: effect write" if effect else "can write: no effect declared")
            details += _write_needs(policy, name)
        world = _open_world(policy, name, code)
        if world is not None:
            reason, url_args = world
            kinds.append("open_world")
            because.append(f"can browse: {reason}")
            details += _browse_needs(policy, name, code, effect, url_args)
        if tenants is not None:
            kinds.append("multi_tenant")
            because.append(f"multi-tenant: {tenants}")
            details.append(_scoped_credentials(policy, name, code))
        out.append(ToolNeeds(name=name, kinds=kinds, because=because, details=details))
    return out


# -- can write ----------------------------------------------------------------------------------


def _write_needs(policy: Policy, name: str) -> list[Need]:
    spec = policy.spec(name)
    asked = (
        spec.require_approval
        if spec is not None and spec.require_approval is not None
        else policy.writes.require_approval
    )
    if not asked:
        where = (
            f"tools.specs.{name}.require_approval: false"
            if spec is not None and spec.require_approval is False
            else "writes.require_approval: false"
        )
        hint = f"remove {where} (a write waits for a human approval of its exact arguments)"
    else:
        hint = _enforce_hint(policy, "approvals", "writes run unapproved in observe mode")
    return [
        Need(
            key="approvals",
            met=not hint,
            why="each call waits for a human approval bound to its exact arguments",
            hint=hint,
        ),
        Need(
            key="idempotency",
            met=True,
            why=(
                "always on: a write is claimed under its idempotency key before it runs, "
                "and runs at most once per key"
            ),
        ),
        Need(
            key="audit",
            met=True,
            why="always on: each decision and outcome is appended to the hash-chained audit log",
        ),
    ]


# -- can browse ---------------------------------------------------------------------------------

# Argument names that carry a URL or a host (after camelCase is split): exactly these,
# or ending in one after an underscore (`target_url`, `callbackUrl`).
_URL_WORDS = {"url", "urls", "uri", "uris", "href", "link", "links", "endpoint"}
_HOST_WORDS = {"host", "hosts", "hostname", "hostnames", "domain", "domains"}
_URL_FORMATS = {"uri", "uri-reference", "iri", "iri-reference", "uri-template"}
_HOST_FORMATS = {"hostname", "idn-hostname"}
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _open_world(
    policy: Policy, name: str, code: Mapping[str, CodeTool] | None
) -> tuple[str, list[str]] | None:
    """Why the tool reaches the open world (and its URL/host arguments), or ``None``."""
    spec = policy.spec(name)
    if spec is not None and spec.open_world is False:
        return None
    url_args = _url_arguments(policy, name, code)
    if spec is not None and spec.open_world:
        return f"tools.specs.{name}.open_world: true", url_args
    if code and name in code and code[name].open_world:
        return "the tool's openWorldHint is true", url_args
    if url_args:
        if len(url_args) == 1:
            return f"argument {url_args[0]} takes a URL or host", url_args
        return f"arguments {', '.join(url_args)} take a URL or host", url_args
    if expensive(policy, name, code):
        return "marked expensive", url_args
    return None


def _url_arguments(policy: Policy, name: str, code: Mapping[str, CodeTool] | None) -> list[str]:
    spec = policy.spec(name)
    constrained = {
        arg for arg, c in (spec.constraints.items() if spec else ()) if c.schemes or c.hosts
    }
    found = [
        arg
        for arg, schema in argument_schemas(policy, name, code).items()
        if arg in constrained or _looks_like_url(arg, schema)
    ]
    return found + sorted(constrained - set(found))


def _looks_like_url(arg: str, schema: Mapping[str, Any]) -> bool:
    words = _CAMEL.sub("_", arg).lower().split("_")
    if words[-1] in _URL_WORDS | _HOST_WORDS:
        return True
    formats = {_format(schema), _format(schema.get("items"))}
    for option in (*_list(schema.get("anyOf")), *_list(schema.get("oneOf"))):
        formats |= {
            _format(option),
            _format(option.get("items") if isinstance(option, Mapping) else None),
        }
    return bool(formats & (_URL_FORMATS | _HOST_FORMATS))


def _format(schema: Any) -> str | None:
    value = schema.get("format") if isinstance(schema, Mapping) else None
    return value if isinstance(value, str) else None


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _browse_needs(
    policy: Policy,
    name: str,
    code: Mapping[str, CodeTool] | None,
    effect: str | None,
    url_args: list[str],
) -> list[Need]:
    needs = [_budgets(policy, name, code), _dedupe(policy, name, effect), _degrade(policy)]
    if url_args:
        needs.append(_constraints(policy, name, url_args))
    return needs


def _budgets(policy: Policy, name: str, code: Mapping[str, CodeTool] | None) -> Need:
    spec = policy.spec(name)
    cost = cost_of(policy, name, code)
    run_caps = []  # enforced by the budgets guard
    if spec is not None and spec.max_calls is not None:
        run_caps.append(f"max_calls {spec.max_calls} per run")
    if cost > 0 and policy.budgets.max_usd is not None:
        run_caps.append(f"${_usd(cost)} a call under budgets.max_usd")
    window_caps = [  # enforced by the limits guard
        f"limits: per {w.per} {w.window}"
        for w in policy.limits
        if (w.per != "tool" or w.tool == name)
        and ((w.per == "tool" and w.max_calls is not None) or (cost > 0 and w.max_usd is not None))
    ]
    live = (run_caps if "budgets" not in policy.observed_guards else []) + (
        window_caps if "limits" not in policy.observed_guards else []
    )
    if live:
        hint = ""
    elif run_caps or window_caps:
        guards = [g for g, caps in (("budgets", run_caps), ("limits", window_caps)) if caps]
        hint = " and ".join(f"set mode.{g}: enforce" for g in guards)
        hint += " (its caps are only observed)"
    else:
        hint = (
            f"cap it: tools.specs.{name}.max_calls (per run), or a cost_usd with budgets.max_usd,"
            f" or limits: [{{per: tool, tool: {name}, window: 1d, max_calls: ...}}]"
        )
    shown = "; ".join(live or run_caps + window_caps)
    return Need(
        key="budgets",
        met=not hint,
        why="a cap on its calls or its spend, so a vendor outage cannot turn into 1,800 calls"
        + (f" ({shown})" if shown else ""),
        hint=hint,
    )


def _dedupe(policy: Policy, name: str, effect: str | None) -> Need:
    if effect != "read":
        return Need(
            key="dedupe",
            met=True,
            why="a write is deduplicated by its idempotency key (always on)",
        )
    spec = policy.spec(name)
    if spec is not None and not spec.cache:
        hint = f"remove tools.specs.{name}.cache: false"
    elif spec is not None and spec.cache_ttl_seconds == 0:
        hint = f"give tools.specs.{name}.cache_ttl_seconds a value above 0 (default 60)"
    else:
        hint = ""
    ttl = spec.cache_ttl_seconds if spec is not None else 60.0
    return Need(
        key="dedupe",
        met=not hint,
        why=f"an identical call in a run is served from the read cache (for {ttl:g} s)"
        if not hint
        else "an identical call in a run should be served from the read cache, not re-fetched",
        hint=hint,
    )


def _degrade(policy: Policy) -> Need:
    d = policy.degrade
    chosen = "degrade" in policy.model_fields_set
    return Need(
        key="degrade",
        met=chosen,
        why=(
            f"a failing dependency is degraded ({d.failure_rate:g} of at least {d.min_calls} calls "
            f"failed in {d.window_seconds:g} s; then {d.on_degraded} for "
            f"{d.cool_down_seconds:g} s) instead of retried"
        ),
        hint=""
        if chosen
        else (
            "add a degrade: section to choose how a failing dependency is degraded, e.g. "
            "degrade: {on_degraded: tell_model} (the defaults apply until then)"
        ),
    )


def _constraints(policy: Policy, name: str, url_args: list[str]) -> Need:
    spec = policy.spec(name)
    loose = [
        arg
        for arg in url_args
        if spec is None
        or arg not in spec.constraints
        or not _limits_destination(spec.constraints[arg])
    ]
    if loose:
        hint = "; ".join(
            f"add tools.specs.{name}.constraints.{arg}: {{hosts: [example.com]}}" for arg in loose
        )
    else:
        hint = _enforce_hint(policy, "arguments", "calls outside the constraints run")
    return Need(
        key="argument_constraints",
        met=not hint,
        why=(
            f"{', '.join(url_args)} may only name the hosts you allow, so a call cannot carry "
            "data to an attacker's host"
        ),
        hint=hint,
    )


def _limits_destination(constraint: Any) -> bool:
    """A constraint that bounds where a URL or host may point: allowed hosts (or
    domains), an enumeration or a pattern; for a list, the same on its items. A
    ``schemes`` list alone does not: ``https://`` reaches any host."""
    for attr in ("hosts", "domains", "host", "enum", "pattern"):
        if getattr(constraint, attr, None):
            return True
    items = getattr(constraint, "items", None)
    return items is not None and not callable(items) and _limits_destination(items)


# -- multi-tenant ---------------------------------------------------------------------------------


def _multi_tenant(policy: Policy, code: Mapping[str, CodeTool] | None) -> str | None:
    """Why the policy serves several tenants, or ``None``."""
    for w in policy.limits:
        if w.per == "tenant":
            return f"limits per tenant ({w.window})"
    for name in policy.tools.allow:
        if _credentials(policy, name, code):
            return f"{name} declares credentials"
    return None


def _credentials(policy: Policy, name: str, code: Mapping[str, CodeTool] | None) -> list[str]:
    spec = policy.spec(name)
    from_code = code[name].credentials if code and name in code else ()
    return sorted({*from_code, *(spec.credentials if spec else ())})


def _scoped_credentials(policy: Policy, name: str, code: Mapping[str, CodeTool] | None) -> Need:
    spec = policy.spec(name)
    names = _credentials(policy, name, code)
    none_needed = spec is not None and "credentials" in spec.model_fields_set and not names
    if names:
        why = f"{', '.join(names)} resolved per tenant; a tenant lacking one is refused"
    elif none_needed:
        why = "declared to need none (credentials: [])"
    else:
        why = "each tenant's calls must use that tenant's credentials, never a shared key"
    return Need(
        key="scoped_credentials",
        met=bool(names) or none_needed,
        why=why,
        hint=""
        if names or none_needed
        else (
            f"declare what it uses: tools.specs.{name}.credentials: [api_key] (or credentials="
            "in @corral.tool), resolved per tenant; credentials: [] if it uses none"
        ),
    )


# -- helpers --------------------------------------------------------------------------------------


def _enforce_hint(policy: Policy, guard: Guard, what: str) -> str:
    if guard in policy.observed_guards:
        return f"set mode.{guard}: enforce ({what})"
    return ""


def _usd(amount: Decimal) -> str:
    return format(amount.normalize(), "f")
