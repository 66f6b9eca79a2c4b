"""The ``corral`` command line: one typer app, each command or command group in a module of its
own, all listed here in the order ``corral --help`` lists them (commands first, then groups).

A command's module loads only when that command runs (or shows its own ``--help``): the table
:data:`COMMANDS` holds each command's one-line help and a loader importing its module, and the
app's group (:class:`corral.cli._lazy.LazyGroup`) lists the commands from the table and builds
one when it is named. ``corral --help`` and ``corral version`` load no command module.
tests/test_cli_lazy.py holds the table to the commands (each loads, its line is its help's).

Every command exits 0 on success, 1 when the operation failed, 2 on a usage error; every
command that touches state names the store it used (see :mod:`corral.cli._common`).
docs/cli.md lists every command.

Imports the command modules of :mod:`corral.cli`, each in its loader; nothing imports this
module but ``corral.cli`` and ``corral/__main__.py``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from corral._version import __version__
from corral.cli._lazy import Entry, LazyGroup, Target


def version() -> None:
    """Print corral's version."""
    typer.echo(f"corral {__version__}")


# -- the loaders: each imports its command's module when the command is named -----------------


def _check() -> Target:
    from corral.cli import check

    return check.check


def _demo() -> Target:
    from corral.cli import demo

    return demo.demo


def _init() -> Target:
    from corral.cli import init

    return init.init


def _serve() -> Target:
    from corral.cli import serve

    return serve.serve


def _runs() -> Target:
    from corral.cli import runs

    return runs.runs


def _show() -> Target:
    from corral.cli import show

    return show.show


def _report() -> Target:
    from corral.cli import report

    return report.report


def _drift() -> Target:
    from corral.cli import drift

    return drift.drift


def _whatif() -> Target:
    from corral.cli import whatif

    return whatif.whatif


def _replay() -> Target:
    from corral.cli import replay

    return replay.replay


def _prune() -> Target:
    from corral.cli import prune

    return prune.prune


def _version() -> Target:
    return version


def _audit() -> Target:
    from corral.cli import audit

    return audit.audit_app


def _kill() -> Target:
    from corral.cli import kill

    return kill.kill_app


def _approvals() -> Target:
    from corral.cli import approvals

    return approvals.approvals_app


def _idempotency() -> Target:
    from corral.cli import idempotency

    return idempotency.idempotency_app


def _golden() -> Target:
    from corral.cli import golden

    return golden.golden_app


def _keys() -> Target:
    from corral.cli import keys

    return keys.keys_app


def _mcp() -> Target:
    from corral.cli import mcp

    return mcp.mcp_app


#: Every command and group, in ``--help``'s order, with the first paragraph of its help (a
#: command's docstring, a group's ``help=``) exactly as written there.
COMMANDS: dict[str, Entry] = {
    "check": Entry(
        help="Validate a policy; report the readiness checklist and what each tool needs.",
        load=_check,
    ),
    "demo": Entry(
        help=(
            "Replay the browser-outage incident twice: unbounded, then governed by corral\n"
            "(creates the store it records the governed runs in)."
        ),
        load=_demo,
    ),
    "init": Entry(
        help="Create the store (or bring it up to date) and say where it is; safe to run again.",
        load=_init,
    ),
    "serve": Entry(
        help="Serve the HTTP API of the control plane: runs, approvals, kill switch, audit.",
        load=_serve,
    ),
    "runs": Entry(help="List recorded runs, newest first.", load=_runs),
    "show": Entry(
        help="Show one run: its steps, model and tool calls, decisions and stop, on a timeline.",
        load=_show,
    ),
    "report": Entry(
        help=(
            "Summarise what observe mode would have stopped (by guard, reason and tool) next to\n"
            "what enforce mode stopped, over a period."
        ),
        load=_report,
    ),
    "drift": Entry(
        help=(
            "Compare recent runs' figures (tool calls, tokens, stop reasons, latency, spend) with\n"
            "the runs before them; exit 1 on drift."
        ),
        load=_drift,
    ),
    "replay": Entry(
        help="Run a recorded run again offline and report whether it did the same, or where not.",
        load=_replay,
    ),
    "whatif": Entry(
        help=(
            "Re-evaluate recorded runs under another policy: which would have stopped earlier and\n"
            "why, the calls denied or sent for approval, the tool calls and USD saved or lost."
        ),
        load=_whatif,
    ),
    "prune": Entry(
        help="Drop the recorded bodies of runs that ended before a cutoff (their digests stay).",
        load=_prune,
    ),
    "version": Entry(help="Print corral's version.", load=_version),
    "audit": Entry(
        help="The audit log: verify its hash chain, checkpoint its head, export it.",
        load=_audit,
    ),
    "kill": Entry(
        help="Stop agents now: every run, a tenant's, an agent's, one tool, or one run.",
        load=_kill,
    ),
    "approvals": Entry(
        help="List, show, approve and deny the writes agents are waiting for.",
        load=_approvals,
    ),
    "idempotency": Entry(
        help="Writes' idempotency claims: list them, settle those left unknown by a crash.",
        load=_idempotency,
    ),
    "keys": Entry(
        help="Create, list and revoke the API keys of tenants and their roles.",
        load=_keys,
    ),
    "golden": Entry(
        help="Golden tasks: run a suite against a model, check it, compare a baseline.",
        load=_golden,
    ),
    "mcp": Entry(
        help="Put corral's policy in front of MCP servers: proxy, pin definitions.",
        load=_mcp,
    ),
}


class CorralGroup(LazyGroup):
    """The ``corral`` group: its commands are :data:`COMMANDS`."""

    entries = COMMANDS


app = typer.Typer(
    name="corral",
    help="A production control layer for tool-calling AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=CorralGroup,
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


def main() -> None:
    """The ``corral`` entry point."""
    app()


if __name__ == "__main__":
    main()
