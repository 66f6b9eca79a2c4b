"""``corral golden run``: run a suite of golden tasks against a model, check their
expectations, and compare them with a saved baseline (for CI).

::

    corral golden run SUITE --model SPEC [--baseline FILE] [--save-baseline FILE]
                      [--repeat N] [--jobs N] [--db URL] [--json]

Every task runs ``--repeat`` times, ``--jobs`` runs at once, each in an in-memory store of
its own (``--db`` names one store for all of them instead, created if needed, and named as
every command names its store: ``store: URL`` on stderr, ``store`` in ``--json``, ``null``
without ``--db``). Human output: a progress bar
(on stderr), a table of the tasks, the failed expectations and, with ``--baseline``, the
figures that drifted (task, figure, baseline, now, allowed, verdict). docs/golden.md
describes the suite file, the model specs and the drift rule.

Exit codes: 0 every expectation met and nothing drifted; 1 an expectation failed or a
figure drifted past its threshold; 2 a usage error: a suite, script or baseline file that
is invalid (one line per problem, ``FILE:LINE: path: message``), a model spec that cannot
work, a store URL that cannot mean a store.

``--json`` prints one object whose shape is stable::

    {"store": str | null, "suite": str, "model": str, "repeat": int, "ok": bool,
     "baseline": str | null,
     "tasks": [{"id": str, "ok": bool, "failures": [{"task", "run", "check", "expected",
                "got"}], "runs": [{"stop_reason", "answer", "tool_calls", "by_tool",
                "requests", "tokens", "tokens_per_request", "usd", "error"}]}],
     "failures": int, "drift": [{"task", "figure", "baseline", "now", "allowed", "verdict"}],
     "drifted": int}

Imports the golden package and the shared ``_common`` and ``_format``; no other command
module.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from corral.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Fail,
    JsonOption,
    group,
    guarded,
    one_line,
    open_db,
)
from corral.cli._format import console, money, print_json
from corral.cli._output import ProgressBar
from corral.exceptions import SuiteError

if TYPE_CHECKING:
    from corral.golden.baseline import Drift
    from corral.golden.load import LoadedSuite
    from corral.golden.models import ModelSpec
    from corral.golden.runner import SuiteResult

golden_app = group(
    "golden", help="Golden tasks: run a suite against a model, check it, compare a baseline."
)


@golden_app.command("run")
def run(
    suite: Annotated[Path, typer.Argument(help="The suite file (YAML).")],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="scripted, scripted:PATH, openai:MODEL[@BASE_URL] or python:MODULE:FACTORY.",
        ),
    ],
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="Compare with this baseline file.")
    ] = None,
    save_baseline: Annotated[
        Path | None,
        typer.Option("--save-baseline", help="Write this run's figures as a baseline file."),
    ] = None,
    repeat: Annotated[
        int, typer.Option("--repeat", min=1, max=1000, help="Runs of each task.")
    ] = 1,
    jobs: Annotated[int, typer.Option("--jobs", min=1, max=256, help="Runs at once.")] = 4,
    db: Annotated[
        str | None,
        typer.Option("--db", help="One store for every run (default: each its own, in memory)."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Run a suite's tasks, check their expectations, compare with a baseline."""

    def body() -> int:
        try:
            return run_command(
                suite,
                model,
                baseline,
                save_baseline,
                repeat=repeat,
                jobs=jobs,
                db=db,
                as_json=json_out,
            )
        except SuiteError as exc:  # one line per problem, not one line for all of them
            print(f"corral golden run: {exc}", file=sys.stderr)
            return EXIT_USAGE

    raise typer.Exit(guarded("golden run", body))


