"""Model calls under budget: reserve the worst case, clamp max_tokens, settle to reported usage."""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal
from typing import Any

import pytest

import corral
from corral.models.base import input_token_bound
from corral.testing import MemoryStore, ScriptedModel, call, final, prices


@corral.tool(name="search.read", effect="read")
def search(query: str) -> str:
    """Search the knowledge base."""
    return f"results for {query}"


def policy(**sections: Any) -> corral.Policy:
    data: dict[str, Any] = {"tools": {"allow": ["search.read"]}}
    data.update(sections)
    return corral.Policy.from_dict(data)


def run_loop(model: Any, pol: corral.Policy, **kw: Any) -> corral.RunResult:
    return corral.run(
        "what is the vendor status?",
        model=model,
        tools=[search],
        policy=pol,
        store=MemoryStore(),
        **kw,
    )


def usd_tokens(usd_left: Decimal, per_mtok: Decimal) -> int:
    return int((usd_left * 1_000_000 / per_mtok).to_integral_value(ROUND_FLOOR))


def test_worst_case_is_the_input_bound_at_input_price_plus_max_tokens_at_output_price() -> None:
    """max_tokens is what max_usd leaves after the request's input bound at the input price."""
    price = prices(3, 15)
    model = ScriptedModel([final("done")], price=price)
    result = run_loop(model, policy(budgets={"max_usd": 0.01}))
    assert result.stop_reason == "ok"
    (request,) = model.requests
    bound = input_token_bound(request.messages, request.tools)
    left = Decimal("0.01") - price.input_usd_per_mtok * bound / 1_000_000
    assert request.max_tokens == usd_tokens(left, price.output_usd_per_mtok)
    assert request.max_tokens < 1024  # the USD limit, not the default, decided


def test_a_reservation_that_exactly_fits_is_granted_and_one_token_more_is_clamped() -> None:
    """A worst case equal to the USD left fits; asking for more is clamped to what fits."""
    pol = policy(
        budgets={"max_usd": 0.002},
        models={"prices": {"m": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2}}},
    )
    with corral.Run(pol, tools=[search], store=MemoryStore()) as run:
        with run.model_call(model="m", input_tokens=1000, max_tokens=500) as exact:
            assert exact.max_tokens == 500  # 0.001 in + 0.001 out == 0.002
            exact.settle(input_tokens=0, output_tokens=0)
        with run.model_call(model="m", input_tokens=1000, max_tokens=501) as more:
            assert more.max_tokens == 500
            more.settle(input_tokens=0, output_tokens=0)
        run.finish()
    assert run.result.stop_reason == "ok"


def test_max_tokens_is_clamped_to_the_output_tokens_left() -> None:
    """With budgets.max_output_tokens, each request asks for at most what is left."""
    model = ScriptedModel(
        [call("search.read", query="a", _input_tokens=10, _output_tokens=150), final("done")]
    )
    result = run_loop(model, policy(budgets={"max_output_tokens": 200}))
    assert result.stop_reason == "ok"
    assert [r.max_tokens for r in model.requests] == [200, 50]


def test_max_tokens_is_clamped_to_the_total_tokens_left() -> None:
    """With budgets.max_tokens, max_tokens is what remains after usage and the input bound."""
    pol = policy(budgets={"max_tokens": 1000})
    with corral.Run(pol, tools=[search], store=MemoryStore()) as run:
        with run.model_call(model="m", input_tokens=700) as mc:
            assert mc.max_tokens == 300
            mc.settle(input_tokens=600, output_tokens=100)
        with run.model_call(model="m", input_tokens=200) as mc:
            assert mc.max_tokens == 100
            mc.settle(input_tokens=200, output_tokens=50)
        run.finish()
    assert run.result.usage.tokens == 950


def test_a_call_where_not_even_a_minimal_answer_fits_is_refused_before_the_request() -> None:
    """When fewer than 16 output tokens are left, the turn is refused and never sent."""
    model = ScriptedModel(
        [call("search.read", query="a", _input_tokens=10, _output_tokens=190), final("done")]
    )
    result = run_loop(model, policy(budgets={"max_output_tokens": 200}))
    assert str(result.stop) == "max_tokens:run/output (limit 200, would be 206)"
    assert len(model.requests) == 1


def test_a_request_too_large_for_max_input_tokens_is_refused() -> None:
    """A request whose input bound alone passes max_input_tokens is refused before it is sent."""
    model = ScriptedModel([final("done")])
    result = run_loop(model, policy(budgets={"max_input_tokens": 50}))
    assert result.stop_reason == "max_tokens"
    assert result.stop is not None and result.stop.detail == "run/input"
    assert result.stop.limit == 50 and result.stop.observed > 50
    assert model.requests == []


def test_the_callers_max_tokens_is_honoured_when_it_fits() -> None:
    """A max_tokens given to run() is sent as it is when the budgets allow it, even if small."""
    model = ScriptedModel([final("ok")])
    run_loop(model, policy(), max_tokens=8)
    assert model.requests[0].max_tokens == 8


def test_a_non_positive_max_tokens_is_a_config_error() -> None:
    """max_tokens below 1 is a developer mistake."""
    with (
        pytest.raises(corral.ConfigError, match="max_tokens"),
        corral.Run(policy(), store=MemoryStore()) as run,
    ):
        run.model_call(model="m", input_tokens=10, max_tokens=0)


