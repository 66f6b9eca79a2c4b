"""The framework adapters: one tool call through each framework alone and governed by corral.

For the OpenAI Agents SDK, Pydantic AI and LangChain (``create_agent``, ``invoke`` and
``ainvoke``), each measured in this process by its module under ``bench/_adapters/``: the same
agent, fake model and tool, alone and with corral's adapter on the in-memory store (every guard
on), in interleaved rounds; the best round of each, per tool call (its model turn included),
and the ratio governed / alone. Where a module also measures the framework's extension points
doing nothing (a pass-through capability, no-op middleware), that figure is shown too: what
the framework charges for any hook, before corral does anything.

    python bench/frameworks.py [--calls 10] [--rounds 7] [--only NAME] [--quick] [--cpu] [--json]

``--cpu`` times the rounds with this process's CPU time (``time.process_time``: every thread
of it) instead of the wall clock: on a machine shared with other work, the wall clock also
counts the time other processes held the cores, which makes rounds of the same case differ
by more than what is being measured; CPU time does not (nothing in these runs waits).

Target (issue "Adapters"): governed / alone <= 1.10 for each framework. A framework that is
not installed is reported as skipped (``pip install 'corral[openai-agents,pydantic-ai,
langchain]'``). ``--quick`` runs a few of each, for a smoke test (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
TARGET = 1.10

#: name -> (the module that measures it, the module it needs, measure's keyword arguments
#: besides ``calls`` and ``rounds``, full and quick)
FRAMEWORKS: dict[str, tuple[str, str, dict[str, int], dict[str, int]]] = {
    "openai-agents": ("openai_agents.py", "agents", {"runs": 20}, {"runs": 2}),
    "pydantic-ai": ("pydantic_ai.py", "pydantic_ai", {"repeat": 15}, {"repeat": 2}),
    "langchain": ("langchain.py", "langchain", {}, {}),
}


def _load(file: str) -> ModuleType:
    """A measuring module, loaded from its file under a name of its own (``langchain.py``
    must not shadow LangChain)."""
    path = HERE / "_adapters" / file
    spec = importlib.util.spec_from_file_location(f"corral_bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(name: str, figures: dict[str, Any]) -> list[tuple[str, float, float | None, float]]:
    """(case, alone µs, extension points doing nothing µs, governed µs) of one framework."""
    hooks = figures.get("passthrough_us", figures.get("hooks_us"))
    rows = [(name, figures["alone_us"], hooks, figures["governed_us"])]
    if "async_alone_us" in figures:
        rows[0] = (f"{name} (invoke)", *rows[0][1:])
        rows.append((f"{name} (ainvoke)", figures["async_alone_us"],
                     figures.get("async_hooks_us"), figures["async_governed_us"]))  # fmt: skip
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10, help="tool calls per agent run")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--only", choices=sorted(FRAMEWORKS), help="one framework")
    parser.add_argument("--quick", action="store_true", help="a few of each (a smoke test)")
    parser.add_argument("--cpu", action="store_true", help="time with CPU time, not wall time")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    opts = parser.parse_args()
    if opts.quick:
        opts.calls, opts.rounds = 2, 1
    clock = "cpu" if opts.cpu else "wall"
    out: dict[str, Any] = {"target": TARGET, "clock": clock, "frameworks": {}, "skipped": {}}
    for name, (file, needs, full, quick) in FRAMEWORKS.items():
        if opts.only and name != opts.only:
            continue
        if importlib.util.find_spec(needs) is None:
            out["skipped"][name] = f"{needs} is not installed"
            continue
        module = _load(file)
        if opts.cpu:
            module.CLOCK = time.process_time
        measure: Callable[..., dict[str, Any]] = module.measure
        extra = quick if opts.quick else full
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        out["frameworks"][name] = measure(opts.calls, rounds=opts.rounds, **extra)
    if opts.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{'case':28} {'alone':>10} {'hooks':>10} {'governed':>10} {'ratio':>7}  target")
    for name, figures in out["frameworks"].items():
        for case, alone, hooks, governed in _rows(name, figures):
            ratio = governed / alone
            met = "met" if ratio <= TARGET else f"missed (<= {TARGET:.2f})"
            shown = f"{hooks:8.1f}us" if hooks is not None else f"{'-':>10}"
            print(f"{case:28} {alone:8.1f}us {shown} {governed:8.1f}us {ratio:7.3f}  {met}")
    for name, why in out["skipped"].items():
        print(f"{name}: skipped ({why})")
    print(
        f"per tool call ({clock} time), its model turn included; hooks: the framework's "
        "extension points doing nothing (corral not involved)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
