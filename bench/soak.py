"""Soak: many short governed runs in one process on one SQLite file, watching for leaks.

Runs ``--runs`` governed runs (``corral.run`` with a scripted model: ``--calls`` read tool
calls, one per turn, then a final answer) one after another, every run on the same
SQLite store (a temporary file), and samples every ``--every`` runs the process's
resident memory (``/proc/self/statm``, else the peak from ``resource``), its thread count
and its open file descriptors. After the warm-up (the first ``--warmup`` share of the
runs) it reports the growth of each from the first sample after the warm-up to the last
and to the highest; the target (issue 13): RSS flat within 50 MB, no thread or fd growth.

    python bench/soak.py [--runs 100000] [--calls 3] [--every N] [--quick] [--json]

A measurement, not a test: it exits 0 whatever the growth, and 1 only when a run errors
(raises, or ends other than ``ok`` with its tool calls made).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import corral
from corral.stores.sqlite import SQLiteStore
from corral.testing import ScriptedModel, call, final

RSS_TARGET_MB = 50.0
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """Resident memory now (Linux), else the peak so far."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * PAGE / 2**20
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def os_threads() -> int:
    """Threads of the process as the OS counts them (Python's own count where it cannot)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return threading.active_count()


def open_fds() -> int:
    for where in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(where)) - 1  # less the one listdir holds open
        except OSError:
            continue
    return -1


def thread_kinds() -> dict[str, int]:
    """Python's threads by name, numbers folded (``corral-worker-N``): what grew, if any."""
    kinds = Counter(re.sub(r"\d+", "N", t.name) for t in threading.enumerate())
    return dict(sorted(kinds.items()))


