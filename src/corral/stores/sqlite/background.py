"""A SQLite store's daemon thread for group commit: the events held, written within the window.

In group-commit mode (``commit="group"``) the events
:meth:`~corral.stores.sqlite.events.Events.append_events` holds are written by this thread
once the oldest is ``window`` seconds old, in one transaction (the store's
``_background_work``), unless a write of the store object wrote them first.

The thread starts with the first event held, holds only a weak reference to its store (a
store dropped without ``close()`` lets it end within :data:`IDLE_SECONDS`), and ends when
the store closes. A forked child has no thread: its store starts one when it first holds
events of its own.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

#: How long the idle thread sleeps before it looks whether its store still exists (seconds).
IDLE_SECONDS = 1.0


class Owner(Protocol):
    """What the thread needs of its store."""

    closed: bool

    def _background_wait(self) -> float:
        """Seconds until the next group commit is due (:data:`IDLE_SECONDS` when none)."""

    def _background_work(self) -> None:
        """Write the events held, when they are due."""


class Background:
    """One store's daemon thread (see the module docstring)."""

    def __init__(self, owner: Owner, *, name: str = "corral-sqlite-group-commit") -> None:
        self.stopping = False
        self._ref: Callable[[], Owner | None] = weakref.ref(owner)
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Have the thread look at what is due now."""
        self._wake.set()

    def stop(self, *, join: bool = True) -> None:
        """End the thread (waiting for it unless ``join`` is false)."""
        self.stopping = True
        self._wake.set()
        if join and self._thread is not threading.current_thread():
            self._thread.join()

    def _loop(self) -> None:
        wake = self._wake
        while not self.stopping:
            owner = self._ref()
            if owner is None or owner.closed:
                return
            timeout = owner._background_wait()
            del owner  # hold no reference while asleep
            if timeout > 0:
                wake.wait(timeout)
            wake.clear()
            if self.stopping:
                return
            owner = self._ref()
            if owner is None:
                return
            owner._background_work()
            del owner