def test_an_unpriced_model_under_max_usd_is_refused_before_any_request() -> None:
    """A model with no known price under max_usd stops ``max_usd`` (unpriced_model), unsent."""
    model = ScriptedModel([final("done")], price=None, name="mystery")
    result = run_loop(model, policy(budgets={"max_usd": 5}))
    assert str(result.stop) == "max_usd:run (unpriced_model: mystery)"
    assert result.status == "stopped"
    assert result.stop is not None and "mystery" in result.stop.message
    assert model.requests == []


def test_an_unpriced_model_without_a_usd_limit_runs() -> None:
    """Without a USD limit an unpriced model is not refused (and costs nothing recorded)."""
    model = ScriptedModel([final("done")], price=None)
    result = run_loop(model, policy())
    assert result.stop_reason == "ok" and result.usage.usd == 0


def test_an_explicit_zero_price_in_the_policy_allows_an_unpriced_model() -> None:
    """`price: 0` given explicitly in models.prices lets an unpriced model run under max_usd."""
    model = ScriptedModel([final("done")], price=None, name="local-llm")
    pol = policy(
        budgets={"max_usd": 1},
        models={"prices": {"local-llm": {"input_usd_per_mtok": 0, "output_usd_per_mtok": 0}}},
    )
    result = run_loop(model, pol)
    assert result.stop_reason == "ok" and result.usage.usd == 0


def test_the_policy_price_wins_over_the_models_own_price() -> None:
    """models.prices in the policy prices the call, not the model object's own price."""
    model = ScriptedModel(
        [final("done", input_tokens=1000, output_tokens=500)],
        price=prices(1000, 1000),
        name="gpt-x",
    )
    pol = policy(
        budgets={"max_usd": 1},
        models={"prices": {"gpt-x": {"input_usd_per_mtok": 2, "output_usd_per_mtok": 4}}},
    )
    result = run_loop(model, pol)
    assert result.stop_reason == "ok"
    assert result.usage.usd == Decimal("0.004")  # (1000 * 2 + 500 * 4) / 1e6


def test_settlement_uses_the_reported_usage_at_the_models_price() -> None:
    """After a call, the reservation is replaced by the reported tokens at the model's price."""
    model = ScriptedModel(
        [
            call("search.read", query="a", _input_tokens=300, _output_tokens=40),
            final("done", input_tokens=400, output_tokens=20),
        ],
        price=prices("2.5", 10),
    )
    result = run_loop(model, policy(budgets={"max_usd": 1}))
    usage = result.usage
    assert (usage.input_tokens, usage.output_tokens) == (700, 60)
    assert usage.usd == Decimal("2.5") * 700 / 1_000_000 + Decimal(10) * 60 / 1_000_000
    assert usage.overrun_tokens == 0 and usage.overrun_usd == 0


def test_a_provider_overrun_is_recorded_as_reported_and_counted() -> None:
    """Usage above the reservation (max_tokens ignored) is kept as reported and counted."""
    model = ScriptedModel(
        [final("long answer", input_tokens=10, output_tokens=300)], price=prices(0, 1)
    )
    store = MemoryStore()
    result = corral.run(
        "task",
        model=model,
        tools=[search],
        policy=policy(budgets={"max_usd": 1}),
        store=store,
        max_tokens=100,
    )
    assert model.requests[0].max_tokens == 100
    usage = result.usage
    assert usage.output_tokens == 300  # the actual figure, never rewritten
    assert usage.usd == Decimal("0.0003")
    assert usage.overrun_tokens == 200
    assert usage.overrun_usd == Decimal("0.0002")
    record = store.get_run(result.run_id)
    assert record is not None
    assert record.usage["overrun_tokens"] == 200 and record.usage["overrun_usd"] == "0.0002"


def test_a_wrapped_model_call_overrun_is_counted() -> None:
    """settle() with more than was reserved records it and counts the overrun."""
    pol = policy(models={"prices": {"m": {"input_usd_per_mtok": 0, "output_usd_per_mtok": 1}}})
    with corral.Run(pol, store=MemoryStore()) as run:
        with run.model_call(model="m", input_tokens=10, max_tokens=50) as mc:
            mc.settle(input_tokens=10, output_tokens=80)
        run.finish()
    assert run.result.usage.output_tokens == 80
    assert run.result.usage.overrun_tokens == 30


def test_each_model_turn_is_recorded_in_the_trace() -> None:
    """Every model turn leaves a model_call event with its tokens, max_tokens and cost."""
    store = MemoryStore()
    model = ScriptedModel([final("done", input_tokens=12, output_tokens=3)], price=prices(1, 1))
    result = corral.run("task", model=model, policy=policy(), store=store)
    (event,) = [e for e in store.events(result.run_id) if e.kind == "model_call"]
    assert event.data["outcome"] == "ok"
    assert (event.data["input_tokens"], event.data["output_tokens"]) == (12, 3)
    assert event.data["max_tokens"] == 1024
    assert event.data["usd"] == "0.000015"


def test_in_observe_mode_an_unpriced_model_runs_and_the_refusal_is_recorded() -> None:
    """Observe mode lets an unpriced model run under max_usd and lists the stop it would be."""
    model = ScriptedModel([final("done")], price=None)
    pol = policy(mode="observe", budgets={"max_usd": 1})
    result = run_loop(model, pol)
    assert result.stop_reason == "ok" and len(model.requests) == 1
    assert [str(w) for w in result.would_stop] == ["max_usd:run (unpriced_model: scripted)"]
