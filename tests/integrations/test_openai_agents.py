"""The OpenAI Agents SDK adapter: a real ``agents.Agent`` driven through ``Runner.run`` by the
SDK's own scripted model (``agents.testing.ScriptedModel``), governed by corral. Offline:
no network, no API key; the CLI runs in other processes against a SQLite file."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("agents", reason="the openai-agents extra")

from agents import (
    Agent,
    AgentsException,
    ModelSettings,
    RunConfig,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call
from agents.usage import Usage

import corral
from corral.integrations.openai_agents import (
    SDK_APPROVER,
    RunStopped,
    govern,
    run_config,
    tools_of,
    wait_for_decisions,
)

set_tracing_disabled(True)

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(corral.__file__).resolve().parents[1]
REJECTED = "Tool execution was not approved."  # the SDK's own rejection text


def used(i: int = 100, o: int = 10) -> Usage:
    return Usage(requests=1, input_tokens=i, output_tokens=o, total_tokens=i + o)


def turn(*items: Any, i: int = 100, o: int = 10) -> ModelStep:
    """One scripted model turn with its reported usage."""
    return ModelStep(output=list(items), usage=used(i, o))


def say(text: str) -> ModelStep:
    return turn(assistant_message(text))


def call(name: str, call_id: str, **args: Any) -> Any:
    return function_call(name, args, call_id=call_id)


def cli(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m corral ARGS --db DB`` in another process, on this checkout's sources."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "corral", *args, "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": path},
    )


def cli_json(db: str, *args: str) -> Any:
    done = cli(db, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def offered(model: ScriptedModel, n: int = 0) -> list[str]:
    """The tool names the model was offered on its ``n``-th call."""
    return sorted(t.name for t in model.calls[n].tools)


class Counted:
    """Function tools that count their own executions."""

    def __init__(self) -> None:
        self.ran: list[str] = []

        @function_tool
        def get_weather(city: str) -> str:
            """The weather in a city."""
            self.ran.append(f"weather:{city}")
            return f"sunny in {city}"

        @function_tool
        def delete_account(user: str) -> str:
            """Delete a user's account."""
            self.ran.append(f"delete:{user}")
            return f"deleted {user}"

        @function_tool
        def refund__send(order: str, amount: int) -> str:
            """Send a refund."""
            self.ran.append(f"refund:{order}")
            return f"refunded {amount} on {order}"

        self.get_weather, self.delete_account, self.refund = (
            get_weather,
            delete_account,
            refund__send,
        )

    def agent(self, model: ScriptedModel, **kwargs: Any) -> Agent[Any]:
        tools = [self.get_weather, self.delete_account, self.refund]
        return Agent(name="support", instructions="Be brief.", tools=tools, model=model, **kwargs)


READ = {"effect": "read"}


def policy(**extra: Any) -> corral.Policy:
    tools = {"allow": ["get_weather", "refund.send"], "specs": {"get_weather": READ}}
    tools.update(extra.pop("tools", {}))
    writes = {"require_approval": False, **extra.pop("writes", {})}
    return corral.Policy.from_dict({"tools": tools, "writes": writes, **extra})


async def governed_run(agent: Agent[Any], run: corral.AsyncRun, task: Any, **kwargs: Any) -> Any:
    return await Runner.run(govern(agent, run), task, run_config=run_config(run), **kwargs)


# -- 1. default deny --------------------------------------------------------------------
def test_a_tool_outside_the_policy_is_never_offered_nor_executed() -> None:
    """The model is offered only allowed tools; a call to a denied one anyway never runs
    and stops the run with tool_denied, raised as the SDK's own exception type."""
    tools = Counted()
    model = ScriptedModel([turn(call("delete_account", "c1", user="ann")), say("done")])

    async def go() -> tuple[corral.RunResult, BaseException | None]:
        caught = None
        async with corral.AsyncRun(
            policy(), tools=tools_of(tools.agent(model)), store="memory://"
        ) as run:
            try:
                await governed_run(tools.agent(model), run, "delete ann")
            except RunStopped as exc:
                caught = exc
        return run.result, caught

    result, caught = asyncio.run(go())
    assert offered(model) == ["get_weather", "refund__send"]
    assert tools.ran == []
    assert isinstance(caught, AgentsException) and isinstance(caught, corral.Stop)
    assert (caught.reason, caught.detail, caught.retryable) == (
        "tool_denied",
        "delete_account",
        False,
    )
    assert str(result.stop) == "tool_denied:delete_account"


