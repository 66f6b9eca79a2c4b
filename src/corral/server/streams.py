"""Server-sent events: the approvals queue as it changes, for an approver's tool or page
that would rather be told than poll.

``GET /v1/approvals/stream`` answers ``text/event-stream``: first every pending request
(``event: approval``, ``data:`` its JSON row), then each new one and each that is decided,
expires or is cancelled, as the store shows it (read every :data:`POLL` seconds), and a comment
line every :data:`KEEPALIVE` seconds so that proxies keep the connection open. A tenant's
key sees its tenant's requests only.

Imports the record's views, the keys and the server's auth.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from corral.controls.keys import Action, Principal
from corral.record.views import approval_row
from corral.server.auth import key_of, require, visible_tenant
from corral.server.errors import REFUSALS
from corral.stores.base import Store

router = APIRouter(prefix="/v1", responses=REFUSALS)
Who = Annotated[Principal, Depends(key_of)]

#: How often the stream reads the queue (seconds).
POLL = 0.5
#: How often an idle stream sends a comment line (seconds).
KEEPALIVE = 15.0


def _event(row: dict[str, object]) -> str:
    data = json.dumps(row, separators=(",", ":"), default=str)
    return f"id: {row['id']}:{row['status']}\nevent: approval\ndata: {data}\n\n"


async def _changes(request: Request, store: Store, tenant: str | None) -> AsyncIterator[str]:
    """The pending requests, then each new one and each decision, expiry or cancellation
    of one this stream has shown."""
    shown: dict[str, str] = {}  # the pending requests shown, by id
    quiet_since = time.monotonic()
    yield "retry: 2000\n\n"
    while not await request.is_disconnected():
        pending = await run_in_threadpool(store.list_approvals, status="pending", tenant=tenant)
        now_pending = {r.id for r in pending}
        changed = [r for r in pending if r.id not in shown]
        for gone in [i for i in shown if i not in now_pending]:
            record = await run_in_threadpool(store.get_approval, gone)
            del shown[gone]
            if record is not None:
                changed.append(record)
        for record in changed:
            if record.status == "pending":
                shown[record.id] = record.status
            quiet_since = time.monotonic()
            yield _event(approval_row(record))
        if time.monotonic() - quiet_since >= KEEPALIVE:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        await asyncio.sleep(POLL)


@router.get(
    "/approvals/stream",
    summary="The approvals queue as server-sent events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream(
    request: Request,
    who: Who,
    tenant: str | None = None,
) -> StreamingResponse:
    scope = visible_tenant(who, tenant)
    require(who, Action.APPROVALS_READ, scope if who.tenant is not None else None)
    store: Store = request.app.state.store
    return StreamingResponse(
        _changes(request, store, scope),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
