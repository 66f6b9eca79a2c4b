"""What governing an OpenAI Agents SDK agent with corral adds to each tool call.

``measure(calls)`` times, in one process and in interleaved rounds, runs of ``calls``
tool calls through ``Runner.run`` with a minimal fake ``Model`` (the least a model does:
answer each turn from a script) — the SDK alone, and the same agent governed by corral
(``govern`` + ``run_config``, a memory store, the run opened and finished inside the timed
part) — and returns the best round's time per tool call of each.

    python bench/_adapters/openai_agents.py [--calls 10] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections.abc import Callable
from typing import Any

#: What the rounds are timed with: wall time, or with ``bench/frameworks.py --cpu`` this
#: process's CPU time (all its threads), which other processes on a shared machine do not
#: inflate.
CLOCK: Callable[[], float] = time.perf_counter

QUERIES = [f"vendor status {i}" for i in range(64)]


def _setup(calls: int) -> tuple[Callable[[], None], Callable[[], None]]:
    from agents import Agent, RunConfig, Runner, function_tool, set_tracing_disabled
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.usage import Usage
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    import corral
    from corral.integrations.openai_agents import govern, run_config, tools_of

    set_tracing_disabled(True)

    class FakeModel(Model):
        def __init__(self) -> None:
            self.turn = 0

        async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
            i = self.turn
            self.turn = i + 1
            out: list[Any]
            if i < calls:
                arguments = json.dumps({"query": QUERIES[i % len(QUERIES)]})
                out = [ResponseFunctionToolCall(type="function_call", call_id=f"call-{i}",
                                                name="kb_read", arguments=arguments)]  # fmt: skip
            else:
                text = ResponseOutputText(type="output_text", text="done", annotations=[])
                out = [ResponseOutputMessage(id="msg", type="message", role="assistant",
                                             status="completed", content=[text])]  # fmt: skip
            return ModelResponse(output=out, usage=Usage(), response_id=None)

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    @function_tool(name_override="kb_read")
    def kb_read(query: str) -> str:
        return "answer for " + query

    model = FakeModel()
    agent = Agent(name="bench", model=model, tools=[kb_read])
    config = RunConfig(tracing_disabled=True)
    policy = corral.Policy.from_dict(
        {
            "tools": {"allow": ["kb_read"], "specs": {"kb_read": {"effect": "read"}}},
            "budgets": {"max_tool_calls": calls + 5, "max_steps": 2 * calls + 5},
        }
    )
    corral_tools = tools_of(agent)
    loop = asyncio.new_event_loop()

    def alone() -> None:
        model.turn = 0
        result = loop.run_until_complete(
            Runner.run(agent, "status?", max_turns=calls + 5, run_config=config)
        )
        assert result.final_output == "done" and model.turn == calls + 1

    async def governed_run() -> None:
        async with corral.AsyncRun(policy, tools=corral_tools, store="memory://") as run:
            result = await Runner.run(
                govern(agent, run), "status?", max_turns=calls + 5,
                run_config=run_config(run, config),
            )  # fmt: skip
            await run.finish(result.final_output)
        assert run.result.stop_reason == "ok" and run.result.usage.tool_calls == calls

    def governed() -> None:
        model.turn = 0
        loop.run_until_complete(governed_run())

    return alone, governed


def _timed(fn: Callable[[], None], n: int) -> float:
    gc.collect()
    gc.disable()
    try:
        start = CLOCK()
        for _ in range(n):
            fn()
        return (CLOCK() - start) / n
    finally:
        gc.enable()


def measure(calls: int = 10, *, rounds: int = 7, runs: int = 20) -> dict[str, Any]:
    """Per tool call, in microseconds: the SDK alone and governed by corral (best of
    ``rounds`` interleaved rounds of ``runs`` runs of ``calls`` tool calls each)."""
    alone, governed = _setup(calls)
    for fn in (alone, governed):  # warm-up
        fn()
        fn()
    best_alone = best_governed = float("inf")
    ratios = []
    for r in range(rounds):
        order = [(alone, "a"), (governed, "g")]
        if r % 2:
            order.reverse()
        got = {tag: _timed(fn, runs) / calls for fn, tag in order}
        best_alone = min(best_alone, got["a"])
        best_governed = min(best_governed, got["g"])
        ratios.append(got["g"] / got["a"])
    return {
        "framework": "openai-agents",
        "alone_us": round(best_alone * 1e6, 1),
        "governed_us": round(best_governed * 1e6, 1),
        "ratio": round(best_governed / best_alone, 3),
        "ratio_median_of_rounds": round(sorted(ratios)[len(ratios) // 2], 3),
        "calls_per_run": calls,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(measure(args.calls, rounds=args.rounds, runs=args.runs)))
