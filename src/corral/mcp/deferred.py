"""Approvals answered with ``input_required`` (MCP 2026-07-28 clients).

A 2026-07-28 ``tools/call`` may be answered with the SDK's ``InputRequiredResult``: the
client retries the same request later, echoing an opaque ``requestState``. For a write that
needs approval the proxy files the request in the run's approval queue — the same request,
bound to (run, tool, argument digest), that ``run.authorize`` waits on for a held call — and
answers ``input_required`` at once, its state naming the approval, the session (the
requester) and the argument digest. The SDK's ``RequestStateBoundary`` seals that state and
binds it to the method, the tool, the exact arguments and the requester (the proxy's
session); a state replayed by another requester or with other arguments is refused by it
(``Invalid or expired requestState``) before the proxy sees it, and checked again here.

On a retry with the state: still pending, the same ``input_required`` again; approved, the
call goes on to ``run.authorize``, which re-attaches to the approval and consumes it once;
denied, ``approval_denied``; expired, ``approval_timeout``; cancelled by a kill switch,
``kill_switch`` (each as a held call meets it); used already, a tool error saying so (the
write it approved ran; nothing runs twice).

Imports the gateway's approval guard and queue, as :mod:`corral.integrations.openai_agents`
does for the Agents SDK's interruptions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import mcp_types as types

from corral.controls import approvals as queue
from corral.controls.approvals import ApprovalDecision
from corral.exceptions import Stop
from corral.gateway.call import Call
from corral.gateway.canonical import args_digest, canonical
from corral.gateway.guards import approval, approval_queue, idempotency, killswitch
from corral.loop.run import AsyncRun
from corral.stores.base import ApprovalRecord

__all__ = ["PENDING_META", "Pending", "ask", "resume"]

#: What the client is told while the approval is pending (the result's ``_meta``).
PENDING_META = "io.corral/approval"


class Pending:
    """The answer a deferred call gets: the ``input_required`` result, or a refusal text."""

    def __init__(self, result: types.InputRequiredResult | None, refused: str | None) -> None:
        self.result = result
        self.refused = refused


def _call(run: AsyncRun, name: str, arguments: Mapping[str, Any]) -> Call | None:
    """The chain's view of the call, as far as approval goes; None when ``run.authorize``
    decides it on its own (no approval needed, or refused before anyone is asked)."""
    core = run._core
    if core.approver is not None or core.observes("approvals"):
        return None
    try:
        eff = core.effective(name)
        if not eff.require_approval or killswitch.blocking_switch(core, name, eff) is not None:
            return None
        args = eff.tool.validate_args(dict(arguments))
        core.budget.fits(eff.charge)  # nobody is asked to approve a call that cannot run
    except Exception:  # ArgumentsInvalid, Stop, an unknown tool: authorize says why
        return None
    call = Call(core, name, args, None, None, True)
    call.eff, call.tool, call.write, call.args = eff, eff.tool, eff.effect == "write", args
    call.text = canonical(args)
    call.digest = args_digest(args, text=call.text)
    call.idem_key = idempotency.key_for(call) if call.write else None
    return call


def _digest(run: AsyncRun, name: str, arguments: Mapping[str, Any]) -> str | None:
    """The digest the approval of these arguments is filed under (as validated), or None."""
    try:
        args = run._core.effective(name).tool.validate_args(dict(arguments))
    except Exception:  # not arguments this tool takes: nothing was filed for them
        return None
    return args_digest(args, text=canonical(args))


def _state(record: ApprovalRecord, session: str) -> str:
    return json.dumps(
        {"approval": record.id, "session": session, "digest": record.args_digest},
        separators=(",", ":"),
    )


def _pending(record: ApprovalRecord, session: str) -> Pending:
    result = types.InputRequiredResult(request_state=_state(record, session))
    result = result.model_copy(
        update={"meta": {PENDING_META: {"id": record.id, "status": record.status}}}
    )
    return Pending(result, None)


def ask(run: AsyncRun, session: str, name: str, arguments: Mapping[str, Any]) -> Pending | None:
    """A first call (no state): file its approval request and answer ``input_required``;
    None when the call needs no approval now (``run.authorize`` takes it from here)."""
    call = _call(run, name, arguments)
    if call is None:
        return None
    core = run._core
    request = approval.request(call)
    # The queue's own filing, as run.authorize does it: the retry re-attaches to it.
    try:
        record = approval_queue._file(core, call.eff, request)
    except Stop:
        raise
    except Exception as exc:  # whatever the store raises: the channel failed (fail closed)
        approval.unreachable(core, request, exc, 0.0)
    if record.status != "pending":
        return None  # approved already: run.authorize consumes it
    return _pending(record, session)


def resume(
    run: AsyncRun, session: str, name: str, arguments: Mapping[str, Any], state: str
) -> Pending | None:
    """A retry with the state the proxy minted (unsealed and checked by the SDK): None when
    the call may go on to ``run.authorize`` (approved: consumed there); else the answer.
    Raises what a held call would (``approval_denied``: a ``Stop`` or ``ToolRejected``)."""
    try:
        held = json.loads(state)
        approval_id, owner, digest = held["approval"], held["session"], held["digest"]
    except (ValueError, KeyError, TypeError):
        return Pending(None, "invalid_request_state: not a state this proxy minted")
    core = run._core
    record = core.store.get_approval(approval_id) if isinstance(approval_id, str) else None
    if (
        record is None
        or owner != session
        or record.run_id != core.id
        or record.tool != name
        or record.args_digest != digest
        or _digest(run, name, arguments) != digest
    ):
        return Pending(
            None,
            f"invalid_request_state:{name} (approval_mismatch): the state is bound to another "
            "requester, session or call",
        )
    call = _call(run, name, arguments)
    if call is None:
        # Refused before anyone is asked (a kill switch, the budget): run.authorize says
        # why; a request still pending is cancelled with it.
        if record.status == "pending":
            why = "the call was refused before its approval was decided"
            queue.settle(core.store, record, "cancelled", actor=queue.SYSTEM_ACTOR, reason=why)
        return None
    if record.status == "pending" and time.time() >= record.expires:
        timeout = core.policy.writes.approval_timeout_seconds
        why = f"no decision within {timeout:g} s"
        queue.settle(core.store, record, "expired", actor=queue.SYSTEM_ACTOR, reason=why)
        record = queue.must(core.store, record.id)
    if record.status == "pending":
        return _pending(record, session)
    if record.status == "approved":
        return None  # run.authorize re-attaches to it and consumes it once
    if record.status == "denied":
        answer = ApprovalDecision(
            approved=False, approver=record.approver, reason=record.reason or ""
        )
        waited = max(0.0, (record.decided_at or time.time()) - record.created)
        approval.decide(core, approval.request(call), answer, waited, approval_id=record.id)
        return None  # not reached: a denial raises
    if record.status == "used":  # this state's write ran already: nothing runs twice
        return Pending(
            None,
            f"approval_used:{name} (approval {record.id} was used): the write it approved ran",
        )
    raise _ended(run, record, name)


def _ended(run: AsyncRun, record: ApprovalRecord, tool: str) -> Stop:
    """The stop of a request that ended undecided, as a held call meets it: expired
    (``approval_timeout``) or cancelled by a kill switch (``kill_switch``)."""
    core = run._core
    core.time.waiting += max(0.0, (record.decided_at or time.time()) - record.created)
    if record.status == "expired":
        timeout = core.policy.writes.approval_timeout_seconds
        message = f"no decision on approval {record.id} within {timeout:g} s"
        stop = Stop("approval_timeout", tool, tool=tool, message=message,
                    extra={"approval": record.id})  # fmt: skip
        return core.stamp(stop)
    by = f" by {record.approver}" if record.approver else ""
    why = f": {record.reason}" if record.reason else ""
    message = f"approval {record.id} was {record.status}{by}{why}"
    stop = Stop("kill_switch", tool, tool=tool, message=message,
                extra={"approval": record.id, "set_by": record.approver})  # fmt: skip
    return core.stamp(stop)
