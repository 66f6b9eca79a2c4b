"""API keys, tenants and roles: who may do what through the control plane.

A key belongs to one tenant (an existing tenant string) and has one role; a global
admin key belongs to none and acts for every tenant. What each role permits
(:func:`permits`, the one place the rules live):

=============  ==================  ==================  ==========  ===========  ========
role           run agents          read                decide      kill switch  keys
                                                       approvals   on / off
=============  ==================  ==================  ==========  ===========  ========
``agent``      own tenant          own tenant          never       never        never
``approver``   never               own tenant          own tenant  never        never
``admin``      own tenant          own tenant          own tenant  own tenant   own tenant
global admin   every tenant        every tenant        every       every        every
=============  ==================  ==================  ==========  ===========  ========

Reading covers runs, a run's timeline, approvals (list, show, wait), the kill
switches' status, audit verify and export, and metrics; so an approver may see whether
a kill switch is on (it decides writes that a switch may cancel) but never set or
clear one. The tenant an action concerns is ``None`` when it spans tenants (the
global kill switch, a tool-wide switch, the whole audit chain, fleet metrics, a run
started without a tenant): only a global admin may act there. Anything unknown (a
role, an action, a principal that is not one) is refused.

A key reads ``crl_<id>_<secret>``: ``id`` is public (16 hex digits, what ``list`` and
``revoke`` name), ``secret`` is 256 random bits (43 URL-safe characters). The store
keeps the SHA-256 digest of the secret, never the secret, and compares digests with
:func:`hmac.compare_digest`. Creating and revoking a key are written to the audit log
(kind ``api_key``, run id ``-``) in the same transaction, without the secret.

>>> from corral.testing import MemoryStore
>>> store = MemoryStore()
>>> new = create_key(store, tenant="acme", role="agent", name="billing-bot", actor="ops")
>>> who = authenticate(store, new.token)
>>> who.tenant, who.role, permits(who, Action.TOOL_AUTHORIZE, "acme")
('acme', 'agent', True)
>>> permits(who, Action.APPROVALS_DECIDE, "acme"), permits(who, Action.RUNS_READ, "other")
(False, False)
>>> revoke_key(store, new.key.id, actor="ops")
True
>>> authenticate(store, new.token)
Traceback (most recent call last):
...
corral.InvalidKey: invalid API key
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, get_args

from corral.controls.killswitch import FLEET_RUN_ID, default_actor
from corral.exceptions import ConfigError, Forbidden, InvalidKey, StoreError
from corral.stores.base import Event, KeyRecord, KeyRole, KeyStore

#: A key's role; see the module docstring for what each permits.
Role = KeyRole
ROLES: Final[tuple[Role, ...]] = get_args(KeyRole)

#: What identifies a corral key (and what secret scanners can look for).
PREFIX: Final = "crl_"
#: Bytes of randomness in a key's secret: 256 bits.
SECRET_BYTES: Final = 32
_TOKEN = re.compile(r"crl_([0-9a-f]{16})_([A-Za-z0-9_-]{43})", re.ASCII)
_ID = re.compile(r"[0-9a-f]{16}", re.ASCII)
#: Compared against when a key id is unknown, so that an unknown id and a wrong secret
#: take the same steps.
_NO_DIGEST: Final = "0" * 64
#: Fresh ids drawn before giving up (a second collision of 64-bit ids means a broken store).
ID_DRAWS: Final = 3
MAX_TENANT = 200
MAX_NAME = 200


class Action(StrEnum):
    """What the control plane's API does, each endpoint one of these."""

    # running agents
    RUN_START = "run.start"
    TOOL_AUTHORIZE = "tool.authorize"
    TOOL_REPORT = "tool.report"
    MODEL_RESERVE = "model.reserve"
    MODEL_SETTLE = "model.settle"
    RUN_END = "run.end"
    TOOLS_LIST = "tools.list"
    # reading
    RUNS_READ = "runs.read"
    TIMELINE_READ = "runs.timeline"
    APPROVALS_READ = "approvals.read"
    KILL_STATUS = "kill.status"
    AUDIT_VERIFY = "audit.verify"
    AUDIT_EXPORT = "audit.export"
    METRICS_READ = "metrics.read"
    # operating
    APPROVALS_DECIDE = "approvals.decide"
    KILL_TOGGLE = "kill.toggle"
    KEYS_MANAGE = "keys.manage"


