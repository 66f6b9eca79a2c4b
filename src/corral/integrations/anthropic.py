"""The ``anthropic`` SDK, called by you, under a run's budgets.

:func:`create_message` (and :func:`acreate_message`) put one ``client.messages.create``
call inside the run's model-call reservation; :func:`settle_from_response` settles a
``run.model_call`` block from any ``anthropic`` response (cache reads and writes
counted as input).

Imports ``corral.integrations._calls``, ``corral.loop`` (types), ``corral.models``
(the adapter, for the price, and how usage is read) and the top-level modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.exceptions import ConfigError
from corral.integrations._calls import refuse_stream, settle_from, truncated_stop
from corral.loop.run import AsyncRun, Run
from corral.loop.tickets import ModelCall
from corral.models._wire import field
from corral.models.anthropic import ANTHROPIC_URL, STOP_REASONS, AnthropicModel, usage_of
from corral.models.base import Price

__all__ = ["acreate_message", "create_message", "settle_from_response"]


def settle_from_response(mc: ModelCall, response: Any) -> Any:
    """Settle ``mc`` with the usage an ``anthropic`` SDK response reports; returns it.

    A response without usage leaves the call unsettled: leaving the block then
    charges the reserved worst case. A stream is refused.
    """
    return settle_from(mc, response, usage_of)


def _prepare(client: Any, kwargs: dict[str, Any], price: Price | None) -> tuple[Any, Any]:
    refuse_stream(kwargs)
    if "model" not in kwargs:
        raise ConfigError("create_message needs model=...")
    base_url = str(getattr(client, "base_url", ANTHROPIC_URL))
    model = AnthropicModel(str(kwargs["model"]), base_url=base_url, price=price, api_key="")
    return model, kwargs.pop("max_tokens", None)


def _reserved(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """What the reservation measures: the system text as a first message, and the tools."""
    system = kwargs.get("system")
    messages = list(kwargs.get("messages", ()))
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return {"messages": messages, "tools": kwargs.get("tools", ())}


def _check_truncated(run: Run | AsyncRun, response: Any, max_tokens: int) -> None:
    if STOP_REASONS.get(str(field(response, "stop_reason"))) == "length":
        raise truncated_stop(run, str(field(response, "model") or "model"), max_tokens)


def create_message(
    run: Run,
    client: Any,
    *,
    price: Price | None = None,
    allow_truncated: bool = False,
    **create: Any,
) -> Any:
    """``client.messages.create(**create)`` as one governed model call (a step).

    Reserved first (``max_tokens`` clamped to what the budgets leave, and sent),
    settled to the response's usage after; the response is returned. A response
    cut at ``max_tokens`` stops the run with ``invalid_model_output`` unless
    ``allow_truncated``; an exception from the client is ``model_error``.

        message = create_message(run, client, model="claude-sonnet-4-5", messages=messages)
    """
    model, wanted = _prepare(client, create, price)
    with run.model_call(model=model, max_tokens=wanted, **_reserved(create)) as mc:
        response = client.messages.create(**create, max_tokens=mc.max_tokens)
        settle_from_response(mc, response)
    if not allow_truncated:
        _check_truncated(run, response, mc.max_tokens)
    return response


async def acreate_message(
    run: AsyncRun,
    client: Any,
    *,
    price: Price | None = None,
    allow_truncated: bool = False,
    **create: Any,
) -> Any:
    """:func:`create_message` for ``AsyncRun`` and ``anthropic.AsyncAnthropic``."""
    model, wanted = _prepare(client, create, price)
    async with run.model_call(model=model, max_tokens=wanted, **_reserved(create)) as mc:
        response = await client.messages.create(**create, max_tokens=mc.max_tokens)
        settle_from_response(mc, response)
    if not allow_truncated:
        _check_truncated(run, response, mc.max_tokens)
    return response
