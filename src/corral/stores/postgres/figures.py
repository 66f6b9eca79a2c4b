"""The figures of ended runs in a time window, from PostgreSQL (the figures concern).

One statement: the runs that started in the window, each joined to an aggregate of its
``run_start``, ``model_call`` and ``tool_call`` events (found through the events' index
by run), folded into :class:`~corral.stores.figures.RunFigures` rows.
"""

from __future__ import annotations

from corral.stores.figures import MAX_FIGURE_RUNS, RunFigures, figures_row
from corral.stores.postgres.connection import PostgresConnection
from corral.stores.postgres.sql import RUN_FIGURES


class Figures(PostgresConnection):
    """The figures part of :class:`~corral.stores.postgres.PostgresStore`."""

    def run_figures(
        self,
        *,
        since: float,
        until: float,
        tenant: str | None = None,
        agent: str | None = None,
        limit: int = MAX_FIGURE_RUNS,
    ) -> list[RunFigures]:
        params = (since, until, tenant, tenant, agent, agent, limit)
        rows = self._call(lambda conn: conn.execute(RUN_FIGURES, params).fetchall())
        return [figures_row(r) for r in rows]
