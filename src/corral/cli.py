"""The ``corral`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="corral",
    help="A production control layer for tool-calling AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def check(
    file: Annotated[Path, typer.Argument(help="Policy file (.yaml, .yml or .json).")],
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit 1 while a checklist item or a tool's need is missing."),
    ] = False,
    tools: Annotated[
        str | None, typer.Option("--tools", help="module:object holding your registered tools.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Validate a policy; report the readiness checklist and what each tool needs.

    A tool that can write needs approvals, idempotency and audit.

    A tool that can browse needs budgets, dedupe, degrade mode and host constraints.

    In a multi-tenant policy, every tool needs scoped credentials.

    Exit 0 valid, 2 invalid (one line per problem); --strict exits 1 while anything is missing.
    """
    from ._check_cli import check_command

    raise typer.Exit(check_command(file, strict=strict, tools=tools, as_json=json_out))


@app.command()
def demo(
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    seed: Annotated[
        int, typer.Option(help="Random seed (the demo is deterministic per seed).")
    ] = 7,
    runs: Annotated[int, typer.Option(help="Tasks in the simulated day.")] = 200,
    failure_rate: Annotated[
        float,
        typer.Option("--failure-rate", help="Share of browser calls failing during the outage."),
    ] = 1.0,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Store URL (default CORRAL_DB, then sqlite:///corral.db)."),
    ] = None,
) -> None:
    """Replay the browser-outage incident twice: unbounded, then governed by corral."""
    from .sim.demo import demo_command

    raise typer.Exit(
        demo_command(seed=seed, runs=runs, failure_rate=failure_rate, db=db, as_json=json_out)
    )


def _register_command_groups() -> None:
    # Command groups live in modules of their own (cli_<group>.py, each with `register(app)`).
    import importlib
    import importlib.util

    for name in (
        "cli_runs",
        "cli_audit",
        "cli_kill",
        "cli_approvals",
        "cli_idempotency",
        "cli_report",
    ):
        if importlib.util.find_spec(f"corral.{name}") is not None:
            importlib.import_module(f"corral.{name}").register(app)


_register_command_groups()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
