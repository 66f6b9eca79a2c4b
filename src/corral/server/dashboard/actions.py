"""What the dashboard changes, each a form POSTed with its session's CSRF token: logging
in and out, approving or denying a request, turning a kill switch on or off.

A POST without the token of the session it comes with — none, or another session's —
is refused (403) before anything is read. A change that works answers with a redirect
to the page that shows it (POST, redirect, GET). Decisions and switches go through
:mod:`corral.server.access`, as the ``/v1`` API's do, recorded as the key's name; a
switch turned on here also cancels the pending approvals it covers, as ``corral kill
enable`` does.

Imports the controls, the exceptions, the server's access and the dashboard's parts.
"""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from corral.controls import approvals
from corral.controls.keys import authenticate
from corral.exceptions import ConfigError, InvalidKey
from corral.server import access
from corral.server.dashboard import render, web
from corral.server.dashboard.session import Session
from corral.server.dashboard.web import Viewer
from corral.stores.base import KillMode, KillScope

router = APIRouter(prefix="/ui", include_in_schema=False)

#: The longest reason a form may give.
MAX_REASON = 2000


def _login_page(request: Request, session: Session, *, error: str = "", status: int = 200) -> Response:
    kept = web.sessions(request)
    response = render.page(
        "login.html",
        status,
        viewer=None,
        csrf=kept.csrf(session),
        next=web.safe_next(request.query_params.get("next")),
        error=error,
        ephemeral=kept.ephemeral,
    )
    kept.write(request, response, session)
    return response


@router.get("/login")
def login_page(request: Request) -> Response:
    if web.viewer(request) is not None:
        return web.see_other(web.safe_next(request.query_params.get("next")))
    kept = web.sessions(request)
    return _login_page(request, kept.read(request) or kept.new())


def _forged(viewer: Viewer | None) -> Response:
    return render.page(
        "error.html",
        403,
        viewer=viewer,
        heading="Form refused",
        message="the form's CSRF token does not belong to this session: reload the page "
        "and submit it again",
    )


@router.post("/login")
async def login(request: Request) -> Response:
    kept = web.sessions(request)
    session = kept.read(request)
    fields = await web.form(request)
    if session is None or not kept.csrf_ok(session, fields.get("csrf")):
        return _forged(None)
    token = fields.get("key", "").strip()
    try:
        who = await run_in_threadpool(authenticate, web.store(request), token)
    except InvalidKey:
        return _login_page(request, session, error="that key is not valid", status=401)
    fresh = kept.new(who.key_id)  # a new session id: a login never keeps the old one
    response = web.see_other(web.safe_next(fields.get("next")))
    kept.write(request, response, fresh)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    kept = web.sessions(request)
    fields = await web.form(request)
    if not kept.csrf_ok(kept.read(request), fields.get("csrf")):
        return _forged(None)
    response = web.see_other("/ui/login")
    kept.clear(response)
    return response


async def _checked(request: Request) -> tuple[Viewer | None, dict[str, str], Response | None]:
    """The viewer and the form of a POST that changes something, or the response that
    refuses it (logged out, or a token that is not this session's)."""
    viewer = await run_in_threadpool(web.viewer, request)
    fields = await web.form(request)
    if viewer is None:
        return None, fields, web.to_login(request)
    if not web.sessions(request).csrf_ok(viewer.session, fields.get("csrf")):
        return viewer, fields, _forged(viewer)
    return viewer, fields, None


def _reason(fields: dict[str, str]) -> str:
    reason = fields.get("reason", "").strip()
    if len(reason) > MAX_REASON:
        raise ConfigError(f"a reason is at most {MAX_REASON} characters, got {len(reason)}")
    return reason


@router.post("/approvals/{approval_id}/decide")
async def decide(request: Request, approval_id: str) -> Response:
    viewer, fields, refused = await _checked(request)
    if refused is not None or viewer is None:
        return refused or web.to_login(request)
    verb = fields.get("verb", "")

    def act() -> Response:
        if verb not in ("approve", "deny"):
            raise ConfigError(f"a decision is approve or deny, got {verb!r}")
        access.decide(web.store(request), viewer.who, approval_id, verb, _reason(fields))
        return web.see_other(f"/ui/approvals?done={verb}")

    return await run_in_threadpool(web.answer, viewer, act)


@router.post("/kill")
async def kill_on(request: Request) -> Response:
    viewer, fields, refused = await _checked(request)
    if refused is not None or viewer is None:
        return refused or web.to_login(request)

    def act() -> Response:
        if fields.get("confirm") != "yes":
            raise ConfigError("tick the confirmation to turn a kill switch on")
        scope = fields.get("scope", "global")
        target = fields.get("target", "").strip()
        if scope == "tenant" and not target and viewer.who.tenant is not None:
            target = viewer.who.tenant
        mode = web.choice(fields.get("mode"), ("stop_all", "disable_writes", "disable_expensive"),
                          "mode")  # fmt: skip
        store = web.store(request)
        sw = access.enable_switch(
            store,
            viewer.who,
            scope=cast(KillScope, web.choice(scope, ("global", "tenant", "agent", "tool", "run"),
                                             "scope")),  # fmt: skip
            target=target,
            mode=cast(KillMode | None, mode),
            reason=_reason(fields),
        )
        approvals.cancel_covered(store, sw)
        return web.see_other("/ui/kill?done=on")

    return await run_in_threadpool(web.answer, viewer, act)


@router.post("/kill/off")
async def kill_off(request: Request) -> Response:
    viewer, fields, refused = await _checked(request)
    if refused is not None or viewer is None:
        return refused or web.to_login(request)

    def act() -> Response:
        scope = web.choice(fields.get("scope"), ("global", "tenant", "agent", "tool", "run"),
                           "scope") or "global"  # fmt: skip
        access.disable_switch(
            web.store(request),
            viewer.who,
            scope=cast(KillScope, scope),
            target=fields.get("target", ""),
            reason=_reason(fields),
        )
        return web.see_other("/ui/kill?done=off")

    return await run_in_threadpool(web.answer, viewer, act)