# -- 2. the tool-call budget ------------------------------------------------------------
def test_the_16th_tool_call_under_max_tool_calls_15_is_refused() -> None:
    """Sixteen turns each calling a read: fifteen run, the sixteenth stops the run with
    max_tool_calls before it executes."""
    tools = Counted()
    steps = [turn(call("get_weather", f"c{i}", city=f"city-{i}")) for i in range(16)]
    model = ScriptedModel([*steps, say("done")])

    async def go() -> tuple[corral.RunResult, RunStopped]:
        async with corral.AsyncRun(
            policy(budgets={"max_tool_calls": 15}), tools=tools_of(tools.agent(model)),
            store="memory://",
        ) as run:  # fmt: skip
            with pytest.raises(RunStopped) as stopped:
                await governed_run(tools.agent(model), run, "weather?", max_turns=30)
        return run.result, stopped.value

    result, stopped = asyncio.run(go())
    assert len(tools.ran) == 15
    assert stopped.reason == "max_tool_calls" and result.stop_reason == "max_tool_calls"
    assert result.usage.tool_calls == 15


# -- 3. approvals -----------------------------------------------------------------------
def write_policy(**writes: Any) -> corral.Policy:
    return policy(tools={"specs": {"get_weather": READ, "refund.send": {"effect": "write"}}},
                  writes={"require_approval": True, **writes})  # fmt: skip


def test_a_write_waits_for_approval_from_the_cli_in_another_process_and_runs_once(
    tmp_path: Path,
) -> None:
    """The write interrupts the run the SDK's way, its request in corral's queue;
    `corral approvals approve ID` in another process decides it, wait_for_decisions applies
    it to the SDK state, and the resumed run executes the write exactly once."""
    db = f"sqlite:///{tmp_path / 'corral.db'}"
    tools = Counted()
    model = ScriptedModel(
        [turn(call("refund__send", "c1", order="A-1", amount=5)), say("refunded")]
    )
    agent = tools.agent(model)
    seen: dict[str, Any] = {}

    def approve_later() -> None:
        listed = cli_json(db, "approvals", "list")
        seen["listed"] = listed["approvals"]
        (row,) = listed["approvals"]
        done = cli(db, "approvals", "approve", row["id"], "--reason", "order checked")
        assert done.returncode == 0, done.stderr
        seen["id"] = row["id"]

    async def go() -> tuple[corral.RunResult, Any]:
        async with corral.AsyncRun(write_policy(), tools=tools_of(agent), store=db) as run:
            governed, config = govern(agent, run), run_config(run)
            result = await Runner.run(governed, "refund A-1", run_config=config)
            assert [i.name for i in result.interruptions] == ["refund__send"]
            assert tools.ran == []
            state, _ = await asyncio.gather(
                wait_for_decisions(result, run), asyncio.to_thread(approve_later)
            )
            result = await Runner.run(governed, state, run_config=config)
            await run.finish(result.final_output)
        return run.result, result

    result, final = asyncio.run(go())
    assert tools.ran == ["refund:A-1"]
    assert final.final_output == "refunded" and result.stop_reason == "ok"
    assert seen["listed"][0]["tool"] == "refund.send"
    shown = cli_json(db, "approvals", "show", seen["id"])["approval"]
    assert (shown["status"], shown["reason"]) == ("used", "order checked")


def test_a_denial_from_the_cli_reaches_the_model_as_the_sdks_rejection(tmp_path: Path) -> None:
    """Under writes.on_denied: tell_model, `corral approvals deny` becomes the SDK's own
    rejection: the model reads it as the call's output, the tool never runs, the run goes on."""
    db = f"sqlite:///{tmp_path / 'corral.db'}"
    tools = Counted()
    model = ScriptedModel([turn(call("refund__send", "c1", order="A-1", amount=5)), say("sorry")])
    agent = tools.agent(model)

    async def go() -> corral.RunResult:
        async with corral.AsyncRun(write_policy(on_denied="tell_model"), tools=tools_of(agent),
                                   store=db) as run:  # fmt: skip
            governed, config = govern(agent, run), run_config(run)
            result = await Runner.run(governed, "refund A-1", run_config=config)
            (row,) = cli_json(db, "approvals", "list")["approvals"]
            assert cli(db, "approvals", "deny", row["id"], "--reason", "no").returncode == 0
            state = await wait_for_decisions(result, run)
            result = await Runner.run(governed, state, run_config=config)
            await run.finish(result.final_output)
        return run.result

    result = asyncio.run(go())
    assert tools.ran == []
    outputs = [i for i in model.last_call.input if i.get("type") == "function_call_output"]
    assert [o["output"] for o in outputs] == [REJECTED]
    assert result.stop_reason == "ok" and result.answer == "sorry"


