"""The bounded loop (``corral.run``, ``corral.arun``): turns, tool calls, context, both faces."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import pytest

import corral
from corral.loop.context import DROPPED
from corral.testing import MemoryStore, ScriptedModel, call, final, raw_call, turn

executed: list[tuple[str, str]] = []


@corral.tool(name="search.read", effect="read")
def search(query: str) -> str:
    """Search the knowledge base."""
    executed.append(("search.read", query))
    return f"results for {query}"


@corral.tool(name="kb.read", effect="read")
def kb(topic: str) -> dict[str, Any]:
    """Read an article."""
    executed.append(("kb.read", topic))
    return {"topic": topic, "body": "text"}


@corral.tool(name="browser.open", effect="read")
def browser(url: str) -> str:
    """Open a page (registered, never allowed here)."""
    executed.append(("browser.open", url))
    return "page"


TOOLS = [search, kb, browser]


@pytest.fixture(autouse=True)
def _clear_executed() -> None:
    executed.clear()


def policy(**sections: Any) -> corral.Policy:
    data: dict[str, Any] = {"tools": {"allow": ["search.read", "kb.read"]}}
    data.update(sections)
    return corral.Policy.from_dict(data)


def run_loop(model: ScriptedModel, pol: corral.Policy | None = None, **kw: Any) -> corral.RunResult:
    kw.setdefault("store", MemoryStore())
    kw.setdefault("tools", TOOLS)
    return corral.run("find the vendor status", model=model, policy=pol or policy(), **kw)


def tool_messages(request: corral.ModelRequest) -> list[dict[str, Any]]:
    return [dict(m) for m in request.messages if m["role"] == "tool"]


# -- tool calls within a turn ---------------------------------------------------------------


def test_several_tool_calls_in_one_turn_pass_the_gateway_in_order() -> None:
    """Calls in one turn run in the order the model gave, and their results come back in order."""
    model = ScriptedModel(
        [
            turn(
                call("kb.read", topic="outage"),
                call("search.read", query="status"),
                call("kb.read", topic="sla"),
            ),
            final("done"),
        ]
    )
    result = run_loop(model)
    assert result.stop_reason == "ok"
    assert executed == [("kb.read", "outage"), ("search.read", "status"), ("kb.read", "sla")]
    assert result.usage.tool_calls == 3 and result.usage.steps == 2
    results = tool_messages(model.requests[1])
    assert [m["name"] for m in results] == ["kb.read", "search.read", "kb.read"]
    assert results[1]["content"] == "results for status"
    assert json.loads(results[0]["content"]) == {"body": "text", "topic": "outage"}


def test_tool_results_answer_the_assistants_call_ids() -> None:
    """Each tool message answers the id of the call the assistant message carries."""
    model = ScriptedModel(
        [turn(call("kb.read", topic="a"), call("kb.read", topic="b")), final("done")]
    )
    run_loop(model)
    messages = model.requests[1].messages
    assistant = next(m for m in messages if m["role"] == "assistant")
    ids = [c["id"] for c in assistant["tool_calls"]]
    assert [c["name"] for c in assistant["tool_calls"]] == ["kb.read", "kb.read"]
    assert [m["tool_call_id"] for m in tool_messages(model.requests[1])] == ids


def test_a_stop_skips_the_rest_of_the_turn_and_records_them() -> None:
    """When a call stops the run, the turn's remaining calls never run and are recorded skipped."""
    store = MemoryStore()
    model = ScriptedModel(
        [
            turn(
                call("search.read", query="a"),
                call("kb.read", topic="b"),
                call("search.read", query="c"),
                call("kb.read", topic="d"),
            ),
            final("never"),
        ]
    )
    result = run_loop(model, policy(budgets={"max_tool_calls": 1}), store=store)
    assert str(result.stop) == "max_tool_calls:run (limit 1, would be 2)"
    assert executed == [("search.read", "a")]
    skipped = [e for e in store.events(result.run_id) if e.kind == "skipped"]
    assert [e.data["tools"] for e in skipped] == [["search.read", "kb.read"]]
    kinds = [e.kind for e in store.events(result.run_id)]
    assert kinds.index("skipped") < kinds.index("run_end")


def test_a_denied_call_in_a_turn_skips_the_rest() -> None:
    """A denial mid-turn stops the run before the calls after it."""
    model = ScriptedModel(
        [
            turn(
                call("kb.read", topic="a"),
                call("browser.open", url="https://x.test"),
                call("search.read", query="c"),
            ),
            final("never"),
        ]
    )
    result = run_loop(model)
    assert str(result.stop) == "tool_denied:browser.open"
    assert executed == [("kb.read", "a")]


# -- mistakes handed back to the model ----------------------------------------------------------


