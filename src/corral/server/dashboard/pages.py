"""The dashboard's pages: runs (filtered, their table polled every 2 s), a run's
timeline, the approvals queue (polled), the kill switch, the charts.

Each page reads through :mod:`corral.server.access` — the functions behind the ``/v1``
API, which check :func:`~corral.controls.keys.permits` — and shows the JSON rows of
:mod:`corral.record.views`, so a page and the API show the same things to the same key.

Imports the controls, the record, the stores, the server's access and the dashboard's
parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from corral.controls import killswitch
from corral.controls.keys import Action, period_seconds
from corral.controls.reach import EFFECTS, reach
from corral.record.views import approval_row, run_row, switch_row, timeline_of
from corral.server import access
from corral.server.dashboard import figures, render, web
from corral.server.dashboard.web import Viewer
from corral.stops import STOP_REASONS

router = APIRouter(prefix="/ui", include_in_schema=False)

STATUSES: Final = ("running", "ok", "stopped", "error", "interrupted")
#: How many runs the runs page lists at most.
RUNS_SHOWN: Final = 200
#: How many of the newest runs a filter by agent, status or stop reason looks through.
SCANNED: Final = 5000
#: How many decided approvals the queue shows under the pending ones.
DECIDED_SHOWN: Final = 20


Build = Callable[[Request, Viewer], dict[str, Any]]


def _show(request: Request, template: str, build: Build) -> Response:
    """``template`` rendered with what ``build`` reads for the request's viewer; the
    login page for a browser logged out; the refusal's page for a refusal."""
    viewer = web.viewer(request)
    if viewer is None:
        return web.to_login(request)
    return web.answer(viewer, lambda: render.page(template, **build(request, viewer)))


def _filters(request: Request, viewer: Viewer) -> dict[str, Any]:
    q = request.query_params
    tenant = (q.get("tenant") or "").strip() or None
    return {
        "tenant": tenant if viewer.who.tenant is None else viewer.who.tenant,
        "agent": (q.get("agent") or "").strip() or None,
        "status": web.choice(q.get("status"), STATUSES, "status"),
        "stop_reason": web.choice(q.get("stop_reason"), STOP_REASONS, "stop reason"),
        "since": (q.get("since") or "").strip() or None,
    }


def _runs(request: Request, viewer: Viewer) -> dict[str, Any]:
    chosen = _filters(request, viewer)
    since = chosen["since"]
    after = time.time() - period_seconds(since) if since else None
    found = access.find_runs(
        web.store(request),
        viewer.who,
        tenant=chosen["tenant"],
        agent=chosen["agent"],
        status=chosen["status"],
        stop_reason=chosen["stop_reason"],
        limit=SCANNED if any(chosen[k] for k in ("agent", "status", "stop_reason")) else RUNS_SHOWN,
    )
    rows = [run_row(r) for r in found if after is None or r.started_at >= after][:RUNS_SHOWN]
    return {
        "viewer": viewer,
        "filters": chosen,
        "runs": rows,
        "statuses": STATUSES,
        "stop_reasons": STOP_REASONS,
        "query": urlencode({k: v for k, v in chosen.items() if v is not None}),
        "limit": RUNS_SHOWN,
        "scanned": SCANNED,
    }


@router.get("/runs")
def runs_page(request: Request) -> Response:
    return _show(request, "runs.html", _runs)


@router.get("/runs/rows")
def runs_rows(request: Request) -> Response:
    """The runs table's rows alone (what the page polls)."""
    return _show(request, "_runs_rows.html", _runs)


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: str) -> Response:
    def build(request: Request, viewer: Viewer) -> dict[str, Any]:
        store = web.store(request)
        record = access.run_for(store, viewer.who, run_id, Action.TIMELINE_READ)
        events = store.events(run_id)
        asked = store.list_approvals(status=None, run_id=run_id)
        return {
            "viewer": viewer,
            "run": run_row(record, events),
            "answer": record.answer,
            "timeline": timeline_of(record, events),
            "approvals": [approval_row(a) for a in asked if a.tenant == record.tenant],
        }

    return _show(request, "run.html", build)


def _queue(request: Request, viewer: Viewer) -> dict[str, Any]:
    store = web.store(request)
    scope = None if viewer.who.tenant is None else viewer.who.tenant
    every = store.list_approvals(status=None, tenant=scope)
    visible = [a for a in every if viewer.may(Action.APPROVALS_READ, a.tenant)]
    pending = sorted((a for a in visible if a.status == "pending"), key=lambda a: a.created)
    decided = sorted(
        (a for a in visible if a.status != "pending"),
        key=lambda a: a.decided_at or a.created,
        reverse=True,
    )[:DECIDED_SHOWN]
    return {
        "viewer": viewer,
        "pending": [
            (approval_row(a), a.expires, viewer.may(Action.APPROVALS_DECIDE, a.tenant))
            for a in pending
        ],
        "decided": [approval_row(a) for a in decided],
        "done": request.query_params.get("done"),
        "now": time.time(),
    }


@router.get("/approvals")
def approvals_page(request: Request) -> Response:
    return _show(request, "approvals.html", _queue)


@router.get("/approvals/list")
def approvals_list(request: Request) -> Response:
    """The queue alone (what the page polls)."""
    return _show(request, "_approvals.html", _queue)


def _kill(request: Request, viewer: Viewer) -> dict[str, Any]:
    store = web.store(request)
    shown = []
    for sw in access.switches_for(store, viewer.who):
        reached = reach(store, sw, tenant=viewer.who.tenant, limit=figures.RUN_LIMIT)
        groups = [
            {
                "tenant": g.tenant,
                "agent": g.agent,
                "mode": g.mode,
                "effect": EFFECTS.get(g.mode or "", "its policy's mode (not recorded)"),
                "runs": g.run_ids,
                "state": "stop requested" if g.mode == "stop_all" else "restricted",
            }
            for g in reached.groups
        ]
        shown.append({"switch": switch_row(sw), "groups": groups, "all": reached.scanned_all})
    stopped = access.find_runs(store, viewer.who, stop_reason="kill_switch", limit=20)
    own = viewer.who.tenant
    return {
        "viewer": viewer,
        "switches": shown,
        "stopped": [run_row(r) for r in stopped],
        "may_toggle": viewer.may(Action.KILL_TOGGLE, own),
        "scopes": ("tenant", "run") if own is not None else killswitch.SCOPES,
        "modes": killswitch.MODES,
        "effects": EFFECTS,
        "done": request.query_params.get("done"),
    }


@router.get("/kill")
def kill_page(request: Request) -> Response:
    return _show(request, "kill.html", _kill)


def _charts(request: Request, viewer: Viewer) -> dict[str, Any]:
    asked = (request.query_params.get("tenant") or "").strip() or None
    tenant = asked if viewer.who.tenant is None else viewer.who.tenant
    drawn = figures.charts(web.store(request), viewer.who, tenant)
    return {"viewer": viewer, "charts": drawn, "tenant": tenant}


@router.get("/charts")
def charts_page(request: Request) -> Response:
    return _show(request, "charts.html", _charts)
