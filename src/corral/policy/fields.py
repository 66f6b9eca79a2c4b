"""The building blocks of the policy's sections: names, option sets and checked field types.

Tool, dependency and credential names; the ``Literal`` option sets (effects, modes,
guards, what to do on a denial); and the annotated field types (``USD``,
``PositiveSeconds``, ...) with the validators that say what is wrong in one line.
Imports ``corral.policy._input`` and ``corral.policy.messages``, nothing else of corral.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from corral.policy._input import decimal_problem
from corral.policy.messages import number_hint, render_value

# \Z, not $: "$" also matches before a trailing newline, and names match exactly.
TOOL_NAME = re.compile(r"^[a-z0-9_.-]+\Z")
#: A breaker's name: what a tool (or model endpoint) depends on, ``portal.vendor.example``.
DEPENDENCY_NAME = re.compile(r"^[A-Za-z0-9_.:/@-]{1,200}\Z")
#: The name of a credential a tool declares: lower-case letters, digits and single '_'.
CREDENTIAL_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|_(?!_))*\Z")

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
#: The per-run figures ``monitoring.track`` may name (see docs/drift.md).
Tracked = Literal[
    "tool_calls_per_run", "tokens_per_request", "stop_reason", "latency_p95", "spend_per_run"
]
#: The drift signals the readiness checklist asks ``monitoring.track`` to name.
DRIFT_SIGNALS: tuple[Tracked, ...] = (
    "tool_calls_per_run",
    "tokens_per_request",
    "stop_reason",
    "latency_p95",
)


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
    import jsonschema  # on first use: a policy without schemas never needs it

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
#: A relative change (0.25: a quarter up or down) or a distance past which a figure drifted.
Threshold = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0)]
