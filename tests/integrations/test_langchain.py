"""LangChain / LangGraph under corral: a real ``create_agent`` agent (and a plain LangGraph
``ToolNode``) driven by a fake chat model, with the gate, the budgets, approvals (the
store's queue decided from another process, LangGraph's ``interrupt()``), the kill switch
and the audit trail working through the framework's own extension points."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain.agents")
pytest.importorskip("langgraph.prebuilt")

from langchain.agents import create_agent
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import Command
from pydantic import ConfigDict, Field

import corral
from corral.integrations.langchain import (
    CorralMiddleware,
    ToolGate,
    corral_tools,
    stop_of,
)
from corral.stores import open_store

ROOT = Path(__file__).resolve().parents[2]
P = corral.Policy.from_dict
Respond = Callable[[list[BaseMessage]], AIMessage]


class ToolChat(BaseChatModel):
    """A chat model that answers with ``respond(messages)``, records the tools it was
    offered and the ``max_tokens`` it was sent, reports usage (``usage=False``: none) and
    keeps within ``max_tokens`` (``overrun``: ignores it)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    respond: Any
    model_name: str = "fake-chat"
    max_tokens: int | None = None
    usage: bool = True
    output_tokens: int = 20
    offered: list[list[str]] = Field(default_factory=list)
    sent_max_tokens: list[int | None] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "tool-chat"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        names = [getattr(t, "name", None) or t.get("name") for t in tools]
        return self.bind(tool_names=names, **kwargs)

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.offered.append(list(kw.get("tool_names") or []))
        limit = kw.get("max_tokens")
        self.sent_max_tokens.append(limit)
        message = self.respond(messages)
        if self.usage:
            # A tokenizer makes fewer tokens than the text has bytes.
            text = sum(len(str(m.content)) + 8 for m in messages)
            out = self.output_tokens if limit is None else min(self.output_tokens, limit)
            message.usage_metadata = {
                "input_tokens": text // 3,
                "output_tokens": out,
                "total_tokens": text // 3 + out,
            }
        return ChatResult(generations=[ChatGeneration(message=message)])


def calls(*turns: tuple[str, dict[str, Any]] | None, answer: str = "done") -> Respond:
    """A model that makes one tool call per turn, in order (by how many tool results it
    has seen), then answers."""

    def respond(messages: list[BaseMessage]) -> AIMessage:
        seen = sum(isinstance(m, ToolMessage) for m in messages)
        if seen < len(turns):
            name, args = turns[seen]  # type: ignore[misc]
            return AIMessage(
                content="", tool_calls=[{"name": name, "args": args, "id": f"call_{seen}"}]
            )
        return AIMessage(content=answer)

    return respond


def tool_results(result: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


def ask(text: str = "go") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """An async test, run in a fresh event loop (as ``asyncio.run`` would run an app)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


ran: list[tuple[str, Any]] = []


@pytest.fixture(autouse=True)
def _fresh() -> None:
    ran.clear()


@tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    ran.append(("get_weather", city))
    return f"It's always sunny in {city}!"


@tool
def browser_open(url: str) -> str:
    """Open a web page."""
    ran.append(("browser_open", url))
    return "<html>page</html>"


@tool
def crm_update(ticket: str, status: str) -> str:
    """Set a support ticket's status."""
    ran.append(("crm_update", {"ticket": ticket, "status": status}))
    return f"ticket {ticket}: {status}"


WEATHER = {"get_weather": {"effect": "read"}}
CRM = {"crm_update": {"effect": "write"}}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m corral ARGS`` in another process, on this checkout's sources."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], capture_output=True, text=True, env=env, timeout=60
    )


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'corral.db'}"


