"""The queue of tool-definition changes in the SQLite file (the definitions concern).

Queuing a change and deciding one are each written with their audit record in one
``BEGIN IMMEDIATE`` transaction; the primary key (tool, new digest) makes processes that
see one change at once queue it once, and a decision moves a change from ``pending`` only.
Its statements live here, beside the only code that runs them.
"""

from __future__ import annotations

from corral.stores.records import (
    DEFINITION_COLUMNS,
    DefinitionChange,
    DefinitionStatus,
    Event,
    definition_of_row,
    definition_row,
)
from corral.stores.sqlite.audit import append
from corral.stores.sqlite.connection import SQLiteConnection

QUEUE = (
    f"INSERT INTO corral_definition_changes ({DEFINITION_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name, digest) DO NOTHING"
)
SELECT = f"SELECT {DEFINITION_COLUMNS} FROM corral_definition_changes"
ORDER = " ORDER BY first_seen, name, digest"
DECIDE = (
    "UPDATE corral_definition_changes SET status = ?, decided_at = ?, decided_by = ?, "
    "reason = ? WHERE name = ? AND digest = ? AND status = 'pending'"
)
GET = f"{SELECT} WHERE name = ? AND digest = ?"


class Definitions(SQLiteConnection):
    """The definitions part of :class:`~corral.stores.sqlite.SQLiteStore`."""

    def queue_definition_change(
        self, change: DefinitionChange, *, audit: Event | None = None
    ) -> bool:
        with self._write() as conn:
            added = conn.execute(QUEUE, definition_row(change)).rowcount > 0
            if added and audit is not None:
                append(conn, self._sealer, [audit])
            return added

    def definition_changes(
        self, *, status: DefinitionStatus | None = "pending", name: str | None = None
    ) -> list[DefinitionChange]:
        where, params = _where(status, name)
        with self._locked() as conn:
            rows = conn.execute(SELECT + where + ORDER, params).fetchall()
        return [definition_of_row(r) for r in rows]

    def decide_definition_change(
        self,
        name: str,
        digest: str,
        *,
        status: DefinitionStatus,
        at: float,
        by: str,
        reason: str = "",
        audit: Event | None = None,
    ) -> DefinitionChange | None:
        with self._write() as conn:
            if conn.execute(DECIDE, (status, at, by, reason, name, digest)).rowcount == 0:
                return None
            if audit is not None:
                append(conn, self._sealer, [audit])
            row = conn.execute(GET, (name, digest)).fetchone()
        return definition_of_row(row)


def _where(status: str | None, name: str | None) -> tuple[str, tuple[str, ...]]:
    parts, params = [], []
    if status is not None:
        parts.append("status = ?")
        params.append(status)
    if name is not None:
        parts.append("name = ?")
        params.append(name)
    return (" WHERE " + " AND ".join(parts) if parts else ""), tuple(params)
