"""The ``corral`` command line: one typer app, a module per command group (``cli_*.py``).

Every command exits 0 on success, 1 when the operation failed, 2 on a usage error; every
command that touches state names the store it used (see :mod:`corral.cli._common`).
docs/cli.md lists every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corral._version import __version__
from corral.cli._common import DbOption

app = typer.Typer(
    name="corral",
    help="A production control layer for tool-calling AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"corral {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print corral's version and exit.",
        ),
    ] = False,
) -> None:
    """A production control layer for tool-calling AI agents."""


def version() -> None:
    """Print corral's version."""
    typer.echo(f"corral {__version__}")


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
    from corral.cli.check import check_command

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
    db: DbOption = None,
) -> None:
    """Replay the browser-outage incident twice: unbounded, then governed by corral
    (creates the store it records the governed runs in)."""
    from corral.cli.demo import demo_command

    raise typer.Exit(
        demo_command(seed=seed, runs=runs, failure_rate=failure_rate, db=db, as_json=json_out)
    )


def _register_command_groups() -> None:
    # Command groups live in modules of their own (corral/cli/<group>.py, each with
    # `register(app)`), listed here in the order --help shows them.
    from corral.cli import approvals, audit, idempotency, init, kill, report, runs, show

    for group in (init, runs, show, audit, kill, approvals, idempotency, report):
        group.register(app)
    app.command("version")(version)  # listed last in --help


_register_command_groups()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
