"""``corral replay RUN``: run a recorded run again, offline, against its recorded model
responses and tool outputs, and say whether it did the same (:func:`corral.replay`).

Exit codes: 0 reproduced (same decisions, same stop reason, same usage); 1 it diverged,
it cannot be replayed (no recording, pruned, altered, resumed), no such run, or a store
that cannot be reached or read; 2 an invalid option, policy file or store URL.

``corral replay RUN --json`` prints one object whose shape is stable::

    {"store": str, "run_id": str, "reproduced": bool, "summary": str,
     "recorded_stop_reason": str, "stop_reason": str | null,
     "recorded_usage": {...}, "usage": {...}, "steps": int, "decisions": int,
     "policy_digest": str, "replayed_policy_digest": str,
     "divergence": null | {"step", "reason", "message", "expected", "got"},
     "notes": [str]}

Imports the replay package, the policy loader and the shared ``_common`` and ``_format``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from corral.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    SCAN_LIMIT,
    DbOption,
    Fail,
    JsonOption,
    guarded,
    open_db,
    read,
)
from corral.cli._format import console, cut, money, print_json
from corral.policy.schema import Policy, load_policy
from corral.record.views import as_decimal
from corral.replay import ReplayResult
from corral.replay import replay as replay_run
from corral.stores import Store
from corral.stores.base import RunRecord

PolicyOption = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="Replay under this policy file instead of the one the run recorded.",
    ),
]


def replay(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix of a recent one).")],
    db: DbOption = None,
    policy: PolicyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run a recorded run again offline and report whether it did the same, or where not."""
    raise typer.Exit(
        guarded("replay", lambda: replay_command(run_id, db=db, policy=policy, as_json=json_out))
    )


def replay_command(
    run_id: str, *, db: str | None, policy: Path | None = None, as_json: bool = False
) -> int:
    """Replay one run and print what was found; return the exit code."""
    given: Policy | None = load_policy(policy) if policy is not None else None
    store, url = open_db(db, announce=not as_json)
    found = _find(store, url, run_id)
    result: ReplayResult = read("the recording", url, replay_run, found, store=store, policy=given)
    if as_json:
        print_json({"store": url, **result.to_dict()})
    else:
        _render(result)
    return EXIT_OK if result.reproduced else EXIT_FAILED


def _find(store: Store, url: str, run_id: str) -> str:
    if read("the run", url, store.get_run, run_id) is not None:
        return run_id
    recent: list[RunRecord] = read("runs", url, store.list_runs, limit=SCAN_LIMIT)
    matches = [r.id for r in recent if r.id.startswith(run_id)] if run_id else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise Fail(EXIT_FAILED, f"{len(matches)} runs start with {run_id!r} in {url}")
    raise Fail(EXIT_FAILED, f"no run {run_id!r} in {url} (corral runs lists them)")


def _usage(usage: Any) -> str:
    if not usage:
        return "-"
    return (
        f"{usage.get('steps', 0)} steps · {usage.get('tool_calls', 0)} tool calls · "
        f"{usage.get('input_tokens', 0):,} in / {usage.get('output_tokens', 0):,} out · "
        f"{money(as_decimal(usage.get('usd')))}"
    )


def _render(result: ReplayResult) -> None:
    out = console()
    style = "green" if result.reproduced else "yellow"
    out.print(Text(f"Replay of {result.run_id}", style="bold"))
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("")
    table.add_column("recorded")
    table.add_column("replayed")
    table.add_row("stop reason", str(result.recorded_stop_reason), str(result.stop_reason or "-"))
    table.add_row("usage", _usage(result.recorded_usage), _usage(result.usage))
    table.add_row("policy", result.policy_digest, result.replayed_policy_digest or "-")
    table.add_row("steps", str(result.steps), "")
    table.add_row("decisions", str(result.decisions), "")
    out.print(table)
    out.print(Text(result.summary, style=style))
    d = result.divergence
    if d is not None:
        if d.expected:
            out.print(Text(f"  recorded: {cut(d.expected, 180)}"))
        if d.got:
            out.print(Text(f"  replayed: {cut(d.got, 180)}"))
    for note in result.notes:
        out.print(Text(f"note: {note}", style="dim"))
