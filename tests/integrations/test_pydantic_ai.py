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
        raise AssertionError(
            f"corral {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}"
        )
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
                parts=[
                    ToolCallPart("browse", {"url": "https://evil.test"}),
                    ToolCallPart("weather", {"city": "Paris"}),
                ]
            )
        return ModelResponse(parts=[TextPart("ok")])

    policy = corral.Policy.from_dict(
        {"tools": {"allow": ["weather"], "specs": {"weather": {"effect": "read"}}}}
    )
    governed = Corral(policy, store="memory://")
    agent = Agent(
        FunctionModel(reply, model_name="m"), tools=[weather, browse], capabilities=[governed]
    )
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
        {
            "tools": {"allow": ["lookup"], "specs": {"lookup": {"effect": "read"}}},
            "budgets": {"max_tool_calls": 15},
        }
    )
    governed = Corral(policy, store="memory://")
    script = [("lookup", {"n": n}) for n in range(1, 21)]
    agent = Agent(
        FunctionModel(calls_then_answer(*script), model_name="m"),
        tools=[lookup],
        capabilities=[governed],
    )
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
        {
            "tools": {"allow": ["refund"], "specs": {"refund": {"effect": "write"}}},
            "writes": {"require_approval": True, **writes},
        }
    )


def refund_agent(governed: Corral, executions: list[int]) -> Agent[None, str]:
    def refund(order: int, amount: int) -> str:
        """Refund an order."""
        executions.append(order)
        return f"refunded {amount} on order {order}"

    model = FunctionModel(
        calls_then_answer(("refund", {"order": 1234, "amount": 5})), model_name="m"
    )
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


# -- 4. a USD cap shared by concurrent runs ------------------------------------------------------

PRICED = {"acme-1": {"input_usd_per_mtok": 10, "output_usd_per_mtok": 10}}


