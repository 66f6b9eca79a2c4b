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

The write-ahead log is checkpointed by SQLite inside the commit that finds it over
:data:`CHECKPOINT_PAGES` (two ``fsync`` calls: the multi-millisecond calls at p99). In
group-commit mode (``commit="group"``) the events a read leaves are held in memory
(:meth:`SQLiteConnection._hold`) and sealed into the chain within ``window`` seconds, by
a daemon thread (:mod:`.background`) or by the next write transaction of this store
object, whichever comes first: every write transaction first writes the events held, in
it, so nothing this store writes ever lands before events it was given earlier.

The store's concerns (:mod:`.runs`, :mod:`.events`, ...) are mixins over this class.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Sequence
from functools import partial
from types import TracebackType
from typing import Any, Self, cast

from corral.clock import DEADLINE, wait_budget
from corral.exceptions import ConfigError, StoreError, StoreGone
from corral.stores.chain import Sealed, Sealer
from corral.stores.filewatch import FileWatch
from corral.stores.grants import GrantLeases
from corral.stores.migrate import SQLITE, migrate
from corral.stores.records import Event
from corral.stores.sqlite.audit import Appender, seal_unsealed
from corral.stores.sqlite.background import IDLE_SECONDS, Background
from corral.stores.sqlite.forks import INHERITED, Process, keep_unclosed
from corral.stores.sqlite.sql import (
    AUTOCHECKPOINT,
    BEGIN,
    BUSY_TIMEOUT,
    COMMIT,
    HEARTBEAT_RUNNING,
    ROLLBACK,
    SYNCHRONOUS,
    WAL,
)

log = logging.getLogger("corral")

_MAX_BEATS = 4096
#: The log's size (pages) at which a commit checkpoints it. SQLite's default, 1000, made one
#: durable write in about a hundred wait for the checkpoint's two ``fsync`` calls (a tool
#: call's commits write 3 to 10 pages); 4000 makes that four times rarer, below the p99 of
#: reads and writes alike, for a log of at most 16 MB whose index still fits the first
#: 32 KB block of the ``-shm`` file (4096 frames). A checkpoint costs about the same
#: whatever the log's length: it copies each page changed once, and syncs twice. Only with
#: ``synchronous=NORMAL``: with ``FULL`` every commit syncs the log, and syncing it while it
#: grows (over a longer stretch) cost more than the rarer checkpoints saved.
CHECKPOINT_PAGES = 4000
#: Commit modes: each append committed before it returns, or reads' events in groups.
COMMIT_MODES = ("each", "group")
#: Events held in group-commit mode past which an append commits them itself.
MAX_HELD = 10_000

#: How often appending a run's events renews its heartbeat, at most (seconds). The lease the
#: heartbeat keeps is an hour; renewing it on every append would write one more page to the
#: WAL per event, about a tenth of the cost of a durable tool call.
HEARTBEAT_SECONDS = 1.0
_NEVER = float("-inf")


