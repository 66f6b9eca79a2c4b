"""``corral show RUN``: one run's timeline (steps, model and tool calls, decisions, the
stop) and its usage, read back from any store.

Exit codes: 0 done; 1 no such run (or a prefix matching several), no store there, or a
store that cannot be reached or read; 2 an invalid option or store URL (one line on
stderr, never a traceback).

``corral show RUN --json`` prints one object whose shape is stable::

    {"store": str,
     "run": {...the fields of a `corral runs` row..., "answer", "policy_digest", "usage"},
     "timeline": [{"seq", "kind", "at", "t", "data", "denial", "actor"}]}

``t`` is seconds since the run started; ``data`` is the event as recorded; ``denial``
is ``{"guard", "reason", "why", "tool", "observed"}`` for an event that records a
refusal, else ``null``; ``actor`` is who wrote the event (the agent, or the operator
who decided an approval). Every kind of event has a readable line in the human output
(:mod:`corral.cli._timeline`).

Imports the stores, the JSON views of :mod:`corral.record.views` (the HTTP API answers
with the same) and the shared ``_common``, ``_format`` and ``_timeline``; no other
command module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
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
from corral.cli._format import (
    STATUS_STYLE,
    console,
    cut,
    local_time,
    money,
    print_json,
    seconds,
)
from corral.cli._timeline import describe
from corral.record.views import as_decimal, run_row, timeline_of, usage_from_events
from corral.stores import Store
from corral.stores.base import Event, RunRecord


def show(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix of a recent one).")],
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show one run: its steps, model and tool calls, decisions and stop, on a timeline."""
    raise typer.Exit(guarded("show", lambda: show_command(run_id, db=db, as_json=json_out)))


def show_command(run_id: str, *, db: str | None, as_json: bool = False) -> int:
    """Print one run's timeline and usage; return the exit code."""
    store, url = open_db(db, announce=not as_json)
    record = _find(store, url, run_id)
    events: list[Event] = read("events", url, store.events, record.id)
    # The store's order is the order of appending (the audit chain's): decisions made outside
    # the run (an approver's, numbered 0) fall where they happened, not first.
    row = run_row(record, None if record.usage else events)
    usage = dict(record.usage) if record.usage else usage_from_events(events)
    timeline = timeline_of(record, events)
    if as_json:
        run = {
            **row,
            "answer": record.answer,
            "policy_digest": record.policy_digest,
            "usage": usage,
            "would_stop": [dict(w) for w in record.would_stop],
        }
        print_json({"store": url, "run": run, "timeline": timeline})
        return EXIT_OK
    _render(console(), record, row, usage, timeline)
    return EXIT_OK


def _find(store: Store, url: str, run_id: str) -> RunRecord:
    record: RunRecord | None = read("the run", url, store.get_run, run_id)
    if record is not None:
        return record
    recent: list[RunRecord] = read("runs", url, store.list_runs, limit=SCAN_LIMIT)
    matches = [r for r in recent if r.id.startswith(run_id)] if run_id else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise Fail(
            EXIT_FAILED,
            f"{len(matches)} runs start with {run_id!r} in {url}: give more of the id",
        )
    raise Fail(EXIT_FAILED, f"no run {run_id!r} in {url} (corral runs lists them)")


def _render(
    out: Console,
    record: RunRecord,
    row: Mapping[str, Any],
    usage: Mapping[str, Any],
    timeline: Sequence[Mapping[str, Any]],
) -> None:
    head = Text()
    head.append(f"Run {record.id}", style="bold")
    for label, value in (("tenant", record.tenant), ("agent", record.agent)):
        if value:
            head.append(f" · {label} {value}")
    out.print(head)
    status = Text("status ")
    status.append(record.status, style=STATUS_STYLE.get(record.status, ""))
    if record.stop_reason:
        status.append(f" · stop {_stop_text(record)}")
    status.append(f" · started {local_time(row['started_at'])}")
    if record.ended_at:
        status.append(f" · took {seconds(max(0.0, record.ended_at - record.started_at))}")
    out.print(status)
    if record.task:
        out.print(Text(f"task: {cut(record.task, 200)}", style="dim"))
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("t", justify="right", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("subject")
    table.add_column("detail")
    table.add_column("latency", justify="right", no_wrap=True)
    table.add_column("USD", justify="right", no_wrap=True)
    for entry in timeline:
        what, subject, detail, style = describe(entry)
        data = entry["data"]
        took = data.get("seconds")
        usd = data.get("usd")
        table.add_row(
            f"+{seconds(entry['t'])}",
            Text(what, style=style),
            Text(subject),
            Text(detail),
            seconds(took) if isinstance(took, int | float) else "",
            money(as_decimal(usd)) if usd is not None else "",
        )
    out.print(table)
    out.print(Text("usage: " + usage_line(usage)))
    if record.would_stop:
        out.print(Text("observe mode, would have stopped:", style="yellow"))
        for w in record.would_stop:
            out.print(Text(f"  {w.get('text') or w.get('reason')}"))
    if record.answer:
        out.print(Text(f"answer: {cut(record.answer, 300)}"))
    if record.status == "interrupted":
        out.print(
            Text("The run's process died before it ended; its usage is what its events show.")
        )


def _stop_text(record: RunRecord) -> str:
    stop = record.stop
    if isinstance(stop, Mapping) and stop.get("text"):
        return str(stop["text"])
    return str(record.stop_reason)


def usage_line(usage: Mapping[str, Any]) -> str:
    """``4 steps · 3 tool calls (kb.read 1, browser.open 2) · ... · $1.41 · 13.6 s active``."""
    parts = [
        f"{usage.get('steps', 0):,} steps",
        f"{usage.get('tool_calls', 0):,} tool calls",
    ]
    by_tool = usage.get("tool_calls_by_tool")
    if isinstance(by_tool, Mapping) and by_tool:
        parts[-1] += " (" + ", ".join(f"{k} {v}" for k, v in by_tool.items()) + ")"
    parts.append(
        f"{usage.get('input_tokens', 0):,} in / {usage.get('output_tokens', 0):,} out tokens"
    )
    parts.append(money(as_decimal(usage.get("usd"))))
    if "active_seconds" in usage:
        parts.append(
            f"{seconds(usage.get('active_seconds') or 0)} active, "
            f"{seconds(usage.get('waiting_seconds') or 0)} waiting"
        )
    overrun = usage.get("overrun_tokens")
    if overrun:
        parts.append(f"{overrun:,} tokens over the reservation")
    return " · ".join(parts)
