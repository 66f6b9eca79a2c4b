"""``corral runs``: the recorded runs, newest first, from any store (``corral show RUN``
gives one run's timeline: :mod:`corral.cli.show`). Also the formatting both share.

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
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from corral.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    DbOption,
    Fail,
    JsonOption,
    guarded,
    one_line,
    open_db,
)
from corral.cli._timeline import STATUS_STYLE, seconds
from corral.exceptions import StoreError
from corral.stops import STOP_REASONS
from corral.stores import Store
from corral.stores.base import Event, RunRecord

STATUSES = ("running", "ok", "stopped", "error", "interrupted")
#: How many of the newest runs the filters other than ``--tenant`` look through.
SCAN_LIMIT = 10_000
MAX_LIMIT = 10_000
#: Terminal columns from which ``corral runs`` also shows when each run started.
WIDE = 140


def register(app: typer.Typer) -> None:
    """Add ``runs`` to the ``corral`` command line."""
    app.command("runs")(runs)


def runs(
    db: DbOption = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant.")] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent.")] = None,
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


def read(what: str, url: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; a store failing to answer is a failure naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except StoreError as exc:
        raise Fail(EXIT_FAILED, f"cannot read {what} from {url}: {one_line(exc)}") from None


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


def run_row(record: RunRecord, events: Sequence[Event] | None = None) -> dict[str, Any]:
    """The JSON form of one run (see the module docstring)."""
    usage: Mapping[str, Any] = record.usage or (usage_from_events(events) if events else {})
    return {
        "run_id": record.id,
        "tenant": record.tenant,
        "agent": record.agent,
        "status": record.status,
        "stop_reason": record.stop_reason,
        "stop": dict(record.stop) if record.stop else None,
        "steps": int(usage.get("steps", 0)),
        "tool_calls": int(usage.get("tool_calls", 0)),
        "input_tokens": int(usage.get("input_tokens", 0)),
        "output_tokens": int(usage.get("output_tokens", 0)),
        "usd": str(decimal(usage.get("usd"))),
        "active_seconds": usage.get("active_seconds"),
        "waiting_seconds": usage.get("waiting_seconds"),
        "started_at": iso(record.started_at),
        "ended_at": iso(record.ended_at) if record.ended_at else None,
        "task": record.task,
        "would_stop": [dict(w) for w in record.would_stop],
    }


#: Tool-call outcomes that used a call of the budget.
_CHARGED = frozenset({"ok", "error", "timeout", "invalid_output", "not_executed"})


def usage_from_events(events: Sequence[Event]) -> dict[str, Any]:
    """What a run's events show it used (for a run whose usage was never written)."""
    steps = tool_calls = tokens_in = tokens_out = 0
    usd = Decimal(0)
    for e in events:
        if e.kind == "step":
            steps += 1
        elif e.kind == "model_call":
            steps += 1
            tokens_in += int(e.data.get("input_tokens") or 0)
            tokens_out += int(e.data.get("output_tokens") or 0)
            usd += decimal(e.data.get("usd"))
        elif e.kind == "tool_call" and e.data.get("outcome") in _CHARGED:
            tool_calls += 1
            usd += decimal(e.data.get("usd"))
    return {
        "steps": steps,
        "tool_calls": tool_calls,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "tokens": tokens_in + tokens_out,
        "usd": str(usd),
    }


# -- formatting ------------------------------------------------------------------------
def console() -> Console:
    """A console for tables: piped output keeps rows on one line unless COLUMNS is set."""
    probe = Console()
    wide = not probe.is_terminal and "COLUMNS" not in os.environ
    return Console(width=200) if wide else probe


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def decimal(value: Any) -> Decimal:
    """``value`` as a Decimal (0 when missing or not a number)."""
    try:
        return Decimal(str(value)) if value is not None else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


def money(usd: Decimal) -> str:
    """``$0``, ``$0.0014``, ``$2.11``, ``$1,300.00``."""
    if usd == 0:
        return "$0"
    if abs(usd) < Decimal("0.01"):
        return f"${usd:.4f}"
    return f"${usd:,.2f}"


def iso(at: float) -> str:
    """Epoch seconds as ISO 8601 in UTC, to the millisecond."""
    stamp = datetime.fromtimestamp(at, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def local_time(stamp: str) -> str:
    """An ISO 8601 stamp as local time: ``11-24 09:12:05`` (``2025-11-24 09:12:05`` if not
    this year)."""
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone()
    same_year = moment.year == datetime.now().astimezone().year
    return moment.strftime("%m-%d %H:%M:%S" if same_year else "%Y-%m-%d %H:%M:%S")
