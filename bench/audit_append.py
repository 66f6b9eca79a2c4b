"""Audit log cost: append throughput, and the allow path with the audit durable in SQLite.

1. Append throughput (records per second) of ``store.append_events`` — each append one
   transaction that locks the chain's head, seals the events and commits — on SQLite
   (WAL, ``synchronous=NORMAL``) and PostgreSQL, one event per append (a tool call's
   outcome) and ten per append; on PostgreSQL also with 4 appenders at once, which queue
   on the chain's head.
2. The allow path of a read tool, ``Run.call`` on a SQLiteStore (every call's outcome
   committed to the file before the call returns) against a bare call of the function,
   with ``synchronous=NORMAL`` (survives the process being killed) and ``FULL`` (also
   power loss): p50/p99 of each, interleaved in the same run as in gateway_overhead.py.

    python bench/audit_append.py [--n 2000] [--postgres URL] [--json]
                                 [--commit each|group] [--window-ms 10]

``--commit group`` measures the allow path with SQLite's group commit (reads' events
committed within ``--window-ms``; see docs/cli.md) instead of a commit per call.

PostgreSQL: ``--postgres URL``, else ``CORRAL_TEST_POSTGRES_URL``, else the local server
(database ``test``); skipped with a message when it cannot be reached. Work happens in a
temporary SQLite directory and a PostgreSQL schema of its own, dropped afterwards.

Target (DESIGN.md): allow path with durable audit in SQLite, overhead p50 <= 50 us.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import corral
from corral.record import audit
from corral.stores import Store
from corral.stores.base import Event
from corral.stores.sqlite import SQLiteStore


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def events(run: str, first: int, count: int) -> list[Event]:
    """Events shaped like a tool call's outcome."""
    return [
        Event(
            run_id=run,
            seq=i,
            kind="tool_call",
            at=time.time(),
            data={
                "tool": "kb.read",
                "outcome": "ok",
                "attempt": 1,
                "args_digest": f"{i:064x}",
                "usd": "0.01",
                "seconds": 0.0123,
            },
            tenant="acme",
            actor="support-bot",
        )
        for i in range(first, first + count)
    ]


def throughput(store: Store, records: int, batch: int, appenders: int = 1) -> float:
    """Records per second appended by ``appenders`` threads, ``batch`` events per append."""
    per = records // appenders

    def work(n: int) -> None:
        for i in range(0, per, batch):
            store.append_events(events(f"bench-{n}", i + 1, batch))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(appenders)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * appenders / (time.perf_counter() - began)


def append_figures(store: Store, n: int, *, concurrent: bool) -> dict[str, float]:
    store.append_events(events("warm-up", 1, 10))
    out = {
        "1_per_append": throughput(store, n, 1),
        "10_per_append": throughput(store, n * 5, 10),
    }
    if concurrent:
        out["1_per_append_4_appenders"] = throughput(store, n, 1, appenders=4)
    seq = store.audit_head().seq
    assert audit.verify(store).checked == seq, "the chain must verify after the run"
    return {k: round(v) for k, v in out.items()}


def allow_path(store: Store, n: int) -> dict[str, float]:
    """p50/p99 in microseconds: bare call, Run.call through corral, and the difference."""

    @corral.tool(name="kb.read", effect="read")
    def kb_read(query: str) -> str:
        return "answer for " + query

    policy = corral.Policy.from_dict(
        {
            "tools": {"allow": ["kb.read"], "specs": {"kb.read": {"cache": False}}},
            "budgets": {"max_tool_calls": 10**9, "max_steps": 10**9, "max_seconds": 10**6},
        }
    )
    run = corral.Run(policy, tools=[kb_read], store=store)
    fn = kb_read.fn
    queries = [{"query": f"vendor status {i}"} for i in range(8)]  # no loop detection
    bare: list[float] = []
    governed: list[float] = []
    clock = time.perf_counter_ns
    for i in range(200):
        fn(**queries[i % 8])
        run.call("kb.read", queries[i % 8])
    gc.collect()
    gc.disable()
    try:
        for i in range(n):
            args = queries[i % 8]
            t0 = clock()
            fn(**args)
            t1 = clock()
            run.call("kb.read", args)
            t2 = clock()
            bare.append((t1 - t0) / 1000)
            governed.append((t2 - t1) / 1000)
    finally:
        gc.enable()
    figures = {
        "bare_p50_us": round(percentile(bare, 0.50), 2),
        "bare_p99_us": round(percentile(bare, 0.99), 2),
        "governed_p50_us": round(percentile(governed, 0.50), 2),
        "governed_p99_us": round(percentile(governed, 0.99), 2),
    }
    figures["overhead_p50_us"] = round(figures["governed_p50_us"] - figures["bare_p50_us"], 2)
    figures["overhead_p99_us"] = round(figures["governed_p99_us"] - figures["bare_p99_us"], 2)
    return figures


