"""The SQLite store: one file, shared by every process on the machine.

The default store (one file per user: :func:`corral.stores.default_path`). Contended
state relies on SQLite's own locking, so it holds across processes, not only threads:
every read-modify-write (scoped reservations, idempotency claims, approval decisions)
runs in one ``BEGIN IMMEDIATE`` transaction, which takes the database's write lock
before it reads. The file is in WAL mode with ``synchronous=NORMAL``: a committed write
survives the process being killed (``FULL`` also survives power loss, at a cost
per commit). Readers never wait for the writer; a writer waits up to
``busy_timeout`` seconds for another, and a call made for a run (with
:data:`corral.clock.DEADLINE` set) no longer than the run has left, also for the
store's own lock when another thread of the process holds it.

Each store object holds one connection behind a lock, so threads of one process
queue on a mutex rather than on SQLite's sleeping busy handler; a process forked
from one that had the store open reconnects on first use.

A file removed, renamed or replaced while the store has it open (or its ``-wal`` or
``-shm`` file) is noticed at the next kill-switch read (every 0.1 s in a process that
runs agents), heartbeat or failed statement (:mod:`corral.stores.filewatch`): from then on every
call raises :class:`~corral.exceptions.StoreGone` and runs stop with
``control_plane_unavailable``, instead of writing on into a file nobody reads.

USD amounts are stored as the exact decimal text and added up in Python inside
the write transaction, so a :class:`~decimal.Decimal` round-trips unchanged.
Mappings (events, usage, approval arguments, outcomes) are JSON; a value JSON
cannot hold is stored as its ``str()``.

Events are the audit log: each append reads the chain's head, seals the events
(:mod:`corral.stores.chain`) and moves the head in its ``BEGIN IMMEDIATE`` transaction, so
every process appending to the file extends one chain. An event's ``id`` (the
table's rowid) is its place in the chain: no extra index to write per event.
Triggers refuse to change or delete a sealed event. The chain's head is always read
inside the write transaction (another process may have moved it since). Appending
also renews the runs' heartbeat, at most once per :data:`HEARTBEAT_SECONDS`.

>>> store = SQLiteStore(":memory:")
>>> store.create_run(RunRecord(id="run_1", tenant="acme"))
>>> store.get_run("run_1").status
'running'
>>> store.close()
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import fields
from decimal import Decimal
from types import TracebackType
from typing import Any, cast

from corral.clock import DEADLINE, wait_budget
from corral.exceptions import ConfigError, StoreError, StoreGone
from corral.stores.base import (
    ApprovalRecord,
    ApprovalStatus,
    AuditHead,
    AuditRecord,
    BreakerState,
    Claim,
    ClaimRecord,
    ClaimState,
    DegradeCounts,
    DegradeWindow,
    Event,
    GrantLeases,
    KillMode,
    KillScope,
    KillSwitchState,
    Refusal,
    RunRecord,
    ScopedCharge,
    ScopeState,
    checked_switch,
    claim_state,
    decide_pending,
    degrade_bucket,
    grant_ends,
    held_charges,
    kill_target,
    reserve_in,
    retry_fits,
    settle_in,
    settled_charges,
)
from corral.stores.chain import Sealer
from corral.stores.filewatch import FileWatch
from corral.stores.leases import LEASE_SECONDS, Renewer
from corral.stores.migrate import SQLITE, migrate
from corral.stores.owner import RUN_LEASE_SECONDS, RunOwner, interruption

#: Connections inherited through ``fork``: never used or closed in the child (SQLite
#: forbids both), only kept from being garbage-collected, which would close them.
_INHERITED: list[sqlite3.Connection] = []

_RUN_COLUMNS = (
    "id, tenant, agent, status, stop_reason, stop, task, answer, usage, policy_digest, "
    "started_at, ended_at, would_stop, owner_host, owner_pid, owner_node, owner_started, "
    "heartbeat_at, kill_mode"
)
_PLAIN_FIELDS = frozenset(
    {
        "tenant",
        "agent",
        "status",
        "stop_reason",
        "task",
        "answer",
        "policy_digest",
        "started_at",
        "ended_at",
        "heartbeat_at",
        "kill_mode",
    }
)
_RUN_FIELDS = frozenset(f.name for f in fields(RunRecord))

#: How often appending a run's events renews its heartbeat, at most (seconds). The lease the
#: heartbeat keeps is an hour; renewing it on every append would write one more page to the
#: WAL per event, about a tenth of the cost of a durable tool call.
HEARTBEAT_SECONDS = 1.0
_MAX_BEATS = 4096
_NEVER = float("-inf")


class SQLiteStore:
    """A complete :class:`~corral.stores.base.Store` in one SQLite file.

    ``path`` is a file (created with its schema if missing, upgraded if older) or
    ``":memory:"`` for a private in-memory database. Opening marks ``interrupted``
    the runs left ``running`` by processes that died. Raises
    :class:`~corral.exceptions.StoreError` when the file cannot be opened and
    :class:`~corral.exceptions.ConfigError` when its schema is newer than this code.
    The audit chain is keyed when ``CORRAL_AUDIT_KEY`` is set at construction.
    """

    #: A database: other processes may share it (a ``:memory:`` one too counts as one).
    shared = True

    def __init__(
        self,
        path: str | os.PathLike[str] = "corral.db",
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 10.0,
        grant_lease: float = LEASE_SECONDS,
        renewer: Renewer | None = None,
    ) -> None:
        self.leases = GrantLeases(self.renew_grants, lease=grant_lease, renewer=renewer)
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
        try:
            with self._locked():
                pass  # connect and migrate now, so a bad path or schema fails here
            self.mark_interrupted()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- connection --------------------------------------------------------------------
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
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            migrate(conn, SQLITE, where=self._where, after={2: self._seal_unsealed})
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

    # -- runs and trace ----------------------------------------------------------------
    def create_run(self, record: RunRecord) -> None:
        owner = record.owner or RunOwner.current()
        heartbeat = record.heartbeat_at or time.time()
        with self._write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO corral_runs ({_RUN_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.tenant,
                    record.agent,
                    record.status,
                    record.stop_reason,
                    _dumps_or_none(record.stop),
                    record.task,
                    record.answer,
                    _dumps(record.usage),
                    record.policy_digest,
                    record.started_at,
                    record.ended_at,
                    _dumps(list(record.would_stop)),
                    *_owner_columns(owner),
                    heartbeat,
                    record.kill_mode,
                ),
            )

    def update_run(self, run_id: str, **changes: Any) -> None:
        unknown = set(changes) - _RUN_FIELDS
        if unknown or "id" in changes:
            raise TypeError(f"update_run cannot set {', '.join(sorted(unknown or {'id'}))}")
        changes.setdefault("heartbeat_at", time.time())
        if changes.get("status") == "running":
            changes.setdefault("owner", RunOwner.current())
        columns: list[str] = []
        values: list[Any] = []
        for name, value in changes.items():
            if name in _PLAIN_FIELDS:
                columns.append(name)
                values.append(value)
            elif name == "owner":
                columns += ["owner_host", "owner_pid", "owner_node", "owner_started"]
                values += _owner_columns(value)
            elif name == "stop":
                columns.append(name)
                values.append(_dumps_or_none(value))
            else:  # usage, would_stop
                columns.append(name)
                values.append(_dumps(list(value) if name == "would_stop" else value))
        assignments = ", ".join(f"{c} = ?" for c in columns)
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE corral_runs SET {assignments} WHERE id = ?", (*values, run_id)
            )
            if cur.rowcount == 0:
                raise KeyError(run_id)

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._locked() as conn:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM corral_runs WHERE id = ?", (run_id,)
            ).fetchone()
        return None if row is None else _run(row)

    def list_runs(self, *, limit: int = 100, tenant: str | None = None) -> list[RunRecord]:
        where, params = ("WHERE tenant = ?", (tenant,)) if tenant is not None else ("", ())
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM corral_runs {where} "
                "ORDER BY started_at DESC, rowid LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [_run(row) for row in rows]

    def append_events(self, events: Sequence[Event]) -> None:
        """Append events in order, sealed into the audit chain; renews their runs' heartbeat
        (at most every :data:`HEARTBEAT_SECONDS` per run from this store object)."""
        if not events:
            return
        mono = time.monotonic()
        beats = self._beats
        if len(events) == 1:  # the allow path's case
            run_id = events[0].run_id
            due = [run_id] if mono - beats.get(run_id, _NEVER) >= HEARTBEAT_SECONDS else []
        else:
            due = [
                run_id
                for run_id in dict.fromkeys(e.run_id for e in events)
                if mono - beats.get(run_id, _NEVER) >= HEARTBEAT_SECONDS
            ]
        if due:  # at most once a second per run: also look at the files
            self._check_file()
        with self._write() as conn:
            cur = cast(sqlite3.Cursor, self._cur)
            _append(cur, self._sealer, events)
            if len(due) == 1:  # the usual case: execute skips executemany's setup
                cur.execute(_HEARTBEAT, (time.time(), due[0]))
            elif due:
                now = time.time()
                conn.executemany(_HEARTBEAT, [(now, run_id) for run_id in due])
        if len(beats) > _MAX_BEATS:
            beats.clear()  # forgetting only means the next append renews
        for run_id in due:
            beats[run_id] = mono

    def events(self, run_id: str) -> list[Event]:
        with self._locked() as conn:
            rows = conn.execute(
                "SELECT run_id, seq, kind, at, data, tenant, actor FROM corral_events "
                "WHERE run_id = ? ORDER BY id",
                (run_id,),
            ).fetchall()
        return [
            Event(
                run_id=r[0],
                seq=r[1],
                kind=r[2],
                at=r[3],
                data=json.loads(r[4]),
                tenant=r[5],
                actor=r[6],
            )
            for r in rows
        ]

    # -- audit log -----------------------------------------------------------------------
    def audit_head(self) -> AuditHead:
        with self._locked() as conn:
            row = conn.execute("SELECT seq, hash FROM corral_audit_head").fetchone()
        return AuditHead() if row is None else AuditHead(seq=row[0], hash=row[1])

    def audit_records(self, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Records with ``seq`` above ``after``, in chain order, at most ``limit``."""
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM corral_events WHERE id > ? ORDER BY id LIMIT ?",
                (after, limit),
            ).fetchall()
        return [_audit_record(r) for r in rows]

    def _seal_unsealed(self, cur: sqlite3.Cursor) -> None:
        """Number and seal the events written before the audit chain existed (migration 2):
        ids become 1, 2, ... in their order (each moves down only, so none collide)."""
        rows = cur.execute(
            "SELECT id, run_id, seq, kind, at, data, tenant, actor FROM corral_events "
            "WHERE hash IS NULL ORDER BY id"
        ).fetchall()
        if not rows:
            return
        for place, row in enumerate(rows, start=1):
            if row[0] != place:
                cur.execute("UPDATE corral_events SET id = ? WHERE id = ?", (place, row[0]))
        rows = [(place, *row[1:]) for place, row in enumerate(rows, start=1)]
        events = [
            Event(
                run_id=r[1],
                seq=r[2],
                kind=r[3],
                at=r[4],
                data=_loads(r[5]),
                tenant=r[6],
                actor=r[7],
            )
            for r in rows
        ]
        head = cur.execute("SELECT seq, hash FROM corral_audit_head").fetchone()
        sealed = self._sealer.seal_rows(AuditHead(seq=head[0], hash=head[1]), events)
        cur.executemany(
            "UPDATE corral_events SET prev_hash = ?, hash = ?, mode = ?, at = ?, data = ? "
            "WHERE id = ?",
            [(r.prev_hash, r.hash, self._sealer.mode, r.at, r.text, r.seq) for r in sealed],
        )
        last = sealed[-1]
        cur.execute("UPDATE corral_audit_head SET seq = ?, hash = ?", (last.seq, last.hash))

    def heartbeat(self, run_id: str) -> None:
        self._check_file()
        with self._write() as conn:
            conn.execute(
                "UPDATE corral_runs SET heartbeat_at = ? WHERE id = ?", (time.time(), run_id)
            )

    def mark_interrupted(
        self, *, now: float | None = None, lease: float = RUN_LEASE_SECONDS
    ) -> list[str]:
        """Mark ``interrupted`` the running runs whose owner died or whose lease lapsed;
        return their ids. Each gets an ``interrupted`` event saying why."""
        now = time.time() if now is None else now
        with self._locked() as conn:
            rows = conn.execute(
                "SELECT id, owner_host, owner_pid, owner_node, owner_started, heartbeat_at, "
                "tenant, agent FROM corral_runs WHERE status = 'running'"
            ).fetchall()
        found = []
        for run_id, host, pid, node, started, heartbeat, tenant, agent in rows:
            owner = _owner(host, pid, node, started)
            why = interruption(owner, heartbeat_at=heartbeat, now=now, lease=lease)
            if why is not None:
                found.append((run_id, heartbeat, why, tenant, agent))
        if not found:
            return []
        marked = []
        with self._write() as conn:
            for run_id, heartbeat, why, tenant, agent in found:
                # Only if nothing renewed it since it was judged (its owner may be alive elsewhere).
                cur = conn.execute(
                    "UPDATE corral_runs SET status = 'interrupted', ended_at = ? "
                    "WHERE id = ? AND status = 'running' AND heartbeat_at IS ?",
                    (heartbeat or now, run_id, heartbeat),
                )
                if cur.rowcount == 0:
                    continue
                (seq,) = conn.execute(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM corral_events WHERE run_id = ?",
                    (run_id,),
                ).fetchone()
                event = Event(
                    run_id=run_id,
                    seq=seq,
                    kind="interrupted",
                    at=now,
                    data={"why": why},
                    tenant=tenant,
                    actor=agent,
                )
                _append(conn, self._sealer, [event])
                marked.append(run_id)
        return marked

    # -- shared budgets ------------------------------------------------------------------
    def reserve(self, charges: Sequence[ScopedCharge], *, now: float) -> str | Refusal:
        leases = self.leases
        charges = held_charges(charges)
        with self._write() as conn:
            if leases.reclaim_due(now):
                _reclaim(conn, now)
            states = reserve_in(_load_scopes(conn, {c.scope for c in charges}), charges, now)
            if isinstance(states, Refusal):
                return states
            _save_scopes(conn, states)
            grant = "g" + uuid.uuid4().hex
            conn.execute(
                "INSERT INTO corral_grants (id, charges, created_at, holder, lease_until, ends) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    grant,
                    _dumps([_held(c) for c in charges]),
                    time.time(),
                    leases.holder,
                    now + leases.lease,
                    grant_ends(charges, now),
                ),
            )
        leases.granted(grant)
        return grant

    def settle(self, grant: str, actual: Sequence[ScopedCharge]) -> None:
        by_scope = settled_charges(actual)
        with self._write() as conn:
            row = conn.execute(
                "SELECT charges, reclaimed FROM corral_grants WHERE id = ?", (grant,)
            ).fetchone()
            if row is not None:
                conn.execute("DELETE FROM corral_grants WHERE id = ?", (grant,))
                held = _charges(row[0])
                changed = [
                    c
                    for c in held
                    if c.calls != by_scope.get(c.scope, _NONE).calls
                    or c.usd != by_scope.get(c.scope, _NONE).usd
                    or row[1]
                ]
                if changed:  # settling at the reserved amount writes no scope
                    states = _load_scopes(conn, {c.scope for c in changed})
                    written: dict[str, ScopeState] = {}
                    for c in changed:
                        real = by_scope.get(c.scope, ScopedCharge(scope=c.scope))
                        state = states.get(c.scope)
                        if state is not None and settle_in(state, c, real, reclaimed=bool(row[1])):
                            written[c.scope] = state
                    _save_scopes(conn, written)
        self.leases.done(grant)  # not before it is settled: until then, the hold stays held

    def renew_grants(self, now: float) -> int:
        """Renew this process's outstanding grants: their leases run from ``now``.

        The renewer calls this while any is outstanding (one statement); returns how
        many were renewed.
        """
        with self._write() as conn:
            return conn.execute(
                "UPDATE corral_grants SET lease_until = ? WHERE holder = ? AND reclaimed = 0",
                (now + self.leases.lease, self.leases.holder),
            ).rowcount

    def reclaim(self, now: float) -> int:
        """Refund the grants whose lease lapsed before ``now``; returns how many."""
        with self._write() as conn:
            return _reclaim(conn, now)

    def scope_usage(self, scope: str) -> tuple[int, Decimal]:
        """Calls and USD currently committed or held in ``scope``."""
        with self._locked() as conn:
            row = conn.execute(
                "SELECT calls, usd FROM corral_scopes WHERE scope = ?", (scope,)
            ).fetchone()
        return (0, Decimal(0)) if row is None else (int(row[0]), Decimal(row[1]))

    # -- kill switch ---------------------------------------------------------------------
    def kill_switches(self) -> list[KillSwitchState]:
        self._check_file()  # read every REFRESH_SECONDS by each process: the periodic check
        with self._locked() as conn:
            rows = conn.execute(
                "SELECT scope, target, mode, reason, actor, set_at FROM corral_kill_switches "
                "ORDER BY rowid"
            ).fetchall()
        return [
            KillSwitchState(
                scope=r[0], target=r[1], mode=r[2], reason=r[3], actor=r[4], set_at=r[5]
            )
            for r in rows
        ]

    def set_kill_switch(self, switch: KillSwitchState, *, audit: Event | None = None) -> None:
        switch = checked_switch(switch)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO corral_kill_switches (scope, target, mode, reason, actor, set_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope, target) DO UPDATE SET "
                "mode = excluded.mode, reason = excluded.reason, actor = excluded.actor, "
                "set_at = excluded.set_at",
                (
                    switch.scope,
                    switch.target,
                    switch.mode,
                    switch.reason,
                    switch.actor,
                    time.time(),
                ),
            )
            if audit is not None:
                _append(conn, self._sealer, [audit])

    def clear_kill_switch(
        self, scope: KillScope, target: str = "", *, audit: Event | None = None
    ) -> bool:
        target = kill_target(scope, target)
        with self._write() as conn:
            cur = conn.execute(
                "DELETE FROM corral_kill_switches WHERE scope = ? AND target = ?", (scope, target)
            )
            cleared = cur.rowcount > 0
            if cleared and audit is not None:
                _append(conn, self._sealer, [audit])
            return cleared

    # -- approvals -----------------------------------------------------------------------
    def create_approval(self, record: ApprovalRecord) -> None:
        with self._write() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO corral_approvals ({_APPROVAL_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.run_id,
                    record.tool,
                    record.args_digest,
                    _dumps(record.arguments),
                    record.tenant,
                    record.agent,
                    record.status,
                    record.approver,
                    record.reason,
                    record.created,
                    record.expires,
                    ",".join(record.kill_modes),
                    record.kill_mode,
                    record.decided_at,
                    record.used_at,
                    _dumps(record.context),
                ),
            )

    def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        with self._locked() as conn:
            row = conn.execute(
                f"SELECT {_APPROVAL_COLUMNS} FROM corral_approvals WHERE id = ?", (approval_id,)
            ).fetchone()
        return None if row is None else _approval(row)

    def decide_approval(
        self, approval_id: str, status: ApprovalStatus, *, approver: str, reason: str = ""
    ) -> ApprovalRecord:
        return decide_pending(self, approval_id, status, approver=approver, reason=reason)

    def transition_approval(
        self,
        approval_id: str,
        *,
        expect: ApprovalStatus,
        status: ApprovalStatus,
        at: float,
        approver: str | None = None,
        reason: str | None = None,
    ) -> ApprovalRecord | None:
        """Move the approval from ``expect`` to ``status``, or report (None) that it was not
        ``expect`` any more: the conditional update inside BEGIN IMMEDIATE lets one win."""
        when = "used_at" if status == "used" else "decided_at"
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE corral_approvals SET status = ?, approver = COALESCE(?, approver), "
                f"reason = COALESCE(?, reason), {when} = ? WHERE id = ? AND status = ?",
                (status, approver, reason, at, approval_id, expect),
            )
            row = conn.execute(
                f"SELECT {_APPROVAL_COLUMNS} FROM corral_approvals WHERE id = ?", (approval_id,)
            ).fetchone()
        if row is None:
            raise KeyError(approval_id)
        return _approval(row) if cur.rowcount else None

    def list_approvals(
        self,
        *,
        status: ApprovalStatus | None = "pending",
        tenant: str | None = None,
        run_id: str | None = None,
    ) -> list[ApprovalRecord]:
        wanted = {"status": status, "tenant": tenant, "run_id": run_id}
        given = {k: v for k, v in wanted.items() if v is not None}
        where = " AND ".join(f"{k} = ?" for k in given)
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT {_APPROVAL_COLUMNS} FROM corral_approvals "
                f"{'WHERE ' + where if where else ''} ORDER BY rowid",
                tuple(given.values()),
            ).fetchall()
        return [_approval(row) for row in rows]

    # -- idempotency ---------------------------------------------------------------------
    def claim(
        self,
        key: str,
        digest: str,
        *,
        tenant: str | None,
        now: float,
        lease: float,
        tool: str = "",
    ) -> Claim:
        with self._write() as conn:
            row = conn.execute(
                "SELECT digest, outcome, lease_until FROM corral_claims "
                "WHERE tenant_key = ? AND key = ?",
                (_tenant_key(tenant), key),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO corral_claims (tenant_key, key, digest, outcome, lease_until, "
                    "created_at, tool) VALUES (?, ?, ?, NULL, ?, ?, ?)",
                    (_tenant_key(tenant), key, digest, now + lease, time.time(), tool),
                )
                return Claim(status="claimed")
        if row[0] != digest:
            return Claim(status="mismatch")
        if row[1] is not None:
            return Claim(status="done", outcome=json.loads(row[1]))
        if now >= row[2]:
            return Claim(status="unknown")
        return Claim(status="in_flight")

    def complete(self, key: str, outcome: Mapping[str, Any], *, tenant: str | None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE corral_claims SET outcome = ? WHERE tenant_key = ? AND key = ?",
                (_dumps(outcome), _tenant_key(tenant), key),
            )

    def release(self, key: str, *, tenant: str | None) -> None:
        with self._write() as conn:
            conn.execute(
                "DELETE FROM corral_claims WHERE tenant_key = ? AND key = ?",
                (_tenant_key(tenant), key),
            )

    def renew_claim(self, key: str, *, tenant: str | None, now: float, lease: float) -> bool:
        with self._write() as conn:
            changed = conn.execute(
                "UPDATE corral_claims SET lease_until = ? "
                "WHERE tenant_key = ? AND key = ? AND outcome IS NULL",
                (now + lease, _tenant_key(tenant), key),
            ).rowcount
        return bool(changed)

    def lookup_claim(self, key: str, *, tenant: str | None, now: float) -> ClaimRecord | None:
        with self._locked() as conn:
            row = conn.execute(
                f"SELECT {_CLAIM_COLUMNS} FROM corral_claims WHERE tenant_key = ? AND key = ?",
                (_tenant_key(tenant), key),
            ).fetchone()
        return None if row is None else _claim_record(row, now)

    def list_claims(
        self,
        *,
        now: float,
        status: ClaimState | None = None,
        tenant: str | None = None,
        limit: int = 1000,
    ) -> list[ClaimRecord]:
        where, params = ["1 = 1"], list[Any]()
        if tenant is not None:
            where.append("tenant_key = ?")
            params.append(_tenant_key(tenant))
        if status == "done":
            where.append("outcome IS NOT NULL")
        elif status == "unknown":
            where.append("outcome IS NULL AND lease_until <= ?")
            params.append(now)
        elif status == "in_flight":
            where.append("outcome IS NULL AND lease_until > ?")
            params.append(now)
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT {_CLAIM_COLUMNS} FROM corral_claims WHERE {' AND '.join(where)} "
                "ORDER BY created_at, rowid LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [_claim_record(row, now) for row in rows]

    def resolve_claim(
        self,
        key: str,
        *,
        tenant: str | None,
        now: float,
        outcome: Mapping[str, Any] | None,
        lease: float | None = None,
    ) -> bool:
        unknown = "WHERE tenant_key = ? AND key = ? AND outcome IS NULL AND lease_until <= ?"
        where = (_tenant_key(tenant), key, now)
        with self._write() as conn:
            if outcome is not None:
                cur = conn.execute(
                    f"UPDATE corral_claims SET outcome = ? {unknown}", (_dumps(outcome), *where)
                )
            elif lease is not None:
                cur = conn.execute(
                    f"UPDATE corral_claims SET lease_until = ? {unknown}", (now + lease, *where)
                )
            else:
                cur = conn.execute(f"DELETE FROM corral_claims {unknown}", where)
            return bool(cur.rowcount)

    # -- breakers ------------------------------------------------------------------------
    def breaker(self, name: str, *, now: float) -> BreakerState:
        with self._locked():
            row = cast(sqlite3.Cursor, self._cur).execute(_BREAKER, (name,)).fetchone()
        if row is None:
            return _CLOSED
        if row[0] == "open" and now >= row[1]:
            return BreakerState(state="half_open", until=row[1])
        return BreakerState(state=row[0], until=row[1])

    def set_breaker(self, name: str, state: BreakerState) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO corral_breakers (name, state, until) VALUES (?, ?, ?)",
                (name, state.state, state.until),
            )

    # -- degrade counters ----------------------------------------------------------------
    def degrade_add(
        self, name: str, *, now: float, size: float, calls: int = 0, failures: int = 0
    ) -> DegradeWindow:
        with self._write() as conn:
            return _degrade_add(conn, name, now, size, calls, failures)

    def degrade_retry(
        self, name: str, *, now: float, size: float, ratio: float, floor: int, calls: int = 0
    ) -> bool:
        with self._write() as conn:  # check and spend under the write lock
            window = _degrade_add(conn, name, now, size, calls, 0)
            if not retry_fits(window, ratio=ratio, floor=floor):
                return False
            conn.execute(
                "UPDATE corral_degrade SET retries = retries + 1 WHERE name = ? AND start = ?",
                (name, degrade_bucket(now, size)[0]),
            )
            return True

    def degrade_reset(self, name: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM corral_degrade WHERE name = ?", (name,))


class _Locked:
    """The store's connection under its lock (see ``SQLiteStore._locked``).

    A class rather than a ``contextlib.contextmanager`` generator: every store call enters
    one (a write two), and a generator's setup costs over a microsecond per use.
    """

    __slots__ = ("_lock", "_store")

    def __init__(self, store: SQLiteStore) -> None:
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
                conn.execute(f"PRAGMA busy_timeout = {busy}")
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
            cast(sqlite3.Cursor, self._store._cur).execute("BEGIN IMMEDIATE")
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
                    cast(sqlite3.Cursor, self._store._cur).execute("COMMIT")
            finally:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
        except BaseException as failed:
            self._leave(failed)
            raise
        self._leave(exc)


def _degrade_add(
    conn: sqlite3.Connection, name: str, now: float, size: float, calls: int, failures: int
) -> DegradeWindow:
    """Add to the bucket covering ``now``, drop older buckets, return the window (the caller
    holds the write lock)."""
    start, weight = degrade_bucket(now, size)
    conn.execute(
        "INSERT INTO corral_degrade (name, start, calls, failures) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (name, start) DO UPDATE SET calls = calls + excluded.calls, "
        "failures = failures + excluded.failures",
        (name, start, calls, failures),
    )
    conn.execute("DELETE FROM corral_degrade WHERE name = ? AND start < ?", (name, start - size))
    rows = {
        r[0]: DegradeCounts(calls=r[1], failures=r[2], retries=r[3])
        for r in conn.execute(
            "SELECT start, calls, failures, retries FROM corral_degrade WHERE name = ?", (name,)
        )
    }
    return DegradeWindow(
        current=rows.get(start, DegradeCounts()),
        previous=rows.get(start - size, DegradeCounts()),
        weight=weight,
    )


_CLOSED = BreakerState()
_BREAKER = "SELECT state, until FROM corral_breakers WHERE name = ?"

_AUDIT_COLUMNS = "id, run_id, seq, kind, at, tenant, actor, data, prev_hash, hash, mode"


def _keep_unclosed(conn: sqlite3.Connection) -> None:
    """Keep ``conn`` from ever being closed, even at interpreter exit (see
    ``SQLiteStore._check_file``): one deliberate leak per store whose file was lost."""
    import ctypes  # only on this rare path

    _INHERITED.append(conn)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))


