"""The sections of a policy: tools and their specs, argument constraints, budgets, writes,
the kill switch, degrade mode, observations, context, window limits, loops, redaction,
model prices and per-guard modes.

Each is a frozen pydantic model that refuses unknown keys; :class:`~corral.policy.schema.Policy`
holds one of each. Imports ``corral.policy.fields`` and the policy's checkers (``patterns``,
``hostnames``, ``messages``), nothing else of corral.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from corral.policy.fields import (
    GUARDS,
    TOOL_NAME,
    USD,
    CredentialName,
    DependencyName,
    Effect,
    Guard,
    JSONSchema,
    KillMode,
    Mode,
    NonNegativeInt,
    NonNegativeSeconds,
    Number,
    OnDegraded,
    OnDenied,
    OnLoop,
    PositiveInt,
    PositiveSeconds,
    Ratio,
    Threshold,
    ToolName,
    Tracked,
)
from corral.policy.hostnames import entry_problem
from corral.policy.messages import render_value
from corral.policy.patterns import problem as pattern_problem

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*\Z")


class Section(BaseModel):
    """The base of every section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ArgConstraint(Section):
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


class ToolSpec(Section):
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


#: A pinned definition's SHA-256, in lower-case hex.
Digest = Annotated[str, Field(strict=True, pattern=r"^[0-9a-f]{64}$")]


class ToolsSection(Section):
    allow: list[ToolName] = Field(default_factory=list)
    specs: dict[ToolName, ToolSpec] = Field(default_factory=dict)
    on_denied: OnDenied = "stop"
    max_invalid_args: NonNegativeInt = 2
    #: In-process tools' pinned definitions, tool -> SHA-256 (corral.gateway.pins). In a
    #: policy file, the name of the lock file beside it (``corral check --pin`` writes it).
    pins: dict[ToolName, Digest] | None = None

    @field_validator("allow")
    @classmethod
    def _no_duplicates(cls, names: list[str]) -> list[str]:
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"lists a tool twice, got {dupes[0]!r}")
        return names


class Budgets(Section):
    """Per-run limits. Steps, seconds and tool calls always have a finite value."""

    max_steps: PositiveInt = 30
    max_seconds: PositiveSeconds = 90.0
    max_tool_calls: PositiveInt = 15
    max_tokens: PositiveInt | None = None
    max_input_tokens: PositiveInt | None = None
    max_output_tokens: PositiveInt | None = None
    max_usd: USD | None = None


class Writes(Section):
    require_approval: StrictBool = True
    approval_timeout_seconds: PositiveSeconds = 900.0
    on_denied: OnDenied = "stop"


class Approvals(Section):
    """Where new pending approval requests are announced: ``notify_url`` gets each one as
    a signed JSON POST (HMAC-SHA256 with the secret in the environment variable
    ``notify_secret_env``), so that approvers need not poll."""

    notify_url: str | None = None
    notify_secret_env: str = "CORRAL_APPROVALS_SECRET"
    notify_timeout_seconds: PositiveSeconds = 5.0

    @field_validator("notify_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        scheme, sep, rest = value.partition("://")
        if scheme.lower() not in ("http", "https") or not sep or not rest or value != value.strip():
            raise ValueError(f"must be an http:// or https:// URL, got {render_value(value)}")
        return value

    @field_validator("notify_secret_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", value):
            raise ValueError(f"must be an environment variable's name, got {render_value(value)}")
        return value


class Thresholds(Section):
    """How far each figure may move between ``corral drift``'s windows before it has drifted.

    A number figure drifts when its relative change passes its threshold (``0.25``: a
    quarter up or down); the stop-reason mix drifts when its total variation distance
    (half the sum of the changes in each reason's share, 0 to 1) passes ``stop_reason``.
    ``null`` turns a figure's judgement off (and ``corral check``'s monitoring item with it).
    """

    tool_calls_per_run: Threshold | None = 0.25
    tokens_per_request: Threshold | None = 0.25
    stop_reason: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0, le=1)] | None = 0.15
    latency_p95: Threshold | None = 0.5
    spend_per_run: Threshold | None = 0.25


class Monitoring(Section):
    """Drift monitoring: the per-run figures tracked (``track``), how far each may move
    (``thresholds``), the fewest runs a window needs to be judged (``min_runs``), and whether
    the tracked figures are exported per run as Prometheus metrics (``metrics``, when the
    process enables corral's metrics). See docs/drift.md."""

    track: list[Tracked] = Field(default_factory=list)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    min_runs: PositiveInt = 20
    metrics: StrictBool = True

    @field_validator("track")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"names {', '.join(repeated)} more than once")
        return value


class KillSwitch(Section):
    mode_when_enabled: KillMode = "disable_writes"
    expensive_cost_usd: USD | None = None


class Degrade(Section):
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


class Observations(Section):
    strip_html: StrictBool = True
    max_chars: PositiveInt = 4000


class Context(Section):
    max_chars: PositiveInt = 48_000


class Recording(Section):
    """What a run keeps for ``corral replay``: on by default, at most ``max_bytes`` of
    recorded bodies per run (older ones are then kept as their digests only)."""

    enabled: StrictBool = True
    max_bytes: PositiveInt = 1_048_576


_WINDOW = re.compile(r"^([1-9][0-9]*)(m|h|d)$")
_WINDOW_SECONDS = {"m": 60, "h": 3600, "d": 86400}


class WindowLimit(Section):
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


class Loops(Section):
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


class Redact(Section):
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


class ModelPrice(Section):
    input_usd_per_mtok: USD
    output_usd_per_mtok: USD


class Models(Section):
    max_output_tokens: PositiveInt = 1024
    timeout_seconds: PositiveSeconds = 60.0
    prices: dict[str, ModelPrice] = Field(default_factory=dict)


class GuardModes(Section):
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
