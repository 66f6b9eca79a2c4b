"""``corral kill enable | disable | status``: stop the fleet, or part of it, in one command.

::

    corral kill enable [--mode M] [--tenant T | --agent A | --tool X | --run R]
                       [--reason TEXT] [--as NAME] [--db URL]
    corral kill disable [--tenant T | --agent A | --tool X | --run R]
                        [--reason TEXT] [--as NAME] [--db URL]
    corral kill status [--db URL] [--json]

No scope option means the global switch; at most one may be given. Without
``--mode`` each run applies its policy's ``kill_switch.mode_when_enabled``. Every
change, on and off, is written to the audit log (kind ``kill_switch``, run id
``-``) with who (``--as``, alias ``--by``, default ``$USER@host``), why
(``--reason``), the scope, target and mode, in the same transaction as the change.

Exit codes: 0 done; 1 the store cannot be reached, or ``disable`` found no switch
there; 2 a usage error (one line, never a traceback).

``status --json`` prints one object whose shape is stable::

    {"switches": [{"scope", "target", "mode", "reason", "by", "since"}]}

``mode`` is ``null`` for the run's default; ``since`` is when the switch was set, an
ISO 8601 UTC time (``null`` only for a store that does not report it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from . import approvals, killswitch
from ._cli import DbOption, JsonOption
from .exceptions import ConfigError, StoreError, StoreMissing
from .stores import Store, default_url, open_store
from .stores.base import KillScope, KillSwitchState

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


kill_app = typer.Typer(
    name="kill",
    help="Stop agents now: every run, a tenant's, an agent's, one tool, or one run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Tenant = Annotated[str | None, typer.Option("--tenant", help="Only this tenant's runs.")]
Agent = Annotated[str | None, typer.Option("--agent", help="Only this agent's runs.")]
ToolName = Annotated[str | None, typer.Option("--tool", help="Only calls of this tool.")]
RunId = Annotated[str | None, typer.Option("--run", help="Only this run (its id).")]
Reason = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")]
Actor = Annotated[
    str | None,
    typer.Option("--as", "--by", help="Who (recorded in the audit log; default $USER@host)."),
]


class _Usage(Exception):
    """A bad combination of options: one line on stderr, exit 2."""


def _scope(
    tenant: str | None, agent: str | None, tool: str | None, run: str | None
) -> tuple[KillScope, str]:
    given: list[tuple[KillScope, str | None]] = [
        ("tenant", tenant),
        ("agent", agent),
        ("tool", tool),
        ("run", run),
    ]
    chosen = [(scope, value) for scope, value in given if value is not None]
    if len(chosen) > 1:
        names = " and ".join(f"--{scope}" for scope, _ in chosen)
        raise _Usage(
            f"give at most one of --tenant, --agent, --tool, --run (got {names}): "
            "a switch has one scope; set one switch per scope"
        )
    if not chosen:
        return "global", ""
    scope, value = chosen[0]
    if not value or not value.strip():
        raise _Usage(f"--{scope} needs a value")
    return scope, value


def _guarded(fn: Callable[[], int]) -> int:
    """Run ``fn``; turn usage and store errors into one line and an exit code."""
    try:
        return fn()
    except (_Usage, ConfigError) as exc:
        typer.echo(f"corral kill: {exc}", err=True)
        return EXIT_USAGE
    except StoreMissing as exc:
        typer.echo(f"corral kill: {exc}", err=True)
        return EXIT_FAILED
    except StoreError as exc:
        typer.echo(f"corral kill: the store cannot be reached: {exc}", err=True)
        return EXIT_FAILED


def _check_actor(by: str | None) -> None:
    if by is not None and not by.strip():
        raise _Usage("--as needs a value (who is making the change)")


def _open(db: str | None) -> Store:
    # Operator state only: a store that does not exist is not created (no agent uses it).
    return open_store(db or default_url(), create=False)


@kill_app.command()
def enable(
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            help="disable_writes, disable_expensive or stop_all "
            "(default: each run's kill_switch.mode_when_enabled).",
        ),
    ] = None,
    tenant: Tenant = None,
    agent: Agent = None,
    tool: ToolName = None,
    run: RunId = None,
    reason: Reason = "",
    by: Actor = None,
    db: DbOption = None,
) -> None:
    """Turn a kill switch on (global unless a scope is given); replaces one already there."""

    def go() -> int:
        scope, target = _scope(tenant, agent, tool, run)
        chosen = killswitch.as_mode(mode)
        killswitch.check_switch(scope, target, chosen)
        _check_actor(by)
        store = _open(db)
        sw = killswitch.enable(
            store, scope=scope, target=target, mode=chosen, reason=reason, actor=by
        )
        what = sw.mode or "each run's kill_switch.mode_when_enabled"
        typer.echo(f"kill switch on: {killswitch.describe(sw)}, {what} (by {sw.actor})")
        cancelled = approvals.cancel_covered(store, sw)
        if cancelled:
            typer.echo(f"cancelled {len(cancelled)} pending approval(s) it covers")
        if sw.mode is None and scope == "tool":
            typer.echo(
                f"note: with no --mode, a run whose policy says disable_writes keeps calling "
                f"{target} if it is a read (disable_expensive: if it is not expensive); "
                "give --mode stop_all to turn the tool off everywhere",
                err=True,
            )
        return EXIT_OK

    raise typer.Exit(_guarded(go))


@kill_app.command()
def disable(
    tenant: Tenant = None,
    agent: Agent = None,
    tool: ToolName = None,
    run: RunId = None,
    reason: Reason = "",
    by: Actor = None,
    db: DbOption = None,
) -> None:
    """Turn a kill switch off (global unless a scope is given)."""

    def go() -> int:
        scope, target = _scope(tenant, agent, tool, run)
        killswitch.check_switch(scope, target)
        _check_actor(by)
        store = _open(db)
        where = scope if not target else f"{scope}/{target}"
        if killswitch.disable(store, scope=scope, target=target, reason=reason, actor=by):
            who = by if by is not None else killswitch.default_actor()
            typer.echo(f"kill switch off: {where} (by {who})")
            return EXIT_OK
        left = [killswitch.describe(sw) for sw in store.kill_switches()]
        on = f" (on: {', '.join(left)})" if left else " (none is on)"
        typer.echo(f"corral kill: no kill switch is on at {where}{on}", err=True)
        return EXIT_FAILED

    raise typer.Exit(_guarded(go))


@kill_app.command()
def status(
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """List the kill switches that are on."""

    def go() -> int:
        switches = _open(db).kill_switches()
        rows = [_row(sw) for sw in switches]
        if json_out:
            typer.echo(json.dumps({"switches": rows}))
            return EXIT_OK
        if not rows:
            typer.echo("no kill switch is on")
            return EXIT_OK
        _print_table(rows)
        return EXIT_OK

    raise typer.Exit(_guarded(go))


def _row(sw: KillSwitchState) -> dict[str, Any]:
    since = (
        datetime.fromtimestamp(sw.set_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if sw.set_at > 0
        else None
    )
    return {
        "scope": sw.scope,
        "target": sw.target,
        "mode": sw.mode,
        "reason": sw.reason,
        "by": sw.actor,
        "since": since,
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = ("SCOPE", "TARGET", "MODE", "REASON", "BY", "SINCE")
    lines = [
        (
            r["scope"],
            r["target"] or "-",
            r["mode"] or "(run's default)",
            r["reason"] or "-",
            r["by"] or "-",
            r["since"] or "-",
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=False)]
    for line in (header, *lines):
        text = "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
        typer.echo(text.rstrip())


def register(app: typer.Typer) -> None:
    """Add the ``kill`` command group to ``app``."""
    app.add_typer(kill_app, name="kill")
