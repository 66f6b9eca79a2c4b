"""LangChain's ``create_agent`` alone and governed by corral's ``CorralMiddleware``: the
time of one tool call (with the model turn that asked for it), in the same process.

An agent run makes ``calls`` tool calls, one per model turn, then answers; per tool call =
the run's time / ``calls``. The same fake chat model and tool serve both agents; the
governed one has corral's middleware on the in-memory store (every guard on: allowlist,
argument validation, budgets, kill switch, audit trail in memory). Rounds alternate the two
agents (and the sync and async paths); each figure is the best over the rounds, and the
ratio is taken from those.

    python bench/_adapters/langchain.py [--calls 20] [--rounds 7] [--json]

Target: governed / alone <= 1.10 (corral adds at most 10 % to the framework's own cost).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import corral

#: What the rounds are timed with: wall time, or with ``bench/frameworks.py --cpu`` this
#: process's CPU time (all its threads), which other processes on a shared machine do not
#: inflate.
CLOCK: Callable[[], float] = time.perf_counter

FRAMEWORK = "langchain"
_HERE = os.path.dirname(os.path.abspath(__file__))


def _agents(calls: int) -> tuple[Any, Any, Any]:
    """The agent alone, with a middleware that does nothing at the hooks corral's uses
    (what any middleware costs in LangChain), and governed; one fake model, one tool."""
    # Run as a script, this file's folder comes first on sys.path, where this file would
    # stand for the framework it is named after.
    while _HERE in sys.path:
        sys.path.remove(_HERE)
    from langchain.agents import create_agent
    from langchain.agents.middleware import AgentMiddleware
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
    from langchain_core.outputs import ChatGeneration, ChatResult
    from langchain_core.tools import tool

    from corral.integrations.langchain import CorralMiddleware

    class Chat(BaseChatModel):
        """One tool call per turn (a new city each time) until ``calls`` were made."""

        @property
        def _llm_type(self) -> str:
            return "bench-chat"

        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

        def _generate(
            self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
        ) -> ChatResult:
            seen = sum(isinstance(m, ToolMessage) for m in messages)
            if seen < calls:
                message = AIMessage(
                    content="",
                    tool_calls=[{"name": "lookup", "args": {"city": f"c{seen}"}, "id": f"t{seen}"}],
                    usage_metadata={"input_tokens": 20, "output_tokens": 5, "total_tokens": 25},
                )
            else:
                message = AIMessage(content="done")
            return ChatResult(generations=[ChatGeneration(message=message)])

    class Nothing(AgentMiddleware):  # type: ignore[type-arg]
        """corral's hooks, doing nothing."""

        def before_agent(self, state: Any, runtime: Any) -> None:
            return None

        async def abefore_agent(self, state: Any, runtime: Any) -> None:
            return None

        def after_agent(self, state: Any, runtime: Any) -> None:
            return None

        async def aafter_agent(self, state: Any, runtime: Any) -> None:
            return None

        def wrap_model_call(self, request: Any, handler: Any) -> Any:
            return handler(request)

        async def awrap_model_call(self, request: Any, handler: Any) -> Any:
            return await handler(request)

        def wrap_tool_call(self, request: Any, handler: Any) -> Any:
            return handler(request)

        async def awrap_tool_call(self, request: Any, handler: Any) -> Any:
            return await handler(request)

    @tool
    def lookup(city: str) -> str:
        """Look a city up."""
        return f"{city}: sunny"

    policy = corral.Policy.from_dict(
        {
            "tools": {"allow": ["lookup"], "specs": {"lookup": {"effect": "read"}}},
            "budgets": {"max_tool_calls": 10**6, "max_steps": 10**6, "max_seconds": 10**5},
            "models": {"prices": {"bench-chat": {"input_usd_per_mtok": 1,
                                                  "output_usd_per_mtok": 2}}},
        }
    )  # fmt: skip
    model = Chat()
    alone = create_agent(model, tools=[lookup])
    hooks = create_agent(model, tools=[lookup], middleware=[Nothing()])
    governed = create_agent(
        model, tools=[lookup], middleware=[CorralMiddleware(policy, store="memory://")]
    )
    return alone, hooks, governed


