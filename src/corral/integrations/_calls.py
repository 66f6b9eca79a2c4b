"""What the SDK helpers share: settling a ``model_call`` block from a response, and the
run's stop for an answer cut at ``max_tokens``.

Imports ``corral.loop`` (``Run``, ``ModelCall``), ``corral.gateway.model_turn`` (the
truncation stop), ``corral.models`` and the top-level modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from corral.exceptions import ConfigError, Stop
from corral.gateway.model_turn import truncated
from corral.loop.run import AsyncRun, Run
from corral.loop.tickets import ModelCall
from corral.models._wire import STREAMING_REFUSED

UsageOf = Callable[[Any], tuple[int, int] | None]


def is_stream(response: Any) -> bool:
    """Whether an SDK response is a stream of events rather than a whole answer."""
    if isinstance(response, Mapping) or not (
        hasattr(response, "__iter__") or hasattr(response, "__aiter__")
    ):
        return False
    return all(getattr(response, key, None) is None for key in ("usage", "choices", "content"))


def refuse_stream(create: Mapping[str, Any]) -> None:
    """Refuse ``stream=True`` before any reservation: a stream carries no usage to settle."""
    if create.get("stream"):
        raise ConfigError(STREAMING_REFUSED)


def settle_from(mc: ModelCall, response: Any, usage_of: UsageOf) -> Any:
    """Settle ``mc`` with the usage ``response`` reports; returns ``response``.

    A response without usage leaves the call unsettled: leaving the block then
    charges the reserved worst case. Usage that cannot be right raises
    :class:`~corral.models.InvalidUsage`, which the ``model_call`` block turns into its
    worst-case charge and a ``model_error`` stop. A stream is refused (it carries no usage).
    """
    if is_stream(response):
        raise ConfigError(STREAMING_REFUSED)
    tokens = usage_of(response)
    if tokens is not None:
        mc.settle(input_tokens=tokens[0], output_tokens=tokens[1])
    return response


def truncated_stop(run: Run | AsyncRun, model: str, max_tokens: int) -> Stop:
    """The run's ``invalid_model_output`` stop for an answer cut at ``max_tokens``,
    recorded as the run's (as a truncated turn of corral's own loop is)."""
    # Run offers no public way to record a stop of its own making; this is the one place
    # outside the loop that reaches into the run's state for it.
    return truncated(run._core, model, max_tokens)