_HEARTBEAT = "UPDATE corral_runs SET heartbeat_at = ? WHERE id = ? AND status = 'running'"
_INSERT_EVENT = (
    "INSERT INTO corral_events (id, run_id, seq, kind, at, tenant, actor, data, "
    "prev_hash, hash, mode) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _append(
    conn: sqlite3.Connection | sqlite3.Cursor, sealer: Sealer, events: Sequence[Event]
) -> None:
    """Seal ``events`` after the chain's head and write them; the caller holds the write lock.

    The head is read here, inside the write transaction, never remembered: other processes
    append to the same chain between two of this connection's transactions.
    """
    seq, prev = conn.execute("SELECT seq, hash FROM corral_audit_head").fetchone()
    sealed = sealer.seal_after(seq, prev, events)
    mode = sealer.mode
    if len(sealed) == 1:  # one event per flush is the allow path's case
        r = sealed[0]
        conn.execute(_INSERT_EVENT, (*r[:7], r.text, r.prev_hash, r.hash, mode))
    else:
        conn.executemany(
            _INSERT_EVENT,
            [(*r[:7], r.text, r.prev_hash, r.hash, mode) for r in sealed],  # seq, run_id, ...
        )
    last = sealed[-1]
    conn.execute("UPDATE corral_audit_head SET seq = ?, hash = ?", (last.seq, last.hash))