def test_invalid_arguments_are_handed_back_as_an_error_message() -> None:
    """Invalid arguments come back to the model as an ERROR tool message; it may retry."""
    model = ScriptedModel(
        [call("search.read", q="wrong name"), call("search.read", query="right"), final("done")]
    )
    result = run_loop(model)
    assert result.stop_reason == "ok"
    (error,) = tool_messages(model.requests[1])
    assert error["content"].startswith("ERROR: Invalid arguments for search.read:")
    assert "query" in error["content"]
    assert executed == [("search.read", "right")]
    assert result.usage.tool_calls == 1  # the invalid call was not charged


def test_unparsable_arguments_are_handed_back_as_an_error_message() -> None:
    """Arguments that are not JSON come back as an ERROR naming the problem."""
    model = ScriptedModel([raw_call("kb.read", "{topic: outage"), final("done")])
    run_loop(model)
    (error,) = tool_messages(model.requests[1])
    assert error["content"].startswith("ERROR: ") and "not valid JSON" in error["content"]


def test_an_unknown_tool_is_handed_back_with_the_tools_on_offer() -> None:
    """A tool name no code registered comes back as an ERROR listing the tools on offer."""
    model = ScriptedModel([call("vendor.status"), final("done")])
    result = run_loop(model)
    assert result.stop_reason == "ok"
    (error,) = tool_messages(model.requests[1])
    assert error["content"].startswith("ERROR: ")
    assert "'vendor.status'" in error["content"]
    assert "Tools on offer: kb.read, search.read" in error["content"]


def test_invalid_calls_are_bounded_then_stop_the_run() -> None:
    """After tools.max_invalid_args mistakes, the next one stops the run."""
    model = ScriptedModel([call("search.read", q="x")], repeat_last=True)
    result = run_loop(model, policy(tools={"allow": ["search.read"], "max_invalid_args": 1}))
    assert str(result.stop) == "invalid_tool_args:search.read"
    assert len(model.requests) == 2


def test_a_denial_is_handed_back_when_the_policy_says_tell_model() -> None:
    """With tools.on_denied: tell_model, a denied call is an ERROR message, not a stop."""
    model = ScriptedModel([call("browser.open", url="https://x.test"), final("done")])
    pol = policy(tools={"allow": ["search.read", "kb.read"], "on_denied": "tell_model"})
    result = run_loop(model, pol)
    assert result.stop_reason == "ok"
    (error,) = tool_messages(model.requests[1])
    assert error["content"].startswith("ERROR: ")
    assert "browser.open" in error["content"] and "kb.read, search.read" in error["content"]
    assert executed == []


# -- the pinned prompt and the context window -----------------------------------------------------


def test_the_system_prompt_names_the_tools_on_offer_and_the_budgets() -> None:
    """The first message is a system prompt listing the tools on offer and the run's budgets."""
    model = ScriptedModel([final("done")])
    run_loop(model, policy(budgets={"max_steps": 7, "max_usd": 3}), instructions="Be brief.")
    system, task = model.requests[0].messages[:2]
    assert system["role"] == "system"
    assert "kb.read, search.read" in system["content"]
    assert "browser.open" not in system["content"]
    assert "7 steps" in system["content"] and "$3" in system["content"]
    assert system["content"].endswith("Be brief.")
    assert task == {"role": "user", "content": "find the vendor status"}
    assert [t["name"] for t in model.requests[0].tools] == ["kb.read", "search.read"]


def test_a_long_run_keeps_the_prompt_and_task_and_drops_the_oldest_observations_first() -> None:
    """System prompt and task go unchanged every turn; the oldest observations go first."""

    @corral.tool(name="search.read", effect="read")
    def big_search(query: str) -> str:
        return f"{query}:" + "x" * 1500

    turns = 8
    model = ScriptedModel(
        [call("search.read", query=f"q{i}") for i in range(turns)] + [final("done")]
    )
    pol = policy(
        tools={"allow": ["search.read"]},
        budgets={"max_steps": 20, "max_tool_calls": 20},
        context={"max_chars": 5000},
    )
    result = run_loop(model, pol, tools=[big_search])
    assert result.stop_reason == "ok"
    first_system, first_task = model.requests[0].messages[:2]
    for request in model.requests:
        assert request.messages[0] == first_system
        assert request.messages[1] == first_task
    last = tool_messages(model.requests[-1])
    assert len(last) == turns
    kept = [m["content"] != DROPPED for m in last]
    # Dropped ones are a prefix: the oldest go first; the latest is always whole.
    assert kept == sorted(kept)
    assert kept[0] is False and kept[-1] is True
    assert last[-1]["content"].startswith(f"q{turns - 1}:")
    for request in model.requests:
        assert sum(len(str(m.get("content") or "")) for m in request.messages) <= 5000


# -- sync and async faces -------------------------------------------------------------------------


