"""The ``openai`` SDK, called by you, under a run's budgets.

:func:`chat_completion` (and :func:`achat_completion`) put one
``client.chat.completions.create`` call inside the run's model-call reservation;
:func:`settle_from_response` settles a ``run.model_call`` block from any ``openai``
response (chat completions or the Responses API).

Imports ``corral.integrations._calls``, ``corral.loop`` (types), ``corral.models``
(the adapter, for the price, and how usage is read) and the top-level modules.
"""

from __future__ import annotations

from typing import Any

from corral.exceptions import ConfigError
from corral.integrations._calls import refuse_stream, settle_from, truncated_stop
from corral.loop.run import AsyncRun, Run
from corral.loop.tickets import ModelCall
from corral.models._wire import field
from corral.models.base import Price
from corral.models.openai import OPENAI_URL, MaxTokensField, OpenAIModel, usage_of

__all__ = ["achat_completion", "chat_completion", "settle_from_response"]


def settle_from_response(mc: ModelCall, response: Any) -> Any:
    """Settle ``mc`` with the usage an ``openai`` SDK response reports; returns ``response``.

    A response without usage leaves the call unsettled: leaving the block then
    charges the reserved worst case. A stream is refused (it carries no usage).
    """
    return settle_from(mc, response, usage_of)


def _prepare(client: Any, kwargs: dict[str, Any], price: Price | None) -> tuple[Any, str, Any]:
    refuse_stream(kwargs)
    if "model" not in kwargs:
        raise ConfigError("chat_completion needs model=...")
    name: MaxTokensField = (
        "max_completion_tokens" if "max_completion_tokens" in kwargs else "max_tokens"
    )
    wanted = kwargs.pop(name, None)
    base_url = str(getattr(client, "base_url", OPENAI_URL))
    model = OpenAIModel(str(kwargs["model"]), base_url=base_url, price=price, api_key="")
    return model, name, wanted


def _check_truncated(run: Run | AsyncRun, response: Any, max_tokens: int) -> None:
    choices = field(response, "choices") or ()
    if any(field(c, "finish_reason") == "length" for c in choices):
        raise truncated_stop(run, str(field(response, "model") or "model"), max_tokens)


def chat_completion(
    run: Run,
    client: Any,
    *,
    price: Price | None = None,
    allow_truncated: bool = False,
    **create: Any,
) -> Any:
    """``client.chat.completions.create(**create)`` as one governed model call (a step).

    The call is reserved first (its ``max_tokens``, or ``max_completion_tokens``, is
    clamped to what the budgets leave and sent), then settled to the usage in the
    response, which is returned. The price is found as for
    :class:`~corral.models.openai.OpenAIModel`, by model name at the client's
    ``base_url``, unless ``price`` or the policy gives it. A response cut at the token
    limit stops the run with ``invalid_model_output`` unless ``allow_truncated``. An
    exception from the client is ``model_error``.

        response = chat_completion(run, client, model="gpt-4o-mini", messages=messages)
    """
    model, name, wanted = _prepare(client, create, price)
    with run.model_call(
        model=model,
        messages=create.get("messages", ()),
        tools=create.get("tools", ()),
        max_tokens=wanted,
    ) as mc:
        response = client.chat.completions.create(**create, **{name: mc.max_tokens})
        settle_from_response(mc, response)
    if not allow_truncated:
        _check_truncated(run, response, mc.max_tokens)
    return response


async def achat_completion(
    run: AsyncRun,
    client: Any,
    *,
    price: Price | None = None,
    allow_truncated: bool = False,
    **create: Any,
) -> Any:
    """:func:`chat_completion` for ``AsyncRun`` and ``openai.AsyncOpenAI``."""
    model, name, wanted = _prepare(client, create, price)
    async with run.model_call(
        model=model,
        messages=create.get("messages", ()),
        tools=create.get("tools", ()),
        max_tokens=wanted,
    ) as mc:
        response = await client.chat.completions.create(**create, **{name: mc.max_tokens})
        settle_from_response(mc, response)
    if not allow_truncated:
        _check_truncated(run, response, mc.max_tokens)
    return response
