"""The what-if report as one self-contained HTML page (``corral whatif --html FILE``):
the totals before and after, two charts (the stop-reason mix, spend per day), and every
run that would have changed, with what changed. No script, no external file: it opens
from disk, offline, and can be mailed.

Imports the charts and the what-if's result only (and Jinja2).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup

from corral import charts
from corral._visible import visible
from corral.replay.whatif import RunVerdict, WhatIf

TEMPLATES: Final = Path(__file__).parent / "templates"


def _shown(value: Any) -> Any:
    """Text that acts (controls, bidirectional overrides) shown escaped, as the dashboard
    shows it: a run's task is a caller's text."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return visible(value)
    return value


def _stamp(value: float) -> str:
    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _usd(value: Decimal) -> str:
    return f"${value:,.2f}" if abs(value) >= Decimal("0.01") or not value else f"${value:.4f}"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader([TEMPLATES, charts.TEMPLATES]),
        autoescape=True,
        finalize=_shown,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(stamp=_stamp, usd=_usd)
    return env


def _charts(report: WhatIf) -> list[charts.Chart]:
    before, after = report.stop_mix(predicted=False), report.stop_mix(predicted=True)
    reasons = sorted(
        set(before) | set(after), key=lambda r: (-max(before.get(r, 0), after.get(r, 0)), r)
    )
    mix = charts.columns(
        "Runs by stop reason",
        [
            (r, {"recorded": before.get(r, 0), "under the new policy": after.get(r, 0)})
            for r in reasons
        ],
        grouped=("recorded", "under the new policy"),
    )
    days = report.spend_per_day()
    spend = charts.columns(
        "Spend per day (UTC)",
        [(day, {"recorded": float(a), "under the new policy": float(b)}) for day, a, b in days],
        unit="$",
        grouped=("recorded", "under the new policy"),
    )
    return [mix, spend]


def html(
    report: WhatIf, *, policy_source: str = "", store: str = "", all_runs: bool = False
) -> str:
    """The report as an HTML page; ``all_runs``: every run in its table, not only those
    that would have changed."""
    shown: list[RunVerdict] = [r for r in report.runs if all_runs or r.changed or not r.evaluated]
    data = report.to_dict()
    template = _environment().get_template("whatif.html")
    return template.render(
        report=report,
        data=data,
        runs=shown,
        charts=_charts(report),
        policy_source=policy_source,
        store=store,
        made=_stamp(dt.datetime.now(dt.UTC).timestamp()),
        usd_before=Decimal(data["usd"]["recorded"]),
        usd_after=Decimal(data["usd"]["predicted"]),
    )
