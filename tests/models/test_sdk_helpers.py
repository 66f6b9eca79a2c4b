"""The official openai and anthropic SDKs against the local servers, governed in one line."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import openai
import pytest
from servers import AnthropicServer, OpenAIServer, Turn, calls, text

import corral
from corral.integrations.anthropic import create_message
from corral.integrations.openai import achat_completion, chat_completion, settle_from_response
from corral.models import ModelRequest
from corral.models.openai import OpenAIModel
from corral.testing import MemoryStore


@corral.tool(name="search.read", effect="read")
def search(query: str) -> str:
    """Search the knowledge base."""
    return f"results for {query}"


PRICED = {
    "tools": {"allow": ["search.read"]},
    "budgets": {"max_usd": 0.05},
    "models": {"prices": {"test-model": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2}}},
}


def new_run() -> corral.Run:
    return corral.Run(corral.Policy.from_dict(PRICED), tools=[search], store=MemoryStore())


def openai_client(server: OpenAIServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-test", max_retries=0)


def test_a_user_loop_on_the_openai_client_is_governed(openai_server: OpenAIServer) -> None:
    """The official client's requests pass the server's checks and its answers parse; each
    call is reserved, sent with the clamped max_tokens, and settled to the reported usage."""
    openai_server.push(
        Turn(calls=(("search__read", {"query": "vendor"}),), usage=(120, 30)),
        Turn(text="vendor is up", usage=(200, 8)),
    )
    with new_run() as run, openai_client(openai_server) as client:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "vendor status?"}]
        tools = run.tool_specs("openai")
        while True:
            response = chat_completion(
                run, client, model="test-model", messages=messages, tools=tools, max_tokens=500
            )
            message = response.choices[0].message
            if not message.tool_calls:
                run.finish(message.content)
                break
            messages.append(message.model_dump(exclude_none=True))
            for tc in message.tool_calls:
                args = json.loads(tc.function.arguments)
                out = run.call(run.tool_name(tc.function.name), args)
                messages.append({"role": "tool", "tool_call_id": tc.id, "content": out})
    result = run.result
    assert (result.stop_reason, result.answer) == ("ok", "vendor is up")
    assert (result.usage.steps, result.usage.tool_calls) == (2, 1)  # two model turns
    assert (result.usage.input_tokens, result.usage.output_tokens) == (320, 38)
    assert [b["max_tokens"] for b in openai_server.bodies] == [500, 500]


def test_the_adapter_body_is_what_the_openai_client_accepts(openai_server: OpenAIServer) -> None:
    """Every field the adapter sends is a keyword the official client's create() takes."""
    openai_server.push(text("ok"))
    adapter = OpenAIModel("test-model", base_url=f"{openai_server.url}/v1")
    request = ModelRequest(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "c1", "name": "search.read", "arguments": "{}"}],
            },
            {"role": "tool", "tool_call_id": "c1", "name": "search.read", "content": "x"},
        ],
        tools=[search.spec()],
        max_tokens=64,
    )
    body = adapter.body(request)
    with openai_client(openai_server) as client:
        response = client.chat.completions.create(**body)
    assert response.choices[0].message.content == "ok"
    assert openai_server.bodies[0] == body


def test_the_async_openai_client_is_governed(openai_server: OpenAIServer) -> None:
    """achat_completion reserves, sends the clamped max_tokens and settles, under AsyncRun."""
    openai_server.push(Turn(text="ok", usage=(10, 3)))
    pol = corral.Policy.from_dict(dict(PRICED, budgets={"max_output_tokens": 40}))

    async def go() -> corral.RunResult:
        async with (
            corral.AsyncRun(pol, store=MemoryStore()) as run,
            openai.AsyncOpenAI(
                base_url=f"{openai_server.url}/v1", api_key="sk-test", max_retries=0
            ) as client,
        ):
            messages = [{"role": "user", "content": "hi"}]
            await achat_completion(run, client, model="test-model", messages=messages)
        return run.result

    result = asyncio.run(go())
    assert (result.usage.input_tokens, result.usage.output_tokens) == (10, 3)
    assert openai_server.bodies[0]["max_tokens"] == 40


def test_a_truncated_sdk_answer_stops_the_run(openai_server: OpenAIServer) -> None:
    """finish_reason length from the SDK call stops the run with invalid_model_output."""
    openai_server.push(Turn(calls=(("search__read", {"query": "x"}),), truncated=True))
    with new_run() as run, openai_client(openai_server) as client:
        chat_completion(
            run, client, model="test-model", messages=[{"role": "user", "content": "x"}]
        )
        raise AssertionError("not reached: the run stopped")
    assert str(run.result.stop) == "invalid_model_output:test-model (truncated)"
    assert run.result.usage.output_tokens > 0  # the truncated answer was billed and recorded


def test_a_failing_sdk_call_is_model_error(openai_server: OpenAIServer) -> None:
    """An exception from the client inside the helper stops the run with model_error."""
    openai_server.push(Turn(status=503, error="down"))
    with new_run() as run, openai_client(openai_server) as client:
        chat_completion(
            run, client, model="test-model", messages=[{"role": "user", "content": "x"}]
        )
    assert run.result.stop_reason == "model_error"
    assert run.result.usage.tokens == 0


def test_streaming_through_the_helper_is_refused() -> None:
    """stream=True is a setup error with a clear message, before anything is reserved."""
    with new_run() as run, pytest.raises(corral.ConfigError, match="streaming is not supported"):
        chat_completion(run, object(), model="test-model", messages=[], stream=True)


def test_a_response_without_usage_is_charged_the_worst_case() -> None:
    """settle_from_response leaves a usage-less answer unsettled: the block charges the hold."""
    with new_run() as run:
        with run.model_call(model="test-model", input_tokens=100, max_tokens=50) as mc:
            settle_from_response(mc, {"choices": []})
        run.finish()
    assert (run.result.usage.input_tokens, run.result.usage.output_tokens) == (100, 50)


def test_the_anthropic_client_is_governed(anthropic_server: AnthropicServer) -> None:
    """create_message reserves, sends the clamped max_tokens and settles the reported usage,
    cache reads included, with the official anthropic client."""
    anthropic_server.push(calls(("search__read", {"query": "v"})), text("done", usage=(50, 5)))
    client = anthropic.Anthropic(base_url=anthropic_server.url, api_key="k", max_retries=0)
    with new_run() as run, client:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "status?"}]
        tools = run.tool_specs("anthropic")
        first = create_message(
            run, client, model="test-model", system="be brief", messages=messages, tools=tools
        )
        (use,) = [b for b in first.content if b.type == "tool_use"]
        out = run.call(run.tool_name(use.name), use.input)
        messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
        messages.append(
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": out}],
            }
        )
        final = create_message(run, client, model="test-model", messages=messages, tools=tools)
        run.finish(final.content[0].text)
    assert (run.result.stop_reason, run.result.answer) == ("ok", "done")
    assert [b["max_tokens"] for b in anthropic_server.bodies] == [1024, 1024]
    assert anthropic_server.bodies[0]["system"] == "be brief"
    assert run.result.usage.output_tokens >= 5


def test_settling_from_a_stream_is_refused() -> None:
    """A streamed SDK response has no usage: settling from it stops the run, saying why."""
    with (
        new_run() as run,
        run.model_call(model="test-model", input_tokens=10, max_tokens=10) as mc,
    ):
        settle_from_response(mc, iter([]))
    assert run.result.stop_reason == "model_error"
    assert run.result.stop is not None and "streaming is not supported" in run.result.stop.message
