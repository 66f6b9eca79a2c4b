"""``corral whatif --policy NEW.yaml``: what the recorded runs would have done under another
policy (:mod:`corral.replay.whatif`).

Evaluates every ended run that started in the last ``--since`` (default ``7d``; of
``--tenant`` / ``--agent`` when given), oldest first, against its recording, with the
shared state (window limits' spend, breakers) carried from run to run as it would have
evolved under the new policy. Prints the totals before and after (runs answered, stop
reasons, tool calls, USD), the runs that would have stopped earlier and why, the calls
denied or sent for approval, the tasks no longer answered, how many predictions are exact,
and a table of the runs that would change (``--all``: every run). ``--html FILE`` writes
the same as one self-contained page with charts (stop-reason mix and spend per day,
before and after). A progress bar runs on stderr while the runs are evaluated.

Exit codes: 0 the runs were evaluated (whatever changed); 1 no store there, or a store
that cannot be read; 2 an invalid option, policy file or store URL.
``--json`` prints :meth:`corral.replay.whatif.WhatIf.to_dict` with ``"store"`` added.

Imports the replay package's what-if and report, the drift package's period parser, the
policy loader and the shared ``_common`` and ``_output``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from corral.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    AgentOption,
    DbOption,
    Fail,
    JsonOption,
    TenantOption,
    guarded,
    one_line,
    open_db,
    read,
)
from corral.cli._format import money
from corral.cli._output import ProgressBar, console, print_json
from corral.drift.figures import parse_period
from corral.exceptions import ConfigError, PolicyError
from corral.policy.schema import Policy, load_policy
from corral.replay.whatif import MAX_RUNS, RunVerdict, WhatIf
from corral.replay.whatif import whatif as evaluate

#: Runs the table shows without ``--all``.
SHOWN = 20


def whatif(
    policy: Annotated[
        Path, typer.Option("--policy", help="The policy file to evaluate the runs under.")
    ],
    since: Annotated[
        str, typer.Option("--since", help="Runs that started this long ago: 90m, 24h, 7d, 2w.")
    ] = "7d",
    tenant: TenantOption = None,
    agent: AgentOption = None,
    assume_approvals: Annotated[
        Literal["approve", "deny"],
        typer.Option(
            "--assume-approvals",
            help="The answer to an approval the recorded run was never asked for.",
        ),
    ] = "approve",
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write the report as an HTML page with charts."),
    ] = None,
    all_runs: Annotated[
        bool, typer.Option("--all", help="List every run, not only those that would change.")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Evaluate at most this many runs (oldest first).")
    ] = MAX_RUNS,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Re-evaluate recorded runs under another policy: which would have stopped earlier and
    why, the calls denied or sent for approval, the tool calls and USD saved or lost."""
    raise typer.Exit(
        guarded(
            "whatif",
            lambda: whatif_command(
                policy=policy,
                since=since,
                tenant=tenant,
                agent=agent,
                assume_approvals=assume_approvals == "approve",
                html=html,
                all_runs=all_runs,
                limit=limit,
                db=db,
                as_json=json_out,
            ),
        )
    )


def whatif_command(
    *,
    policy: Path,
    since: str = "7d",
    tenant: str | None = None,
    agent: str | None = None,
    assume_approvals: bool = True,
    html: Path | None = None,
    all_runs: bool = False,
    limit: int = MAX_RUNS,
    db: str | None = None,
    as_json: bool = False,
    now: float | None = None,
) -> int:
    """Evaluate, print the report (and write ``html``); return the exit code."""
    try:
        period = parse_period(since)
    except ConfigError as exc:
        raise Fail(EXIT_USAGE, f"--since: {exc}") from None
    new = _policy(policy)
    until = time.time() if now is None else now
    store, url = open_db(db, announce=not as_json)
    with ProgressBar("what-if", quiet=as_json) as bar:
        report: WhatIf = read(
            "the recorded runs",
            url,
            evaluate,
            new,
            store=store,
            since=until - period,
            until=until,
            tenant=tenant,
            agent=agent,
            assume_approvals=assume_approvals,
            limit=limit,
            progress=lambda done, total: bar.update(done, total),
        )
    if html is not None:
        _write_html(html, report, policy, url, all_runs)
    if as_json:
        print_json({"store": url, **report.to_dict()})
    else:
        _render(console(), report, policy=policy, since=since, all_runs=all_runs, html=html)
    return EXIT_OK


def _policy(path: Path) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        raise Fail(EXIT_USAGE, f"--policy {path}: {'; '.join(exc.problems)}") from None
    except OSError as exc:
        raise Fail(EXIT_USAGE, f"--policy {path}: cannot be read ({one_line(exc)})") from None


def _write_html(path: Path, report: WhatIf, policy: Path, url: str, all_runs: bool) -> None:
    from corral.replay.report import html

    page = html(report, policy_source=str(policy), store=url, all_runs=all_runs)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise Fail(EXIT_USAGE, f"--html {path}: cannot be written ({one_line(exc)})") from None


def _mix(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n:,}" for reason, n in counts.items()) or "-"


def _change(
    before: Decimal | int, after: Decimal | int, *, usd: bool = False, fewer_is_better: bool = True
) -> Text:
    """How ``after`` differs from ``before``, green when it is better."""
    delta = after - before
    if not delta:
        return Text("same", style="dim")
    amount = money(Decimal(str(abs(delta)))) if usd else f"{abs(delta):,}"
    word = "more" if delta > 0 else ("saved" if fewer_is_better else "fewer")
    better = (delta < 0) == fewer_is_better
    return Text(f"{amount} {word}", style="green" if better else "red")


