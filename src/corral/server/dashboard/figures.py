"""The charts page's figures, from the runs and events a key may read (the same
:func:`~corral.server.access.find_runs` as the runs page and the API, so a tenant's key
never counts another tenant's runs):

- the stop-reason mix over time (per day, or per hour when the runs span two days or
  less);
- tool calls per run (the newest runs);
- spend per day per tenant (USD);
- p95 tool latency per tool (nearest rank over the tool calls that ran);
- denials by tool (each refusal once, as :class:`~corral.record.decisions.DenialReader`
  reads it; a refusal of the run or a model call counts under ``(run)``).

The first three read the newest :data:`RUN_LIMIT` runs' records; the last two read the
events of the newest :data:`EVENT_RUNS` of them. The page says so.

Imports the record, the stores and the server's access.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from corral.charts import Chart, columns, rows
from corral.controls.keys import Principal
from corral.record.decisions import DenialReader
from corral.record.views import as_decimal
from corral.server import access
from corral.stores.base import RunRecord, Store

#: How many of the newest runs the charts read.
RUN_LIMIT: Final = 1000
#: How many of those have their events read (latency, denials).
EVENT_RUNS: Final = 200
#: How many runs the tool-calls chart shows.
RUNS_SHOWN: Final = 40


def charts(store: Store, who: Principal, tenant: str | None = None) -> list[Chart]:
    """The five charts over what ``who`` may read (of ``tenant``, for a global key)."""
    runs = access.find_runs(store, who, tenant=tenant, limit=RUN_LIMIT)
    recent = runs[:EVENT_RUNS]
    latencies: dict[str, list[float]] = defaultdict(list)
    denials: Counter[str] = Counter()
    reader = DenialReader()
    for record in recent:
        for event in store.events(record.id):
            denial = reader.read(event)
            if denial is not None and not denial.observed:
                denials[denial.tool or "(run)"] += 1
            seconds = event.data.get("seconds")
            if event.kind == "tool_call" and isinstance(seconds, int | float):
                latencies[str(event.data.get("tool", "?"))].append(float(seconds))
    scope = f"the newest {len(runs):,} runs" if runs else "no runs"
    events_scope = f"events of the newest {len(recent):,} runs"
    return [
        columns("Stop reasons over time", stop_mix(runs), note=scope),
        columns("Tool calls per run", calls_per_run(runs), note=f"the newest {RUNS_SHOWN}"),
        columns("Spend per day per tenant", spend(runs), unit="$", note=scope),
        rows(
            "p95 tool latency",
            [(tool, p95(values)) for tool, values in sorted(latencies.items())],
            unit="s",
            note=events_scope,
        ),
        rows("Denials by tool", sorted(denials.items()), note=events_scope),
    ]


def _bucket(runs: Sequence[RunRecord]) -> tuple[str, int]:
    """The bucket format and width (seconds) for ``runs``: hours for two days or less."""
    span = max(r.started_at for r in runs) - min(r.started_at for r in runs) if runs else 0
    return ("%m-%d %H:00", 3600) if span <= 2 * 86400 else ("%Y-%m-%d", 86400)


def _label(at: float, fmt: str) -> str:
    return datetime.fromtimestamp(at, UTC).strftime(fmt)


def _series(runs: Sequence[RunRecord]) -> list[tuple[float, str]]:
    """The buckets' starts from the oldest run to the newest (empty ones included)."""
    if not runs:
        return []
    fmt, width = _bucket(runs)
    first = min(r.started_at for r in runs) // width * width
    last = max(r.started_at for r in runs)
    count = min(int((last - first) // width) + 1, 400)
    return [(first + i * width, fmt) for i in range(count)]


def stop_mix(runs: Sequence[RunRecord]) -> list[tuple[str, dict[str, float]]]:
    """Per time bucket, how many runs ended with each stop reason (``running``: not yet)."""
    buckets = _series(runs)
    out: dict[str, dict[str, float]] = {_label(at, fmt): {} for at, fmt in buckets}
    for r in runs:
        label = _label(r.started_at, buckets[0][1])
        if label in out:
            what = r.stop_reason or r.status
            out[label][what] = out[label].get(what, 0.0) + 1
    return list(out.items())


def calls_per_run(runs: Sequence[RunRecord]) -> list[tuple[str, dict[str, float]]]:
    """The newest runs' tool calls, oldest of them first, labelled by the run id's end."""
    shown = list(reversed(runs[:RUNS_SHOWN]))
    return [
        (r.id[-6:], {"tool calls": float(int(r.usage.get("tool_calls", 0) or 0))}) for r in shown
    ]


def spend(runs: Sequence[RunRecord]) -> list[tuple[str, dict[str, float]]]:
    """Per day, each tenant's spend (USD; ``(none)`` for runs without a tenant)."""
    days: dict[str, dict[str, float]] = {}
    for r in sorted(runs, key=lambda r: r.started_at):
        day = _label(r.started_at, "%Y-%m-%d")
        tenant = r.tenant or "(none)"
        usd = float(as_decimal(r.usage.get("usd")))
        days.setdefault(day, {})
        days[day][tenant] = days[day].get(tenant, 0.0) + usd
    return list(days.items())


def p95(values: Sequence[float]) -> float:
    """The 95th percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)] if ordered else 0.0
