"""``corral kill enable | disable | status``: stop the fleet, or part of it, in one command.

::

    corral kill enable [--mode M] [--tenant T | --agent A | --tool X | --run R]
                       [--reason TEXT] [--as NAME] [--db URL] [--json]
    corral kill disable [--tenant T | --agent A | --tool X | --run R]
                        [--reason TEXT] [--as NAME] [--db URL] [--json]
    corral kill status [--db URL] [--json]

No scope option means the global switch; at most one may be given. Without
``--mode`` each run applies its policy's ``kill_switch.mode_when_enabled``. Every
change, on and off, is written to the audit log (kind ``kill_switch``, run id
``-``) with who (``--as``, alias ``--by``, default ``$USER@host``), why
(``--reason``), the scope, target and mode, in the same transaction as the change.
``enable`` then says what it reached: the running runs (live heartbeat) of that store
it covers, by tenant and agent, and the mode each applies (see :mod:`corral.controls.reach`).

Exit codes: 0 done; 1 no store there, the store cannot be reached, or ``disable``
found no switch there; 2 a usage error (one line, never a traceback).

``enable --json`` prints::

    {"store": str, "switch": {switch}, "reach": {"runs": int, "scanned_all": bool,
     "groups": [{"tenant", "agent", "runs", "run_ids", "mode", "mode_source", "effect"}]},
     "cancelled_approvals": [str], "note": str | null}

``mode_source`` is ``switch`` (``--mode`` given), ``policy`` (the run's
``mode_when_enabled``) or ``unknown`` (a run started by a corral that did not record
it; ``mode`` is then ``null``). ``reach`` is ``null`` when the runs could not be read
once the switch was set (the note says why; the switch is on, the exit code 0).
``disable --json`` prints ``{"store": str, "cleared": bool, "scope": str, "target": str,
"by": str}``; ``status --json`` prints::

    {"store": str, "switches": [{switch}]}

where a switch is ``{"scope", "target", "mode", "reason", "by", "since"}``; ``mode`` is
``null`` for the run's default; ``since`` is when the switch was set, an ISO 8601 UTC
time (``null`` only for a store that does not report it).

Imports the kill switch and approvals queue (:mod:`corral.controls`), the stores, the
shared ``_common`` and ``_format``, and :mod:`corral.controls.reach`; no other command module.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from corral.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    SCAN_LIMIT,
    AgentOption,
    DbOption,
    Fail,
    JsonOption,
    ReasonOption,
    TenantOption,
    actor_option,
    group,
    guarded,
    one_line,
    open_db,
)
from corral.cli._format import columns, echo
from corral.controls import approvals, killswitch
from corral.controls.reach import EFFECTS, Reach, reach
from corral.exceptions import StoreError
from corral.record.views import switch_row
from corral.stores.base import KillScope, KillSwitchState

kill_app = group(
    "kill", help="Stop agents now: every run, a tenant's, an agent's, one tool, or one run."
)

ToolName = Annotated[str | None, typer.Option("--tool", help="Only calls of this tool.")]
RunId = Annotated[str | None, typer.Option("--run", help="Only this run (its id).")]
Actor = Annotated[str | None, actor_option("--by")]


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
        raise Fail(
            EXIT_USAGE,
            f"give at most one of --tenant, --agent, --tool, --run (got {names}): "
            "a switch has one scope; set one switch per scope",
        )
    if not chosen:
        return "global", ""
    scope, value = chosen[0]
    if not value or not value.strip():
        raise Fail(EXIT_USAGE, f"--{scope} needs a value")
    return scope, value


def _check_actor(by: str | None) -> None:
    if by is not None and not by.strip():
        raise Fail(EXIT_USAGE, "--as needs a value (who is making the change)")


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
    tenant: TenantOption = None,
    agent: AgentOption = None,
    tool: ToolName = None,
    run: RunId = None,
    reason: ReasonOption = "",
    by: Actor = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Turn a kill switch on (global unless a scope is given), replacing one already there,
    and say which running runs it reaches and the mode each applies."""

    def go() -> int:
        scope, target = _scope(tenant, agent, tool, run)
        chosen = killswitch.as_mode(mode)
        killswitch.check_switch(scope, target, chosen)
        _check_actor(by)
        store, url = open_db(db, announce=not json_out)
        sw = killswitch.enable(
            store, scope=scope, target=target, mode=chosen, reason=reason, actor=by
        )
        cancelled = approvals.cancel_covered(store, sw)
        try:
            reached: Reach | None = reach(store, sw, limit=SCAN_LIMIT)
        except StoreError as exc:  # the switch is on: only the account of its reach failed
            reached, unread = None, one_line(exc)
        note = _note(sw, reached)
        if reached is None:
            note = f"the switch is on, but the running runs could not be read: {unread}"
        if json_out:
            body = {
                "store": url,
                "switch": switch_row(sw),
                "reach": _reach_json(reached) if reached is not None else None,
                "cancelled_approvals": [a.id for a in cancelled],
                "note": note,
            }
            echo(json.dumps(body, indent=2))
            return EXIT_OK
        what = sw.mode or "each run's kill_switch.mode_when_enabled"
        echo(f"kill switch on: {killswitch.describe(sw)}, {what} (by {sw.actor})")
        for line in _reach_lines(sw, reached) if reached is not None else []:
            echo(line)
        if cancelled:
            echo(f"cancelled {len(cancelled)} pending approval(s) it covers")
        if note:
            echo(f"note: {note}")
        return EXIT_OK

    raise typer.Exit(guarded("kill enable", go))


