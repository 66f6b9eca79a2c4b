"""The approval queue in the SQLite file (the approvals concern).

An approval moves from one status to the next by a conditional update inside
``BEGIN IMMEDIATE``: of two processes deciding or consuming it at once, one wins.
"""

from __future__ import annotations

from corral.stores.base import decide_pending
from corral.stores.records import ApprovalRecord, ApprovalStatus
from corral.stores.sqlite.connection import SQLiteConnection
from corral.stores.sqlite.rows import approval_record, dumps
from corral.stores.sqlite.sql import GET_APPROVAL, INSERT_APPROVAL, list_approvals, move_approval


class Approvals(SQLiteConnection):
    """The approvals part of :class:`~corral.stores.sqlite.SQLiteStore`."""

    def create_approval(self, record: ApprovalRecord) -> None:
        with self._write() as conn:
            conn.execute(
                INSERT_APPROVAL,
                (
                    record.id,
                    record.run_id,
                    record.tool,
                    record.args_digest,
                    dumps(record.arguments),
                    record.tenant,
                    record.agent,
                    record.status,
                    record.approver,
                    record.reason,
                    record.created,
                    record.expires,
                    ",".join(record.kill_modes),
                    record.kill_mode,
                    record.decided_at,
                    record.used_at,
                    dumps(record.context),
                ),
            )

    def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        with self._locked() as conn:
            row = conn.execute(GET_APPROVAL, (approval_id,)).fetchone()
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
        """Move the approval from ``expect`` to ``status``, or report (None) that it was not
        ``expect`` any more: the conditional update inside BEGIN IMMEDIATE lets one win."""
        when = "used_at" if status == "used" else "decided_at"
        with self._write() as conn:
            cur = conn.execute(
                move_approval(when), (status, approver, reason, at, approval_id, expect)
            )
            row = conn.execute(GET_APPROVAL, (approval_id,)).fetchone()
        if row is None:
            raise KeyError(approval_id)
        return approval_record(row) if cur.rowcount else None

    def list_approvals(
        self,
        *,
        status: ApprovalStatus | None = "pending",
        tenant: str | None = None,
        run_id: str | None = None,
    ) -> list[ApprovalRecord]:
        wanted = {"status": status, "tenant": tenant, "run_id": run_id}
        given = {k: v for k, v in wanted.items() if v is not None}
        with self._locked() as conn:
            rows = conn.execute(list_approvals(list(given)), tuple(given.values())).fetchall()
        return [approval_record(row) for row in rows]
