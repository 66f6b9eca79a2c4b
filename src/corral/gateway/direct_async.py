"""The chain called directly from async code: ``AsyncRun.call`` of a plain read (and so
every read of corral's loop), and every model turn of ``AsyncRun`` (and of the loop),
without a flow and a driver.

The async twin of :mod:`corral.gateway.direct`: the same steps as
:func:`~corral.gateway.chain.call_flow`, in the same order and through the same functions,
awaited one after the other. The tool may be async (awaited in the caller's task under its
deadline, :func:`corral.gateway._aio.awaiting`) or sync (in a worker thread, so the event
loop goes on), as :func:`~corral.gateway.drivers.execute_async` runs it (on ``corral.run``'s
own loop, as :func:`~corral.gateway.drivers.execute_loop` does: inline); a call id is
allowed (it only names the call on its events, a read is not keyed by it). Anything else —
a write, a tool needing approval, credentials or a :class:`~corral.ToolContext`, a
described tool, an idempotency key, a name that is not a plain ``str`` — goes through the
flow.

A model turn is :func:`~corral.gateway.model_turn.model_flow`'s two halves called around
the awaited call.

As :func:`~corral.gateway.drivers.drive_async` does, this path sets
:data:`~corral.clock.DEADLINE` while it runs, pauses between attempts on the event loop
(on the run's clock when it is not the system's), hands what a tool raises that is not an
``Exception`` back as the failure it is (``gateway/_escapes.py``), and scrubs what a
refusal or a stop quotes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from corral.clock import DEADLINE, DRIVEN, SystemClock
from corral.exceptions import Stop, ToolRejected
from corral.gateway import attempts, chain
from corral.gateway._escapes import CANCELLATION, Escaped
from corral.gateway.call import Call
from corral.gateway.direct import Plan, admitted, attempt, plan_of
from corral.gateway.drivers import call_model_async, execute_async, execute_loop
from corral.gateway.model_turn import close_turn, open_turn
from corral.gateway.ops import Attempt, CallModel, Execute
from corral.gateway.state import RunState
from corral.models.base import Model, ModelResponse


def plan_for(plans: dict[str, Plan | None], core: RunState, name: str) -> Plan | None:
    """The plan for calls of ``name`` (a plain ``str``) in ``core``'s run, kept in ``plans``
    (the async run's own); ``None`` when its calls take the flow."""
    if name in plans:
        return plans[name]
    plan = plans[name] = plan_of(core, name, async_tools=True)
    return plan


async def call(plan: Plan, raw_args: Any, call_id: str | None, owned: bool = False) -> Any:
    """Govern one call of the plan's tool; the observation, or the stop or refusal
    (``owned``: called from an event loop of corral's own, see
    :func:`~corral.gateway.drivers.execute_loop`)."""
    core = plan.core
    call = Call(core, plan.name, raw_args, None, call_id, False)
    core.last_call = None
    token = DEADLINE.set(DRIVEN)
    try:
        return await _chain(call, plan, owned)
    except (Stop, ToolRejected) as refusal:
        core.scrub_refusal(refusal)
        raise
    finally:
        DEADLINE.reset(token)


async def _chain(call: Call, plan: Plan, owned: bool) -> Any:
    """:func:`~corral.gateway.chain.call_flow`'s steps for a plain read, awaited."""
    core = plan.core
    chain.identify(call)  # as the flow's admission: the call's id on its events
    served = admitted(call, plan)
    if served is not chain.NOT_SERVED:
        return served
    while True:  # the attempts, as in the flow
        hold, started, op = attempt(call, plan)
        ended = attempts.attempted(call, hold, started, await _execute(op, owned))
        if type(ended) is not attempts.Retry:
            return ended
        if ended.pause > 0:
            DEADLINE.set(DRIVEN)  # the pause is not the run's wait (as in drive_async)
            if isinstance(core.clock, SystemClock):
                await asyncio.sleep(ended.pause)
            else:
                core.clock.sleep(ended.pause)


async def _execute(op: Execute, owned: bool) -> Attempt:
    """One attempt; a ``BaseException`` the tool raised of its own is its failure."""
    return await _escaping(execute_loop if owned else execute_async, op)


async def model_turn(
    core: RunState,
    model: Model,
    messages: Sequence[Mapping[str, Any]],
    tool_specs: Sequence[Mapping[str, Any]],
    max_tokens: int | None,
    input_bound: int | None,
) -> ModelResponse:
    """One governed model turn (see :func:`~corral.gateway.model_turn.model_flow`)."""
    token = DEADLINE.set(DRIVEN)
    try:
        turn = open_turn(core, model, messages, tool_specs, max_tokens, input_bound)
        return close_turn(core, turn, await _escaping(call_model_async, turn.op))
    finally:
        DEADLINE.reset(token)


async def _escaping(wait: Callable[[Any], Awaitable[Attempt]], op: Execute | CallModel) -> Attempt:
    """``wait(op)``; a ``BaseException`` the tool or model raised of its own is its failure
    (as ``gateway/_escapes.py`` hands it to a flow)."""
    try:
        return await wait(op)
    except CANCELLATION:
        raise
    except BaseException as exc:
        if isinstance(exc, Exception):  # the driver's own failure, not the call's
            raise
        return Attempt(False, error=Escaped(exc))