def postgres(url: str) -> tuple[Callable[[], Store] | None, str]:
    """A factory of stores in a fresh schema and a cleanup, or None and why not."""
    try:
        import psycopg

        from corral.stores.postgres import PostgresStore

        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any reason at all: report it and go on without PostgreSQL
        return None, f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    schema = f"corral_bench_{uuid.uuid4().hex[:10]}"
    return (lambda: PostgresStore(url, schema=schema, max_size=8)), schema


def drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="appends / timed calls per figure")
    parser.add_argument("--postgres", default=None, help="PostgreSQL URL")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--commit", default="each", choices=("each", "group"))
    parser.add_argument("--window-ms", type=float, default=10.0, help="with --commit group")
    opts = parser.parse_args()
    grouped: dict[str, Any] = (
        {"commit": "group", "window": opts.window_ms / 1000} if opts.commit == "group" else {}
    )
    pg_url = (
        opts.postgres
        or os.environ.get("CORRAL_TEST_POSTGRES_URL")
        or f"postgresql://{os.environ.get('PGUSER') or 'postgres'}@127.0.0.1:5432/test"
    )
    report: dict[str, Any] = {
        "n": opts.n,
        "commit": opts.commit,
        "append_records_per_s": {},
        "allow_path": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        with SQLiteStore(Path(tmp) / "append.db") as store:
            report["append_records_per_s"]["sqlite"] = append_figures(
                store, opts.n, concurrent=False
            )
        factory, detail = postgres(pg_url)
        if factory is None:
            report["append_records_per_s"]["postgres"] = None
            report["postgres_skipped"] = f"PostgreSQL at {pg_url} is not reachable ({detail})"
        else:
            try:
                with factory() as pg:  # type: ignore[attr-defined]
                    report["append_records_per_s"]["postgres"] = append_figures(
                        pg, opts.n, concurrent=True
                    )
            finally:
                drop_schema(pg_url, detail)
        for sync in ("NORMAL", "FULL"):
            with SQLiteStore(Path(tmp) / f"allow-{sync}.db", synchronous=sync, **grouped) as store:
                report["allow_path"][f"sqlite_{sync.lower()}"] = allow_path(store, opts.n)
    if opts.json:
        print(json.dumps(report))
        return 0
    print("audit append throughput (records/s; each append one transaction, chain sealed)")
    for backend, figures in report["append_records_per_s"].items():
        if figures is None:
            print(f"  {backend:9s} skipped: {report['postgres_skipped']}")
            continue
        line = "   ".join(f"{k.replace('_', ' ')}: {v:>7,}" for k, v in figures.items())
        print(f"  {backend:9s} {line}")
    how = "audit durable" if opts.commit == "each" else f"group commit {opts.window_ms:g} ms"
    print(f"allow path, read tool, {how} in SQLite, {opts.n} calls each (interleaved)")
    for mode, f in report["allow_path"].items():
        print(f"  synchronous={mode.split('_')[1].upper()}")
        rows = (("bare call", "bare"), ("through corral", "governed"), ("overhead", "overhead"))
        for label, key in rows:
            p50, p99 = f[f"{key}_p50_us"], f[f"{key}_p99_us"]
            print(f"    {label:14s} p50 {p50:8.2f} us   p99 {p99:8.2f} us")
    print("  target: overhead p50 <= 50 us with synchronous=NORMAL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
