"""``corral report``: what observe mode would have stopped, by guard and tool, over a period.

The evidence a team needs before switching a policy from ``mode: observe`` to
``enforce``: of the runs in observe mode since ``--since``, how many would have
been stopped, by which guard (allowlist, budget, loop, ...), for which reason and
tool; next to it, what enforce-mode runs of the same period were actually
stopped by.

Exit codes: 0 done; 1 no store there, or a store that cannot be reached or read; 2 an
invalid option or store URL.

``corral report --json`` prints one object whose shape is stable::

    {"store": str, "since": str, "until": str, "tenant": str|null, "agent": str|null,
     "runs": int, "scanned_all": bool,
     "observe": {"runs": int, "affected": int, "share": float,
                 "would_stop": int,
                 "by_guard": [{"guard", "count", "runs", "share"}],
                 "first": [{"guard", "reason", "tool", "runs", "share"}],
                 "rows": [{"guard", "reason", "tool", "why", "count", "runs", "share"}]},
     "enforce": {"runs": int, "stopped": int, "share": float,
                 "by_guard": [{"guard", "count", "runs", "share"}],
                 "rows": [{"guard", "reason", "tool", "why", "count", "runs", "share"}]}}

``guard`` is the guard that refused (``allowlist``, ``budget``, ``loop``, ...), or
``failure`` for an enforce-mode stop that is no refusal (``tool_error``, ``model_error``);
``share`` is a fraction of the mode's runs (0 when there are none); ``count`` is how
many would-be stops (or stops) a row gathers, ``runs`` how many runs they came from;
``first`` is the stop each affected run would have ended with (its first). Times are
ISO 8601 in UTC. ``scanned_all`` is false when the period held more runs than one
report reads (:data:`~corral.cli._common.SCAN_LIMIT`, newest first).

Imports the stores, the decision reader (:mod:`corral.record.decisions`), the gateway's
error reasons and the shared ``_common`` and ``_format``; no other command module.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

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
from corral.cli._format import console, iso, print_json
from corral.gateway.lifecycle import ERROR_REASONS
from corral.record.decisions import guard_of
from corral.stores import Store
from corral.stores.base import RunRecord

_PERIOD = re.compile(r"^([1-9][0-9]*)([mhdw])$")
_PERIOD_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def report(
    since: Annotated[
        str,
        typer.Option(
            "--since", help="Period: 30m, 24h, 7d, 2w, or an ISO 8601 date or time (UTC)."
        ),
    ] = "24h",
    tenant: TenantOption = None,
    agent: AgentOption = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Summarise what observe mode would have stopped (by guard, reason and tool) next to
    what enforce mode stopped, over a period."""
    raise typer.Exit(
        guarded(
            "report",
            lambda: report_command(
                since=since, tenant=tenant, agent=agent, db=db, as_json=json_out
            ),
        )
    )


