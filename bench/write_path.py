"""The write path with a durable idempotency claim, against a bare call and a read call.

Measures, in one process and one run on one SQLite file (WAL, ``synchronous=NORMAL``
unless ``--synchronous FULL``), interleaved so machine noise hits all sides alike:

- **bare**: the tool function called directly;
- **read**: ``Run.call`` of a read tool (the allow path, its audit events durable);
- **write**: ``Run.call`` of a write tool, each call a new key: the idempotency lookup,
  the durable claim (``BEGIN IMMEDIATE`` insert) and its lease renewal registered, the
  authorization audited *before* the tool runs, the outcome stored after, the audit
  events appended.

Prints p50/p99 of each in microseconds, the write path's overhead over the bare call,
and the ratio write/read.

    python bench/write_path.py [--n 5000] [--synchronous NORMAL|FULL] [--json]
                               [--commit each|group] [--window-ms 10]

``--commit group``: SQLite's group commit (reads' events committed within ``--window-ms``;
a write's claim and authorization stay synchronous; see docs/cli.md).

Target (DESIGN.md): write path with a durable idempotency record, p50 <= 1 ms.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import corral
from corral.stores.sqlite import SQLiteStore


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5_000, help="timed calls per side")
    parser.add_argument("--synchronous", default="NORMAL", help="NORMAL (default) or FULL")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--commit", default="each", choices=("each", "group"))
    parser.add_argument("--window-ms", type=float, default=10.0, help="with --commit group")
    opts = parser.parse_args()
    grouped: dict[str, Any] = (
        {"commit": "group", "window": opts.window_ms / 1000} if opts.commit == "group" else {}
    )

    @corral.tool(name="kb.read", effect="read")
    def kb_read(query: str) -> str:
        return "answer for " + query

    @corral.tool(name="ledger.write", effect="write")
    def ledger_write(entry: str) -> str:
        return "written " + entry

    policy = corral.Policy.from_dict(
        {
            "tools": {
                "allow": ["kb.read", "ledger.write"],
                "specs": {"kb.read": {"cache": False}},
            },
            "writes": {"require_approval": False},
            "budgets": {"max_tool_calls": 10**9, "max_steps": 10**9, "max_seconds": 10**6},
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "corral.db", synchronous=opts.synchronous, **grouped)
        run = corral.Run(policy, tools=[kb_read, ledger_write], store=store)
        fn = ledger_write.fn
        queries = [{"query": f"vendor status {i}"} for i in range(8)]
        bare: list[float] = []
        read: list[float] = []
        write: list[float] = []
        clock = time.perf_counter_ns
        for i in range(500):  # warm up every path
            fn(entry=f"warm {i}")
            run.call("kb.read", queries[i % 8])
            run.call("ledger.write", {"entry": f"warm {i}"})
        gc.collect()
        gc.disable()
        try:
            for i in range(opts.n):
                args = {"entry": f"entry {i}"}  # a new key each call: a claim every time
                t0 = clock()
                fn(**args)
                t1 = clock()
                run.call("kb.read", queries[i % 8])
                t2 = clock()
                run.call("ledger.write", args)
                t3 = clock()
                bare.append((t1 - t0) / 1000)
                read.append((t2 - t1) / 1000)
                write.append((t3 - t2) / 1000)
        finally:
            gc.enable()
            store.close()
    p50 = {
        name: percentile(v, 0.50) for name, v in (("bare", bare), ("read", read), ("write", write))
    }
    p99 = {
        name: percentile(v, 0.99) for name, v in (("bare", bare), ("read", read), ("write", write))
    }
    figures = {
        "n": opts.n,
        "synchronous": opts.synchronous.upper(),
        "commit": opts.commit,
        **{f"{k}_p50_us": round(v, 2) for k, v in p50.items()},
        **{f"{k}_p99_us": round(v, 2) for k, v in p99.items()},
        "write_overhead_p50_us": round(p50["write"] - p50["bare"], 2),
        "write_over_read_p50": round(p50["write"] / p50["read"], 2),
        "write_over_read_p99": round(p99["write"] / p99["read"], 2),
        "target_p50_us": 1000,
    }
    if opts.json:
        print(json.dumps(figures))
    else:
        sync = figures["synchronous"]
        print(
            f"write path, durable claim on SQLite (synchronous={sync}, commit={opts.commit}), "
            f"n={opts.n}"
        )
        for side in ("bare", "read", "write"):
            print(f"  {side:<6} p50 {p50[side]:9.2f} us   p99 {p99[side]:9.2f} us")
        print(
            f"  write overhead p50 {figures['write_overhead_p50_us']} us (target <= 1000 us); "
            f"write/read p50 x{figures['write_over_read_p50']}, "
            f"p99 x{figures['write_over_read_p99']}"
        )
    return 0 if p50["write"] <= 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
