"""The figures of ended runs in a time window, from the SQLite file (the figures concern).

One statement: the runs that started in the window, each joined to an aggregate of its
``run_start``, ``model_call`` and ``tool_call`` events (found through the events' index
by run), folded into :class:`~corral.stores.figures.RunFigures` rows.
"""

from __future__ import annotations

from corral.stores.figures import MAX_FIGURE_RUNS, RunFigures, figures_row
from corral.stores.sqlite.connection import SQLiteConnection
from corral.stores.sqlite.sql import RUN_FIGURES


class Figures(SQLiteConnection):
    """The figures part of :class:`~corral.stores.sqlite.SQLiteStore`."""

    def run_figures(
        self,
        *,
        since: float,
        until: float,
        tenant: str | None = None,
        agent: str | None = None,
        limit: int = MAX_FIGURE_RUNS,
    ) -> list[RunFigures]:
        if self._held:
            self.flush()
        with self._locked() as conn:
            rows = conn.execute(
                RUN_FIGURES, (since, until, tenant, tenant, agent, agent, limit)
            ).fetchall()
        return [figures_row(r) for r in rows]
