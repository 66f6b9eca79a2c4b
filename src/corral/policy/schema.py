"""The policy: what a run may do, loaded from YAML, JSON or a dict and validated strictly.

>>> p = Policy.from_dict({"tools": {"allow": ["search.read"]}, "budgets": {"max_steps": 5}})
>>> p.budgets.max_steps, p.budgets.max_tool_calls, p.allows("search.read"), p.allows("Search.read")
(5, 15, True, False)

Unknown keys are errors. Every problem is reported once with its path and the bad
value (``budgets.max_steps: must be a positive integer, got -3``), all problems at
once, as a :class:`~corral.exceptions.PolicyError` -- never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StrictBool,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

from corral._safe import error_text
from corral.exceptions import PolicyError
from corral.policy._input import (
    check_size,
    decimal_problem,
    parse_json,
    parse_yaml,
    plain_tree,
    read_text,
)
from corral.policy.hostnames import entry_problem
from corral.policy.messages import format_validation_error, number_hint, render_value
from corral.policy.patterns import problem as pattern_problem

# \Z, not $: "$" also matches before a trailing newline, and names match exactly.
TOOL_NAME = re.compile(r"^[a-z0-9_.-]+\Z")
#: A breaker's name: what a tool (or model endpoint) depends on, ``portal.vendor.example``.
DEPENDENCY_NAME = re.compile(r"^[A-Za-z0-9_.:/@-]{1,200}\Z")
#: The name of a credential a tool declares: lower-case letters, digits and single '_'.
CREDENTIAL_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|_(?!_))*\Z")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*\Z")

Effect = Literal["read", "write"]
Mode = Literal["enforce", "observe"]
Guard = Literal["allowlist", "arguments", "budgets", "limits", "loops", "output", "approvals"]
#: The guards ``mode`` can switch to observe. Never observe-only, whatever the policy says:
#: the kill switch, fail-closed refusals, secret scrubbing, idempotency, the run backstops
#: and degrade mode (observing an open breaker would mean hammering the failing vendor).
GUARDS: tuple[Guard, ...] = (
    "allowlist",
    "arguments",
    "budgets",
    "limits",
    "loops",
    "output",
    "approvals",
)
KillMode = Literal["disable_writes", "disable_expensive", "stop_all"]
OnDenied = Literal["stop", "tell_model"]
OnDegraded = Literal["stop", "tell_model"]
OnLoop = Literal["stop", "tell_model"]
Tracked = Literal["tool_calls_per_run", "tokens_per_request", "stop_reason", "latency_p95"]


def _to_decimal(value: Any) -> Any:
    """A USD amount: a number (int, float or Decimal), read exactly (``0.1`` is 0.1). Text
    and booleans are refused like every other number of the policy: ``max_usd: "2"`` is
    as much a mistake as ``max_seconds: "90"``."""
    if isinstance(value, bool | str):
        raise ValueError(f"must be a number, got {render_value(value)}{number_hint(value)}")
    if isinstance(value, Decimal):
        too_big = decimal_problem(value)
        if too_big is not None:
            raise ValueError(too_big)
        return value
    if isinstance(value, int | float):
        try:
            result = Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"must be a number, got {render_value(value)}") from None
        if not result.is_finite():
            raise ValueError(f"must be a finite number, got {render_value(value)}")
        too_big = decimal_problem(result)
        if too_big is not None:
            raise ValueError(too_big)
        return result
    return value


def _tool_name(name: str) -> str:
    if TOOL_NAME.match(name):
        return name
    why = ""
    if "*" in name or "?" in name:
        why = "; wildcards are not supported, list each tool by its exact name"
    elif any(ord(ch) > 127 for ch in name):
        ch = next(ch for ch in name if ord(ch) > 127)
        label = unicodedata.name(ch, "unnamed character")
        why = f"; it contains {ch!r} (U+{ord(ch):04X} {label}), not an ASCII character"
    elif TOOL_NAME.match(name.strip().lower()):
        why = f"; names match exactly (did you mean {name.strip().lower()!r}?)"
    raise ValueError(f"tool names use only a-z, 0-9, '_', '.', '-', got {name!r}{why}")


def _credential_name(name: str) -> str:
    if CREDENTIAL_NAME.match(name):
        return name
    raise ValueError(
        "credential names use lower-case letters, digits and single '_', starting with a "
        f"letter or digit, got {name!r}"
    )


def _json_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is None:
        return None
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "" if not exc.absolute_path else f" (at {'.'.join(map(str, exc.absolute_path))})"
        raise ValueError(f"is not a valid JSON Schema: {exc.message}{where}") from None
    return schema


def _dependency(name: str) -> str:
    if DEPENDENCY_NAME.match(name):
        return name
    raise ValueError(
        "a dependency name is 1 to 200 of A-Z, a-z, 0-9 and '_.:/@-', got " + render_value(name)
    )


#: A tool name: exact, lower-case ASCII. Each entry is checked on its own, so the
#: message points at the entry (``tools.allow[2]``, ``tools.specs.Search``).
ToolName = Annotated[str, Field(strict=True), AfterValidator(_tool_name)]
DependencyName = Annotated[str, Field(strict=True), AfterValidator(_dependency)]
CredentialName = Annotated[str, Field(strict=True), AfterValidator(_credential_name)]
JSONSchema = Annotated[dict[str, Any], AfterValidator(_json_schema)]
USD = Annotated[Decimal, BeforeValidator(_to_decimal), Field(ge=0)]
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
# Strict: a YAML `true` or a quoted "90" is a mistake, not 1 or 90 seconds.
PositiveSeconds = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
NonNegativeSeconds = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Ratio = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ArgConstraint(_Section):
    """Allowed values of one argument. A call outside them is denied before anything is reserved.

    ``schemes`` and ``hosts`` judge a URL, ``domains`` an email address, ``items`` each
    item of a list (with the same keys) and ``max_items`` its length.
    """

    schemes: list[str] | None = None
    hosts: list[str] | None = None
    domains: list[str] | None = None
    enum: list[Any] | None = None
    min: Number | None = None
    max: Number | None = None
    pattern: str | None = None
    max_length: PositiveInt | None = None
    max_items: PositiveInt | None = None
    items: ArgConstraint | None = None

    @field_validator("schemes")
    @classmethod
    def _schemes(cls, value: list[str] | None) -> list[str] | None:
        for scheme in value or ():
            if not _SCHEME.match(scheme):
                raise ValueError(f"schemes are lower-case names such as 'https', got {scheme!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ArgConstraint:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min must not exceed max, got min {self.min:g} and max {self.max:g}")
        if self.domains is not None and (self.schemes is not None or self.hosts is not None):
            raise ValueError(
                "domains judges an email address, schemes and hosts a URL: "
                "one argument cannot be both (use items for a list of addresses)"
            )
        return self

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            why = pattern_problem(value)  # compiles, bounded, no catastrophic backtracking
            if why is not None:
                raise ValueError(f"{why}, got {render_value(value)}")
        return value

    @field_validator("hosts", "domains")
    @classmethod
    def _names(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        for entry in value or ():
            why = entry_problem(entry, info.field_name or "hosts")
            if why is not None:
                raise ValueError(why)
        return value


class ToolSpec(_Section):
    """What the policy says of one tool. Unset fields fall back to the tool's own declaration."""

    effect: Effect | None = None
    description: Annotated[str, Field(strict=True)] | None = None
    """What the model is told the tool does (instead of the code's docstring)."""
    cost_usd: USD | None = None
    expensive: StrictBool | None = None
    timeout_seconds: PositiveSeconds | None = None
    retries: NonNegativeInt | None = None
    idempotent: StrictBool | None = None
    args_schema: JSONSchema | None = None
    output_schema: JSONSchema | None = None
    constraints: dict[str, ArgConstraint] = Field(default_factory=dict)
    max_output_chars: PositiveInt | None = None
    strip_html: StrictBool | None = None
    cache: StrictBool = True
    cache_ttl_seconds: NonNegativeSeconds = 60.0
    max_calls: PositiveInt | None = None
    require_approval: StrictBool | None = None
    charge_on_error: StrictBool = True
    dependency: DependencyName | None = None
    """The breaker this tool's calls count against (default: the tool's own name). Tools
    of one vendor can share it, so that vendor's outage degrades all of them at once."""
    credentials: list[CredentialName] = Field(default_factory=list)
    """Credentials the tool needs, on top of those its code declares: a call whose tenant
    lacks one is refused (``tool_denied``, why ``missing_credential``)."""
    open_world: StrictBool | None = None
    """Whether the tool reaches the open world (the web, any host), as MCP's
    ``openWorldHint``. Unset, ``corral check`` infers it (a URL or host argument, or
    ``expensive``); ``false`` says an inferred one is not. Read by ``corral check`` only."""


