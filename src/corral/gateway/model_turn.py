"""Model calls under budget: reserve the worst case, clamp ``max_tokens``, settle to usage.

The worst case of a model call is an upper bound of its input tokens (the UTF-8
size of the request: no tokenizer produces more tokens than bytes, plus a small
per-message overhead) at the input price, plus ``max_tokens`` at the output
price. ``max_tokens`` is clamped to what the token and USD budgets have left; a
call that cannot fit even a minimal answer is refused before any request.

The usage a model reports is checked before it is charged
(:func:`~corral.models.base.usage_problem`): a figure that cannot be right is
charged at the reservation and stops the run with ``model_error`` (why
``invalid_usage``, see :func:`invalid_usage`), never credited.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from decimal import Decimal
from typing import Any, NoReturn

from corral._safe import error_text, shown, text, type_name
from corral.budgets import model_cost
from corral.budgets.meter import Charge, Hold
from corral.controls import breaker
from corral.exceptions import ConfigError, Stop
from corral.gateway import recording
from corral.gateway.guards import killswitch
from corral.gateway.ops import Attempt, CallModel
from corral.gateway.state import RunState
from corral.models import pricing
from corral.models.base import (
    MAX_CALL_TOKENS,
    InvalidUsage,
    Model,
    ModelOutputError,
    ModelRequest,
    ModelResponse,
    Price,
    genai_provider,
    input_token_bound,
    validate_response,
)

#: One step, no tokens or spend (immutable: shared by every turn rather than built each time).
ONE_STEP = Charge(steps=1)


def price_of(
    core: RunState, model: Any, *, input_tokens: int | None = None, at_most: bool = False
) -> Price | None:
    """The policy's price for the model (wins), else the model object's ``price``, else
    the genai-prices table's (by name and provider), else ``None`` (unpriced).

    ``input_tokens`` selects a long-context tier of the table's price (an upper bound
    with ``at_most``, for reservations; exact for settlement).
    """
    name = str(getattr(model, "name", ""))
    listed = core.policy.models.prices.get(name)
    if listed is not None:
        return Price(
            input_usd_per_mtok=listed.input_usd_per_mtok,
            output_usd_per_mtok=listed.output_usd_per_mtok,
        )
    own = getattr(model, "price", None)
    if isinstance(own, Price):
        return own
    return pricing.price_for(model, input_tokens=input_tokens, at_most=at_most)


def plan(core: RunState, model: Any, input_bound: int, wanted: int | None) -> tuple[int, Charge]:
    """Clamp ``max_tokens`` and build the worst-case charge, or raise the binding stop.

    ``wanted`` (else ``models.max_output_tokens``) is cut to what the token and USD
    budgets leave after the input bound. The call is refused when what is left is
    below a minimal answer (``MIN_ANSWER_TOKENS``, or ``wanted`` if smaller).
    """
    if wanted is not None and (type(wanted) is not int or wanted < 1):
        raise ConfigError(f"max_tokens must be a positive integer, got {shown(wanted)}")
    if type(input_bound) is not int or not 0 <= input_bound <= MAX_CALL_TOKENS:
        raise ConfigError(
            f"input_tokens must be a whole number from 0 to {MAX_CALL_TOKENS}, "
            f"got {shown(input_bound)}"
        )
    core.budget.fits(ONE_STEP)
    meter = core.budget.meter
    lim, used, held = meter.limits, meter.usage(), meter.held()  # in observe mode, backstops
    too_big = model_cost.input_stop(lim, used, held, input_bound)
    if too_big is not None:
        raise core.stamp(too_big)
    price = price_of(core, model, input_tokens=input_bound, at_most=True)
    if price is None and core.budget.limits.max_usd is not None:
        name = getattr(model, "name", "?")
        unpriced = Stop(
            "max_usd",
            "run",
            scope="run",
            extra={"why": "unpriced_model", "note": str(name)[:80]},
            message=f"model {name!r} has no known price and the run has a USD limit; "
            "give its price in models.prices or as the model's price (0 must be explicit)",
        )
        # When budgets are observed: recorded as a stop that would have happened.
        core.deny(unpriced, "budgets")
    asked = wanted if wanted is not None else core.policy.models.max_output_tokens
    planned = model_cost.answer_room(
        lim, used, held, input_bound=input_bound, asked=asked, price=price
    )
    if isinstance(planned, Stop):
        raise core.stamp(planned)
    return planned


def truncated(core: RunState, model: str, max_tokens: int) -> Stop:
    """The run's stop for an answer cut at ``max_tokens`` (its tool calls never run)."""
    return core.stamp(
        Stop(
            "invalid_model_output",
            model,
            extra={"why": "truncated"},
            message=f"the answer was cut at max_tokens={max_tokens}; "
            "a truncated tool call is never executed",
        )
    )


