"""``corral demo``: the command's face (options, the store line, JSON or the table) over the
simulator in :mod:`corral.sim.demo`.

Imports the simulator, the stores and :mod:`corral.cli._common`.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from corral.cli._common import DbOption, JsonOption, one_line, origin, say_store
from corral.cli._output import SafeConsole
from corral.exceptions import ConfigError, StoreError
from corral.stores import default_url, display_url, open_store

MAX_RUNS = 10_000


def demo(
    json_out: JsonOption = False,
    seed: Annotated[
        int, typer.Option(help="Random seed (the demo is deterministic per seed).")
    ] = 7,
    runs: Annotated[int, typer.Option(help="Tasks in the simulated day.")] = 200,
    failure_rate: Annotated[
        float,
        typer.Option("--failure-rate", help="Share of browser calls failing during the outage."),
    ] = 1.0,
    db: DbOption = None,
) -> None:
    """Replay the browser-outage incident twice: unbounded, then governed by corral
    (creates the store it records the governed runs in)."""
    raise typer.Exit(
        demo_command(seed=seed, runs=runs, failure_rate=failure_rate, db=db, as_json=json_out)
    )


def demo_command(
    *, seed: int, runs: int, failure_rate: float, db: str | None, as_json: bool
) -> int:
    """Run the demo and print the comparison (a table, or JSON with ``as_json``).

    Returns the exit code: 0; 2 for an invalid option or store URL (one line per
    problem on stderr); 1 when the store cannot be opened.
    """
    problems = []
    if not 1 <= runs <= MAX_RUNS:
        problems.append(f"--runs: must be between 1 and {MAX_RUNS:,}, got {runs}")
    if not 0.0 <= failure_rate <= 1.0:
        problems.append(f"--failure-rate: must be between 0 and 1, got {failure_rate:g}")
    code = 2
    if not problems:
        try:
            open_store(db)
        except ConfigError as exc:
            problems.append(f"{origin(db)}: {one_line(exc)}")
        except StoreError as exc:
            shown = display_url(db if db is not None else default_url())
            problems.append(f"{origin(db)}: cannot open the store {shown}: {one_line(exc)}")
            code = 1
    if problems:
        for line in problems:
            print(f"corral demo: {line}", file=sys.stderr)
        return code
    # The simulator loads when the demo runs, not with every command's --help.
    from corral.sim.demo import new_run_prefix, render, simulate

    if not as_json:  # named once, as every command that touches state does (corral.cli._common)
        url = db if db is not None else default_url()
        fresh = db is None and url.startswith("memory://")
        say_store("memory:// (a fresh one for this demo)" if fresh else display_url(url))
    prefix = new_run_prefix()
    figures = simulate(seed=seed, runs=runs, failure_rate=failure_rate, db=db, run_prefix=prefix)
    if as_json:
        sys.stdout.write(json.dumps(figures, indent=2) + "\n")
    else:
        render(figures, SafeConsole(), run_prefix=prefix)
    return 0
