"""The PostgreSQL store's connections: a pool per store object, every call bounded.

:meth:`PostgresConnection._call` runs each call on a pooled connection in autocommit
(one statement, one transaction, one round trip) and turns every failure into a
:class:`~corral.exceptions.StoreError`. It fails closed, and never hangs: a server
that cannot be reached, a pool with no free connection, a statement (lock waits
included) that runs too long each raise after ``connect_timeout``, ``pool_timeout``
or ``statement_timeout``; a server that stops answering altogether, a second after
``statement_timeout`` (the client's own bound, :mod:`.deadline`). A call made for a
run (:data:`corral.clock.DEADLINE` set) waits no longer than the run has left. A
deadlock is retried; so is a connection that died under a call, except for calls
that must not be sent twice because they may have committed, and no call is retried
past the deadline. A process forked with the store open gets a pool of its own on
first use; the parent's connections are never touched in the child.

Opening prepares the schema (:func:`prepare`: the shared migration runner of
:mod:`corral.stores.migrate`, files in ``migrations/postgres/``). The store's
concerns (:mod:`.runs`, :mod:`.events`, ...) are mixins over this class.
"""

from __future__ import annotations

import os
import re
import threading
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, Self, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from corral.clock import DEADLINE, wait_budget
from corral.exceptions import ConfigError, StoreError
from corral.stores.chain import Sealer
from corral.stores.grants import GrantLeases
from corral.stores.migrate import POSTGRES, current_version, migrate
from corral.stores.postgres import deadline as _pg_deadline
from corral.stores.postgres.audit import seal_unsealed
from corral.stores.postgres.sql import LOCK_SCHEMA, create_schema
from corral.stores.records import AuditHead

T = TypeVar("T")
Conn = psycopg.Connection[Any]

SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Transient conflicts PostgreSQL resolves by aborting one side; the transaction is retried.
_RETRYABLE = (errors.DeadlockDetected, errors.SerializationFailure)
ATTEMPTS = 3
# How much longer than the server's statement_timeout the client waits for an answer.
_CLIENT_SLACK = 1.0


_OPEN: weakref.WeakSet[PostgresConnection] = weakref.WeakSet()
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


class PostgresConnection:
    """A PostgreSQL database's connection pool for a store object, and the plumbing every
    call uses."""

    leases: GrantLeases  # the store's (see PostgresStore): released when it closes

    def __init__(
        self,
        url: str,
        *,
        schema: str | None,
        min_size: int,
        max_size: int,
        connect_timeout: float,
        pool_timeout: float,
        statement_timeout: float,
        migrate: bool,
    ) -> None:
        conninfo, url_schema = split_schema(url)
        self.schema = schema or url_schema
        if self.schema is not None and not SCHEMA_NAME.fullmatch(self.schema):
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
                    prepare(conn, self.schema, self._sealer)
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

    def _register(self) -> None:
        """Have a fork give this store a pool of its own (once it opened)."""
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
        for attempt in range(1, ATTEMPTS + 1):
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
                if attempt == ATTEMPTS or _out_of_time():
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split_schema(url: str) -> tuple[str, str | None]:
    """Take a ``schema`` query parameter out of a URL (libpq would reject it)."""
    if "://" not in url:
        return url, None
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def prepare(conn: Conn, schema: str | None, sealer: Sealer | None = None) -> list[int]:
    """Create ``schema`` if needed, then apply the missing migrations (see
    :mod:`corral.stores.migrate`)."""
    if schema is not None:
        # Concurrent CREATE SCHEMA IF NOT EXISTS can still collide: serialize it.
        with conn.transaction():
            conn.execute(LOCK_SCHEMA, (f"corral.schema:{schema}",))
            conn.execute(create_schema(schema))
    where = f"the PostgreSQL schema {schema!r}" if schema else "the PostgreSQL database"
    seal = partial(seal_unsealed, sealer or Sealer.from_env())
    return migrate(conn, POSTGRES, where=where, after={2: seal})