def test_sync_run_inside_a_running_event_loop_is_a_clear_config_error() -> None:
    """corral.run() called from a coroutine raises ConfigError pointing to arun."""
    model = ScriptedModel([final("done")])

    async def main() -> None:
        with pytest.raises(corral.ConfigError, match=r"await corral\.arun"):
            corral.run("task", model=model, policy=policy(), store=MemoryStore())

    asyncio.run(main())
    assert model.requests == []


def _comparable(result: corral.RunResult) -> dict[str, Any]:
    data = result.to_dict()
    data.pop("run_id")
    data["usage"].pop("active_seconds")
    data["usage"].pop("waiting_seconds")
    return data


def _script() -> list[Any]:
    return [
        turn(call("search.read", query="a"), call("kb.read", topic="b")),
        call("search.read", q="invalid"),
        call("kb.read", topic="c"),
        final("the vendor is down", input_tokens=50, output_tokens=7),
    ]


def test_run_and_arun_give_the_same_result_for_the_same_script() -> None:
    """The sync and async loops give the same result and send the same requests."""
    script = _script()  # one script: its calls' ids (a process-wide counter) are the same
    sync_model = ScriptedModel(script)
    sync_result = run_loop(sync_model)
    async_model = ScriptedModel(script)
    async_result = asyncio.run(
        corral.arun(
            "find the vendor status",
            model=async_model,
            policy=policy(),
            tools=TOOLS,
            store=MemoryStore(),
        )
    )
    assert sync_result.stop_reason == "ok"
    assert _comparable(sync_result) == _comparable(async_result)

    assert len(sync_model.requests) == len(async_model.requests) == 4
    for sent, also_sent in zip(sync_model.requests, async_model.requests, strict=True):
        assert _without_ids(sent) == _without_ids(also_sent)


def _without_ids(request: corral.ModelRequest) -> dict[str, Any]:
    """A request with the scripted call ids numbered by position (ids differ per script)."""
    ids: dict[str, str] = {}
    messages = []
    for m in request.messages:
        m = dict(m)
        if "tool_calls" in m:
            m["tool_calls"] = [
                {**c, "id": ids.setdefault(c["id"], f"id{len(ids)}")} for c in m["tool_calls"]
            ]
        if "tool_call_id" in m:
            m["tool_call_id"] = ids[m["tool_call_id"]]
        messages.append(m)
    return {"messages": messages, "tools": list(request.tools), "max_tokens": request.max_tokens}


def test_run_and_arun_give_the_same_stop_for_the_same_script() -> None:
    """A stopped run has the same stop in both faces."""
    pol = policy(budgets={"max_tool_calls": 2})
    script = _script()  # one script: its calls' ids (a process-wide counter) are the same
    sync_result = run_loop(ScriptedModel(script), pol)
    async_result = asyncio.run(
        corral.arun(
            "find the vendor status",
            model=ScriptedModel(script),
            policy=pol,
            tools=TOOLS,
            store=MemoryStore(),
        )
    )
    assert str(sync_result.stop) == "max_tool_calls:run (limit 2, would be 3)"
    assert _comparable(sync_result) == _comparable(async_result)


def test_a_model_with_a_plain_respond_method_drives_the_loop() -> None:
    """Any object with a name and a (sync) respond() returning a ModelResponse is a model."""

    class EchoModel:
        name = "echo"
        price = None

        def respond(self, request: corral.ModelRequest) -> corral.ModelResponse:
            return corral.ModelResponse(
                text="echo: " + request.messages[1]["content"], input_tokens=5, output_tokens=3
            )

    result = corral.run("hello", model=EchoModel(), policy=policy(), store=MemoryStore())
    assert (result.stop_reason, result.answer) == ("ok", "echo: hello")
    assert (result.usage.input_tokens, result.usage.output_tokens) == (5, 3)


def test_a_model_returning_something_else_is_invalid_model_output() -> None:
    """A model whose respond() returns no ModelResponse stops with invalid_model_output."""

    class BrokenModel:
        name = "broken"

        async def respond(self, request: corral.ModelRequest) -> Any:
            return {"text": "not a ModelResponse"}

    result = corral.run("hello", model=BrokenModel(), policy=policy(), store=MemoryStore())
    assert str(result.stop) == "invalid_model_output:broken"


def test_a_model_output_error_from_a_custom_model_is_invalid_model_output() -> None:
    """A custom model raising corral.ModelOutputError stops with invalid_model_output."""

    class StrictModel:
        name = "strict"

        def respond(self, request: corral.ModelRequest) -> corral.ModelResponse:
            raise corral.ModelOutputError("the tool call JSON was cut off")

    result = corral.run("hello", model=StrictModel(), policy=policy(), store=MemoryStore())
    assert str(result.stop) == "invalid_model_output:strict"
    assert result.stop is not None and "cut off" in result.stop.message


