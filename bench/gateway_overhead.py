"""Gateway overhead: the allow path for a read tool against a bare function call.

Measures, in the same process and run, the time of a bare call of the tool
function and of ``Run.call`` on the same tool (policy check, argument validation,
budget reserve/settle, output hygiene, trace in memory), and prints p50/p99 of
each in microseconds and the overhead (governed minus bare).

    python bench/gateway_overhead.py [--n 20000]

Target (DESIGN.md): overhead p50 <= 10 us, p99 <= 50 us.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time

import corral
from corral.testing import MemoryStore


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="timed calls per side")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    opts = parser.parse_args()

    @corral.tool(name="kb.read", effect="read")
    def kb_read(query: str) -> str:
        return "answer for " + query

    policy = corral.Policy.from_dict(
        {
            "tools": {"allow": ["kb.read"], "specs": {"kb.read": {"cache": False}}},
            "budgets": {"max_tool_calls": 10**9, "max_steps": 10**9, "max_seconds": 10**6},
        }
    )
    store = MemoryStore()
    run = corral.Run(policy, tools=[kb_read], store=store)
    fn = kb_read.fn
    # Eight distinct queries in turn: with the default loop detection (3 identical calls
    # among the last 5) no call is a repeat, so every call takes the full allow path.
    queries = [{"query": f"vendor status {i}"} for i in range(8)]

    bare: list[float] = []
    governed: list[float] = []
    clock = time.perf_counter_ns
    for i in range(2000):  # warm up both paths
        args = queries[i % 8]
        fn(**args)
        run.call("kb.read", args)
    gc.collect()
    gc.disable()
    try:
        # Interleave the two sides so machine noise hits both alike.
        for i in range(opts.n):
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
        "n": opts.n,
        "bare_p50_us": round(percentile(bare, 0.50), 2),
        "bare_p99_us": round(percentile(bare, 0.99), 2),
        "governed_p50_us": round(percentile(governed, 0.50), 2),
        "governed_p99_us": round(percentile(governed, 0.99), 2),
    }
    figures["overhead_p50_us"] = round(figures["governed_p50_us"] - figures["bare_p50_us"], 2)
    figures["overhead_p99_us"] = round(figures["governed_p99_us"] - figures["bare_p99_us"], 2)
    figures["ratio_p50"] = round(figures["governed_p50_us"] / max(figures["bare_p50_us"], 1e-9), 1)
    figures["mean_overhead_us"] = round(statistics.fmean(governed) - statistics.fmean(bare), 2)
    if opts.json:
        print(json.dumps(figures))
        return 0
    f = figures
    print(f"allow path, read tool, {opts.n} calls each (interleaved)")
    rows = [("bare call", "bare"), ("through corral", "governed"), ("overhead", "overhead")]
    for label, key in rows:
        p50, p99 = f[f"{key}_p50_us"], f[f"{key}_p99_us"]
        print(f"  {label:14s} p50 {p50:8.2f} us   p99 {p99:8.2f} us")
    print("  target: overhead p50 <= 10 us, p99 <= 50 us")
    print(f"  ratio governed/bare at p50: {figures['ratio_p50']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
