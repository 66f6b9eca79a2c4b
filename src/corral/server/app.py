"""The application: :func:`create_app` over one store, with the health endpoints and the
metrics beside the ``/v1`` API, and the dashboard under ``/ui``.

Imports the server's parts, the record's metrics and the stores.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from corral._version import __version__
from corral.controls.keys import Action
from corral.exceptions import StoreError
from corral.policy.schema import Policy
from corral.record import metrics
from corral.secrets import SecretProvider
from corral.server import agents, dashboard, errors, operators, relay, streams
from corral.server.auth import key_of, require
from corral.server.runs import IDLE_SECONDS, Runs
from corral.stores.base import Store


def create_app(
    store: Store,
    *,
    policies: Mapping[str, Policy] | None = None,
    max_body: int = errors.MAX_BODY,
    body_seconds: float = errors.BODY_SECONDS,
    idle_seconds: float = IDLE_SECONDS,
    sweep_seconds: float = 30.0,
    secrets: SecretProvider | None = None,
    address: str | None = None,
    takeover_after: float = relay.TAKEOVER_AFTER,
) -> FastAPI:
    """The control plane's HTTP API over ``store`` (see :mod:`corral.server`); agents'
    runs start under the named ``policies``, their tools' credentials resolved by
    ``secrets`` (handed to the agent that executes the call, never shown elsewhere).

    ``address`` is where other replicas reach this one (``http://host:port``): given, a
    request for a run another replica holds is relayed to it, and a run whose replica is
    gone (no heartbeat for ``takeover_after`` seconds, or its process dead on this node) is
    taken over (:mod:`corral.server.relay`)."""
    runs = Runs(store, policies, idle_seconds=idle_seconds, secrets=secrets, address=address)
    relayer: list[relay.Relay] = []  # the middleware, once Starlette has built it
    # The idle runs are looked for every ``sweep_seconds``.

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = asyncio.create_task(runs.sweeper(sweep_seconds))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await runs.close()
            for middleware in relayer:
                await middleware.close()

    app = FastAPI(
        title="corral control plane",
        version=__version__,
        description="Govern tool-calling agents: runs, approvals, kill switch, audit.",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.runs = runs
    errors.install(app)
    if address is not None:

        def relaying(inner: Any) -> relay.Relay:
            middleware = relay.Relay(
                inner, runs=runs, address=address, takeover_after=takeover_after
            )
            relayer.append(middleware)
            return middleware

        app.add_middleware(relaying)  # inside the body cap
    app.add_middleware(errors.BodyCap, limit=max_body, seconds=body_seconds)
    app.include_router(agents.router)
    app.include_router(streams.router)  # before operators': /approvals/stream is no approval id
    app.include_router(operators.router)
    dashboard.mount(app)  # the operators' pages under /ui
    _health(app, store)  # /healthz, /readyz, /metrics
    return app


def _health(app: FastAPI, store: Store) -> None:
    """``/healthz`` (the process answers), ``/readyz`` (the store answers) and ``/metrics``
    (Prometheus text, for a key allowed to read the fleet's metrics)."""

    @app.get("/healthz", summary="The process answers", tags=["health"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="The store answers",
        tags=["health"],
        response_model=None,
        responses={503: errors.REFUSALS[503]},
    )
    def readyz() -> JSONResponse | dict[str, Any]:
        try:
            store.kill_switches()
        except StoreError as exc:
            return errors.error(503, "control_plane_unavailable", f"the store fails: {exc}")
        return {"status": "ready"}

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}, **errors.REFUSALS},
    )
    def metrics_text(request: Request) -> Response:
        require(key_of(request), Action.METRICS_READ, None)  # fleet-wide figures
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)
