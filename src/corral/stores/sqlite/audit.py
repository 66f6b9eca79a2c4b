"""Sealing events into the SQLite file's audit chain (see :mod:`corral.stores.chain`).

:func:`append` is every append's one way in (trace events, ``interrupted`` events, a
kill switch's audit record): inside a ``BEGIN IMMEDIATE`` transaction it reads the
chain's head, seals the events after it and moves the head; or, given the events
already sealed after the head its store object last wrote, moves the head only if it
is still that one (one statement instead of two, and the sealing done before the
write lock was taken). :func:`seal_unsealed` seals
the events a file held before the chain existed (migration 2). Imports the chain, the
records and this package's statements and rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from corral.stores.chain import Sealed, Sealer
from corral.stores.records import AuditHead, Event
from corral.stores.sqlite.rows import loads
from corral.stores.sqlite.sql import (
    AUDIT_HEAD,
    INSERT_EVENT,
    MOVE_HEAD,
    MOVE_HEAD_FROM,
    RENUMBER_EVENT,
    SEAL_EVENT,
    UNSEALED,
)


class Appender:
    """Seals one store object's appends, remembering the chain's head it last wrote.

    :meth:`guess` seals events after that head, before the write transaction; :meth:`write`
    (inside it) checks the guess with one conditional statement, or reads the head and
    seals again (:func:`append`). While other connections append in between, guesses would
    miss: after a miss it reads the head until it finds the one it left again.
    """

    __slots__ = ("_guessing", "_head", "sealer")

    def __init__(self, sealer: Sealer) -> None:
        self.sealer = sealer
        self._head: Sealed | None = None
        self._guessing = False

    def guess(self, events: Sequence[Event]) -> Sequence[Sealed] | None:
        """``events`` sealed after the head this object last wrote, or ``None`` (it knows
        none, or its last guess missed)."""
        head = self._head
        if head is None or not self._guessing:
            return None
        return self.sealer.seal_after(head.seq, head.hash, events)

    def write(
        self,
        cur: sqlite3.Cursor,
        events: Sequence[Event],
        guess: Sequence[Sealed] | None = None,
    ) -> None:
        """Seal and write ``events`` in the caller's write transaction (``guess``: as
        :meth:`guess` sealed them; sealed here when not given)."""
        if guess is None:
            guess = self.guess(events)
        head = self._head
        sealed = append(cur, self.sealer, events, guess)
        first = sealed[0]
        self._guessing = head is None or (
            first.seq == head.seq + 1 and first.prev_hash == head.hash
        )
        self._head = sealed[-1]


def append(
    conn: sqlite3.Connection | sqlite3.Cursor,
    sealer: Sealer,
    events: Sequence[Event],
    guess: Sequence[Sealed] | None = None,
) -> Sequence[Sealed]:
    """Seal ``events`` after the chain's head and write them; the caller holds the write lock.
    Returns the records written (the last is the chain's new head).

    ``guess``: the same events already sealed after the head this store object last
    wrote (sealed before the transaction began, so outside the write lock). One
    conditional statement moves the head only if it is still the one they follow;
    otherwise (another connection appended since) the head is read and the events
    sealed again after it. A head is never trusted from memory: it is checked, or
    read, inside the write transaction.
    """
    if guess:
        first, last = guess[0], guess[-1]
        moved = conn.execute(MOVE_HEAD_FROM, (last.seq, last.hash, first.seq - 1, first.prev_hash))
        if moved.rowcount == 1:
            _insert(conn, sealer.mode, guess)
            return guess
    seq, prev = conn.execute(AUDIT_HEAD).fetchone()
    sealed = sealer.seal_after(seq, prev, events)
    _insert(conn, sealer.mode, sealed)
    last = sealed[-1]
    conn.execute(MOVE_HEAD, (last.seq, last.hash))
    return sealed


def _insert(conn: sqlite3.Connection | sqlite3.Cursor, mode: str, sealed: Sequence[Sealed]) -> None:
    if len(sealed) == 1:  # one event per flush is the allow path's case
        r = sealed[0]
        conn.execute(INSERT_EVENT, (*r[:7], r.text, r.prev_hash, r.hash, mode))
    else:
        conn.executemany(
            INSERT_EVENT,
            [(*r[:7], r.text, r.prev_hash, r.hash, mode) for r in sealed],  # seq, run_id, ...
        )


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
