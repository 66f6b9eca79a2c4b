"""Tampering with an audit log behind the store's back, as someone with database access would.

:func:`tamperer` gives, for any store, an object that edits, deletes, reorders and inserts
audit records and moves the chain's head directly: raw SQL through ``sqlite3`` on the file,
raw SQL through ``psycopg`` on the PostgreSQL schema (with the append-only triggers
disabled first, as an attacker with that access would), the record list of the in-memory
store. Records are named by their ``seq``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from typing import Any, Protocol

from corral.stores import Store
from corral.stores.base import AuditRecord
from corral.stores.memory import MemoryStore
from corral.stores.sqlite import SQLiteStore

#: AuditRecord field -> corral_events column.
COLUMNS = {
    "seq": "audit_seq",
    "event_seq": "seq",
    "run_id": "run_id",
    "kind": "kind",
    "at": "at",
    "tenant": "tenant",
    "actor": "actor",
    "data": "data",
    "prev_hash": "prev_hash",
    "hash": "hash",
    "mode": "mode",
}


class Tamperer(Protocol):
    def edit(self, seq: int, **fields: Any) -> None: ...
    def delete(self, *seqs: int) -> None: ...
    def swap(self, a: int, b: int) -> None: ...
    def renumber(self, after: int, by: int) -> None: ...
    def insert(self, record: AuditRecord) -> None: ...
    def set_head(self, seq: int, digest: str) -> None: ...


@contextlib.contextmanager
def tamperer(store: Store, pg_url: str = "") -> Iterator[Tamperer]:
    """The right tamperer for ``store``'s backend (its connection closed afterwards)."""
    if isinstance(store, MemoryStore):
        store.audit_head()  # seal what is pending: tampering starts from the sealed chain
        yield _Memory(store)
        return
    if isinstance(store, SQLiteStore):
        conn: Any = _sqlite(store.path)
        t = _SQL(conn, "?", json.dumps, seq_column="id")
    else:
        from psycopg.types.json import Jsonb

        conn = _postgres(pg_url, store.schema)  # type: ignore[attr-defined]
        t = _SQL(conn, "%s", Jsonb, seq_column="audit_seq")
    try:
        yield t
    finally:
        conn.close()


def rewrite(t: Tamperer, old: list[AuditRecord], new: list[AuditRecord]) -> None:
    """Replace the whole chain ``old`` by ``new`` and move the head to its end."""
    t.delete(*(r.seq for r in old))
    for r in new:
        t.insert(r)
    t.set_head(new[-1].seq, new[-1].hash)


class _Memory:
    def __init__(self, store: MemoryStore) -> None:
        self.records: list[AuditRecord] = store._audit

    def _at(self, seq: int) -> int:
        return next(i for i, r in enumerate(self.records) if r.seq == seq)

    def edit(self, seq: int, **fields: Any) -> None:
        i = self._at(seq)
        self.records[i] = dataclasses.replace(self.records[i], **fields)

    def delete(self, *seqs: int) -> None:
        self.records[:] = [r for r in self.records if r.seq not in seqs]

    def swap(self, a: int, b: int) -> None:
        i, j = self._at(a), self._at(b)
        ra, rb = self.records[i], self.records[j]
        self.records[i] = dataclasses.replace(rb, seq=a)
        self.records[j] = dataclasses.replace(ra, seq=b)

    def renumber(self, after: int, by: int) -> None:
        self.records[:] = [
            dataclasses.replace(r, seq=r.seq + by) if r.seq > after else r for r in self.records
        ]

    def insert(self, record: AuditRecord) -> None:
        self.records.append(record)
        self.records.sort(key=lambda r: r.seq)

    def set_head(self, seq: int, digest: str) -> None:
        pass  # the in-memory store's head is its last record


class _SQL:
    """Raw SQL on the store's own tables; ``p`` is the driver's placeholder, ``seq_column``
    the column holding a record's place in the chain (``audit_seq`` is written below)."""

    def __init__(self, conn: Any, p: str, as_json: Any, *, seq_column: str) -> None:
        self.conn, self.p, self.as_json, self.seq_column = conn, p, as_json, seq_column

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self.conn.execute(sql.replace("?", self.p).replace("audit_seq", self.seq_column), params)

    def edit(self, seq: int, **fields: Any) -> None:
        for name, value in fields.items():
            value = self.as_json(value) if name == "data" else value
            self._run(
                f"UPDATE corral_events SET {COLUMNS[name]} = ? WHERE audit_seq = ?", (value, seq)
            )

    def delete(self, *seqs: int) -> None:
        for seq in seqs:
            self._run("DELETE FROM corral_events WHERE audit_seq = ?", (seq,))

    def swap(self, a: int, b: int) -> None:
        self._run("UPDATE corral_events SET audit_seq = -1 WHERE audit_seq = ?", (a,))
        self._run("UPDATE corral_events SET audit_seq = ? WHERE audit_seq = ?", (a, b))
        self._run("UPDATE corral_events SET audit_seq = ? WHERE audit_seq = -1", (b,))

    def renumber(self, after: int, by: int) -> None:
        # Through negative numbers: the unique index must hold after every statement.
        self._run(
            "UPDATE corral_events SET audit_seq = -(audit_seq + ?) WHERE audit_seq > ?", (by, after)
        )
        self._run("UPDATE corral_events SET audit_seq = -audit_seq WHERE audit_seq < 0")

    def insert(self, record: AuditRecord) -> None:
        names = list(COLUMNS)
        values = tuple(
            self.as_json(getattr(record, n)) if n == "data" else getattr(record, n) for n in names
        )
        columns = ", ".join(COLUMNS[n] for n in names)
        marks = ", ".join("?" for _ in names)
        self._run(f"INSERT INTO corral_events ({columns}) VALUES ({marks})", values)

    def set_head(self, seq: int, digest: str) -> None:
        self._run("UPDATE corral_audit_head SET seq = ?, hash = ?", (seq, digest))


def _sqlite(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    conn.execute("DROP TRIGGER IF EXISTS corral_events_no_update")
    conn.execute("DROP TRIGGER IF EXISTS corral_events_no_delete")
    return conn


def _postgres(url: str, schema: str) -> Any:
    import psycopg

    conn = psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}")
    conn.execute("ALTER TABLE corral_events DISABLE TRIGGER USER")
    return conn
