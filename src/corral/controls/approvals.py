"""Approvals through the store: a queue that another process decides.

A write that needs approval, in a run given no in-process ``approver``, files an
:class:`~corral.stores.base.ApprovalRecord` in the run's store — bound to (run,
tool, canonical-argument digest), its arguments redacted with the run's
redactor, expiring after ``writes.approval_timeout_seconds`` (default 15 min) —
and waits for someone to decide it from another process (``corral approvals
approve ID``, or :func:`approve` / :func:`deny`). While it waits the run:

- says so once per request on the ``corral`` logger, at WARNING so that it is seen
  by default: ``waiting for approval apr_… for refund.send — corral approvals
  approve apr_…`` (with ``--db`` when the store is not the default SQLite file);
- polls the store with backoff (:data:`POLL_FIRST` doubling to
  :data:`POLL_MAX`); the async face awaits each pause, so the event loop stays
  free;
- renews its heartbeat (:data:`HEARTBEAT_SECONDS`), so it is not taken for dead;
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

import logging
import os
import shlex
import time
import uuid
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

from corral.controls.killswitch import MODES, default_actor, describe
from corral.exceptions import ApprovalError, Stop, StoreError
from corral.gateway.guards import approval as guard
from corral.gateway.guards import killswitch as switch_guard
from corral.gateway.ops import Sleep
from corral.stores import default_url
from corral.stores.base import ApprovalRecord, ApprovalStatus, Event, KillSwitchState, Store
from corral.stores.sqlite import SQLiteStore

if TYPE_CHECKING:
    from corral.gateway.state import Effective, RunCore

log = logging.getLogger("corral")

#: The first pause between two reads of a pending request (seconds).
POLL_FIRST = 0.05
#: The longest pause between two reads (the pause doubles up to it).
POLL_MAX = 1.0
#: How often a waiting run renews its heartbeat (seconds).
HEARTBEAT_SECONDS = 1.0
#: The actor of decisions corral takes itself (expiry).
SYSTEM_ACTOR = "corral"
#: The kind of the audit events that record decisions.
DECISION_EVENT = "approval_decision"

__all__ = [
    "DECISION_EVENT",
    "HEARTBEAT_SECONDS",
    "POLL_FIRST",
    "POLL_MAX",
    "SYSTEM_ACTOR",
    "approve",
    "cancel_covered",
    "covers",
    "deny",
    "new_id",
]


def new_id() -> str:
    """A new approval id (``apr_`` and 20 hex digits)."""
    return "apr_" + uuid.uuid4().hex[:20]


# -- the waiting run ----------------------------------------------------------------------
def wait(core: RunCore, eff: Effective, req: guard.ApprovalRequest) -> Generator[Any, Any, None]:
    """File (or re-attach to) ``req`` in the store and wait for a decision: returns once
    approved and consumed; raises :class:`~corral.Stop` (or ``ToolRejected`` for a denial
    under ``on_denied: tell_model``) otherwise. Yields the gateway's ``Sleep`` ops."""

    started = core.now()
    try:
        record = _file(core, eff, req)
    except Stop:
        raise
    except Exception as exc:  # whatever the store raises: the channel failed (fail closed)
        guard.unreachable(core, req, exc, core.now() - started)
    delay = POLL_FIRST
    beat = started
    while True:
        try:
            verdict, current = _look(core, eff, req, record, started)
            if verdict == "used":
                # Another process resuming this run consumed it: this call needs its own.
                record = _new(core, eff, req)
                continue
            if verdict == "again":
                continue  # decided just now: judge it again
            if verdict == "pending" and core.now() - beat >= HEARTBEAT_SECONDS:
                core.store.heartbeat(core.id)
                beat = core.now()
        except Stop:
            raise
        except Exception as exc:  # whatever the store raises: the channel failed (fail closed)
            guard.unreachable(core, req, exc, core.now() - started)
        if verdict != "pending":
            log.info(
                "approval %s for %s %s by %s after %.1f s",
                record.id,
                req.tool,
                verdict,
                current.approver or "-",
                core.now() - started,
            )
            answer = guard.ApprovalDecision(
                approved=verdict == "approved", approver=current.approver, reason=current.reason
            )
            guard.decide(core, req, answer, core.now() - started, approval_id=record.id)
            return
        left = min(current.expires - time.time(), req.timeout - (core.now() - started))
        yield Sleep(max(0.0, min(delay, left)))
        delay = min(delay * 2, POLL_MAX)


_Verdict = Literal["pending", "approved", "denied", "used", "again"]


