"""``corral runs``: the recorded runs, newest first, from any store (``corral show RUN``
gives one run's timeline: :mod:`corral.cli.show`). The filters other than ``--tenant`` look
through the newest :data:`~corral.cli._common.SCAN_LIMIT` runs.

Exit codes: 0 done (an empty list included); 1 no store there, or a store that cannot
be reached or read; 2 an invalid option or store URL (one line on stderr, never a
traceback).

``corral runs --json`` prints one object whose shape is stable::

    {"store": str, "count": int,
     "runs": [{"run_id", "tenant", "agent", "status", "stop_reason", "stop",
               "steps", "tool_calls", "input_tokens", "output_tokens", "usd",
               "active_seconds", "waiting_seconds", "started_at", "ended_at", "task",
               "would_stop"}]}

``status`` is ``running``, ``ok``, ``stopped``, ``error`` or ``interrupted``
(its process died); ``stop`` is the stop's details (``text`` reads
``tool_denied:browser.open``) or ``null``; ``would_stop`` lists, for a run in
observe mode, the stops that would have happened (each like ``stop``); ``usd`` is
a decimal string; times are ISO 8601 in UTC (``ended_at`` is ``null`` while
running). A run that ended without its usage recorded (interrupted, still running)
reports the usage its events show.

Imports the stores, the stop reasons, the rows of :mod:`corral.record.views` and the
shared ``_common`` and ``_format``; no other command module.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from corral.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    SCAN_LIMIT,
    AgentOption,
    DbOption,
    Fail,
    JsonOption,
    TenantOption,
    guarded,
    open_db,
    read,
)
from corral.cli._format import STATUS_STYLE, console, local_time, money, print_json, seconds
from corral.record.views import run_row
from corral.stops import STOP_REASONS
from corral.stores import Store
from corral.stores.base import Event, RunRecord

STATUSES = ("running", "ok", "stopped", "error", "interrupted")
MAX_LIMIT = 10_000
#: Terminal columns from which ``corral runs`` also shows when each run started.
WIDE = 140


def runs(
    db: DbOption = None,
    tenant: TenantOption = None,
    agent: AgentOption = None,
    status: Annotated[
        str | None, typer.Option("--status", help=f"Only this status: {', '.join(STATUSES)}.")
    ] = None,
    stop_reason: Annotated[
        str | None, typer.Option("--stop-reason", help="Only runs that ended this way.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many runs.")] = 50,
    json_out: JsonOption = False,
) -> None:
    """List recorded runs, newest first."""
    raise typer.Exit(
        guarded(
            "runs",
            lambda: runs_command(
                db=db,
                tenant=tenant,
                agent=agent,
                status=status,
                stop_reason=stop_reason,
                limit=limit,
                as_json=json_out,
            ),
        )
    )


# -- runs ------------------------------------------------------------------------------
def runs_command(
    *,
    db: str | None,
    tenant: str | None = None,
    agent: str | None = None,
    status: str | None = None,
    stop_reason: str | None = None,
    limit: int = 50,
    as_json: bool = False,
) -> int:
    """Print the runs matching the filters, newest first; return the exit code."""
    problems = []
    if status is not None and status not in STATUSES:
        problems.append(f"--status: must be one of {', '.join(STATUSES)}, got {status!r}")
    if stop_reason is not None and stop_reason not in STOP_REASONS:
        problems.append(f"--stop-reason: not a stop reason: {stop_reason!r}")
    if not 1 <= limit <= MAX_LIMIT:
        problems.append(f"--limit: must be between 1 and {MAX_LIMIT:,}, got {limit}")
    if problems:
        raise Fail(EXIT_USAGE, "; ".join(problems))
    store, url = open_db(db, announce=not as_json)
    filtered = agent is not None or status is not None or stop_reason is not None
    records: list[RunRecord] = read(
        "runs", url, store.list_runs, limit=SCAN_LIMIT if filtered else limit, tenant=tenant
    )
    chosen = [
        r
        for r in records
        if (agent is None or r.agent == agent)
        and (status is None or r.status == status)
        and (stop_reason is None or r.stop_reason == stop_reason)
    ][:limit]
    rows = [run_row(r, _events_if_needed(store, url, r)) for r in chosen]
    if as_json:
        print_json({"store": url, "count": len(rows), "runs": rows})
        return EXIT_OK
    out = console()
    if not rows:
        out.print("No runs" + (" match the filters." if filtered or tenant else " yet."))
        return EXIT_OK
    table = Table(
        title=f"{len(rows)} run{'s' if len(rows) != 1 else ''}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("run", no_wrap=True)
    # When the terminal is narrow these wrap first; the figures and ids never do.
    table.add_column("tenant", overflow="fold", min_width=6)
    table.add_column("agent", overflow="fold", min_width=6)
    table.add_column("status", no_wrap=True)
    table.add_column("stop reason", overflow="fold", min_width=11)
    for name in ("steps", "tool calls", "USD", "time"):
        table.add_column(name, justify="right", no_wrap=True)
    started = out.width >= WIDE  # on a narrow terminal the ids and figures come first
    if started:
        table.add_column("started", no_wrap=True)
    for row in rows:
        cells = [
            Text(row["run_id"]),
            row["tenant"] or "",
            row["agent"] or "",
            Text(row["status"], style=STATUS_STYLE.get(row["status"], "")),
            _stop_cell(row),
            f"{row['steps']:,}",
            f"{row['tool_calls']:,}",
            money(Decimal(row["usd"])),
            "" if row["active_seconds"] is None else seconds(row["active_seconds"]),
        ]
        table.add_row(*cells, *([local_time(row["started_at"])] if started else []))
    out.print(table)
    return EXIT_OK


def _stop_cell(row: Mapping[str, Any]) -> Text:
    stop = row["stop"]
    text = Text(str(row["stop_reason"] or ""))
    if isinstance(stop, Mapping) and stop.get("detail"):
        text = Text(f"{row['stop_reason']}:{stop['detail']}")
    would = row.get("would_stop") or []
    if would:
        # Observe mode: the run went on, but say what would have stopped it.
        first = would[0] if isinstance(would[0], Mapping) else {}
        label = ":".join(str(first[k]) for k in ("reason", "detail") if first.get(k))
        more = f" +{len(would) - 1}" if len(would) > 1 else ""
        text.append(f" (would stop: {label}{more})", style="yellow")
    return text


def _events_if_needed(store: Store, url: str, record: RunRecord) -> list[Event] | None:
    # Usage is written when a run ends; for a run still going or whose process died,
    # the events are the only account of what it used.
    if record.usage:
        return None
    events: list[Event] = read("events", url, store.events, record.id)
    return events