def invalid_usage(core: RunState, hold: Hold, name: str, problem: str) -> Stop:
    """The stop for a model call whose reported usage cannot be right (``problem``): the
    call was made and what it used is unknown, so its reservation (the worst case) is
    charged, never the reported figure; a ``model_call`` error is recorded."""
    worst = hold.charge
    core.budget.settle(hold, worst)
    core.events.add(
        "model_call",
        model=name,
        outcome="error",
        why="invalid_usage",
        error=problem,
        input_tokens=worst.input_tokens,
        output_tokens=worst.output_tokens,
        usd=str(worst.usd),
    )
    core.events.flush()
    return core.stamp(
        Stop(
            "model_error",
            name,
            message=f"the model reported usage that cannot be right ({problem}); "
            "the call is charged at its reservation",
            extra={"why": "invalid_usage"},
        )
    )


def model_flow(
    core: RunState,
    model: Model,
    messages: Sequence[Mapping[str, Any]],
    tool_specs: Sequence[Mapping[str, Any]],
    *,
    max_tokens: int | None = None,
    input_bound: int | None = None,
) -> Generator[Any, Any, ModelResponse]:
    """One governed model turn (a step): kill switch, breaker, reservation, call,
    settlement. ``input_bound``: the request's
    :func:`~corral.models.base.input_token_bound` when the caller knows it already (the
    loop measures its history as it grows), else it is computed here.

    Its two halves, :func:`open_turn` and :func:`close_turn`, are also called directly
    around an awaited call (``gateway/direct_async.py``)."""
    turn = open_turn(core, model, messages, tool_specs, max_tokens, input_bound)
    result: Attempt = yield turn.op
    return close_turn(core, turn, result)


class Turn:
    """A model turn between its admission and its settlement: what the second half needs
    of the first, and the call to make (``op``)."""

    __slots__ = ("clamped", "decision", "endpoint", "hold", "name", "named", "op", "started")

    def __init__(
        self,
        name: str,
        named: dict[str, str],
        endpoint: str,
        decision: str,
        hold: Hold,
        clamped: int,
        op: CallModel,
        started: float,
    ) -> None:
        self.name, self.named, self.endpoint, self.decision = name, named, endpoint, decision
        self.hold, self.clamped, self.op, self.started = hold, clamped, op, started


def open_turn(
    core: RunState,
    model: Model,
    messages: Sequence[Mapping[str, Any]],
    tool_specs: Sequence[Mapping[str, Any]],
    max_tokens: int | None,
    input_bound: int | None,
) -> Turn:
    """The turn admitted (run, time, kill switch, breaker) and reserved; its call to make."""
    core.ensure_running()
    core.time.check()
    killswitch.check(core, None, None)
    name = text(getattr(model, "name", type_name(model)), 200)
    provider = genai_provider(model)
    named = {"provider": provider} if provider else {}  # gen_ai.provider.name on its span
    endpoint, decision = _admit_endpoint(core, model, name)
    bound = input_token_bound(messages, tool_specs) if input_bound is None else input_bound
    clamped, charge = plan(core, model, bound, max_tokens)
    hold = core.budget.reserve(charge)
    timeout = min(core.policy.models.timeout_seconds, core.time.remaining())
    request = ModelRequest(
        messages=list(messages), tools=list(tool_specs), max_tokens=clamped, timeout=timeout
    )
    op = CallModel(model, request, timeout, killswitch.watch(core, None))
    return Turn(name, named, endpoint, decision, hold, clamped, op, core.time.now())