def test_runstate_approve_in_process_is_recorded_in_the_queue_and_runs_once(tmp_path: Path) -> None:
    """RunState.approve in the caller's code and corral's queue agree: the request is
    approved by the SDK's state, used once, and the write runs once."""
    db = f"sqlite:///{tmp_path / 'corral.db'}"
    tools = Counted()
    model = ScriptedModel([turn(call("refund__send", "c1", order="B-2", amount=3)), say("ok")])
    agent = tools.agent(model)

    async def go() -> corral.RunResult:
        async with corral.AsyncRun(write_policy(), tools=tools_of(agent), store=db) as run:
            governed, config = govern(agent, run), run_config(run)
            result = await Runner.run(governed, "refund B-2", run_config=config)
            state = result.to_state()
            state.approve(result.interruptions[0])
            result = await Runner.run(governed, state, run_config=config)
            await run.finish(result.final_output)
        return run.result

    result = asyncio.run(go())
    assert tools.ran == ["refund:B-2"] and result.stop_reason == "ok"
    (row,) = cli_json(db, "approvals", "list", "--status", "all")["approvals"]
    assert (row["status"], row["approver"]) == ("used", SDK_APPROVER)


def test_runstate_reject_under_on_denied_stop_ends_the_run_with_approval_denied(
    tmp_path: Path,
) -> None:
    """RunState.reject is recorded as a denial in the queue; the policy's default
    (on_denied: stop) then ends the run with approval_denied."""
    db = f"sqlite:///{tmp_path / 'corral.db'}"
    tools = Counted()
    model = ScriptedModel([turn(call("refund__send", "c1", order="C-3", amount=3)), say("ok")])
    agent = tools.agent(model)

    async def go() -> corral.RunResult:
        async with corral.AsyncRun(write_policy(), tools=tools_of(agent), store=db) as run:
            governed, config = govern(agent, run), run_config(run)
            result = await Runner.run(governed, "refund C-3", run_config=config)
            state = result.to_state()
            state.reject(result.interruptions[0])
            with pytest.raises(RunStopped, match="approval_denied"):
                await Runner.run(governed, state, run_config=config)
        return run.result

    result = asyncio.run(go())
    assert tools.ran == [] and result.stop_reason == "approval_denied"
    (row,) = cli_json(db, "approvals", "list", "--status", "all")["approvals"]
    assert (row["status"], row["approver"]) == ("denied", SDK_APPROVER)


def test_approvals_wait_asks_the_in_process_approver_inside_the_call() -> None:
    """approvals="wait" (and any run with an approver= callback) never interrupts: the
    approver answers inside the call, and the write runs once."""
    tools = Counted()
    model = ScriptedModel([turn(call("refund__send", "c1", order="D-4", amount=1)), say("ok")])
    agent = tools.agent(model)
    asked: list[str] = []

    def approver(request: corral.ApprovalRequest) -> bool:
        asked.append(request.tool)
        return True

    async def go() -> Any:
        async with corral.AsyncRun(write_policy(), tools=tools_of(agent), approver=approver,
                                   store="memory://") as run:  # fmt: skip
            result = await Runner.run(govern(agent, run, approvals="wait"), "refund",
                                      run_config=run_config(run))  # fmt: skip
            await run.finish(result.final_output)
        return result

    result = asyncio.run(go())
    assert result.interruptions == [] and result.final_output == "ok"
    assert asked == ["refund.send"] and tools.ran == ["refund:D-4"]


# -- 4. a shared USD cap ----------------------------------------------------------------
PRICE = {"input_usd_per_mtok": 1000, "output_usd_per_mtok": 1000}  # $0.001 a token


