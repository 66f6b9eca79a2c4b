"""The kill switch: set, clear and read the switches every process sharing a store obeys.

A switch has a scope (``global``, ``tenant``, ``agent``, ``tool`` or ``run``), a
target (empty for ``global``), an optional mode (``disable_writes``,
``disable_expensive``, ``stop_all``; none means each run's
``kill_switch.mode_when_enabled``), a reason, who set it and when (``set_at``, filled
in by the store). Switches live in the store, so every process and machine sharing
it obeys them. Every change (:func:`enable`, :func:`disable`) is written to the audit
log with who and why, in the same transaction as the change itself (run id
:data:`FLEET_RUN_ID`: it belongs to no run).

Each process reads them through a :class:`KillSwitchCache`, one per store object:

- a read is reused for :data:`REFRESH_SECONDS` (0.1 s), so a change made by any
  process is seen within that (plus the time of the read), far inside the 1 s the
  contract allows; the in-memory store is read on every check, so a change made in
  the same process is seen at once;
- a read that fails (:class:`~corral.exceptions.StoreError`) falls back to the last
  good state while that state is younger than :data:`GRACE_SECONDS` (2 s); after
  that every check raises :class:`~corral.exceptions.StoreError` and the gateway
  refuses every governed action with ``control_plane_unavailable`` until a read
  succeeds. A process that never read the state successfully refuses at once, and so
  does one whose store file was removed or replaced
  (:class:`~corral.exceptions.StoreGone`: no grace, it does not come back). Whatever a
  store object raises counts as a failed read.

>>> from corral.testing import MemoryStore
>>> store = MemoryStore()
>>> sw = enable(store, scope="tool", target="browser.open", mode="stop_all", reason="outage")
>>> describe(sw), [s.mode for s in active(store)]
('tool/browser.open', ['stop_all'])
>>> disable(store, scope="tool", target="browser.open"), active(store)
(True, ())
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import cast, get_args

from corral._safe import shown
from corral.exceptions import ConfigError, StoreError, StoreGone
from corral.stores.base import Event, KillMode, KillScope, KillSwitchState, Store, kill_target
from corral.stores.per_store import PerStore

#: How long one read of the switches is reused (seconds, ``time.monotonic``).
REFRESH_SECONDS = 0.1
#: How long the last good read stands in for reads that fail; after it, fail closed.
GRACE_SECONDS = 2.0

MODES: tuple[KillMode, ...] = get_args(KillMode)
SCOPES: tuple[KillScope, ...] = get_args(KillScope)

_TOOL_NAME = re.compile(r"[a-z0-9_.-]+")


# What one cache knows, replaced as a whole (so threads never see half an update):
# (switches, when the last good read happened, when a read was last tried, why the last
# read failed or None). Times are monotonic seconds; -inf means never.
_Snapshot = tuple[tuple[KillSwitchState, ...], float, float, str | None]
_NEVER = float("-inf")


class KillSwitchCache:
    """The kill switches of one store as this process sees them; see the module docstring.

    ``refresh`` and ``grace`` are in seconds of ``monotonic`` (injectable for tests);
    ``refresh=0`` reads the store on every check. Thread-safe: while one thread reads
    the store, the others reuse the last state (within ``grace``).
    """

    def __init__(
        self,
        *,
        refresh: float = REFRESH_SECONDS,
        grace: float = GRACE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refresh = refresh
        self.grace = grace
        self._monotonic = monotonic
        self._snap: _Snapshot = ((), _NEVER, _NEVER, None)
        self._lock = threading.Lock()

    def switches(self, store: Store) -> tuple[KillSwitchState, ...]:
        """The active switches, read from ``store`` at most every ``refresh`` seconds.

        Raises :class:`~corral.exceptions.StoreError` when no good read happened in the
        last ``grace`` seconds.
        """
        now = self._monotonic()
        if self.refresh <= 0:  # read every time (the in-memory store): nothing to share
            return self._read(store, now)
        switches, good_at, tried_at, error = self._snap
        if error is None and now - tried_at < self.refresh:
            return switches  # the allow path: no lock, no read
        if not self._lock.acquire(blocking=False):
            # Another thread is reading: reuse the last state while it may still stand.
            if now - good_at < self.grace:
                return switches
            self._lock.acquire()
        try:
            now = self._monotonic()
            switches, good_at, tried_at, error = self._snap
            if now - tried_at < self.refresh:
                # Read by another thread meanwhile, or failing and retried at most every
                # ``refresh`` seconds, so that a store in trouble is not hammered.
                if error is None or now - good_at < self.grace:
                    return switches
                raise StoreError(self._stale_message(good_at, error, now))
            return self._read(store, now)
        finally:
            self._lock.release()

    def _read(self, store: Store, now: float) -> tuple[KillSwitchState, ...]:
        try:
            fresh = tuple(store.kill_switches())
        except Exception as exc:  # a store object may raise anything: a failed read
            switches, good_at, _, _ = self._snap
            failure = StoreError.of(exc)
            error = str(failure) or type(exc).__name__
            if isinstance(failure, StoreGone):
                good_at = _NEVER  # not a passing failure: no grace for the last state
            self._snap = (switches, good_at, now, error)
            if now - good_at < self.grace:
                return switches
            raise type(failure)(self._stale_message(good_at, error, now)) from exc
        self._snap = (fresh, now, now, None)
        return fresh

    def _stale_message(self, good_at: float, error: str | None, now: float) -> str:
        if good_at == _NEVER:
            return f"the kill-switch state cannot be read: {error}"
        return (
            f"the kill-switch state could not be refreshed for {now - good_at:.1f} s "
            f"(limit {self.grace:g} s): {error}"
        )

    def invalidate(self) -> None:
        """Read the store again at the next check (after this process changed a switch)."""
        switches, good_at, _, error = self._snap
        self._snap = (switches, good_at, _NEVER, error)


class SwitchCaches:
    """The kill-switch cache of each store this process governs calls with (one per store
    object, made on first use): the in-memory store gets ``refresh=0`` (read on every
    check), every other store the defaults."""

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: PerStore[KillSwitchCache] = PerStore()

    def cache_for(self, store: Store) -> KillSwitchCache:
        return self._kept.get(store, lambda: _new_cache(store))

    def use(self, store: Store, cache: KillSwitchCache) -> KillSwitchCache:
        """Make ``cache`` the one used for ``store`` (tests: a manual clock)."""
        return self._kept.set(store, cache)

    def active(self, store: Store) -> tuple[KillSwitchState, ...]:
        """The switches as governed calls see them (cached, fail closed)."""
        return self.cache_for(store).switches(store)


def _new_cache(store: Store) -> KillSwitchCache:
    return KillSwitchCache(refresh=REFRESH_SECONDS if store.shared else 0.0)


#: The caches of this process (the default :class:`~corral.gateway.services.Services`).
CACHES = SwitchCaches()


def cache_for(store: Store) -> KillSwitchCache:
    """The cache this process uses for ``store`` by default (made on first use)."""
    return CACHES.cache_for(store)


def use_cache(store: Store, cache: KillSwitchCache) -> KillSwitchCache:
    """Make ``cache`` the one this process uses for ``store`` (tests: a manual clock)."""
    return CACHES.use(store, cache)


def active(store: Store) -> tuple[KillSwitchState, ...]:
    """The switches as governed calls in this process see them (cached, fail closed)."""
    return CACHES.active(store)


def check_switch(scope: str, target: str | None = "", mode: str | None = None) -> str:
    """The target a switch at ``scope`` is kept under (``""`` for ``global``, whose
    target may be given as ``None``); :class:`~corral.exceptions.ConfigError` for a
    switch that cannot mean anything: an unknown scope or mode, a target on
    ``global`` or none on any other scope (the same rule every store applies:
    :func:`~corral.stores.base.kill_target`), a tool switch not naming a tool."""
    if mode is not None and mode not in MODES:
        raise ConfigError(f"unknown kill-switch mode {shown(mode)} (one of {', '.join(MODES)})")
    target = kill_target(scope, target)
    if scope == "tool" and not _TOOL_NAME.fullmatch(target):
        raise ConfigError(
            f"{shown(target)} is not a tool name: tool names match exactly and use only "
            "lowercase letters, digits, '_', '.' and '-'"
        )
    return target


def enable(
    store: Store,
    *,
    scope: KillScope = "global",
    target: str | None = "",
    mode: KillMode | None = None,
    reason: str = "",
    actor: str | None = None,
) -> KillSwitchState:
    """Turn a switch on (or replace the one at the same scope and target); returns it.

    ``target`` is ``""`` or ``None`` for ``global`` and required for every other scope
    (see :func:`check_switch`). ``actor`` defaults to :func:`default_actor`. The change
    is written to the audit log in the same transaction (see :func:`audit_event`). Runs
    in this process see it at once; others within :data:`REFRESH_SECONDS` plus the
    time of a read.
    """
    target = check_switch(scope, target, mode)
    switch = KillSwitchState(
        scope=scope,
        target=target,
        mode=mode,
        reason=reason,
        actor=default_actor() if actor is None else actor,
    )
    store.set_kill_switch(switch, audit=audit_event("enable", switch))
    cache_for(store).invalidate()
    try:  # as stored: with the store's set_at
        stored = store.kill_switches()
    except StoreError:  # it is set; only the read back failed
        return replace(switch, set_at=time.time())
    return next((s for s in stored if (s.scope, s.target) == (scope, target)), switch)


def disable(
    store: Store,
    *,
    scope: KillScope = "global",
    target: str | None = "",
    reason: str = "",
    actor: str | None = None,
) -> bool:
    """Turn the switch at ``scope``/``target`` off; ``False`` if none was on there.

    ``target`` as for :func:`enable`. A switch turned off is written to the audit log
    with ``actor`` (default :func:`default_actor`) and ``reason``, in the same
    transaction; nothing is recorded when no switch was on there.
    """
    target = check_switch(scope, target)
    off = KillSwitchState(
        scope=scope,
        target=target,
        reason=reason,
        actor=default_actor() if actor is None else actor,
    )
    cleared = store.clear_kill_switch(scope, target, audit=audit_event("disable", off))
    cache_for(store).invalidate()
    return cleared


#: The ``run_id`` of audit records that belong to no run: changes made to the fleet
#: (kill switches). No run has this id (``corral runs`` never lists it).
FLEET_RUN_ID = "-"


def audit_event(action: str, switch: KillSwitchState) -> Event:
    """The audit record of turning ``switch`` on (``enable``) or off (``disable``).

    A fleet-level event: ``run_id`` :data:`FLEET_RUN_ID`, ``seq`` 0, kind
    ``kill_switch``, ``actor`` who changed it, ``tenant`` the target of a tenant
    switch; ``data`` holds the action, scope, target, mode and reason.
    """
    return Event(
        run_id=FLEET_RUN_ID,
        seq=0,
        kind="kill_switch",
        at=time.time(),
        data={
            "action": action,
            "scope": switch.scope,
            "target": switch.target,
            "mode": switch.mode,
            "reason": switch.reason,
        },
        tenant=switch.target if switch.scope == "tenant" else None,
        actor=switch.actor,
    )


def describe(switch: KillSwitchState) -> str:
    """``global``, or ``scope/target`` (``tool/browser.open``)."""
    return f"{switch.scope}/{switch.target}" if switch.target else switch.scope


def default_actor() -> str:
    """Who is changing a switch by default: ``$USER@host``."""
    user = os.environ.get("USER") or os.environ.get("USERNAME")
    if not user:
        try:
            user = getpass.getuser()
        except Exception:  # no passwd entry (containers): still record the host
            user = "unknown"
    return f"{user}@{socket.gethostname()}"


def as_mode(value: str | None) -> KillMode | None:
    """``value`` as a mode (``None`` stays ``None``); raises ConfigError when unknown."""
    if value is None:
        return None
    check_switch("global", "", value)
    return cast(KillMode, value)


__all__ = [
    "CACHES",
    "FLEET_RUN_ID",
    "GRACE_SECONDS",
    "MODES",
    "REFRESH_SECONDS",
    "SCOPES",
    "KillSwitchCache",
    "SwitchCaches",
    "active",
    "as_mode",
    "audit_event",
    "cache_for",
    "check_switch",
    "default_actor",
    "describe",
    "disable",
    "enable",
    "use_cache",
]
