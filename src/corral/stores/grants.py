"""Grant leases: the reservations one store object holds for this process.

A *grant* (a reservation, see :mod:`corral.stores.scopes`) is leased: the process
holding it renews it (the store's ``renew_grants``, from the renewer thread of
:mod:`corral.stores.leases`) until it is settled; the store's ``reclaim`` refunds
the grants whose lease lapsed (their process died), and ``reserve`` calls it first
at most once per :data:`RECLAIM_EVERY`. A reclaimed grant is kept, marked, until its
windows end: settling it then charges the actual amount (its hold was already
refunded), once.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from collections.abc import Callable

from corral.exceptions import ConfigError
from corral.stores.leases import LEASE_SECONDS, RENEWER, Held, Renewer

#: A store reclaims lapsed grants at most this often (seconds of wall time), from ``reserve``.
RECLAIM_EVERY = 1.0


class GrantLeases:
    """The grants one store object holds for this process, and their one renewal.

    Each grant records a holder (this object in this process) and a lease expiry.
    While any grant is outstanding, one callback is registered with the process's
    :class:`~corral.stores.leases.Renewer`; it extends every grant of the holder at once
    (the store's ``renew_grants(now)``, one statement). The last settlement releases it. A
    forked child is a new holder with nothing outstanding.
    """

    def __init__(
        self,
        renew: Callable[[float], object],
        *,
        lease: float = LEASE_SECONDS,
        renewer: Renewer | None = None,
    ) -> None:
        if not lease > 0:
            raise ConfigError(f"grant_lease: must be a positive number of seconds, got {lease!r}")
        self.lease = lease
        self.renewer = RENEWER if renewer is None else renewer
        self._renew = renew
        self._lock = threading.Lock()
        self.holder = uuid.uuid4().hex
        """This process's name for itself in the store (a new one after a fork)."""
        self._mine: set[str] = set()
        self._held: Held | None = None
        self._reclaimed_at: float | None = None
        _LEASES.add(self)

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self.holder = uuid.uuid4().hex
        self._mine = set()
        self._held = None  # the renewer forgot the parent's leases itself

    def granted(self, grant: str) -> None:
        """``grant`` is outstanding: renew it until :meth:`done`."""
        with self._lock:
            self._mine.add(grant)
            if self._held is None:
                self._held = self.renewer.hold(self._tick)

    def done(self, grant: str) -> None:
        """``grant`` was settled: it is renewed no more. (The renewal itself is released
        by the renewer's next tick that finds nothing outstanding: a process settling
        one grant after another does not register and release it every time.)"""
        with self._lock:
            self._mine.discard(grant)

    @property
    def outstanding(self) -> int:
        """How many of this process's grants are outstanding."""
        return len(self._mine)

    def _tick(self, now: float) -> None:
        with self._lock:
            if not self._mine:
                if self._held is not None:
                    self._held.release()
                    self._held = None
                return
        self._renew(now)

    def reclaim_due(self, now: float) -> bool:
        """Whether ``reserve`` should reclaim lapsed grants first (once per
        :data:`RECLAIM_EVERY` of ``now``, so the fast path costs nothing more)."""
        last = self._reclaimed_at
        if last is not None and last <= now < last + RECLAIM_EVERY:
            return False
        self._reclaimed_at = now
        return True

    def close(self) -> None:
        """Stop renewing (the store is closing; its grants lapse unless settled)."""
        with self._lock:
            self._mine.clear()
            if self._held is not None:
                self._held.release()
            self._held = None


_LEASES: weakref.WeakSet[GrantLeases] = weakref.WeakSet()


def _forked_leases() -> None:
    for leases in list(_LEASES):
        leases._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked_leases)
