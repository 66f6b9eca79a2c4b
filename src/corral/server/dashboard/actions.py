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

from collections.abc import Callable
from typing import cast

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from corral._safe import shown
from corral.controls import killswitch
from corral.controls.keys import authenticate
from corral.exceptions import ConfigError, InvalidKey
from corral.server import access
from corral.server.dashboard import render, web
from corral.server.dashboard.session import Session
from corral.server.dashboard.web import Viewer
from corral.stores.base import KillMode, KillScope, Store

router = APIRouter(prefix="/ui", include_in_schema=False)

#: The longest reason a form may give.
MAX_REASON = 2000


def _login_page(
    request: Request, session: Session, *, error: str = "", status: int = 200
) -> Response:
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


#: A change: what it does for the viewer with the form's fields; where to look next.
Change = Callable[[Store, Viewer, dict[str, str]], str]


async def _change(request: Request, act: Change) -> Response:
    """Do ``act`` for a POST that carries its session's CSRF token, then redirect to the
    page it names; the login page when logged out, 403 for a missing or foreign token,
    the refusal's page when ``act`` is refused."""
    viewer = await run_in_threadpool(web.viewer, request)
    try:
        fields = await web.form(request)
    except ConfigError as exc:
        return web.refusal(viewer, exc)
    if viewer is None:
        return web.to_login(request)
    if not web.sessions(request).csrf_ok(viewer.session, fields.get("csrf")):
        return _forged(viewer)

    def done() -> Response:
        return web.see_other(act(web.store(request), viewer, fields))

    return await run_in_threadpool(web.answer, viewer, done)


def _reason(fields: dict[str, str]) -> str:
    reason = fields.get("reason", "").strip()
    if len(reason) > MAX_REASON:
        raise ConfigError(f"a reason is at most {MAX_REASON} characters, got {len(reason)}")
    return reason


def _scope(fields: dict[str, str]) -> KillScope:
    return cast(KillScope, web.choice(fields.get("scope"), killswitch.SCOPES, "scope") or "global")


@router.post("/approvals/{approval_id}/decide")
async def decide(request: Request, approval_id: str) -> Response:
    def act(store: Store, viewer: Viewer, fields: dict[str, str]) -> str:
        verb = fields.get("verb", "")
        if verb not in ("approve", "deny"):
            raise ConfigError(f"a decision is approve or deny, got {shown(verb)}")
        access.decide(store, viewer.who, approval_id, verb, _reason(fields))
        return f"/ui/approvals?done={verb}"

    return await _change(request, act)


def _switch_on(store: Store, viewer: Viewer, fields: dict[str, str]) -> str:
    if fields.get("confirm") != "yes":
        raise ConfigError("tick the confirmation to turn a kill switch on")
    scope = _scope(fields)
    target = fields.get("target", "").strip()
    if scope == "tenant" and not target and viewer.who.tenant is not None:
        target = viewer.who.tenant
    access.enable_switch(  # the approvals it covers cancelled too, as by `corral kill`
        store,
        viewer.who,
        scope=scope,
        target=target,
        mode=cast(KillMode | None, web.choice(fields.get("mode"), killswitch.MODES, "mode")),
        reason=_reason(fields),
    )
    return "/ui/kill?done=on"


def _switch_off(store: Store, viewer: Viewer, fields: dict[str, str]) -> str:
    access.disable_switch(
        store,
        viewer.who,
        scope=_scope(fields),
        target=fields.get("target", ""),
        reason=_reason(fields),
    )
    return "/ui/kill?done=off"


@router.post("/kill")
async def kill_on(request: Request) -> Response:
    return await _change(request, _switch_on)


@router.post("/kill/off")
async def kill_off(request: Request) -> Response:
    return await _change(request, _switch_off)
