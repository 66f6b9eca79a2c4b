"""A recorded run as ``corral runs`` and ``corral show`` print it: its JSON row, and the usage
its events show when none was written.

Imports the stores' record types and :mod:`corral.cli._format`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from corral.cli._format import decimal, iso
from corral.stores.base import Event, RunRecord


def run_row(record: RunRecord, events: Sequence[Event] | None = None) -> dict[str, Any]:
    """The JSON form of one run (see :mod:`corral.cli.runs`)."""
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
        "usd": str(decimal(usage.get("usd"))),
        "active_seconds": usage.get("active_seconds"),
        "waiting_seconds": usage.get("waiting_seconds"),
        "started_at": iso(record.started_at),
        "ended_at": iso(record.ended_at) if record.ended_at else None,
        "task": record.task,
        "would_stop": [dict(w) for w in record.would_stop],
    }


#: Tool-call outcomes that used a call of the budget.
_CHARGED = frozenset({"ok", "error", "timeout", "invalid_output", "not_executed"})


def usage_from_events(events: Sequence[Event]) -> dict[str, Any]:
    """What a run's events show it used (for a run whose usage was never written)."""
    steps = tool_calls = tokens_in = tokens_out = 0
    usd = Decimal(0)
    for e in events:
        if e.kind == "step":
            steps += 1
        elif e.kind == "model_call":
            steps += 1
            tokens_in += int(e.data.get("input_tokens") or 0)
            tokens_out += int(e.data.get("output_tokens") or 0)
            usd += decimal(e.data.get("usd"))
        elif e.kind == "tool_call" and e.data.get("outcome") in _CHARGED:
            tool_calls += 1
            usd += decimal(e.data.get("usd"))
    return {
        "steps": steps,
        "tool_calls": tool_calls,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "tokens": tokens_in + tokens_out,
        "usd": str(usd),
    }