def pending(url: str, timeout: float = 15.0) -> Any:
    """The one approval that comes to wait in the store."""
    store = open_store(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = store.list_approvals()
        if found:
            return found[0]
        time.sleep(0.02)
    pytest.fail("no approval was filed")


# -- 1. default deny --------------------------------------------------------------------
def test_a_tool_outside_the_policy_is_neither_offered_nor_executed() -> None:
    """The model is offered only allowed tools; a call to another is refused, never run."""
    model = ToolChat(respond=calls(("get_weather", {"city": "sf"}), ("browser_open", {"url": "x"})))
    policy = P({"tools": {"allow": ["get_weather"], "specs": WEATHER}})
    agent = create_agent(
        model,
        tools=[get_weather, browser_open],
        middleware=[CorralMiddleware(policy, store="memory://")],
    )
    result = agent.invoke(ask())
    assert model.offered == [["get_weather"], ["get_weather"]]
    assert ran == [("get_weather", "sf")]
    refused = tool_results(result)[-1]
    assert (refused.status, refused.name) == ("error", "browser_open")
    stop = stop_of(result)
    assert stop is not None and (stop.reason, stop.detail) == ("tool_denied", "browser_open")
    assert result["messages"][-1].content.startswith("Stopped by corral (tool_denied")


def test_with_tell_model_a_denial_is_an_error_message_and_the_agent_goes_on() -> None:
    """``tools.on_denied: tell_model``: the model reads the refusal and answers; ``ok``."""
    model = ToolChat(respond=calls(("browser_open", {"url": "x"}), answer="cannot browse"))
    policy = P({"tools": {"allow": ["get_weather"], "specs": WEATHER, "on_denied": "tell_model"}})
    agent = create_agent(
        model, tools=[get_weather, browser_open], middleware=[CorralMiddleware(policy)]
    )
    result = agent.invoke(ask())
    (refused,) = tool_results(result)
    assert refused.status == "error" and "browser_open" in refused.text
    assert ran == [] and stop_of(result) is None
    assert result["messages"][-1].content == "cannot browse"


@in_loop
async def test_the_async_path_denies_the_same_way() -> None:
    """``ainvoke`` goes through ``awrap_tool_call``: the same refusal, nothing executed."""
    model = ToolChat(respond=calls(("browser_open", {"url": "x"})))
    policy = P({"tools": {"allow": ["get_weather"], "specs": WEATHER}})
    agent = create_agent(
        model, tools=[get_weather, browser_open], middleware=[CorralMiddleware(policy)]
    )
    result = await agent.ainvoke(ask())
    assert ran == [] and model.offered == [["get_weather"]]
    stop = stop_of(result)
    assert stop is not None and stop.reason == "tool_denied"


def test_invalid_arguments_are_refused_before_the_tool_runs() -> None:
    """Arguments outside the tool's own schema are handed back to the model, not run."""
    model = ToolChat(respond=calls(("get_weather", {"town": "sf"}), answer="sorry"))
    policy = P({"tools": {"allow": ["get_weather"], "specs": WEATHER}})
    agent = create_agent(model, tools=[get_weather], middleware=[CorralMiddleware(policy)])
    result = agent.invoke(ask())
    (refused,) = tool_results(result)
    assert refused.status == "error" and "city" in refused.text
    assert ran == [] and stop_of(result) is None


# -- 2. the tool-call budget ------------------------------------------------------------
def test_the_16th_tool_call_is_refused_with_max_tool_calls() -> None:
    """``max_tool_calls: 15``: fifteen calls run, the sixteenth ends the agent."""
    turns = [("get_weather", {"city": f"city-{i}"}) for i in range(20)]
    model = ToolChat(respond=calls(*turns))
    policy = P(
        {"tools": {"allow": ["get_weather"], "specs": WEATHER}, "budgets": {"max_tool_calls": 15}}
    )
    agent = create_agent(model, tools=[get_weather], middleware=[CorralMiddleware(policy)])
    result = agent.invoke(ask())
    assert len(ran) == 15
    messages = tool_results(result)
    assert len(messages) == 16 and messages[-1].status == "error"
    assert "max_tool_calls" in messages[-1].text
    stop = stop_of(result)
    assert stop is not None and stop.reason == "max_tool_calls" and not stop.retryable
    assert len(model.offered) == 16  # no model call after the stop


# -- model calls: reserve, settle, clamp -------------------------------------------------
def test_model_calls_are_settled_from_usage_metadata_and_max_tokens_is_clamped(
    tmp_path: Path,
) -> None:
    """Tokens and USD come from the answer's usage; ``max_tokens`` is cut to what the
    budget leaves and sent to the model."""
    url = sqlite_url(tmp_path)
    model = ToolChat(respond=calls(("get_weather", {"city": "sf"})), max_tokens=4000)
    policy = P(
        {
            "tools": {"allow": ["get_weather"], "specs": WEATHER},
            "budgets": {"max_tokens": 1500},
            "models": {
                "prices": {"fake-chat": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2}}
            },
        }
    )
    agent = create_agent(
        model, tools=[get_weather], middleware=[CorralMiddleware(policy, store=url)]
    )
    result = agent.invoke(ask())
    assert stop_of(result) is None
    first, second = model.sent_max_tokens
    assert first is not None and first < 1500 and second is not None and second < first
    record = open_store(url).get_run(result["corral_run_id"])
    assert record is not None and record.stop_reason == "ok"
    usage = record.usage
    assert usage["steps"] == 2 and usage["output_tokens"] == 40 and usage["input_tokens"] > 0
    expected = Decimal(usage["input_tokens"]) / 10**6 + Decimal(usage["output_tokens"]) * 2 / 10**6
    assert Decimal(usage["usd"]) == expected


