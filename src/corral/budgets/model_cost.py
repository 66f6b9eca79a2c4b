"""The plan of a model call: how many output tokens it may ask for, and its worst-case
charge, given the run's limits, what it used and holds, the request's input bound and the
model's price — or the stop that refuses it when not even a minimal answer fits.

Pure arithmetic over the budgets' types and a :class:`~corral.models.base.Price`; the
gateway's model turn (:mod:`corral.gateway.model_turn`) applies it to a run.

>>> from corral.budgets.meter import Limits
>>> max_tokens, charge = answer_room(Limits(max_tokens=1_000), Charge(), Charge(),
...                                  input_bound=900, asked=500, price=None)
>>> max_tokens, charge.input_tokens, charge.output_tokens
(100, 900, 100)
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal
from typing import Any

from corral.budgets.meter import Charge, Limits, Usage
from corral.exceptions import Stop
from corral.models.base import Price
from corral.stops import StopReason

#: The smallest answer a call is planned for (or what was asked, if smaller).
MIN_ANSWER_TOKENS = 16

# (tokens left, reason, scope, limit, what usage would be with a minimal answer)
_Room = tuple[int, StopReason, str, Any, Any]


def input_stop(limits: Limits, used: Usage | Charge, held: Charge, input_bound: int) -> Stop | None:
    """The stop for a request whose input alone does not fit the input-token limit."""
    tin = used.input_tokens + held.input_tokens
    if limits.max_input_tokens is None or tin + input_bound <= limits.max_input_tokens:
        return None
    return Stop(
        "max_tokens",
        "run/input",
        scope="run/input",
        limit=limits.max_input_tokens,
        observed=tin + input_bound,
        message="the request alone does not fit",
    )


def answer_room(
    limits: Limits,
    used: Usage | Charge,
    held: Charge,
    *,
    input_bound: int,
    asked: int,
    price: Price | None,
) -> tuple[int, Charge] | Stop:
    """``(max_tokens, worst-case charge)`` for a call of ``input_bound`` input tokens asking
    for ``asked`` output tokens, cut to what the token and USD limits leave; or the stop of
    the binding limit when less than a minimal answer is left."""
    minimal = min(MIN_ANSWER_TOKENS, asked)
    rooms = _token_rooms(limits, used, held, input_bound, minimal)
    if limits.max_usd is not None and price is not None:
        rooms += _usd_room(limits.max_usd, used, held, input_bound, minimal, price)
    max_tokens = asked
    if rooms:
        room, reason, scope, limit, observed = min(rooms, key=lambda r: r[0])
        if room < minimal:
            return Stop(
                reason,
                scope,
                scope=scope,
                limit=limit,
                observed=observed,
                message="not even a minimal answer fits in what the budget has left",
            )
        max_tokens = min(asked, room)
    worst_usd = price.cost(input_bound, max_tokens) if price is not None else Decimal(0)
    return max_tokens, Charge(
        steps=1, input_tokens=input_bound, output_tokens=max_tokens, usd=worst_usd
    )


def _token_rooms(
    limits: Limits, used: Usage | Charge, held: Charge, input_bound: int, minimal: int
) -> list[_Room]:
    tin = used.input_tokens + held.input_tokens
    tout = used.output_tokens + held.output_tokens
    rooms: list[_Room] = []
    if limits.max_output_tokens is not None:
        left = limits.max_output_tokens - tout
        rooms.append((left, "max_tokens", "run/output", limits.max_output_tokens, tout + minimal))
    if limits.max_tokens is not None:
        left = limits.max_tokens - tin - tout - input_bound
        seen = tin + tout + input_bound + minimal
        rooms.append((left, "max_tokens", "run", limits.max_tokens, seen))
    return rooms


def _usd_room(
    max_usd: Decimal,
    used: Usage | Charge,
    held: Charge,
    input_bound: int,
    minimal: int,
    price: Price,
) -> list[_Room]:
    usd_in = price.input_usd_per_mtok * input_bound / Decimal(1_000_000)
    spent = used.usd + held.usd
    left = max_usd - spent - usd_in
    if price.output_usd_per_mtok > 0:
        tokens = left * Decimal(1_000_000) / price.output_usd_per_mtok
        room = int(tokens.to_integral_value(ROUND_FLOOR))
        return [(room, "max_usd", "run", max_usd, spent + usd_in + price.cost(0, minimal))]
    if left < 0:
        return [(-1, "max_usd", "run", max_usd, spent + usd_in)]
    return []