def test_a_stopped_run_keeps_the_models_last_text_as_partial() -> None:
    """When a run stops, the model's last text is returned as the partial answer."""
    model = ScriptedModel(
        [turn(call("search.read", query="a"), text="Looking it up"), call("search.read", query="b")]
    )
    result = run_loop(model, policy(budgets={"max_steps": 1}))
    assert result.stop_reason == "max_steps"
    assert (result.answer, result.partial) == (None, "Looking it up")


def test_on_run_receives_the_run_as_it_starts() -> None:
    """on_run gets the AsyncRun before the first turn, so the run can be cancelled from a tool."""
    runs: list[corral.AsyncRun] = []

    @corral.tool(name="search.read", effect="read")
    def cancelling(query: str) -> str:
        runs[0].cancel()
        return "cancelled the run"

    model = ScriptedModel([call("search.read", query="a"), final("never")])
    result = run_loop(model, tools=[cancelling], on_run=runs.append)
    assert str(result.stop) == "cancelled:run"
    assert len(model.requests) == 1
    assert runs[0].id == result.run_id


def test_the_loop_has_no_answer_before_a_final_turn() -> None:
    """A script that runs out is invalid_model_output, not a silent ok."""
    result = run_loop(ScriptedModel([call("search.read", query="a")]))
    assert result.stop_reason == "invalid_model_output"


class HangingModel:
    """A model endpoint that never answers in time (real time)."""

    name = "hanging"
    price = None

    async def respond(self, request: corral.ModelRequest) -> corral.ModelResponse:
        await asyncio.sleep(10)
        return corral.ModelResponse(text="too late")  # pragma: no cover


def test_a_hanging_model_is_cut_at_the_runs_deadline() -> None:
    """A model turn is bounded by the time the run has left: max_seconds, barely overshot."""
    started = time.monotonic()
    result = corral.run(
        "t", model=HangingModel(), policy=policy(budgets={"max_seconds": 0.2}), store=MemoryStore()
    )
    elapsed = time.monotonic() - started
    assert result.stop_reason == "max_seconds"
    # The run's own clock starts when it is made (a cold process also imports what the
    # first run uses before that): it is the run's time that must barely overshoot.
    assert result.usage.seconds < 0.2 + 0.1
    assert elapsed < 2  # and nothing waited for the model's 10 s


def test_a_model_slower_than_its_timeout_is_a_model_error() -> None:
    """A model turn longer than models.timeout_seconds fails with a retryable model_error."""
    result = corral.run(
        "t",
        model=HangingModel(),
        policy=policy(models={"timeout_seconds": 0.05}),
        store=MemoryStore(),
    )
    assert str(result.stop) == "model_error:hanging"
    assert result.stop is not None and result.stop.retryable
    assert "TimeoutError" in result.stop.message


def test_calls_without_ids_get_ids_unique_in_the_conversation() -> None:
    """Tool calls a model sends without ids are given ids that never repeat across turns."""
    model = ScriptedModel(
        [
            turn(call("kb.read", topic="a"), call("kb.read", topic="b")),
            call("search.read", query="c"),
            final("done"),
        ]
    )
    model.script = [
        dataclasses.replace(t, calls=tuple(dataclasses.replace(c, id="") for c in t.calls))
        for t in model.script
    ]
    assert run_loop(model).stop_reason == "ok"
    ids = [m["tool_call_id"] for m in tool_messages(model.requests[-1])]
    assert len(ids) == len(set(ids)) == 3
    assistant_ids = [c["id"] for m in model.requests[-1].messages for c in m.get("tool_calls", [])]
    assert assistant_ids == ids


def test_corral_run_keeps_a_clean_event_loop_for_the_next_run_and_closes_a_busy_one() -> None:
    """A run that leaves its event loop as it found it hands it to the thread's next run;
    one that leaves something scheduled on it gets it closed, and the next run a new one."""
    loops: list[asyncio.AbstractEventLoop] = []

    @corral.tool(name="search.read", effect="read")
    async def seen(query: str) -> str:
        loop = asyncio.get_running_loop()
        loops.append(loop)
        if query == "leave":
            loop.call_later(60, lambda: None)  # still scheduled when the run ends
        return "seen"

    policy = corral.Policy.from_dict({"tools": {"allow": ["search.read"]}})
    for query in ("first", "leave", "after"):
        model = ScriptedModel([call("search.read", query=query), final("done")])
        result = corral.run("t", model=model, tools=[seen], policy=policy, store=MemoryStore())
        assert result.status == "ok"
    assert loops[0] is loops[1]
    assert loops[1].is_closed()
    assert loops[2] is not loops[1] and not loops[2].is_running()
