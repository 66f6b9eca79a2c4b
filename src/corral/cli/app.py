"""The ``corral`` command line: one typer app, each command or command group in a module of its
own, all registered here in the order ``corral --help`` lists them.

Every command exits 0 on success, 1 when the operation failed, 2 on a usage error; every
command that touches state names the store it used (see :mod:`corral.cli._common`).
docs/cli.md lists every command.

Imports the command modules of :mod:`corral.cli`; nothing imports this module but
``corral.cli`` and ``corral/__main__.py``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from corral._version import __version__
from corral.cli import approvals, audit, check, demo, idempotency, init, kill, report, runs, show

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


# Commands first, then the groups (typer lists them so in --help whatever the order here).
app.command("check")(check.check)
app.command("demo")(demo.demo)
app.command("init")(init.init)
app.command("runs")(runs.runs)
app.command("show")(show.show)
app.command("report")(report.report)
app.command("version")(version)
app.add_typer(audit.audit_app, name="audit")
app.add_typer(kill.kill_app, name="kill")
app.add_typer(approvals.approvals_app, name="approvals")
app.add_typer(idempotency.idempotency_app, name="idempotency")


def main() -> None:
    """The ``corral`` entry point."""
    app()


if __name__ == "__main__":
    main()
