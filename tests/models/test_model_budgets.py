"""USD caps with real adapters: never passed by honest usage; overruns recorded, never hidden."""

from __future__ import annotations

import asyncio
import json
import random
from decimal import Decimal
from typing import Any

import pytest
from servers import AnthropicServer, OpenAIServer, ProtocolServer, Turn

import corral
from corral.models import RetryPolicy
from corral.models.anthropic import AnthropicModel
from corral.models.base import input_token_bound
from corral.models.openai import OpenAIModel
from corral.testing import MemoryStore

MESSAGES = [{"role": "user", "content": "what is the vendor status?"}]
RATES = [("0.15", "0.6"), ("1", "4"), ("3", "15"), ("0", "10")]


def adapter(server: ProtocolServer, price: corral.Price) -> Any:
    retry = RetryPolicy(max_attempts=1)
    if isinstance(server, OpenAIServer):
        return OpenAIModel("m", base_url=f"{server.url}/v1", price=price, retry=retry)
    return AnthropicModel("m", base_url=server.url, price=price, retry=retry)


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_the_usd_cap_is_never_passed_across_hundreds_of_seeded_calls(protocol: str) -> None:
    """Random honest usage (within max_tokens and the input bound) never passes max_usd."""
    rng = random.Random(f"usd-cap-{protocol}")
    server_type = OpenAIServer if protocol == "openai" else AnthropicServer
    sent: list[int] = []

    def responder(body: dict[str, Any]) -> Turn:
        limit = body["max_tokens"]
        sent.append(limit)
        size = len(json.dumps(body))
        out = rng.choice([limit, rng.randint(1, limit)])
        return Turn(text="ok", usage=(rng.randint(1, size // 4), out))

    async def one_run(m: Any, cap: Decimal, wanted: int) -> corral.RunResult:
        pol = corral.Policy.from_dict({"budgets": {"max_usd": cap, "max_steps": 10_000}})
        async with corral.AsyncRun(pol, store=MemoryStore()) as r:
            while True:
                before = len(sent)
                await r.model_turn(m, MESSAGES, tools=[], max_tokens=wanted)
                assert sent[before:] and max(sent[before:]) <= wanted
        return r.result

    async def many(server: ProtocolServer) -> int:
        calls = 0
        while calls < 200:  # hundreds of calls, over runs of random caps and prices
            rate_in, rate_out = rng.choice(RATES)
            price = corral.Price(
                input_usd_per_mtok=Decimal(rate_in), output_usd_per_mtok=Decimal(rate_out)
            )
            cap = Decimal(rng.randint(5, 60)) / 10_000  # $0.0005 .. $0.0060
            async with adapter(server, price) as m:
                result = await one_run(m, cap, rng.choice([32, 64, 128]))
            assert result.usage.usd <= cap, (result.usage.usd, cap)
            assert result.usage.overrun_usd == 0
            assert result.stop_reason == "max_usd"
            calls += result.usage.steps
        return calls

    with server_type() as server:
        server.responder = responder
        calls = asyncio.run(many(server))
        assert server.problems == []
    assert calls == len(sent) >= 200


def test_a_provider_ignoring_max_tokens_is_recorded_as_an_overrun(
    openai_server: OpenAIServer,
) -> None:
    """Usage above the reservation is recorded as reported, counted as overrun, and then
    no further call starts: the cap is passed only by what the provider billed beyond it."""
    price = corral.Price(input_usd_per_mtok=Decimal(1), output_usd_per_mtok=Decimal(10))
    openai_server.responder = lambda body: Turn(text="ok", usage=(40, 4 * body["max_tokens"]))
    cap = Decimal("0.01")
    pol = corral.Policy.from_dict({"budgets": {"max_usd": cap}})

    async def go() -> corral.RunResult:
        async with corral.AsyncRun(pol, store=MemoryStore()) as r:
            for _ in range(5):
                await r.model_turn(
                    adapter(openai_server, price), MESSAGES, tools=[], max_tokens=200
                )
        return r.result

    result = asyncio.run(go())
    bound = input_token_bound(MESSAGES, [])
    sent = [b["max_tokens"] for b in openai_server.bodies]
    reserved = sum(price.cost(bound, n) for n in sent)
    actual = sum(price.cost(40, 4 * n) for n in sent)
    assert sent[0] == 200 and len(sent) == 2  # the third call does not fit: never sent
    assert result.stop_reason == "max_usd"
    assert result.usage.usd == actual > cap
    assert result.usage.overrun_usd == actual - reserved  # each call billed above its hold
    assert result.usage.output_tokens == 4 * sum(sent)
