"""PostgreSQL for the tests: the server's URL, skip-or-fail when it is down, isolated stores.

``CORRAL_TEST_POSTGRES_URL`` names the server (default: the local one, database ``test``).
When it cannot be reached the PostgreSQL tests are skipped with the reason, except under
CI (``CI`` set), where they fail: there the server must be exercised for real.
Each :func:`fresh_store` lives in a schema of its own, dropped afterwards, so tests
share no state even when they run against one database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

PG_URL = os.environ.get("CORRAL_TEST_POSTGRES_URL") or (
    f"postgresql://{os.environ.get('PGUSER') or 'postgres'}@127.0.0.1:5432/test"
)

_status: dict[str, str | None] = {}  # url -> None when usable, else why not


def postgres_unavailable(url: str = PG_URL) -> str | None:
    """Why the server at ``url`` cannot be used (driver missing, unreachable), or None. Cached."""
    if url not in _status:
        try:
            import psycopg

            import corral.stores.postgres  # noqa: F401  (the store itself must import)

            with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
                conn.execute("SELECT 1")
            _status[url] = None
        except Exception as exc:  # any reason at all means "not usable here"
            _status[url] = f"PostgreSQL at {url} is not usable: {type(exc).__name__}: {exc}"
    return _status[url]


def require_postgres(url: str = PG_URL) -> str:
    """Return the test server's URL; skip the test if it is unusable, or fail it under CI."""
    reason = postgres_unavailable(url)
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the PostgreSQL tests must run)", pytrace=False)
        pytest.skip(f"{reason}; set CORRAL_TEST_POSTGRES_URL or start the server")
    return url


def new_schema() -> str:
    """A schema name no other test uses."""
    return f"corral_t_{uuid.uuid4().hex[:12]}"


def drop_schema(url: str, schema: str) -> None:
    """Drop ``schema`` and everything in it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextmanager
def fresh_store(url: str | None = None, **options: Any) -> Iterator[Any]:
    """A PostgresStore in a new schema of its own; the pool is closed and the schema dropped."""
    from corral.stores.postgres import PostgresStore

    url = url or require_postgres()
    schema = options.pop("schema", None) or new_schema()
    try:
        store = PostgresStore(url, schema=schema, **options)
        try:
            yield store
        finally:
            store.close()
    finally:
        drop_schema(url, schema)


# -- work done in other processes (spawned: importable, arguments picklable) --------------
def reserve_until_refused(
    url: str,
    schema: str,
    threads: int,
    charge: Any,
    actual: Any,
    start: Any,
    results: Any,
) -> None:
    """Reserve ``charge`` (plus an uncapped agent scope) from ``threads`` threads until each is
    refused, settling every grant to ``actual``; put (grants, refusals, seconds) on ``results``."""
    import threading
    import time

    from corral.stores.base import Refusal, ScopedCharge
    from corral.stores.postgres import PostgresStore

    agent = ScopedCharge(scope="agent:bot/1d", calls=1)
    counts = [[0, 0] for _ in range(threads)]
    with PostgresStore(url, schema=schema, max_size=threads, migrate=False) as store:

        def loop(i: int) -> None:
            # Half the threads name the scopes in the other order: the store must not deadlock.
            charges = [charge, agent] if i % 2 else [agent, charge]
            while True:
                grant = store.reserve(charges, now=0.0)
                if isinstance(grant, Refusal):
                    counts[i][1] += 1
                    return
                counts[i][0] += 1
                store.settle(grant, [actual, agent])

        workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
        start.wait()
        began = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - began
    results.put((sum(c[0] for c in counts), sum(c[1] for c in counts), elapsed))


def claim_once(url: str, schema: str, threads: int, start: Any, results: Any) -> None:
    """Claim one idempotency key from ``threads`` threads at once; put their statuses."""
    import threading

    from corral.stores.postgres import PostgresStore

    statuses: list[str] = []
    with PostgresStore(url, schema=schema, max_size=threads, migrate=False) as store:
        ready = threading.Barrier(threads)

        def claim() -> None:
            ready.wait()
            status = store.claim("refund:order-42", "d", tenant="acme", now=0.0, lease=60.0)
            statuses.append(status.status)

        workers = [threading.Thread(target=claim) for _ in range(threads)]
        start.wait()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    results.put(statuses)
