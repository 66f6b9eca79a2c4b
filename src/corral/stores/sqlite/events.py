"""A run's events in the SQLite file, and the audit log they make (the events concern).

Events are the audit log: each append reads the chain's head, seals the events
(:mod:`corral.stores.chain`) and moves the head in its ``BEGIN IMMEDIATE`` transaction
(:mod:`.audit`), so every process appending to the file extends one chain. An event's
``id`` (the table's rowid) is its place in the chain: no extra index to write per
event. Appending also renews the runs' heartbeat, at most once per
:data:`HEARTBEAT_SECONDS`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import cast

from corral.stores.records import AuditHead, AuditRecord, Event
from corral.stores.sqlite.audit import append
from corral.stores.sqlite.connection import SQLiteConnection
from corral.stores.sqlite.rows import audit_record
from corral.stores.sqlite.sql import AUDIT_HEAD, AUDIT_RECORDS, HEARTBEAT_RUNNING, RUN_EVENTS

#: How often appending a run's events renews its heartbeat, at most (seconds). The lease the
#: heartbeat keeps is an hour; renewing it on every append would write one more page to the
#: WAL per event, about a tenth of the cost of a durable tool call.
HEARTBEAT_SECONDS = 1.0
_MAX_BEATS = 4096
_NEVER = float("-inf")


class Events(SQLiteConnection):
    """The events and audit-log part of :class:`~corral.stores.sqlite.SQLiteStore`."""

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
            append(cur, self._sealer, events)
            if len(due) == 1:  # the usual case: execute skips executemany's setup
                cur.execute(HEARTBEAT_RUNNING, (time.time(), due[0]))
            elif due:
                now = time.time()
                conn.executemany(HEARTBEAT_RUNNING, [(now, run_id) for run_id in due])
        if len(beats) > _MAX_BEATS:
            beats.clear()  # forgetting only means the next append renews
        for run_id in due:
            beats[run_id] = mono

    def events(self, run_id: str) -> list[Event]:
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
        with self._locked() as conn:
            row = conn.execute(AUDIT_HEAD).fetchone()
        return AuditHead() if row is None else AuditHead(seq=row[0], hash=row[1])

    def audit_records(self, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Records with ``seq`` above ``after``, in chain order, at most ``limit``."""
        with self._locked() as conn:
            rows = conn.execute(AUDIT_RECORDS, (after, limit)).fetchall()
        return [audit_record(r) for r in rows]
