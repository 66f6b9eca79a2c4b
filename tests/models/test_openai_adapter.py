"""The OpenAI-compatible adapter against a local chat-completions server, over real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import httpx
import pytest
from servers import OpenAIServer, Turn, calls, fail, text

import corral
from corral.models import ModelAPIError, ModelRequest, RetryBudget, RetryPolicy
from corral.models.base import input_token_bound
from corral.models.openai import OpenAIModel
from corral.testing import MemoryStore, prices

FAST = RetryPolicy(max_attempts=3, backoff=0.01, max_backoff=0.02)


@corral.tool(name="search.read", effect="read")
def search(query: str) -> str:
    """Search the knowledge base."""
    return f"results for {query}"


@corral.tool(name="kb.read", effect="read")
def kb(q: str) -> str:
    """Read a knowledge-base article."""
    return f"article {q}"


@corral.tool(name="browser.open", effect="read")
def browser(url: str) -> str:
    """Open a page (never allowed here)."""
    raise AssertionError("a tool that was not offered must never run")


def policy(**sections: Any) -> corral.Policy:
    data: dict[str, Any] = {"tools": {"allow": ["search.read", "kb.read"]}}
    data.update(sections)
    return corral.Policy.from_dict(data)


def model(server: OpenAIServer, **kw: Any) -> OpenAIModel:
    kw.setdefault("retry", FAST)
    kw.setdefault("price", prices(1, 2))
    return OpenAIModel("test-model", base_url=f"{server.url}/v1", **kw)


def run(server: OpenAIServer, pol: corral.Policy | None = None, **kw: Any) -> corral.RunResult:
    return corral.run(
        "what is the vendor status?",
        model=kw.pop("model", None) or model(server),
        tools=[search, kb, browser],
        policy=pol or policy(),
        store=MemoryStore(),
        **kw,
    )


def test_a_tool_call_round_trips_through_the_gateway(openai_server: OpenAIServer) -> None:
    """A wire-named tool call runs the dotted tool, and its result goes back as a tool message."""
    openai_server.push(calls(("search__read", {"query": "vendor"})), text("vendor is up"))
    result = run(openai_server)
    assert (result.stop_reason, result.answer, result.usage.tool_calls) == ("ok", "vendor is up", 1)
    first, second = openai_server.bodies
    assert [t["function"]["name"] for t in first["tools"]] == ["kb__read", "search__read"]
    assistant, tool = second["messages"][-2:]
    (call,) = assistant["tool_calls"]
    assert call["function"] == {"name": "search__read", "arguments": '{"query": "vendor"}'}
    assert tool == {"role": "tool", "tool_call_id": call["id"], "content": "results for vendor"}


def test_parallel_tool_calls_pass_the_gateway_in_order(openai_server: OpenAIServer) -> None:
    """Several tool calls in one turn run in the order the model gave, each answered."""
    openai_server.push(
        calls(("kb__read", {"q": "a"}), ("search__read", {"query": "b"})), text("done")
    )
    result = run(openai_server)
    assert result.stop_reason == "ok" and result.usage.tool_calls == 2
    messages = openai_server.bodies[1]["messages"]
    assert [m["content"] for m in messages if m["role"] == "tool"] == ["article a", "results for b"]
    assert result.usage.tool_calls_by_tool == {"kb.read": 1, "search.read": 1}


def test_only_names_that_were_offered_are_mapped_back(openai_server: OpenAIServer) -> None:
    """A wire name the run did not offer stays as sent: an unknown tool, never the dotted one."""
    openai_server.push(calls(("browser__open", {"url": "https://x.test"})), text("gave up"))
    result = run(openai_server)
    assert result.stop_reason == "ok"
    tool_message = openai_server.bodies[1]["messages"][-1]
    assert tool_message["content"].startswith("ERROR:")
    assert "browser__open" in tool_message["content"]


def test_max_tokens_on_the_wire_is_the_clamped_value(openai_server: OpenAIServer) -> None:
    """The body's max_tokens is what the USD budget leaves after the input bound."""
    openai_server.push(text("ok"))
    pol = policy(budgets={"max_usd": 0.002})
    messages = [{"role": "user", "content": "hello"}]

    async def turn() -> int:
        async with corral.AsyncRun(pol, store=MemoryStore()) as r:
            await r.model_turn(model(openai_server), messages, tools=[])
        return openai_server.bodies[0]["max_tokens"]

    sent = asyncio.run(turn())
    bound = input_token_bound(messages, [])
    left = Decimal("0.002") - Decimal(bound) / 1_000_000
    expected = int((left * 1_000_000 / 2).to_integral_value(ROUND_FLOOR))
    assert sent == expected < 1024


