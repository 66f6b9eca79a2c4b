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
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from ._errors import format_validation_error
from .exceptions import PolicyError

TOOL_NAME = re.compile(r"^[a-z0-9_.-]+$")

Effect = Literal["read", "write"]
Mode = Literal["enforce", "observe"]
KillMode = Literal["disable_writes", "disable_expensive", "stop_all"]
OnDenied = Literal["stop", "tell_model"]
Tracked = Literal["tool_calls_per_run", "tokens_per_request", "stop_reason", "latency_p95"]


def _to_decimal(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    if isinstance(value, int | float | str):
        try:
            result = Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"must be a number, got {value!r}") from None
        if not result.is_finite():
            raise ValueError(f"must be a finite number, got {value!r}")
        return result
    return value


USD = Annotated[Decimal, BeforeValidator(_to_decimal), Field(ge=0)]
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ArgConstraint(_Section):
    """Allowed values of one argument. A call outside them is denied before anything is reserved."""

    schemes: list[str] | None = None
    hosts: list[str] | None = None
    enum: list[Any] | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    max_length: PositiveInt | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"is not a valid regular expression ({exc}), got {value!r}") from None
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for host in value:
            bare = host[2:] if host.startswith("*.") else host
            if not bare or "/" in bare or ":" in bare or "*" in bare or bare != bare.lower():
                raise ValueError(
                    f"hosts are lower-case names such as 'example.com' or '*.example.com', got {host!r}"
                )
        return value


class ToolSpec(_Section):
    """What the policy says of one tool. Unset fields fall back to the tool's own declaration."""

    effect: Effect | None = None
    cost_usd: USD | None = None
    expensive: bool | None = None
    timeout_seconds: PositiveSeconds | None = None
    retries: NonNegativeInt | None = None
    idempotent: bool | None = None
    args_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    constraints: dict[str, ArgConstraint] = Field(default_factory=dict)
    max_output_chars: PositiveInt | None = None
    strip_html: bool | None = None
    cache: bool = True
    cache_ttl_seconds: Annotated[float, Field(ge=0)] = 60.0
    max_calls: PositiveInt | None = None
    require_approval: bool | None = None
    charge_on_error: bool = True


class ToolsSection(_Section):
    allow: list[str] = Field(default_factory=list)
    specs: dict[str, ToolSpec] = Field(default_factory=dict)
    on_denied: OnDenied = "stop"
    max_invalid_args: NonNegativeInt = 2

    @field_validator("allow")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if not isinstance(n, str) or not TOOL_NAME.match(n)]
        if bad:
            raise ValueError(
                f"tool names use only a-z, 0-9, '_', '.', '-' (exact, no wildcards), got {bad[0]!r}"
            )
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"lists a tool twice, got {dupes[0]!r}")
        return names

    @field_validator("specs")
    @classmethod
    def _spec_names(cls, specs: dict[str, ToolSpec]) -> dict[str, ToolSpec]:
        for name in specs:
            if not TOOL_NAME.match(name):
                raise ValueError(f"tool names use only a-z, 0-9, '_', '.', '-', got {name!r}")
        return specs


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
    require_approval: bool = True
    approval_timeout_seconds: PositiveSeconds = 900.0
    on_denied: OnDenied = "stop"


class Monitoring(_Section):
    track: list[Tracked] = Field(default_factory=list)


class KillSwitch(_Section):
    mode_when_enabled: KillMode = "disable_writes"
    expensive_cost_usd: USD | None = None


class Observations(_Section):
    strip_html: bool = True
    max_chars: PositiveInt = 4000


class Context(_Section):
    max_chars: PositiveInt = 48_000


class ModelPrice(_Section):
    input_usd_per_mtok: USD
    output_usd_per_mtok: USD


class Models(_Section):
    max_output_tokens: PositiveInt = 1024
    timeout_seconds: PositiveSeconds = 60.0
    prices: dict[str, ModelPrice] = Field(default_factory=dict)


class Policy(_Section):
    """A whole policy. Build with :meth:`from_dict`, :meth:`from_yaml` or :func:`load_policy`."""

    version: str | None = None
    mode: Mode = "enforce"
    tools: ToolsSection = Field(default_factory=ToolsSection)
    budgets: Budgets = Field(default_factory=Budgets)
    writes: Writes = Field(default_factory=Writes)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    kill_switch: KillSwitch = Field(default_factory=KillSwitch)
    observations: Observations = Field(default_factory=Observations)
    context: Context = Field(default_factory=Context)
    models: Models = Field(default_factory=Models)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> Policy:
        """Validate a mapping; raise :class:`PolicyError` listing every problem."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise PolicyError([f"(top level): must be a mapping, got {type(data).__name__}"], source=source)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PolicyError(format_validation_error(exc, data), source=source) from None

    @classmethod
    def from_yaml(cls, text: str, *, source: str | None = None) -> Policy:
        """Parse YAML (JSON is YAML too) and validate it."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise PolicyError([f"(file): {where}not valid YAML or JSON ({problem})"], source=source) from None
        return cls.from_dict(data, source=source)

    def allows(self, name: str) -> bool:
        """Exact-match allowlist lookup: no case folding, no trimming, no wildcards."""
        return name in self._allowed

    @property
    def _allowed(self) -> frozenset[str]:
        cached: frozenset[str] | None = self.__dict__.get("_allowed_cache")
        if cached is None:
            cached = frozenset(self.tools.allow)
            object.__setattr__(self, "__dict__", {**self.__dict__, "_allowed_cache": cached})
        return cached

    def spec(self, name: str) -> ToolSpec | None:
        return self.tools.specs.get(name)

    @property
    def digest(self) -> str:
        """A stable hash of the policy's meaning (for traces and replay)."""
        body = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def warnings(self) -> list[str]:
        """Things that are valid but probably not meant."""
        out = []
        for name in self.tools.specs:
            if name not in self._allowed:
                out.append(f"tools.specs.{name}: has a spec but is not in tools.allow, so it is denied")
        return out


def load_policy(path: str | Path) -> Policy:
    """Load a policy from a ``.yaml``, ``.yml`` or ``.json`` file.

    >>> import tempfile, os
    >>> f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    >>> _ = f.write("tools: {allow: [kb.read]}"); f.close()
    >>> load_policy(f.name).tools.allow
    ['kb.read']
    >>> os.unlink(f.name)
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([f"(file): no such file: {p}"], source=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([f"(file): cannot read {p}: {exc}"], source=str(p)) from None
    return Policy.from_yaml(text, source=str(p))
