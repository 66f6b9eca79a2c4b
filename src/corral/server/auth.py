"""Who is asking: the API key of a request, checked against the store, and what its role
and tenant let it see.

Imports the keys (:mod:`corral.controls.keys`) and the stores.
"""

from __future__ import annotations

from fastapi import Request

from corral.controls.keys import Action, Principal, authenticate, check, permits
from corral.exceptions import InvalidKey
from corral.server.errors import NotFound
from corral.stores.base import Store

__all__ = ["Action", "Principal", "key_of", "may_see", "require", "visible_tenant"]


def key_of(request: Request) -> Principal:
    """The principal of the request's ``Authorization: Bearer`` key; :class:`InvalidKey`
    (401) without one or for one the store does not accept."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidKey("an API key is required: Authorization: Bearer crl_...")
    store: Store = request.app.state.store
    return authenticate(store, token.strip())


def require(who: Principal, action: Action, tenant: str | None) -> None:
    """Refuse (403) unless ``who`` may do ``action`` for ``tenant``."""
    check(who, action, tenant)


def may_see(who: Principal, action: Action, tenant: str | None, what: str) -> None:
    """Refuse as :class:`NotFound` (404) what ``who`` may not read: another tenant's run
    or approval answers as one that does not exist."""
    if not permits(who, action, tenant):
        raise NotFound(f"no {what}")


def visible_tenant(who: Principal, asked: str | None) -> str | None:
    """The tenant a listing is limited to: the key's own (asking for another is 403), or
    the one asked for (``None``: every tenant) for a global key."""
    if who.tenant is None:
        return asked
    if asked is not None and asked != who.tenant:
        check(who, Action.RUNS_READ, asked)  # raises: another tenant
    return who.tenant
