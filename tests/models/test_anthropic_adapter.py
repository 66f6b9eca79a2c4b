"""The Anthropic Messages adapter against a local Messages server, over real sockets."""

from __future__ import annotations

import asyncio
import time
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import pytest
from servers import AnthropicServer, Turn, calls, fail, text

import corral
from corral.models import ModelRequest, RetryPolicy
from corral.models.anthropic import AnthropicModel
from corral.models.base import input_token_bound
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


def policy(**sections: Any) -> corral.Policy:
    data: dict[str, Any] = {"tools": {"allow": ["search.read", "kb.read"]}}
    data.update(sections)
    return corral.Policy.from_dict(data)


def model(server: AnthropicServer, **kw: Any) -> AnthropicModel:
    kw.setdefault("retry", FAST)
    kw.setdefault("price", prices(3, 15))
    return AnthropicModel("claude-test", base_url=server.url, **kw)


def run(server: AnthropicServer, pol: corral.Policy | None = None, **kw: Any) -> corral.RunResult:
    return corral.run(
        "what is the vendor status?",
        model=kw.pop("model", None) or model(server),
        tools=[search, kb],
        policy=pol or policy(),
        store=MemoryStore(),
        **kw,
    )


def test_a_tool_use_round_trips_through_the_gateway(anthropic_server: AnthropicServer) -> None:
    """tool_use runs the dotted tool; its result goes back as a tool_result in a user turn."""
    anthropic_server.push(calls(("search__read", {"query": "vendor"})), text("vendor is up"))
    result = run(anthropic_server)
    assert (result.stop_reason, result.answer, result.usage.tool_calls) == ("ok", "vendor is up", 1)
    first, second = anthropic_server.bodies
    assert "system" in first and all(m["role"] != "system" for m in first["messages"])
    assert [t["name"] for t in first["tools"]] == ["kb__read", "search__read"]
    assert first["tools"][1]["input_schema"] == search.spec()["parameters"]
    assistant, user = second["messages"][-2:]
    (use,) = [b for b in assistant["content"] if b["type"] == "tool_use"]
    assert (use["name"], use["input"]) == ("search__read", {"query": "vendor"})
    assert user == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": use["id"], "content": "results for vendor"}
        ],
    }


def test_parallel_tool_uses_are_answered_in_one_user_turn(
    anthropic_server: AnthropicServer,
) -> None:
    """Two tool_use blocks run in order, and both results go back in one user turn."""
    anthropic_server.push(
        calls(("kb__read", {"q": "a"}), ("search__read", {"query": "b"}), text="looking"),
        text("done"),
    )
    result = run(anthropic_server)
    assert result.stop_reason == "ok" and result.usage.tool_calls == 2
    last = anthropic_server.bodies[1]["messages"][-1]
    assert [b["content"] for b in last["content"]] == ["article a", "results for b"]


def test_max_tokens_on_the_wire_is_the_clamped_value(anthropic_server: AnthropicServer) -> None:
    """The body's max_tokens is what the USD budget leaves after the input bound."""
    anthropic_server.push(text("ok"))
    pol = policy(budgets={"max_usd": 0.01})
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]

    async def turn() -> int:
        async with corral.AsyncRun(pol, store=MemoryStore()) as r:
            await r.model_turn(model(anthropic_server), messages, tools=[])
        return anthropic_server.bodies[0]["max_tokens"]

    sent = asyncio.run(turn())
    bound = input_token_bound(messages, [])
    left = Decimal("0.01") - Decimal(3) * bound / 1_000_000
    assert sent == int((left * 1_000_000 / 15).to_integral_value(ROUND_FLOOR))
    assert anthropic_server.bodies[0]["system"] == "be brief"


def test_stop_reason_max_tokens_is_invalid_model_output(anthropic_server: AnthropicServer) -> None:
    """A turn cut at max_tokens stops the run; its tool use is never executed."""
    anthropic_server.push(Turn(calls=(("search__read", {"query": "x"}),), truncated=True))
    result = run(anthropic_server)
    assert str(result.stop) == "invalid_model_output:claude-test (truncated)"
    assert result.usage.tool_calls == 0


def test_overloaded_529_is_retried(anthropic_server: AnthropicServer) -> None:
    """Anthropic's 529 (overloaded) is retried like a 503."""
    anthropic_server.push(fail(529, error="Overloaded"), text("ok"))
    assert run(anthropic_server).stop_reason == "ok"
    assert len(anthropic_server.requests) == 2


def test_a_429_waits_its_retry_after(anthropic_server: AnthropicServer) -> None:
    """A 429 with Retry-After is retried after that wait."""
    anthropic_server.push(fail(429, retry_after="0.2"), text("ok"))
    started = time.monotonic()
    assert run(anthropic_server).stop_reason == "ok"
    assert time.monotonic() - started >= 0.2


def test_cache_tokens_count_as_input() -> None:
    """Input is input_tokens plus cache creation and cache read tokens."""
    from corral.models.anthropic import usage_of

    usage = {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
    }
    assert usage_of({"usage": usage}) == (1110, 5)
    assert usage_of({"usage": {"input_tokens": 3}}) is None


def test_the_api_key_and_version_headers_are_sent(anthropic_server: AnthropicServer) -> None:
    """x-api-key carries a given key; anthropic-version is always sent."""
    anthropic_server.push(text("ok"))
    request = ModelRequest(messages=[{"role": "user", "content": "hi"}], tools=[], max_tokens=9)
    asyncio.run(model(anthropic_server, api_key="sk-ant-given").respond(request))
    headers = anthropic_server.requests[0]["headers"]
    assert headers["x-api-key"] == "sk-ant-given"
    assert headers["anthropic-version"] == "2023-06-01"


def test_no_api_key_at_anthropics_address_fails_when_the_model_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At Anthropic's address with no key, the constructor raises a ConfigError naming
    ANTHROPIC_API_KEY; an x-api-key header or api_key="" is authentication enough."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(corral.ConfigError, match="ANTHROPIC_API_KEY is not set"):
        AnthropicModel("claude-sonnet-4-5")
    AnthropicModel("claude-sonnet-4-5", headers={"x-api-key": "sk-ant-header"})
    AnthropicModel("claude-sonnet-4-5", api_key="")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    assert AnthropicModel("claude-sonnet-4-5")._headers["x-api-key"] == "sk-ant-env"


def test_streaming_is_refused_with_a_clear_message() -> None:
    """Asking the adapter to stream is a setup error saying why."""
    with pytest.raises(corral.ConfigError, match="streaming is not supported"):
        AnthropicModel("m", options={"stream": True})
