"""Usage an endpoint reports is checked by the adapters and the SDK helpers: usage that
cannot be right is charged at the reservation and stops the run with model_error (why
invalid_usage); usage that is absent is charged at the reservation and the run goes on."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from servers import AnthropicServer, OpenAIServer, Turn

import corral
from corral.integrations import anthropic as anthropic_sdk
from corral.integrations import openai as openai_sdk
from corral.models import MAX_CALL_TOKENS, InvalidUsage, RetryPolicy
from corral.models import anthropic as anthropic_models
from corral.models import openai as openai_models
from corral.models.base import input_token_bound
from corral.testing import MemoryStore, prices

FAST = RetryPolicy(max_attempts=1)
#: Counts an endpoint can send in JSON that no call can have used.
BAD = [-1, -(10**9), MAX_CALL_TOKENS + 1, 2.5, "12", True, [3], {"n": 3}]
POLICY = corral.Policy.from_dict(
    {
        "budgets": {"max_output_tokens": 40},
        "models": {"prices": {"m": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2}}},
    }
)


def invalid_usage_stop(result: corral.RunResult) -> bool:
    return (
        result.stop_reason == "model_error"
        and result.stop is not None
        and result.stop.extra == {"why": "invalid_usage"}
    )


def worst_case(server: Any) -> tuple[int, int]:
    """The reservation of the server's one request: its input bound and clamped max_tokens."""
    body = server.bodies[0]
    return input_token_bound(body["messages"], []), body["max_tokens"]


def openai_body(usage: dict[str, Any]) -> bytes:
    message = {"role": "assistant", "content": "fine"}
    return json.dumps(
        {
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }
    ).encode()


def anthropic_body(usage: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "model": "m",
            "role": "assistant",
            "type": "message",
            "content": [{"type": "text", "text": "fine"}],
            "stop_reason": "end_turn",
            "usage": usage,
        }
    ).encode()


@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize("which", ["prompt_tokens", "completion_tokens"])
def test_an_openai_endpoint_reporting_impossible_usage_is_charged_the_worst_case(
    openai_server: OpenAIServer, which: str, bad: Any
) -> None:
    """A chat completion whose usage is negative, absurd, fractional or not a number stops the
    run with model_error (why invalid_usage), charged the request's reservation."""
    usage = {"prompt_tokens": 10, "completion_tokens": 3, which: bad}
    openai_server.push(Turn(raw=openai_body(usage)))
    model = openai_models.OpenAIModel("m", base_url=f"{openai_server.url}/v1", retry=FAST)
    result = corral.run("status?", model=model, policy=POLICY, store=MemoryStore())
    assert invalid_usage_stop(result), result
    tokens = (result.usage.input_tokens, result.usage.output_tokens)
    assert tokens == worst_case(openai_server)


@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize(
    "which",
    ["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"],
)
def test_an_anthropic_endpoint_reporting_impossible_usage_is_charged_the_worst_case(
    anthropic_server: AnthropicServer, which: str, bad: Any
) -> None:
    """A Messages answer with an impossible count, cache counts included, stops the run with
    model_error (why invalid_usage), charged the request's reservation."""
    usage = {"input_tokens": 10, "output_tokens": 3, which: bad}
    anthropic_server.push(Turn(raw=anthropic_body(usage)))
    model = anthropic_models.AnthropicModel(
        "m", base_url=anthropic_server.url, retry=FAST, api_key="k"
    )
    result = corral.run("status?", model=model, policy=POLICY, store=MemoryStore())
    assert invalid_usage_stop(result), result
    assert result.usage.output_tokens == anthropic_server.bodies[0]["max_tokens"]


def test_null_counts_are_no_usage_and_charge_the_worst_case(openai_server: OpenAIServer) -> None:
    """Counts sent as null are absent, not wrong: the call is charged its reservation and the
    run goes on (as for an endpoint that reports no usage)."""
    openai_server.push(Turn(raw=openai_body({"prompt_tokens": None, "completion_tokens": None})))
    model = openai_models.OpenAIModel("m", base_url=f"{openai_server.url}/v1", retry=FAST)
    result = corral.run("status?", model=model, policy=POLICY, store=MemoryStore())
    assert result.stop_reason == "ok"
    assert (result.usage.input_tokens, result.usage.output_tokens) == worst_case(openai_server)


