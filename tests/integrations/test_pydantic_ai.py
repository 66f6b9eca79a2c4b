"""The Pydantic AI adapter (``corral.integrations.pydantic_ai``): a real ``pydantic_ai.Agent``
driven by the framework's own ``FunctionModel`` / ``TestModel``, governed by ``Corral``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.usage import RequestUsage

import corral
from corral.integrations.pydantic_ai import Corral, CorralModel, CorralToolset, RunStopped

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = SRC.parent


def corral_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m corral ARGS`` in another process, on this checkout's sources."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("CORRAL_DB", None)
    done = subprocess.run(
        [sys.executable, "-m", "corral", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"corral {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}")
    return done


def run(agent: Agent[Any, Any], prompt: str) -> Any:
    """``agent.run`` on a new event loop (``run_sync`` keeps a loop of its own open, which
    a later ``asyncio.run`` would leave to the garbage collector)."""
    return asyncio.run(agent.run(prompt))


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'corral.db'}"


def last_part(messages: list[ModelMessage]) -> Any:
    return messages[-1].parts[-1]


def tool_returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    return [
        part
        for message in messages
        if isinstance(message, ModelRequest)
        for part in message.parts
        if isinstance(part, ToolReturnPart)
    ]


def calls_then_answer(*calls: tuple[str, dict[str, Any]]) -> Any:
    """A FunctionModel function: the given tool calls, one per turn, then the last tool's
    answer as text."""
    script = list(calls)

    def reply(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(isinstance(m, ModelResponse) for m in messages)
        if turn < len(script):
            name, args = script[turn]
            return ModelResponse(parts=[ToolCallPart(name, args)])
        part = last_part(messages)
        return ModelResponse(parts=[TextPart(f"done: {getattr(part, 'content', part)}")])

    return reply


# -- 1. default deny ------------------------------------------------------------------------


def test_a_tool_outside_the_policy_is_neither_offered_nor_executed() -> None:
    """The model is offered only the allowed tool; a call to the other never runs."""
    ran: list[str] = []
    offered: list[list[str]] = []

    def weather(city: str) -> str:
        """The weather in a city."""
        ran.append("weather")
        return f"{city}: sunny"

    def browse(url: str) -> str:
        """Open a web page."""
        ran.append("browse")
        return "page"

    def reply(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        offered.append(sorted(t.name for t in info.function_tools))
        if len(offered) == 1:
            return ModelResponse(
                parts=[ToolCallPart("browse", {"url": "https://evil.test"}),
                       ToolCallPart("weather", {"city": "Paris"})]
            )
        return ModelResponse(parts=[TextPart("ok")])

    policy = corral.Policy.from_dict(
        {"tools": {"allow": ["weather"], "specs": {"weather": {"effect": "read"}}}}
    )
    governed = Corral(policy, store="memory://")
    agent = Agent(FunctionModel(reply, model_name="m"), tools=[weather, browse],
                  capabilities=[governed])
    result = run(agent, "weather in Paris?")
    assert offered == [["weather"], ["weather"]]
    assert ran == ["weather"]
    assert governed.result(result).stop_reason == "ok"  # type: ignore[union-attr]


# -- 2. the tool-call budget ---------------------------------------------------------------


def test_the_sixteenth_call_under_max_tool_calls_15_stops_the_run() -> None:
    """Fifteen calls run; the sixteenth is refused and the run ends with ``max_tool_calls``."""
    ran: list[int] = []

    def lookup(n: int) -> str:
        """Look a number up."""
        ran.append(n)
        return f"#{n}"

    policy = corral.Policy.from_dict(
        {"tools": {"allow": ["lookup"], "specs": {"lookup": {"effect": "read"}}},
         "budgets": {"max_tool_calls": 15}}
    )
    governed = Corral(policy, store="memory://")
    script = [("lookup", {"n": n}) for n in range(1, 21)]
    agent = Agent(FunctionModel(calls_then_answer(*script), model_name="m"), tools=[lookup],
                  capabilities=[governed])
    with pytest.raises(RunStopped) as stopped:
        run(agent, "look up twenty numbers")
    assert ran == list(range(1, 16))
    error = stopped.value
    assert error.reason == "max_tool_calls" and error.stop.reason == "max_tool_calls"
    assert isinstance(error, corral.Stop) and not error.retryable
    assert error.result is not None and error.result.stop_reason == "max_tool_calls"
    assert error.result.usage.tool_calls == 15


# -- 3. approvals ----------------------------------------------------------------------------


def approval_policy(**writes: Any) -> corral.Policy:
    return corral.Policy.from_dict(
        {"tools": {"allow": ["refund"], "specs": {"refund": {"effect": "write"}}},
         "writes": {"require_approval": True, **writes}}
    )


def refund_agent(governed: Corral, executions: list[int]) -> Agent[None, str]:
    def refund(order: int, amount: int) -> str:
        """Refund an order."""
        executions.append(order)
        return f"refunded {amount} on order {order}"

    model = FunctionModel(calls_then_answer(("refund", {"order": 1234, "amount": 5})),
                          model_name="m")
    return Agent(model, tools=[refund], capabilities=[governed])


async def pending_approval(url: str) -> dict[str, Any]:
    """The one pending approval of the store, read by ``corral approvals list`` in another
    process, once the run has filed it."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = await asyncio.to_thread(corral_cli, "approvals", "list", "--json", "--db", url)
        rows = json.loads(listed.stdout)["approvals"]
        if rows:
            assert len(rows) == 1
            return rows[0]  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError("no approval was filed")


