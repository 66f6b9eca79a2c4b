"""``corral runs`` and ``corral show RUN``: what agents did, read back from any store.

Exit codes: 0 done; 1 no such run (``show``); 2 an invalid option or a store
that cannot be opened or read (one line on stderr, never a traceback).

``corral runs --json`` prints one object whose shape is stable::

    {"store": str, "count": int,
     "runs": [{"run_id", "tenant", "agent", "status", "stop_reason", "stop",
               "steps", "tool_calls", "input_tokens", "output_tokens", "usd",
               "active_seconds", "waiting_seconds", "started_at", "ended_at", "task",
               "would_stop"}]}

``corral show RUN --json`` prints::

    {"store": str,
     "run": {...the same fields..., "answer", "policy_digest", "usage"},
     "timeline": [{"seq", "kind", "at", "t", "data", "denial"}]}

``status`` is ``running``, ``ok``, ``stopped``, ``error`` or ``interrupted``
(its process died); ``stop`` is the stop's details (``text`` reads
``tool_denied:browser.open``) or ``null``; ``would_stop`` lists, for a run in
observe mode, the stops that would have happened (each like ``stop``); ``usd`` is
a decimal string; times are ISO 8601 in UTC (``ended_at`` is ``null`` while
running); ``t`` is seconds since the run started; ``data`` is the event as
recorded; ``denial`` is ``{"guard", "reason", "why", "tool", "observed"}`` for an
event that records a refusal, else ``null``. A run that ended without its usage recorded
(interrupted, still running) reports the usage its events show.
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

from ._cli import DbOption, Fail, JsonOption, one_line, open_db
from ._decisions import Denial, DenialReader
from .exceptions import StoreError
from .stops import STOP_REASONS
from .stores import Store
from .stores.base import Event, RunRecord

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2

STATUSES = ("running", "ok", "stopped", "error", "interrupted")
#: How many of the newest runs the filters other than ``--tenant`` look through.
SCAN_LIMIT = 10_000
MAX_LIMIT = 10_000
#: Terminal columns from which ``corral runs`` also shows when each run started.
WIDE = 140
_STATUS_STYLE = {
    "ok": "green",
    "stopped": "yellow",
    "error": "red",
    "interrupted": "magenta",
    "running": "cyan",
}


def register(app: typer.Typer) -> None:
    """Add ``runs`` and ``show`` to the ``corral`` command line."""
    app.command("runs")(runs)
    app.command("show")(show)


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
        _guarded(
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


def show(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix of a recent one).")],
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show one run: its steps, model and tool calls, decisions and stop, on a timeline."""
    raise typer.Exit(_guarded("show", lambda: show_command(run_id, db=db, as_json=json_out)))


def _guarded(command: str, body: Any) -> int:
    try:
        code: int = body()
    except Fail as exc:
        print(f"corral {command}: {exc}", file=sys.stderr)
        return exc.code
    return code


