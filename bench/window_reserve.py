"""Window limits on the allow path: ``Run.call`` with a tenant limit against one without.

Each call under a window limit reserves in the store and settles there (one
transaction each); the leases on those grants are renewed only by the renewer
thread, never on the call. Measures, in the same process and run, ``Run.call`` of a
read tool with no window limit (the baseline: nothing reaches the store) and with
a tenant ``1d`` limit, calendar and rolling, on each store, interleaved, and prints
p50/p99 in microseconds and the ratio to the baseline at p50.

    python bench/window_reserve.py [--n 3000] [--stores memory,sqlite,postgres]

PostgreSQL is measured when ``CORRAL_TEST_POSTGRES_URL`` (or the local test server,
``postgresql://postgres@127.0.0.1:5432/test``) answers.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import corral
from corral.testing import MemoryStore

URL = os.environ.get("CORRAL_TEST_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/test"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def policy(*limits: dict[str, Any]) -> corral.Policy:
    return corral.Policy.from_dict(
        {
            "tools": {"allow": ["kb.read"], "specs": {"kb.read": {"cache": False}}},
            "budgets": {"max_tool_calls": 10**9, "max_steps": 10**9, "max_seconds": 10**6},
            "limits": list(limits),
        }
    )


@contextlib.contextmanager
def open_store(kind: str, tmp: Path) -> Iterator[Any]:
    if kind == "memory":
        yield MemoryStore()
        return
    if kind == "sqlite":
        from corral.stores.sqlite import SQLiteStore

        store: Any = SQLiteStore(tmp / f"{uuid.uuid4().hex}.db")
        try:
            yield store
        finally:
            store.close()
        return
    import psycopg

    from corral.stores.postgres import PostgresStore

    schema = "corral_bench_" + uuid.uuid4().hex[:8]
    store = PostgresStore(URL, schema=schema)
    try:
        yield store
    finally:
        store.close()
        with psycopg.connect(URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="timed calls per side")
    parser.add_argument("--stores", default="memory,sqlite,postgres")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    opts = parser.parse_args()

    @corral.tool(name="kb.read", effect="read")
    def kb_read(query: str) -> str:
        return "answer for " + query

    cap = {"per": "tenant", "window": "1d", "max_calls": 10**9}
    kinds = {"calendar": policy(cap)}
    with contextlib.suppress(corral.PolicyError):  # a version without rolling windows
        kinds["rolling"] = policy(cap | {"rolling": True})
    queries = [{"query": f"vendor status {i}"} for i in range(8)]
    figures: dict[str, Any] = {"n": opts.n}
    with tempfile.TemporaryDirectory() as tmp:
        for store_kind in opts.stores.split(","):
            try:
                ctx = open_store(store_kind, Path(tmp))
                store = ctx.__enter__()
            except Exception as exc:  # no server: say so and go on
                figures[store_kind] = f"skipped ({type(exc).__name__})"
                continue
            try:
                runs = {"none": corral.Run(policy(), tools=[kb_read], store=store, tenant="t")}
                for name, p in kinds.items():
                    runs[name] = corral.Run(p, tools=[kb_read], store=store, tenant="t")
                times: dict[str, list[float]] = {name: [] for name in runs}
                clock = time.perf_counter_ns
                for i in range(300):  # warm up
                    for run in runs.values():
                        run.call("kb.read", queries[i % 8])
                gc.collect()
                gc.disable()
                try:
                    for i in range(opts.n):
                        for name, run in runs.items():
                            t0 = clock()
                            run.call("kb.read", queries[i % 8])
                            times[name].append((clock() - t0) / 1000)
                finally:
                    gc.enable()
                base = percentile(times["none"], 0.5)
                figures[store_kind] = {
                    name: {
                        "p50_us": round(percentile(t, 0.5), 1),
                        "p99_us": round(percentile(t, 0.99), 1),
                        "ratio_p50": round(percentile(t, 0.5) / base, 2),
                    }
                    for name, t in times.items()
                }
                for run in runs.values():
                    run.__exit__(None, None, None)
            finally:
                ctx.__exit__(None, None, None)
    if opts.json:
        print(json.dumps(figures))
        return 0
    print(f"Run.call with a tenant window limit, {opts.n} calls each (interleaved)")
    for store_kind in opts.stores.split(","):
        f = figures[store_kind]
        if isinstance(f, str):
            print(f"  {store_kind}: {f}")
            continue
        for name, row in f.items():
            print(
                f"  {store_kind:8s} {name:8s} p50 {row['p50_us']:9.1f} us   "
                f"p99 {row['p99_us']:9.1f} us   x{row['ratio_p50']} of no limit"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
