"""Pricing: the policy's price wins, then the model's, then genai-prices' bundled table, offline."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from genai_prices import data_snapshot

import corral
from corral.models import pricing
from corral.models.openai import OpenAIModel
from corral.testing import MemoryStore, prices


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every socket connection or name lookup fails, and pricing starts from cold caches."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pricing tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    pricing._model_info.cache_clear()
    monkeypatch.setattr(pricing, "_snapshot", None)
    yield
    pricing._model_info.cache_clear()


def test_a_known_model_is_priced_from_the_bundled_table_offline(no_network: None) -> None:
    """gpt-4o-mini is $0.15 / $0.60 per million tokens; 1,000 in + 200 out cost $0.00027."""
    price = pricing.lookup("gpt-4o-mini", provider="openai")
    assert price == prices("0.15", "0.6")
    assert price is not None and price.cost(1_000, 200) == Decimal("0.00027")
    usage = genai_prices.Usage(input_tokens=1_000, output_tokens=200)
    expected = genai_prices.calc_price(usage, "gpt-4o-mini", provider_id="openai").total_price
    assert price.cost(1_000, 200) == expected


def test_the_provider_comes_from_the_api_address() -> None:
    """OpenAI's address prices its models; a local server's address leaves them unpriced."""
    assert pricing.lookup("gpt-4o-mini", api_url="https://api.openai.com/v1") is not None
    assert pricing.lookup("gpt-4o-mini", api_url="http://127.0.0.1:8000/v1") is None
    local = OpenAIModel("gpt-4o-mini", base_url="http://127.0.0.1:8000/v1")
    assert pricing.price_for(local) is None
    assert pricing.price_for(OpenAIModel("gpt-4o-mini", api_key="sk-test")) == prices("0.15", "0.6")


def test_an_unknown_model_stays_unpriced() -> None:
    """A name the table does not know is unpriced, not guessed."""
    assert pricing.lookup("mystery-model") is None
    assert pricing.lookup("gpt-4o-mini", provider="no-such-provider") is None


def test_long_context_tiers_reserve_the_dearest_and_settle_the_exact() -> None:
    """A tiered price reserves at the dearest tier the input bound can reach; settles exactly."""
    exact = pricing.lookup("claude-sonnet-4-5", provider="anthropic", input_tokens=1_000)
    bounded = pricing.lookup(
        "claude-sonnet-4-5", provider="anthropic", input_tokens=300_000, at_most=True
    )
    assert exact == prices(3, 15)
    assert bounded is not None and exact is not None
    assert bounded.input_usd_per_mtok > exact.input_usd_per_mtok
    small_bound = pricing.lookup(
        "claude-sonnet-4-5", provider="anthropic", input_tokens=1_000, at_most=True
    )
    assert small_bound == exact


def test_the_policy_price_wins_over_the_model_and_the_table() -> None:
    """models.prices in the policy beats the model's own price, which beats the table."""
    pol = corral.Policy.from_dict(
        {
            "budgets": {"max_usd": 1},
            "models": {
                "prices": {"gpt-4o-mini": {"input_usd_per_mtok": 10, "output_usd_per_mtok": 20}}
            },
        }
    )
    with corral.Run(pol, store=MemoryStore()) as run:
        with run.model_call(model="gpt-4o-mini", input_tokens=10, max_tokens=10) as mc:
            mc.settle(input_tokens=10_000, output_tokens=0)
        table_priced = OpenAIModel("gpt-4o-mini", api_key="sk-test", price=prices(5, 5))
        with run.model_call(model=table_priced, input_tokens=10, max_tokens=10) as mc:
            mc.settle(input_tokens=10_000, output_tokens=0)  # the policy names it: 10, not 5
    assert run.result.usage.usd == Decimal("0.2")
    pol = corral.Policy.from_dict({"budgets": {"max_usd": 1}})
    model = OpenAIModel("gpt-4o-mini", api_key="sk-test", price=prices(5, 5))
    with (
        corral.Run(pol, store=MemoryStore()) as run,
        run.model_call(model=model, input_tokens=10, max_tokens=10) as mc,
    ):
        mc.settle(input_tokens=1_000_000, output_tokens=0)
    assert run.result.usage.usd == Decimal(5)


def test_a_sample_call_reserves_the_worst_case_and_settles_to_usage() -> None:
    """gpt-4o-mini, 1,000 tokens in, max_tokens 1,024: $0.0007644 held, $0.00027 settled."""
    pol = corral.Policy.from_dict({"budgets": {"max_usd": 0.01}})
    with corral.Run(pol, store=MemoryStore()) as run:
        with run.model_call(model="gpt-4o-mini", input_tokens=1_000, max_tokens=1_024) as mc:
            assert mc.max_tokens == 1_024
            assert run._core.budget.meter.held().usd == Decimal("0.0007644")
            mc.settle(input_tokens=1_000, output_tokens=200)
        assert run._core.budget.meter.held().usd == 0
    assert run.result.usage.usd == Decimal("0.00027")


def test_a_table_priced_model_is_not_refused_under_max_usd() -> None:
    """A model the table knows runs under a USD limit with no price in the policy."""
    pol = corral.Policy.from_dict({"budgets": {"max_usd": 0.01}})
    with (
        corral.Run(pol, store=MemoryStore()) as run,
        run.model_call(model="gpt-4o-mini", input_tokens=100) as mc,
    ):
        mc.settle(input_tokens=100, output_tokens=10)
    assert run.result.stop_reason == "ok"


def test_a_price_updater_started_elsewhere_does_not_change_reservations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """corral reads the bundled table even when the application swapped genai-prices' snapshot."""
    pricing._model_info.cache_clear()
    empty = data_snapshot.DataSnapshot(providers=[], from_auto_update=True)
    monkeypatch.setattr(data_snapshot, "_custom_snapshot", empty)
    try:
        assert pricing.lookup("gpt-4o-mini", provider="openai") == prices("0.15", "0.6")
    finally:
        pricing._model_info.cache_clear()