def test_a_model_without_a_price_is_refused_under_a_usd_limit() -> None:
    """An unpriced model under ``max_usd``: no call is made; the agent ends with the stop."""
    model = ToolChat(respond=calls(("get_weather", {"city": "sf"})))
    policy = P({"tools": {"allow": ["get_weather"], "specs": WEATHER}, "budgets": {"max_usd": 1}})
    agent = create_agent(model, tools=[get_weather], middleware=[CorralMiddleware(policy)])
    result = agent.invoke(ask())
    assert model.offered == [] and ran == []
    stop = stop_of(result)
    assert stop is not None and stop.reason == "max_usd" and stop.why == "unpriced_model"
    assert result["messages"][-1].content.startswith("Stopped by corral (max_usd")


# -- 3. approvals -----------------------------------------------------------------------
def run_in_thread(agent: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        out.update(agent.invoke(*args))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def test_a_write_approved_from_another_process_runs_exactly_once(tmp_path: Path) -> None:
    """The tool call waits in corral's queue; ``corral approvals approve`` in another
    process lets it run, once."""
    url = sqlite_url(tmp_path)
    model = ToolChat(respond=calls(("crm_update", {"ticket": "T-7", "status": "solved"})))
    policy = P({"tools": {"allow": ["crm_update"], "specs": CRM}})
    middleware = CorralMiddleware(policy, store=url, tenant="acme", agent="support-bot")
    agent = create_agent(model, tools=[crm_update], middleware=[middleware])
    thread, result = run_in_thread(agent, ask())
    request = pending(url)
    assert (request.tool, request.arguments) == (
        "crm_update",
        {"ticket": "T-7", "status": "solved"},
    )
    assert ran == []
    done = cli("approvals", "approve", request.id, "--as", "alice", "--db", url)
    assert done.returncode == 0, done.stderr
    thread.join(30)
    assert ran == [("crm_update", {"ticket": "T-7", "status": "solved"})]
    assert stop_of(result) is None and tool_results(result)[0].text == "ticket T-7: solved"
    used = open_store(url).get_approval(request.id)
    assert used is not None and (used.status, used.approver) == ("used", "alice")


def test_a_write_denied_from_another_process_reaches_the_model_as_a_rejection(
    tmp_path: Path,
) -> None:
    """``corral approvals deny``: the tool never runs; the model reads LangChain's own
    rejection (an error ToolMessage) and the agent goes on (``on_denied: tell_model``)."""
    url = sqlite_url(tmp_path)
    model = ToolChat(respond=calls(("crm_update", {"ticket": "T-7", "status": "x"}), answer="ok"))
    policy = P(
        {"tools": {"allow": ["crm_update"], "specs": CRM}, "writes": {"on_denied": "tell_model"}}
    )
    agent = create_agent(
        model, tools=[crm_update], middleware=[CorralMiddleware(policy, store=url)]
    )
    thread, result = run_in_thread(agent, ask())
    request = pending(url)
    done = cli("approvals", "deny", request.id, "--reason", "wrong customer", "--db", url)
    assert done.returncode == 0, done.stderr
    thread.join(30)
    assert ran == []
    (rejected,) = tool_results(result)
    assert rejected.status == "error"
    assert (
        rejected.text == "User rejected the tool call for `crm_update` with reason: wrong customer"
    )
    assert stop_of(result) is None and result["messages"][-1].content == "ok"


def test_an_in_process_approver_decides_and_a_denial_stops_the_run() -> None:
    """``approver=``: a refusal stops the run with ``approval_denied`` by default."""
    model = ToolChat(respond=calls(("crm_update", {"ticket": "T-7", "status": "deleted"})))
    policy = P({"tools": {"allow": ["crm_update"], "specs": CRM}})

    def approver(request: corral.ApprovalRequest) -> bool:
        return request.arguments["status"] != "deleted"

    agent = create_agent(
        model, tools=[crm_update], middleware=[CorralMiddleware(policy, approver=approver)]
    )
    result = agent.invoke(ask())
    assert ran == []
    stop = stop_of(result)
    assert stop is not None and (stop.reason, stop.detail) == ("approval_denied", "crm_update")
    assert tool_results(result)[0].text.startswith("User rejected the tool call for `crm_update`")


def interrupting(policy: corral.Policy, model: ToolChat, store: Any = "memory://") -> Any:
    middleware = CorralMiddleware(policy, store=store, approvals="interrupt")
    return create_agent(
        model, tools=[crm_update], middleware=[middleware], checkpointer=InMemorySaver()
    )


def test_an_interrupt_approval_runs_the_call_once() -> None:
    """``approvals="interrupt"``: the graph pauses with the call; resumed approved, it runs."""
    model = ToolChat(respond=calls(("crm_update", {"ticket": "T-7", "status": "solved"})))
    agent = interrupting(P({"tools": {"allow": ["crm_update"], "specs": CRM}}), model)
    config = {"configurable": {"thread_id": "t-approve"}}
    paused = agent.invoke(ask(), config)
    (question,) = paused["__interrupt__"]
    assert question.value["type"] == "tool_approval" and question.value["name"] == "crm_update"
    assert question.value["args"] == {"ticket": "T-7", "status": "solved"} and ran == []
    result = agent.invoke(Command(resume={"type": "approve", "approver": "alice"}), config)
    assert ran == [("crm_update", {"ticket": "T-7", "status": "solved"})]
    assert stop_of(result) is None and result["messages"][-1].content == "done"


def test_after_an_edit_only_the_edited_call_runs_once() -> None:
    """An edit is a new action, re-digested and approved: the original never runs, and the
    edited call runs exactly once (LangChain issue #33787 re-attempted the original)."""
    model = ToolChat(respond=calls(("crm_update", {"ticket": "T-7", "status": "deleted"})))
    agent = interrupting(P({"tools": {"allow": ["crm_update"], "specs": CRM}}), model)
    config = {"configurable": {"thread_id": "t-edit"}}
    agent.invoke(ask(), config)
    edit = {
        "type": "edit",
        "edited_action": {"name": "crm_update", "args": {"ticket": "T-7", "status": "solved"}},
    }
    result = agent.invoke(Command(resume=edit), config)
    assert ran == [("crm_update", {"ticket": "T-7", "status": "solved"})]
    (message,) = tool_results(result)
    assert message.status == "success" and "Executed instead: crm_update" in message.text
    assert message.text.endswith("ticket T-7: solved")
    state = agent.get_state(config)
    assert state.next == () and not state.interrupts
    assert ran == [("crm_update", {"ticket": "T-7", "status": "solved"})]  # nothing re-attempted


def test_an_interrupt_rejection_reaches_the_model_and_nothing_runs() -> None:
    """A rejected call never runs; the model gets LangChain's rejection message."""
    model = ToolChat(respond=calls(("crm_update", {"ticket": "T-7", "status": "x"}), answer="ok"))
    policy = P(
        {"tools": {"allow": ["crm_update"], "specs": CRM}, "writes": {"on_denied": "tell_model"}}
    )
    agent = interrupting(policy, model)
    config = {"configurable": {"thread_id": "t-reject"}}
    agent.invoke(ask(), config)
    result = agent.invoke(Command(resume={"type": "reject", "message": "no"}), config)
    assert ran == []
    (rejected,) = tool_results(result)
    assert (rejected.status, rejected.text) == (
        "error",
        "User rejected the tool call for `crm_update` with reason: no",
    )
    assert stop_of(result) is None


def test_an_interrupted_agent_resumed_by_another_middleware_reopens_its_run(
    tmp_path: Path,
) -> None:
    """Resumed elsewhere (a new middleware, as in another process), the run is reopened by
    the id in the checkpointed state: one run in the store, ended ``ok``."""
    url = sqlite_url(tmp_path)
    policy = P({"tools": {"allow": ["crm_update"], "specs": CRM}})
    saver = InMemorySaver()
    config = {"configurable": {"thread_id": "t-moved"}}
    turns = calls(("crm_update", {"ticket": "T-7", "status": "solved"}))
    first = create_agent(
        ToolChat(respond=turns),
        tools=[crm_update],
        middleware=[CorralMiddleware(policy, store=url, approvals="interrupt")],
        checkpointer=saver,
    )
    paused = first.invoke(ask(), config)
    second = create_agent(
        ToolChat(respond=turns),
        tools=[crm_update],
        middleware=[CorralMiddleware(policy, store=url, approvals="interrupt")],
        checkpointer=saver,
    )
    result = second.invoke(Command(resume={"type": "approve"}), config)
    assert ran == [("crm_update", {"ticket": "T-7", "status": "solved"})]
    run_id = result["corral_run_id"]
    assert run_id == paused["corral_run_id"]
    record = open_store(url).get_run(run_id)
    assert record is not None and record.stop_reason == "ok"
    assert record.usage["tool_calls"] == 1


# -- 4. a shared USD cap ----------------------------------------------------------------
@in_loop
async def test_a_tenant_usd_cap_is_never_overshot_by_32_concurrent_agents(tmp_path: Path) -> None:
    """32 concurrent invocations share one tenant's daily USD in SQLite: the total spent
    stays within the cap, and those that could not afford it stop with ``max_usd``."""
    url = sqlite_url(tmp_path)
    cap = Decimal("0.5")
    policy = P(
        {
            "tools": {
                "allow": ["get_weather"],
                "specs": {"get_weather": {"effect": "read", "cost_usd": 0.01}},
            },
            "limits": [{"per": "tenant", "window": "1d", "max_usd": float(cap)}],
            "models": {
                "prices": {"priced-chat": {"input_usd_per_mtok": 100, "output_usd_per_mtok": 400}}
            },
        }
    )
    model = ToolChat(
        respond=calls(("get_weather", {"city": "sf"})),
        model_name="priced-chat",
        max_tokens=60,
        output_tokens=40,
    )
    agent = create_agent(
        model, tools=[get_weather], middleware=[CorralMiddleware(policy, store=url, tenant="acme")]
    )
    results = await asyncio.gather(*(agent.ainvoke(ask(f"task {i}")) for i in range(32)))
    store = open_store(url)
    records = [store.get_run(r["corral_run_id"]) for r in results]
    spent = sum((Decimal(r.usage["usd"]) for r in records if r is not None), Decimal(0))
    assert 0 < spent <= cap
    stops = [stop_of(r) for r in results]
    done = [s for s in stops if s is None]
    refused = [s for s in stops if s is not None]
    assert done and refused
    assert all((s.reason, s.detail) == ("max_usd", "tenant/1d") for s in refused)
    assert all(r is not None and r.usage["overrun_usd"] in (0, "0") for r in records)


# -- 5. the kill switch -----------------------------------------------------------------
@in_loop
async def test_a_stop_all_kill_switch_from_another_process_stops_a_long_tool_within_a_second(
    tmp_path: Path,
) -> None:
    """``corral kill enable --mode stop_all`` in another process ends an agent that is in
    a long tool call well within a second of the switch being set."""
    url = sqlite_url(tmp_path)
    started = asyncio.Event()

    @tool
    async def crawl(site: str) -> str:
        """Crawl a site (slowly)."""
        started.set()
        await asyncio.sleep(30)
        return "crawled"

    model = ToolChat(respond=calls(("crawl", {"site": "example.com"})))
    policy = P(
        {
            "tools": {"allow": ["crawl"], "specs": {"crawl": {"effect": "read"}}},
            "budgets": {"max_seconds": 60},
        }
    )
    agent = create_agent(model, tools=[crawl], middleware=[CorralMiddleware(policy, store=url)])
    running = asyncio.ensure_future(agent.ainvoke(ask()))
    await asyncio.wait_for(started.wait(), 10)
    done = await asyncio.to_thread(cli, "kill", "enable", "--mode", "stop_all", "--db", url)
    assert done.returncode == 0, done.stderr
    switched = time.monotonic()
    result = await asyncio.wait_for(running, 5)
    assert time.monotonic() - switched < 1.0
    stop = stop_of(result)
    assert stop is not None and stop.reason == "kill_switch"
    assert tool_results(result)[0].status == "error"


def test_a_stop_all_kill_switch_stops_a_looping_sync_agent(tmp_path: Path) -> None:
    """A sync agent looping on a tool stops at its next call once the switch is set."""
    url = sqlite_url(tmp_path)
    turns = [("get_weather", {"city": f"c{i}"}) for i in range(10_000)]
    policy = P(
        {
            "tools": {"allow": ["get_weather"], "specs": WEATHER},
            "budgets": {"max_tool_calls": 10_000, "max_steps": 10_000, "max_seconds": 60},
        }
    )
    agent = create_agent(
        ToolChat(respond=calls(*turns)),
        tools=[get_weather],
        middleware=[CorralMiddleware(policy, store=url)],
    )
    thread, result = run_in_thread(agent, ask(), {"recursion_limit": 100_000})
    while not ran:
        time.sleep(0.01)
    done = cli("kill", "enable", "--mode", "stop_all", "--db", url)
    assert done.returncode == 0, done.stderr
    switched = time.monotonic()
    thread.join(10)
    assert time.monotonic() - switched < 1.0
    stop = stop_of(result)
    assert stop is not None and stop.reason == "kill_switch"


# -- 6. runs, show, audit ---------------------------------------------------------------
def test_the_run_is_listed_shown_and_its_audit_chain_verifies(tmp_path: Path) -> None:
    """``corral runs``, ``corral show RUN`` and ``corral audit verify`` in another process
    see the agent's run, its stop reason and an intact chain."""
    url = sqlite_url(tmp_path)
    model = ToolChat(respond=calls(("get_weather", {"city": "sf"}), ("browser_open", {"url": "x"})))
    policy = P({"tools": {"allow": ["get_weather"], "specs": WEATHER}})
    agent = create_agent(
        model,
        tools=[get_weather, browser_open],
        middleware=[CorralMiddleware(policy, store=url, tenant="acme", agent="weather-bot")],
    )
    run_id = agent.invoke(ask())["corral_run_id"]
    listed = cli("runs", "--json", "--db", url)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)["runs"]
    assert (row["run_id"], row["stop_reason"], row["agent"]) == (
        run_id,
        "tool_denied",
        "weather-bot",
    )
    assert row["tool_calls"] == 1 and row["steps"] == 2
    shown = cli("show", run_id, "--db", url)
    assert shown.returncode == 0, shown.stderr
    assert "tool_denied" in shown.stdout and "browser_open" in shown.stdout
    verified = cli("audit", "verify", "--db", url)
    assert verified.returncode == 0, verified.stdout + verified.stderr


