"""The application: :func:`create_app` over one store, with the health endpoints and the
metrics beside the ``/v1`` API, and the dashboard under ``/ui``.

Imports the server's parts, the record's metrics and the stores.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from corral._version import __version__
from corral.controls.keys import Action
from corral.exceptions import StoreError
from corral.record import metrics
from corral.server import dashboard, errors, operators
from corral.server.auth import key_of, require
from corral.stores.base import Store


def create_app(store: Store, *, max_body: int = errors.MAX_BODY) -> FastAPI:
    """The control plane's HTTP API over ``store`` (see :mod:`corral.server`)."""
    app = FastAPI(
        title="corral control plane",
        version=__version__,
        description="Govern tool-calling agents: runs, approvals, kill switch, audit.",
    )
    app.state.store = store
    errors.install(app)
    app.add_middleware(errors.BodyCap, limit=max_body)
    app.include_router(operators.router)
    dashboard.mount(app)  # the operators' pages under /ui

    @app.get("/healthz", summary="The process answers", tags=["health"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The store answers", tags=["health"], response_model=None)
    def readyz() -> JSONResponse | dict[str, Any]:
        try:
            store.kill_switches()
        except StoreError as exc:
            return errors.error(503, "control_plane_unavailable", f"the store fails: {exc}")
        return {"status": "ready"}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics_text(request: Request) -> Response:
        require(key_of(request), Action.METRICS_READ, None)  # fleet-wide figures
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    return app