class SQLiteConnection:
    """One SQLite file's connection for a store object, and the plumbing every call uses."""

    leases: GrantLeases  # the store's (see SQLiteStore): released when it closes

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str,
        busy_timeout: float,
        commit: str = "each",
        window: float = 0.01,
    ) -> None:
        sync = str(synchronous).upper()
        if sync not in ("NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"synchronous: must be NORMAL, FULL or EXTRA, got {synchronous!r}")
        if commit not in COMMIT_MODES:
            raise ConfigError(f"commit: must be each or group, got {commit!r}")
        if not (isinstance(window, int | float) and 0 < window <= 60):
            raise ConfigError(f"window: must be over 0 and at most 60 seconds, got {window!r}")
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
        self._pid = Process.pid
        self._conn: sqlite3.Connection | None = None
        # One cursor kept for the statements every call runs (creating one per statement
        # costs about half a microsecond); used only under the lock, each result fetched at
        # once, so that no statement is left open between calls.
        self._cur: sqlite3.Cursor | None = None
        # Seals appends after the chain's head this object last wrote (checked in the
        # write transaction: see .audit.Appender).
        self._appender = Appender(self._sealer)
        # When this object last renewed each run's heartbeat (monotonic): see append_events.
        self._beats: dict[str, float] = {}
        # The files as connected, and why they are gone once they are (see _check_file).
        self._watch = FileWatch(self.path) if self.path != ":memory:" else None
        self._lost: str | None = None
        # The group-commit thread, started with the first event held.
        self._bg: Background | None = None
        # Group commit: the events held (under _held_lock), since when (monotonic), and
        # why the thread last failed to write them (raised by the next append).
        self.commit = commit
        self._grouped = commit == "group"
        self.window = float(window)
        self._held: list[Event] = []
        self._held_since = 0.0
        self._held_lock = threading.Lock()
        self._held_error: BaseException | None = None
        # Group commit: breakers' rows as read, and when (monotonic; see .breakers).
        if commit == "group":
            _GROUPED.add(self)

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
                if self.synchronous == "NORMAL":
                    conn.execute(AUTOCHECKPOINT.format(CHECKPOINT_PAGES))
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
                    keep_unclosed(self._conn)
                self._conn = self._cur = None
                if self._bg is not None:
                    self._bg.stop(join=False)
                    self._bg = None
        raise StoreGone(self._lost)

    def _forked(self) -> None:
        if self._conn is not None:
            INHERITED.append(self._conn)
        self._conn = self._cur = None
        self._lock = threading.RLock()
        self._pid = Process.pid
        self._bg = None  # its thread stayed in the parent
        # The events held are the parent's to write, not this child's.
        self._held_lock = threading.Lock()
        self._held = []
        self._held_error = None

    def close(self) -> None:
        """Close the connection, after writing the events held in group-commit mode; later
        calls raise :class:`~corral.exceptions.StoreError`. Raises the error that kept the
        events held from being written, if any (the store is closed all the same)."""
        self.leases.close()
        if self._pid != Process.pid:
            self._forked()
        failed: BaseException | None = None
        if self._held and not self.closed and self._lost is None:
            try:
                self.flush()
            except Exception as exc:  # closed all the same; the caller learns why
                failed = exc
        elif self._held and self._lost is not None:  # every call since said so: StoreGone
            log.error(
                "corral: %d events held for %s were not written", len(self._held), self._where
            )
        bg, self._bg = self._bg, None
        if bg is not None:
            bg.stop()
        with self._lock:
            self.closed = True
            if self._conn is not None:
                self._conn.close()
            self._conn = self._cur = None
        _GROUPED.discard(self)
        if failed is not None:
            raise failed

    # -- events ------------------------------------------------------------------------
    def _beats_due(self, events: Sequence[Event]) -> list[str]:
        """The runs of ``events`` whose heartbeat this store object renewed over
        :data:`HEARTBEAT_SECONDS` ago (or never)."""
        mono = time.monotonic()
        beats = self._beats
        if len(events) == 1:  # the allow path's case: no list of runs built
            run_id = events[0].run_id
            return [run_id] if mono - beats.get(run_id, _NEVER) >= HEARTBEAT_SECONDS else []
        return [
            run_id
            for run_id in dict.fromkeys(e.run_id for e in events)
            if mono - beats.get(run_id, _NEVER) >= HEARTBEAT_SECONDS
        ]

    def _write_events(
        self,
        cur: sqlite3.Cursor,
        events: Sequence[Event],
        due: list[str] | None = None,
        guess: Sequence[Sealed] | None = None,
    ) -> None:
        """Seal ``events`` into the chain and renew the heartbeat of the runs ``due``
        (:meth:`_beats_due` when not given); the caller holds the write transaction (and
        looked at the files when a heartbeat is due). ``guess``: the events as the
        appender sealed them before the transaction (:class:`.audit.Appender`).
        Heartbeats renewed are remembered (monotonic) in ``_beats``."""
        if due is None:
            due = self._beats_due(events)
        self._appender.write(cur, events, guess)
        if len(due) == 1:  # the usual case: execute skips executemany's setup
            cur.execute(HEARTBEAT_RUNNING, (time.time(), due[0]))
        elif due:
            now = time.time()
            cur.executemany(HEARTBEAT_RUNNING, [(now, run_id) for run_id in due])
        beats = self._beats
        if len(beats) > _MAX_BEATS:
            beats.clear()  # forgetting only means the next append renews
        mono = time.monotonic()
        for run_id in due:
            beats[run_id] = mono

    def _hold(self, events: Sequence[Event]) -> None:
        """Group commit: hold ``events`` for the thread to write within the window. Raises
        (after writing them itself) what kept the thread from writing earlier ones."""
        if self._pid != Process.pid:
            self._forked()  # what the parent held is the parent's to write
        if self._lost is not None:
            raise StoreGone(self._lost)
        if self._held_error is not None or len(self._held) >= MAX_HELD:
            with self._held_lock:
                self._held.extend(events)
            self.flush()  # raises what still fails: the caller's call fails closed
            return
        with self._held_lock:
            first = not self._held
            self._held.extend(events)
            if first:
                self._held_since = time.monotonic()
        if first:
            bg = self._bg
            if bg is None:
                bg = self._background()
            bg.wake()

    def _take_held(self) -> list[Event]:
        with self._held_lock:
            held, self._held = self._held, []
        return held

    def _give_back(self, held: list[Event]) -> None:
        """Put back events taken to write, in front, when their transaction did not commit."""
        with self._held_lock:
            self._held[:0] = held

    def flush(self) -> None:
        """Write the events held in group-commit mode now (nothing to do otherwise)."""
        if self._held:
            self._check_file()  # a few stat calls per group: the heartbeat's check
            with self._write():
                pass  # a write transaction writes what is held first (see _Write)
        self._held_error = None

    # -- the group-commit thread -------------------------------------------------------
    def _background(self) -> Background:
        with self._lock:
            if self._pid != Process.pid:
                self._forked()
            if self._bg is None:
                if self.closed:
                    raise StoreError(f"{self._where}: the store is closed")
                self._bg = Background(self)
            return self._bg

    def _background_wait(self) -> float:
        if not self._held:
            return IDLE_SECONDS
        return max(0.0, self._held_since + self.window - time.monotonic())

    def _background_work(self) -> None:
        if self._held and time.monotonic() >= self._held_since + self.window:
            try:
                self.flush()
            except Exception as exc:  # kept; raised by the next append (fail closed)
                self._held_error = exc
                log.warning("corral: a group commit to %s failed (%s)", self._where, exc)


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
        if store._pid != Process.pid:
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
            conn = store._conn
            if conn is None:
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
    ends normally, rolled back otherwise (and when the commit fails). In group-commit mode
    it first writes the events held (given back to be held again if it rolls back)."""

    __slots__ = ("_conn", "_taken")

    def __enter__(self) -> sqlite3.Connection:
        conn = self._conn = super().__enter__()
        store = self._store
        self._taken: list[Event] | None = None
        try:
            cur = cast(sqlite3.Cursor, store._cur)
            cur.execute(BEGIN)
            if store._held:
                self._taken = store._take_held()
                store._write_events(cur, self._taken)
        except BaseException as exc:
            self._undo()
            self._leave(exc)
            raise
        return conn

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        try:
            if exc is None:
                cast(sqlite3.Cursor, self._store._cur).execute(COMMIT)
                self._taken = None
            else:
                self._undo()
        except BaseException as failed:
            self._undo()
            self._leave(failed)
            raise
        self._leave(exc)

    def _undo(self) -> None:
        """Roll back what is still open; hold again the events taken to write."""
        conn = self._conn
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(ROLLBACK)
        taken, self._taken = self._taken, None
        if taken:
            self._store._give_back(taken)


#: Stores in group-commit mode: the events they hold are written when the interpreter exits.
_GROUPED: weakref.WeakSet[SQLiteConnection] = weakref.WeakSet()


@atexit.register
def _flush_grouped() -> None:
    for store in list(_GROUPED):
        if store.closed or store._pid != Process.pid:
            continue
        try:
            store.flush()
        except Exception as exc:  # at exit nobody can be told but the log
            log.error("corral: events held for %s were not written (%s)", store._where, exc)
