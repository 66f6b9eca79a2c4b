"""The PostgreSQL store: shared state for several processes and machines.

``PostgresStore("postgresql://user@host/db")`` opens a connection pool (psycopg 3)
and brings the schema up to date with the shared migration runner (:mod:`corral.stores.migrate`,
files in ``migrations/postgres/``). Contended state relies on the database alone,
never on an in-process lock, so it holds across processes and machines:

- **reserve / settle** are one statement each (the schema's ``corral_reserve`` and
  ``corral_settle`` functions). They lock the scopes' rows in one order everywhere
  (byte order of the scope name, so reservations never deadlock), check every
  scope, then write all of them or none. A grant is consumed by its settlement, so
  settling twice refunds once. USD is ``NUMERIC``: exact. Grants are leased:
  ``renew_grants`` extends all of this process's in one ``UPDATE`` (from the renewer
  thread), and ``corral_reclaim`` refunds the lapsed ones, skipping grants another
  transaction holds (``SKIP LOCKED``), before ``reserve`` at most once a second.
- **idempotency claims** are exclusive through the primary key
  (``INSERT ... ON CONFLICT DO NOTHING``);
- **approvals** and **interrupted runs** change by conditional updates
  (still pending; still running with the heartbeat that was judged);
- kill switches, breakers and runs are single-statement writes; setting or
  clearing a kill switch also sends ``NOTIFY corral_kill_switch`` (``scope:target``);
- **events** are the audit log, sealed into one chain (:mod:`corral.stores.chain`) by
  appenders on every machine. An append seals its events after the head this
  store last saw and writes them in one statement *if* the head is still that
  one (a compare-and-set on the head row): one round trip while this process is
  the only appender. Otherwise it locks the head row (``FOR UPDATE``), seals
  after the real head and writes, in one transaction. Triggers refuse to change,
  delete or truncate sealed events.

Every other call is one statement in autocommit: one transaction, one round trip.
A process forked with the store open gets a pool of its own on first use; the
parent's connections are never touched in the child.

It fails closed, and never hangs: a server that cannot be reached, a pool with no
free connection, a statement (lock waits included) that runs too long each raise
:class:`~corral.exceptions.StoreError` after ``connect_timeout``, ``pool_timeout``
or ``statement_timeout``; a server that stops answering altogether, a second after
``statement_timeout`` (the client's own bound, :mod:`.deadline`). A call made
for a run (:data:`corral.clock.DEADLINE` set) waits no longer than the run has left:
each of these waits is clamped to it, a statement still running then is cancelled
on the server. A deadlock is retried; so is a connection that died under a call,
except for calls that must not be sent twice because they may have committed
(reservations, claims, event appends), and no call is retried past the deadline.

Isolation (tests, several deployments in one database): ``schema="name"`` or a
``?schema=name`` URL parameter keeps every table in that schema, created if
missing. A test fixture gives each test an empty store with a schema of its own
and drops it afterwards (``tests/stores/pg.py``)::

    url = require_postgres()          # skips, or fails under CI, if unreachable
    with fresh_store(url) as store:   # PostgresStore(url, schema="corral_t_<random>")
        ...                           # the schema is dropped on exit
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from corral.clock import DEADLINE, wait_budget
from corral.exceptions import ConfigError, StoreError
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
    KillScope,
    KillSwitchState,
    Refusal,
    RunRecord,
    ScopedCharge,
    checked_switch,
    decide_pending,
    degrade_bucket,
    grant_ends,
    held_charges,
    kill_target,
    settled_charges,
)
from corral.stores.chain import Sealed, Sealer
from corral.stores.leases import LEASE_SECONDS, Renewer
from corral.stores.migrate import POSTGRES, current_version, migrate
from corral.stores.owner import RUN_LEASE_SECONDS, RunOwner, interruption
from corral.stores.postgres import deadline as _pg_deadline
from corral.stores.postgres import sql as q

T = TypeVar("T")
Conn = psycopg.Connection[Any]

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Transient conflicts PostgreSQL resolves by aborting one side; the transaction is retried.
_RETRYABLE = (errors.DeadlockDetected, errors.SerializationFailure)
_ATTEMPTS = 3
# How much longer than the server's statement_timeout the client waits for an answer.
_CLIENT_SLACK = 1.0


_OPEN: weakref.WeakSet[PostgresStore] = weakref.WeakSet()
_INHERITED: list[ConnectionPool[Any]] = []  # a parent's pools, kept unused in a forked child


def _after_fork_in_child() -> None:
    for store in list(_OPEN):
        store._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _out_of_time() -> bool:
    """Whether the deadline of the run this call is made for has passed (no more retries)."""
    deadline = DEADLINE.get()
    return deadline is not None and time.monotonic() >= deadline


def _connection_lost(exc: psycopg.Error) -> bool:
    """The connection died under the call (not a timeout, not a closed pool)."""
    if isinstance(exc, PoolClosed):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


class PostgresStore:
    """A complete :class:`~corral.stores.base.Store` in PostgreSQL, safe across processes.

    ``url`` is a libpq URL or DSN (``postgresql://user@host:5432/db``), optionally
    with ``?schema=NAME``. ``max_size`` bounds the pool; ``connect_timeout``,
    ``pool_timeout`` (waiting for a free connection) and ``statement_timeout``
    (seconds) bound every call, after which it raises ``StoreError``. The audit chain
    is keyed when ``CORRAL_AUDIT_KEY`` is set at construction.
    """

    #: Every process and machine that names the database shares it.
    shared = True

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 3.0,
        pool_timeout: float = 2.0,
        statement_timeout: float = 10.0,
        migrate: bool = True,
        grant_lease: float = LEASE_SECONDS,
        renewer: Renewer | None = None,
    ) -> None:
        self.leases = GrantLeases(self.renew_grants, lease=grant_lease, renewer=renewer)
        conninfo, url_schema = _split_schema(url)
        self.schema = schema or url_schema
        if self.schema is not None and not _SCHEMA_NAME.fullmatch(self.schema):
            raise ConfigError(
                f"PostgreSQL schema {self.schema!r}: use lower-case letters, digits and '_'"
            )
        try:
            params = conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"invalid PostgreSQL URL: {exc}") from exc
        options = [str(params.pop("options", "") or "")]
        if self.schema is not None:
            options.append(f"-c search_path={self.schema}")
        options.append(f"-c statement_timeout={int(statement_timeout * 1000)}")
        params["options"] = " ".join(o for o in options if o)
        params.setdefault("application_name", "corral")
        conninfo = make_conninfo("", **params)
        connect = max(1, round(connect_timeout))  # libpq takes whole seconds
        self._sealer = Sealer.from_env()
        self._head: AuditHead | None = None  # the head after this store's last append
        try:
            # One direct connection first: it names the cause of a failure (refused, auth, no
            # such database) and prepares the schema before the pool fills in the background.
            with _pg_deadline.BoundedConnection.connect(
                conninfo, autocommit=True, connect_timeout=connect
            ) as conn:
                if migrate:
                    _prepare(conn, self.schema, self._sealer)
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL store unavailable: {exc}") from exc
        self._pool_timeout = pool_timeout
        self._statement_timeout = statement_timeout
        self._new_pool = partial(
            ConnectionPool[Conn],
            conninfo,
            kwargs={"autocommit": True, "connect_timeout": connect},
            connection_class=_pg_deadline.BoundedConnection,
            min_size=min_size,
            max_size=max(min_size, max_size),
            timeout=pool_timeout,
            reconnect_timeout=max(60.0, connect_timeout),
            name="corral",
        )
        self._pool = self._new_pool(open=True)
        self._reopen = threading.Lock()
        self._forked = False
        try:
            self.mark_interrupted()
        except BaseException:
            self._pool.close()
            raise
        _OPEN.add(self)

    def _after_fork(self) -> None:
        # The parent's connections are the parent's: the child must never talk on them, nor
        # close them (that would end the parent's sessions). Keep them, open a pool on first use.
        _INHERITED.append(self._pool)
        self._reopen = threading.Lock()
        self._forked = True

    def _current_pool(self, *, reopen: bool = True) -> ConnectionPool[Conn]:
        if self._forked:
            with self._reopen:
                if self._forked:
                    self._pool = self._new_pool(open=reopen and not self._pool.closed)
                    self._forked = False
        return self._pool

    # -- plumbing ----------------------------------------------------------------------
    def _call(self, fn: Callable[[Conn], T], *, once: bool = False) -> T:
        """Run ``fn`` on a pooled connection (autocommit: one statement, one transaction).

        Errors become ``StoreError``. A deadlock or serialization failure rolled the
        work back, so it is tried again; so is a connection found dead (a restarted
        server) unless ``once``: the work may have committed before the connection
        dropped, and doing it twice would hold a budget twice or lose a claim.

        Waits are bounded: for a free connection by ``pool_timeout``, for the answer by
        ``statement_timeout`` (the server's) and, on the client, a second more (a server
        that never answers); each clamped to :data:`corral.clock.DEADLINE` when a run's
        deadline is nearer (see :mod:`.deadline`). Retries stop at the deadline.
        """
        for attempt in range(1, _ATTEMPTS + 1):
            pool_wait = wait_budget(self._pool_timeout)
            answer_wait = wait_budget(self._statement_timeout + _CLIENT_SLACK)
            token = _pg_deadline.UNTIL.set(time.monotonic() + answer_wait)
            try:
                with self._current_pool().connection(timeout=pool_wait) as conn:
                    try:
                        return fn(conn)
                    finally:
                        _pg_deadline.settle(conn)
            except _pg_deadline.NoAnswer as exc:
                raise StoreError(f"PostgreSQL store unavailable: {exc}") from exc
            except _RETRYABLE as exc:
                if attempt == _ATTEMPTS or _out_of_time():
                    raise StoreError(f"PostgreSQL store: {exc}") from exc
            except PoolTimeout as exc:
                raise StoreError(
                    f"PostgreSQL store unavailable: no connection within {pool_wait:.3g} s ({exc})"
                ) from exc
            except psycopg.OperationalError as exc:
                if once or attempt > 1 or not _connection_lost(exc) or _out_of_time():
                    raise StoreError(f"PostgreSQL store unavailable: {exc}") from exc
            except psycopg.Error as exc:
                raise StoreError(f"PostgreSQL store: {exc}") from exc
            finally:
                _pg_deadline.UNTIL.reset(token)
        raise AssertionError("unreachable")  # pragma: no cover

    def schema_version(self) -> int:
        """The highest migration applied to this database (0 before any)."""
        return self._call(lambda conn: current_version(conn, POSTGRES))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._pool.closed and not self._forked

    def close(self) -> None:
        """Close the pool; later calls raise ``StoreError``."""
        self.leases.close()
        self._current_pool(reopen=False).close()
        _OPEN.discard(self)

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs and trace ----------------------------------------------------------------
    def create_run(self, record: RunRecord) -> None:
        """Record a run (replacing one with the same id), owned by this process unless named."""
        values = {f.name: getattr(record, f.name) for f in fields(RunRecord)}
        values["owner"] = record.owner or RunOwner.current()
        values["heartbeat_at"] = record.heartbeat_at or time.time()
        columns = q.run_columns(values)
        query = q.upsert("corral_runs", list(columns))
        self._call(lambda conn: conn.execute(query, list(columns.values())))

    def update_run(self, run_id: str, **changes: Any) -> None:
        """Change the named fields; renews the heartbeat, and a run set running again is ours."""
        unknown = sorted(set(changes) - q.RUN_FIELDS)
        if unknown:
            raise TypeError(f"update_run cannot set {', '.join(unknown)}")
        changes.setdefault("heartbeat_at", time.time())
        if changes.get("status") == "running":
            changes.setdefault("owner", RunOwner.current())
        columns = q.run_columns(changes)
        query = pgsql.SQL("UPDATE corral_runs SET {} WHERE id = %s RETURNING 1").format(
            pgsql.SQL(", ").join(pgsql.SQL("{} = %s").format(pgsql.Identifier(c)) for c in columns)
        )
        params = [*columns.values(), run_id]
        if self._call(lambda conn: conn.execute(query, params).fetchone()) is None:
            raise KeyError(run_id)

    def get_run(self, run_id: str) -> RunRecord | None:
        query = q.select("corral_runs", q.RUN_COLUMNS, "WHERE id = %s")
        row = self._call(lambda conn: conn.execute(query, (run_id,)).fetchone())
        return None if row is None else q.run_record(row)

    def list_runs(self, *, limit: int = 100, tenant: str | None = None) -> list[RunRecord]:
        where = "" if tenant is None else "WHERE tenant = %s"
        query = q.select(
            "corral_runs", q.RUN_COLUMNS, f"{where} ORDER BY started_at DESC, seq LIMIT %s"
        )
        params = (limit,) if tenant is None else (tenant, limit)
        return [
            q.run_record(r) for r in self._call(lambda conn: conn.execute(query, params).fetchall())
        ]

    def heartbeat(self, run_id: str) -> None:
        """Renew a run's heartbeat (during a long wait that writes nothing else)."""
        self._call(
            lambda conn: conn.execute(
                "UPDATE corral_runs SET heartbeat_at = %s WHERE id = %s", (time.time(), run_id)
            )
        )

    def mark_interrupted(
        self, *, now: float | None = None, lease: float = RUN_LEASE_SECONDS
    ) -> list[str]:
        """Mark ``interrupted`` the running runs whose owner died or whose lease lapsed.

        Returns their ids; each gets an ``interrupted`` event saying why. A run is
        marked only if nothing renewed it since it was judged, and by one caller only.
        """
        now = time.time() if now is None else now
        query = q.select(
            "corral_runs", ("id", *q.OWNER_COLUMNS, "heartbeat_at"), "WHERE status = 'running'"
        )
        sealer = self._sealer
        found = []
        for run_id, host, pid, node, started, beat in self._call(
            lambda conn: conn.execute(query).fetchall()
        ):
            why = interruption(
                q.run_owner(host, pid, node, started), heartbeat_at=beat, now=now, lease=lease
            )
            if why is not None:
                found.append((run_id, beat, why))
        if not found:
            return []
        ids, beats, whys = (list(col) for col in zip(*found, strict=True))

        def op(conn: Conn) -> set[str]:
            with conn.transaction():
                head = conn.execute(q.LOCK_HEAD).fetchone()  # first: the one lock order
                rows = conn.execute(q.MARK_INTERRUPTED, (ids, beats, whys, now)).fetchall()
                events = [
                    Event(
                        run_id=run_id,
                        seq=seq,
                        kind="interrupted",
                        at=now,
                        data={"why": why},
                        tenant=tenant,
                        actor=agent,
                    )
                    for run_id, why, tenant, agent, seq in rows
                ]
                if events:
                    self._head = _append_locked(conn, sealer, events, now, head)
            return {r[0] for r in rows}

        marked = self._call(op, once=True)
        return [i for i in ids if i in marked]

    def append_events(self, events: Sequence[Event]) -> None:
        """Append events in order, sealed into the audit chain; renews their runs' heartbeat."""
        if not events:
            return
        sealer = self._sealer

        def op(conn: Conn) -> None:
            now, guess = time.time(), self._head
            if guess is not None:  # the fast path: one statement, if the head has not moved
                sealed = sealer.seal_rows(guess, events)
                last = sealed[-1]
                params = (guess.seq, guess.hash, last.seq, last.hash, *_arrays(sealer, sealed))
                row = conn.execute(q.APPEND_IF_HEAD, (*params, now)).fetchone()
                if row is not None and row[0]:
                    self._head = AuditHead(seq=last.seq, hash=last.hash)
                    return
            with conn.transaction():  # another appender moved it: take the head, then append
                head = conn.execute(q.LOCK_HEAD).fetchone()
                self._head = _append_locked(conn, sealer, events, now, head)

        self._call(op, once=True)  # sent twice, the events would be recorded twice

    def events(self, run_id: str) -> list[Event]:
        rows = self._call(
            lambda conn: conn.execute(
                "SELECT run_id, seq, kind, at, data, tenant, actor FROM corral_events "
                "WHERE run_id = %s ORDER BY id",
                (run_id,),
            ).fetchall()
        )
        return [
            Event(run_id=r[0], seq=r[1], kind=r[2], at=r[3], data=r[4], tenant=r[5], actor=r[6])
            for r in rows
        ]

    # -- audit log ---------------------------------------------------------------------
    def audit_head(self) -> AuditHead:
        row = self._call(
            lambda conn: conn.execute("SELECT seq, hash FROM corral_audit_head").fetchone()
        )
        return AuditHead() if row is None else AuditHead(seq=row[0], hash=row[1])

    def audit_records(self, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Records with ``seq`` above ``after``, in chain order, at most ``limit``."""
        rows = self._call(
            lambda conn: conn.execute(
                f"SELECT {q.AUDIT_COLUMNS} FROM corral_events WHERE audit_seq > %s "
                "ORDER BY audit_seq LIMIT %s",
                (after, limit),
            ).fetchall()
        )
        return [
            AuditRecord(
                seq=r[0],
                run_id=r[1],
                event_seq=r[2],
                kind=r[3],
                at=r[4],
                tenant=r[5],
                actor=r[6],
                data=r[7],
                prev_hash=r[8],
                hash=r[9],
                mode=r[10],
            )
            for r in rows
        ]

    # -- shared budgets ----------------------------------------------------------------
    def reserve(self, charges: Sequence[ScopedCharge], *, now: float) -> str | Refusal:
        """Hold every charge or none (``corral_reserve``: lock scopes in order, check, write)."""
        leases = self.leases
        charges = held_charges(charges)
        if leases.reclaim_due(now):
            self.reclaim(now)
        grant = uuid.uuid4().hex
        windows: dict[str, float | None] = {}
        for c in charges:
            windows.setdefault(c.scope, None if c.rolling else c.window_ends)
        scopes = sorted(windows)  # code-point order, which is byte order of UTF-8 ("C")
        row = self._call(
            lambda conn: conn.execute(
                "SELECT * FROM corral_reserve(%s, %s, %s::text[], %s::float8[], %s::text[], "
                "%s::int8[], %s::numeric[], %s::int8[], %s::numeric[], %s::float8[], "
                "%s::bool[], %s, %s, %s)",
                (
                    grant,
                    now,
                    scopes,
                    [windows[s] for s in scopes],
                    [c.scope for c in charges],
                    [c.calls for c in charges],
                    [c.usd for c in charges],
                    [c.max_calls for c in charges],
                    [c.max_usd for c in charges],
                    [c.window_ends for c in charges],
                    [c.rolling for c in charges],
                    leases.holder,
                    now + leases.lease,
                    grant_ends(charges, now),
                ),
            ).fetchone(),
            once=True,  # sent twice, it would hold the budget twice
        )
        if row is None:
            leases.granted(grant)
            return grant
        scope, dimension, limit, would_be, retry_after = row
        if dimension == "calls":
            limit, would_be = int(limit), int(would_be)
        return Refusal(
            scope=scope,
            dimension=dimension,
            limit=limit,
            would_be=would_be,
            retry_after=retry_after,
        )

    def settle(self, grant: str, actual: Sequence[ScopedCharge]) -> None:
        """Replace a grant's holds by the actual amounts (refunding the unused part), once."""
        actual = list(settled_charges(actual).values())
        self._call(
            lambda conn: conn.execute(
                "SELECT corral_settle(%s, %s::text[], %s::int8[], %s::numeric[])",
                (
                    grant,
                    [c.scope for c in actual],
                    [c.calls for c in actual],
                    [c.usd for c in actual],
                ),
            )
        )
        self.leases.done(grant)  # not before it is settled: until then, the hold stays held

    def renew_grants(self, now: float) -> int:
        """Renew this process's outstanding grants: their leases run from ``now``.

        The renewer calls this while any is outstanding (one statement); returns how
        many were renewed.
        """
        return self._call(
            lambda conn: (
                conn.execute(
                    "UPDATE corral_grants SET lease_until = %s WHERE holder = %s AND NOT reclaimed",
                    (now + self.leases.lease, self.leases.holder),
                ).rowcount
            )
        )

    def reclaim(self, now: float) -> int:
        """Refund the grants whose lease lapsed before ``now`` (``corral_reclaim``)."""
        row = self._call(
            lambda conn: conn.execute("SELECT corral_reclaim(%s)", (now,)).fetchone(),
            once=True,  # from reserve: a dropped connection fails the reservation closed
        )
        return int(row[0]) if row else 0

    def scope_usage(self, scope: str) -> tuple[int, Decimal]:
        """Calls and USD currently committed or held in ``scope``."""
        row = self._call(
            lambda conn: conn.execute(
                "SELECT calls, usd FROM corral_scopes WHERE scope = %s", (scope,)
            ).fetchone()
        )
        return (0, Decimal(0)) if row is None else (int(row[0]), Decimal(row[1]))

    # -- kill switch -------------------------------------------------------------------
    def kill_switches(self) -> list[KillSwitchState]:
        rows = self._call(
            lambda conn: conn.execute(
                "SELECT scope, target, mode, reason, actor, extract(epoch FROM set_at) "
                "FROM corral_kill_switches ORDER BY seq"
            ).fetchall()
        )
        return [
            KillSwitchState(
                scope=r[0], target=r[1], mode=r[2], reason=r[3], actor=r[4], set_at=float(r[5])
            )
            for r in rows
        ]

    def set_kill_switch(self, switch: KillSwitchState, *, audit: Event | None = None) -> None:
        switch = checked_switch(switch)
        statement = (
            "WITH s AS (INSERT INTO corral_kill_switches (scope, target, mode, reason, actor) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (scope, target) DO UPDATE SET "
            "mode = EXCLUDED.mode, reason = EXCLUDED.reason, actor = EXCLUDED.actor, "
            f"set_at = now() RETURNING scope, target) {q.NOTIFY_KILL}"
        )
        params = (switch.scope, switch.target, switch.mode, switch.reason, switch.actor)
        if audit is None:
            self._call(lambda conn: conn.execute(statement, params))
            return

        def op(conn: Conn) -> None:
            with conn.transaction():  # the switch and its audit record, or neither
                conn.execute(statement, params)
                self._head = _append_locked(
                    conn, self._sealer, [audit], time.time(), conn.execute(q.LOCK_HEAD).fetchone()
                )

        self._call(op, once=True)  # sent twice, the change would be audited twice

    def clear_kill_switch(
        self, scope: KillScope, target: str = "", *, audit: Event | None = None
    ) -> bool:
        target = kill_target(scope, target)
        statement = (
            "WITH s AS (DELETE FROM corral_kill_switches WHERE scope = %s AND target = %s "
            f"RETURNING scope, target) {q.NOTIFY_KILL}"
        )

        def op(conn: Conn) -> bool:
            with conn.transaction():  # the clearing and its audit record, or neither
                if conn.execute(statement, (scope, target)).fetchone() is None:
                    return False
                if audit is not None:
                    head = conn.execute(q.LOCK_HEAD).fetchone()
                    self._head = _append_locked(conn, self._sealer, [audit], time.time(), head)
                return True

        # Sent twice, the second would report "was not set".
        return self._call(op, once=True)

    # -- approvals ---------------------------------------------------------------------
    def create_approval(self, record: ApprovalRecord) -> None:
        values = [
            q.jsonb(dict(getattr(record, f)))
            if f in ("arguments", "context")
            else ",".join(record.kill_modes)
            if f == "kill_modes"
            else getattr(record, f)
            for f in q.APPROVAL_FIELDS
        ]
        query = q.upsert("corral_approvals", q.APPROVAL_FIELDS)
        self._call(lambda conn: conn.execute(query, values))

    def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        query = q.select("corral_approvals", q.APPROVAL_FIELDS, "WHERE id = %s")
        row = self._call(lambda conn: conn.execute(query, (approval_id,)).fetchone())
        return None if row is None else q.approval_record(row)

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
        """Move the approval from ``expect`` to ``status`` by a conditional update (one
        caller wins), or None when it was not ``expect`` any more."""
        cols = pgsql.SQL(", ").join(map(pgsql.Identifier, q.APPROVAL_FIELDS))
        move = pgsql.SQL(
            "UPDATE corral_approvals SET status = %s, approver = COALESCE(%s::text, approver), "
            "reason = COALESCE(%s::text, reason), {} = %s WHERE id = %s AND status = %s "
            "RETURNING {}"
        ).format(pgsql.Identifier("used_at" if status == "used" else "decided_at"), cols)
        exists = "SELECT 1 FROM corral_approvals WHERE id = %s"

        def op(conn: Conn) -> tuple[tuple[Any, ...] | None, bool]:
            row = conn.execute(move, (status, approver, reason, at, approval_id, expect)).fetchone()
            if row is not None:
                return row, True
            return None, conn.execute(exists, (approval_id,)).fetchone() is not None

        # Once: had the update committed before a connection dropped, a second try would
        # report it lost to another caller.
        row, found = self._call(op, once=True)
        if row is None and not found:
            raise KeyError(approval_id)
        return None if row is None else q.approval_record(row)

    def list_approvals(
        self,
        *,
        status: ApprovalStatus | None = "pending",
        tenant: str | None = None,
        run_id: str | None = None,
    ) -> list[ApprovalRecord]:
        wanted = {"status": status, "tenant": tenant, "run_id": run_id}
        given = {k: v for k, v in wanted.items() if v is not None}
        where = " AND ".join(f"{k} = %s" for k in given)
        query = q.select(
            "corral_approvals",
            q.APPROVAL_FIELDS,
            f"{'WHERE ' + where if where else ''} ORDER BY seq",
        )
        params = tuple(given.values())
        rows = self._call(lambda conn: conn.execute(query, params).fetchall())
        return [q.approval_record(r) for r in rows]

    # -- idempotency -------------------------------------------------------------------
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
        """Claim ``key`` for ``tenant``; the primary key lets exactly one claimant win."""
        tk = q.tenant_key(tenant)
        params = (tk, key, digest, now + lease, time.time(), tool, tk, key)

        def op(conn: Conn) -> Claim:
            for _ in range(_ATTEMPTS):
                row = conn.execute(q.CLAIM, params).fetchone()
                if row is None:
                    continue  # released or committed after this statement began: look again
                won, held, outcome, lease_until = row
                if won:
                    return Claim(status="claimed")
                if held != digest:
                    return Claim(status="mismatch")
                if outcome is not None:
                    return Claim(status="done", outcome=outcome)
                return Claim(status="unknown" if now >= lease_until else "in_flight")
            raise StoreError(f"idempotency key {key!r} kept changing hands; try again")

        return self._call(op, once=True)

    def complete(self, key: str, outcome: Mapping[str, Any], *, tenant: str | None) -> None:
        self._call(
            lambda conn: conn.execute(
                "UPDATE corral_claims SET outcome = %s WHERE tenant_key = %s AND key = %s",
                (q.jsonb(dict(outcome)), q.tenant_key(tenant), key),
            )
        )

    def release(self, key: str, *, tenant: str | None) -> None:
        self._call(
            lambda conn: conn.execute(
                "DELETE FROM corral_claims WHERE tenant_key = %s AND key = %s",
                (q.tenant_key(tenant), key),
            )
        )

    def renew_claim(self, key: str, *, tenant: str | None, now: float, lease: float) -> bool:
        query = (
            "UPDATE corral_claims SET lease_until = %s "
            "WHERE tenant_key = %s AND key = %s AND outcome IS NULL"
        )
        params = (now + lease, q.tenant_key(tenant), key)
        return bool(self._call(lambda conn: conn.execute(query, params).rowcount))

    def lookup_claim(self, key: str, *, tenant: str | None, now: float) -> ClaimRecord | None:
        query = f"SELECT {q.CLAIM_COLUMNS} FROM corral_claims WHERE tenant_key = %s AND key = %s"
        params = (q.tenant_key(tenant), key)
        row = self._call(lambda conn: conn.execute(query, params).fetchone())
        return None if row is None else q.claim_record(row, now)

    def list_claims(
        self,
        *,
        now: float,
        status: ClaimState | None = None,
        tenant: str | None = None,
        limit: int = 1000,
    ) -> list[ClaimRecord]:
        where, params = ["true"], list[Any]()
        if tenant is not None:
            where.append("tenant_key = %s")
            params.append(q.tenant_key(tenant))
        if status == "done":
            where.append("outcome IS NOT NULL")
        elif status == "unknown":
            where.append("outcome IS NULL AND lease_until <= %s")
            params.append(now)
        elif status == "in_flight":
            where.append("outcome IS NULL AND lease_until > %s")
            params.append(now)
        query = (
            f"SELECT {q.CLAIM_COLUMNS} FROM corral_claims WHERE {' AND '.join(where)} "
            "ORDER BY created_at, key LIMIT %s"
        )
        params.append(limit)
        rows = self._call(lambda conn: conn.execute(query, params).fetchall())
        return [q.claim_record(row, now) for row in rows]

    def resolve_claim(
        self,
        key: str,
        *,
        tenant: str | None,
        now: float,
        outcome: Mapping[str, Any] | None,
        lease: float | None = None,
    ) -> bool:
        """Settle an unknown claim; one conditional statement, so one caller wins."""
        where = (q.tenant_key(tenant), key, now)
        if outcome is not None:
            query = f"UPDATE corral_claims SET outcome = %s {q.UNKNOWN_CLAIM}"
            params: tuple[Any, ...] = (q.jsonb(dict(outcome)), *where)
        elif lease is not None:
            query = f"UPDATE corral_claims SET lease_until = %s {q.UNKNOWN_CLAIM}"
            params = (now + lease, *where)
        else:
            query = f"DELETE FROM corral_claims {q.UNKNOWN_CLAIM}"
            params = where
        return bool(self._call(lambda conn: conn.execute(query, params).rowcount, once=True))

    # -- breakers ----------------------------------------------------------------------
    def breaker(self, name: str, *, now: float) -> BreakerState:
        row = self._call(
            lambda conn: conn.execute(
                "SELECT state, until FROM corral_breakers WHERE name = %s", (name,)
            ).fetchone()
        )
        if row is None:
            return BreakerState()
        if row[0] == "open" and now >= row[1]:
            return BreakerState(state="half_open", until=row[1])
        return BreakerState(state=row[0], until=row[1])

    def set_breaker(self, name: str, state: BreakerState) -> None:
        self._call(
            lambda conn: conn.execute(
                "INSERT INTO corral_breakers (name, state, until) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state, until = EXCLUDED.until",
                (name, state.state, state.until),
            )
        )

    # -- degrade counters --------------------------------------------------------------
    def degrade_add(
        self, name: str, *, now: float, size: float, calls: int = 0, failures: int = 0
    ) -> DegradeWindow:
        start, weight = degrade_bucket(now, size)
        row = self._call(
            lambda conn: conn.execute(
                q.DEGRADE_ADD, (name, start, calls, failures, name, start - size, start - size)
            ).fetchone(),
            once=True,  # sent twice, the outcomes would be counted twice
        )
        return _degrade_window(row, weight)

    def degrade_retry(
        self, name: str, *, now: float, size: float, ratio: float, floor: int, calls: int = 0
    ) -> bool:
        start, weight = degrade_bucket(now, size)

        def op(conn: Conn) -> bool:
            with conn.transaction():
                # The upsert locks the current bucket's row; the conditional update then
                # checks and spends under that lock.
                conn.execute(
                    q.DEGRADE_ADD, (name, start, calls, 0, name, start - size, start - size)
                )
                params = (weight, name, start - size, ratio, weight, floor, name, start)
                spent = conn.execute(q.DEGRADE_SPEND_RETRY, params).fetchone()
            return spent is not None

        return self._call(op, once=True)

    def degrade_reset(self, name: str) -> None:
        self._call(lambda conn: conn.execute("DELETE FROM corral_degrade WHERE name = %s", (name,)))


def _degrade_window(row: Any, weight: float) -> DegradeWindow:
    return DegradeWindow(
        current=DegradeCounts(calls=row[0], failures=row[1], retries=row[2]),
        previous=DegradeCounts(calls=row[3] or 0, failures=row[4] or 0, retries=row[5] or 0),
        weight=weight,
    )


def _split_schema(url: str) -> tuple[str, str | None]:
    """Take a ``schema`` query parameter out of a URL (libpq would reject it)."""
    if "://" not in url:
        return url, None
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _append_locked(
    conn: Conn, sealer: Sealer, events: Sequence[Event], now: float, head: Any
) -> AuditHead:
    """Seal ``events`` after ``head`` (its row locked by the caller's transaction) and write
    them; return the new head."""
    if head is None:
        raise StoreError("PostgreSQL store: the audit chain's head row is missing")
    sealed = sealer.seal_rows(AuditHead(seq=head[0], hash=head[1]), events)
    last = sealed[-1]
    conn.execute(q.APPEND_LOCKED, (last.seq, last.hash, *_arrays(sealer, sealed), now))
    return AuditHead(seq=last.seq, hash=last.hash)


def _arrays(sealer: Sealer, sealed: Sequence[Sealed]) -> tuple[Any, ...]:
    """The mode and the ten column arrays of sealed events (see ``q._INSERT_SEALED``)."""
    return (
        sealer.mode,
        [r.run_id for r in sealed],
        [r.event_seq for r in sealed],
        [r.kind for r in sealed],
        [r.at for r in sealed],
        [r.text for r in sealed],
        [r.tenant for r in sealed],
        [r.actor for r in sealed],
        [r.seq for r in sealed],
        [r.prev_hash for r in sealed],
        [r.hash for r in sealed],
    )


def _seal_unsealed(sealer: Sealer, cur: Any) -> None:
    """Seal the events written before the audit chain existed (migration 2), in order."""
    cur.execute(
        "SELECT id, run_id, seq, kind, at, data, tenant, actor FROM corral_events "
        "WHERE audit_seq IS NULL ORDER BY id"
    )
    rows = cur.fetchall()
    if not rows:
        return
    cur.execute(q.LOCK_HEAD)
    seq, prev = cur.fetchone()
    events = [
        Event(run_id=r[1], seq=r[2], kind=r[3], at=r[4], data=r[5], tenant=r[6], actor=r[7])
        for r in rows
    ]
    sealed = sealer.seal_rows(AuditHead(seq=seq, hash=prev), events)
    cur.execute(
        q.SEAL_UNSEALED,
        (
            sealer.mode,
            [row[0] for row in rows],
            [r.seq for r in sealed],
            [r.prev_hash for r in sealed],
            [r.hash for r in sealed],
            [r.at for r in sealed],
            [r.text for r in sealed],
        ),
    )
    last = sealed[-1]
    cur.execute(
        "UPDATE corral_audit_head SET seq = %s, hash = %s WHERE id = 1", (last.seq, last.hash)
    )


def _prepare(conn: Conn, schema: str | None, sealer: Sealer | None = None) -> list[int]:
    """Create ``schema`` if needed, then apply the missing migrations (see
    :mod:`corral.stores.migrate`)."""
    if schema is not None:
        # Concurrent CREATE SCHEMA IF NOT EXISTS can still collide: serialize it.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"corral.schema:{schema}",))
            conn.execute(
                pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(schema))
            )
    where = f"the PostgreSQL schema {schema!r}" if schema else "the PostgreSQL database"
    seal = partial(_seal_unsealed, sealer or Sealer.from_env())
    return migrate(conn, POSTGRES, where=where, after={2: seal})