def test_max_completion_tokens_can_carry_the_clamped_value(openai_server: OpenAIServer) -> None:
    """With max_tokens_field=max_completion_tokens the clamp is sent under that name only."""
    openai_server.push(text("ok"))
    m = model(openai_server, max_tokens_field="max_completion_tokens")
    result = run(openai_server, policy(budgets={"max_output_tokens": 100}), model=m)
    assert result.stop_reason == "ok"
    body = openai_server.bodies[0]
    assert body["max_completion_tokens"] == 100 and "max_tokens" not in body


def test_the_request_timeout_is_the_clamped_model_timeout() -> None:
    """model_flow hands the model the call's timeout: models.timeout_seconds, within the run."""
    seen: list[ModelRequest] = []

    class Probe:
        name = "probe"
        price = prices(0, 0)

        async def respond(self, request: ModelRequest) -> corral.ModelResponse:
            seen.append(request)
            return corral.ModelResponse(text="ok", input_tokens=1, output_tokens=1)

    pol = policy(models={"timeout_seconds": 7}, budgets={"max_seconds": 20})
    corral.run("t", model=Probe(), policy=pol, store=MemoryStore())
    assert seen[0].timeout is not None and 6.5 < seen[0].timeout <= 7
    pol = policy(models={"timeout_seconds": 60}, budgets={"max_seconds": 2})
    corral.run("t", model=Probe(), policy=pol, store=MemoryStore())
    assert seen[1].timeout is not None and 1.5 < seen[1].timeout <= 2


def test_a_429_is_retried_after_its_retry_after(openai_server: OpenAIServer) -> None:
    """A 429 with Retry-After is retried once that wait has passed."""
    openai_server.push(fail(429, retry_after="0.3"), text("ok"))
    started = time.monotonic()
    result = run(openai_server)
    assert result.stop_reason == "ok"
    assert time.monotonic() - started >= 0.3
    assert len(openai_server.requests) == 2


def test_retry_after_past_the_deadline_ends_the_call_at_once(openai_server: OpenAIServer) -> None:
    """A Retry-After that would end past the call's deadline is not slept: model_error now."""
    openai_server.push(fail(429, retry_after="5", error="rate limited"))
    started = time.monotonic()
    result = run(openai_server, policy(models={"timeout_seconds": 2}))
    assert time.monotonic() - started < 1.0
    assert result.stop_reason == "model_error" and result.stop is not None
    assert "429" in result.stop.message and "rate limited" in result.stop.message
    assert len(openai_server.requests) == 1


def test_retry_after_longer_than_the_cap_is_not_waited(openai_server: OpenAIServer) -> None:
    """A Retry-After above RetryPolicy.max_retry_after ends the call instead of waiting."""
    openai_server.push(fail(503, retry_after="3"))
    retry = RetryPolicy(max_retry_after=1.0, backoff=0.01)
    started = time.monotonic()
    result = run(openai_server, model=model(openai_server, retry=retry))
    assert result.stop_reason == "model_error" and time.monotonic() - started < 1.0


def test_server_errors_are_retried_up_to_max_attempts(openai_server: OpenAIServer) -> None:
    """5xx answers are retried; after max_attempts the run stops with model_error."""
    openai_server.push(fail(500), fail(502), fail(500), text("never"))
    result = run(openai_server)
    assert result.stop_reason == "model_error" and result.status == "error"
    assert result.stop is not None and result.stop.retryable
    assert len(openai_server.requests) == 3
    assert result.usage.steps == 1 and result.usage.tokens == 0


def test_a_server_error_then_success_is_one_step(openai_server: OpenAIServer) -> None:
    """A retried call is one step and is settled once, to the successful answer's usage."""
    openai_server.push(fail(500), Turn(text="ok", usage=(100, 10)))
    result = run(openai_server)
    assert result.stop_reason == "ok"
    assert (result.usage.steps, result.usage.input_tokens, result.usage.output_tokens) == (
        1,
        100,
        10,
    )