def parse_since(text: str, *, now: float) -> float:
    """Epoch seconds from ``30m``/``24h``/``7d``/``2w`` (before ``now``) or an ISO 8601
    date or time (naive means UTC).

    >>> parse_since("2h", now=10_000.0)
    2800.0
    >>> parse_since("1970-01-01T01:00:00Z", now=0.0)
    3600.0
    """
    m = _PERIOD.match(text.strip())
    if m:
        return now - int(m.group(1)) * _PERIOD_SECONDS[m.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Fail(
            EXIT_USAGE,
            f"--since: must be a period such as 30m, 24h, 7d or 2w, or an ISO 8601 date or "
            f"time, got {text!r}",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass
class _Tally:
    """Stops gathered by (guard, reason, tool, why): how many, from which runs."""

    count: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    runs: dict[tuple[str, str, str, str], set[str]] = field(
        default_factory=lambda: defaultdict(set)
    )
    guard_count: Counter[str] = field(default_factory=Counter)
    guard_runs: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def add(self, run_id: str, stop: Mapping[str, Any]) -> tuple[str, str, str, str]:
        reason = str(stop.get("reason") or "")
        extra = stop.get("extra")
        why = str(extra.get("why") or "") if isinstance(extra, Mapping) else ""
        tool = str(stop.get("tool") or "")
        guard = guard_of(reason, why)
        if guard == "other" and reason in ERROR_REASONS:
            guard = "failure"  # not a refusal: a tool, a model or the agent's code failed
        key = (guard, reason, tool, why or str(stop.get("scope") or ""))
        self.count[key] += 1
        self.runs[key].add(run_id)
        self.guard_count[key[0]] += 1
        self.guard_runs[key[0]].add(run_id)
        return key

    def rows(self, total: int) -> list[dict[str, Any]]:
        keys = sorted(self.count, key=lambda k: (-len(self.runs[k]), -self.count[k], k))
        return [
            {
                "guard": k[0],
                "reason": k[1],
                "tool": k[2],
                "why": k[3],
                "count": self.count[k],
                "runs": len(self.runs[k]),
                "share": _share(len(self.runs[k]), total),
            }
            for k in keys
        ]

    def by_guard(self, total: int) -> list[dict[str, Any]]:
        guards = sorted(self.guard_count, key=lambda g: (-len(self.guard_runs[g]), g))
        return [
            {
                "guard": g,
                "count": self.guard_count[g],
                "runs": len(self.guard_runs[g]),
                "share": _share(len(self.guard_runs[g]), total),
            }
            for g in guards
        ]


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _mode(store: Store, url: str, record: RunRecord) -> str:
    """``observe`` or ``enforce``, as the run's start event recorded it (a run observing some
    guards, ``mixed``, counts as observe: it is the evidence for enforcing those guards)."""
    if record.would_stop:
        return "observe"  # only observe mode records stops that would have happened
    for event in read("events", url, store.events, record.id):
        if event.kind == "run_start":
            return "observe" if event.data.get("mode") in ("observe", "mixed") else "enforce"
    return "enforce"


def summarise(
    records: Iterable[RunRecord], modes: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``observe`` and ``enforce`` sections of the report (see the module docstring)."""
    observe, enforce = _Tally(), _Tally()
    first: Counter[tuple[str, str, str]] = Counter()
    n_observe = n_enforce = affected = stopped = would = 0
    for r in records:
        if r.status == "running":
            continue  # not over yet: neither its stops nor its would-be stops are final
        if modes[r.id] == "observe":
            n_observe += 1
            if r.would_stop:
                affected += 1
                would += len(r.would_stop)
                for i, w in enumerate(r.would_stop):
                    key = observe.add(r.id, w)
                    if i == 0:
                        first[key[:3]] += 1
            continue
        n_enforce += 1
        if r.stop_reason not in (None, "ok") and isinstance(r.stop, Mapping):
            stopped += 1
            enforce.add(r.id, r.stop)
    firsts = [
        {"guard": g, "reason": reason, "tool": tool, "runs": n, "share": _share(n, n_observe)}
        for (g, reason, tool), n in sorted(first.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return (
        {
            "runs": n_observe,
            "affected": affected,
            "share": _share(affected, n_observe),
            "would_stop": would,
            "by_guard": observe.by_guard(n_observe),
            "first": firsts,
            "rows": observe.rows(n_observe),
        },
        {
            "runs": n_enforce,
            "stopped": stopped,
            "share": _share(stopped, n_enforce),
            "by_guard": enforce.by_guard(n_enforce),
            "rows": enforce.rows(n_enforce),
        },
    )


def report_command(
    *,
    since: str = "24h",
    tenant: str | None = None,
    agent: str | None = None,
    db: str | None = None,
    as_json: bool = False,
    now: float | None = None,
) -> int:
    """Print the report; return the exit code."""
    until = time.time() if now is None else now
    start = parse_since(since, now=until)
    if start > until:
        raise Fail(EXIT_USAGE, f"--since: {iso(start)} is in the future")
    store, url = open_db(db, announce=not as_json)
    records: list[RunRecord] = read("runs", url, store.list_runs, limit=SCAN_LIMIT, tenant=tenant)
    scanned_all = len(records) < SCAN_LIMIT or min(r.started_at for r in records) < start
    chosen = [
        r for r in records if start <= r.started_at <= until and (agent is None or r.agent == agent)
    ]
    modes = {r.id: _mode(store, url, r) for r in chosen}
    observe, enforce = summarise(chosen, modes)
    body = {
        "store": url,
        "since": iso(start),
        "until": iso(until),
        "tenant": tenant,
        "agent": agent,
        "runs": observe["runs"] + enforce["runs"],
        "scanned_all": scanned_all,
        "observe": observe,
        "enforce": enforce,
    }
    if as_json:
        print_json(body)
        return EXIT_OK
    _render(console(), body)
    return EXIT_OK


def _pct(share: float) -> str:
    return f"{share * 100:.1f}%"


def _render(out: Console, body: Mapping[str, Any]) -> None:
    who = "".join(
        f" · {label} {body[label]}" for label in ("tenant", "agent") if body[label] is not None
    )
    out.print(f"Runs since {body['since']}{who}: {body['runs']:,}")
    if not body["scanned_all"]:
        out.print(f"(only the newest {SCAN_LIMIT:,} runs were read)", style="yellow")
    obs = body["observe"]
    out.print()
    if not obs["runs"]:
        out.print("Observe mode: no runs in the period.")
    else:
        out.print(
            f"Observe mode: {obs['runs']:,} runs; {obs['affected']:,} ({_pct(obs['share'])}) "
            f"would have been stopped ({obs['would_stop']:,} would-be stops)."
        )
        if obs["rows"]:
            out.print(_table("Would have stopped", obs["rows"], count_label="would-stops"))
            firsts = _firsts(obs["first"])
            out.print(firsts)
    enf = body["enforce"]
    out.print()
    if not enf["runs"]:
        out.print("Enforce mode: no runs in the period.")
        return
    out.print(
        f"Enforce mode: {enf['runs']:,} runs; {enf['stopped']:,} ({_pct(enf['share'])}) "
        "stopped by a guard or a failure."
    )
    if enf["rows"]:
        out.print(_table("Stopped", enf["rows"], count_label="stops"))


def _table(title: str, rows: Sequence[Mapping[str, Any]], *, count_label: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    table.add_column("guard", no_wrap=True)
    table.add_column("reason", no_wrap=True)
    table.add_column("tool", overflow="fold")
    table.add_column("why", overflow="fold")
    table.add_column(count_label, justify="right", no_wrap=True)
    table.add_column("runs", justify="right", no_wrap=True)
    table.add_column("share of runs", justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            row["guard"],
            row["reason"],
            row["tool"],
            row["why"],
            f"{row['count']:,}",
            f"{row['runs']:,}",
            _pct(row["share"]),
        )
    return table


def _firsts(rows: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(
        title="Would have ended the run (its first would-be stop)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title_justify="left",
    )
    for name in ("guard", "reason", "tool"):
        table.add_column(name, overflow="fold")
    table.add_column("runs", justify="right", no_wrap=True)
    table.add_column("share of runs", justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            row["guard"], row["reason"], row["tool"], f"{row['runs']:,}", _pct(row["share"])
        )
    return table