def test_a_write_waits_for_an_approval_from_another_process_and_runs_once(
    tmp_path: Path,
) -> None:
    """The write waits; ``corral approvals approve`` in another process lets it run, once."""
    url = sqlite_url(tmp_path)
    corral_cli("init", "--db", url)
    executions: list[int] = []
    governed = Corral(approval_policy(), store=url, tenant="acme", agent="support-bot")
    agent = refund_agent(governed, executions)

    async def scenario() -> Any:
        task = asyncio.ensure_future(agent.run("refund order 1234"))
        row = await pending_approval(url)
        assert row["tool"] == "refund" and row["arguments"] == {"order": 1234, "amount": 5}
        assert executions == []  # nothing ran before the decision
        await asyncio.to_thread(
            corral_cli, "approvals", "approve", row["id"], "--as", "alice", "--db", url
        )
        return await asyncio.wait_for(task, 20)

    result = asyncio.run(scenario())
    assert executions == [1234]
    assert result.output == "done: refunded 5 on order 1234"
    ended = governed.result(result)
    assert ended is not None and ended.stop_reason == "ok"
    assert ended.usage.tool_calls == 1


def test_a_denied_write_reaches_the_model_as_the_frameworks_denial(tmp_path: Path) -> None:
    """Denied from another process under ``on_denied: tell_model``: never run, and the model
    gets Pydantic AI's own denied tool result."""
    url = sqlite_url(tmp_path)
    corral_cli("init", "--db", url)
    executions: list[int] = []
    governed = Corral(approval_policy(on_denied="tell_model"), store=url, agent="support-bot")
    agent = refund_agent(governed, executions)

    async def scenario() -> Any:
        task = asyncio.ensure_future(agent.run("refund order 1234"))
        row = await pending_approval(url)
        await asyncio.to_thread(
            corral_cli, "approvals", "deny", row["id"], "--reason", "wrong customer", "--db", url
        )
        return await asyncio.wait_for(task, 20)

    result = asyncio.run(scenario())
    assert executions == []
    (denied,) = tool_returns(result.all_messages())
    assert denied.outcome == "denied" and "approval_denied" in str(denied.content)


def test_the_in_process_approver_decides_and_the_write_runs_once() -> None:
    """With a trusted local approver the write runs once after it says yes."""
    executions: list[int] = []
    asked: list[str] = []

    def approver(request: corral.ApprovalRequest) -> bool:
        asked.append(request.tool)
        return True

    governed = Corral(approval_policy(), store="memory://", approver=approver)
    result = run(refund_agent(governed, executions), "refund order 1234")
    assert asked == ["refund"] and executions == [1234]
    assert result.output == "done: refunded 5 on order 1234"