def _read(what: str, url: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except StoreError as exc:
        raise Fail(EXIT_USAGE, f"cannot read {what} from {url}: {one_line(exc)}") from None


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
    store, url = open_db(db)
    filtered = agent is not None or status is not None or stop_reason is not None
    records: list[RunRecord] = _read(
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
        _print_json({"store": url, "count": len(rows), "runs": rows})
        return EXIT_OK
    console = _console()
    if not rows:
        console.print(f"No runs in {url}" + (" match the filters." if filtered or tenant else "."))
        return EXIT_OK
    table = Table(
        title=f"{len(rows)} run{'s' if len(rows) != 1 else ''} in {url}",
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
    started = console.width >= WIDE  # on a narrow terminal the ids and figures come first
    if started:
        table.add_column("started", no_wrap=True)
    for row in rows:
        cells = [
            Text(row["run_id"]),
            row["tenant"] or "",
            row["agent"] or "",
            Text(row["status"], style=_STATUS_STYLE.get(row["status"], "")),
            _stop_cell(row),
            f"{row['steps']:,}",
            f"{row['tool_calls']:,}",
            money(Decimal(row["usd"])),
            "" if row["active_seconds"] is None else seconds(row["active_seconds"]),
        ]
        table.add_row(*cells, *([_local(row["started_at"])] if started else []))
    console.print(table)
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
    events: list[Event] = _read("events", url, store.events, record.id)
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
        "usd": str(_decimal(usage.get("usd"))),
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
            usd += _decimal(e.data.get("usd"))
        elif e.kind == "tool_call" and e.data.get("outcome") in _CHARGED:
            tool_calls += 1
            usd += _decimal(e.data.get("usd"))
    return {
        "steps": steps,
        "tool_calls": tool_calls,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "tokens": tokens_in + tokens_out,
        "usd": str(usd),
    }


# -- show ------------------------------------------------------------------------------
def show_command(run_id: str, *, db: str | None, as_json: bool = False) -> int:
    """Print one run's timeline and usage; return the exit code."""
    store, url = open_db(db)
    record = _find(store, url, run_id)
    events: list[Event] = _read("events", url, store.events, record.id)
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
        _print_json({"store": url, "run": run, "timeline": timeline})
        return EXIT_OK
    _render_show(_console(), record, row, usage, timeline)
    return EXIT_OK


def _find(store: Store, url: str, run_id: str) -> RunRecord:
    record: RunRecord | None = _read("the run", url, store.get_run, run_id)
    if record is not None:
        return record
    recent: list[RunRecord] = _read("runs", url, store.list_runs, limit=SCAN_LIMIT)
    matches = [r for r in recent if r.id.startswith(run_id)] if run_id else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise Fail(
            EXIT_NOT_FOUND,
            f"{len(matches)} runs start with {run_id!r} in {url}: give more of the id",
        )
    raise Fail(EXIT_NOT_FOUND, f"no run {run_id!r} in {url} (corral runs lists them)")


def timeline_of(record: RunRecord, events: Sequence[Event]) -> list[dict[str, Any]]:
    """The JSON timeline of a run's events (see the module docstring)."""
    origin = min([record.started_at, *(e.at for e in events)]) if events else record.started_at
    reader = DenialReader()
    out = []
    for e in events:
        denial = reader.read(e)
        out.append(
            {
                "seq": e.seq,
                "kind": e.kind,
                "at": iso(e.at),
                "t": round(e.at - origin, 6),
                "data": dict(e.data),
                "denial": _denial_json(denial) if denial else None,
            }
        )
    return out


def _denial_json(d: Denial) -> dict[str, Any]:
    return {
        "guard": d.guard,
        "reason": d.reason,
        "why": d.why,
        "tool": d.tool,
        "observed": d.observed,
    }


def _render_show(
    console: Console,
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
    console.print(head)
    status = Text("status ")
    status.append(record.status, style=_STATUS_STYLE.get(record.status, ""))
    if record.stop_reason:
        status.append(f" · stop {_stop_text(record)}")
    status.append(f" · started {_local(row['started_at'])}")
    if record.ended_at:
        status.append(f" · took {seconds(max(0.0, record.ended_at - record.started_at))}")
    console.print(status)
    if record.task:
        console.print(Text(f"task: {_cut(record.task, 200)}", style="dim"))
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
            subject,
            Text(detail),
            seconds(took) if isinstance(took, int | float) else "",
            money(_decimal(usd)) if usd is not None else "",
        )
    console.print(table)
    console.print(Text("usage: " + usage_line(usage)))
    if record.would_stop:
        console.print(Text("observe mode, would have stopped:", style="yellow"))
        for w in record.would_stop:
            console.print(Text(f"  {w.get('text') or w.get('reason')}"))
    if record.answer:
        console.print(Text(f"answer: {_cut(record.answer, 300)}"))
    if record.status == "interrupted":
        console.print(
            Text("The run's process died before it ended; its usage is what its events show.")
        )


def _stop_text(record: RunRecord) -> str:
    stop = record.stop
    if isinstance(stop, Mapping) and stop.get("text"):
        return str(stop["text"])
    return str(record.stop_reason)


def describe(entry: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """``(event, subject, detail, style)`` for one timeline entry, for people to read."""
    kind = entry["kind"]
    data: Mapping[str, Any] = entry["data"]
    denial = entry.get("denial")
    if kind == "run_start":
        detail = f"policy {data.get('policy', '?')} ({data.get('mode', 'enforce')})"
        return ("resumed" if data.get("resumed") else "start"), "", detail, "dim"
    if kind == "step":
        return "step", f"#{data.get('n', '?')}", "", ""
    if kind == "model_call":
        return _describe_model(data)
    if kind == "tool_call":
        return _describe_tool(data)
    if denial is not None and kind != "run_end":
        return _describe_denial(kind, data, denial)
    if kind == "denied":  # observe mode: the would_stop event that follows names the guard
        why = f"{data.get('why') or ''} (observe mode: not blocked)"
        return "would deny", str(data.get("tool") or ""), why, "yellow"
    if kind == "approval":
        waited = data.get("waited")
        by = data.get("approver") or "?"
        detail = f"approved by {by}" + (f" after {seconds(waited)}" if waited else "")
        return "approval", str(data.get("tool") or ""), detail, "green"
    if kind == "skipped":
        return "skipped", ", ".join(map(str, data.get("tools") or [])), "not run", "dim"
    if kind == "warning":
        return "warning", str(data.get("tool") or ""), str(data.get("message") or ""), "yellow"
    if kind == "interrupted":
        return "interrupted", "", str(data.get("why") or "the process died"), "magenta"
    if kind == "run_end":
        return _describe_end(data, denial)
    return kind, "", _cut(json.dumps(dict(data), default=str), 120), ""


def _describe_model(data: Mapping[str, Any]) -> tuple[str, str, str, str]:
    model = str(data.get("model") or "")
    if data.get("outcome") == "error":
        return "model call", model, f"failed: {_cut(str(data.get('error') or ''), 160)}", "red"
    parts = [f"{data.get('input_tokens', 0):,} in / {data.get('output_tokens', 0):,} out tokens"]
    if data.get("max_tokens"):
        parts.append(f"max {data['max_tokens']:,}")
    if data.get("finish_reason"):
        parts.append(f"finish {data['finish_reason']}")
    wants = data.get("tool_calls")
    if wants:
        parts.append("calls " + ", ".join(map(str, wants)))
    if data.get("outcome") not in (None, "ok"):
        parts.append(str(data["outcome"]))
    return "model call", model, " · ".join(parts), "blue"


def _describe_tool(data: Mapping[str, Any]) -> tuple[str, str, str, str]:
    outcome = str(data.get("outcome") or "")
    attempt = data.get("attempt")
    detail = outcome + (f" (attempt {attempt})" if isinstance(attempt, int) and attempt > 1 else "")
    problem = data.get("error") or data.get("problem")
    if problem:
        detail += f": {_cut(str(problem), 160)}"
    style = {"ok": "green", "cached": "dim", "replayed": "dim"}.get(outcome, "red")
    return "tool call", str(data.get("tool") or ""), detail, style


def _describe_denial(
    kind: str, data: Mapping[str, Any], denial: Mapping[str, Any]
) -> tuple[str, str, str, str]:
    tool = str(denial.get("tool") or "")
    if kind == "would_stop":
        return "would stop", tool, f"{denial['guard']}: {data.get('text') or ''}", "yellow"
    detail = f"{denial['guard']}: {denial['why']}"
    if kind == "invalid_args":
        detail = f"{denial['guard']}: " + _cut("; ".join(map(str, data.get("problems") or [])), 160)
    if kind == "approval":
        by = data.get("approver")
        why = data.get("error") or data.get("reason")
        detail = "approval " + ("failed" if data.get("error") else "denied")
        detail += (f" by {by}" if by else "") + (f": {why}" if why else "")
    if data.get("handed_back"):
        detail += " (handed back to the model)"
    return "denied", tool, detail, "red"


def _describe_end(
    data: Mapping[str, Any], denial: Mapping[str, Any] | None
) -> tuple[str, str, str, str]:
    reason = str(data.get("stop_reason") or "")
    stop = data.get("stop")
    detail = ""
    if isinstance(stop, Mapping):
        detail = str(stop.get("text") or "")
        if stop.get("message"):
            detail += f": {_cut(str(stop['message']), 200)}"
    if denial is not None:
        detail = f"{denial['guard']}: {detail}"
    style = _STATUS_STYLE.get(str(data.get("status") or ""), "")
    return "stop", reason, detail, f"bold {style}".strip()


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
    parts.append(money(_decimal(usage.get("usd"))))
    if "active_seconds" in usage:
        parts.append(
            f"{seconds(usage.get('active_seconds') or 0)} active, "
            f"{seconds(usage.get('waiting_seconds') or 0)} waiting"
        )
    overrun = usage.get("overrun_tokens")
    if overrun:
        parts.append(f"{overrun:,} tokens over the reservation")
    return " · ".join(parts)


# -- formatting ------------------------------------------------------------------------
def _console() -> Console:
    # Piped output keeps table rows on one line unless the caller sets COLUMNS.
    probe = Console()
    wide = not probe.is_terminal and "COLUMNS" not in os.environ
    return Console(width=200) if wide else probe


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _decimal(value: Any) -> Decimal:
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


def seconds(value: float) -> str:
    """``0 s``, ``0.4 ms``, ``1.49 s``, ``2 min 05 s``."""
    if value == 0:
        return "0 s"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    if value < 120:
        return f"{value:.2f} s"
    whole = round(value)
    return f"{whole // 60} min {whole % 60:02d} s"


def iso(at: float) -> str:
    """Epoch seconds as ISO 8601 in UTC, to the millisecond."""
    stamp = datetime.fromtimestamp(at, tz=UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _local(stamp: str) -> str:
    """An ISO 8601 stamp as local time: ``11-24 09:12:05`` (``2025-11-24 09:12:05`` if not
    this year)."""
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone()
    same_year = moment.year == datetime.now().astimezone().year
    return moment.strftime("%m-%d %H:%M:%S" if same_year else "%Y-%m-%d %H:%M:%S")


def _cut(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