#: The actions by kind; every action is of exactly one kind (tests hold it so).
RUNNING: Final = frozenset(
    {
        Action.RUN_START,
        Action.TOOL_AUTHORIZE,
        Action.TOOL_REPORT,
        Action.MODEL_RESERVE,
        Action.MODEL_SETTLE,
        Action.RUN_END,
        Action.TOOLS_LIST,
    }
)
READING: Final = frozenset(
    {
        Action.RUNS_READ,
        Action.TIMELINE_READ,
        Action.APPROVALS_READ,
        Action.KILL_STATUS,
        Action.AUDIT_VERIFY,
        Action.AUDIT_EXPORT,
        Action.METRICS_READ,
    }
)
DECIDING: Final = frozenset({Action.APPROVALS_DECIDE})
KILLING: Final = frozenset({Action.KILL_TOGGLE})
MANAGING: Final = frozenset({Action.KEYS_MANAGE})

#: What each role may do (within its tenant; a global admin, for every tenant).
RULES: Final[dict[str, frozenset[Action]]] = {
    "agent": RUNNING | READING,
    "approver": READING | DECIDING,
    "admin": RUNNING | READING | DECIDING | KILLING | MANAGING,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Principal:
    """Who an authenticated key speaks for: ``tenant`` ``None`` is a global admin."""

    key_id: str
    tenant: str | None
    role: Role
    name: str = ""

    def __repr__(self) -> str:
        where = "global" if self.tenant is None else repr(self.tenant)
        return f"Principal({self.key_id} {self.role} of {where})"


def permits(principal: Principal, action: Action, tenant: str | None) -> bool:
    """Whether ``principal`` may do ``action`` for ``tenant`` (``None``: an action that
    spans tenants, or a run without one). Fails closed: an unknown role or action, a
    non-admin without a tenant, an empty tenant, anything that is not a
    :class:`Principal`, all are refused."""
    if not isinstance(principal, Principal) or not isinstance(action, Action):
        return False
    allowed = RULES.get(principal.role)
    if allowed is None or action not in allowed:
        return False
    if principal.tenant is None:
        return principal.role == "admin"
    return isinstance(tenant, str) and tenant != "" and tenant == principal.tenant


def check(principal: Principal, action: Action, tenant: str | None) -> None:
    """Raise :class:`~corral.exceptions.Forbidden` unless :func:`permits`; the message
    names the role, the action and the tenant asked for, never a secret."""
    if permits(principal, action, tenant):
        return
    role = getattr(principal, "role", "?")
    own = getattr(principal, "tenant", None)
    whose = "every tenant" if own is None else f"tenant {own!r}"
    where = "every tenant" if tenant is None else f"tenant {tenant!r}"
    raise Forbidden(f"this key ({role} of {whose}) may not {action} for {where}")


@dataclass(frozen=True, kw_only=True, slots=True)
class NewKey:
    """A key just created: ``token`` is shown this once (the store keeps its digest)."""

    token: str
    key: KeyRecord

    def __repr__(self) -> str:  # never the token
        return f"NewKey({self.key.id}, {self.key.role})"


def digest(secret: str) -> str:
    """The SHA-256 digest (hex) of a key's secret, as the store keeps it.

    A plain hash, not a slow password hash: the secret is 256 random bits, so guessing
    it from the digest is out of reach however fast the hash; slow hashes exist for
    secrets people choose.
    """
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def create_key(
    store: KeyStore,
    *,
    tenant: str | None,
    role: str,
    name: str = "",
    expires_in: float | None = None,
    actor: str | None = None,
    now: float | None = None,
) -> NewKey:
    """Create a key for ``tenant`` (``None``: a global admin key) with ``role``; returns
    it with its token, which nothing shows again.

    ``expires_in`` (seconds) makes it expire; ``actor`` (default ``$USER@host``) is
    recorded with it and in its audit record. Raises
    :class:`~corral.exceptions.ConfigError` for an unknown role, a global key that is
    not an admin's, an empty or overlong tenant or name, a non-positive ``expires_in``.
    """
    checked_role = check_role(role)
    check_owner(tenant, checked_role)
    if not isinstance(name, str) or len(name) > MAX_NAME or not name.isprintable():
        raise ConfigError(f"a key's name is printable text of at most {MAX_NAME} characters")
    if expires_in is not None and not expires_in > 0:
        raise ConfigError(f"a key's lifetime must be positive, got {expires_in!r} seconds")
    at = time.time() if now is None else now
    who = default_actor() if actor is None else actor
    for _ in range(ID_DRAWS):  # a 64-bit id is taken only by a collision: draw another
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(SECRET_BYTES)
        record = KeyRecord(
            id=key_id,
            tenant=tenant,
            role=checked_role,
            name=name,
            digest=digest(secret),
            created=at,
            expires=None if expires_in is None else at + expires_in,
            created_by=who,
        )
        if store.add_key(record, audit=audit_event("create", record, who)):
            return NewKey(token=f"{PREFIX}{key_id}_{secret}", key=record)
    raise StoreError(f"the store refused {ID_DRAWS} fresh key ids in a row: no key was created")


def authenticate(store: KeyStore, token: object, *, now: float | None = None) -> Principal:
    """The principal ``token`` speaks for; :class:`~corral.exceptions.InvalidKey` when it
    is malformed, unknown, revoked or expired (the same error for each, never echoing
    the token). A store that cannot answer raises
    :class:`~corral.exceptions.StoreError` (the caller refuses: fail closed)."""
    found = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    if found is None:
        raise InvalidKey()
    key_id, secret = found.groups()
    record = store.get_key(key_id)
    stored = _NO_DIGEST if record is None else str(record.digest)
    same = hmac.compare_digest(digest(secret).encode(), stored.encode())
    if record is None or not same or not usable(record, time.time() if now is None else now):
        raise InvalidKey()
    return Principal(key_id=record.id, tenant=record.tenant, role=record.role, name=record.name)


def usable(record: KeyRecord, now: float) -> bool:
    """Whether ``record`` may authenticate at ``now``: not revoked, not expired, a role
    corral knows, and a tenant unless it is an admin's."""
    if record.revoked is not None or (record.expires is not None and now >= record.expires):
        return False
    return record.role in ROLES and (record.tenant is not None or record.role == "admin")


def revoke_key(store: KeyStore, key_id: str, *, actor: str | None = None) -> bool:
    """Revoke the key ``key_id`` (its public id); ``False`` when it was already revoked.
    Raises ``KeyError`` for an id no key has. Audited, with ``actor`` (default
    ``$USER@host``)."""
    known = isinstance(key_id, str) and _ID.fullmatch(key_id) is not None
    record = store.get_key(key_id) if known else None
    if record is None:
        raise KeyError(key_id)
    who = default_actor() if actor is None else actor
    return store.revoke_key(key_id, at=time.time(), audit=audit_event("revoke", record, who))


def check_role(role: str) -> Role:
    """``role`` as a :data:`Role`; ``ConfigError`` naming the roles when it is not one."""
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role


def check_owner(tenant: str | None, role: Role) -> None:
    """Refuse a global key that is not an admin's and a tenant that is no tenant."""
    if tenant is None:
        if role != "admin":
            raise ConfigError(
                f"only an admin key can be global (for every tenant); an {role} key "
                "belongs to one tenant"
            )
        return
    if not isinstance(tenant, str) or not tenant.strip() or tenant != tenant.strip():
        raise ConfigError(f"a key's tenant is a tenant's id, got {tenant!r}")
    if len(tenant) > MAX_TENANT or not tenant.isprintable():
        raise ConfigError(f"a key's tenant is printable text of at most {MAX_TENANT} characters")


_PERIOD = re.compile(r"([1-9][0-9]{0,5})([mhd])", re.ASCII)
_PERIOD_SECONDS = {"m": 60, "h": 3600, "d": 86400}


def period_seconds(text: str) -> int:
    """``30d``, ``12h``, ``15m`` as seconds; ``ConfigError`` for anything else."""
    found = _PERIOD.fullmatch(text.strip())
    if found is None:
        raise ConfigError(f"a period is a number and m, h or d ('15m', '12h', '30d'), got {text!r}")
    return int(found.group(1)) * _PERIOD_SECONDS[found.group(2)]


def audit_event(action: str, record: KeyRecord, actor: str) -> Event:
    """The audit record of creating (``create``) or revoking (``revoke``) a key: run id
    ``-``, kind ``api_key``, the key's tenant; ``data`` holds the action, the key's id,
    role, name and expiry. Never its secret or digest."""
    return Event(
        run_id=FLEET_RUN_ID,
        seq=0,
        kind="api_key",
        at=time.time(),
        data={
            "action": action,
            "key_id": record.id,
            "role": record.role,
            "name": record.name,
            "global": record.tenant is None,
            "expires": record.expires,
        },
        tenant=record.tenant,
        actor=actor,
    )


__all__ = [
    "DECIDING",
    "KILLING",
    "MANAGING",
    "PREFIX",
    "READING",
    "ROLES",
    "RULES",
    "RUNNING",
    "SECRET_BYTES",
    "Action",
    "NewKey",
    "Principal",
    "Role",
    "audit_event",
    "authenticate",
    "check",
    "check_owner",
    "check_role",
    "create_key",
    "digest",
    "period_seconds",
    "permits",
    "revoke_key",
    "usable",
]
