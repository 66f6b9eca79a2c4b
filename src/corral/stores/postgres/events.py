"""A run's events in PostgreSQL, and the audit log they make (the events concern).

Events are the audit log, sealed into one chain (:mod:`corral.stores.chain`) by
appenders on every machine. An append seals its events after the head this store
last saw and writes them in one statement *if* the head is still that one (a
compare-and-set on the head row): one round trip while this process is the only
appender. Otherwise it locks the head row (``FOR UPDATE``), seals after the real head
and writes, in one transaction (:mod:`.audit`). Triggers refuse to change, delete or
truncate sealed events.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from corral.stores.postgres.audit import append_locked, arrays
from corral.stores.postgres.connection import Conn, PostgresConnection
from corral.stores.postgres.sql import (
    APPEND_IF_HEAD,
    AUDIT_HEAD,
    AUDIT_RECORDS,
    LOCK_HEAD,
    RUN_EVENTS,
)
from corral.stores.records import AuditHead, AuditRecord, Event


class Events(PostgresConnection):
    """The events and audit-log part of :class:`~corral.stores.postgres.PostgresStore`."""

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
                params = (guess.seq, guess.hash, last.seq, last.hash, *arrays(sealer, sealed))
                row = conn.execute(APPEND_IF_HEAD, (*params, now)).fetchone()
                if row is not None and row[0]:
                    self._head = AuditHead(seq=last.seq, hash=last.hash)
                    return
            with conn.transaction():  # another appender moved it: take the head, then append
                head = conn.execute(LOCK_HEAD).fetchone()
                self._head = append_locked(conn, sealer, events, now, head)

        self._call(op, once=True)  # sent twice, the events would be recorded twice

    def events(self, run_id: str) -> list[Event]:
        rows = self._call(lambda conn: conn.execute(RUN_EVENTS, (run_id,)).fetchall())
        return [
            Event(run_id=r[0], seq=r[1], kind=r[2], at=r[3], data=r[4], tenant=r[5], actor=r[6])
            for r in rows
        ]

    def audit_head(self) -> AuditHead:
        row = self._call(lambda conn: conn.execute(AUDIT_HEAD).fetchone())
        return AuditHead() if row is None else AuditHead(seq=row[0], hash=row[1])

    def audit_records(self, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Records with ``seq`` above ``after``, in chain order, at most ``limit``."""
        rows = self._call(lambda conn: conn.execute(AUDIT_RECORDS, (after, limit)).fetchall())
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