def sample(runs: int, started: float) -> dict[str, Any]:
    return {
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 2),
        "rss_mb": round(rss_mb(), 1),
        "threads": os_threads(),
        "python_threads": threading.active_count(),
        "fds": open_fds(),
        "thread_kinds": thread_kinds(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000, help="runs in all (100,000)")
    parser.add_argument("--calls", type=int, default=3, help="tool calls in each run (3)")
    parser.add_argument("--every", type=int, default=0, help="sample every N runs (runs/50)")
    parser.add_argument(
        "--warmup", type=float, default=0.1, help="share of the runs before the baseline (0.1)"
    )
    parser.add_argument("--quick", action="store_true", help="300 runs, for a smoke test")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    opts = parser.parse_args()
    if opts.quick:
        opts.runs = min(opts.runs, 300)
    every = opts.every or max(1, opts.runs // (6 if opts.quick else 50))
    warmup_runs = int(opts.runs * opts.warmup)

    @corral.tool(name="kb.read", effect="read")
    def kb_read(query: str) -> str:
        return "answer for " + query

    policy = corral.Policy.from_dict(
        {
            "tools": {"allow": ["kb.read"], "specs": {"kb.read": {"cache": False}}},
            "budgets": {"max_tool_calls": opts.calls, "max_steps": opts.calls + 1},
        }
    )
    script = [*(call("kb.read", query=f"vendor status {i}") for i in range(opts.calls))]
    script.append(final("done"))
    samples: list[dict[str, Any]] = []
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="corral-soak-") as tmp:
        path = Path(tmp) / "soak.db"
        store = SQLiteStore(path)
        started = time.perf_counter()
        samples.append(sample(0, started))
        try:
            for i in range(1, opts.runs + 1):
                try:
                    result = corral.run(
                        "status?",
                        model=ScriptedModel(script),
                        tools=[kb_read],
                        policy=policy,
                        store=store,
                    )
                except Exception as exc:  # a measurement: report it and stop
                    errors.append(f"run {i} raised {type(exc).__name__}: {exc}")
                    break
                if result.status != "ok" or result.usage.tool_calls != opts.calls:
                    errors.append(f"run {i} ended {result.stop_reason}: {result.error}")
                    break
                if i % every == 0 or i == opts.runs:
                    s, previous = sample(i, started), samples[-1]
                    seconds = max(s["seconds"] - previous["seconds"], 1e-9)
                    s["runs_per_second"] = round((i - previous["runs"]) / seconds, 1)
                    samples.append(s)
                    print(
                        f"runs {i:>7,}/{opts.runs:,}  rss {s['rss_mb']:7.1f} MB  "
                        f"threads {s['threads']:>3}  fds {s['fds']:>4}  "
                        f"{s['runs_per_second']:,.0f} runs/s",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            db_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20
            store.close()
    figures = summarize(samples, warmup_runs, opts, db_mb)
    figures["errors"] = errors
    if opts.json:
        print(json.dumps(figures, indent=2))
    else:
        print_summary(figures)
    return 1 if errors else 0


def summarize(
    samples: list[dict[str, Any]], warmup_runs: int, opts: argparse.Namespace, db_mb: float
) -> dict[str, Any]:
    after = [s for s in samples if s["runs"] >= warmup_runs and s["runs"] > 0] or samples[-1:]
    base, last = after[0], samples[-1]
    seconds = last["seconds"]
    growth = {
        "rss_mb": round(last["rss_mb"] - base["rss_mb"], 1),
        "rss_mb_max": round(max(s["rss_mb"] for s in after) - base["rss_mb"], 1),
        "threads": last["threads"] - base["threads"],
        "threads_max": max(s["threads"] for s in after) - base["threads"],
        "fds": last["fds"] - base["fds"],
        "fds_max": max(s["fds"] for s in after) - base["fds"],
    }
    flat = {
        "rss": growth["rss_mb_max"] <= RSS_TARGET_MB,
        "threads": growth["threads_max"] <= 0,
        "fds": growth["fds_max"] <= 0,
    }
    return {
        "runs": last["runs"],
        "calls_per_run": opts.calls,
        "every": samples[1]["runs"] if len(samples) > 1 else 0,
        "warmup_runs": warmup_runs,
        "seconds": seconds,
        "runs_per_second": round(last["runs"] / max(seconds, 1e-9), 1),
        "store_mb": round(db_mb, 1),
        # throughput in the first interval after the warm-up and in the last one: a run
        # that slows as the store grows shows here (so does a busy machine)
        "interval_runs_per_second": [
            after[1 if len(after) > 1 else 0].get("runs_per_second"),
            last.get("runs_per_second"),
        ],
        "baseline": base,
        "last": last,
        "growth_after_warmup": growth,
        "target": {"rss_mb": RSS_TARGET_MB, "threads": 0, "fds": 0},
        "flat": flat,
        "samples": samples,
    }


def print_summary(f: dict[str, Any]) -> None:
    g, base, last = f["growth_after_warmup"], f["baseline"], f["last"]
    print(
        f"soak: {f['runs']:,} runs of {f['calls_per_run']} tool calls on SQLite in "
        f"{f['seconds']:,.1f} s ({f['runs_per_second']:,.0f} runs/s); store {f['store_mb']} MB"
    )
    first, end = f["interval_runs_per_second"]
    print(
        f"  baseline after {base['runs']:,} runs (warm-up {f['warmup_runs']:,} runs); "
        f"runs/s in the first interval after it {first}, in the last {end}"
    )
    rows = [
        ("RSS MB", "rss_mb", "rss", f"<= {RSS_TARGET_MB:g}"),
        ("threads", "threads", "threads", "0"),
        ("open fds", "fds", "fds", "0"),
    ]
    print(
        f"  {'':9} {'baseline':>9} {'last':>9} {'growth':>8} {'max growth':>11}  {'target':<7} flat"
    )
    for label, key, flat_key, target in rows:
        print(
            f"  {label:9} {base[key]:>9} {last[key]:>9} {g[key]:>8} {g[key + '_max']:>11}  "
            f"{target:<7} {'yes' if f['flat'][flat_key] else 'no'}"
        )
    kinds = ", ".join(f"{k} {v}" for k, v in last["thread_kinds"].items())
    print(f"  Python threads at the end: {kinds}")
    if f["errors"]:
        print("  errors: " + "; ".join(f["errors"]))


if __name__ == "__main__":
    sys.exit(main())