def _render(
    out: Console,
    report: WhatIf,
    *,
    policy: Path,
    since: str,
    all_runs: bool,
    html: Path | None,
) -> None:
    runs = report.runs
    who = "".join(
        f" · {k} {v}" for k, v in (("tenant", report.tenant), ("agent", report.agent)) if v
    )
    out.print(
        f"What-if: {len(runs):,} run{'s' if len(runs) != 1 else ''} of the last {since}{who} "
        f"under {policy} (policy {report.policy_digest[:16]})",
        markup=False,
    )
    if not runs:
        out.print("No ended run started in the period: nothing to evaluate.", style="yellow")
        return
    out.print(_totals(report))
    earlier = report.stopped_earlier
    out.print(
        f"Would have stopped earlier: {sum(earlier.values()):,} run"
        f"{'s' if sum(earlier.values()) != 1 else ''}" + (f" ({_mix(earlier)})" if earlier else ""),
        markup=False,
    )
    denied = sum(len(r.denied) for r in runs)
    asked = sum(len(r.approvals) for r in runs)
    assumed = "approved" if report.assume_approvals else "denied"
    out.print(
        f"Calls denied: {denied:,} · sent for approval: {asked:,}"
        + (f" (assumed {assumed}: the recorded runs were never asked)" if asked else ""),
        markup=False,
    )
    lost = report.no_longer_answered
    line = f"Tasks no longer answered: {len(lost):,}"
    if lost:
        line += f" ({', '.join(lost[:5])}{', ...' if len(lost) > 5 else ''})"
    if report.newly_answered:
        line += f" · newly answered: {len(report.newly_answered):,}"
    out.print(line, markup=False, style="red" if lost else None)
    out.print(_exactness(runs), markup=False)
    _runs_table(out, report, all_runs)
    skipped = [r for r in runs if not r.evaluated]
    for r in skipped[:10]:
        out.print(f"  not evaluated: {r.run_id}: {r.not_evaluated}", markup=False, style="dim")
    if len(skipped) > 10:
        out.print(f"  ... and {len(skipped) - 10:,} more not evaluated", style="dim")
    for note in report.notes:
        out.print(f"note: {note}", markup=False, style="dim")
    if html is not None:
        out.print(f"HTML report: {html}", markup=False)


def _totals(report: WhatIf) -> Table:
    """The period's totals, as recorded and under the new policy: runs answered, stop
    reasons, tool calls, spend."""
    runs = report.runs
    answered = (sum(r.answered_before for r in runs), sum(r.answered_after for r in runs))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("", "recorded", "new policy", "change"):
        table.add_column(name, overflow="fold")
    table.add_row(
        "runs answered",
        f"{answered[0]:,}",
        f"{answered[1]:,}",
        _change(*answered, fewer_is_better=False),
    )
    table.add_row(
        "stop reasons",
        _mix(report.stop_mix(predicted=False)),
        _mix(report.stop_mix(predicted=True)),
        "",
    )
    calls = report.total("tool_calls", predicted=False), report.total("tool_calls", predicted=True)
    table.add_row("tool calls", f"{calls[0]:,}", f"{calls[1]:,}", _change(*calls))
    usd = report.total("usd", predicted=False), report.total("usd", predicted=True)
    table.add_row("spend", money(usd[0]), money(usd[1]), _change(*usd, usd=True))
    return table


def _exactness(runs: Sequence[RunVerdict]) -> str:
    """How many runs were predicted exactly, and why the others were not."""
    own = sum(r.counterfactual_from is not None for r in runs)
    inherited = sum(not r.exact and r.counterfactual_from is None for r in runs)
    exact = sum(r.exact and r.evaluated for r in runs)
    text = f"Predicted exactly: {exact:,} of {len(runs):,}"
    if own or inherited:
        text += (
            f"; counterfactual: {own:,} past the first request or call their recording "
            f"does not hold, {inherited:,} on shared state those left"
        )
    return text


def _prediction(r: RunVerdict) -> Text:
    if not r.evaluated:
        return Text("not evaluated", style="dim")
    if r.exact:
        return Text("exact")
    if r.counterfactual_from is not None:
        return Text(f"counterfactual from step {r.counterfactual_from}", style="yellow")
    return Text("estimated shared state", style="yellow")


def _what(r: RunVerdict) -> str:
    parts = [f"denied {d}" for d in r.denied] + [f"approval {a}" for a in r.approvals]
    if r.divergence is not None:
        parts.append(f"step {r.divergence.step}: {r.divergence.message}")
    return "; ".join(parts) or "-"


def _runs_table(out: Console, report: WhatIf, all_runs: bool) -> None:
    chosen = [r for r in report.runs if all_runs or r.changed]
    if not chosen:
        out.print("No run would change.", style="green")
        return
    shown = chosen if all_runs else chosen[:SHOWN]
    title = "Every run" if all_runs else "Runs that would change"
    more = (
        f" (first {len(shown)} of {len(chosen):,}; --all for every run)"
        if len(shown) < len(chosen)
        else f" ({len(chosen):,})"
    )
    out.print(f"{title}{more}:", markup=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("run", "stop", "tool calls", "USD", "prediction", "what changes"):
        table.add_column(name, overflow="fold", justify="right" if name in ("tool calls", "USD")
                         else "left")  # fmt: skip
    for r in shown:
        table.add_row(
            Text(r.run_id),
            Text(f"{r.recorded_stop_reason or '-'} → {r.stop_reason or '-'}"),
            f"{r.recorded.tool_calls} → {r.predicted.tool_calls}",
            f"{money(r.recorded.usd)} → {money(r.predicted.usd)}",
            _prediction(r),
            Text(_what(r)),
        )
    out.print(table)
