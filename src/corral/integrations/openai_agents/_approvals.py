"""Writes that need approval, asked through the SDK's own interruption.

A governed tool's ``needs_approval`` (:func:`needs_approval`) files the call's request in
the run's approval queue — the same request, bound to (run, tool, argument digest), that
``run.authorize`` waits on — and answers ``True``: the SDK interrupts the run
(``result.interruptions``). The decision then comes from either side, and both agree:

- ``corral approvals approve|deny ID`` (another process): :func:`wait_for_decisions`
  waits for it and applies it to the SDK's state (``RunState.approve`` / ``reject``);
  resuming without it works too for an approval (``needs_approval`` sees it decided);
- ``RunState.approve`` / ``reject`` in the caller's code: :func:`sync` records it in the
  queue (approver ``openai-agents:RunState``) as the resumed run meets it.

On resume the approved call passes ``run.authorize``, which consumes the approval once.
A denial reaches the model as the SDK's rejection; under ``writes.on_denied: stop`` (the
default) the run then stops with ``approval_denied``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from corral.controls import approvals as queue
from corral.controls.approvals import ApprovalDecision
from corral.exceptions import ApprovalError, Stop, ToolRejected
from corral.gateway.call import Call
from corral.gateway.canonical import args_digest, canonical
from corral.gateway.guards import approval, approval_queue, idempotency, killswitch
from corral.integrations.openai_agents._govern import SDK_APPROVER, Governor, Pending
from corral.integrations.openai_agents._stop import stopped
from corral.stores.base import ApprovalRecord
from corral.tools import ArgumentsInvalid


async def needs_approval(
    gov: Governor, name: str, sdk_tool: str, params: Any, call_id: str
) -> bool:
    """Whether the SDK must interrupt the run for this call: its request is filed (or found)
    in the queue and still pending. ``False`` leaves everything else to ``run.authorize``:
    a call corral refuses anyway (arguments, kill switch, budgets), an approval already
    given (consumed there), a denial (told there)."""
    core = gov.core
    if call_id in gov.pending:
        return True  # asked already: still waiting
    eff = core.effective(name)
    try:
        if killswitch.blocking_switch(core, name, eff) is not None:
            return False
        args = eff.tool.validate_args(dict(params) if isinstance(params, dict) else params)
        core.budget.fits(eff.charge)  # nobody is asked to approve a call that cannot run
    except (ArgumentsInvalid, Stop):
        return False
    call = Call(core, name, args, None, call_id, True)
    call.eff, call.tool, call.write, call.args = eff, eff.tool, eff.effect == "write", args
    call.text = canonical(args)
    call.digest = args_digest(args, text=call.text)
    call.idem_key = idempotency.key_for(call) if call.write else None
    request = approval.request(call)
    try:
        # The queue's own filing, as run.authorize does it: the call re-attaches to it.
        record = approval_queue._file(core, eff, request)
    except Stop as stop:
        raise stopped(stop) from None
    except Exception as exc:  # whatever the store raises: the channel failed (fail closed)
        try:
            approval.unreachable(core, request, exc, 0.0)
        except Stop as stop:
            raise stopped(stop) from None
    if record.status != "pending":
        return False  # approved already: run.authorize consumes it
    gov.pending[call_id] = Pending(record.id, sdk_tool, request)
    return True


def sync(gov: Governor, ctx: Any) -> None:
    """Apply what the SDK's state decided (``RunState.approve`` / ``reject``) about the
    calls waiting for approval to the queue; a denial is recorded as the run's (and stops
    it under ``writes.on_denied: stop``)."""
    if not gov.pending:
        return
    for call_id, waiting in list(gov.pending.items()):
        verdict = ctx.is_tool_approved(waiting.sdk_tool, call_id)
        if verdict is None:
            continue
        decided(gov, call_id, verdict is True)


def decided(gov: Governor, call_id: str, approved: bool) -> str | None:
    """The SDK let the call go ahead (``approved``) or rejected it: make the queue agree.

    Returns ``None`` when the call may go on to ``run.authorize`` (which consumes the
    approval), or what to tell the model for a denial under ``writes.on_denied:
    tell_model``; raises :class:`RunStopped` for a denial that stops the run, an expired
    request or one a kill switch cancelled. A decision the queue already holds wins: a call
    approved in the SDK but denied in the queue is denied."""
    waiting = gov.pending.pop(call_id, None)
    if waiting is None:
        return None
    record = _decide(gov, waiting.approval_id, approved)
    if record.status in ("approved", "used", "pending"):
        return None
    if record.status != "denied":
        raise stopped(_ended(gov, waiting, record))
    answer = ApprovalDecision(
        approved=False, approver=record.approver or SDK_APPROVER, reason=record.reason or ""
    )
    waited = max(0.0, (record.decided_at or time.time()) - record.created)
    try:
        approval.decide(gov.core, waiting.request, answer, waited, approval_id=record.id)
    except ToolRejected as rejected:
        return rejected.message  # writes.on_denied: tell_model
    except Stop as stop:
        raise stopped(stop) from None
    return None


def _decide(gov: Governor, approval_id: str, approved: bool) -> ApprovalRecord:
    """Record the SDK's decision on a pending request; returns the request as it stands."""
    store = gov.core.store
    how = "approve" if approved else "reject"
    try:
        decide = queue.approve if approved else queue.deny
        return decide(store, approval_id, approver=SDK_APPROVER, reason=f"RunState.{how}")
    except ApprovalError:  # decided meanwhile (corral approvals): that decision stands
        return queue.must(store, approval_id)


