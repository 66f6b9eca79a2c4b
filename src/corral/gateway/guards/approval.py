"""Approvals: a write that needs one waits for a decision bound to the exact action.

The decision is bound to (run, tool, argument digest) and used once. Waiting is
not charged to ``max_seconds``. Two channels:

- an in-process callback (a trusted local approver, for development and tests)
  called with an :class:`ApprovalRequest`, returning ``True``/``False`` or an
  :class:`ApprovalDecision`;
- without one, the store's queue (:mod:`corral.controls.approvals`): the request is filed
  in the store and decided from another process (``corral approvals approve``).

This module applies a channel's answer; the queue's waiting lives in
:mod:`corral.gateway.guards.approval_queue`, the queue itself in
:mod:`corral.controls.approvals`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from corral._safe import error_text
from corral.controls.approvals import ApprovalDecision, ApprovalRequest
from corral.exceptions import Stop, ToolRejected
from corral.gateway.hygiene import cap as cut

__all__ = [
    "PURPOSE_CHARS",
    "ApprovalDecision",
    "ApprovalRequest",
    "decide",
    "request",
    "unreachable",
]

if TYPE_CHECKING:
    from corral.gateway.call import Call
    from corral.gateway.state import RunState

#: The longest stated purpose (the model's text of the turn) shown to an approver.
PURPOSE_CHARS = 1000


def request(call: Call) -> ApprovalRequest:
    """What the approver is asked about this call."""
    core, eff, args, digest = call.run, call.eff, call.args, call.digest
    key, call_id = call.idem_key, call.call_id
    text = core.turn_text
    purpose = None if not text else core.redactor.text(cut(text, PURPOSE_CHARS))
    return ApprovalRequest(
        run_id=core.id,
        tool=eff.tool.name,
        arguments=dict(args),
        args_digest=digest,
        tenant=core.tenant,
        agent=core.agent,
        timeout=core.policy.writes.approval_timeout_seconds,
        step=core.budget.meter.usage().steps,
        call_id=call_id,
        purpose=purpose,
        cost_usd=eff.cost_usd,
        effect=eff.effect,
        idempotency_key=key,
    )


def unreachable(core: RunState, req: ApprovalRequest, error: Exception, waited: float) -> NoReturn:
    """The approval channel failed: refuse the call (fail closed), retryable."""
    core.time.waiting += waited
    what = error_text(error)
    core.events.add(
        "approval",
        tool=req.tool,
        args_digest=req.args_digest,
        approved=False,
        error=what,
        waited=round(waited, 3),
    )
    raise core.stamp(
        Stop(
            "control_plane_unavailable",
            "approvals",
            tool=req.tool,
            retryable=True,
            message=f"the approval channel failed for {req.tool}: {what}",
        )
    ) from error


def _decision(answer: Any) -> ApprovalDecision:
    """Only ``True`` or an approving :class:`ApprovalDecision` approves; anything else
    (``None`` from a callback that forgot to return, ``"no"``, ``1``) is a denial."""
    if isinstance(answer, ApprovalDecision):
        if answer.approved is True:
            return answer
        return ApprovalDecision(approved=False, approver=answer.approver, reason=answer.reason)
    if answer is True or answer is False:
        return ApprovalDecision(approved=answer)
    why = f"the approver answered {answer!r}, not True or an ApprovalDecision"
    return ApprovalDecision(approved=False, reason=why)


def decide(
    core: RunState,
    req: ApprovalRequest,
    answer: Any,
    waited: float,
    *,
    approval_id: str | None = None,
) -> None:
    """Apply a channel's answer: return on approval, else stop (or tell the model).

    With ``approval_id`` (the queue) the store already judged the timeout: a decision
    it recorded before the request expired stands.
    """
    core.time.waiting += waited
    decision = _decision(answer)
    extra = {} if approval_id is None else {"approval_id": approval_id}
    core.events.add(
        "approval",
        tool=req.tool,
        args_digest=req.args_digest,
        approved=decision.approved,
        approver=decision.approver,
        reason=decision.reason,
        waited=round(waited, 3),
        **extra,
    )
    if approval_id is None and waited > req.timeout:
        raise core.stamp(
            Stop(
                "approval_timeout",
                req.tool,
                tool=req.tool,
                message=f"no decision within {req.timeout:g} s",
            )
        )
    if decision.approved:
        return
    message = f"{req.tool} was not approved" + (f": {decision.reason}" if decision.reason else "")
    if core.policy.writes.on_denied == "tell_model":
        raise ToolRejected("approval_denied", message, tool=req.tool)
    raise core.stamp(Stop("approval_denied", req.tool, tool=req.tool, message=message))
