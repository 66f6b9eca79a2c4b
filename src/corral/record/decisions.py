"""Reading a run's trace events: which guard refused what, each refusal once.

A refusal shows up in the trace in one of two ways. Guards that can hand a
mistake back to the model record an event before they stop the run (``denied``,
``invalid_args``, ``approval``); the others stop it directly, and the stop in
``run_end`` is their only record (budgets, kill switch, loops, degrade, output
checks, fail-closed refusals). :class:`DenialReader` reads a run's events in
order and yields each refusal exactly once, naming the guard that decided. In
observe mode the ``would_stop`` events are the refusals that *would* have
happened (``observed=True``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral.stores.base import Event

#: The guard behind each stop reason that refuses an action.
GUARD_OF_REASON: Mapping[str, str] = {
    "max_steps": "budget",
    "max_seconds": "budget",
    "max_tool_calls": "budget",
    "max_tokens": "budget",
    "max_usd": "budget",
    "tool_denied": "allowlist",
    "invalid_tool_args": "arguments",
    "approval_denied": "approval",
    "approval_timeout": "approval",
    "kill_switch": "kill_switch",
    "loop_detected": "loop",
    "dependency_degraded": "degrade",
    "invalid_tool_output": "output",
    "control_plane_unavailable": "control_plane",
}

#: The guard behind each ``why`` of a ``tool_denied`` refusal.
GUARD_OF_WHY: Mapping[str, str] = {
    "not_allowed": "allowlist",
    "unknown_tool": "allowlist",
    "argument_not_allowed": "constraints",
    "idempotency_mismatch": "idempotency",
    # Refusals recorded as ``denied`` by guards other than the allowlist:
    "degraded": "degrade",
    "loop_detected": "loop",
    "missing_credential": "credentials",
}

#: Stop reasons whose guard records an event of its own before stopping the run.
_RECORDED_BEFORE_STOP = frozenset({"tool_denied", "invalid_tool_args", "approval_denied"})

#: The most runs whose approval state is remembered between batches.
MAX_RUNS = 10_000


@dataclass(frozen=True, kw_only=True, slots=True)
class Denial:
    """One refusal: the guard that decided, the tool (``""`` for the run or a model call),
    the stop reason it maps to, and a short ``why`` (a check, a budget scope)."""

    guard: str
    tool: str
    reason: str
    why: str
    observed: bool = False
    """Observe mode: the refusal would have happened; the action went ahead."""


def guard_of(reason: str, why: str = "") -> str:
    """The guard behind a stop ``reason`` (and, for ``tool_denied``, its ``why``)."""
    if reason == "tool_denied" and why in GUARD_OF_WHY:
        return GUARD_OF_WHY[why]
    return GUARD_OF_REASON.get(reason, "other")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


class DenialReader:
    """Yields each refusal in a stream of events once; feed each run's events in order.

    It remembers, per run, only whether the last approval was refused (so a timeout
    stop after a refused approval is not counted twice), for at most
    :data:`MAX_RUNS` runs.
    """

    def __init__(self, *, max_runs: int = MAX_RUNS) -> None:
        self._refused: OrderedDict[str, bool] = OrderedDict()
        self._max_runs = max_runs

    def read(self, event: Event) -> Denial | None:
        """The refusal ``event`` records, if any."""
        data = event.data
        kind = event.kind
        if kind == "denied":
            if data.get("observed"):
                return None  # the would_stop event that follows records it
            why = _text(data.get("why"))
            return Denial(
                guard=guard_of("tool_denied", why),
                tool=_text(data.get("tool")),
                reason="tool_denied",
                why=why,
            )
        if kind == "invalid_args":
            return Denial(
                guard="arguments",
                tool=_text(data.get("tool")),
                reason="invalid_tool_args",
                why="invalid_args",
            )
        if kind == "approval":
            refused = data.get("approved") is not True
            self._remember(event.run_id, refused)
            if not refused:
                return None
            return Denial(
                guard="approval",
                tool=_text(data.get("tool")),
                reason="control_plane_unavailable" if data.get("error") else "approval_denied",
                why="channel_failed" if data.get("error") else "denied",
            )
        if kind == "would_stop":
            return self._from_stop(data, observed=True)
        if kind == "run_end":
            refused = self._refused.pop(event.run_id, False)
            stop = data.get("stop")
            if not isinstance(stop, Mapping):
                return None
            reason = _text(stop.get("reason"))
            if reason in _RECORDED_BEFORE_STOP:
                return None
            if reason == "approval_timeout" and refused:
                return None
            if reason == "control_plane_unavailable" and stop.get("detail") == "approvals":
                return None  # the failed approval event recorded it
            return self._from_stop(stop, observed=False)
        return None

    def _remember(self, run_id: str, refused: bool) -> None:
        self._refused[run_id] = refused
        self._refused.move_to_end(run_id)
        while len(self._refused) > self._max_runs:
            self._refused.popitem(last=False)

    @staticmethod
    def _from_stop(stop: Mapping[str, Any], *, observed: bool) -> Denial | None:
        reason = _text(stop.get("reason"))
        if reason not in GUARD_OF_REASON:
            return None  # failures (tool_error, model_error, ...) are not refusals
        extra = stop.get("extra")
        why = _text(extra.get("why")) if isinstance(extra, Mapping) else ""
        return Denial(
            guard=guard_of(reason, why),
            tool=_text(stop.get("tool")),
            reason=reason,
            why=why or _text(stop.get("scope") or stop.get("detail")),
            observed=observed,
        )
