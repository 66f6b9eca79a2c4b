"""Shared budgets in memory: scoped reservations and their grants (the budgets concern).

The rule of :mod:`corral.stores.scopes`, applied to the scopes' states under the
store's lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from corral.stores.memory.state import Grant, MemoryState
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


class Budgets(MemoryState):
    """The shared-budgets part of :class:`~corral.stores.memory.MemoryStore`."""

    def reserve(self, charges: Sequence[ScopedCharge], *, now: float) -> str | Refusal:
        leases = self.leases
        charges = held_charges(charges)
        with self._lock:
            self._check()
            if leases.reclaim_due(now):
                self._reclaim(now)
            states = reserve_in(self._scopes, charges, now)
            if isinstance(states, Refusal):
                return states
            self._scopes.update(states)
            grant = f"g{next(self._grant_ids)}"
            self._grants[grant] = Grant(
                charges, now + leases.lease, leases.holder, grant_ends(charges, now)
            )
        leases.granted(grant)
        return grant

    def settle(self, grant: str, actual: Sequence[ScopedCharge]) -> None:
        by_scope = settled_charges(actual)
        with self._lock:
            self._check()
            held = self._grants.pop(grant, None)
            if held is not None:
                for c in held.charges:
                    real = by_scope.get(c.scope, ScopedCharge(scope=c.scope))
                    settle_in(self._scopes.get(c.scope), c, real, reclaimed=held.reclaimed)
        self.leases.done(grant)  # not before it is settled: until then, the hold stays held

    def renew_grants(self, now: float) -> int:
        """Renew this process's outstanding grants: their leases run from ``now``.

        The renewer calls this while any is outstanding; returns how many were renewed.
        """
        holder, until = self.leases.holder, now + self.leases.lease
        with self._lock:
            self._check()
            mine = [g for g in self._grants.values() if g.holder == holder and not g.reclaimed]
            for g in mine:
                g.lease_until = until
            return len(mine)

    def reclaim(self, now: float) -> int:
        """Refund the grants whose lease lapsed before ``now``; returns how many."""
        with self._lock:
            self._check()
            return self._reclaim(now)

    def _reclaim(self, now: float) -> int:
        count = 0
        for grant, g in list(self._grants.items()):
            if g.reclaimed:
                if g.ends <= now:
                    del self._grants[grant]
                continue
            if g.lease_until >= now:
                continue
            g.reclaimed = True
            count += 1
            for c in g.charges:
                state = self._scopes.get(c.scope)
                if state is not None and state.counts(c, now):
                    state.change(c, -c.calls, -c.usd)
        return count

    def scope_usage(self, scope: str) -> tuple[int, Decimal]:
        """Calls and USD currently committed or held in ``scope``."""
        with self._lock:
            state = self._scopes.get(scope, ScopeState())
            return int(state.calls), Decimal(state.usd)
