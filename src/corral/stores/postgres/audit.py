"""Sealing events into the PostgreSQL audit chain (see :mod:`corral.stores.chain`).

:func:`append_locked` appends inside a transaction that holds the chain's head row
(``LOCK_HEAD``): the slow path of an append, and the one way for an ``interrupted``
event or a kill switch's audit record. (The fast path, one statement that appends if
the head has not moved, is in :mod:`.events`.) :func:`seal_unsealed` seals the events
a database held before the chain existed (migration 2). Imports the chain, the
records and this package's statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from corral.exceptions import StoreError
from corral.stores.chain import Sealed, Sealer
from corral.stores.postgres.sql import APPEND_LOCKED, LOCK_HEAD, MOVE_HEAD, SEAL_UNSEALED, UNSEALED
from corral.stores.records import AuditHead, Event

Conn = psycopg.Connection[Any]


def append_locked(
    conn: Conn, sealer: Sealer, events: Sequence[Event], now: float, head: Any
) -> AuditHead:
    """Seal ``events`` after ``head`` (its row locked by the caller's transaction) and write
    them; return the new head."""
    if head is None:
        raise StoreError("PostgreSQL store: the audit chain's head row is missing")
    sealed = sealer.seal_rows(AuditHead(seq=head[0], hash=head[1]), events)
    last = sealed[-1]
    conn.execute(APPEND_LOCKED, (last.seq, last.hash, *arrays(sealer, sealed), now))
    return AuditHead(seq=last.seq, hash=last.hash)


def arrays(sealer: Sealer, sealed: Sequence[Sealed]) -> tuple[Any, ...]:
    """The mode and the ten column arrays of sealed events (see ``sql._INSERT_SEALED``)."""
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


def seal_unsealed(sealer: Sealer, cur: Any) -> None:
    """Seal the events written before the audit chain existed (migration 2), in order."""
    cur.execute(UNSEALED)
    rows = cur.fetchall()
    if not rows:
        return
    cur.execute(LOCK_HEAD)
    seq, prev = cur.fetchone()
    events = [
        Event(run_id=r[1], seq=r[2], kind=r[3], at=r[4], data=r[5], tenant=r[6], actor=r[7])
        for r in rows
    ]
    sealed = sealer.seal_rows(AuditHead(seq=seq, hash=prev), events)
    cur.execute(
        SEAL_UNSEALED,
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
    cur.execute(MOVE_HEAD, (last.seq, last.hash))
