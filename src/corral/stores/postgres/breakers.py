"""Breakers and their degrade counters in PostgreSQL (the breakers concern).

Adding to a bucket and reading the window is one statement; a retry is checked
against the budget and spent under the current bucket's row lock, in one transaction
(the rule of :func:`corral.stores.rules.retry_fits`, in SQL).
"""

from __future__ import annotations

from typing import Any

from corral.stores.postgres.connection import Conn, PostgresConnection
from corral.stores.postgres.sql import (
    BREAKER,
    DEGRADE_ADD,
    DEGRADE_BUCKETS,
    DEGRADE_RESET,
    DEGRADE_SPEND_RETRY,
    SET_BREAKER,
)
from corral.stores.records import BreakerState, DegradeCounts, DegradeWindow
from corral.stores.rules import degrade_bucket


class Breakers(PostgresConnection):
    """The breakers part of :class:`~corral.stores.postgres.PostgresStore`."""

    def breaker(self, name: str, *, now: float) -> BreakerState:
        row = self._call(lambda conn: conn.execute(BREAKER, (name,)).fetchone())
        if row is None:
            return BreakerState()
        if row[0] == "open" and now >= row[1]:
            return BreakerState(state="half_open", until=row[1])
        return BreakerState(state=row[0], until=row[1])

    def set_breaker(self, name: str, state: BreakerState) -> None:
        self._call(lambda conn: conn.execute(SET_BREAKER, (name, state.state, state.until)))

    def degrade_add(
        self, name: str, *, now: float, size: float, calls: int = 0, failures: int = 0
    ) -> DegradeWindow:
        start, weight = degrade_bucket(now, size)
        row = self._call(
            lambda conn: conn.execute(
                DEGRADE_ADD, (name, start, calls, failures, name, start - size, start - size)
            ).fetchone(),
            once=True,  # sent twice, the outcomes would be counted twice
        )
        return _degrade_window(row, weight)

    def degrade_retry(
        self, name: str, *, now: float, size: float, ratio: float, floor: int, calls: int = 0
    ) -> bool:
        start, weight = degrade_bucket(now, size)

        def op(conn: Conn) -> bool:
            with conn.transaction():
                # The upsert locks the current bucket's row; the conditional update then
                # checks and spends under that lock.
                conn.execute(DEGRADE_ADD, (name, start, calls, 0, name, start - size, start - size))
                params = (weight, name, start - size, ratio, weight, floor, name, start)
                spent = conn.execute(DEGRADE_SPEND_RETRY, params).fetchone()
            return spent is not None

        return self._call(op, once=True)

    def degrade_window(self, name: str, *, now: float, size: float) -> DegradeWindow:
        start, weight = degrade_bucket(now, size)
        rows = self._call(lambda conn: conn.execute(DEGRADE_BUCKETS, (name,)).fetchall())
        counts = {r[0]: DegradeCounts(calls=r[1], failures=r[2], retries=r[3]) for r in rows}
        return DegradeWindow(
            current=counts.get(start, DegradeCounts()),
            previous=counts.get(start - size, DegradeCounts()),
            weight=weight,
        )

    def degrade_reset(self, name: str) -> None:
        self._call(lambda conn: conn.execute(DEGRADE_RESET, (name,)))


def _degrade_window(row: Any, weight: float) -> DegradeWindow:
    return DegradeWindow(
        current=DegradeCounts(calls=row[0], failures=row[1], retries=row[2]),
        previous=DegradeCounts(calls=row[3] or 0, failures=row[4] or 0, retries=row[5] or 0),
        weight=weight,
    )
