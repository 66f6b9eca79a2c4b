"""Sealing events into the SQLite file's audit chain (see :mod:`corral.stores.chain`).

:func:`append` is every append's one way in (trace events, ``interrupted`` events, a
kill switch's audit record): inside a ``BEGIN IMMEDIATE`` transaction it reads the
chain's head, seals the events after it and moves the head. :func:`seal_unsealed` seals
the events a file held before the chain existed (migration 2). Imports the chain, the
records and this package's statements and rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from corral.stores.chain import Sealer
from corral.stores.records import AuditHead, Event
from corral.stores.sqlite.rows import loads
from corral.stores.sqlite.sql import (
    AUDIT_HEAD,
    INSERT_EVENT,
    MOVE_HEAD,
    RENUMBER_EVENT,
    SEAL_EVENT,
    UNSEALED,
)


def append(
    conn: sqlite3.Connection | sqlite3.Cursor, sealer: Sealer, events: Sequence[Event]
) -> None:
    """Seal ``events`` after the chain's head and write them; the caller holds the write lock.

    The head is read here, inside the write transaction, never remembered: other processes
    append to the same chain between two of this connection's transactions.
    """
    seq, prev = conn.execute(AUDIT_HEAD).fetchone()
    sealed = sealer.seal_after(seq, prev, events)
    mode = sealer.mode
    if len(sealed) == 1:  # one event per flush is the allow path's case
        r = sealed[0]
        conn.execute(INSERT_EVENT, (*r[:7], r.text, r.prev_hash, r.hash, mode))
    else:
        conn.executemany(
            INSERT_EVENT,
            [(*r[:7], r.text, r.prev_hash, r.hash, mode) for r in sealed],  # seq, run_id, ...
        )
    last = sealed[-1]
    conn.execute(MOVE_HEAD, (last.seq, last.hash))


def seal_unsealed(sealer: Sealer, cur: sqlite3.Cursor) -> None:
    """Number and seal the events written before the audit chain existed (migration 2):
    ids become 1, 2, ... in their order (each moves down only, so none collide)."""
    rows = cur.execute(UNSEALED).fetchall()
    if not rows:
        return
    for place, row in enumerate(rows, start=1):
        if row[0] != place:
            cur.execute(RENUMBER_EVENT, (place, row[0]))
    rows = [(place, *row[1:]) for place, row in enumerate(rows, start=1)]
    events = [
        Event(
            run_id=r[1],
            seq=r[2],
            kind=r[3],
            at=r[4],
            data=loads(r[5]),
            tenant=r[6],
            actor=r[7],
        )
        for r in rows
    ]
    head = cur.execute(AUDIT_HEAD).fetchone()
    sealed = sealer.seal_rows(AuditHead(seq=head[0], hash=head[1]), events)
    cur.executemany(
        SEAL_EVENT,
        [(r.prev_hash, r.hash, sealer.mode, r.at, r.text, r.seq) for r in sealed],
    )
    last = sealed[-1]
    cur.execute(MOVE_HEAD, (last.seq, last.hash))
