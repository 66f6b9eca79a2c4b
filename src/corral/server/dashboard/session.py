"""The dashboard's sessions: a signed cookie naming the key a browser logged in with, and
the CSRF token bound to it.

- Logging in checks the API key with :func:`~corral.controls.keys.authenticate`; the
  cookie then carries the key's public id and a random session id, signed (HMAC, with
  a timestamp: ``itsdangerous``) so that a browser cannot forge or alter it. It never
  holds the key's secret.
- Every request reads the key's record again (:func:`~corral.controls.keys.usable`):
  a key revoked or expired logs its sessions out at once.
- The cookie is ``HttpOnly``, ``SameSite=Strict``, ``Path=/ui`` (``Secure`` over
  HTTPS) and lasts at most :data:`MAX_AGE` seconds.
- The signing secret is ``CORRAL_SESSION_SECRET`` (at least 32 characters; give every
  replica the same one), else random for each process: sessions then end when the
  server restarts.
- Every form that changes something carries :meth:`Sessions.csrf` of the session it
  was served to, checked on POST with :meth:`Sessions.csrf_ok`. A browser gets a
  session (without a key) at the login page already, so that the login form is
  protected too; logging in starts a new session.

Imports the keys (:mod:`corral.controls.keys`) and the stores.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from typing import Final

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from corral.controls.keys import Principal, usable
from corral.exceptions import ConfigError
from corral.stores.base import KeyStore

#: The session cookie's name and path.
COOKIE: Final = "corral_session"
PATH: Final = "/ui"
#: The longest a session lasts (seconds), however active.
MAX_AGE: Final = 12 * 3600
#: The environment variable that gives the signing secret.
SECRET_ENV: Final = "CORRAL_SESSION_SECRET"
MIN_SECRET: Final = 32


@dataclass(frozen=True, kw_only=True, slots=True)
class Session:
    """One browser's session: ``key_id`` the key it logged in with (``None``: not yet)."""

    sid: str
    key_id: str | None = None


class Sessions:
    """Issue, read and check sessions with one secret (see the module docstring)."""

    def __init__(self, secret: str | None = None) -> None:
        given = os.environ.get(SECRET_ENV) if secret is None else secret
        if given is not None and len(given) < MIN_SECRET:
            raise ConfigError(
                f"{SECRET_ENV} must be at least {MIN_SECRET} characters, got {len(given)}"
            )
        #: Whether the secret is this process's own: sessions end with the process.
        self.ephemeral = given is None
        self._secret = given.encode() if given is not None else secrets.token_bytes(32)
        self._signer = URLSafeTimedSerializer(self._secret, salt="corral.dashboard.session")

    def new(self, key_id: str | None = None) -> Session:
        """A fresh session (a new id every time: a login never keeps the old one)."""
        return Session(sid=secrets.token_urlsafe(24), key_id=key_id)

    def read(self, request: Request) -> Session | None:
        """The request's session, or ``None`` when it has none that this server signed
        within :data:`MAX_AGE`."""
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return None
        try:
            data = self._signer.loads(cookie, max_age=MAX_AGE)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("sid"), str):
            return None
        key_id = data.get("kid")
        return Session(sid=data["sid"], key_id=key_id if isinstance(key_id, str) else None)

    def write(self, request: Request, response: Response, session: Session) -> None:
        """Set ``session``'s cookie on ``response``."""
        value = self._signer.dumps({"sid": session.sid, "kid": session.key_id})
        response.set_cookie(
            COOKIE,
            value,
            max_age=MAX_AGE,
            path=PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def clear(self, response: Response) -> None:
        """Remove the session cookie (logout)."""
        response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")

    def csrf(self, session: Session) -> str:
        """The CSRF token of ``session``'s forms."""
        mac = hmac.new(self._secret, b"csrf\0" + session.sid.encode(), hashlib.sha256)
        return mac.hexdigest()

    def csrf_ok(self, session: Session | None, token: object) -> bool:
        """Whether ``token`` is ``session``'s CSRF token (never without a session)."""
        if session is None or not isinstance(token, str):
            return False
        return hmac.compare_digest(self.csrf(session), token)


def principal(store: KeyStore, session: Session | None) -> Principal | None:
    """Who ``session`` speaks for, read afresh: ``None`` when it has no key, or one that
    is unknown, revoked or expired now. A store that cannot answer raises
    :class:`~corral.exceptions.StoreError` (the page refuses: fail closed)."""
    if session is None or session.key_id is None:
        return None
    record = store.get_key(session.key_id)
    if record is None or not usable(record, time.time()):
        return None
    return Principal(key_id=record.id, tenant=record.tenant, role=record.role, name=record.name)
