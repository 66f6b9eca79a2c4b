"""Loop overhead: the governed loop per tool call and per run, and ``AsyncRun.call``.

Measured in one process, in interleaved rounds (the machine is shared and noisy, so
every figure is compared with a baseline taken in the same rounds):

- the bounded loop (``corral.run`` with ``corral.testing.ScriptedModel``): runs of 10
  tool calls, one per turn, then a final answer, against runs that answer at once;
  per tool call = (median of the 10-call runs - median of the 0-call runs) / 10, fixed
  cost per run = the median of the 0-call runs; a sync tool (called inline on the loop's
  own event loop, bounded by the timer signal as ``Run.call`` bounds it, since the bench
  runs on the main thread) on the in-memory store and on SQLite (a file in a temporary
  directory), and an async tool on the in-memory store;
- ``AsyncRun.call`` with an async tool and with a sync tool (a worker thread), each
  against ``Run.call`` with the sync tool, as a ratio of the medians of the rounds.

    python bench/loop_overhead.py [--rounds 7] [--quick] [--json]

Targets (issue "Speed"): per tool call <= 60 us (memory), <= 150 us (SQLite); fixed
cost per run <= 80 us; ``AsyncRun.call`` (async tool) <= 1.3x ``Run.call``.
``--quick`` runs a few of each, for a smoke test (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import corral
from corral.stores import open_store
from corral.testing import MemoryStore, ScriptedModel, call, final

CALLS = 10


@corral.tool(name="kb.read", effect="read")
def kb_read(query: str) -> str:
    return "answer for " + query


@corral.tool(name="kb.aread", effect="read")
async def kb_aread(query: str) -> str:
    return "answer for " + query


POLICY = corral.Policy.from_dict(
    {
        "tools": {
            "allow": ["kb.read", "kb.aread"],
            "specs": {"kb.read": {"cache": False}, "kb.aread": {"cache": False}},
        },
        "budgets": {"max_tool_calls": 10**9, "max_steps": 10**9, "max_seconds": 10**6},
    }
)
QUERIES = [{"query": f"vendor status {i}"} for i in range(8)]


TOOLS = [kb_read, kb_aread]


def _script(tool: str, calls: int) -> list[Any]:
    return [call(tool, query=f"vendor status {i}") for i in range(calls)] + [final("done")]


def _loop_times(store: Any, tool: str, calls: int, runs: int) -> list[float]:
    """Seconds of each of ``runs`` governed loops of ``calls`` calls of ``tool``."""
    models = [ScriptedModel(_script(tool, calls)) for _ in range(runs)]
    out: list[float] = []
    clock = time.perf_counter
    for model in models:
        t0 = clock()
        result = corral.run("vendor status?", model=model, tools=TOOLS, policy=POLICY, store=store)
        out.append(clock() - t0)
        if result.status != "ok":  # a broken run measures nothing
            raise SystemExit(f"run ended {result.stop_reason}: {result.error}")
    return out


def _sync_calls(n: int) -> float:
    """Seconds per ``Run.call`` of the sync tool."""
    with corral.Run(POLICY, tools=TOOLS, store=MemoryStore()) as run:
        for i in range(50):
            run.call("kb.read", QUERIES[i % 8])
        t0 = time.perf_counter()
        for i in range(n):
            run.call("kb.read", QUERIES[i % 8])
        return (time.perf_counter() - t0) / n


def _async_calls(loop: asyncio.AbstractEventLoop, name: str, n: int) -> float:
    """Seconds per ``AsyncRun.call`` of tool ``name``, awaited on ``loop``."""

    async def calls() -> float:
        async with corral.AsyncRun(POLICY, tools=TOOLS, store=MemoryStore()) as run:
            for i in range(50):
                await run.call(name, QUERIES[i % 8])
            t0 = time.perf_counter()
            for i in range(n):
                await run.call(name, QUERIES[i % 8])
            return (time.perf_counter() - t0) / n

    return loop.run_until_complete(calls())


def _timed(fn: Callable[[], Any]) -> Any:
    gc.collect()
    gc.disable()
    try:
        return fn()
    finally:
        gc.enable()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--runs", type=int, default=60, help="loop runs per kind and round")
    parser.add_argument("--calls", type=int, default=3000, help="tool calls per side and round")
    parser.add_argument("--quick", action="store_true", help="a few of each (a smoke test)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    opts = parser.parse_args()
    if opts.quick:
        opts.rounds, opts.runs, opts.calls = 1, 3, 50

    tmp = tempfile.TemporaryDirectory()
    memory = MemoryStore()
    sqlite = open_store(f"sqlite:///{Path(tmp.name) / 'bench.db'}")
    # (label, store, tool) of each loop measured
    kinds = [("memory", memory, "kb.read"), ("sqlite", sqlite, "kb.read")]
    kinds.append(("memory_async_tool", memory, "kb.aread"))
    loop = asyncio.new_event_loop()
    per_call: dict[str, list[float]] = {k[0]: [] for k in kinds}
    fixed: dict[str, list[float]] = {k[0]: [] for k in kinds}
    sync_call: list[float] = []
    async_call: list[float] = []
    thread_call: list[float] = []
    try:
        for _, store, tool in kinds:  # warm up
            _loop_times(store, tool, CALLS, 3)
            _loop_times(store, tool, 0, 3)
        for _ in range(opts.rounds):
            for kind, store, tool in kinds:
                empty = statistics.median(
                    _timed(lambda s=store, t=tool: _loop_times(s, t, 0, opts.runs))
                )
                full = statistics.median(
                    _timed(lambda s=store, t=tool: _loop_times(s, t, CALLS, opts.runs))
                )
                fixed[kind].append(empty)
                per_call[kind].append((full - empty) / CALLS)
            sync_call.append(_timed(lambda: _sync_calls(opts.calls)))
            async_call.append(_timed(lambda: _async_calls(loop, "kb.aread", opts.calls)))
            thread_call.append(_timed(lambda: _async_calls(loop, "kb.read", opts.calls)))
    finally:
        loop.close()
        sqlite.close()
        tmp.cleanup()

    us = 1e6
    med = statistics.median
    figures: dict[str, Any] = {
        "rounds": opts.rounds,
        **{f"loop_per_tool_call_{k}_us": round(med(v) * us, 1) for k, v in per_call.items()},
        **{f"loop_fixed_per_run_{k}_us": round(med(v) * us, 1) for k, v in fixed.items()},
        "run_call_sync_tool_us": round(med(sync_call) * us, 1),
        "asyncrun_call_async_tool_us": round(med(async_call) * us, 1),
        "asyncrun_call_sync_tool_us": round(med(thread_call) * us, 1),
    }
    figures["async_over_sync_ratio"] = round(
        med(a / s for a, s in zip(async_call, sync_call, strict=True)), 2
    )
    figures["thread_over_sync_ratio"] = round(
        med(a / s for a, s in zip(thread_call, sync_call, strict=True)), 2
    )
    if opts.json:
        print(json.dumps(figures))
        return 0
    f = figures
    print(f"governed loop, {CALLS} tool calls a run, one per turn ({opts.rounds} rounds)")
    for kind in per_call:
        print(
            f"  {kind:18s} per tool call {f[f'loop_per_tool_call_{kind}_us']:8.1f} us   "
            f"fixed per run {f[f'loop_fixed_per_run_{kind}_us']:8.1f} us"
        )
    print("  (memory and sqlite: a sync tool, called inline; memory_async_tool: async)")
    print("  targets: per tool call <= 60 us (memory), <= 150 us (SQLite); fixed <= 80 us")
    print("single calls (median of the rounds)")
    print(f"  Run.call, sync tool            {f['run_call_sync_tool_us']:8.1f} us")
    print(
        f"  AsyncRun.call, async tool      {f['asyncrun_call_async_tool_us']:8.1f} us"
        f"   {f['async_over_sync_ratio']:.2f}x Run.call (target <= 1.3x)"
    )
    print(
        f"  AsyncRun.call, sync tool       {f['asyncrun_call_sync_tool_us']:8.1f} us"
        f"   {f['thread_over_sync_ratio']:.2f}x Run.call (a worker thread)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
