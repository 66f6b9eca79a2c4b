"""The approval queue in PostgreSQL (the approvals concern).

An approval changes state by a conditional update (from the status the caller
expects), so of two processes deciding or consuming it at once one wins.
"""

from __future__ import annotations

from typing import Any

from corral.stores.base import decide_pending
from corral.stores.postgres.connection import Conn, PostgresConnection
from corral.stores.postgres.rows import approval_record, jsonb
from corral.stores.postgres.sql import (
    APPROVAL_EXISTS,
    APPROVAL_FIELDS,
    GET_APPROVAL,
    INSERT_APPROVAL,
    list_approvals,
    move_approval,
)
from corral.stores.records import ApprovalRecord, ApprovalStatus


class Approvals(PostgresConnection):
    """The approvals part of :class:`~corral.stores.postgres.PostgresStore`."""

    def create_approval(self, record: ApprovalRecord) -> None:
        values = [
            jsonb(dict(getattr(record, f)))
            if f in ("arguments", "context")
            else ",".join(record.kill_modes)
            if f == "kill_modes"
            else getattr(record, f)
            for f in APPROVAL_FIELDS
        ]
        self._call(lambda conn: conn.execute(INSERT_APPROVAL, values))

    def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        row = self._call(lambda conn: conn.execute(GET_APPROVAL, (approval_id,)).fetchone())
        return None if row is None else approval_record(row)

    def decide_approval(
        self, approval_id: str, status: ApprovalStatus, *, approver: str, reason: str = ""
    ) -> ApprovalRecord:
        return decide_pending(self, approval_id, status, approver=approver, reason=reason)

    def transition_approval(
        self,
        approval_id: str,
        *,
        expect: ApprovalStatus,
        status: ApprovalStatus,
        at: float,
        approver: str | None = None,
        reason: str | None = None,
    ) -> ApprovalRecord | None:
        """Move the approval from ``expect`` to ``status`` by a conditional update (one
        caller wins), or None when it was not ``expect`` any more."""
        move = move_approval("used_at" if status == "used" else "decided_at")

        def op(conn: Conn) -> tuple[tuple[Any, ...] | None, bool]:
            row = conn.execute(move, (status, approver, reason, at, approval_id, expect)).fetchone()
            if row is not None:
                return row, True
            return None, conn.execute(APPROVAL_EXISTS, (approval_id,)).fetchone() is not None

        # Once: had the update committed before a connection dropped, a second try would
        # report it lost to another caller.
        row, found = self._call(op, once=True)
        if row is None and not found:
            raise KeyError(approval_id)
        return None if row is None else approval_record(row)

    def list_approvals(
        self,
        *,
        status: ApprovalStatus | None = "pending",
        tenant: str | None = None,
        run_id: str | None = None,
    ) -> list[ApprovalRecord]:
        wanted = {"status": status, "tenant": tenant, "run_id": run_id}
        given = {k: v for k, v in wanted.items() if v is not None}
        query = list_approvals(list(given))
        params = tuple(given.values())
        rows = self._call(lambda conn: conn.execute(query, params).fetchall())
        return [approval_record(r) for r in rows]