def priced_answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A priced model's answer, with the usage a provider would report (a tokenizer makes
    fewer tokens than the prompt has bytes)."""
    return ModelResponse(
        parts=[TextPart("the vendor is up")],
        usage=RequestUsage(input_tokens=10, output_tokens=20),
    )


def test_concurrent_runs_never_overshoot_a_shared_tenant_usd_cap(tmp_path: Path) -> None:
    """32 runs at once against one tenant's $0.005 a day (SQLite): the spend stays within it,
    and the runs that could not afford their model call stop with ``max_usd:tenant/1d``."""
    url = sqlite_url(tmp_path)
    policy = corral.Policy.from_dict(
        {
            "limits": [{"per": "tenant", "window": "1d", "max_usd": 0.005}],
            "models": {"prices": PRICED},
        }
    )
    governed = Corral(policy, store=url, tenant="acme")
    agent = Agent(
        FunctionModel(priced_answer, model_name="acme-1"),
        capabilities=[governed],
        model_settings={"max_tokens": 100},
    )

    async def one() -> Any:
        try:
            result = await agent.run("is the vendor up?")
        except RunStopped as stopped:
            return stopped.result
        return governed.result(result)

    async def everyone() -> list[Any]:
        return await asyncio.gather(*(one() for _ in range(32)))

    results = asyncio.run(everyone())
    spent = sum(r.usage.usd for r in results)
    assert spent <= Decimal("0.005")
    assert all(r.usage.overrun_usd == 0 for r in results)
    ok = [r for r in results if r.stop_reason == "ok"]
    stopped = [r for r in results if r.stop_reason != "ok"]
    assert ok and stopped
    assert all(r.usage.usd == Decimal("0.0003") for r in ok)  # settled at the reported usage
    assert {str(r.stop) for r in stopped} == {str(stopped[0].stop)}
    assert stopped[0].stop.reason == "max_usd" and stopped[0].stop.detail == "tenant/1d"


def test_an_unpriced_model_is_refused_under_a_usd_limit() -> None:
    """A model corral cannot price is refused before it is called, not priced at nothing."""
    requests: list[int] = []

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        requests.append(1)
        return ModelResponse(parts=[TextPart("hi")])

    governed = Corral(corral.Policy.from_dict({"budgets": {"max_usd": 1}}), store="memory://")
    agent = Agent(FunctionModel(answer, model_name="nobody-prices-me"), capabilities=[governed])
    with pytest.raises(RunStopped) as stopped:
        run(agent, "hello")
    assert requests == []
    assert stopped.value.reason == "max_usd" and stopped.value.why == "unpriced_model"


def test_max_tokens_is_clamped_to_what_the_budget_leaves() -> None:
    """The request carries the ``max_tokens`` the USD budget can pay for, not the one asked."""
    sent: list[int] = []

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        sent.append(info.model_settings["max_tokens"])  # type: ignore[index]
        return ModelResponse(
            parts=[TextPart("ok")], usage=RequestUsage(input_tokens=50, output_tokens=5)
        )

    policy = corral.Policy.from_dict({"budgets": {"max_usd": 0.01}, "models": {"prices": PRICED}})
    governed = Corral(policy, store="memory://")
    agent = Agent(
        FunctionModel(answer, model_name="acme-1"),
        capabilities=[governed],
        model_settings={"max_tokens": 4000},
    )
    result = run(agent, "hello")
    assert result.output == "ok"
    assert 16 <= sent[0] < 1000  # $0.01 at $10/Mtok is 1,000 tokens, the input bound included
    ended = governed.result(result)
    assert ended is not None and ended.usage.input_tokens == 50 and ended.usage.steps == 1


# -- 5. the kill switch ----------------------------------------------------------------------------


def test_a_stop_all_kill_switch_from_another_process_stops_a_running_tool_within_a_second(
    tmp_path: Path,
) -> None:
    """``corral kill enable --mode stop_all`` while a tool runs: the run ends ``kill_switch``
    within a second of the command."""
    url = sqlite_url(tmp_path)
    corral_cli("init", "--db", url)
    started = asyncio.Event()
    finished: list[str] = []

    async def crawl(site: str) -> str:
        """Crawl a whole site (slow)."""
        started.set()
        await asyncio.sleep(30)
        finished.append(site)
        return "crawled"

    policy = corral.Policy.from_dict(
        {
            "tools": {"allow": ["crawl"], "specs": {"crawl": {"effect": "read"}}},
            "budgets": {"max_seconds": 60},
        }
    )
    governed = Corral(policy, store=url, agent="crawler")
    model = FunctionModel(calls_then_answer(("crawl", {"site": "example.com"})), model_name="m")
    agent = Agent(model, tools=[crawl], capabilities=[governed])

    async def scenario() -> tuple[RunStopped, float]:
        task = asyncio.ensure_future(agent.run("crawl example.com"))
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.to_thread(corral_cli, "kill", "enable", "--mode", "stop_all", "--db", url)
        killed_at = time.monotonic()
        with pytest.raises(RunStopped) as stopped:
            await asyncio.wait_for(task, 10)
        return stopped.value, time.monotonic() - killed_at

    stopped, seconds = asyncio.run(scenario())
    assert seconds < 1.0
    assert finished == []
    assert stopped.reason == "kill_switch"
    assert stopped.result is not None and stopped.result.stop_reason == "kill_switch"


# -- 6. the run in the CLI and the audit chain ---------------------------------------------------


def test_the_run_is_listed_shown_and_audited_by_the_cli(tmp_path: Path) -> None:
    """``corral runs`` and ``corral show`` (another process) see the stopped run and its
    reason; ``corral audit verify`` finds its events chained intact."""
    url = sqlite_url(tmp_path)
    policy = corral.Policy.from_dict(
        {
            "tools": {"allow": ["lookup"], "specs": {"lookup": {"effect": "read"}}},
            "budgets": {"max_tool_calls": 2},
        }
    )

    def lookup(n: int) -> str:
        """Look a number up."""
        return f"#{n}"

    governed = Corral(policy, store=url, tenant="acme", agent="lookup-bot")
    script = [("lookup", {"n": n}) for n in range(5)]
    agent = Agent(
        FunctionModel(calls_then_answer(*script), model_name="m"),
        tools=[lookup],
        capabilities=[governed],
    )
    with pytest.raises(RunStopped) as stopped:
        run(agent, "look up five numbers")
    run_id = stopped.value.run_id
    assert run_id is not None

    listed = json.loads(corral_cli("runs", "--json", "--db", url).stdout)
    (row,) = [r for r in listed["runs"] if r["run_id"] == run_id]
    assert row["stop_reason"] == "max_tool_calls"
    shown = json.loads(corral_cli("show", run_id, "--json", "--db", url).stdout)
    assert shown["run"]["stop_reason"] == "max_tool_calls"
    kinds = [event["kind"] for event in shown["timeline"]]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert kinds.count("tool_call") == 2 and "model_call" in kinds
    verified = corral_cli("audit", "verify", "--db", url)
    assert verified.returncode == 0


# -- without the capability: a toolset and a model around a run you own ----------------------


def test_corral_toolset_and_model_govern_an_agent_around_a_run_you_own() -> None:
    """``CorralToolset`` offers and runs only what the policy allows, ``CorralModel``
    reserves and settles each request, and a stop is recorded by ``async with run``."""
    from pydantic_ai.toolsets import FunctionToolset

    ran: list[int] = []

    def lookup(n: int) -> str:
        """Look a number up."""
        ran.append(n)
        return f"<p>#{n}</p>"

    def secret() -> str:
        """Not allowed."""
        ran.append(-1)
        return "x"

    policy = corral.Policy.from_dict(
        {
            "tools": {"allow": ["lookup"], "specs": {"lookup": {"effect": "read"}}},
            "budgets": {"max_tool_calls": 2, "max_usd": 1},
            "models": {"prices": PRICED},
        }
    )
    script = [("lookup", {"n": n}) for n in range(5)]

    def reply(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        assert [t.name for t in info.function_tools] == ["lookup"]
        response = calls_then_answer(*script)(messages, info)
        response.usage = RequestUsage(input_tokens=100, output_tokens=10)
        return response

    async def scenario() -> corral.AsyncRun:
        async with corral.AsyncRun(policy, store="memory://") as governed:
            toolset = CorralToolset(FunctionToolset([lookup, secret]), governed)
            agent = Agent(
                CorralModel(FunctionModel(reply, model_name="acme-1"), governed), toolsets=[toolset]
            )
            result = await agent.run("look up five numbers")
            raise AssertionError(f"not stopped: {result.output}")
        return governed

    governed = asyncio.run(scenario())
    assert ran == [0, 1]
    assert governed.result.stop_reason == "max_tool_calls"
    assert governed.result.usage.steps == 3 and governed.result.usage.input_tokens == 300


def test_a_streamed_run_is_reserved_and_settled_from_the_streams_usage() -> None:
    """``agent.run_stream`` through ``Corral``: the streamed request is charged its usage."""

    policy = corral.Policy.from_dict(
        {
            "budgets": {"max_usd": 1},
            "models": {"prices": {"test": {"input_usd_per_mtok": 10, "output_usd_per_mtok": 10}}},
        }
    )
    governed = Corral(policy, store="memory://")
    agent = Agent(TestModel(custom_output_text="streamed answer"), capabilities=[governed])

    async def scenario() -> tuple[str, str | None]:
        async with agent.run_stream("say something") as stream:
            text = await stream.get_output()
        return text, stream.run_id

    text, run_id = asyncio.run(scenario())
    assert text == "streamed answer"
    ended = governed.result(run_id)
    assert ended is not None and ended.stop_reason == "ok"
    assert ended.usage.steps == 1 and ended.usage.output_tokens > 0 and ended.usage.usd > 0


def test_reservation_and_audit_steps_are_durable_operations() -> None:
    """authorize, report and report_failure are ``@durable_operation``\\ s a durable engine can
    bind and journal (their arguments and results have schemas), so a replay returns the
    recorded verdict instead of charging or auditing again."""
    from pydantic_ai.durable_exec import CapabilityMethodDeclaration
    from pydantic_ai.durable_exec._capability_operation import collect_capability_operations

    governed = Corral(corral.Policy.from_dict({}), store="memory://")
    operations = collect_capability_operations(governed)
    assert sorted(operations) == ["authorize", "report", "report_failure"]
    assert all(isinstance(op, CapabilityMethodDeclaration) for op in operations.values())
    verdict = operations["authorize"].schema.validator.validate_python(
        {"tool": "refund", "args": {"order": 1}, "call_id": "call_1"}
    )
    assert verdict == {"tool": "refund", "args": {"order": 1}, "call_id": "call_1"}


def test_the_example_prints_the_answer_and_the_stop_reason() -> None:
    """``examples/integrations/pydantic_ai_agent.py`` runs offline and prints both."""
    example = ROOT / "examples" / "integrations" / "pydantic_ai_agent.py"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["False", "ok"]
    added = [line for line in example.read_text().splitlines() if "# + corral" in line]
    assert len(added) <= 10
