"""Breakers and their degrade counters in the SQLite file (the breakers concern).

A retry is checked against the budget and spent in one ``BEGIN IMMEDIATE``
transaction (the rule of :func:`corral.stores.rules.retry_fits`), so processes
cannot overspend it together.
"""

from __future__ import annotations

import sqlite3
from typing import cast

from corral.stores.records import BreakerState, DegradeCounts, DegradeWindow
from corral.stores.rules import degrade_bucket, retry_fits
from corral.stores.sqlite.connection import SQLiteConnection
from corral.stores.sqlite.sql import (
    BREAKER,
    DEGRADE_ADD,
    DEGRADE_BUCKETS,
    DEGRADE_PRUNE,
    DEGRADE_RESET,
    DEGRADE_SPEND_RETRY,
    SET_BREAKER,
)

_CLOSED = BreakerState()


class Breakers(SQLiteConnection):
    """The breakers part of :class:`~corral.stores.sqlite.SQLiteStore`."""

    def breaker(self, name: str, *, now: float) -> BreakerState:
        with self._locked():
            row = cast(sqlite3.Cursor, self._cur).execute(BREAKER, (name,)).fetchone()
        if row is None:
            return _CLOSED
        if row[0] == "open" and now >= row[1]:
            return BreakerState(state="half_open", until=row[1])
        return BreakerState(state=row[0], until=row[1])

    def set_breaker(self, name: str, state: BreakerState) -> None:
        with self._write() as conn:
            conn.execute(SET_BREAKER, (name, state.state, state.until))

    def degrade_add(
        self, name: str, *, now: float, size: float, calls: int = 0, failures: int = 0
    ) -> DegradeWindow:
        with self._write() as conn:
            return _degrade_add(conn, name, now, size, calls, failures)

    def degrade_retry(
        self, name: str, *, now: float, size: float, ratio: float, floor: int, calls: int = 0
    ) -> bool:
        with self._write() as conn:  # check and spend under the write lock
            window = _degrade_add(conn, name, now, size, calls, 0)
            if not retry_fits(window, ratio=ratio, floor=floor):
                return False
            conn.execute(DEGRADE_SPEND_RETRY, (name, degrade_bucket(now, size)[0]))
            return True

    def degrade_window(self, name: str, *, now: float, size: float) -> DegradeWindow:
        start, weight = degrade_bucket(now, size)
        with self._locked() as conn:
            rows = conn.execute(DEGRADE_BUCKETS, (name,)).fetchall()
        counts = {r[0]: DegradeCounts(calls=r[1], failures=r[2], retries=r[3]) for r in rows}
        return DegradeWindow(
            current=counts.get(start, DegradeCounts()),
            previous=counts.get(start - size, DegradeCounts()),
            weight=weight,
        )

    def degrade_reset(self, name: str) -> None:
        with self._write() as conn:
            conn.execute(DEGRADE_RESET, (name,))


def _degrade_add(
    conn: sqlite3.Connection, name: str, now: float, size: float, calls: int, failures: int
) -> DegradeWindow:
    """Add to the bucket covering ``now``, drop older buckets, return the window (the caller
    holds the write lock)."""
    start, weight = degrade_bucket(now, size)
    conn.execute(DEGRADE_ADD, (name, start, calls, failures))
    conn.execute(DEGRADE_PRUNE, (name, start - size))
    rows = {
        r[0]: DegradeCounts(calls=r[1], failures=r[2], retries=r[3])
        for r in conn.execute(DEGRADE_BUCKETS, (name,))
    }
    return DegradeWindow(
        current=rows.get(start, DegradeCounts()),
        previous=rows.get(start - size, DegradeCounts()),
        weight=weight,
    )