def _reach_lines(sw: KillSwitchState, reached: Reach) -> list[str]:
    calls = f" (their calls of {sw.target})" if sw.scope == "tool" else ""
    more = "" if reached.scanned_all else f" (of the newest {SCAN_LIMIT:,} runs)"
    if not reached.runs:
        return [
            f"it reaches no running run in this store now{more}; runs that start or call "
            "later obey it. If an agent is running, it uses another store (check its "
            "CORRAL_DB or store=)"
        ]
    lines = [f"it reaches {_plural(reached.runs, 'running run')} in this store{more}{calls}:"]
    rows = [
        (
            f"{g.tenant or '-'} / {g.agent or '-'}",
            _plural(len(g.run_ids), "run"),
            _mode_text(g.mode, g.source),
        )
        for g in reached.groups
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for who, count, mode in rows:
        lines.append(f"  {who.ljust(widths[0])}  {count.ljust(widths[1])}  {mode}")
    return lines


def _mode_text(mode: str | None, source: str) -> str:
    if mode is None:
        return "its policy's mode_when_enabled (not recorded: the run started on an older corral)"
    where = " (its policy)" if source == "policy" else ""
    return f"{mode}{where}: {EFFECTS[mode]}"


def _note(sw: KillSwitchState, reached: Reach | None) -> str | None:
    """What an operator who meant to stop everything must know, or None."""
    if sw.mode is not None:
        return None
    if reached is not None and reached.runs and {g.mode for g in reached.groups} == {"stop_all"}:
        return None
    if sw.scope == "tool":
        return (
            f"without --mode, a run whose policy says disable_writes keeps calling {sw.target} "
            "if it is a read (disable_expensive: if it is not expensive); "
            f"corral kill enable --tool {sw.target} --mode stop_all turns it off everywhere"
        )
    flag = "" if sw.scope == "global" else f" --{sw.scope} {sw.target}"
    return (
        "without --mode, each run applies its policy's kill_switch.mode_when_enabled "
        "(often disable_writes: read tools and model calls keep running); "
        f"to stop everything: corral kill enable{flag} --mode stop_all"
    )


def _reach_json(reached: Reach) -> dict[str, Any]:
    return {
        "runs": reached.runs,
        "scanned_all": reached.scanned_all,
        "groups": [
            {
                "tenant": g.tenant,
                "agent": g.agent,
                "runs": len(g.run_ids),
                "run_ids": list(g.run_ids),
                "mode": g.mode,
                "mode_source": g.source,
                "effect": EFFECTS[g.mode] if g.mode else None,
            }
            for g in reached.groups
        ],
    }


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


@kill_app.command()
def disable(
    tenant: TenantOption = None,
    agent: AgentOption = None,
    tool: ToolName = None,
    run: RunId = None,
    reason: ReasonOption = "",
    by: Actor = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Turn a kill switch off (global unless a scope is given)."""

    def go() -> int:
        scope, target = _scope(tenant, agent, tool, run)
        killswitch.check_switch(scope, target)
        _check_actor(by)
        store, url = open_db(db, announce=not json_out)
        where = scope if not target else f"{scope}/{target}"
        who = by if by is not None else killswitch.default_actor()
        cleared = killswitch.disable(store, scope=scope, target=target, reason=reason, actor=who)
        if json_out:
            body = {"store": url, "cleared": cleared, "scope": scope, "target": target, "by": who}
            echo(json.dumps(body, indent=2))
        elif cleared:
            echo(f"kill switch off: {where} (by {who})")
        if cleared:
            return EXIT_OK
        left = [killswitch.describe(sw) for sw in store.kill_switches()]
        on = f" (on: {', '.join(left)})" if left else " (none is on)"
        raise Fail(EXIT_FAILED, f"no kill switch is on at {where}{on}")

    raise typer.Exit(guarded("kill disable", go))


@kill_app.command()
def status(
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """List the kill switches that are on."""

    def go() -> int:
        store, url = open_db(db, announce=not json_out)
        rows = [switch_row(sw) for sw in store.kill_switches()]
        if json_out:
            echo(json.dumps({"store": url, "switches": rows}))
            return EXIT_OK
        if not rows:
            echo("no kill switch is on")
            return EXIT_OK
        _print_table(rows)
        return EXIT_OK

    raise typer.Exit(guarded("kill status", go))


def _print_table(rows: list[dict[str, Any]]) -> None:
    columns(
        ("SCOPE", "TARGET", "MODE", "REASON", "BY", "SINCE"),
        (
            (
                r["scope"],
                r["target"] or "-",
                r["mode"] or "(run's default)",
                r["reason"] or "-",
                r["by"] or "-",
                r["since"] or "-",
            )
            for r in rows
        ),
    )
