"""Leases: what a live process holds in the store it renews; what a dead one held lapses.

Some shared state is held for longer than a moment: an idempotency claim while its
write runs, a budget hold while a slow tool runs. Each is held under a *lease*, an
expiry in wall-clock seconds that every process and machine can compare. The holder
renews it while it is alive; a process that dies stops renewing, the lease lapses,
and whoever meets it next acts on it (a budget hold is reclaimed and refunded, a
write's claim becomes ``unknown``).

:class:`Renewer` is the one daemon thread per process that renews: each lease
registers a callback with :meth:`Renewer.hold` and the thread calls it every
``interval`` seconds until the lease is released. A renewal that fails (the store is
briefly unreachable) is logged and tried again at the next tick: a lease is several
intervals long, so a few misses cost nothing, and the holder never blocks on it. A
process forked from a holder starts with no leases: it holds nothing of its parent's.

>>> renewed = []
>>> renewer = Renewer(interval=0.01)
>>> with renewer.hold(renewed.append):
...     renewer.tick()
>>> len(renewed)
1
>>> renewer.tick()
>>> len(renewed)
1
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger("corral")

#: How long a lease lasts without renewal (seconds of wall time).
LEASE_SECONDS = 30.0
#: How often the renewer renews (a lease survives two missed renewals).
RENEW_EVERY = 10.0

Renew = Callable[[float], object]
"""A renewal: called with the wall-clock time, extends its lease from then."""


class Held:
    """A lease being renewed; :meth:`release` (or leaving the ``with``) stops renewing it."""

    __slots__ = ("_id", "_renewer")

    def __init__(self, renewer: Renewer, lease_id: int) -> None:
        self._renewer = renewer
        self._id = lease_id

    def release(self) -> None:
        self._renewer._drop(self._id)

    def __enter__(self) -> Held:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Renewer:
    """Renews registered leases every ``interval`` seconds from one daemon thread; the
    leases it renews last ``lease`` seconds (a lease survives ``lease / interval - 1``
    missed renewals)."""

    def __init__(self, interval: float = RENEW_EVERY, *, lease: float = LEASE_SECONDS) -> None:
        self.interval = interval
        self.lease = lease
        self.failures = 0
        self._lock = threading.Lock()
        self._held: dict[int, Renew] = {}
        self._ids = itertools.count(1)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        _instances.add(self)

    def hold(self, renew: Renew) -> Held:
        """Renew with ``renew`` until the returned handle is released."""
        with self._lock:
            self._forked()
            lease_id = next(self._ids)
            self._held[lease_id] = renew
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="corral-lease-renewer", daemon=True
                )
                self._thread.start()
        return Held(self, lease_id)

    @property
    def held(self) -> int:
        """How many leases are being renewed."""
        with self._lock:
            self._forked()
            return len(self._held)

    def tick(self) -> None:
        """Renew every held lease once, now (the thread calls this every ``interval``)."""
        with self._lock:
            self._forked()
            renewals = list(self._held.values())
        now = time.time()
        for renew in renewals:
            try:
                renew(now)
            except Exception as exc:  # retried next tick; the lease outlives a few misses
                self.failures += 1
                log.warning("corral: a lease renewal failed (%s: %s)", type(exc).__name__, exc)

    def _drop(self, lease_id: int) -> None:
        with self._lock:
            self._held.pop(lease_id, None)

    def _forked(self) -> None:
        # A forked child inherits the dict but not the thread, and must not renew its
        # parent's leases: it starts empty. (Called with the lock held.)
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._held.clear()
            self._thread = None
            self._wake = threading.Event()

    def _after_fork(self) -> None:
        # The parent's lock may have been held by another thread at fork time.
        self._lock = threading.Lock()
        with self._lock:
            self._forked()

    def _loop(self) -> None:
        wake = self._wake
        while not wake.wait(self.interval):
            if self._pid != os.getpid():  # pragma: no cover - threads do not survive fork
                return
            self.tick()


_instances: weakref.WeakSet[Renewer] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for renewer in list(_instances):
        renewer._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)

#: The process's renewer (the default :class:`~corral.gateway.services.Services`).
RENEWER = Renewer()
