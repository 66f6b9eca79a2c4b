"""The queue of tool-definition changes in PostgreSQL (the definitions concern).

Queuing a change and deciding one are each one statement; with an audit record, the
change and the record are written in one transaction that holds the audit chain's head.
Each is sent once (a connection lost mid-way is an error, not a retry). The primary key
(tool, new digest) makes processes that see one change at once queue it once, and a
decision moves a change from ``pending`` only. Its statements live here, beside the only
code that runs them.
"""

from __future__ import annotations

import time
from typing import Any

from corral.stores.postgres.audit import append_locked
from corral.stores.postgres.connection import Conn, PostgresConnection
from corral.stores.postgres.sql import LOCK_HEAD
from corral.stores.records import (
    DEFINITION_COLUMNS,
    DefinitionChange,
    DefinitionStatus,
    Event,
    definition_of_row,
    definition_row,
)

QUEUE = (
    f"INSERT INTO corral_definition_changes ({DEFINITION_COLUMNS}) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (name, digest) DO NOTHING RETURNING name"
)
SELECT = f"SELECT {DEFINITION_COLUMNS} FROM corral_definition_changes"
ORDER = " ORDER BY first_seen, name, digest"
DECIDE = (
    "UPDATE corral_definition_changes SET status = %s, decided_at = %s, decided_by = %s, "
    f"reason = %s WHERE name = %s AND digest = %s AND status = 'pending' "
    f"RETURNING {DEFINITION_COLUMNS}"
)


class Definitions(PostgresConnection):
    """The definitions part of :class:`~corral.stores.postgres.PostgresStore`."""

    def queue_definition_change(
        self, change: DefinitionChange, *, audit: Event | None = None
    ) -> bool:
        return self._changed_row(QUEUE, definition_row(change), audit) is not None

    def definition_changes(
        self, *, status: DefinitionStatus | None = "pending", name: str | None = None
    ) -> list[DefinitionChange]:
        parts: list[str] = []
        params: list[str] = []
        if status is not None:
            parts.append("status = %s")
            params.append(status)
        if name is not None:
            parts.append("name = %s")
            params.append(name)
        where = " WHERE " + " AND ".join(parts) if parts else ""
        statement = SELECT + where + ORDER
        rows = self._call(lambda conn: conn.execute(statement, tuple(params)).fetchall())
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
        row = self._changed_row(DECIDE, (status, at, by, reason, name, digest), audit)
        return None if row is None else definition_of_row(row)

    def _changed_row(self, statement: str, params: tuple[Any, ...], audit: Event | None) -> Any:
        """Run ``statement`` (one returning a row when it changed one) and, if it changed
        one, append ``audit`` in the same transaction; the row, or None."""

        def op(conn: Conn) -> Any:
            with conn.transaction():  # the change and its audit record, or neither
                row = conn.execute(statement, params).fetchone()
                if row is None:
                    return None
                if audit is not None:
                    head = conn.execute(LOCK_HEAD).fetchone()
                    self._head = append_locked(conn, self._sealer, [audit], time.time(), head)
                return row

        return self._call(op, once=True)