def close_turn(core: RunState, turn: Turn, result: Attempt) -> ModelResponse:
    """The turn settled from the call's ``result``: the response, or the stop raised."""
    name, named, hold, clamped = turn.name, turn.named, turn.hold, turn.clamped
    elapsed = core.time.now() - turn.started
    if core.recording is not None:
        recording.model_call(core, turn.op, (name, turn.endpoint, clamped), result, elapsed)
    if isinstance(result.error, killswitch.Cancelled):  # stop_all, while the call ran
        core.budget.settle(hold, ONE_STEP)
        core.events.add(
            "model_call", model=name, outcome="cancelled", seconds=round(elapsed, 6), **named
        )
        core.events.flush()
        raise core.stamp(result.error.stop)
    # Unusable output is the model's fault, not the endpoint's: only failures count.
    endpoint_ok = result.ok or isinstance(result.error, ModelOutputError | InvalidUsage)
    breaker.record(core, turn.endpoint, endpoint_ok, probe=turn.decision == "probe")
    if isinstance(result.error, InvalidUsage):  # an adapter found the usage unusable
        raise invalid_usage(core, hold, name, str(result.error))
    if not result.ok:
        _failed(core, hold, name, named, result, elapsed)
    response, usd = _settled(core, turn.op.model, hold, name, named, result.value)
    core.events.add(
        "model_call",
        model=response.model or name,
        outcome="ok",
        **named,
        input_tokens=response.input_tokens,
        output_tokens=response.output_tokens,
        max_tokens=clamped,
        usd=str(usd),
        finish_reason=response.finish_reason,
        tool_calls=[c.name for c in response.tool_calls],
        seconds=round(elapsed, 6),
    )
    _accept(core, name, response, clamped)
    return response


def _admit_endpoint(core: RunState, model: Model, name: str) -> tuple[str, str]:
    """The model endpoint's breaker: (its name, the breaker's decision); while it is open no
    request is sent. Its name: the model's ``dependency`` when it gives one (models of one
    endpoint can share it), else the model's name."""
    dependency = getattr(model, "dependency", None)
    endpoint = dependency if isinstance(dependency, str) and dependency else f"model:{name}"
    if core.recording is not None:
        recording.endpoint(core, endpoint)
    decision, state = breaker.admit(core, endpoint)
    if decision == "open":
        core.events.add("denied", model=name, why="degraded")
        raise core.stamp(
            Stop(
                "dependency_degraded",
                name,
                retry_after=max(0.0, state.until - breaker.wall(core)),
                message=f"the model endpoint {name!r} is degraded (breaker open)",
            )
        )
    return endpoint, decision


def _failed(
    core: RunState, hold: Hold, name: str, named: Mapping[str, str], result: Attempt, elapsed: float
) -> NoReturn:
    """A model call that raised or timed out: one step charged, the run stopped."""
    core.budget.settle(hold, ONE_STEP)
    error = result.error
    what = error_text(error)  # a model's exception may not even print
    core.events.add("model_call", model=name, outcome="error", error=what, seconds=elapsed, **named)
    core.events.flush()
    if result.timed_out and core.time.remaining() <= 0:
        core.time.check()
    if isinstance(error, ModelOutputError):
        raise core.stamp(Stop("invalid_model_output", name, message=text(error)))
    raise core.stamp(Stop("model_error", name, message=what))


def _settled(
    core: RunState, model: Model, hold: Hold, name: str, named: Mapping[str, str], value: Any
) -> tuple[ModelResponse, Decimal]:
    """The response checked (structure, types, usage figures) and its cost settled."""
    try:
        response = validate_response(value)
    except InvalidUsage as bad:
        raise invalid_usage(core, hold, name, str(bad)) from None
    except ModelOutputError as bad:
        # The call happened and what it used is unknown: the reservation (worst case) stands.
        core.budget.settle(hold, hold.charge)
        core.events.add("model_call", model=name, outcome="invalid", error=str(bad),
                        usd=str(hold.charge.usd), **named)  # fmt: skip
        core.events.flush()
        raise core.stamp(Stop("invalid_model_output", name, message=str(bad))) from None
    price = price_of(core, model, input_tokens=response.input_tokens)
    usd = price.cost(response.input_tokens, response.output_tokens) if price else Decimal(0)
    actual = Charge(
        steps=1, input_tokens=response.input_tokens, output_tokens=response.output_tokens, usd=usd
    )
    core.budget.settle(hold, actual)
    return response, usd


def _accept(core: RunState, name: str, response: ModelResponse, clamped: int) -> None:
    """Keep the turn's text; stop on an answer cut at its cap or one with nothing in it."""
    core.turn_text = response.text or None
    if response.text:
        core.last_text = response.text
    if response.finish_reason in ("length", "max_tokens"):
        core.events.flush()
        raise truncated(core, name, clamped)
    if not response.text and not response.tool_calls:
        core.events.flush()
        raise core.stamp(
            Stop(
                "invalid_model_output",
                name,
                message="neither text nor tool calls",
                extra={"why": "empty"},
            )
        )
    core.events.flush()