async def wait_for_decisions(result: Any, run: Any, *, timeout: float | None = None) -> Any:
    """Wait until the approval queue has decided every interruption corral asked for in
    ``result`` (``corral approvals approve|deny ID`` from anywhere), apply each decision to
    the SDK's state (``RunState.approve`` / ``reject``), and return the state to resume
    with: ``await Runner.run(agent, state, run_config=...)``.

    Interruptions corral did not ask for (the agent's own ``needs_approval``) are left for
    the caller to decide on the returned state. Polls the store (50 ms doubling to 1 s);
    an expired request stops the run with ``approval_timeout``, one cancelled by a kill
    switch with ``kill_switch`` (raised as :class:`RunStopped`); ``timeout`` (seconds)
    bounds this wait alone, after which the state is returned with the rest undecided.
    """
    from corral.integrations.openai_agents._govern import governor

    gov = governor(run)
    state = result.to_state()
    ours = [(item, gov.pending[item.call_id]) for item in result.interruptions
            if item.call_id in gov.pending]  # fmt: skip
    started = time.monotonic()
    for item, waiting in ours:
        record = await _poll(gov, waiting, started, timeout)
        if record is None:
            break  # the caller's timeout: the rest stays undecided
        if record.status == "approved":
            state.approve(item)
        elif record.status == "denied":
            state.reject(item)
        else:
            gov.pending.pop(item.call_id, None)
            raise stopped(_ended(gov, waiting, record))
    return state


async def _poll(
    gov: Governor, waiting: Pending, started: float, timeout: float | None
) -> ApprovalRecord | None:
    core = gov.core
    delay, beat = approval_queue.POLL_FIRST, time.monotonic()
    while True:
        record = queue.must(core.store, waiting.approval_id)
        if record.status != "pending":
            return record
        now = time.time()
        if now >= record.expires:
            why = f"no decision within {waiting.request.timeout:g} s"
            queue.settle(core.store, record, "expired", actor=queue.SYSTEM_ACTOR, reason=why)
            continue
        if timeout is not None and time.monotonic() - started >= timeout:
            return None
        if time.monotonic() - beat >= approval_queue.HEARTBEAT_SECONDS:
            core.store.heartbeat(core.id)
            beat = time.monotonic()
        await asyncio.sleep(min(delay, max(0.0, record.expires - now)))
        delay = min(delay * 2, approval_queue.POLL_MAX)


def _ended(gov: Governor, waiting: Pending, record: ApprovalRecord) -> Stop:
    """The stop of a request that ended undecided: expired, or cancelled (kill switch)."""
    core, tool = gov.core, waiting.request.tool
    core.time.waiting += max(0.0, (record.decided_at or time.time()) - record.created)
    if record.status == "expired":
        message = f"no decision on approval {record.id} within {waiting.request.timeout:g} s"
        return core.stamp(Stop("approval_timeout", tool, tool=tool, message=message,
                               extra={"approval": record.id}))  # fmt: skip
    by = f" by {record.approver}" if record.approver else ""
    return core.stamp(
        Stop(
            "kill_switch",
            tool,
            tool=tool,
            message=f"approval {record.id} was {record.status}{by}"
            + (f": {record.reason}" if record.reason else ""),
            extra={"approval": record.id, "set_by": record.approver},
        )
    )