# -- a plain LangGraph ToolNode ---------------------------------------------------------
@in_loop
async def test_a_tool_node_of_your_own_is_gated_under_the_run_you_bind() -> None:
    """``ToolGate`` on a hand-built graph: allowed calls run, others are refused."""
    gate = ToolGate()
    node = ToolNode(
        [get_weather, browser_open],
        wrap_tool_call=gate.wrap_tool_call,
        awrap_tool_call=gate.awrap_tool_call,
    )
    builder = StateGraph(MessagesState)
    builder.add_node("tools", node)
    builder.add_edge(START, "tools")
    builder.add_edge("tools", END)
    graph = builder.compile()
    turn = AIMessage(
        content="",
        tool_calls=[
            {"name": "get_weather", "args": {"city": "sf"}, "id": "a"},
            {"name": "browser_open", "args": {"url": "x"}, "id": "b"},
        ],
    )
    policy = P({"tools": {"allow": ["get_weather"], "specs": WEATHER, "on_denied": "tell_model"}})
    tools = corral_tools([get_weather, browser_open])
    async with corral.AsyncRun(policy, tools=tools, store="memory://") as run:
        with gate.bound(run):
            out = await graph.ainvoke({"messages": [turn]})
        await run.finish("done")
    weather, browser = (m for m in out["messages"] if isinstance(m, ToolMessage))
    assert (weather.status, weather.text) == ("success", "It's always sunny in sf!")
    assert browser.status == "error" and ran == [("get_weather", "sf")]
    assert run.result.usage.tool_calls == 1
    with pytest.raises(corral.ConfigError, match="no corral run is bound"):
        graph.invoke({"messages": [turn]})