def test_a_client_error_is_not_retried(openai_server: OpenAIServer) -> None:
    """A 400 (a request the server refuses) is model_error at once, with its message."""
    openai_server.push(fail(400, error="bad request: unknown field"))
    result = run(openai_server)
    assert result.stop_reason == "model_error" and len(openai_server.requests) == 1
    assert result.stop is not None and "unknown field" in result.stop.message


def test_a_timeout_stops_with_model_error_within_the_deadline(openai_server: OpenAIServer) -> None:
    """A server slower than models.timeout_seconds is model_error soon after the timeout."""
    openai_server.push(Turn(text="late", delay=5))
    started = time.monotonic()
    result = run(openai_server, policy(models={"timeout_seconds": 0.4}))
    elapsed = time.monotonic() - started
    assert result.stop_reason == "model_error"
    assert 0.35 < elapsed < 1.0


def test_a_timed_out_attempt_is_retried_within_the_deadline(openai_server: OpenAIServer) -> None:
    """With attempt_timeout below the deadline, a slow attempt is abandoned and retried."""
    openai_server.push(Turn(text="late", delay=3), text("ok"))
    retry = RetryPolicy(attempt_timeout=0.3, backoff=0.01)
    result = run(openai_server, model=model(openai_server, retry=retry))
    assert result.stop_reason == "ok" and result.answer == "ok"
    assert len(openai_server.requests) == 2


def test_an_unreachable_endpoint_is_model_error() -> None:
    """A refused connection is retried, then model_error naming the endpoint."""
    with OpenAIServer() as server:
        url = server.url
    m = OpenAIModel("test-model", base_url=f"{url}/v1", retry=FAST, price=prices(1, 1))
    result = corral.run("t", model=m, policy=policy(), store=MemoryStore())
    assert result.stop_reason == "model_error" and result.stop is not None
    assert "could not be reached" in result.stop.message


def test_the_retry_budget_bounds_retries_across_calls(openai_server: OpenAIServer) -> None:
    """Once the shared retry budget is spent, a failing call is not retried."""
    budget = RetryBudget(ratio=0.0, min_retries=1)
    m = model(openai_server, retry_budget=budget)
    openai_server.push(fail(500), fail(500), fail(500))
    assert run(openai_server, model=m).stop_reason == "model_error"
    assert len(openai_server.requests) == 2  # one retry, the whole budget
    openai_server.push(fail(500), text("never"))
    assert run(openai_server, model=m).stop_reason == "model_error"
    assert len(openai_server.requests) == 3  # no retry left


def test_malformed_json_is_invalid_model_output(openai_server: OpenAIServer) -> None:
    """A 200 whose body is not JSON stops the run with invalid_model_output."""
    openai_server.push(Turn(raw=b'{"choices": [tru'))
    result = run(openai_server)
    assert result.stop_reason == "invalid_model_output"
    assert result.stop is not None and "not JSON" in result.stop.message


def test_an_answer_without_choices_is_invalid_model_output(openai_server: OpenAIServer) -> None:
    """A JSON answer that is not a chat completion is invalid_model_output."""
    openai_server.push(Turn(raw=json.dumps({"object": "list", "data": []}).encode()))
    assert run(openai_server).stop_reason == "invalid_model_output"


def test_a_truncated_tool_call_is_never_executed(openai_server: OpenAIServer) -> None:
    """finish_reason length stops ``invalid_model_output`` (truncated); its usage is charged."""
    openai_server.push(Turn(calls=(("search__read", {"query": "x" * 50}),), truncated=True))
    result = run(openai_server, policy(budgets={"max_output_tokens": 40}))
    assert str(result.stop) == "invalid_model_output:test-model (truncated)"
    assert result.usage.tool_calls == 0
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0


def test_missing_usage_is_charged_as_the_reserved_worst_case(openai_server: OpenAIServer) -> None:
    """An answer without usage settles to the reservation (input bound, clamped max_tokens)."""
    openai_server.push(Turn(text="ok", omit_usage=True))
    result = run(openai_server, policy(budgets={"max_output_tokens": 300}))
    assert result.stop_reason == "ok"
    assert result.usage.output_tokens == 300
    assert result.usage.input_tokens == input_token_bound(
        openai_server.bodies[0]["messages"], [search.spec(), kb.spec()]
    )


def test_streaming_is_refused_with_a_clear_message() -> None:
    """Asking the adapter to stream is a setup error saying why."""
    with pytest.raises(corral.ConfigError, match="streaming is not supported"):
        OpenAIModel("m", options={"stream": True})
    with pytest.raises(corral.ConfigError, match="max_tokens"):
        OpenAIModel("m", options={"max_tokens": 5})