def honest(call: Any) -> ModelStep:
    """A priced model that honours max_tokens, as providers do: 40 tokens in, up to 60 out."""
    out = min(60, call.model_settings.max_tokens or 60)
    return ModelStep(output=[assistant_message("ok")], usage=used(40, out))


def test_32_concurrent_runs_sharing_a_tenant_usd_cap_never_overshoot_it(tmp_path: Path) -> None:
    """32 governed agents on one SQLite store share a $1 tenant cap: the spend stays within
    it, and the runs that could not afford a model call stop with max_usd."""
    db = f"sqlite:///{tmp_path / 'corral.db'}"
    cap = 1
    shared = corral.Policy.from_dict({
        "models": {"prices": {"scripted": PRICE}},
        "limits": [{"per": "tenant", "window": "1d", "max_usd": cap}],
    })  # fmt: skip

    async def one(k: int) -> corral.RunResult:
        model = ScriptedModel([ModelStep.respond(honest)])
        agent = Agent(name=f"a{k}", model=model, model_settings=ModelSettings(max_tokens=60))
        async with corral.AsyncRun(shared, store=db, tenant="acme") as run:
            try:
                result = await Runner.run(govern(agent, run, model="scripted"), "hi",
                                          run_config=run_config(run))  # fmt: skip
            except RunStopped:
                pass
            else:
                await run.finish(result.final_output)
        return run.result

    async def go() -> list[corral.RunResult]:
        return list(await asyncio.gather(*(one(k) for k in range(32))))

    results = asyncio.run(go())
    spent = sum(r.usage.usd for r in results)
    reasons = {r.stop_reason for r in results}
    assert spent <= cap
    assert reasons == {"ok", "max_usd"}
    assert all(
        str(r.stop).startswith("max_usd:tenant/1d") for r in results if r.stop_reason != "ok"
    )
    print(f"\n32 runs, tenant cap ${cap}: spent ${spent}, "
          f"{sum(r.stop_reason == 'ok' for r in results)} ran")  # fmt: skip


def test_model_settings_max_tokens_is_clamped_to_what_the_budget_leaves() -> None:
    """The model is sent the max_tokens the run's USD budget allows, not the agent's."""
    model = ScriptedModel([ModelStep.respond(honest)])
    agent = Agent(name="a", model=model, model_settings=ModelSettings(max_tokens=4000))
    tight = corral.Policy.from_dict(
        {"budgets": {"max_usd": 0.5}, "models": {"prices": {"scripted": PRICE}}}
    )

    async def go() -> corral.RunResult:
        async with corral.AsyncRun(tight, store="memory://") as run:
            governed = govern(agent, run, model="scripted")  # the name the policy prices
            result = await Runner.run(governed, "hi", run_config=run_config(run))
            await run.finish(result.final_output)
        return run.result

    result = asyncio.run(go())
    sent = model.first_call.model_settings.max_tokens
    assert sent is not None and 16 <= sent < 500
    assert result.stop_reason == "ok" and result.usage.usd <= 0.5
    assert (result.usage.input_tokens, result.usage.output_tokens) == (40, 60)


# -- 5. the kill switch -----------------------------------------------------------------
def test_stop_all_from_another_process_stops_an_agent_in_a_long_tool_within_1_s(
    tmp_path: Path,
) -> None:
    """`corral kill enable --mode stop_all` in another process ends a run whose tool is
    still running: RunStopped kill_switch within a second of the switch."""
    db = f"sqlite:///{tmp_path / 'corral.db'}"
    started = threading.Event()
    switched: list[float] = []

    @function_tool
    async def crawl(site: str) -> str:
        """Crawl a site (slowly)."""
        started.set()
        await asyncio.sleep(30)
        return "crawled"

    def kill() -> None:
        assert started.wait(20)
        switched.append(time.monotonic())
        done = cli(db, "kill", "enable", "--mode", "stop_all", "--reason", "runaway agent")
        assert done.returncode == 0, done.stderr
        switched.append(time.monotonic())  # the switch is in the store

    model = ScriptedModel([turn(call("crawl", "c1", site="example.com")), say("done")])
    agent = Agent(name="crawler", model=model, tools=[crawl])
    allow = corral.Policy.from_dict({"tools": {"allow": ["crawl"], "specs": {"crawl": READ}}})

    async def go() -> tuple[corral.RunResult, float]:
        async with corral.AsyncRun(allow, tools=tools_of(agent), store=db) as run:
            with pytest.raises(RunStopped):
                await governed_run(agent, run, "crawl it")
        return run.result, time.monotonic()

    killer = threading.Thread(target=kill)
    killer.start()
    result, ended = asyncio.run(go())
    killer.join(30)
    launched, durable = switched
    delay = ended - durable
    since = (ended - launched) * 1000
    print(f"\nstop_all from another process: the agent stopped {delay * 1000:.0f} ms after "
          f"the CLI returned, {since:.0f} ms after it was launched")  # fmt: skip
    assert result.stop_reason == "kill_switch" and delay <= 1.0


