"""Approvals through the store: a queue that another process decides — the requests,
the decisions (:func:`approve`, :func:`deny`, expiry, cancellation) and their audit.
The waiting run's side lives in :mod:`corral.gateway.guards.approval_queue`.

A write that needs approval, in a run given no in-process ``approver``, files an
:class:`~corral.stores.base.ApprovalRecord` in the run's store — bound to (run,
tool, canonical-argument digest), its arguments redacted with the run's
redactor, expiring after ``writes.approval_timeout_seconds`` (default 15 min) —
and waits for someone to decide it from another process (``corral approvals
approve ID``, or :func:`approve` / :func:`deny`). While it waits the run:

- says so once per request on the ``corral`` logger, at WARNING so that it is seen
  by default: ``waiting for approval apr_… for refund.send — corral approvals
  approve apr_…`` (with ``--db`` when the store is not the default SQLite file);
- polls the store with backoff (``POLL_FIRST`` doubling to ``POLL_MAX``, in
  :mod:`corral.gateway.guards.approval_queue`); the async face awaits each pause, so
  the event loop stays free;
- renews its heartbeat (``HEARTBEAT_SECONDS``), so it is not taken for dead;
- re-checks the kill switch: a switch that covers the call cancels the request
  (``cancelled``) and stops the run with ``kill_switch``; ``run.cancel()`` cancels
  it too;
- holds no budget, and the time is not charged to ``max_seconds`` (it is reported
  as waiting seconds);
- at the deadline marks the request ``expired`` and stops with
  ``approval_timeout``; a store that fails stops it with
  ``control_plane_unavailable`` (fail closed).

Single use: the run proceeds on an approval only after moving it from
``approved`` to ``used`` (:meth:`~corral.stores.base.Store.transition_approval`:
of two consumers, one wins), so one approval never authorizes two executions;
other arguments are another action and need their own approval. A resumed run
(``Run(run_id=...)``) offering the same action again re-attaches to its request
still pending (or approved and not yet used) instead of filing another.

Every decision — approve, deny, expire, cancel — is appended to the audit log as
an ``approval_decision`` event of the approval's run and tenant, with ``actor``
the one who decided (``corral`` for an expiry, who set the switch for a
cancellation) and the approval id, tool, argument digest, status and reason in
its data. These events are not part of the run's own numbering: their ``seq`` is
0.

A kill switch set through ``corral kill enable`` cancels the pending approvals
it covers (:func:`cancel_covered`): by scope (global, tenant, agent, tool, run)
and mode — ``stop_all`` always, ``disable_writes`` when the tool is a write,
``disable_expensive`` when it is expensive, as the run judged it when filing;
a switch without a mode takes the run's ``kill_switch.mode_when_enabled``.

>>> from corral.testing import MemoryStore
>>> from corral.stores.base import ApprovalRecord
>>> store = MemoryStore()
>>> store.create_approval(ApprovalRecord(id="apr_1", run_id="run_1", tool="refund.send",
...     args_digest="d", arguments={"amount": 5}, agent="bot", expires=2e9))
>>> approve(store, "apr_1", approver="alice", reason="checked the order").status
'approved'
>>> [e.kind for e in store.events("run_1")]
['approval_decision']
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from corral.controls.killswitch import default_actor, describe
from corral.exceptions import ApprovalError, StoreError
from corral.stores.base import ApprovalRecord, ApprovalStatus, Event, KillSwitchState, Store

#: The actor of decisions corral takes itself (expiry).
SYSTEM_ACTOR = "corral"
#: The kind of the audit events that record decisions.
DECISION_EVENT = "approval_decision"

__all__ = [
    "DECISION_EVENT",
    "SYSTEM_ACTOR",
    "ApprovalDecision",
    "ApprovalRequest",
    "approve",
    "cancel_covered",
    "covers",
    "deny",
    "must",
    "new_id",
    "settle",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class ApprovalRequest:
    """What an approver decides on: the exact action (run, tool, arguments and their
    digest), who asks (tenant, agent), and why and at what cost: the run's ``step``, the
    model's tool-call identity (``call_id``), the model's text of that turn (``purpose``,
    its stated reason, cut to the approval guard's ``PURPOSE_CHARS``; ``None`` when there
    was none), the tool's declared ``cost_usd`` and ``effect`` and the write's ``idempotency_key``.
    The purpose is redacted of the run's secrets; the arguments are the model's own (the
    store's queue keeps them redacted)."""

    run_id: str
    tool: str
    arguments: Mapping[str, Any]
    args_digest: str
    tenant: str | None
    agent: str | None
    timeout: float
    step: int = 0
    call_id: str | None = None
    purpose: str | None = None
    cost_usd: Decimal = Decimal(0)
    effect: str = "write"
    idempotency_key: str | None = None

    def context(self) -> dict[str, Any]:
        """The fields beyond the action, as the store keeps them (JSON)."""
        return {
            "step": self.step,
            "call_id": self.call_id,
            "purpose": self.purpose,
            "cost_usd": str(self.cost_usd),
            "effect": self.effect,
            "idempotency_key": self.idempotency_key,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class ApprovalDecision:
    approved: bool
    approver: str = "local"
    reason: str = ""


def new_id() -> str:
    """A new approval id (``apr_`` and 20 hex digits)."""
    return "apr_" + uuid.uuid4().hex[:20]


def must(store: Store, approval_id: str) -> ApprovalRecord:
    found = store.get_approval(approval_id)
    if found is None:
        raise StoreError(f"approval {approval_id} is gone from the store")
    return found


# -- deciding -----------------------------------------------------------------------------
def settle(
    store: Store,
    record: ApprovalRecord,
    status: ApprovalStatus,
    *,
    actor: str,
    reason: str,
    now: float | None = None,
) -> ApprovalRecord | None:
    """Move a pending ``record`` to ``status`` and audit it; None if it was not pending."""
    changed = store.transition_approval(
        record.id,
        expect="pending",
        status=status,
        at=time.time() if now is None else now,
        approver=actor,
        reason=reason,
    )
    if changed is not None:
        _audit(store, changed, actor=actor)
    return changed


def _audit(store: Store, record: ApprovalRecord, *, actor: str) -> None:
    at = record.decided_at or time.time()
    store.append_events(
        [
            Event(
                run_id=record.run_id,
                seq=0,
                kind=DECISION_EVENT,
                at=at,
                data={
                    "approval_id": record.id,
                    "tool": record.tool,
                    "args_digest": record.args_digest,
                    "status": record.status,
                    "reason": record.reason,
                },
                tenant=record.tenant,
                actor=actor,
            )
        ]
    )


def quoted(text: str, limit: int = 80) -> str:
    """``text`` quoted for a one-line message, cut to ``limit`` characters (an id or a key
    comes from the command line, and may be anything)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def approve(
    store: Store,
    approval_id: str,
    *,
    approver: str | None = None,
    reason: str = "",
    tenant: str | None = None,
) -> ApprovalRecord:
    """Approve a pending request (see :func:`deny`); returns the decided record."""
    return _decide(store, approval_id, "approved", approver, reason, tenant)


def deny(
    store: Store,
    approval_id: str,
    *,
    approver: str | None = None,
    reason: str = "",
    tenant: str | None = None,
) -> ApprovalRecord:
    """Deny a pending request; returns the decided record.

    ``approver`` defaults to ``$USER@host``; ``tenant`` (when given) refuses a request
    of any other tenant. Raises :class:`~corral.ApprovalError` for an unknown request,
    one already decided or expired, or an approver that is the run's own agent; and
    :class:`~corral.exceptions.StoreError` when the store fails (the decision may then
    be recorded without its audit record: the message says so).
    """
    return _decide(store, approval_id, "denied", approver, reason, tenant)


def _decide(
    store: Store,
    approval_id: str,
    status: ApprovalStatus,
    approver: str | None,
    reason: str,
    tenant: str | None,
) -> ApprovalRecord:
    who = default_actor() if approver is None else approver.strip()
    if not who:
        raise ApprovalError("the approver's name is empty")
    record = store.get_approval(approval_id)
    if record is None or (tenant is not None and record.tenant != tenant):
        where = f" in tenant {quoted(tenant)[1:-1]}" if tenant is not None else ""
        raise ApprovalError(f"no approval {quoted(approval_id)}{where} (corral approvals list)")
    if record.agent and who == record.agent:
        raise ApprovalError(
            f"{quoted(who)} is the agent of run {record.run_id}: "
            "an agent cannot approve its own action"
        )
    verb = "approve" if status == "approved" else "deny"
    if record.status != "pending":
        by = f" by {record.approver}" if record.approver else ""
        raise ApprovalError(f"cannot {verb} approval {approval_id}: it is {record.status}{by}")
    now = time.time()
    if now >= record.expires:
        settle(store, record, "expired", actor=SYSTEM_ACTOR, reason="expired", now=now)
        raise ApprovalError(
            f"cannot {verb} approval {approval_id}: it expired {now - record.expires:.0f} s ago"
        )
    changed = store.transition_approval(
        approval_id, expect="pending", status=status, at=now, approver=who, reason=reason
    )
    if changed is None:
        late = must(store, approval_id)
        raise ApprovalError(
            f"cannot {verb} approval {approval_id}: it became {late.status} meanwhile"
        )
    try:
        _audit(store, changed, actor=who)
    except StoreError as exc:
        raise StoreError(
            f"approval {approval_id} is {status}, but its audit record could not be written: {exc}"
        ) from exc
    return changed


# -- the kill switch ----------------------------------------------------------------------
def covers(switch: KillSwitchState, record: ApprovalRecord) -> bool:
    """Whether ``switch`` blocks the call ``record`` waits for (see the module docstring)."""
    scope, target = switch.scope, switch.target
    if scope == "tenant" and target != record.tenant:
        return False
    if scope == "agent" and target != record.agent:
        return False
    if scope == "tool" and target != record.tool:
        return False
    if scope == "run" and target != record.run_id:
        return False
    mode = switch.mode or record.kill_mode
    return mode is None or mode in record.kill_modes


def cancel_covered(
    store: Store,
    switch: KillSwitchState,
    *,
    actor: str | None = None,
    reason: str | None = None,
) -> list[ApprovalRecord]:
    """Cancel every pending approval ``switch`` covers; returns those this call cancelled.

    Each cancellation is audited with ``actor`` (default: who set the switch) and
    ``reason`` (default: the switch and its reason). A waiting run sees ``cancelled``
    at its next look and stops with ``kill_switch``.
    """
    who = actor or switch.actor or default_actor()
    why = reason
    if why is None:
        why = f"kill switch {describe(switch)}" + (f": {switch.reason}" if switch.reason else "")
    cancelled = []
    for record in store.list_approvals(status="pending"):
        if covers(switch, record):
            done = settle(store, record, "cancelled", actor=who, reason=why)
            if done is not None:
                cancelled.append(done)
    return cancelled
