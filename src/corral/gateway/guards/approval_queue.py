"""The waiting run's side of the approval queue (:mod:`corral.controls.approvals`): file
the request (or re-attach to the run's own), poll the store with backoff, renew the
heartbeat, re-check the kill switch and cancellation, consume an approval once, and turn
what was decided into the guard's answer (:mod:`corral.gateway.guards.approval`).

Imports the controls and stores below it, never the loop.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote

from corral.controls.approvals import (
    SYSTEM_ACTOR,
    ApprovalDecision,
    ApprovalRequest,
    must,
    new_id,
    settle,
)
from corral.controls.killswitch import MODES, describe
from corral.exceptions import Stop
from corral.gateway.guards import approval as guard
from corral.gateway.guards import killswitch as switch_guard
from corral.gateway.ops import Sleep
from corral.record.notify import NOTIFIER
from corral.stores import default_url
from corral.stores.base import ApprovalRecord, Store

if TYPE_CHECKING:
    from corral.gateway.state import Effective, RunState

log = logging.getLogger("corral")

#: The first pause between two reads of a pending request (seconds).
POLL_FIRST = 0.05
#: The longest pause between two reads (the pause doubles up to it).
POLL_MAX = 1.0
#: How often a waiting run renews its heartbeat (seconds).
HEARTBEAT_SECONDS = 1.0


def wait(core: RunState, eff: Effective, req: ApprovalRequest) -> Generator[Any, Any, None]:
    """File (or re-attach to) ``req`` in the store and wait for a decision: returns once
    approved and consumed; raises :class:`~corral.Stop` (or ``ToolRejected`` for a denial
    under ``on_denied: tell_model``) otherwise. Yields the gateway's ``Sleep`` ops."""

    started = core.time.now()
    try:
        record = _file(core, eff, req)
    except Stop:
        raise
    except Exception as exc:  # whatever the store raises: the channel failed (fail closed)
        guard.unreachable(core, req, exc, core.time.now() - started)
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
            if verdict == "pending" and core.time.now() - beat >= HEARTBEAT_SECONDS:
                core.store.heartbeat(core.id)
                beat = core.time.now()
        except Stop:
            raise
        except Exception as exc:  # whatever the store raises: the channel failed (fail closed)
            guard.unreachable(core, req, exc, core.time.now() - started)
        if verdict != "pending":
            log.info(
                "approval %s for %s %s by %s after %.1f s",
                record.id,
                req.tool,
                verdict,
                current.approver or "-",
                core.time.now() - started,
            )
            answer = ApprovalDecision(
                approved=verdict == "approved", approver=current.approver, reason=current.reason
            )
            guard.decide(core, req, answer, core.time.now() - started, approval_id=record.id)
            return
        left = min(current.expires - time.time(), req.timeout - (core.time.now() - started))
        yield Sleep(max(0.0, min(delay, left)))
        delay = min(delay * 2, POLL_MAX)


_Verdict = Literal["pending", "approved", "denied", "used", "again"]


def _look(
    core: RunState,
    eff: Effective,
    req: ApprovalRequest,
    record: ApprovalRecord,
    started: float,
) -> tuple[_Verdict, ApprovalRecord]:
    """One look at the request: raise the stop that ends the wait, else say what was seen
    (``approved`` only once this run has consumed it)."""
    store = core.store
    try:
        sw = switch_guard.blocking_switch(core, req.tool, eff)
    except Stop:
        core.time.waiting += core.time.now() - started
        raise
    if sw is not None:
        mode = sw.mode or core.policy.kill_switch.mode_when_enabled
        why = f"kill switch {describe(sw)} ({mode})" + (f": {sw.reason}" if sw.reason else "")
        settle(store, record, "cancelled", actor=sw.actor or SYSTEM_ACTOR, reason=why)
        core.time.waiting += core.time.now() - started
        switch_guard.check(core, req.tool, eff)  # raises kill_switch, naming the switch
    if core.cancelled:
        settle(store, record, "cancelled", actor=SYSTEM_ACTOR, reason="the run was cancelled")
        core.time.waiting += core.time.now() - started
        core.ensure_running()  # raises cancelled
    current = must(store, record.id)
    status = current.status
    if status == "pending":
        now = time.time()
        if now < current.expires and core.time.now() - started < req.timeout:
            return "pending", current
        expired = settle(
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
    core.time.waiting += core.time.now() - started
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
    from corral.stores.sqlite import SQLiteStore  # here: runs on memory:// never load it

    if not isinstance(store, SQLiteStore) or store.path == ":memory:":
        return ""
    default = default_url()
    if default.startswith("sqlite:///"):
        path = unquote(default[len("sqlite:///") :].split("?", 1)[0])
        if os.path.abspath(path) == store.path:
            return ""
    return " --db " + shlex.quote("sqlite:///" + store.path)


def _file(core: RunState, eff: Effective, req: ApprovalRequest) -> ApprovalRecord:
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
            settle(
                core.store,
                rec,
                "expired",
                actor=SYSTEM_ACTOR,
                reason=f"no decision within {req.timeout:g} s",
                now=now,
            )
    return _new(core, eff, req)


def _attached(core: RunState, rec: ApprovalRecord, *, reattached: bool = True) -> ApprovalRecord:
    """Record that the run waits on ``rec`` (filed now, or left by an earlier process), and
    say so on the ``corral`` logger: a wait nobody sees is a run that looks hung."""
    log.warning(
        "waiting for approval %s for %s — corral approvals approve %s%s",
        rec.id,
        rec.tool,
        rec.id,
        _db_option(core.store),
    )
    core.events.add(
        "approval_requested",
        approval_id=rec.id,
        tool=rec.tool,
        args_digest=rec.args_digest,
        expires=rec.expires,
        reattached=reattached,
    )
    core.events.flush()
    return rec


def _new(core: RunState, eff: Effective, req: ApprovalRequest) -> ApprovalRecord:
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
    settings = core.policy.approvals
    if settings.notify_url is not None:  # after it is in the store: it can be decided
        NOTIFIER.announce(
            settings.notify_url, settings.notify_secret_env, settings.notify_timeout_seconds, record
        )
    return _attached(core, record, reattached=False)
