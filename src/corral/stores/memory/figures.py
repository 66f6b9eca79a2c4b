"""The figures of ended runs in a time window, from the in-memory tables (the figures concern)."""

from __future__ import annotations

from corral.stores.figures import FIGURE_KINDS, MAX_FIGURE_RUNS, RunFigures, from_events
from corral.stores.memory.state import MemoryState


class Figures(MemoryState):
    """The figures part of :class:`~corral.stores.memory.MemoryStore`."""

    def run_figures(
        self,
        *,
        since: float,
        until: float,
        tenant: str | None = None,
        agent: str | None = None,
        limit: int = MAX_FIGURE_RUNS,
    ) -> list[RunFigures]:
        with self._lock:
            self._check()
            runs = sorted(
                (
                    r
                    for r in self._runs.values()
                    if since <= r.started_at < until
                    and r.status != "running"
                    and (tenant is None or r.tenant == tenant)
                    and (agent is None or r.agent == agent)
                ),
                key=lambda r: r.started_at,
            )[:limit]
            return [
                from_events(r, (e for e in self._events.get(r.id, ()) if e.kind in FIGURE_KINDS))
                for r in runs
            ]
