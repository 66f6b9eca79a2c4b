"""A run's decisions as comparable lines, and the first place two runs' decisions differ.

A decision is every trace event but the run's start and its warnings, without what varies
from one execution to the next though nothing was decided differently: timings, the
recording's own digest, the model's provider label. Each carries the step it happened at
(model calls and executed tool attempts counted from 1, as the recording counts them).

>>> from corral.stores.records import Event
>>> e = Event(run_id="r", seq=1, kind="tool_call", at=0.0,
...           data={"tool": "kb.read", "outcome": "ok", "seconds": 0.2})
>>> decisions([e])
[(1, 'tool_call outcome=ok tool=kb.read')]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from corral.stores.records import Event

#: Events that are not decisions (an approval's filing in the queue is bookkeeping: the
#: decision is its ``approval`` event).
SKIPPED_KINDS = frozenset({"run_start", "warning", "approval_requested"})
#: Fields that vary between two executions of the same decisions: timings, the recording's
#: own digest, the provider's label, how long a window has left (in a stop's
#: ``retry_after`` and the sentence that says it, ``message``), an approval's id in the
#: queue and how long it waited.
VARYING = frozenset(
    {
        "approval",
        "approval_id",
        "waited",
        "seconds",
        "recording",
        "provider",
        "active_seconds",
        "waiting_seconds",
        "retry_after",
        "message",
    }
)
#: A tool attempt's outcomes that executed it (each is one recorded step).
EXECUTED = frozenset({"ok", "error", "timeout", "not_executed", "cancelled", "invalid_output"})
#: Usage figures compared (time is reported, not compared: it is the clock's, not a decision).
USAGE_KEYS = (
    "steps",
    "tool_calls",
    "input_tokens",
    "output_tokens",
    "tokens",
    "usd",
    "tool_calls_by_tool",
    "overrun_tokens",
    "overrun_usd",
)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if type(value) is float and value.is_integer():
        return int(value)  # 900 and 900.0 are one setting (a policy rebuilt from JSON)
    return value


def line(event: Event) -> str:
    """One event as a comparable line: its kind, then its fields sorted."""
    data = _plain(event.data)
    parts = [event.kind]
    for key in sorted(data):
        value = data[key]
        shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        parts.append(f"{key}={shown}")
    return " ".join(parts)


def is_step(event: Event) -> bool:
    """Whether the event is one of the recording's steps (a model call, a tool attempt)."""
    if event.kind == "model_call":
        return True
    return event.kind == "tool_call" and event.data.get("outcome") in EXECUTED


def decided(events: Sequence[Event]) -> list[tuple[int, Event]]:
    """The run's decision events in order, each with the step it happened at."""
    out = []
    steps = 0
    for event in events:
        if event.kind in SKIPPED_KINDS:
            continue
        at = steps + 1
        if is_step(event):
            steps += 1
        out.append((at, event))
    return out


def decisions(events: Sequence[Event]) -> list[tuple[int, str]]:
    """The run's decisions in order as comparable lines, each with the step it happened at."""
    return [(at, line(event)) for at, event in decided(events)]


def describe(event: Event | None) -> str:
    """A decision in a few words: ``stops: max_usd (tenant:acme/1d)``, ``kb.read denied
    (not_allowed)``, ``browser.open ok``; ``the run ends`` for none."""
    if event is None:
        return "the run ends"
    d = event.data
    if event.kind == "run_end":
        stop = d.get("stop") or {}
        if not stop:
            return f"ends {d.get('stop_reason') or d.get('status')}"
        detail = f" ({stop['detail']})" if stop.get("detail") else ""
        return f"stops: {stop.get('reason')}{detail}"
    if event.kind == "denied":
        return f"{d.get('tool') or d.get('model') or 'a call'} denied ({d.get('why') or '-'})"
    if event.kind == "approval":
        return f"{d.get('tool')} {'approved' if d.get('approved') else 'not approved'}"
    if event.kind == "tool_call":
        return f"{d.get('tool')} {d.get('outcome')}"
    if event.kind == "model_call":
        return f"model call {d.get('outcome')}"
    return event.kind


def first_difference(
    recorded: Sequence[tuple[int, str]], replayed: Sequence[tuple[int, str]]
) -> tuple[int, str | None, str | None] | None:
    """The step of the first decision that differs, the recorded one and the replayed one
    (``None`` where one run has no more); ``None`` when they are the same."""
    for i in range(max(len(recorded), len(replayed))):
        a = recorded[i] if i < len(recorded) else None
        b = replayed[i] if i < len(replayed) else None
        if a is None or b is None or a[1] != b[1]:
            step = (a or b or (0, ""))[0]
            return step, None if a is None else a[1], None if b is None else b[1]
    return None


def usage_of(usage: Mapping[str, Any]) -> dict[str, Any]:
    """The usage figures a replay must reproduce."""
    return {k: usage.get(k) for k in USAGE_KEYS if k in usage}
