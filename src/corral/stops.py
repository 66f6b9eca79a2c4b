"""The closed list of stop reasons and the value that describes one stop.

Every run ends with exactly one of :data:`STOP_REASONS`. The string values are
the contract: they appear in results, traces, the audit log and metrics, and
scripts match on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
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


def _fmt(value: Any) -> str:
    if isinstance(value, Decimal):
        return (
            f"{value:.2f}" if value == value.quantize(Decimal("0.01")) else f"{value.normalize()}"
        )
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class StopInfo:
    """Why a run stopped: the reason, what it concerned, and whether retrying can help.

    ``detail`` is a short subject (a tool name, a budget scope such as ``run`` or
    ``tool/browser.open``, or a sub-reason such as ``unknown_tool``); ``limit`` and
    ``observed`` are the figures of a budget stop (``observed`` is what the usage
    *would* have been).
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

    def __str__(self) -> str:
        text = self.reason if not self.detail else f"{self.reason}:{self.detail}"
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
