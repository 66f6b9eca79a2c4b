"""What a replay found: the run reproduced (same decisions, stop reason and usage), or the
first step at which it diverged, and why.

>>> d = Divergence(step=3, reason="policy_changed", message="tool_call browser.open: denied")
>>> str(d)
'step 3: policy_changed: tool_call browser.open: denied'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: Why a replay diverged (the string values are stable: ``--json`` carries them).
DivergenceReason = Literal[
    "policy_changed",
    "tool_definition_changed",
    "model_request_differs",
    "output_invalid",
    "recording_truncated",
    "recording_altered",
    "decision_differs",
    "not_replayable",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Divergence:
    """The first step at which the replay differs from the recording.

    ``step`` counts the recording's steps (model calls and tool attempts) from 1; 0 means
    before the first (the recording itself could not be used). ``expected`` and ``got`` are
    the recorded and replayed decision, as one line each, when there are two to compare.
    """

    step: int
    reason: DivergenceReason
    message: str
    expected: str | None = None
    got: str | None = None

    def __str__(self) -> str:
        return f"step {self.step}: {self.reason}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "reason": self.reason,
            "message": self.message,
            "expected": self.expected,
            "got": self.got,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplayResult:
    """The outcome of :func:`corral.replay`: ``reproduced`` when the replayed run made the
    same decisions, stopped for the same reason and used the same (steps, tool calls,
    tokens, USD); else ``divergence`` says where and why. ``notes`` say what else differs
    without changing a decision (a tool definition that changed, a policy given)."""

    run_id: str
    reproduced: bool
    recorded_stop_reason: str | None
    stop_reason: str | None
    recorded_usage: Mapping[str, Any] = field(default_factory=dict)
    usage: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 0
    decisions: int = 0
    policy_digest: str = ""
    replayed_policy_digest: str = ""
    divergence: Divergence | None = None
    notes: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """One line: ``reproduced: ...``, ``diverged at step N (reason): ...``, or ``not
        replayed (reason): ...`` when the recording could not be used at all."""
        if self.reproduced:
            return "reproduced: same decisions, same stop reason, same usage"
        assert self.divergence is not None
        d = self.divergence
        if d.step == 0:
            return f"not replayed ({d.reason}): {d.message}"
        return f"diverged at step {d.step} ({d.reason}): {d.message}"

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON (``corral replay --json``; stable keys)."""
        return {
            "run_id": self.run_id,
            "reproduced": self.reproduced,
            "summary": self.summary,
            "recorded_stop_reason": self.recorded_stop_reason,
            "stop_reason": self.stop_reason,
            "recorded_usage": dict(self.recorded_usage),
            "usage": dict(self.usage),
            "steps": self.steps,
            "decisions": self.decisions,
            "policy_digest": self.policy_digest,
            "replayed_policy_digest": self.replayed_policy_digest,
            "divergence": None if self.divergence is None else self.divergence.to_dict(),
            "notes": list(self.notes),
        }
