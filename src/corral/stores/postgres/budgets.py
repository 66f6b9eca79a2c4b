"""Shared budgets in PostgreSQL: scoped reservations and their grants (the budgets concern).

**reserve / settle** are one statement each (the schema's ``corral_reserve`` and
``corral_settle`` functions). They lock the scopes' rows in one order everywhere
(byte order of the scope name, so reservations never deadlock), check every scope,
then write all of them or none. A grant is consumed by its settlement, so settling
twice refunds once. USD is ``NUMERIC``: exact. Grants are leased: ``renew_grants``
extends all of this process's in one ``UPDATE`` (from the renewer thread), and
``corral_reclaim`` refunds the lapsed ones, skipping grants another transaction holds
(``SKIP LOCKED``), before ``reserve`` at most once a second.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal

from corral.stores.postgres.connection import PostgresConnection
from corral.stores.postgres.sql import RECLAIM, RENEW_GRANTS, RESERVE, SCOPE_USAGE, SETTLE
from corral.stores.scopes import Refusal, ScopedCharge, grant_ends, held_charges, settled_charges


class Budgets(PostgresConnection):
    """The shared-budgets part of :class:`~corral.stores.postgres.PostgresStore`."""

    def reserve(self, charges: Sequence[ScopedCharge], *, now: float) -> str | Refusal:
        """Hold every charge or none (``corral_reserve``: lock scopes in order, check, write)."""
        leases = self.leases
        charges = held_charges(charges)
        if leases.reclaim_due(now):
            self.reclaim(now)
        grant = uuid.uuid4().hex
        windows: dict[str, float | None] = {}
        for c in charges:
            windows.setdefault(c.scope, None if c.rolling else c.window_ends)
        scopes = sorted(windows)  # code-point order, which is byte order of UTF-8 ("C")
        row = self._call(
            lambda conn: conn.execute(
                RESERVE,
                (
                    grant,
                    now,
                    scopes,
                    [windows[s] for s in scopes],
                    [c.scope for c in charges],
                    [c.calls for c in charges],
                    [c.usd for c in charges],
                    [c.max_calls for c in charges],
                    [c.max_usd for c in charges],
                    [c.window_ends for c in charges],
                    [c.rolling for c in charges],
                    leases.holder,
                    now + leases.lease,
                    grant_ends(charges, now),
                ),
            ).fetchone(),
            once=True,  # sent twice, it would hold the budget twice
        )
        if row is None:
            leases.granted(grant)
            return grant
        scope, dimension, limit, would_be, retry_after = row
        if dimension == "calls":
            limit, would_be = int(limit), int(would_be)
        return Refusal(
            scope=scope,
            dimension=dimension,
            limit=limit,
            would_be=would_be,
            retry_after=retry_after,
        )

    def settle(self, grant: str, actual: Sequence[ScopedCharge]) -> None:
        """Replace a grant's holds by the actual amounts (refunding the unused part), once."""
        actual = list(settled_charges(actual).values())
        self._call(
            lambda conn: conn.execute(
                SETTLE,
                (
                    grant,
                    [c.scope for c in actual],
                    [c.calls for c in actual],
                    [c.usd for c in actual],
                ),
            )
        )
        self.leases.done(grant)  # not before it is settled: until then, the hold stays held

    def renew_grants(self, now: float) -> int:
        """Renew this process's outstanding grants: their leases run from ``now``.

        The renewer calls this while any is outstanding (one statement); returns how
        many were renewed.
        """
        return self._call(
            lambda conn: (
                conn.execute(RENEW_GRANTS, (now + self.leases.lease, self.leases.holder)).rowcount
            )
        )

    def reclaim(self, now: float) -> int:
        """Refund the grants whose lease lapsed before ``now`` (``corral_reclaim``)."""
        row = self._call(
            lambda conn: conn.execute(RECLAIM, (now,)).fetchone(),
            once=True,  # from reserve: a dropped connection fails the reservation closed
        )
        return int(row[0]) if row else 0

    def scope_usage(self, scope: str) -> tuple[int, Decimal]:
        """Calls and USD currently committed or held in ``scope``."""
        row = self._call(lambda conn: conn.execute(SCOPE_USAGE, (scope,)).fetchone())
        return (0, Decimal(0)) if row is None else (int(row[0]), Decimal(row[1]))
