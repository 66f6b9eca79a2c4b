"""The operators' endpoints: runs and their timelines, approvals (list, show, decide, wait),
the kill switch, the audit chain.

Every endpoint authenticates the request's key (:mod:`corral.server.auth`) and reads or
writes through the same functions as the CLI (:mod:`corral.controls.approvals`,
:mod:`corral.controls.killswitch`, :mod:`corral.record.audit`), answering with the JSON of
:mod:`corral.record.views`, so that ``corral approvals approve`` and a ``POST`` here
decide, audit and print alike.

Imports the controls, the record, the stores and the server's auth and errors.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from corral.controls import approvals
from corral.controls.keys import Action, Principal
from corral.record import audit
from corral.record.views import approval_row, run_row, switch_row, timeline_of
from corral.server import access
from corral.server.auth import key_of, require, visible_tenant
from corral.server.errors import REFUSALS
from corral.stores.base import ApprovalStatus, KillScope, Store

router = APIRouter(prefix="/v1", responses=REFUSALS)
Who = Annotated[Principal, Depends(key_of)]

#: The longest a waiter may hold a request open for an approval's decision (seconds).
MAX_WAIT = 60.0
#: How often a waiter reads the approval again (seconds).
POLL = 0.1
#: The most rows a listing returns.
MAX_LIMIT = 1000


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


# -- runs -------------------------------------------------------------------------------
@router.get("/runs", summary="Recorded runs, newest first")
def list_runs(
    request: Request,
    who: Who,
    tenant: str | None = None,
    agent: str | None = None,
    status: Literal["running", "ok", "stopped", "error", "interrupted"] | None = None,
    stop_reason: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> dict[str, Any]:
    found = access.find_runs(
        _store(request),
        who,
        tenant=tenant,
        agent=agent,
        status=status,
        stop_reason=stop_reason,
        limit=limit,
    )
    rows = [run_row(r) for r in found]
    return {"count": len(rows), "runs": rows}


def _run(request: Request, who: Who, run_id: str, action: Action) -> Any:
    return access.run_for(_store(request), who, run_id, action)


@router.get("/runs/{run_id}", summary="One run: its row, answer and usage")
def get_run(request: Request, who: Who, run_id: str) -> dict[str, Any]:
    record = _run(request, who, run_id, Action.RUNS_READ)
    events = None if record.usage else _store(request).events(run_id)
    row = run_row(record, events)
    row.update(answer=record.answer, policy_digest=record.policy_digest, usage=dict(record.usage))
    return {"run": row}


@router.get("/runs/{run_id}/timeline", summary="A run's events as its timeline")
def get_timeline(request: Request, who: Who, run_id: str) -> dict[str, Any]:
    record = _run(request, who, run_id, Action.TIMELINE_READ)
    events = _store(request).events(run_id)
    return {"run": run_row(record, events), "timeline": timeline_of(record, events)}


# -- approvals --------------------------------------------------------------------------
class Decision(BaseModel):
    """An operator's decision on an approval request."""

    reason: str = Field(default="", max_length=2000)


_approval = access.approval_for


@router.get("/approvals", summary="Approval requests (pending by default)")
def list_approvals(
    request: Request,
    who: Who,
    status: ApprovalStatus | Literal["all"] = "pending",
    tenant: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    scope = visible_tenant(who, tenant)
    require(who, Action.APPROVALS_READ, scope if who.tenant is not None else who.tenant)
    found = _store(request).list_approvals(
        status=None if status == "all" else status, tenant=scope, run_id=run_id
    )
    rows = [approval_row(a) for a in found]
    return {"count": len(rows), "approvals": rows}


@router.get("/approvals/{approval_id}", summary="One approval request")
def get_approval(request: Request, who: Who, approval_id: str) -> dict[str, Any]:
    return {"approval": approval_row(_approval(_store(request), who, approval_id))}


def _decide(request: Request, who: Principal, approval_id: str, verb: str, reason: str) -> Any:
    decided = access.decide(_store(request), who, approval_id, verb, reason)
    return {"approval": approval_row(decided)}


@router.post("/approvals/{approval_id}/approve", summary="Approve a pending request")
def approve(request: Request, who: Who, approval_id: str, body: Decision) -> dict[str, Any]:
    result: dict[str, Any] = _decide(request, who, approval_id, "approve", body.reason)
    return result


@router.post("/approvals/{approval_id}/deny", summary="Deny a pending request")
def deny(request: Request, who: Who, approval_id: str, body: Decision) -> dict[str, Any]:
    result: dict[str, Any] = _decide(request, who, approval_id, "deny", body.reason)
    return result


@router.get(
    "/approvals/{approval_id}/wait",
    summary="Wait for a decision (long-poll)",
    description="Answers as soon as the request is no longer pending, or after `timeout` "
    "seconds with it still pending (`waited_out`: true) — never as a denial.",
)
async def wait_approval(
    request: Request,
    who: Who,
    approval_id: str,
    timeout: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 30.0,
) -> dict[str, Any]:
    store = _store(request)
    record = await run_in_threadpool(_approval, store, who, approval_id)
    until = time.monotonic() + timeout
    while record.status == "pending" and time.monotonic() < until:
        if await request.is_disconnected():
            break
        await asyncio.sleep(min(POLL, max(0.0, until - time.monotonic())))
        record = await run_in_threadpool(approvals.must, store, approval_id)
    return {"approval": approval_row(record), "waited_out": record.status == "pending"}


# -- the kill switch --------------------------------------------------------------------
class Switch(BaseModel):
    """A kill switch to turn on: where, how, and why."""

    scope: KillScope = "global"
    target: str = Field(default="", max_length=500)
    mode: Literal["disable_writes", "disable_expensive", "stop_all"] | None = None
    reason: str = Field(default="", max_length=2000)


@router.get("/killswitch", summary="The kill switches that are on")
def switches(request: Request, who: Who) -> dict[str, Any]:
    rows = [switch_row(sw) for sw in access.switches_for(_store(request), who)]
    return {"count": len(rows), "switches": rows}


@router.post("/killswitch", summary="Turn a kill switch on")
def enable(request: Request, who: Who, body: Switch) -> dict[str, Any]:
    sw = access.enable_switch(
        _store(request),
        who,
        scope=body.scope,
        target=body.target,
        mode=body.mode,
        reason=body.reason,
    )
    return {"switch": switch_row(sw)}


@router.delete("/killswitch", summary="Turn a kill switch off")
def disable(
    request: Request,
    who: Who,
    scope: KillScope = "global",
    target: str = "",
    reason: Annotated[str, Query(max_length=2000)] = "",
) -> dict[str, Any]:
    cleared = access.disable_switch(_store(request), who, scope=scope, target=target, reason=reason)
    return {"cleared": cleared}


# -- the audit chain --------------------------------------------------------------------
@router.get("/audit/verify", summary="Walk the audit chain and say whether it holds")
def verify(request: Request, who: Who) -> dict[str, Any]:
    require(who, Action.AUDIT_VERIFY, None)  # the chain spans tenants
    result = audit.verify(_store(request))
    return {"verify": result.to_dict()}


@router.get("/audit/records", summary="Audit records after a sequence number, in order")
def audit_records(
    request: Request,
    who: Who,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> dict[str, Any]:
    require(who, Action.AUDIT_EXPORT, None)
    records = _store(request).audit_records(after=after, limit=limit)
    rows = [r.to_dict() for r in records]
    return {"count": len(rows), "records": rows, "next_after": rows[-1]["seq"] if rows else after}
