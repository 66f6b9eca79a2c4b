"""The migration runner: numbered SQL files, applied once, in one transaction, never downgraded."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.exceptions import ConfigError
from corral.stores.migrate import (
    SQLITE,
    TABLE,
    Migration,
    current_version,
    load,
    migrate,
    split_sqlite,
)

V1 = "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);\n"
V2 = """-- version 2: a column and a trigger (its body holds semicolons)
ALTER TABLE notes ADD COLUMN length INTEGER;
CREATE TRIGGER notes_length AFTER INSERT ON notes BEGIN
    UPDATE notes SET length = length(NEW.body) WHERE id = NEW.id;
END;
INSERT INTO notes (body) VALUES ('a; b -- not a comment');
"""


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    """An in-memory SQLite connection in autocommit mode."""
    c = sqlite3.connect(":memory:", isolation_level=None)
    yield c
    c.close()


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql, encoding="utf-8")
    return folder


def test_a_fresh_database_gets_every_version_in_order(conn: sqlite3.Connection) -> None:
    """An empty database is brought to the newest version; each version is recorded."""
    applied = migrate(conn, SQLITE, [Migration(version=1, name="a", sql=V1)])
    assert applied == [1] and current_version(conn, SQLITE) == 1
    rows = conn.execute(f"SELECT version, name FROM {TABLE}").fetchall()
    assert rows == [(1, "a")]


def test_migrating_again_is_a_no_op(conn: sqlite3.Connection) -> None:
    """A current database is not written to: nothing applied, the record unchanged."""
    migrations = [Migration(version=1, name="a", sql=V1)]
    migrate(conn, SQLITE, migrations)
    before = conn.execute(f"SELECT * FROM {TABLE}").fetchall()
    assert migrate(conn, SQLITE, migrations) == []
    assert conn.execute(f"SELECT * FROM {TABLE}").fetchall() == before


def test_an_older_database_is_upgraded_and_keeps_its_data(conn: sqlite3.Connection) -> None:
    """Only the missing versions run; rows written before the upgrade are still there."""
    v1 = Migration(version=1, name="a", sql=V1)
    migrate(conn, SQLITE, [v1])
    conn.execute("INSERT INTO notes (body) VALUES ('kept')")
    assert migrate(conn, SQLITE, [v1, Migration(version=2, name="b", sql=V2)]) == [2]
    conn.execute("INSERT INTO notes (body) VALUES ('four')")
    assert conn.execute("SELECT body, length FROM notes ORDER BY id").fetchall() == [
        ("kept", None),
        ("a; b -- not a comment", 21),
        ("four", 4),
    ]


def test_a_database_newer_than_the_code_is_refused(conn: sqlite3.Connection) -> None:
    """Schema version 2 with code that knows 1: a clear error, and nothing is written."""
    both = [Migration(version=1, name="a", sql=V1), Migration(version=2, name="b", sql=V2)]
    migrate(conn, SQLITE, both)
    with pytest.raises(ConfigError, match=r"schema version 2, newer than .* \(up to 1\)"):
        migrate(conn, SQLITE, both[:1], where="the test database")
    assert current_version(conn, SQLITE) == 2


def test_a_failing_migration_leaves_nothing_behind(conn: sqlite3.Connection) -> None:
    """All missing versions apply in one transaction: an error rolls every one back."""
    broken = [
        Migration(version=1, name="a", sql=V1),
        Migration(version=2, name="b", sql="CREATE TABLE half (x INT);\nNOT SQL AT ALL;\n"),
    ]
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, SQLITE, broken)
    assert current_version(conn, SQLITE) == 0
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables.isdisjoint({"notes", "half"})
    assert not conn.in_transaction


def test_files_load_in_version_order(tmp_path: Path) -> None:
    """NNNN_name.sql files load sorted by number; other files are ignored."""
    folder = write(tmp_path / "m", {"0002_b.sql": V2, "0001_a.sql": V1, "README.md": "x"})
    assert [(m.version, m.name) for m in load(folder)] == [(1, "a"), (2, "b")]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"0001_a.sql": V1, "0003_c.sql": V1}, "version 2 is missing"),
        ({"0001_a.sql": V1, "1_b.sql": V1}, "name it NNNN_lowercase_words.sql"),
        ({"0001_a.sql": V1, "0001_b.sql": V1}, "version 1 appears twice"),
    ],
)
def test_badly_numbered_files_are_errors(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    """Gaps, misnamed files and duplicate versions are refused with the file named."""
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path / "m", files))


def test_shipped_migrations_are_numbered_from_one() -> None:
    """corral ships SQLite migrations 1..N, each holding complete statements."""
    shipped = load("sqlite")
    assert [m.version for m in shipped] == list(range(1, len(shipped) + 1))
    assert all(split_sqlite(m.sql) for m in shipped)


def test_scripts_split_where_sqlite_says_a_statement_ends() -> None:
    """Semicolons in strings, comments and trigger bodies do not split a statement."""
    statements = split_sqlite(V2)
    assert len(statements) == 3
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(ValueError, match="incomplete statement"):
        split_sqlite("CREATE TABLE t (a INT);\nCREATE TABLE u (")


def test_a_python_step_runs_after_its_version_in_the_same_transaction(
    conn: sqlite3.Connection,
) -> None:
    """``after={2: step}`` runs right after version 2's SQL; if it fails, nothing is applied."""
    both = [Migration(version=1, name="a", sql=V1), Migration(version=2, name="b", sql=V2)]
    seen: list[int] = []

    def count_notes(cur: sqlite3.Cursor) -> None:
        seen.append(cur.execute("SELECT count(*) FROM notes").fetchone()[0])

    def fail(cur: sqlite3.Cursor) -> None:
        raise RuntimeError("the step failed")

    with pytest.raises(RuntimeError, match="the step failed"):
        migrate(conn, SQLITE, both, after={2: fail})
    assert current_version(conn, SQLITE) == 0
    assert migrate(conn, SQLITE, both, after={2: count_notes}) == [1, 2]
    assert seen == [1]
