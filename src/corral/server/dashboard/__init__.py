"""The operators' dashboard, served by ``corral serve`` under ``/ui``: runs (filtered,
updated live), a run's timeline, the approvals queue, the kill switch and charts.

Server-rendered HTML (Jinja2 templates, every value escaped) with htmx, vendored in
``static/``, polling the live parts; charts are inline SVG drawn on the server. Nothing
is built or downloaded at install or at run time. A browser logs in with an API key
(:mod:`.session`); pages read and change through :mod:`corral.server.access`, the same
functions and the same rule (:func:`~corral.controls.keys.permits`) as the ``/v1`` API.

Imports the server's access and errors, the controls, the record and the stores;
Jinja2 and itsdangerous (the ``serve`` extra).
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

from corral.server.dashboard import actions, pages
from corral.server.dashboard.render import STATIC
from corral.server.dashboard.session import Sessions

__all__ = ["mount"]


def mount(app: FastAPI, sessions: Sessions | None = None) -> None:
    """Serve the dashboard from ``app`` (whose ``state.store`` it reads): pages under
    ``/ui``, its files under ``/ui/static``, ``/`` sent to the runs page. ``sessions``
    defaults to one signed with ``CORRAL_SESSION_SECRET``, else a secret of this
    process's own."""
    app.state.dashboard_sessions = sessions or Sessions()
    app.include_router(actions.router)
    app.include_router(pages.router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="dashboard-static")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/ui/runs", status_code=307)

    @app.get("/ui", include_in_schema=False)
    def ui() -> RedirectResponse:
        return RedirectResponse("/ui/runs", status_code=307)
