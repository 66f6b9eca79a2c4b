"""The SQLite store's connection: one per store object, behind a lock, reopened after a fork.

Each store object holds one connection behind a lock, so threads of one process
queue on a mutex rather than on SQLite's sleeping busy handler; a process forked
from one that had the store open reconnects on first use. Every call enters
:meth:`SQLiteConnection._locked` (a read) or :meth:`SQLiteConnection._write` (one
``BEGIN IMMEDIATE`` transaction, which takes the database's write lock before it
reads). A writer waits up to ``busy_timeout`` seconds for another, and a call made
for a run (with :data:`corral.clock.DEADLINE` set) no longer than the run has left,
also for the store's own lock when another thread of the process holds it.

A file removed, renamed or replaced while the store has it open (or its ``-wal`` or
``-shm`` file) is noticed by :meth:`SQLiteConnection._check_file`
(:mod:`corral.stores.filewatch`): from then on every call raises
:class:`~corral.exceptions.StoreGone`.

The store's concerns (:mod:`.runs`, :mod:`.events`, ...) are mixins over this class.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from functools import partial
from types import TracebackType
from typing import Any, Self, cast

from corral.clock import DEADLINE, wait_budget
from corral.exceptions import ConfigError, StoreError, StoreGone
from corral.stores.chain import Sealer
from corral.stores.filewatch import FileWatch
from corral.stores.grants import GrantLeases
from corral.stores.migrate import SQLITE, migrate
from corral.stores.sqlite.audit import seal_unsealed
from corral.stores.sqlite.sql import BEGIN, BUSY_TIMEOUT, COMMIT, ROLLBACK, SYNCHRONOUS, WAL

#: Connections inherited through ``fork``: never used or closed in the child (SQLite
#: forbids both), only kept from being garbage-collected, which would close them.
_INHERITED: list[sqlite3.Connection] = []


class SQLiteConnection:
    """One SQLite file's connection for a store object, and the plumbing every call uses."""

    leases: GrantLeases  # the store's (see SQLiteStore): released when it closes

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: str, busy_timeout: float
    ) -> None:
        sync = str(synchronous).upper()
        if sync not in ("NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"synchronous: must be NORMAL, FULL or EXTRA, got {synchronous!r}")
        self.path = os.fspath(path)
        if self.path != ":memory:":
            self.path = os.path.abspath(self.path)  # a later chdir must not move the store
        self.synchronous = sync
        self.busy_timeout = busy_timeout
        self._busy_ms = int(busy_timeout * 1000)  # the busy wait outside a run's deadline
        self._busy_now = self._busy_ms
        self.closed = False
        self._where = f"SQLite database {self.path}"
        self._sealer = Sealer.from_env()
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = None
        # One cursor kept for the statements every call runs (creating one per statement
        # costs about half a microsecond); used only under the lock, each result fetched at
        # once, so that no statement is left open between calls.
        self._cur: sqlite3.Cursor | None = None
        # When this object last renewed each run's heartbeat (monotonic): see append_events.
        self._beats: dict[str, float] = {}
        # The files as connected, and why they are gone once they are (see _check_file).
        self._watch = FileWatch(self.path) if self.path != ":memory:" else None
        self._lost: str | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connect(self) -> sqlite3.Connection:
        timeout = wait_budget(self.busy_timeout)
        conn = sqlite3.connect(
            self.path,
            timeout=timeout,
            isolation_level=None,  # autocommit: transactions are begun explicitly
            check_same_thread=False,  # one thread at a time, under self._lock
        )
        try:
            if self.path != ":memory:":
                conn.execute(WAL)
            conn.execute(SYNCHRONOUS.format(self.synchronous))
            migrate(
                conn, SQLITE, where=self._where, after={2: partial(seal_unsealed, self._sealer)}
            )
        except BaseException:
            conn.close()
            raise
        self._busy_now = int(timeout * 1000)  # what the connection's busy handler waits now
        return conn

    def _locked(self) -> _Locked:
        """``with store._locked() as conn``: this store's connection, under its lock; an
        ``sqlite3.Error`` inside becomes a :class:`~corral.exceptions.StoreError`."""
        return _Locked(self)

    def _write(self) -> _Write:
        """One transaction holding the write lock from its first read (BEGIN IMMEDIATE)."""
        return _Write(self)

    def _open(self) -> sqlite3.Connection:
        """The connection, opened on first use (the caller holds the lock)."""
        if self._conn is None:
            if self.closed:
                raise StoreError(f"{self._where}: the store is closed")
            self._check_file()  # never reconnect to (and so create) a file that was removed
            self._conn = self._connect()
            self._cur = self._conn.cursor()
            if self._watch is not None and not self._watch.recorded:
                self._watch.record()
        return self._conn

    def _check_file(self) -> None:
        """Raise :class:`~corral.exceptions.StoreGone` once the file this store opened (or
        its ``-wal`` or ``-shm`` file) was removed or replaced (:mod:`corral.stores.filewatch`).

        From then on every call fails: nothing more goes into a file no other process
        reads. The connection is left open, never used again: closing it would make
        SQLite checkpoint and delete the ``-wal`` and ``-shm`` files *by name*, which may
        now be another store's.
        """
        if self._lost is None:
            why = self._watch.change() if self._watch is not None else None
            if why is None:
                return
            with self._lock:
                self._lost = (
                    f"{why} while this process had it open: this process no longer uses it "
                    "(restart it against the store in use)"
                )
                if self._conn is not None:
                    _keep_unclosed(self._conn)
                self._conn = self._cur = None
        raise StoreGone(self._lost)

    def _forked(self) -> None:
        if self._conn is not None:
            _INHERITED.append(self._conn)
        self._conn = self._cur = None
        self._lock = threading.RLock()
        self._pid = os.getpid()

    def close(self) -> None:
        """Close the connection; later calls raise :class:`~corral.exceptions.StoreError`."""
        self.leases.close()
        if self._pid != os.getpid():
            self._forked()
        with self._lock:
            self.closed = True
            if self._conn is not None:
                self._conn.close()
            self._conn = self._cur = None


class _Locked:
    """The store's connection under its lock (see ``SQLiteConnection._locked``).

    A class rather than a ``contextlib.contextmanager`` generator: every store call enters
    one (a write two), and a generator's setup costs over a microsecond per use.
    """

    __slots__ = ("_lock", "_store")

    def __init__(self, store: SQLiteConnection) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        if store._pid != os.getpid():
            store._forked()
        self._lock = store._lock
        deadline = DEADLINE.get()
        if deadline is None or deadline - time.monotonic() >= store.busy_timeout:
            self._lock.acquire()
            busy = store._busy_ms
        else:  # a run's call: no wait, here or in SQLite, past what the run has left
            wait = wait_budget(store.busy_timeout)
            if not self._lock.acquire(timeout=wait):
                raise StoreError(
                    f"{store._where}: busy in this process for {wait:.3g} s "
                    "(the time the run had left)"
                )
            busy = int(wait_budget(store.busy_timeout) * 1000)
        try:
            conn = store._open()
            if busy != store._busy_now:
                # Set only while the time left is below busy_timeout (and restored after).
                conn.execute(BUSY_TIMEOUT.format(busy))
                store._busy_now = busy
            return conn
        except BaseException as exc:
            self._leave(exc)
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        self._leave(exc)

    def _leave(self, exc: BaseException | None) -> None:
        """Release the lock; raise ``exc`` as a StoreError if it is SQLite's."""
        self._lock.release()
        if isinstance(exc, sqlite3.Error):
            self._store._check_file()  # a file removed or replaced explains it: say so
            raise StoreError(f"{self._store._where}: {exc}") from exc


class _Write(_Locked):
    """A ``BEGIN IMMEDIATE`` transaction on the locked connection: committed when the body
    ends normally, rolled back otherwise (and when the commit fails)."""

    __slots__ = ("_conn",)

    def __enter__(self) -> sqlite3.Connection:
        conn = self._conn = super().__enter__()
        try:
            cast(sqlite3.Cursor, self._store._cur).execute(BEGIN)
        except BaseException as exc:
            self._leave(exc)
            raise
        return conn

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        conn = self._conn
        try:
            try:
                if exc is None:
                    cast(sqlite3.Cursor, self._store._cur).execute(COMMIT)
            finally:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute(ROLLBACK)
        except BaseException as failed:
            self._leave(failed)
            raise
        self._leave(exc)


def _keep_unclosed(conn: sqlite3.Connection) -> None:
    """Keep ``conn`` from ever being closed, even at interpreter exit (see
    ``SQLiteConnection._check_file``): one deliberate leak per store whose file was lost."""
    import ctypes  # only on this rare path

    _INHERITED.append(conn)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))