# -- 6. the run in the CLI and the audit chain ------------------------------------------
def test_the_run_shows_in_corral_runs_and_show_and_its_audit_chain_verifies(tmp_path: Path) -> None:
    """After a governed run on a SQLite file, `corral runs`, `corral show` and `corral audit
    verify` (other processes) show it with its stop reason and an intact chain."""
    db = f"sqlite:///{tmp_path / 'corral.db'}"
    tools = Counted()
    model = ScriptedModel([turn(call("get_weather", "c1", city="Oslo")),
                           turn(call("delete_account", "c2", user="bob")), say("x")])  # fmt: skip
    agent = tools.agent(model)

    async def go() -> corral.RunResult:
        async with corral.AsyncRun(
            policy(), tools=tools_of(agent), store=db, agent="support"
        ) as run:
            with pytest.raises(RunStopped):
                await governed_run(agent, run, "weather, then delete bob")
        return run.result

    result = asyncio.run(go())
    assert tools.ran == ["weather:Oslo"]
    (row,) = cli_json(db, "runs")["runs"]
    assert (row["run_id"], row["stop_reason"], row["tool_calls"]) == (
        result.run_id,
        "tool_denied",
        1,
    )
    shown = cli_json(db, "show", result.run_id)
    assert shown["run"]["stop_reason"] == "tool_denied"
    kinds = [e["kind"] for e in shown["timeline"]]
    assert "model_call" in kinds and "tool_call" in kinds and "denied" in kinds
    verified = cli_json(db, "audit", "verify")
    assert verified["ok"] is True and verified["checked"] > 0


# -- the rest of the adapter ------------------------------------------------------------
def test_a_tool_that_raises_stops_the_run_with_tool_error() -> None:
    """A failing tool is reported to corral (not turned into text by the SDK): the run
    stops with tool_error, retryable, and the attempt is charged."""

    @function_tool
    def flaky(q: str) -> str:
        """Fails."""
        raise ConnectionError("vendor down")

    model = ScriptedModel([turn(call("flaky", "c1", q="x")), say("done")])
    agent = Agent(name="a", model=model, tools=[flaky])
    allow = corral.Policy.from_dict({"tools": {"allow": ["flaky"], "specs": {"flaky": READ}}})

    async def go() -> tuple[corral.RunResult, RunStopped]:
        async with corral.AsyncRun(allow, tools=tools_of(agent), store="memory://") as run:
            with pytest.raises(RunStopped) as stopped:
                await governed_run(agent, run, "go")
        return run.result, stopped.value

    result, stopped = asyncio.run(go())
    assert (stopped.reason, stopped.detail, stopped.retryable) == ("tool_error", "flaky", True)
    assert result.stop_reason == "tool_error" and result.usage.tool_calls == 1


def test_invalid_arguments_go_back_to_the_model_and_the_run_goes_on() -> None:
    """Arguments the tool's schema refuses are handed back to the model as the call's
    output (corral's message); the model fixes them and the run ends ok."""
    tools = Counted()
    model = ScriptedModel([turn(function_call("get_weather", '{"town": 3}', call_id="c1")),
                           turn(call("get_weather", "c2", city="Rome")), say("sunny")])  # fmt: skip
    agent = tools.agent(model)

    async def go() -> corral.RunResult:
        async with corral.AsyncRun(policy(), tools=tools_of(agent), store="memory://") as run:
            result = await governed_run(agent, run, "weather")
            await run.finish(result.final_output)
        return run.result

    result = asyncio.run(go())
    told = [i["output"] for i in model.calls[1].input if i.get("type") == "function_call_output"]
    assert len(told) == 1 and "city" in told[0]
    assert tools.ran == ["weather:Rome"] and result.stop_reason == "ok"