def _loads(text: Any) -> Any:
    """JSON text as stored; a row damaged beyond parsing comes back as its raw value."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _audit_record(row: Sequence[Any]) -> AuditRecord:
    return AuditRecord(
        seq=row[0],
        run_id=row[1],
        event_seq=row[2],
        kind=row[3],
        at=row[4],
        tenant=row[5],
        actor=row[6],
        data=_loads(row[7]),
        prev_hash=row[8],
        hash=row[9],
        mode=row[10],
    )


_APPROVAL_COLUMNS = (
    "id, run_id, tool, args_digest, arguments, tenant, agent, status, approver, reason, "
    "created, expires, kill_modes, kill_mode, decided_at, used_at, context"
)


def _modes(text: str) -> tuple[KillMode, ...]:
    return tuple(cast(KillMode, m) for m in text.split(",") if m)


def _approval(row: Sequence[Any]) -> ApprovalRecord:
    return ApprovalRecord(
        id=row[0],
        run_id=row[1],
        tool=row[2],
        args_digest=row[3],
        arguments=json.loads(row[4]),
        tenant=row[5],
        agent=row[6],
        status=row[7],
        approver=row[8],
        reason=row[9],
        created=row[10],
        expires=row[11],
        kill_modes=_modes(row[12]),
        kill_mode=row[13],
        decided_at=row[14],
        used_at=row[15],
        context=json.loads(row[16]),
    )


def _run(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        id=row[0],
        tenant=row[1],
        agent=row[2],
        status=row[3],
        stop_reason=row[4],
        stop=None if row[5] is None else json.loads(row[5]),
        task=row[6],
        answer=row[7],
        usage=json.loads(row[8]),
        policy_digest=row[9],
        started_at=row[10],
        ended_at=row[11],
        would_stop=tuple(json.loads(row[12])),
        owner=_owner(row[13], row[14], row[15], row[16]),
        heartbeat_at=row[17],
        kill_mode=row[18],
    )


def _owner(
    host: str | None, pid: int | None, node: str | None, started: str | None
) -> RunOwner | None:
    if pid is None:
        return None
    return RunOwner(host=host or "", pid=pid, node=node or "", started=started or "")


def _owner_columns(owner: RunOwner | None) -> list[Any]:
    if owner is None:
        return [None, None, None, None]
    return [owner.host, owner.pid, owner.node, owner.started]


_CLAIM_COLUMNS = "tenant_key, key, tool, digest, outcome, lease_until, created_at"


def _claim_record(row: Sequence[Any], now: float) -> ClaimRecord:
    tenant_key, key, tool, digest, outcome, lease_until, created = row
    return ClaimRecord(
        key=key,
        tenant=tenant_key[1:] if tenant_key else None,
        tool=tool,
        digest=digest,
        status=claim_state(outcome, lease_until, now),
        created=created,
        lease_until=lease_until,
        outcome=None if outcome is None else json.loads(outcome),
    )


def _tenant_key(tenant: str | None) -> str:
    """``''`` for no tenant, ``':' + tenant`` otherwise: the two never collide."""
    return "" if tenant is None else ":" + tenant


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_default)


def _dumps_or_none(value: Any) -> str | None:
    return None if value is None else _dumps(value)


# -- shared budgets, inside a write transaction ---------------------------------------------
_NONE = ScopedCharge(scope="")


def _held(c: ScopedCharge) -> list[Any]:
    return [c.scope, c.calls, str(c.usd), c.window_ends, c.rolling]


def _charges(text: str) -> list[ScopedCharge]:
    out = []
    for entry in json.loads(text):
        scope, calls, usd = entry[:3]
        window_ends, rolling = entry[3:5] if len(entry) >= 5 else (None, False)
        out.append(
            ScopedCharge(
                scope=scope,
                calls=calls,
                usd=Decimal(usd),
                window_ends=window_ends,
                rolling=bool(rolling),
            )
        )
    return out


def _load_scopes(conn: sqlite3.Connection, scopes: set[str]) -> dict[str, ScopeState | None]:
    out: dict[str, ScopeState | None] = dict.fromkeys(scopes)
    for scope in scopes:
        row = conn.execute(
            "SELECT calls, usd, window_ends, buckets FROM corral_scopes WHERE scope = ?", (scope,)
        ).fetchone()
        if row is not None:
            buckets = (
                None if row[3] is None else {e: [c, Decimal(u)] for e, c, u in json.loads(row[3])}
            )
            out[scope] = ScopeState(int(row[0]), Decimal(row[1]), row[2], buckets)
    return out


def _save_scopes(conn: sqlite3.Connection, states: Mapping[str, ScopeState]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO corral_scopes (scope, calls, usd, window_ends, buckets) "
        "VALUES (?, ?, ?, ?, ?)",
        [
            (
                scope,
                s.calls,
                str(s.usd),
                s.window_ends,
                None
                if s.buckets is None
                else _dumps([[e, b[0], str(b[1])] for e, b in sorted(s.buckets.items())]),
            )
            for scope, s in states.items()
        ],
    )


def _reclaim(conn: sqlite3.Connection, now: float) -> int:
    """Refund the holds of grants whose lease lapsed (only in windows that still count),
    mark them reclaimed, and forget reclaimed grants whose windows have all ended."""
    rows = conn.execute(
        "SELECT id, charges FROM corral_grants WHERE reclaimed = 0 AND lease_until < ?", (now,)
    ).fetchall()
    if rows:
        held = [c for _, text in rows for c in _charges(text)]
        states = _load_scopes(conn, {c.scope for c in held})
        for c in held:
            state = states.get(c.scope)
            if state is not None and state.counts(c, now):
                state.change(c, -c.calls, -c.usd)
        _save_scopes(conn, {k: v for k, v in states.items() if v is not None})
        conn.executemany(
            "UPDATE corral_grants SET reclaimed = 1 WHERE id = ?", [(r[0],) for r in rows]
        )
    conn.execute("DELETE FROM corral_grants WHERE reclaimed = 1 AND ends <= ?", (now,))
    return len(rows)