class ToolsSection(_Section):
    allow: list[ToolName] = Field(default_factory=list)
    specs: dict[ToolName, ToolSpec] = Field(default_factory=dict)
    on_denied: OnDenied = "stop"
    max_invalid_args: NonNegativeInt = 2

    @field_validator("allow")
    @classmethod
    def _no_duplicates(cls, names: list[str]) -> list[str]:
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"lists a tool twice, got {dupes[0]!r}")
        return names


class Budgets(_Section):
    """Per-run limits. Steps, seconds and tool calls always have a finite value."""

    max_steps: PositiveInt = 30
    max_seconds: PositiveSeconds = 90.0
    max_tool_calls: PositiveInt = 15
    max_tokens: PositiveInt | None = None
    max_input_tokens: PositiveInt | None = None
    max_output_tokens: PositiveInt | None = None
    max_usd: USD | None = None


class Writes(_Section):
    require_approval: StrictBool = True
    approval_timeout_seconds: PositiveSeconds = 900.0
    on_denied: OnDenied = "stop"


class Monitoring(_Section):
    track: list[Tracked] = Field(default_factory=list)


class KillSwitch(_Section):
    mode_when_enabled: KillMode = "disable_writes"
    expensive_cost_usd: USD | None = None


class Degrade(_Section):
    """Degrade mode: a circuit breaker per tool and a retry budget.

    A tool is degraded once at least ``failure_rate`` of its calls failed among at
    least ``min_calls`` calls in the last ``window_seconds``; it then stays degraded
    for ``cool_down_seconds``, after which one probe call (across every process
    sharing the store) decides whether it recovers. Retries are allowed only while
    they stay within ``retry_budget_ratio`` of the tool's calls in the window, plus
    ``retry_budget_floor``.
    """

    failure_rate: Annotated[float, Field(strict=True, gt=0, le=1, allow_inf_nan=False)] = 0.5
    min_calls: PositiveInt = 5
    window_seconds: PositiveSeconds = 60.0
    cool_down_seconds: PositiveSeconds = 30.0
    retry_budget_ratio: Ratio = 0.2
    retry_budget_floor: NonNegativeInt = 3
    on_degraded: OnDegraded = "tell_model"


