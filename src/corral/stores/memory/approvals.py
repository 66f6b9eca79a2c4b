"""The approval queue in memory (the approvals concern)."""

from __future__ import annotations

from dataclasses import replace

from corral.stores.base import decide_pending
from corral.stores.memory.state import MemoryState
from corral.stores.records import ApprovalRecord, ApprovalStatus


class Approvals(MemoryState):
    """The approvals part of :class:`~corral.stores.memory.MemoryStore`."""

    def create_approval(self, record: ApprovalRecord) -> None:
        with self._lock:
            self._check()
            self._approvals[record.id] = record

    def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        with self._lock:
            self._check()
            return self._approvals.get(approval_id)

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
        with self._lock:
            self._check()
            rec = self._approvals[approval_id]
            if rec.status != expect:
                return None
            used = status == "used"
            rec = replace(
                rec,
                status=status,
                approver=rec.approver if approver is None else approver,
                reason=rec.reason if reason is None else reason,
                used_at=at if used else rec.used_at,
                decided_at=rec.decided_at if used else at,
            )
            self._approvals[approval_id] = rec
            return rec

    def list_approvals(
        self,
        *,
        status: ApprovalStatus | None = "pending",
        tenant: str | None = None,
        run_id: str | None = None,
    ) -> list[ApprovalRecord]:
        with self._lock:
            self._check()
            return [
                a
                for a in self._approvals.values()
                if (status is None or a.status == status)
                and (tenant is None or a.tenant == tenant)
                and (run_id is None or a.run_id == run_id)
            ]
