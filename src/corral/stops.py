"""The closed list of stop reasons and the value that describes one stop.

Every run ends with exactly one of :data:`STOP_REASONS`. The string values are
the contract: they appear in results, traces, the audit log and metrics, and
scripts match on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, get_args

StopReason = Literal[
    "ok",
    "max_steps",
    "max_seconds",
    "max_tool_calls",
    "max_tokens",
    "max_usd",
    "tool_denied",
    "approval_denied",
    "approval_timeout",
    "kill_switch",
    "invalid_tool_args",
    "invalid_tool_output",
    "tool_error",
    "dependency_degraded",
    "loop_detected",
    "model_error",
    "invalid_model_output",
    "cancelled",
    "control_plane_unavailable",
    "agent_error",
]

STOP_REASONS: tuple[StopReason, ...] = get_args(StopReason)

#: Reasons where trying the same thing again later may succeed.
RETRYABLE_REASONS: frozenset[str] = frozenset(
    {
        "approval_timeout",
        "dependency_degraded",
        "tool_error",
        "model_error",
        "control_plane_unavailable",
    }
)


def money(value: Decimal) -> str:
    """A USD amount as people write it: at least two decimals (``2.50``), more only when
    the amount has them (``0.0015``)."""
    try:
        cents = value.quantize(Decimal("0.01"))
    except InvalidOperation:  # more digits than the context holds (policies allow 1e30)
        return f"{value.normalize()}"
    return f"{value:.2f}" if value == cents else f"{value.normalize()}"


def _fmt(value: Any) -> str:
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class StopInfo:
    """Why a run stopped: the reason, what it concerned, and whether retrying can help.

    One shape for every stop: ``detail`` is its subject — the tool (``browser.open``),
    the model, or the scope (``run``, ``tool/browser.open``, ``tenant/1d``, ``store``) —
    and ``extra["why"]`` the sub-reason where one applies (``not_allowed``,
    ``unknown_tool``, ``argument_not_allowed``, ``outcome_unknown``, ...), with an
    optional short ``extra["note"]``; ``limit`` and ``observed`` are the figures of a
    budget stop (``observed`` is what the usage *would* have been). As text::

        tool_denied:browser.open
        tool_denied:fetch.get (argument_not_allowed: host evil.com)
        max_usd:tenant/1d (limit 50.00, would be 50.70)

    (The allowlist's own refusal, ``why`` ``not_allowed``, reads as plain
    ``tool_denied:<tool>``: it is what ``tool_denied`` means by default.)
    """

    reason: StopReason
    detail: str = ""
    message: str = ""
    tool: str | None = None
    scope: str | None = None
    limit: Any = None
    observed: Any = None
    retryable: bool = False
    retry_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def why(self) -> str | None:
        """The sub-reason (``extra["why"]``), if any."""
        why = self.extra.get("why") if self.extra else None
        return why if isinstance(why, str) else None

    def __str__(self) -> str:
        text = self.reason if not self.detail else f"{self.reason}:{self.detail}"
        why = self.why
        if why and not (self.reason == "tool_denied" and why == "not_allowed"):
            note = self.extra.get("note")
            text += f" ({why}: {note})" if isinstance(note, str) and note else f" ({why})"
        if self.limit is not None and self.observed is not None:
            text += f" (limit {_fmt(self.limit)}, would be {_fmt(self.observed)})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (decimals as strings)."""
        out: dict[str, Any] = {"reason": self.reason, "detail": self.detail, "text": str(self)}
        for key in ("message", "tool", "scope", "retry_after"):
            value = getattr(self, key)
            if value:
                out[key] = value
        if self.limit is not None:
            out["limit"] = _json_number(self.limit)
            out["observed"] = _json_number(self.observed)
        out["retryable"] = self.retryable
        if self.extra:
            out["extra"] = self.extra
        return out


def _json_number(value: Any) -> Any:
    return str(value) if isinstance(value, Decimal) else value