class Observations(_Section):
    strip_html: StrictBool = True
    max_chars: PositiveInt = 4000


class Context(_Section):
    max_chars: PositiveInt = 48_000


_WINDOW = re.compile(r"^([1-9][0-9]*)(m|h|d)$")
_WINDOW_SECONDS = {"m": 60, "h": 3600, "d": 86400}


class WindowLimit(_Section):
    """A limit that spans runs: per tenant, agent, tool or the whole fleet, over a window.

    Windows are fixed UTC-aligned periods of the given size (``1d`` is the UTC
    calendar day, ``1h`` the clock hour); usage starts again from zero in each.
    A ``rolling`` window counts the usage of the last ``window`` instead, in
    sub-buckets of a sixtieth of it (:mod:`corral.budgets.windows`).
    """

    per: Literal["tenant", "agent", "tool", "global"]
    window: str
    tool: str | None = None
    max_usd: USD | None = None
    max_calls: PositiveInt | None = None
    rolling: StrictBool = False

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        if not _WINDOW.match(value):
            raise ValueError(f"must be a period such as '15m', '1h', '1d' or '30d', got {value!r}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> WindowLimit:
        if self.max_usd is None and self.max_calls is None:
            raise ValueError("needs max_usd, max_calls or both")
        if self.per == "tool" and self.tool is None:
            raise ValueError("per: tool needs the tool's name in `tool`")
        if self.per != "tool" and self.tool is not None:
            raise ValueError(f"`tool` is only for per: tool, got per: {self.per}")
        if self.tool is not None and not TOOL_NAME.match(self.tool):
            raise ValueError(f"tool names use only a-z, 0-9, '_', '.', '-', got {self.tool!r}")
        return self

    @property
    def seconds(self) -> int:
        m = _WINDOW.match(self.window)
        assert m is not None
        return int(m.group(1)) * _WINDOW_SECONDS[m.group(2)]


class Loops(_Section):
    """Loop detection: ``repeats`` identical calls (same tool, same arguments) among the
    last ``window`` calls of a run stop it with ``loop_detected`` (``on_detected:
    stop``), or are refused and handed back to the model, bounded by
    ``tools.max_invalid_args`` like its other mistakes (``tell_model``)."""

    repeats: PositiveInt = 3
    window: PositiveInt = 5
    on_detected: OnLoop = "stop"

    @model_validator(mode="after")
    def _repeats_fit_window(self) -> Loops:
        if self.repeats < 2:
            raise ValueError(f"repeats must be at least 2, got {self.repeats}")
        if self.repeats > self.window:
            raise ValueError(f"repeats ({self.repeats}) cannot be more than window ({self.window})")
        return self


class Redact(_Section):
    """Redaction rules added to the built-in ones (:mod:`corral.record.redact`): the values under
    these ``keys`` and the text matching these ``patterns`` (regular expressions) never
    reach the trace or the audit log."""

    keys: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    patterns: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            why = pattern_problem(pattern)  # compiles, bounded, no catastrophic backtracking
            if why is not None:
                raise ValueError(f"{render_value(pattern)} {why}")
            compiled = re.compile(pattern)
            if compiled.match(""):
                raise ValueError(f"{pattern!r} matches the empty text; it would match everywhere")
        return patterns


class ModelPrice(_Section):
    input_usd_per_mtok: USD
    output_usd_per_mtok: USD


class Models(_Section):
    max_output_tokens: PositiveInt = 1024
    timeout_seconds: PositiveSeconds = 60.0
    prices: dict[str, ModelPrice] = Field(default_factory=dict)


class GuardModes(_Section):
    """``mode`` per guard: each guard named here is enforced or observed, the others follow
    ``default``. ``approvals: observe`` must be named to let an unapproved write go ahead
    (recorded as a would-be ``approval_denied``); ``default: observe`` never implies it."""

    default: Mode = "enforce"
    allowlist: Mode | None = None
    arguments: Mode | None = None
    budgets: Mode | None = None
    limits: Mode | None = None
    loops: Mode | None = None
    output: Mode | None = None
    approvals: Mode | None = None

    def observed(self) -> frozenset[Guard]:
        out: set[Guard] = set()
        for guard in GUARDS:
            named = getattr(self, guard)
            fallback = "enforce" if guard == "approvals" else self.default
            if (named or fallback) == "observe":
                out.add(guard)
        return frozenset(out)


def _mode_kind(value: Any) -> str:
    return "[per_guard]" if isinstance(value, Mapping | GuardModes) else "[whole]"


# One mode for the whole policy, or one per guard; the discriminator validates only the
# branch that applies, so a mistake gets one message, not one per branch (the tags are
# bracketed so that error paths leave them out, like pydantic's own markers).
ModeSetting = Annotated[
    Annotated[Mode, Tag("[whole]")] | Annotated[GuardModes, Tag("[per_guard]")],
    Discriminator(_mode_kind),
]


class Policy(_Section):
    """A whole policy. Build with :meth:`from_dict`, :meth:`from_yaml` or :func:`load_policy`."""

    version: str | None = None
    mode: ModeSetting = "enforce"
    tools: ToolsSection = Field(default_factory=ToolsSection)
    budgets: Budgets = Field(default_factory=Budgets)
    writes: Writes = Field(default_factory=Writes)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    kill_switch: KillSwitch = Field(default_factory=KillSwitch)
    degrade: Degrade = Field(default_factory=Degrade)
    observations: Observations = Field(default_factory=Observations)
    context: Context = Field(default_factory=Context)
    loops: Loops = Field(default_factory=Loops)
    limits: list[WindowLimit] = Field(default_factory=list)
    models: Models = Field(default_factory=Models)
    redact: Redact = Field(default_factory=Redact)

    _allowed_cache: frozenset[str] | None = PrivateAttr(default=None)
    _digest_cache: str | None = PrivateAttr(default=None)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> Policy:
        """Validate a mapping; raise :class:`PolicyError` listing every problem.

        ``None`` is the empty policy: default budgets, and no tool allowed.
        """
        if data is None:
            data = {}
        if not isinstance(data, dict):
            got = render_value(data)
            raise PolicyError(
                [f"(top level): must be a mapping of sections, got {got}"], source=source
            )
        data = plain_tree(data, source)  # bounded sizes, depth and types, or PolicyError
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PolicyError(format_validation_error(exc, data), source=source) from None
        except RecursionError:
            raise PolicyError(
                ["(top level): nested too deeply to validate"], source=source
            ) from None
        except Exception as exc:  # a validator that failed unexpectedly: still one line
            raise PolicyError(
                [f"(top level): cannot be validated ({error_text(exc)})"], source=source
            ) from None

    @classmethod
    def from_yaml(cls, text: str, *, source: str | None = None) -> Policy:
        """Parse YAML (JSON is YAML too) and validate it.

        A key given twice in one mapping is an error, and so is a text with no
        document at all (an empty or truncated file): write ``{}`` for a policy
        that allows nothing.
        """
        check_size(text, source)
        _not_empty(text, source)
        data = parse_yaml(text, source)  # bounded: see corral.policy._input
        return cls.from_dict(_document(data, source), source=source)

    @classmethod
    def from_json(cls, text: str, *, source: str | None = None) -> Policy:
        """Parse strict JSON (no trailing comma, no comment, no key twice) and validate it."""
        check_size(text, source)
        _not_empty(text, source)
        data = parse_json(text, source)  # bounded: see corral.policy._input
        return cls.from_dict(_document(data, source), source=source)

    @property
    def observed_guards(self) -> frozenset[Guard]:
        """The guards that record what they would stop instead of stopping it.

        ``mode: observe`` observes every guard but ``approvals``; a mapping names them.
        """
        if isinstance(self.mode, GuardModes):
            return self.mode.observed()
        if self.mode == "observe":
            return frozenset(g for g in GUARDS if g != "approvals")
        return frozenset()

    @property
    def mode_name(self) -> Literal["enforce", "observe", "mixed"]:
        """``enforce`` (no guard observed), ``observe`` (all of them), else ``mixed``."""
        observed = self.observed_guards
        if not observed:
            return "enforce"
        return "observe" if observed >= frozenset(GUARDS) - {"approvals"} else "mixed"

    def allows(self, name: str) -> bool:
        """Exact-match allowlist lookup: no case folding, no trimming, no wildcards."""
        return name in self._allowed

    @property
    def _allowed(self) -> frozenset[str]:
        cached = self._allowed_cache
        if cached is None:
            cached = self._allowed_cache = frozenset(self.tools.allow)
        return cached

    def spec(self, name: str) -> ToolSpec | None:
        return self.tools.specs.get(name)

    @property
    def digest(self) -> str:
        """A stable hash of the policy's meaning (for traces and replay).

        Key order, defaults spelled out or left out, and ``1.50`` versus ``1.5``
        do not change it.
        """
        if self._digest_cache is None:
            body = json.dumps(
                self.model_dump(), sort_keys=True, separators=(",", ":"), default=_canonical
            )
            self._digest_cache = hashlib.sha256(body.encode()).hexdigest()[:16]
        return self._digest_cache

    def warnings(self) -> list[str]:
        """Things that are valid but probably not meant."""
        out = []
        for name in self.tools.specs:
            if name not in self._allowed:
                out.append(
                    f"tools.specs.{name}: has a spec but is not in tools.allow, so it is denied"
                )
        return out


def _canonical(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return to_jsonable_python(value)  # dates and the like in free-form fields (`enum`)


_NOTHING = re.compile(r"^\s*(#.*|---.*|\.\.\.\s*)?$")


def _not_empty(text: str, source: str | None) -> None:
    if all(_NOTHING.match(line) for line in text.splitlines()):
        raise PolicyError(
            ["(file): is empty (write {} for a policy that allows nothing)"], source=source
        )


def _document(data: Any, source: str | None) -> Any:
    # from_dict(None) is the empty policy, but a file that says `null` is a mistake.
    if data is None:
        raise PolicyError(["(top level): must be a mapping of sections, got null"], source=source)
    return data


def load_policy(path: str | Path) -> Policy:
    """Load a policy from a ``.yaml``, ``.yml`` or ``.json`` file.

    A ``.json`` file is parsed as strict JSON, anything else as YAML.

    >>> import tempfile, os
    >>> f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    >>> _ = f.write("tools: {allow: [kb.read]}"); f.close()
    >>> load_policy(f.name).tools.allow
    ['kb.read']
    >>> os.unlink(f.name)
    """
    p = Path(path)
    text = read_text(p)  # a regular file, bounded, UTF-8 (a byte-order mark dropped)
    if p.suffix.lower() == ".json":
        return Policy.from_json(text, source=str(p))
    return Policy.from_yaml(text, source=str(p))
