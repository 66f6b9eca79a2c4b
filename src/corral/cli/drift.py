"""``corral drift``: the figures of recent runs against those of the runs before them.

Reads the ended runs that started in the last ``--window`` (default ``1d``) and in the
``--against`` (default ``7d``) before it, and judges each figure the policy's
``monitoring.track`` names (all of them without ``--policy``, or when it names none)
against its threshold (``monitoring.thresholds``, defaults otherwise; ``--threshold
NAME=VALUE`` overrides): a table of figure, baseline, recent, change, threshold and
verdict; for each figure that drifted, the recent runs that moved it most; the tool mix;
and what changed between the windows (a model id, a tool definition, the policy) as the
likely cause. A window with fewer runs than ``monitoring.min_runs`` (``--min-runs``) is
not judged, and says so.

Exit codes: 0 no figure drifted (or too few runs to judge); 1 a figure drifted; 2 an
error: a bad option, policy or store URL, no store there, a store that cannot be read.
``--json`` prints the shape of :mod:`corral.drift.report` with ``"store"`` added.

Imports the drift package, the policy's loader and the shared ``_common`` and ``_output``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from corral.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    AgentOption,
    DbOption,
    Fail,
    JsonOption,
    TenantOption,
    guarded,
    open_db,
    read,
)
from corral.cli._output import console, print_json
from corral.drift.compare import Comparison, parse_threshold
from corral.drift.figures import parse_period
from corral.drift.report import cells, iso, to_json, tool_mix, value_text
from corral.drift.report import drift as compare_windows
from corral.exceptions import ConfigError, PolicyError
from corral.policy.sections import Monitoring

_VERDICT_STYLE = {"DRIFT": "bold red", "ok": "green"}


def drift(
    window: Annotated[
        str, typer.Option("--window", help="The recent window: 90s, 30m, 24h, 1d, 2w.")
    ] = "1d",
    against: Annotated[
        str, typer.Option("--against", help="The baseline: this long before the window.")
    ] = "7d",
    tenant: TenantOption = None,
    agent: AgentOption = None,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="Policy file whose monitoring section to use."),
    ] = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(
            "--threshold", help="NAME=VALUE (0.25, 25% or off) for one figure; repeatable."
        ),
    ] = None,
    min_runs: Annotated[
        int | None,
        typer.Option("--min-runs", min=1, help="Fewest runs a window needs to be judged."),
    ] = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Compare recent runs' figures (tool calls, tokens, stop reasons, latency, spend) with
    the runs before them; exit 1 on drift."""
    done: list[int] = []

    def body() -> int:
        code = drift_command(
            window=window,
            against=against,
            tenant=tenant,
            agent=agent,
            policy=policy,
            thresholds=threshold or [],
            min_runs=min_runs,
            db=db,
            as_json=json_out,
        )
        done.append(code)
        return code

    code = guarded("drift", body)
    # 1 means drift here: a failure (no store, a store that cannot be read) is an error, 2.
    raise typer.Exit(code if done else max(code, EXIT_USAGE))


def monitoring_of(policy: Path | None, min_runs: int | None) -> Monitoring:
    """The policy's ``monitoring`` section (the defaults without one), ``min_runs`` applied."""
    monitoring = Monitoring()
    if policy is not None:
        from corral.policy.schema import load_policy

        try:
            monitoring = load_policy(policy).monitoring
        except PolicyError as exc:
            raise Fail(EXIT_USAGE, f"--policy {policy}: {'; '.join(exc.problems)}") from None
        except OSError as exc:
            raise Fail(EXIT_USAGE, f"--policy {policy}: cannot be read ({exc})") from None
    if min_runs is not None:
        monitoring = monitoring.model_copy(update={"min_runs": min_runs})
    return monitoring


def drift_command(
    *,
    window: str = "1d",
    against: str = "7d",
    tenant: str | None = None,
    agent: str | None = None,
    policy: Path | None = None,
    thresholds: list[str] | None = None,
    min_runs: int | None = None,
    db: str | None = None,
    as_json: bool = False,
    now: float | None = None,
) -> int:
    """Print the drift report; return the exit code (1 when a figure drifted)."""
    try:
        recent, baseline = parse_period(window), parse_period(against)
        overrides = dict(parse_threshold(t) for t in thresholds or [])
    except ConfigError as exc:
        raise Fail(EXIT_USAGE, str(exc)) from None
    monitoring = monitoring_of(policy, min_runs)
    at = time.time() if now is None else now
    store, url = open_db(db, announce=not as_json)
    comparison: Comparison = read(
        "runs",
        url,
        compare_windows,
        store,
        window=recent,
        against=baseline,
        now=at,
        monitoring=monitoring,
        thresholds=overrides,
        tenant=tenant,
        agent=agent,
    )
    if as_json:
        print_json({"store": url, **to_json(comparison, now=at, tenant=tenant, agent=agent)})
    else:
        _render(console(), comparison, window=window, against=against)
    return EXIT_FAILED if comparison.drifted else EXIT_OK


def _render(out: Console, c: Comparison, *, window: str, against: str) -> None:
    b, r = c.baseline, c.recent
    out.print(
        f"Recent: the last {window} ({iso(r.since)} to {iso(r.until)}), {len(r.runs):,} runs · "
        f"baseline: the {against} before ({iso(b.since)} on), {len(b.runs):,} runs"
    )
    if not c.enough_runs:
        few = [name for name, w in (("baseline", b), ("recent", r)) if len(w.runs) < c.min_runs]
        out.print(
            f"Too few runs to judge: the {' and the '.join(few)} window"
            f"{'s have' if len(few) > 1 else ' has'} fewer than {c.min_runs} "
            "(monitoring.min_runs, --min-runs); no figure is judged.",
            style="yellow",
        )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("figure", "baseline", "recent", "change", "threshold", "verdict"):
        table.add_column(name, overflow="fold", justify="left" if name == "figure" else "right")
    for j in c.judged:
        row = cells(j)
        table.add_row(*map(Text, row[:-1]), Text(row[-1], style=_VERDICT_STYLE.get(row[-1], "")))
    out.print(table)
    for j in c.drifted:
        if j.top_runs:
            out.print(f"Runs that moved {j.figure} most:", markup=False)
            for t in j.top_runs:
                shown = t.value if isinstance(t.value, str) else value_text(j.figure, t.value)
                out.print(f"  {t.run_id}  {iso(t.started_at)}  {shown}", markup=False)
    if c.drifted and "tool_calls_per_run" in {j.figure for j in c.drifted}:
        _tool_mix(out, tool_mix(c))
    if c.causes:
        out.print("Likely cause:" if c.drifted else "Changed between the windows:")
        for cause in c.causes:
            out.print(f"  {cause.text}", markup=False)
    elif c.drifted:
        out.print("Likely cause: no model, tool definition or policy changed between the windows.")
    if c.drifted:
        out.print(f"Drift: {', '.join(j.figure for j in c.drifted)}.", style="bold red")
    elif c.enough_runs:
        out.print("No drift.", style="green")


def _tool_mix(out: Console, rows: list[dict[str, Any]]) -> None:
    table = Table(title="Tool calls per run, by tool", box=box.SIMPLE_HEAD, pad_edge=False,
                  title_justify="left")  # fmt: skip
    for name in ("tool", "baseline", "recent"):
        table.add_column(name, justify="left" if name == "tool" else "right")
    for row in rows:
        table.add_row(Text(row["tool"]), f"{row['baseline']:.2f}", f"{row['recent']:.2f}")
    out.print(table)
