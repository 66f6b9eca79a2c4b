"""The chain called directly: ``Run.call`` of a plain read, without a flow and a driver.

Most calls an agent makes are reads of sync tools that need no approval, no credentials
and no context. For those, ``Run.call`` takes this path: the same steps as
:func:`~corral.gateway.chain.call_flow`, in the same order and through the same functions
(kill switch, arguments and constraints, loop detection, degrade, read cache, budget
reservation, execution under the deadline, output checks, settlement, the event), called
one after the other instead of through a generator and
:func:`~corral.gateway.drivers.drive_sync`. Nothing is skipped: what a plan decides once
is only what cannot change during a run (the tool, how the run treats it, that the
allowlist lets it through). A call that is anything else — a write, a tool needing
approval, credentials or a :class:`~corral.ToolContext`, an async tool, a described tool,
an idempotency key or a call id, a name that is not a plain ``str`` — goes through the
flow.

``Run.authorize`` / ``AsyncRun.authorize`` of a plain read take the same path up to
execution (:func:`authorize`), and its report ends the attempt as the flow would
(:meth:`Pending.end`): the caller executes the tool, so the tool may be async or described
by the policy alone; a call id and span attributes name the call on its events.

Like the drivers, this path sets :data:`~corral.clock.DEADLINE` while it runs (so that
the store's waits end at the run's deadline), hands what a tool raises that is not an
``Exception`` back as the failure it is (``gateway/_escapes.py``), and scrubs what a
refusal or a stop quotes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral.budgets.meter import Hold
from corral.clock import DEADLINE, DRIVEN
from corral.exceptions import Stop, ToolRejected
from corral.gateway import attempts, chain
from corral.gateway._escapes import CANCELLATION, Escaped
from corral.gateway.call import Call
from corral.gateway.drivers import execute_sync
from corral.gateway.effective import Effective
from corral.gateway.guards import killswitch
from corral.gateway.ops import Attempt, Execute
from corral.gateway.state import RunState


class Plan:
    """What one run knows once of one read tool: its name and how it treats it."""

    __slots__ = ("core", "eff", "name")

    def __init__(self, core: RunState, name: str, eff: Effective) -> None:
        self.core = core
        self.name = name
        self.eff = eff


def plan_for(core: RunState, name: str) -> Plan | None:
    """The plan for calls of ``name`` (a plain ``str``) in ``core``'s run; ``None`` when
    its calls take the flow. Made at the first call, kept for the run."""
    plans: dict[str, Plan | None] = core.plans
    if name in plans:
        return plans[name]
    plan = plans[name] = plan_of(core, name, async_tools=False)
    return plan


def plan_of(core: RunState, name: str, *, async_tools: bool, external: bool = False) -> Plan | None:
    """A plan for ``name`` when its calls may take a direct path: a registered, allowed
    read that needs no approval, credentials or context, not described by the policy alone
    (``async_tools``: an async tool too; ``external``: the caller executes it, so any such
    tool, its :class:`~corral.ToolContext` made for the caller); else ``None``."""
    tool = core.tools.get(name)
    if tool is None or tool.name not in core.allowed or tool.name in core.unpinned:
        return None  # refused by the flow, with its events
    if not external and (
        tool.described or tool.context_param is not None or (tool.is_async and not async_tools)
    ):
        return None
    eff = core.effective(name)
    if eff.effect != "read" or eff.require_approval or eff.credentials:
        return None
    return Plan(core, name, eff)


def external_plan(core: RunState, name: str) -> Plan | None:
    """The plan for authorizing calls of ``name`` (a plain ``str``) that the caller
    executes; ``None`` when they take the flow. Made at the first call, kept for the run."""
    plans: dict[str, Plan | None] = core.external_plans
    if name in plans:
        return plans[name]
    plan = plans[name] = plan_of(core, name, async_tools=True, external=True)
    return plan


class Pending:
    """A plain read authorized on the direct path, executed by the caller: what its report
    needs to end the attempt (the flow's generator, on the flow's path)."""

    __slots__ = ("call", "hold", "started")

    def __init__(self, call: Call, hold: Hold, started: float) -> None:
        self.call = call
        self.hold = hold
        self.started = started

    def end(self, result: Attempt) -> Any:
        """The attempt ended with ``result``: the observation, or the stop or refusal
        (the caller's attempts are never retried by corral)."""
        try:
            ended = attempts.attempted(self.call, self.hold, self.started, result)
        except (Stop, ToolRejected) as refusal:
            self.call.run.scrub_refusal(refusal)
            raise
        if type(ended) is attempts.Retry:  # pragma: no cover - _may_retry refuses external
            raise AssertionError("a caller-executed read was to be retried")
        return ended


def authorize(
    plan: Plan, raw_args: Any, call_id: str | None, attributes: Mapping[str, str] | None
) -> tuple[Execute | None, Any]:
    """Pass a plain read up to its execution by the caller: ``(op, pending)`` to execute
    and then end with ``pending.end``, or ``(None, observation)`` when it was served from
    the read cache; raises the stop or refusal."""
    core = plan.core
    call = Call(core, plan.name, raw_args, None, call_id, True, attributes)
    core.last_call = None
    try:
        chain.identify(call)
        served = admitted(call, plan)
        if served is not chain.NOT_SERVED:
            return None, served
        hold, started, op = attempt(call, plan)
    except (Stop, ToolRejected) as refusal:
        core.scrub_refusal(refusal)
        raise
    return op, Pending(call, hold, started)


def call(plan: Plan, raw_args: Any) -> Any:
    """Govern one call of the plan's tool; the observation, or the stop or refusal."""
    core = plan.core
    call = Call(core, plan.name, raw_args, None, None, False)
    core.last_call = None
    token = DEADLINE.set(DRIVEN)
    try:
        return _chain(call, plan)
    except (Stop, ToolRejected) as refusal:
        core.scrub_refusal(refusal)
        raise
    finally:
        DEADLINE.reset(token)


def admitted(call: Call, plan: Plan) -> Any:
    """The flow's admission for a plain read (its registry and allowlist settled by the
    plan): the run running and in time, the kill switch, arguments and constraints, loop
    detection, degrade state; then the read cache. The cached observation, else
    :data:`~corral.gateway.chain.NOT_SERVED`."""
    core, eff, name = plan.core, plan.eff, plan.name
    call.tool_name, call.tool, call.eff = name, eff.tool, eff
    core.ensure_running()
    core.time.check()
    killswitch.check(core, name, eff)
    chain.vet(call)
    return chain.from_memory(call) if eff.cacheable else chain.NOT_SERVED


def attempt(call: Call, plan: Plan) -> tuple[Hold, float, Execute]:
    """The next attempt readied as in the flow: the run's time, the hold, the deadline; the
    hold, when it started, and what to execute."""
    core, eff = plan.core, plan.eff
    call.attempt += 1
    core.time.check()
    hold = core.budget.reserve(eff.charge)
    timeout = chain.start(call, hold, False)
    watch = killswitch.watch(core, plan.name)
    ctx = None if eff.tool.context_param is None else chain.context(call, timeout)
    return hold, core.time.now(), Execute(eff, call.args, ctx, timeout, None, watch)


def _chain(call: Call, plan: Plan) -> Any:
    """:func:`~corral.gateway.chain.call_flow`'s steps for a plain read."""
    served = admitted(call, plan)
    if served is not chain.NOT_SERVED:
        return served
    while True:  # the attempts, as in the flow
        hold, started, op = attempt(call, plan)
        ended = attempts.attempted(call, hold, started, _execute(op))
        if type(ended) is not attempts.Retry:
            return ended
        if ended.pause > 0:
            DEADLINE.set(DRIVEN)  # the pause is not the run's wait (as in drive_sync)
            plan.core.clock.sleep(ended.pause)


def _execute(op: Execute) -> Attempt:
    """One attempt; a ``BaseException`` the tool raised of its own is its failure."""
    try:
        return execute_sync(op)
    except CANCELLATION:
        raise
    except BaseException as exc:
        if isinstance(exc, Exception):  # the driver's own failure, not the tool's
            raise
        return Attempt(False, error=Escaped(exc))
