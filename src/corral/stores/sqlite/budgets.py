"""Shared budgets in the SQLite file: scoped reservations and their grants (the budgets concern).

USD amounts are stored as the exact decimal text and added up in Python inside the
write transaction (the rule of :mod:`corral.stores.scopes`), so a
:class:`~decimal.Decimal` round-trips unchanged; a reservation reads, checks and
writes its scopes in one ``BEGIN IMMEDIATE`` transaction, so it holds across
processes. A grant's lease is renewed by this process (:mod:`corral.stores.grants`).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal

from corral.stores.scopes import (
    Refusal,
    ScopedCharge,
    ScopeState,
    grant_ends,
    held_charges,
    reserve_in,
    settle_in,
    settled_charges,
)
from corral.stores.sqlite.connection import SQLiteConnection
from corral.stores.sqlite.rows import charge_entry, dumps, grant_charges
from corral.stores.sqlite.sql import (
    DELETE_GRANT,
    FORGET_RECLAIMED,
    GET_GRANT,
    INSERT_GRANT,
    LAPSED_GRANTS,
    LOAD_SCOPE,
    MARK_RECLAIMED,
    RENEW_GRANTS,
    SAVE_SCOPE,
    SCOPE_USAGE,
)

_NONE = ScopedCharge(scope="")


class Budgets(SQLiteConnection):
    """The shared-budgets part of :class:`~corral.stores.sqlite.SQLiteStore`."""

    def reserve(self, charges: Sequence[ScopedCharge], *, now: float) -> str | Refusal:
        leases = self.leases
        charges = held_charges(charges)
        with self._write() as conn:
            if leases.reclaim_due(now):
                _reclaim(conn, now)
            states = reserve_in(_load_scopes(conn, {c.scope for c in charges}), charges, now)
            if isinstance(states, Refusal):
                return states
            _save_scopes(conn, states)
            grant = "g" + uuid.uuid4().hex
            conn.execute(
                INSERT_GRANT,
                (
                    grant,
                    dumps([charge_entry(c) for c in charges]),
                    time.time(),
                    leases.holder,
                    now + leases.lease,
                    grant_ends(charges, now),
                ),
            )
        leases.granted(grant)
        return grant

    def settle(self, grant: str, actual: Sequence[ScopedCharge]) -> None:
        by_scope = settled_charges(actual)
        with self._write() as conn:
            row = conn.execute(GET_GRANT, (grant,)).fetchone()
            if row is not None:
                conn.execute(DELETE_GRANT, (grant,))
                held = grant_charges(row[0])
                changed = [
                    c
                    for c in held
                    if c.calls != by_scope.get(c.scope, _NONE).calls
                    or c.usd != by_scope.get(c.scope, _NONE).usd
                    or row[1]
                ]
                if changed:  # settling at the reserved amount writes no scope
                    states = _load_scopes(conn, {c.scope for c in changed})
                    written: dict[str, ScopeState] = {}
                    for c in changed:
                        real = by_scope.get(c.scope, ScopedCharge(scope=c.scope))
                        state = states.get(c.scope)
                        if state is not None and settle_in(state, c, real, reclaimed=bool(row[1])):
                            written[c.scope] = state
                    _save_scopes(conn, written)
        self.leases.done(grant)  # not before it is settled: until then, the hold stays held

    def renew_grants(self, now: float) -> int:
        """Renew this process's outstanding grants: their leases run from ``now``.

        The renewer calls this while any is outstanding (one statement); returns how
        many were renewed.
        """
        with self._write() as conn:
            return conn.execute(
                RENEW_GRANTS, (now + self.leases.lease, self.leases.holder)
            ).rowcount

    def reclaim(self, now: float) -> int:
        """Refund the grants whose lease lapsed before ``now``; returns how many."""
        with self._write() as conn:
            return _reclaim(conn, now)

    def scope_usage(self, scope: str) -> tuple[int, Decimal]:
        """Calls and USD currently committed or held in ``scope``."""
        with self._locked() as conn:
            row = conn.execute(SCOPE_USAGE, (scope,)).fetchone()
        return (0, Decimal(0)) if row is None else (int(row[0]), Decimal(row[1]))


# -- inside a write transaction ---------------------------------------------------------
def _load_scopes(conn: sqlite3.Connection, scopes: set[str]) -> dict[str, ScopeState | None]:
    out: dict[str, ScopeState | None] = dict.fromkeys(scopes)
    for scope in scopes:
        row = conn.execute(LOAD_SCOPE, (scope,)).fetchone()
        if row is not None:
            buckets = (
                None if row[3] is None else {e: [c, Decimal(u)] for e, c, u in json.loads(row[3])}
            )
            out[scope] = ScopeState(int(row[0]), Decimal(row[1]), row[2], buckets)
    return out


def _save_scopes(conn: sqlite3.Connection, states: Mapping[str, ScopeState]) -> None:
    conn.executemany(
        SAVE_SCOPE,
        [
            (
                scope,
                s.calls,
                str(s.usd),
                s.window_ends,
                None
                if s.buckets is None
                else dumps([[e, b[0], str(b[1])] for e, b in sorted(s.buckets.items())]),
            )
            for scope, s in states.items()
        ],
    )


def _reclaim(conn: sqlite3.Connection, now: float) -> int:
    """Refund the holds of grants whose lease lapsed (only in windows that still count),
    mark them reclaimed, and forget reclaimed grants whose windows have all ended."""
    rows = conn.execute(LAPSED_GRANTS, (now,)).fetchall()
    if rows:
        held = [c for _, text in rows for c in grant_charges(text)]
        states = _load_scopes(conn, {c.scope for c in held})
        for c in held:
            state = states.get(c.scope)
            if state is not None and state.counts(c, now):
                state.change(c, -c.calls, -c.usd)
        _save_scopes(conn, {k: v for k, v in states.items() if v is not None})
        conn.executemany(MARK_RECLAIMED, [(r[0],) for r in rows])
    conn.execute(FORGET_RECLAIMED, (now,))
    return len(rows)