def _config(calls: int) -> dict[str, Any]:
    return {"recursion_limit": 10 * calls + 50}


def _ask() -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "weather?"}]}


def _check(agent: Any, calls: int, governed: bool) -> None:
    """Both agents make every call and end well (the governed one: its run ``ok``)."""
    result = agent.invoke(_ask(), _config(calls))
    tools = [m for m in result["messages"] if type(m).__name__ == "ToolMessage"]
    assert len(tools) == calls and all(m.status == "success" for m in tools), tools[-1:]
    if governed:
        assert result.get("corral_stop") is None and result.get("corral_run_id")


def _time_sync(agent: Any, calls: int) -> float:
    gc.collect()
    gc.disable()
    try:
        started = CLOCK()
        agent.invoke(_ask(), _config(calls))
        return CLOCK() - started
    finally:
        gc.enable()


def _time_async(agent: Any, calls: int, loop: asyncio.AbstractEventLoop) -> float:
    gc.collect()
    gc.disable()
    try:
        started = CLOCK()
        loop.run_until_complete(agent.ainvoke(_ask(), _config(calls)))
        return CLOCK() - started
    finally:
        gc.enable()


def measure(calls: int, rounds: int = 7) -> dict[str, Any]:
    """Per tool call (µs): the framework alone, with no-op hooks, governed by corral, and
    the ratios; sync (``invoke``: the keys without a prefix) and async (``ainvoke``,
    ``async_``). Best of ``rounds`` interleaved rounds."""
    alone, hooks, governed = _agents(calls)
    _check(alone, calls, False)
    _check(hooks, calls, False)
    _check(governed, calls, True)
    loop = asyncio.new_event_loop()
    try:
        best: dict[str, float] = {}
        agents = {"alone": alone, "hooks": hooks, "governed": governed}
        cases: dict[str, Callable[[], float]] = {}
        for name, agent in agents.items():
            cases[f"sync.{name}"] = functools.partial(_time_sync, agent, calls)
            cases[f"async.{name}"] = functools.partial(_time_async, agent, calls, loop)
        for case in cases.values():  # warm-up
            case()
        names = list(cases)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                seconds = cases[name]()
                best[name] = min(best.get(name, seconds), seconds)
    finally:
        loop.close()
    per = {name: best[name] / calls * 1e6 for name in best}
    figures: dict[str, Any] = {"framework": FRAMEWORK}
    for path in ("sync", "async"):
        prefix = "" if path == "sync" else "async_"
        alone_us, hooks_us, governed_us = (per[f"{path}.{n}"] for n in agents)
        figures[prefix + "alone_us"] = round(alone_us, 1)
        figures[prefix + "governed_us"] = round(governed_us, 1)
        figures[prefix + "ratio"] = round(governed_us / alone_us, 3)
        # The same hooks doing nothing: what LangChain's middleware machinery costs, and
        # what corral's own work adds on top of it.
        figures[prefix + "hooks_us"] = round(hooks_us, 1)
        figures[prefix + "corral_ratio"] = round(governed_us / hooks_us, 3)
    figures.update(calls=calls, rounds=rounds)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = measure(args.calls, args.rounds)
    if args.json:
        print(json.dumps(figures))
        return
    for path in ("sync", "async"):
        prefix = "" if path == "sync" else "async_"
        print(
            f"{FRAMEWORK} {path:5}: alone {figures[prefix + 'alone_us']:7.1f} us/call, "
            f"no-op hooks {figures[prefix + 'hooks_us']:7.1f}, "
            f"governed {figures[prefix + 'governed_us']:7.1f}; "
            f"governed/alone {figures[prefix + 'ratio']:.3f} (target <= 1.10), "
            f"governed/no-op hooks {figures[prefix + 'corral_ratio']:.3f}"
        )


if __name__ == "__main__":
    sys.exit(main())
