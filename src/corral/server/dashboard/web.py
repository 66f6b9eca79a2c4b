"""What every dashboard route shares: who is looking (the session's key, checked again
on each request), the form of a POST and its CSRF check, and one way to answer a
refusal as a page.

Imports the keys, the exceptions, the stores and the dashboard's session and render.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from corral._safe import shown
from corral.controls.keys import Action, Principal, permits
from corral.exceptions import ApprovalError, ConfigError, Forbidden, InvalidKey, StoreError
from corral.server.dashboard import render
from corral.server.dashboard.session import Session, Sessions, principal
from corral.server.errors import NotFound
from corral.stores.base import Store

#: The most fields a dashboard form has (more is refused as a malformed form).
MAX_FIELDS: Final = 20

#: corral's refusals as a page: (exception, status, heading); the first match wins.
REFUSALS: Final[tuple[tuple[type[Exception], int, str], ...]] = (
    (InvalidKey, 401, "Not logged in"),
    (Forbidden, 403, "Not allowed"),
    (NotFound, 404, "Not found"),
    (ApprovalError, 409, "Already decided"),
    (ConfigError, 400, "Invalid request"),
    (StoreError, 503, "The store does not answer"),
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Viewer:
    """A logged-in browser: its session, the key's principal and its forms' CSRF token."""

    session: Session
    who: Principal
    csrf: str

    def may(self, action: Action, tenant: str | None) -> bool:
        return permits(self.who, action, tenant)


def sessions(request: Request) -> Sessions:
    found: Sessions = request.app.state.dashboard_sessions
    return found


def store(request: Request) -> Store:
    found: Store = request.app.state.store
    return found


def viewer(request: Request) -> Viewer | None:
    """Who the request's session speaks for, read afresh; ``None`` when logged out."""
    kept = sessions(request)
    session = kept.read(request)
    who = principal(store(request), session)
    if session is None or who is None:
        return None
    return Viewer(session=session, who=who, csrf=kept.csrf(session))


def to_login(request: Request) -> Response:
    """Send a logged-out browser to the login page (an htmx request by ``HX-Redirect``,
    so that a polled fragment does not swap the login page into a table)."""
    if request.headers.get("hx-request"):
        return Response(status_code=200, headers={"HX-Redirect": "/ui/login"})
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)


def see_other(url: str) -> RedirectResponse:
    """The answer to a POST that worked: look at ``url`` (POST, redirect, GET)."""
    return RedirectResponse(url, status_code=303)


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a dashboard path only, never another site."""
    if target and target.startswith("/ui/") and not target.startswith("/ui//"):
        return target if "\\" not in target else "/ui/runs"
    return "/ui/runs"


async def form(request: Request) -> dict[str, str]:
    """The POST's form fields (URL-encoded), the first value of each; a malformed form
    is a :class:`ConfigError`."""
    body = await request.body()
    try:
        fields = parse_qs(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"a malformed form: {exc}") from None
    return {name: values[0] for name, values in fields.items()}


def refusal(viewer: Viewer | None, exc: Exception) -> Response:
    """``exc`` (one of :data:`REFUSALS`) as an error page with its status."""
    for kind, status, heading in REFUSALS:
        if isinstance(exc, kind):
            return render.page(
                "error.html", status, viewer=viewer, heading=heading, message=str(exc)
            )
    raise exc


def answer(viewer: Viewer | None, make: Callable[[], Response]) -> Response:
    """``make()``, or the page of the refusal it raised."""
    try:
        return make()
    except tuple(kind for kind, _, _ in REFUSALS) as exc:
        return refusal(viewer, exc)


def choice(value: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    """``value`` when it is one of ``allowed`` (``None`` for empty); ConfigError else."""
    if not value:
        return None
    if value not in allowed:
        raise ConfigError(f"{what} must be one of {', '.join(allowed)}, got {shown(value)}")
    return value