# -- the example -----------------------------------------------------------------------
def test_the_example_runs_offline_and_prints_the_answer_and_the_stop_reason(
    tmp_path: Path,
) -> None:
    """``examples/integrations/langchain_agent.py`` runs as documented."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CORRAL_DB": sqlite_url(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "integrations" / "langchain_agent.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["It's always sunny in sf!", "stop reason: ok"]


# -- the docs and the public names ------------------------------------------------------
def test_the_public_names_are_all_listed_and_sorted() -> None:
    """``__all__`` lists every public name of the module, sorted as ruff keeps it."""
    import corral.integrations.langchain as module

    public = {n for n in vars(module) if not n.startswith("_") and callable(vars(module)[n])}
    assert set(module.__all__) == public
    assert module.__all__ == sorted(module.__all__, key=lambda n: (not n[:1].isupper(), n))


def test_a_streamed_agent_is_governed_like_an_invoked_one() -> None:
    """``agent.stream`` passes the same hooks: the denied tool never runs, the stop is
    in the last state."""
    model = ToolChat(respond=calls(("browser_open", {"url": "x"})))
    policy = P({"tools": {"allow": ["get_weather"], "specs": WEATHER}})
    agent = create_agent(
        model, tools=[get_weather, browser_open], middleware=[CorralMiddleware(policy)]
    )
    states = list(agent.stream(ask(), stream_mode="values"))
    assert ran == [] and model.offered == [["get_weather"]]
    stop = stop_of(states[-1])
    assert stop is not None and stop.reason == "tool_denied"


@in_loop
async def test_an_async_tool_past_its_timeout_is_cancelled_and_the_run_stops() -> None:
    """A tool's ``timeout_seconds``: under ``ainvoke`` the call is cancelled at its deadline
    and the run stops with ``tool_error`` (the tool's result never reaches the model)."""
    finished: list[str] = []

    @tool
    async def crawl(site: str) -> str:
        """Crawl a site (slowly)."""
        await asyncio.sleep(5)
        finished.append(site)
        return "crawled"

    model = ToolChat(respond=calls(("crawl", {"site": "example.com"})))
    policy = P(
        {
            "tools": {
                "allow": ["crawl"],
                "specs": {"crawl": {"effect": "read", "timeout_seconds": 0.2}},
            }
        }
    )
    agent = create_agent(model, tools=[crawl], middleware=[CorralMiddleware(policy)])
    started = time.monotonic()
    result = await agent.ainvoke(ask())
    assert time.monotonic() - started < 2 and finished == []
    stop = stop_of(result)
    assert stop is not None and (stop.reason, stop.detail) == ("tool_error", "crawl")
    assert tool_results(result)[0].status == "error"


@in_loop
async def test_an_async_tools_own_timeout_error_is_a_failure_not_its_deadline() -> None:
    """A ``TimeoutError`` the tool raises itself, well before its deadline, is a failure of
    the tool (``tool_error``, not reported as the call timing out)."""

    @tool
    async def crawl(site: str) -> str:
        """Crawl a site (its vendor times out)."""
        raise TimeoutError("the vendor timed out")

    model = ToolChat(respond=calls(("crawl", {"site": "example.com"})))
    policy = P(
        {
            "tools": {
                "allow": ["crawl"],
                "specs": {"crawl": {"effect": "read", "timeout_seconds": 30}},
            }
        }
    )
    agent = create_agent(model, tools=[crawl], middleware=[CorralMiddleware(policy)])
    result = await agent.ainvoke(ask())
    stop = stop_of(result)
    assert stop is not None and (stop.reason, stop.detail) == ("tool_error", "crawl")
    assert stop.message == "raised TimeoutError: the vendor timed out"
