"""The figures of one ended run that drift is judged on, and how every backend builds them.

A backend reads, in one query for every run of a time window, each run's record (tenant,
agent, stop reason, policy digest, usage) and an aggregate of its events: the model calls
that answered (how many, their input and output tokens, the model ids), the tool calls'
durations, and the tool definitions' digests its ``run_start`` event recorded.
:func:`run_figures` turns those into a :class:`RunFigures`, the same way for all of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

#: The event kinds the figures read.
FIGURE_KINDS = ("run_start", "model_call", "tool_call")

#: The most runs one query returns (the oldest of the window first).
MAX_FIGURE_RUNS = 100_000


@dataclass(frozen=True, kw_only=True, slots=True)
class RunFigures:
    """One ended run's figures: from its record (``tool_calls``, ``usd``, the stop) and its
    events (``requests``, ``tokens``, ``tool_seconds``, ``models``, ``tool_digests``)."""

    run_id: str
    tenant: str | None = None
    agent: str | None = None
    status: str = ""
    stop_reason: str | None = None
    started_at: float = 0.0
    policy_digest: str = ""
    tool_calls: int = 0
    """Tool calls the run's budget counted (``usage.tool_calls``)."""
    tool_calls_by_tool: Mapping[str, int] = field(default_factory=dict)
    usd: Decimal = Decimal(0)
    """What the run spent on models and tools (``usage.usd``)."""
    requests: int = 0
    """Model calls that answered (``model_call`` events with outcome ``ok``)."""
    tokens: int = 0
    """Their input plus output tokens."""
    tool_seconds: tuple[float, ...] = ()
    """Each tool-call attempt's duration (``tool_call`` events with ``seconds``)."""
    models: tuple[str, ...] = ()
    """The model ids its model calls named, sorted."""
    tool_digests: Mapping[str, str] = field(default_factory=dict)
    """Each offered tool's definition digest, as its ``run_start`` event recorded it."""


#: The columns each backend's ``RUN_FIGURES`` statement returns, in order (the keyword
#: arguments of :func:`run_figures`).
FIGURE_COLUMNS = (
    "run_id", "tenant", "agent", "status", "stop_reason", "started_at", "policy_digest",
    "usage", "requests", "tokens", "tool_seconds", "models", "tool_digests",
)  # fmt: skip


def figures_row(row: Sequence[Any]) -> RunFigures:
    """A :class:`RunFigures` from one row of a backend's ``RUN_FIGURES`` statement."""
    return run_figures(**dict(zip(FIGURE_COLUMNS, row, strict=True)))


def run_figures(
    *,
    run_id: str,
    tenant: str | None,
    agent: str | None,
    status: str,
    stop_reason: str | None,
    started_at: float,
    policy_digest: str,
    usage: Any,
    requests: Any,
    tokens: Any,
    tool_seconds: Iterable[Any] | None,
    models: Iterable[Any] | None,
    tool_digests: Any,
) -> RunFigures:
    """A :class:`RunFigures` from what a backend read: JSON given as text or parsed, values
    that are not what corral writes left out (a figure is never made up from them)."""
    usage = _parsed(usage)
    usage = usage if isinstance(usage, Mapping) else {}
    by_tool = usage.get("tool_calls_by_tool")
    digests = _parsed(tool_digests)
    return RunFigures(
        run_id=run_id,
        tenant=tenant,
        agent=agent,
        status=status,
        stop_reason=stop_reason,
        started_at=float(started_at),
        policy_digest=policy_digest or "",
        tool_calls=_count(usage.get("tool_calls")),
        tool_calls_by_tool={
            str(k): _count(v) for k, v in (by_tool.items() if isinstance(by_tool, Mapping) else ())
        },
        usd=_usd(usage.get("usd")),
        requests=_count(requests),
        tokens=_count(tokens),
        tool_seconds=tuple(
            float(s) for s in _parsed_list(tool_seconds) if _number(s) and float(s) >= 0
        ),
        models=tuple(sorted({str(m) for m in _parsed_list(models) if isinstance(m, str) and m})),
        tool_digests={
            str(k): str(v)
            for k, v in (digests.items() if isinstance(digests, Mapping) else ())
            if isinstance(v, str)
        },
    )


def from_events(record: Any, events: Iterable[Any]) -> RunFigures:
    """The figures of a run from its record and events in memory (the in-memory store's
    way; the databases aggregate the same in their query)."""
    requests = tokens = 0
    seconds: list[Any] = []
    models: list[Any] = []
    digests: Any = None
    for e in events:
        data = e.data
        if e.kind == "model_call":
            models.append(data.get("model"))
            if data.get("outcome") == "ok":
                requests += 1
                tokens += _count(data.get("input_tokens")) + _count(data.get("output_tokens"))
        elif e.kind == "tool_call" and "seconds" in data:
            seconds.append(data.get("seconds"))
        elif e.kind == "run_start" and digests is None:
            digests = data.get("tools")
    return run_figures(
        run_id=record.id,
        tenant=record.tenant,
        agent=record.agent,
        status=record.status,
        stop_reason=record.stop_reason,
        started_at=record.started_at,
        policy_digest=record.policy_digest,
        usage=record.usage,
        requests=requests,
        tokens=tokens,
        tool_seconds=seconds,
        models=models,
        tool_digests=digests,
    )


def _parsed(value: Any) -> Any:
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _parsed_list(value: Any) -> list[Any]:
    value = _parsed(value)
    return list(value) if isinstance(value, list | tuple) else []


def _number(value: Any) -> bool:
    return (
        isinstance(value, int | float | Decimal)
        and not isinstance(value, bool)
        and value == value  # not NaN
        and value not in (float("inf"), float("-inf"))
    )


def _count(value: Any) -> int:
    if isinstance(value, Decimal):
        value = int(value) if value.is_finite() else 0
    return int(value) if _number(value) and value >= 0 else 0


def _usd(value: Any) -> Decimal:
    try:
        usd = Decimal(str(value)) if value is not None else Decimal(0)
    except InvalidOperation:
        return Decimal(0)
    return usd if usd.is_finite() and usd >= 0 else Decimal(0)