def _look(
    core: RunCore,
    eff: Effective,
    req: guard.ApprovalRequest,
    record: ApprovalRecord,
    started: float,
) -> tuple[_Verdict, ApprovalRecord]:
    """One look at the request: raise the stop that ends the wait, else say what was seen
    (``approved`` only once this run has consumed it)."""
    store = core.store
    try:
        sw = switch_guard.blocking_switch(core, req.tool, eff)
    except Stop:
        core.waiting += core.now() - started
        raise
    if sw is not None:
        mode = sw.mode or core.policy.kill_switch.mode_when_enabled
        why = f"kill switch {describe(sw)} ({mode})" + (f": {sw.reason}" if sw.reason else "")
        _settle(store, record, "cancelled", actor=sw.actor or SYSTEM_ACTOR, reason=why)
        core.waiting += core.now() - started
        switch_guard.check(core, req.tool, eff)  # raises kill_switch, naming the switch
    if core.cancelled:
        _settle(store, record, "cancelled", actor=SYSTEM_ACTOR, reason="the run was cancelled")
        core.waiting += core.now() - started
        core.ensure_running()  # raises cancelled
    current = _must(store, record.id)
    status = current.status
    if status == "pending":
        now = time.time()
        if now < current.expires and core.now() - started < req.timeout:
            return "pending", current
        expired = _settle(
            store,
            current,
            "expired",
            actor=SYSTEM_ACTOR,
            reason=f"no decision within {req.timeout:g} s",
            now=now,
        )
        if expired is None:
            return "again", current  # decided at the last moment: judge that
        status = "expired"
    if status == "approved":
        used = store.transition_approval(
            record.id, expect="approved", status="used", at=time.time()
        )
        return ("again", current) if used is None else ("approved", used)
    if status in ("denied", "used"):
        return status, current
    core.waiting += core.now() - started
    if status == "expired":
        raise core.stamp(
            Stop(
                "approval_timeout",
                req.tool,
                tool=req.tool,
                message=f"no decision on approval {record.id} within {req.timeout:g} s",
                extra={"approval": record.id},
            )
        )
    by = f" by {current.approver}" if current.approver else ""
    raise core.stamp(
        Stop(
            "kill_switch",
            req.tool,
            tool=req.tool,
            message=f"approval {record.id} was {status}{by}"
            + (f": {current.reason}" if current.reason else ""),
            extra={"approval": record.id, "set_by": current.approver},
        )
    )


def _db_option(store: Store) -> str:
    """``--db URL`` for the command that decides a request, when the store is a SQLite
    file other than the default one (which `corral` would open without the option)."""
    if not isinstance(store, SQLiteStore) or store.path == ":memory:":
        return ""
    default = default_url()
    if default.startswith("sqlite:///"):
        path = unquote(default[len("sqlite:///") :].split("?", 1)[0])
        if os.path.abspath(path) == store.path:
            return ""
    return " --db " + shlex.quote("sqlite:///" + store.path)


def _must(store: Store, approval_id: str) -> ApprovalRecord:
    found = store.get_approval(approval_id)
    if found is None:
        raise StoreError(f"approval {approval_id} is gone from the store")
    return found


def _file(core: RunCore, eff: Effective, req: guard.ApprovalRequest) -> ApprovalRecord:
    """The run's open request for this action (a resumed run re-attaches), else a new one."""
    now = time.time()
    for rec in core.store.list_approvals(status=None, run_id=core.id):
        if rec.tool != req.tool or rec.args_digest != req.args_digest:
            continue
        if rec.status == "approved":
            return _attached(core, rec)
        if rec.status == "pending":
            if now < rec.expires:
                return _attached(core, rec)
            _settle(
                core.store,
                rec,
                "expired",
                actor=SYSTEM_ACTOR,
                reason=f"no decision within {req.timeout:g} s",
                now=now,
            )
    return _new(core, eff, req)


def _attached(core: RunCore, rec: ApprovalRecord, *, reattached: bool = True) -> ApprovalRecord:
    """Record that the run waits on ``rec`` (filed now, or left by an earlier process), and
    say so on the ``corral`` logger: a wait nobody sees is a run that looks hung."""
    log.warning(
        "waiting for approval %s for %s — corral approvals approve %s%s",
        rec.id,
        rec.tool,
        rec.id,
        _db_option(core.store),
    )
    core.event(
        "approval_requested",
        approval_id=rec.id,
        tool=rec.tool,
        args_digest=rec.args_digest,
        expires=rec.expires,
        reattached=reattached,
    )
    core.flush()
    return rec


def _new(core: RunCore, eff: Effective, req: guard.ApprovalRequest) -> ApprovalRecord:
    now = time.time()
    record = ApprovalRecord(
        id=new_id(),
        run_id=core.id,
        tool=req.tool,
        args_digest=req.args_digest,
        arguments=dict(core.redactor.data(dict(req.arguments))),
        context=req.context(),
        tenant=core.tenant,
        agent=core.agent,
        created=now,
        expires=now + req.timeout,
        kill_modes=tuple(m for m in MODES if switch_guard._blocks(m, eff)),
        kill_mode=core.policy.kill_switch.mode_when_enabled,
    )
    core.store.create_approval(record)
    return _attached(core, record, reattached=False)


# -- deciding -----------------------------------------------------------------------------
def _settle(
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
        _settle(store, record, "expired", actor=SYSTEM_ACTOR, reason="expired", now=now)
        raise ApprovalError(
            f"cannot {verb} approval {approval_id}: it expired {now - record.expires:.0f} s ago"
        )
    changed = store.transition_approval(
        approval_id, expect="pending", status=status, at=now, approver=who, reason=reason
    )
    if changed is None:
        late = _must(store, approval_id)
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
            done = _settle(store, record, "cancelled", actor=who, reason=why)
            if done is not None:
                cancelled.append(done)
    return cancelled
