"""Versioned schema migrations: numbered SQL files applied in order, once.

Each backend keeps its migrations in ``migrations/<dialect>/`` as ``NNNN_name.sql``
(``0001_initial.sql``, ``0002_...``), numbered from 1 without gaps. A database
records what it has applied in ``corral_schema_migrations``. :func:`migrate`
brings a database up to the newest version in one transaction, all or nothing,
holding the database's write lock so that processes opening it at once apply each
migration exactly once; a database already current costs one read. A database
newer than the migrations this code ships is refused with a clear message, never
written to.

The runner speaks DB-API: it takes a connection in autocommit mode (``sqlite3``
with ``isolation_level=None``, psycopg with ``autocommit=True``), issues its own
``BEGIN`` / ``COMMIT``, and learns the rest from a :class:`Dialect`.

>>> import sqlite3
>>> conn = sqlite3.connect(":memory:", isolation_level=None)
>>> migrate(conn, SQLITE, [Migration(version=1, name="start", sql="CREATE TABLE t (a INT);")])
[1]
>>> migrate(conn, SQLITE, [Migration(version=1, name="start", sql="CREATE TABLE t (a INT);")])
[]
>>> current_version(conn, SQLITE)
1
>>> conn.close()
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from corral.exceptions import ConfigError

TABLE = "corral_schema_migrations"

_CREATE_TABLE = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)"""

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


@dataclass(frozen=True, kw_only=True, slots=True)
class Migration:
    """One schema version: the SQL that brings version ``version - 1`` to ``version``."""

    version: int
    name: str
    sql: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Dialect:
    """What the runner needs to know about one database.

    ``name`` is also the folder under ``migrations/``. ``begin`` starts a transaction
    that holds the write lock (or ``lock`` takes one right after); ``exists`` is a
    query whose first column is true when the version table exists; ``split`` cuts a
    script into statements for drivers that execute one at a time (``None``: the
    driver takes the whole script).
    """

    name: str
    param: str
    begin: str
    exists: str
    lock: str = ""
    split: Callable[[str], list[str]] | None = None


def split_sqlite(script: str) -> list[str]:
    """The statements of a SQLite script, cut where SQLite says a statement is complete
    (so semicolons inside strings, comments and trigger bodies stay where they are)."""
    statements: list[str] = []
    start = 0
    for i, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : i + 1]):
            statement = script[start : i + 1].strip()
            if _has_code(statement[:-1]):
                statements.append(statement)
            start = i + 1
    if _has_code(script[start:]):
        raise ValueError(f"incomplete statement at the end: {script[start:].strip()[:60]!r}")
    return statements


def _has_code(text: str) -> bool:
    return bool(_COMMENT.sub("", text).strip())


SQLITE = Dialect(
    name="sqlite",
    param="?",
    begin="BEGIN IMMEDIATE",
    exists=f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{TABLE}'",
    split=split_sqlite,
)

POSTGRES = Dialect(
    name="postgres",
    param="%s",
    begin="BEGIN",
    exists=f"SELECT to_regclass('{TABLE}') IS NOT NULL",
    # One migrator at a time per schema; the lock ends with the transaction.
    lock=f"SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.{TABLE}'))",
)


def load(source: str | Path | Traversable) -> list[Migration]:
    """The migrations shipped for a dialect (``"sqlite"``, ``"postgres"``) or those in a
    folder (a path), in version order. Misnamed files, gaps and duplicates are errors."""
    folder: Traversable | Path
    if isinstance(source, str) and "/" not in source and "\\" not in source:
        folder = resources.files("corral.stores").joinpath("migrations", source)
    else:
        folder = Path(source) if isinstance(source, str) else source
    if not folder.is_dir():
        raise ConfigError(f"no migrations folder {source!s}")
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE.match(entry.name)
        if match is None:
            raise ConfigError(f"migration {entry.name}: name it NNNN_lowercase_words.sql")
        version = int(match.group(1))
        if version in found:
            raise ConfigError(f"migration {entry.name}: version {version} appears twice")
        found[version] = Migration(
            version=version, name=match.group(2), sql=entry.read_text(encoding="utf-8")
        )
    ordered = [found[v] for v in sorted(found)]
    for expected, migration in enumerate(ordered, start=1):
        if migration.version != expected:
            raise ConfigError(
                f"migrations of {source!s}: version {expected} is missing "
                f"(found {migration.version:04d}_{migration.name}.sql)"
            )
    return ordered


def current_version(conn: Any, dialect: Dialect) -> int:
    """The newest version applied to the database (0 for a database never migrated)."""
    cur = conn.cursor()
    try:
        return _read_version(cur, dialect)
    finally:
        cur.close()


def migrate(
    conn: Any,
    dialect: Dialect,
    migrations: Sequence[Migration] | None = None,
    *,
    where: str = "the database",
    after: Mapping[int, Callable[[Any], None]] | None = None,
) -> list[int]:
    """Apply the migrations the database lacks (default: the dialect's shipped ones);
    return the versions applied, ``[]`` when it was already current.

    ``after`` maps a version to a step in Python run right after that version's SQL,
    in the same transaction, with the cursor (for data no SQL can compute, such as
    the audit chain's hashes of rows written before it existed).

    Raises :class:`~corral.exceptions.ConfigError` when the database is newer than
    ``migrations`` (named ``where`` in the message); the database is left untouched.
    """
    if migrations is None:
        migrations = load(dialect.name)
    latest = migrations[-1].version if migrations else 0
    cur = conn.cursor()
    try:
        if _check(_read_version(cur, dialect), latest, where) == latest:
            return []
        cur.execute(dialect.begin)
        try:
            if dialect.lock:
                cur.execute(dialect.lock)
            cur.execute(_CREATE_TABLE)
            current = _check(_read_version(cur, dialect), latest, where)
            applied = []
            for migration in migrations:
                if migration.version <= current:
                    continue
                _apply(cur, dialect, migration)
                if after and migration.version in after:
                    after[migration.version](cur)
                applied.append(migration.version)
            cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                cur.execute("ROLLBACK")
            raise
        return applied
    finally:
        cur.close()


def _read_version(cur: Any, dialect: Dialect) -> int:
    cur.execute(dialect.exists)
    row = cur.fetchone()
    if row is None or not row[0]:
        return 0
    cur.execute(f"SELECT MAX(version) FROM {TABLE}")
    row = cur.fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def _check(current: int, latest: int, where: str) -> int:
    if current > latest:
        raise ConfigError(
            f"{where} has schema version {current}, newer than this version of corral "
            f"knows (up to {latest}): upgrade corral, or use another database"
        )
    return current


def _apply(cur: Any, dialect: Dialect, migration: Migration) -> None:
    label = f"{migration.version:04d}_{migration.name}.sql"
    try:
        statements = dialect.split(migration.sql) if dialect.split else [migration.sql]
    except ValueError as exc:
        raise ConfigError(f"migration {label}: {exc}") from None
    for statement in statements:
        cur.execute(statement)
    p = dialect.param
    cur.execute(
        f"INSERT INTO {TABLE} (version, name, applied_at) VALUES ({p}, {p}, {p})",
        (migration.version, migration.name, time.time()),
    )
