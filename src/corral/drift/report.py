"""The drift report: read both windows, judge them (:func:`drift`), and say it — as table
cells (:func:`cells`, which ``corral drift`` prints) or as JSON (:func:`to_json`).

``to_json``'s shape is stable (see docs/drift.md)::

    {"now": str, "tenant": str|null, "agent": str|null, "min_runs": int,
     "enough_runs": bool, "drifted": [str],
     "baseline": {"since": str, "until": str, "runs": int},
     "recent": {"since": str, "until": str, "runs": int},
     "figures": [{"figure", "baseline", "recent", "change", "threshold", "verdict",
                  "top_runs": [{"run_id", "started_at", "value"}]}],
     "tool_mix": [{"tool", "baseline", "recent"}],
     "causes": [{"kind", "name", "before", "after", "first_run", "text"}]}

A number figure's ``baseline`` and ``recent`` are numbers (``null`` when no run had the
figure) and ``change`` is relative; the stop-reason figure's are each reason's share and
``change`` is the total variation distance. An infinite change (from 0) is ``null`` with
``"verdict": "drift"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from corral.drift.compare import Comparison, Judged, compare
from corral.drift.figures import Window, read_windows
from corral.policy.sections import Monitoring
from corral.stores.base import FigureStore

#: How each verdict reads in the table.
VERDICTS = {
    "ok": "ok",
    "drift": "DRIFT",
    "too_few_runs": "too few runs",
    "no_data": "no data",
    "not_judged": "not judged",
}


def drift(
    store: FigureStore,
    *,
    window: float,
    against: float,
    now: float,
    monitoring: Monitoring | None = None,
    thresholds: Mapping[str, float | None] | None = None,
    tenant: str | None = None,
    agent: str | None = None,
) -> Comparison:
    """Compare the ended runs of the ``window`` seconds before ``now`` with those of the
    ``against`` seconds before that, under ``monitoring`` (a policy's; the defaults when
    ``None``), ``thresholds`` overriding its own."""
    baseline, recent = read_windows(
        store, window=window, against=against, now=now, tenant=tenant, agent=agent
    )
    return compare(baseline, recent, monitoring or Monitoring(), thresholds=thresholds)


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _window(w: Window) -> dict[str, Any]:
    return {"since": iso(w.since), "until": iso(w.until), "runs": len(w.runs)}


def _number(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else round(value, 6)


def _figure(j: Judged) -> dict[str, Any]:
    def side(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: round(v, 4) for k, v in value.items()}
        return _number(value)

    return {
        "figure": j.figure,
        "baseline": side(j.baseline),
        "recent": side(j.recent),
        "change": _number(j.change),
        "threshold": j.threshold,
        "verdict": j.verdict,
        "top_runs": [
            {"run_id": t.run_id, "started_at": iso(t.started_at), "value": t.value}
            for t in j.top_runs
        ],
    }


def tool_mix(c: Comparison) -> list[dict[str, Any]]:
    """Each tool's mean calls per run in both windows, the tools whose mean moved first."""
    before, after = c.baseline.tool_mix, c.recent.tool_mix
    tools = sorted(
        before.keys() | after.keys(), key=lambda t: -abs(after.get(t, 0.0) - before.get(t, 0.0))
    )
    return [
        {"tool": t, "baseline": round(before.get(t, 0.0), 4), "recent": round(after.get(t, 0.0), 4)}
        for t in tools
    ]


def to_json(
    c: Comparison, *, now: float, tenant: str | None = None, agent: str | None = None
) -> dict[str, Any]:
    """The report as JSON (the module docstring gives its shape)."""
    return {
        "now": iso(now),
        "tenant": tenant,
        "agent": agent,
        "min_runs": c.min_runs,
        "enough_runs": c.enough_runs,
        "drifted": [j.figure for j in c.drifted],
        "baseline": _window(c.baseline),
        "recent": _window(c.recent),
        "figures": [_figure(j) for j in c.judged],
        "tool_mix": tool_mix(c),
        "causes": [
            {
                "kind": k.kind,
                "name": k.name,
                "before": list(k.before),
                "after": list(k.after),
                "first_run": k.first_run,
                "text": k.text,
            }
            for k in c.causes
        ],
    }


# -- as table cells -----------------------------------------------------------------------------


def value_text(figure: str, value: Any) -> str:
    """A figure's value as the table shows it."""
    if value is None:
        return "-"
    if isinstance(value, Mapping):
        shares = [f"{reason} {share * 100:.0f}%" for reason, share in list(value.items())[:3]]
        more = len(value) - 3
        return " · ".join(shares) + (f" · +{more} more" if more > 0 else "")
    if figure == "latency_p95":
        return f"{value:.3g} s"
    if figure == "spend_per_run":
        return f"${value:,.4f}"
    if figure == "tokens_per_request":
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def change_text(figure: str, value: float | None) -> str:
    if value is None:
        return "-"
    if figure == "stop_reason":
        return f"TV {value:.2f}"
    if math.isinf(value):
        return "from 0"
    return f"{value * 100:+.1f}%"


def threshold_text(figure: str, value: float | None) -> str:
    if value is None:
        return "off"
    return f"TV {value:.2f}" if figure == "stop_reason" else f"±{value * 100:g}%"


def cells(j: Judged) -> list[str]:
    """(figure, baseline, recent, change, threshold, verdict) as text."""
    return [
        j.figure,
        value_text(j.figure, j.baseline),
        value_text(j.figure, j.recent),
        change_text(j.figure, j.change),
        threshold_text(j.figure, j.threshold),
        VERDICTS[j.verdict],
    ]
