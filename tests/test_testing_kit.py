"""The testing kit's function-driven model and event capture work through the public API."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import pytest

import corral
from corral.models.base import ModelRequest
from corral.record import sinks
from corral.testing import (
    CapturedEvents,
    FunctionModel,
    ScriptedModel,
    Turn,
    call,
    capture_events,
    final,
    malformed,
    prices,
)


@corral.tool(effect="read")
def search(query: str) -> str:
    """Look up the status of a vendor."""
    return f"{query} is up"


POLICY = corral.Policy.from_dict({"tools": {"allow": ["search"]}})


def answer_after_one_search(request: corral.ModelRequest) -> str | Turn:
    """Search first; once the tool answered, repeat what it said."""
    last = request.messages[-1]
    if last["role"] == "tool":
        return f"Found: {last['content']}"
    return call("search", query="vendor")


def test_a_function_model_decides_each_turn_from_the_request() -> None:
    """The function sees each request (the tool's answer included) and its replies drive the run."""
    model = FunctionModel(answer_after_one_search)
    result = corral.run("status?", model=model, tools=[search], policy=POLICY, store="memory://")
    assert (result.stop_reason, result.answer) == ("ok", "Found: vendor is up")
    assert len(model.requests) == 2
    assert result.usage.tool_calls == 1


def test_an_async_function_drives_the_model_too() -> None:
    """An async function is awaited, in a sync run and in an async one."""

    async def reply(request: corral.ModelRequest) -> str | Turn:
        await asyncio.sleep(0)
        return answer_after_one_search(request)

    result = corral.run(
        "status?", model=FunctionModel(reply), tools=[search], policy=POLICY, store="memory://"
    )
    assert result.answer == "Found: vendor is up"
    result = asyncio.run(
        corral.arun(
            "status?", model=FunctionModel(reply), tools=[search], policy=POLICY, store="memory://"
        )
    )
    assert result.answer == "Found: vendor is up"


def test_usage_is_estimated_and_charged_like_a_scripted_models() -> None:
    """Without usage in the reply, tokens are estimated (within max_tokens) and priced."""
    model = FunctionModel(lambda request: "hello", price=prices(1, 2))
    result = corral.run("hi", model=model, policy=POLICY, store="memory://")
    scripted = ScriptedModel([final("hello")], price=prices(1, 2))
    expected = corral.run("hi", model=scripted, policy=POLICY, store="memory://")
    assert result.usage.input_tokens == expected.usage.input_tokens > 0
    assert result.usage.output_tokens == expected.usage.output_tokens > 0
    assert result.usage.usd == expected.usage.usd > Decimal(0)


def test_a_model_response_is_taken_as_given() -> None:
    """A ModelResponse reply keeps its own usage figures."""
    model = FunctionModel(
        lambda request: corral.ModelResponse(text="ok", input_tokens=7, output_tokens=3)
    )
    result = corral.run("hi", model=model, policy=POLICY, store="memory://")
    assert (result.answer, result.usage.input_tokens, result.usage.output_tokens) == ("ok", 7, 3)


def test_tool_calls_without_ids_get_fresh_ones() -> None:
    """A list of ToolCallRequests is one turn; calls without an id are given distinct ids."""
    replies = iter(
        [
            [
                corral.ToolCallRequest(name="search", arguments={"query": "a"}),
                corral.ToolCallRequest(name="search", arguments={"query": "b"}),
            ],
            "done",
        ]
    )
    model = FunctionModel(lambda request: next(replies))
    result = corral.run("hi", model=model, tools=[search], policy=POLICY, store="memory://")
    assert (result.stop_reason, result.usage.tool_calls) == ("ok", 2)
    tool_messages = [m for m in model.requests[-1].messages if m["role"] == "tool"]
    ids = [m["tool_call_id"] for m in tool_messages]
    assert len(ids) == 2 and len(set(ids)) == 2 and all(ids)


def test_what_the_function_raises_or_returns_wrongly_stops_the_run() -> None:
    """A malformed turn is invalid_model_output; an exception or a reply of the wrong type
    is model_error, naming the type."""
    result = corral.run(
        "hi", model=FunctionModel(lambda r: malformed()), policy=POLICY, store="memory://"
    )
    assert result.stop_reason == "invalid_model_output"

    def broken(request: corral.ModelRequest) -> str:
        raise ConnectionError("down")

    result = corral.run("hi", model=FunctionModel(broken), policy=POLICY, store="memory://")
    assert result.stop_reason == "model_error"
    result = corral.run("hi", model=FunctionModel(lambda r: 42), policy=POLICY, store="memory://")
    assert result.stop_reason == "model_error"
    assert result.stop is not None and "int" in result.stop.message


def test_a_function_model_needs_a_function() -> None:
    """Building one from something that cannot be called is a TypeError at once."""
    with pytest.raises(TypeError, match="needs a function"):
        FunctionModel("hello")  # type: ignore[arg-type]


def test_capture_events_sees_a_run_created_inside_the_block() -> None:
    """Every event a run writes is captured, in order, and can be picked by kind or run."""
    with capture_events() as events, corral.Run(POLICY, tools=[search], store="memory://") as run:
        run.call("search", {"query": "vendor"})
    assert isinstance(events, CapturedEvents)
    assert events.kinds()[0] == "run_start" and events.kinds()[-1] == "run_end"
    assert [e.data["tool"] for e in events.of("tool_call")] == ["search"]
    assert events.run_ids() == [run.id]
    assert list(events.for_run(run.id)) == list(events)
    assert len(events.for_run("someone-else")) == 0
    assert events[0].run_id == run.id and events[-1].kind == "run_end"


def test_capture_events_keeps_runs_apart_and_stops_at_the_end_of_the_block() -> None:
    """Two runs are told apart by run id; nothing is captured after the block, whose sink
    is removed even when the block raises."""
    before = list(sinks.SINKS)
    with pytest.raises(RuntimeError), capture_events() as events:
        first = corral.run("a", model=ScriptedModel([final("a")]), policy=POLICY, store="memory://")
        second = corral.run(
            "b", model=ScriptedModel([final("b")]), policy=POLICY, store="memory://"
        )
        raise RuntimeError("the test failed")
    assert before == list(sinks.SINKS)
    assert events.run_ids() == [first.run_id, second.run_id]
    assert [e.data["stop_reason"] for e in events.for_run(second.run_id).of("run_end")] == ["ok"]
    seen = len(events)
    corral.run("c", model=ScriptedModel([final("c")]), policy=POLICY, store="memory://")
    assert len(events) == seen


def test_nested_captures_each_see_the_events() -> None:
    """An inner capture does not take events away from an outer one."""
    with capture_events() as outer:
        with capture_events() as inner:
            corral.run("a", model=ScriptedModel([final("a")]), policy=POLICY, store="memory://")
        corral.run("b", model=ScriptedModel([final("b")]), policy=POLICY, store="memory://")
    assert len(inner.run_ids()) == 1
    assert len(outer.run_ids()) == 2


def test_the_scripted_models_estimate_is_the_requests_json_as_the_conversation_grows() -> None:
    """Measuring each message once, the scripted model still estimates a turn's input as a
    quarter of the whole request's JSON, turn after turn."""
    model = ScriptedModel([final("a")], repeat_last=True)
    tools = [{"name": "kb.read", "description": "Read ü", "parameters": {"type": "object"}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "task é"}]
    for i in range(6):
        request = ModelRequest(messages=list(messages), tools=tools, max_tokens=50)
        response = asyncio.run(model.respond(request))
        body = json.dumps([list(request.messages), list(request.tools)], default=str)
        assert response.input_tokens == max(1, len(body) // 4)
        messages.append({"role": "tool", "content": "x" * i, "tool_call_id": f"c{i}"})
        if i == 3:  # the tools on offer change
            tools = [*tools, {"name": "kb.search", "description": "", "parameters": {}}]