def run_command(
    suite_path: Path,
    spec_text: str,
    baseline_path: Path | None,
    save_path: Path | None,
    *,
    repeat: int,
    jobs: int,
    db: str | None,
    as_json: bool,
) -> int:
    from corral.golden.baseline import compare, drifted, load_baseline, save_baseline
    from corral.golden.load import load_suite
    from corral.golden.models import parse_spec
    from corral.golden.runner import run_suite

    loaded = load_suite(suite_path)  # a SuiteError is a ConfigError: exit 2
    spec = parse_spec(spec_text)
    _runnable(loaded, spec)
    if save_path is not None and not save_path.parent.is_dir():
        raise Fail(EXIT_USAGE, f"--save-baseline {save_path}: no folder {save_path.parent}")
    was = load_baseline(baseline_path) if baseline_path is not None else None
    if was is not None and was.suite != loaded.suite.suite:
        raise Fail(
            EXIT_USAGE,
            f"--baseline {baseline_path} is a baseline of suite {was.suite!r}, "
            f"not {loaded.suite.suite!r}",
        )
    store, shown = (
        open_db(db, announce=not as_json, create=True) if db is not None else (None, None)
    )
    total = len(loaded.suite.tasks) * repeat
    with ProgressBar("golden", total=total, quiet=as_json) as bar:
        result = asyncio.run(
            run_suite(loaded, spec, repeat=repeat, jobs=jobs, store=store, on_done=bar.advance)
        )
    rows = compare(result, was, loaded.suite.thresholds) if was is not None else []
    if save_path is not None:
        try:
            save_baseline(result, save_path)
        except OSError as exc:
            raise Fail(EXIT_USAGE, f"--save-baseline {save_path}: {one_line(exc)}") from None
    bad = drifted(rows)
    ok = not result.failures and not bad
    if as_json:
        print_json(
            {
                "store": shown,
                "suite": result.suite,
                "model": result.model,
                "repeat": result.repeat,
                "ok": ok,
                "baseline": str(baseline_path) if baseline_path is not None else None,
                "tasks": [t.to_dict() for t in result.tasks],
                "failures": len(result.failures),
                "drift": [r.to_dict() for r in rows],
                "drifted": len(bad),
            }
        )
    else:
        _render(console(), result, rows, baseline_path, save_path)
    return EXIT_OK if ok else EXIT_FAILED


def _runnable(loaded: LoadedSuite, spec: ModelSpec) -> None:
    """A spec that cannot play the suite (a script naming unknown tasks, a task without
    turns) is a usage error, before anything runs."""
    problems = spec.problems(loaded.suite)
    if problems:
        raise Fail(EXIT_USAGE, f"--model {spec.label}: " + "; ".join(problems))


def _render(
    out: Console,
    result: SuiteResult,
    rows: list[Drift],
    baseline: Path | None,
    saved: Path | None,
) -> None:
    from corral.golden.baseline import drifted, span

    runs = f"{result.repeat} run{'s' if result.repeat != 1 else ''} each"
    table = Table(
        title=f"golden suite {result.suite} · {result.model} · {runs}",
        box=box.SIMPLE_HEAD,
        title_justify="left",
    )
    for name in ("task", "stop", "tool calls", "tokens/request", "cost", "expectations"):
        table.add_column(
            name, justify="right" if name in ("tool calls", "tokens/request") else "left"
        )
    for task in result.tasks:
        stops = ", ".join(sorted({r.stop_reason for r in task.runs}))
        calls = span([r.tool_calls for r in task.runs])
        per = span([r.tokens_per_request for r in task.runs])
        cost = money(max(r.usd for r in task.runs))
        verdict = "[green]met[/]" if not task.failures else f"[red]{len(task.failures)} failed[/]"
        table.add_row(task.id, stops, calls, per, cost, verdict)
    out.print(table)
    if result.failures:
        failed = Table(title="failed expectations", box=box.SIMPLE_HEAD, title_justify="left")
        for name in ("task", "run", "check", "expected", "got"):
            failed.add_column(name, no_wrap=name in ("task", "check"))
        for f in result.failures:
            failed.add_row(f.task, str(f.run), f.check, f.expected, f.got)
        out.print(failed)
    if baseline is not None:
        bad = drifted(rows)
        if bad:
            drift = Table(
                title=f"drift against {baseline}", box=box.SIMPLE_HEAD, title_justify="left"
            )
            for name in ("task", "figure", "baseline", "now", "allowed", "verdict"):
                drift.add_column(
                    name, no_wrap=name in ("task", "figure", "verdict"), overflow="fold"
                )
            for r in bad:
                drift.add_row(r.task, r.figure, r.baseline, r.now, r.allowed, "[red]drift[/]")
            out.print(drift)
        compared = sum(r.verdict in ("ok", "drift") for r in rows)
        extra = [f"{sum(r.verdict == v for r in rows)} {v}" for v in ("new", "gone")]
        extra = [e for e in extra if not e.startswith("0 ")]
        note = f" ({', '.join(extra)})" if extra else ""
        out.print(f"{len(bad)} of {compared} figures drifted against {baseline}{note}")
    if saved is not None:
        out.print(f"baseline saved to {saved}")
    verdict = "passed" if not result.failures and not drifted(rows) else "FAILED"
    print(f"golden suite {result.suite}: {verdict}", file=sys.stdout)
