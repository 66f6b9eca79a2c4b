"""The result of a governed run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from corral.budgets.meter import Usage
from corral.stops import StopInfo, StopReason

Status = Literal["ok", "stopped", "error"]
CallOutcome = Literal["executed", "cached", "replayed"]


@dataclass(frozen=True, kw_only=True, slots=True)
class CallInfo:
    """How the last tool call of a run was served (``run.last_call``).

    ``executed``: the tool ran. ``cached``: an identical read was served from the run's
    cache. ``replayed``: a write whose idempotency key already had an outcome; the stored
    outcome was returned and *nothing ran again* (``idempotency_key`` names the key).
    """

    tool: str
    outcome: CallOutcome
    idempotency_key: str | None = None

    @property
    def replayed(self) -> bool:
        return self.outcome == "replayed"


@dataclass(frozen=True, kw_only=True, slots=True)
class RunResult:
    """How a run ended: ``status``, ``stop_reason`` (with ``stop`` details), the answer or a
    partial, the usage, and in observe mode the stops that *would* have happened."""

    run_id: str
    status: Status
    stop_reason: StopReason
    answer: str | None = None
    partial: str | None = None
    usage: Usage = field(default_factory=Usage)
    stop: StopInfo | None = None
    would_stop: tuple[StopInfo, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "stop_reason": self.stop_reason,
            "stop": self.stop.to_dict() if self.stop else None,
            "answer": self.answer,
            "partial": self.partial,
            "usage": self.usage.to_dict(),
            "would_stop": [w.to_dict() for w in self.would_stop],
            "error": self.error,
        }

    def __str__(self) -> str:
        why = str(self.stop) if self.stop else self.stop_reason
        return f"{self.status} ({why})"
