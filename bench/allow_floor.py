"""The floor of the allow path: what the operations a governed read cannot skip cost on this
machine, done in a row with none of corral's structure, against ``Run.call`` in the same run.

A governed read must, whatever the implementation: read the kill switches, validate the
arguments against the tool's schema (pydantic), write them as canonical JSON, look for a
loop, read the breaker, hash the arguments (SHA-256, for the audit), hold a tool call
against the budget, bound the tool by a deadline (a timer signal armed and disarmed around
the inline call), settle, check the output and record an event in the store. This script does
exactly those operations inline on plain Python objects (a dict for the switches and
breakers, a list for the store), with the same C primitives corral uses, and nothing else:
no refusals, no observe mode, no scrubbing, no threads' watch, no failure handling. It is not
a governed call — it checks nothing for real — only the measure of how far corral's own
structure is from what CPython charges for the work itself.

    python bench/allow_floor.py [--n 30000] [--rounds 3] [--json]

Prints, per round, ``Run.call`` (memory store, read tool, cache off), the floor and a bare
call, each the best of three timed loops, and the ratio ``Run.call / floor``.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import argparse
import contextvars
import hashlib
import json
import statistics
import sys
import threading
import time
import timeit
from typing import Any

import corral
from corral.stores.records import Event
from corral.testing import MemoryStore


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30_000, help="calls per timed loop")
    parser.add_argument("--rounds", type=int, default=3)
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
    run = corral.Run(policy, tools=[kb_read], store=MemoryStore())
    floor = _floor(kb_read)
    queries = [{"query": f"vendor status {i}"} for i in range(8)]
    turn = iter(range(10**12))

    def best(fn: Any) -> float:
        loops = timeit.repeat(lambda: fn(queries[next(turn) % 8]), number=opts.n, repeat=3)
        return float(min(loops) / opts.n * 1e6)

    rounds = []
    for _ in range(opts.rounds):
        governed = best(lambda args: run.call("kb.read", args))
        lean = best(floor)
        bare = best(lambda args: kb_read.fn(**args))
        rounds.append({"run_call_us": governed, "floor_us": lean, "bare_us": bare})
        if not opts.json:
            print(
                f"Run.call {governed:6.2f} us   floor {lean:5.2f} us   bare {bare:4.2f} us   "
                f"Run.call / floor {governed / lean:4.2f}",
                flush=True,
            )
    summary = {key: round(statistics.median(r[key] for r in rounds), 2) for key in rounds[0]}
    summary["ratio"] = round(summary["run_call_us"] / summary["floor_us"], 2)
    if opts.json:
        print(json.dumps({"rounds": rounds, "median": summary}))
    else:
        print(f"median: Run.call / floor {summary['ratio']}")
    return 0


def _floor(tool: corral.Tool) -> Any:
    """The operations of one governed read, in a row (see the module docstring)."""
    validate = tool._args_model.__pydantic_validator__.validate_python  # type: ignore[union-attr]
    make_encoder = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    quote = json.encoder.encode_basestring
    store_lock, meter_lock, log_lock = threading.RLock(), threading.Lock(), threading.Lock()
    switches: dict[str, Any] = {}
    breakers: dict[str, Any] = {}
    events: list[Event] = []
    recent: list[tuple[str, str]] = []
    budget = {"held": 0, "used": 0}
    seq = [0]
    deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar("d", default=None)
    deadline = time.monotonic() + 10**6
    fn = tool.fn

    def call(raw: dict[str, Any]) -> str:
        token = deadline_var.set(deadline)
        if time.monotonic() > deadline:  # the run's time
            raise TimeoutError
        with store_lock:  # the kill switches
            if switches:
                raise RuntimeError
        args = dict(validate(raw).__dict__)  # the schema
        text = "".join(make_encoder({}, str, quote, None, ":", ",", True, False, True)(args, 0))
        key = ("kb.read", text)  # loop detection
        recent.append(key)
        if len(recent) > 5:
            del recent[0]
        recent.count(key)
        with store_lock:  # the breaker
            breakers.get("kb.read")
        digest = hashlib.sha256(text.encode()).hexdigest()
        with meter_lock:  # reserve
            budget["held"] += 1
        started = time.monotonic()
        _signal.setitimer(_signal.ITIMER_REAL, 30.0)
        try:
            out = fn(**args)
        finally:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
        elapsed = time.monotonic() - started
        with meter_lock:  # settle
            budget["held"] -= 1
            budget["used"] += 1
        if type(out) is not str or len(out) > 4000 or "\0" in out:  # the output
            raise ValueError
        data = {"tool": "kb.read", "outcome": "ok", "attempt": 1, "args_digest": digest,
                "usd": "0", "seconds": round(elapsed, 6)}  # fmt: skip
        with log_lock:
            seq[0] += 1
            event = Event(run_id="r", seq=seq[0], kind="tool_call", at=time.time(), data=data)
        with store_lock:  # the store
            events.append(event)
            if len(events) > 100_000:
                events.clear()
        deadline_var.reset(token)
        return out

    return call


if __name__ == "__main__":
    sys.exit(main())