def test_a_handoffs_agent_is_governed_by_the_same_run() -> None:
    """The agent handed off to gets governed tools too: its tool call counts in the run,
    and its denied tool is not offered."""
    tools = Counted()
    model = ScriptedModel([turn(call("transfer_to_support", "h1")),
                           turn(call("get_weather", "c1", city="Lima")), say("sunny")])  # fmt: skip
    support = tools.agent(model)
    triage = Agent(name="triage", model=model, handoffs=[support])

    async def go() -> corral.RunResult:
        async with corral.AsyncRun(policy(), tools=tools_of(triage), store="memory://") as run:
            result = await governed_run(triage, run, "weather in Lima")
            await run.finish(result.final_output)
        return run.result

    result = asyncio.run(go())
    assert tools.ran == ["weather:Lima"] and result.usage.tool_calls == 1
    assert offered(model, 1) == ["get_weather", "refund__send"]
    assert result.usage.steps == 3  # three governed model calls


def test_a_streamed_run_settles_its_model_calls_from_the_completed_event() -> None:
    """Runner.run_streamed works governed: each streamed model call is settled with the
    usage of its response.completed event."""
    tools = Counted()
    model = ScriptedModel([turn(call("get_weather", "c1", city="Nice"), i=70, o=7),
                           turn(assistant_message("sunny"), i=90, o=3)])  # fmt: skip
    agent = tools.agent(model)

    async def go() -> corral.RunResult:
        async with corral.AsyncRun(policy(), tools=tools_of(agent), store="memory://") as run:
            streamed = Runner.run_streamed(
                govern(agent, run), "weather", run_config=run_config(run)
            )
            async for _ in streamed.stream_events():
                pass
            await run.finish(streamed.final_output)
        return run.result

    result = asyncio.run(go())
    assert result.answer == "sunny" and tools.ran == ["weather:Nice"]
    assert (result.usage.input_tokens, result.usage.output_tokens) == (160, 10)


def test_run_config_governs_a_model_resolved_by_name_through_the_provider() -> None:
    """An agent whose model is a name is governed through run_config's provider; without
    it, the first tool call refuses to run an ungoverned model's call."""
    from agents import ModelProvider

    tools = Counted()
    script = [turn(call("get_weather", "c1", city="Bern")), say("sunny")]

    class Provider(ModelProvider):
        def __init__(self) -> None:
            self.model = ScriptedModel(script)

        def get_model(self, model_name: str | None) -> Any:
            return self.model

    async def go(config: bool) -> corral.RunResult:
        agent = tools.agent(None)  # type: ignore[arg-type]
        agent = agent.clone(model="scripted")
        async with corral.AsyncRun(policy(), tools=tools_of(agent), store="memory://") as run:
            base = RunConfig(model_provider=Provider())
            cfg = run_config(run, base) if config else base
            result = await Runner.run(govern(agent, run), "weather", run_config=cfg)
            await run.finish(result.final_output)
        return run.result

    assert asyncio.run(go(True)).usage.steps == 2 and tools.ran == ["weather:Bern"]
    with pytest.raises(Exception, match="not governed"):
        asyncio.run(go(False))
    assert tools.ran == ["weather:Bern"]


def test_run_stopped_is_the_sdks_exception_and_corrals_stop_and_pickles() -> None:
    """RunStopped is an AgentsException and a corral.Stop, and crosses processes whole."""
    stop = RunStopped(corral.Stop("max_usd", "run", limit=1, observed=2))
    again = pickle.loads(pickle.dumps(stop))
    assert isinstance(again, AgentsException) and isinstance(again, corral.Stop)
    assert (again.reason, again.detail, str(again)) == ("max_usd", "run", str(stop))


def test_the_example_runs_offline_and_prints_the_answer_and_the_stop_reason() -> None:
    """examples/integrations/openai_agents_agent.py runs with the SDK's scripted model."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "integrations" / "openai_agents_agent.py")],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": path, "CORRAL_DB": "memory://"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == ["The weather in Tokyo is sunny.", "stop reason: ok"]
