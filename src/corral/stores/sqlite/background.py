"""A SQLite store's daemon thread: WAL checkpoints off the callers' path, and group commits.

SQLite in WAL mode copies the log back into the database (a *checkpoint*, two ``fsync``
calls) from inside whichever commit first finds the log over its threshold: one call in a
few hundred waited milliseconds for it. The store's connection checkpoints only as a
backstop (:data:`BACKSTOP_PAGES`); once :data:`CHECKPOINT_COMMITS` commits were made since
the last checkpoint, this thread runs a ``PASSIVE`` checkpoint on a connection of its own,
which never blocks a writer (they keep appending to the log meanwhile), repeated up to
:data:`PASSES` times until it is complete, so that the next writer starts the log over.
Writers that never pause outrun it: their log grows to the backstop, which then
checkpoints inside a commit as SQLite always did (a quarter as often as by default).

In group-commit mode (``commit="group"``) the same thread commits the events buffered by
:meth:`~corral.stores.sqlite.events.Events.append_events` once the oldest is ``window``
seconds old, in one transaction (:meth:`Background.wake`).

The thread starts on first need, holds only a weak reference to its store (a store
dropped without :meth:`close` lets it end within a second), and ends when the store
closes. Its connection is opened ``mode=rw`` (it never creates a file that was removed);
the store looks whether its file is still there before each checkpoint. Closing the
thread's connection never removes the ``-wal`` file: the store's own connection, open
until after the thread ends (and never closed once the file is lost), is the last.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import weakref
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote

from corral.stores.sqlite.sql import CHECKPOINT

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("corral")

#: Commits after which the thread checkpoints (a tool call's commit writes 2 to 4 pages:
#: about SQLite's own threshold of 1000 pages).
CHECKPOINT_COMMITS = 250
#: The store connection's own checkpoint threshold (pages), reached only when this thread
#: cannot keep up.
BACKSTOP_PAGES = 4000
#: Checkpoints in a row while writers keep appending meanwhile: only a complete one lets
#: the next writer start the log over (else it grows until the backstop).
PASSES = 4
#: How long the idle thread sleeps before it looks whether its store still exists (seconds).
IDLE_SECONDS = 1.0


class Owner(Protocol):
    """What the thread needs of its store."""

    closed: bool

    def _background_wait(self) -> float:
        """Seconds until the next group commit is due (:data:`IDLE_SECONDS` when none)."""

    def _background_work(self, worker: Background) -> None:
        """Do what is due: a group commit, a checkpoint (through ``worker.checkpoint``)."""


class Background:
    """One store's daemon thread (see the module docstring)."""

    def __init__(self, owner: Owner, path: str, *, name: str = "corral-sqlite") -> None:
        self.path = path
        self.stopping = False
        self._ref: Callable[[], Owner | None] = weakref.ref(owner)
        self._wake = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Have the thread look at what is due now."""
        self._wake.set()

    def checkpoint(self) -> None:
        """A ``PASSIVE`` checkpoint of the store's log, from this thread's connection; a
        failure is only logged (the store's connection checkpoints as a backstop)."""
        try:
            if self._conn is None:
                uri = f"file:{quote(self.path)}?mode=rw"
                self._conn = sqlite3.connect(
                    uri, uri=True, timeout=0, isolation_level=None, check_same_thread=False
                )
            for _ in range(PASSES):
                busy, log_frames, done = self._conn.execute(CHECKPOINT).fetchone()
                if busy or done >= log_frames:
                    break  # another checkpoints, or complete: the next writer starts over
        except sqlite3.Error as exc:
            log.debug("corral: a background checkpoint of %s failed: %s", self.path, exc)

    def stop(self, *, join: bool = True) -> None:
        """End the thread (waiting for it unless ``join`` is false)."""
        self.stopping = True
        self._wake.set()
        if join and self._thread is not threading.current_thread():
            self._thread.join()

    def inherited(self) -> sqlite3.Connection | None:
        """In a forked child: the parent's connection, never to be used or closed there."""
        conn, self._conn = self._conn, None
        return conn

    def _loop(self) -> None:
        wake = self._wake
        try:
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
                owner._background_work(self)
                del owner
        finally:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
