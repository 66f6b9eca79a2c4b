"""What is recorded, as JSON: a run's row, its timeline, an approval, a kill switch, an API
key — the shapes ``corral runs / show / approvals / kill / keys --json`` print and the HTTP
API of ``corral serve`` answers with, written in one place so that both say the same.

Imports the stores' record types and :mod:`corral.record.decisions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from corral.record.decisions import Denial, DenialReader
from corral.stores.base import ApprovalRecord, Event, KeyRecord, KillSwitchState, RunRecord

__all__ = [
    "APPROVAL_CONTEXT",
    "approval_row",
    "as_decimal",
    "iso",
    "iso_seconds",
    "key_row",
    "run_row",
    "switch_row",
    "timeline_of",
    "usage_from_events",
]


def as_decimal(value: Any) -> Decimal:
    """``value`` as a Decimal (0 when missing or not a number)."""
    try:
        return Decimal(str(value)) if value is not None else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


def iso(at: float) -> str:
    """Epoch seconds as ISO 8601 in UTC, to the millisecond."""
    stamp = datetime.fromtimestamp(at, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_seconds(at: float) -> str:
    """Epoch seconds as ISO 8601 in UTC, to the second (``2025-11-24T09:12:05Z``)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_or_none(at: float | None) -> str | None:
    return None if at is None or at <= 0 else iso(at)


# -- runs -------------------------------------------------------------------------------
def run_row(record: RunRecord, events: Sequence[Event] | None = None) -> dict[str, Any]:
    """The JSON form of one run; its usage from ``events`` when none was written."""
    usage: Mapping[str, Any] = record.usage or (usage_from_events(events) if events else {})
    return {
        "run_id": record.id,
        "tenant": record.tenant,
        "agent": record.agent,
        "status": record.status,
        "stop_reason": record.stop_reason,
        "stop": dict(record.stop) if record.stop else None,
        "steps": int(usage.get("steps", 0)),
        "tool_calls": int(usage.get("tool_calls", 0)),
        "input_tokens": int(usage.get("input_tokens", 0)),
        "output_tokens": int(usage.get("output_tokens", 0)),
        "usd": str(as_decimal(usage.get("usd"))),
        "active_seconds": usage.get("active_seconds"),
        "waiting_seconds": usage.get("waiting_seconds"),
        "started_at": iso(record.started_at),
        "ended_at": iso(record.ended_at) if record.ended_at else None,
        "task": record.task,
        "would_stop": [dict(w) for w in record.would_stop],
    }


#: Tool-call outcomes that used a call of the budget (gateway/charges.py: every attempt
#: that started, whatever became of it).
_CHARGED = frozenset({"ok", "error", "timeout", "invalid_output", "not_executed", "cancelled"})


def usage_from_events(events: Sequence[Event]) -> dict[str, Any]:
    """What a run's events show it used, in :meth:`corral.Usage.to_dict`'s shape: for a run
    whose usage was never written (its process died), and as the floor a resumed run's
    usage starts from. Each model call is a step with its tokens and USD; each attempt of a
    tool that started is a call with its USD; the seconds are those the calls took (the
    time between them is not in the events, so this is a lower bound)."""
    steps = tool_calls = tokens_in = tokens_out = 0
    usd = Decimal(0)
    seconds = 0.0
    by_tool: dict[str, int] = {}
    for e in events:
        data = e.data
        if e.kind == "step":
            steps += 1
        elif e.kind == "model_call":
            steps += 1
            tokens_in += _whole(data.get("input_tokens"))
            tokens_out += _whole(data.get("output_tokens"))
            usd += _money(data.get("usd"))
            seconds += _seconds(data.get("seconds"))
        elif e.kind == "tool_call" and data.get("outcome") in _CHARGED:
            tool_calls += 1
            tool = str(data.get("tool", ""))
            by_tool[tool] = by_tool.get(tool, 0) + 1
            usd += _money(data.get("usd"))
            seconds += _seconds(data.get("seconds"))
    return {
        "steps": steps,
        "tool_calls": tool_calls,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "tokens": tokens_in + tokens_out,
        "usd": str(usd),
        "active_seconds": round(seconds, 6),
        "tool_calls_by_tool": by_tool,
    }


def _whole(value: Any) -> int:
    """A count as recorded (anything else counts 0: a damaged event adds nothing)."""
    return value if type(value) is int and value > 0 else 0


def _money(value: Any) -> Decimal:
    amount = as_decimal(value)
    return amount if amount.is_finite() and amount > 0 else Decimal(0)


def _seconds(value: Any) -> float:
    if type(value) in (int, float) and 0 < value < float("inf"):
        return float(value)
    return 0.0


def timeline_of(record: RunRecord, events: Sequence[Event]) -> list[dict[str, Any]]:
    """A run's events as its timeline: each with its time since the run began and, for a
    denial, what denied it and why."""
    origin = min([record.started_at, *(e.at for e in events)]) if events else record.started_at
    reader = DenialReader()
    out = []
    for e in events:
        denial = reader.read(e)
        out.append(
            {
                "seq": e.seq,
                "kind": e.kind,
                "at": iso(e.at),
                "t": round(e.at - origin, 6),
                "data": dict(e.data),
                "denial": _denial(denial) if denial else None,
                "actor": e.actor,
            }
        )
    return out


def _denial(d: Denial) -> dict[str, Any]:
    return {
        "guard": d.guard,
        "reason": d.reason,
        "why": d.why,
        "tool": d.tool,
        "observed": d.observed,
    }


# -- approvals and switches ---------------------------------------------------------------
#: What an approval says beyond the action (``ApprovalRecord.context``), in this order.
APPROVAL_CONTEXT = ("step", "call_id", "purpose", "cost_usd", "effect", "idempotency_key")


def approval_row(record: ApprovalRecord) -> dict[str, Any]:
    """The JSON form of an approval request and its decision."""
    return {
        "id": record.id,
        "status": record.status,
        "run_id": record.run_id,
        "tool": record.tool,
        "tenant": record.tenant,
        "agent": record.agent,
        "args_digest": record.args_digest,
        "arguments": dict(record.arguments),
        "created": _iso_or_none(record.created),
        "expires": _iso_or_none(record.expires),
        "approver": record.approver or None,
        "reason": record.reason or None,
        "decided_at": _iso_or_none(record.decided_at),
        "used_at": _iso_or_none(record.used_at),
        **{key: record.context.get(key) for key in APPROVAL_CONTEXT},
    }


def switch_row(sw: KillSwitchState) -> dict[str, Any]:
    """The JSON form of a kill switch that is on."""
    return {
        "scope": sw.scope,
        "target": sw.target,
        "mode": sw.mode,
        "reason": sw.reason,
        "by": sw.actor,
        "since": iso_seconds(sw.set_at) if sw.set_at > 0 else None,
    }


def key_row(key: KeyRecord) -> dict[str, Any]:
    """The JSON form of an API key: never its secret, nor the secret's digest."""
    return {
        "id": key.id,
        "tenant": key.tenant,
        "role": key.role,
        "name": key.name,
        "created": iso_seconds(key.created),
        "expires": None if key.expires is None else iso_seconds(key.expires),
        "revoked": None if key.revoked is None else iso_seconds(key.revoked),
        "created_by": key.created_by,
    }