@pytest.mark.parametrize("usage_of", [openai_models.usage_of, anthropic_models.usage_of])
@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_usage_of_raises_invalid_usage_for_a_count_that_cannot_be_right(
    usage_of: Any, bad: Any
) -> None:
    """The SDK helpers' usage readers refuse impossible counts (dicts or SDK-like objects)."""
    for names in (("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens")):
        if usage_of is anthropic_models.usage_of and names[0] == "prompt_tokens":
            continue
        with pytest.raises(InvalidUsage, match=names[0]):
            usage_of({"usage": {names[0]: bad, names[1]: 1}})


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_settle_from_response_with_impossible_usage_stops_and_charges_the_hold(bad: Any) -> None:
    """settle_from_response on a response with impossible usage: the model_call block charges
    its reservation and the run stops with model_error (why invalid_usage)."""
    for settle in (openai_sdk.settle_from_response, anthropic_sdk.settle_from_response):
        response = {"usage": {"input_tokens": bad, "output_tokens": 1}}
        with corral.Run(POLICY, store=MemoryStore()) as run:
            with run.model_call(model="m", input_tokens=100, max_tokens=30) as mc:
                settle(mc, response)
            run.finish("never")
        assert invalid_usage_stop(run.result), run.result
        assert (run.result.usage.input_tokens, run.result.usage.output_tokens) == (100, 30)


def test_the_openai_sdk_with_negative_usage_is_charged_the_worst_case(
    openai_server: OpenAIServer,
) -> None:
    """chat_completion with the official client: a negative usage the SDK passes through is
    refused, the reservation charged, and the run stopped with model_error."""
    openai_server.push(Turn(text="fine", usage=(-(10**9), 3)))
    client = openai.OpenAI(base_url=f"{openai_server.url}/v1", api_key="sk-test", max_retries=0)
    with corral.Run(POLICY, store=MemoryStore()) as run, client:
        openai_sdk.chat_completion(
            run, client, model="m", messages=[{"role": "user", "content": "x"}], max_tokens=20
        )
        run.finish("never")
    assert invalid_usage_stop(run.result), run.result
    assert run.result.usage.input_tokens > 0 and run.result.usage.output_tokens == 20


def test_the_anthropic_sdk_with_negative_usage_is_charged_the_worst_case(
    anthropic_server: AnthropicServer,
) -> None:
    """create_message with the official client: a negative usage is refused, the
    reservation charged, and the run stopped with model_error."""
    anthropic_server.push(Turn(text="fine", usage=(5, -3)))
    client = anthropic.Anthropic(base_url=anthropic_server.url, api_key="k", max_retries=0)
    with corral.Run(POLICY, store=MemoryStore()) as run, client:
        anthropic_sdk.create_message(
            run, client, model="m", messages=[{"role": "user", "content": "x"}], max_tokens=20
        )
        run.finish("never")
    assert invalid_usage_stop(run.result), run.result
    assert run.result.usage.output_tokens == 20


def test_a_price_that_cannot_be_right_is_refused_when_built() -> None:
    """Price refuses negative, non-finite and non-decimal rates (whole numbers are fine), so a
    model's own price can never turn usage into a credit."""
    assert corral.Price(input_usd_per_mtok=0, output_usd_per_mtok=3) == prices(0, 3)
    for bad in (-1, "-0.5", "NaN", "Infinity", "-Infinity"):
        with pytest.raises(corral.ConfigError, match="input_usd_per_mtok"):
            prices(bad, 1)
    for raw in (0.5, "1", True, None):
        with pytest.raises(corral.ConfigError, match="output_usd_per_mtok"):
            corral.Price(input_usd_per_mtok=prices(1, 1).input_usd_per_mtok,
                         output_usd_per_mtok=raw)  # type: ignore[arg-type]  # fmt: skip
