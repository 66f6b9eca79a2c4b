"""What corral adds to a Pydantic AI agent, per tool call.

One tool call through Pydantic AI alone and through Pydantic AI governed by corral's
``Corral`` capability (memory store), in the same process and interleaved rounds: a run of
``calls`` tool calls (one per model turn, ``FunctionModel``) minus a run of none, divided by
``calls``; the best round of each. ``measure(calls)`` returns
``{"framework", "alone_us", "governed_us", "ratio", "passthrough_us"}`` (``ratio``:
governed / alone; ``passthrough_us``: a capability with the same hooks doing nothing, what
the framework's extension points cost by themselves).

    python bench/_adapters/pydantic_ai.py [--calls 10] [--rounds 7]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: What the rounds are timed with: wall time, or with ``bench/frameworks.py --cpu`` this
#: process's CPU time (all its threads), which other processes on a shared machine do not
#: inflate.
CLOCK: Callable[[], float] = time.perf_counter

if __name__ == "__main__":  # this file's folder would shadow the framework's package
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


def _passthrough() -> Any:
    """A capability with the hooks ``Corral`` uses, doing nothing: what the framework's
    extension points cost by themselves."""
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.models.wrapper import WrapperModel

    class Passthrough(AbstractCapability[Any]):
        id = "passthrough"

        async def for_run(self, ctx: Any) -> Any:
            return Passthrough()

        async def wrap_run(self, ctx: Any, *, handler: Any) -> Any:
            return await handler()

        async def prepare_tools(self, ctx: Any, tool_defs: Any) -> Any:
            return tool_defs

        async def before_tool_execute(
            self, ctx: Any, *, call: Any, tool_def: Any, args: Any
        ) -> Any:
            return args

        async def wrap_tool_execute(
            self, ctx: Any, *, call: Any, tool_def: Any, args: Any, handler: Any
        ) -> Any:
            return await handler(args)

        async def after_tool_execute(
            self, ctx: Any, *, call: Any, tool_def: Any, args: Any, result: Any
        ) -> Any:
            return result

        def get_wrapper_model(self, model: Any) -> Any:
            return WrapperModel(model)

    return Passthrough()


def _runner(kind: str, loop: asyncio.AbstractEventLoop) -> Callable[[int], float]:
    """A function timing one agent run of ``k`` tool calls (seconds): the framework
    ``alone``, with a ``passthrough`` capability, or ``governed`` by corral."""
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    import corral
    from corral.integrations.pydantic_ai import Corral

    script = {"turn": 0, "calls": 0}

    def model_turn(messages: list[Any], info: AgentInfo) -> ModelResponse:
        i = script["turn"]
        script["turn"] = i + 1
        if i < script["calls"]:  # a new query each call: nothing served from corral's cache
            return ModelResponse(parts=[ToolCallPart("kb_read", {"query": f"q{i}"})])
        return ModelResponse(parts=[TextPart("done")])

    capabilities: list[Any] = []
    if kind == "passthrough":
        capabilities.append(_passthrough())
    if kind == "governed":
        policy = corral.Policy.from_dict(
            {
                "tools": {"allow": ["kb_read"], "specs": {"kb_read": {"effect": "read"}}},
                "budgets": {"max_tool_calls": 1000, "max_steps": 1000},
            }
        )
        capabilities.append(Corral(policy, store="memory://"))
    agent = Agent(FunctionModel(model_turn, model_name="bench"), capabilities=capabilities)

    @agent.tool_plain
    def kb_read(query: str) -> str:
        """Read the knowledge base."""
        return "answer for " + query

    def one_run(k: int) -> float:
        script["turn"], script["calls"] = 0, k
        started = CLOCK()
        result = loop.run_until_complete(agent.run("status?"))
        elapsed = CLOCK() - started
        if result.output != "done" or script["turn"] != k + 1:
            raise RuntimeError(f"the run ended with {result.output!r}")
        return elapsed

    one_run(2)  # warm up
    return one_run


def _per_call(one_run: Callable[[int], float], calls: int, repeat: int) -> float:
    """Microseconds per tool call: the median run of ``calls`` calls minus the median run
    of none, over ``calls``."""
    many = sorted(one_run(calls) for _ in range(repeat))[repeat // 2]
    none = sorted(one_run(0) for _ in range(repeat))[repeat // 2]
    return (many - none) / calls * 1e6


def measure(calls: int = 10, rounds: int = 7, repeat: int = 15) -> dict[str, Any]:
    """Per tool call, Pydantic AI alone and governed by corral (best of interleaved rounds)."""
    loop = asyncio.new_event_loop()
    try:
        runners = {kind: _runner(kind, loop) for kind in ("alone", "passthrough", "governed")}
        best = dict.fromkeys(runners, float("inf"))
        for r in range(rounds):
            order = list(runners.items())
            order = order[r % 3 :] + order[: r % 3]  # each first in turn
            for name, one_run in order:
                best[name] = min(best[name], _per_call(one_run, calls, repeat))
    finally:
        loop.close()
    return {
        "framework": "pydantic_ai",
        "alone_us": round(best["alone"], 1),
        "governed_us": round(best["governed"], 1),
        "ratio": round(best["governed"] / best["alone"], 3),
        # The same hooks doing nothing: the framework's own price for the extension points.
        "passthrough_us": round(best["passthrough"], 1),
    }


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    print(json.dumps(measure(options.calls, options.rounds)))
