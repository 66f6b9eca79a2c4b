"""A run's events in the SQLite file, and the audit log they make (the events concern).

Events are the audit log: each append seals the events (:mod:`corral.stores.chain`) after
the chain's head and moves the head in its ``BEGIN IMMEDIATE`` transaction (:mod:`.audit`:
sealed beforehand after the head this store object last wrote, that head checked inside
the transaction, read there only when another connection moved it), so every process
appending to the file extends one chain. An event's
``id`` (the table's rowid) is its place in the chain: no extra index to write per
event. Appending also renews the runs' heartbeat, at most once per
:data:`~corral.stores.sqlite.connection.HEARTBEAT_SECONDS`.

In group-commit mode (``commit="group"``) an append made only of read tools' outcomes
(``tool_call`` events that carry no idempotency key) is held in memory and written
within the store's ``window`` (:mod:`.connection`); every other append (a write's
authorization and outcome, a run's start and end, approvals, kill switches, ...) is
written before it returns, after the events held. Reading this store object's events
or audit log writes what it holds first.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import cast

from corral.stores.records import AuditHead, AuditRecord, Event
from corral.stores.sqlite.connection import SQLiteConnection
from corral.stores.sqlite.rows import audit_record
from corral.stores.sqlite.sql import AUDIT_HEAD, AUDIT_RECORDS, RUN_EVENTS


def deferrable(events: Sequence[Event]) -> bool:
    """Whether group commit may hold ``events``: all outcomes of calls without an
    idempotency key (a read tool's; a write's authorization is never one)."""
    if len(events) == 1:  # a read's outcome: no generator set up
        e = events[0]
        return e.kind == "tool_call" and e.data.get("key") is None
    return all(e.kind == "tool_call" and e.data.get("key") is None for e in events)


class Events(SQLiteConnection):
    """The events and audit-log part of :class:`~corral.stores.sqlite.SQLiteStore`."""

    def append_events(self, events: Sequence[Event]) -> None:
        """Append events in order, sealed into the audit chain; renews their runs' heartbeat
        (at most every :data:`~.connection.HEARTBEAT_SECONDS` per run from this store object). In
        group-commit mode a read's outcome is held and written within the window."""
        if not events:
            return
        if self._grouped and deferrable(events):
            self._hold(events)
            return
        due = self._beats_due(events)
        if due:  # at most once a second per run: also look at the files
            self._check_file()
        # Sealed before the write lock is taken, after the head this object last wrote
        # (checked inside the transaction). Events held go first: then sealed inside.
        guess = None if self._held else self._appender.guess(events)
        with self._write():
            self._write_events(cast(sqlite3.Cursor, self._cur), events, due, guess)

    def events(self, run_id: str) -> list[Event]:
        if self._held:
            self.flush()
        with self._locked() as conn:
            rows = conn.execute(RUN_EVENTS, (run_id,)).fetchall()
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

    def audit_head(self) -> AuditHead:
        if self._held:
            self.flush()
        with self._locked() as conn:
            row = conn.execute(AUDIT_HEAD).fetchone()
        return AuditHead() if row is None else AuditHead(seq=row[0], hash=row[1])

    def audit_records(self, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Records with ``seq`` above ``after``, in chain order, at most ``limit``."""
        if self._held:
            self.flush()
        with self._locked() as conn:
            rows = conn.execute(AUDIT_RECORDS, (after, limit)).fetchall()
        return [audit_record(r) for r in rows]