def test_options_are_sent_in_the_body(openai_server: OpenAIServer) -> None:
    """Extra options (temperature, tool_choice) reach the server unchanged."""
    openai_server.push(text("ok"))
    m = model(openai_server, options={"temperature": 0, "tool_choice": "auto"})
    run(openai_server, model=m)
    body = openai_server.bodies[0]
    assert (body["temperature"], body["tool_choice"]) == (0, "auto")


def test_the_api_key_goes_only_where_it_was_given(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OPENAI_API_KEY is never sent to another host; a given key is sent as a bearer token."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    openai_server.push(text("ok"), text("ok"))
    run(openai_server)
    run(openai_server, model=model(openai_server, api_key="sk-given"))
    first, second = (r["headers"] for r in openai_server.requests)
    assert "authorization" not in first
    assert second["authorization"] == "Bearer sk-given"
    assert "sk-given" not in repr(model(openai_server, api_key="sk-given"))


def test_no_api_key_at_openais_address_fails_when_the_model_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At OpenAI's address with no key (variable unset or empty), the constructor raises a
    ConfigError naming OPENAI_API_KEY, not the first call deep in a run."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(corral.ConfigError, match="OPENAI_API_KEY is not set"):
        OpenAIModel("gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", "")
    with pytest.raises(corral.ConfigError, match="OPENAI_API_KEY is empty"):
        OpenAIModel("gpt-4o-mini")


def test_a_model_authenticated_otherwise_needs_no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key is needed from the environment for another address, with an authorization
    header or a client carrying one, or with api_key="" (sent on purpose without one)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    OpenAIModel("llama3.1", base_url="http://127.0.0.1:11434/v1")
    OpenAIModel("gpt-4o-mini", headers={"Authorization": "Bearer sk-header"})
    OpenAIModel("gpt-4o-mini", api_key="")
    client = httpx.AsyncClient(headers={"authorization": "Bearer sk-client"})
    OpenAIModel("gpt-4o-mini", client=client)
    asyncio.run(client.aclose())
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert OpenAIModel("gpt-4o-mini")._headers["authorization"] == "Bearer sk-env"


def test_a_pooled_client_serves_many_calls(openai_server: OpenAIServer) -> None:
    """Inside `async with model`, calls share one client, closed when the block ends."""
    openai_server.push(*(text(f"answer {i}") for i in range(3)))

    async def three() -> list[str | None]:
        async with model(openai_server) as m:
            out = []
            for _ in range(3):
                request = ModelRequest(
                    messages=[{"role": "user", "content": "hi"}], tools=[], max_tokens=50
                )
                out.append((await m.respond(request)).text)
            return out

    assert asyncio.run(three()) == ["answer 0", "answer 1", "answer 2"]


def test_respond_raises_model_api_error_with_the_status(openai_server: OpenAIServer) -> None:
    """Called directly, a failing endpoint raises ModelAPIError with status and attempts."""
    openai_server.push(fail(401, error="invalid api key"))
    request = ModelRequest(messages=[{"role": "user", "content": "hi"}], tools=[], max_tokens=5)
    with pytest.raises(ModelAPIError, match="invalid api key") as caught:
        asyncio.run(model(openai_server).respond(request))
    assert (caught.value.status, caught.value.attempts) == (401, 1)


def test_the_sync_run_drives_the_adapter_turn_after_turn(openai_server: OpenAIServer) -> None:
    """Run.model_turn (a new event loop per call) works with the adapter on every turn."""
    openai_server.push(text("one"), text("two"))
    m = model(openai_server)
    with corral.Run(policy(), tools=[search], store=MemoryStore()) as r:
        answers = [r.model_turn(m, [{"role": "user", "content": "hi"}]).text for _ in range(2)]
        r.finish(answers[-1])
    assert answers == ["one", "two"] and r.result.usage.steps == 2


def test_an_error_body_with_status_200_is_model_error(openai_server: OpenAIServer) -> None:
    """A server answering 200 with an error object is an endpoint failure, not model output."""
    openai_server.push(Turn(raw=json.dumps({"error": {"message": "model not loaded"}}).encode()))
    result = run(openai_server)
    assert result.stop_reason == "model_error"
    assert result.stop is not None and "model not loaded" in result.stop.message
