"""Every store test runs against every backend: in memory, SQLite (a temporary file; also in
group-commit mode, ``sqlite-group``) and PostgreSQL (a schema of its own; skipped when the
server is unusable, failed under CI)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from pg import fresh_store, require_postgres

from corral.stores import Store
from corral.stores.memory import MemoryStore
from corral.stores.sqlite import SQLiteStore

BACKENDS = ("memory", "sqlite", "sqlite-group", "postgres")

#: The local test server: database ``test``, trust auth, user ``PGUSER`` or ``postgres``.
POSTGRES_URL = os.environ.get("CORRAL_TEST_POSTGRES_URL") or (
    f"postgresql://{os.environ.get('PGUSER') or 'postgres'}@127.0.0.1:5432/test"
)


def local_store(backend: str, path: Path) -> Store:
    """A fresh store of a backend in this process or file."""
    if backend == "memory":
        return MemoryStore()
    if backend == "sqlite-group":
        return SQLiteStore(path, commit="group", window=0.005)
    return SQLiteStore(path)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store of each backend, closed afterwards."""
    if request.param == "postgres":
        with fresh_store(require_postgres(POSTGRES_URL)) as pg:
            yield pg
        return
    s = local_store(str(request.param), tmp_path / "corral.db")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(params=BACKENDS)
def new_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], AbstractContextManager[Store]]]:
    """A factory of fresh, empty stores of each backend, so that a test can open one after
    changing the environment (``CORRAL_AUDIT_KEY``)."""
    backend = str(request.param)
    url = require_postgres(POSTGRES_URL) if backend == "postgres" else ""
    files = iter(range(1, 1000))

    @contextlib.contextmanager
    def make() -> Iterator[Store]:
        if backend == "postgres":
            with fresh_store(url) as pg:
                yield pg
            return
        path = tmp_path / f"corral-{next(files)}.db"
        s = local_store(backend, path)
        try:
            yield s
        finally:
            s.close()

    yield make
