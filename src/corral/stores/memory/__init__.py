"""The in-memory store: one process, nothing persisted. For tests and ``memory://``."""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from corral.stores.base import (
    ApprovalRecord,
    ApprovalStatus,
    AuditHead,
    AuditRecord,
    BreakerState,
    Claim,
    ClaimRecord,
    ClaimState,
    DegradeCounts,
    DegradeWindow,
    Event,
    GrantLeases,
    KillScope,
    KillSwitchState,
    Refusal,
    RunRecord,
    ScopedCharge,
    ScopeState,
    checked_switch,
    claim_state,
    decide_pending,
    degrade_bucket,
    grant_ends,
    held_charges,
    kill_target,
    reserve_in,
    retry_fits,
    settle_in,
    settled_charges,
)
from corral.stores.chain import Sealer
from corral.stores.leases import LEASE_SECONDS, Renewer
from corral.stores.owner import RUN_LEASE_SECONDS, RunOwner, interruption

_CLOSED = BreakerState()


class _Grant:
    __slots__ = ("charges", "ends", "holder", "lease_until", "reclaimed")

    def __init__(
        self, charges: list[ScopedCharge], lease_until: float, holder: str, ends: float
    ) -> None:
        self.charges = charges
        self.lease_until = lease_until
        self.holder = holder
        self.ends = ends
        self.reclaimed = False


class MemoryStore:
    """A complete :class:`~corral.stores.base.Store` held in dictionaries under one lock.

    ``fail`` makes every call raise :class:`~corral.exceptions.StoreError`
    (to test fail-closed behaviour). The audit chain is keyed when
    ``CORRAL_AUDIT_KEY`` is set at construction. Events take their place in the chain
    when appended and are sealed when the chain is next read: in one process's
    memory a hash protects nothing until someone looks, and appending stays cheap.
    """

    #: This process alone sees it: no other process reads its kill switches or approvals.
    shared = False

    def __init__(
        self, *, grant_lease: float = LEASE_SECONDS, renewer: Renewer | None = None
    ) -> None:
        self._lock = threading.RLock()
        self._runs: dict[str, RunRecord] = {}
        self._events: dict[str, list[Event]] = {}
        self._audit: list[AuditRecord] = []
        self._unsealed: list[Event] = []
        self._sealer = Sealer.from_env()
        self._scopes: dict[str, ScopeState] = {}
        self._grants: dict[str, _Grant] = {}
        self.leases = GrantLeases(self.renew_grants, lease=grant_lease, renewer=renewer)
        self._grant_ids = itertools.count(1)
        self._kill: dict[tuple[str, str], KillSwitchState] = {}
        self._approvals: dict[str, ApprovalRecord] = {}
        self._claims: dict[tuple[str | None, str], dict[str, Any]] = {}
        self._breakers: dict[str, BreakerState] = {}
        self._degrade: dict[str, dict[float, DegradeCounts]] = {}  # name -> bucket start -> counts
        self.fail = False

    def _check(self) -> None:
        if self.fail:
            from corral.exceptions import StoreError

            raise StoreError("memory store set to fail")

    # runs and trace
    def create_run(self, record: RunRecord) -> None:
        with self._lock:
            self._check()
            self._runs[record.id] = replace(
                record,
                owner=record.owner or RunOwner.current(),
                heartbeat_at=record.heartbeat_at or time.time(),
            )
            self._events.setdefault(record.id, [])

    def update_run(self, run_id: str, **changes: Any) -> None:
        with self._lock:
            self._check()
            changes.setdefault("heartbeat_at", time.time())
            if changes.get("status") == "running":
                changes.setdefault("owner", RunOwner.current())
            self._runs[run_id] = replace(self._runs[run_id], **changes)

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            self._check()
            return self._runs.get(run_id)

    def list_runs(self, *, limit: int = 100, tenant: str | None = None) -> list[RunRecord]:
        with self._lock:
            self._check()
            runs = [r for r in self._runs.values() if tenant is None or r.tenant == tenant]
            return sorted(runs, key=lambda r: r.started_at, reverse=True)[:limit]

    def append_events(self, events: Sequence[Event]) -> None:
        with self._lock:
            self._check()
            self._append(events)
            # No heartbeat here: a run in memory cannot outlive the process that owns it.

    def _append(self, events: Sequence[Event]) -> None:
        self._unsealed.extend(events)
        for e in events:
            self._events.setdefault(e.run_id, []).append(e)

    def _seal(self) -> None:
        if self._unsealed:
            last = self._audit[-1] if self._audit else None
            head = AuditHead() if last is None else AuditHead(seq=last.seq, hash=last.hash)
            self._audit.extend(self._sealer.seal(head, self._unsealed))
            self._unsealed = []

    def events(self, run_id: str) -> list[Event]:
        with self._lock:
            self._check()
            return list(self._events.get(run_id, []))

    def heartbeat(self, run_id: str) -> None:
        with self._lock:
            self._check()
            run = self._runs.get(run_id)
            if run is not None:
                self._runs[run_id] = replace(run, heartbeat_at=time.time())

    def mark_interrupted(
        self, *, now: float | None = None, lease: float = RUN_LEASE_SECONDS
    ) -> list[str]:
        """Mark ``interrupted`` the running runs whose owner died or whose lease lapsed."""
        now = time.time() if now is None else now
        marked = []
        with self._lock:
            self._check()
            for run in list(self._runs.values()):
                if run.status != "running":
                    continue
                why = interruption(run.owner, heartbeat_at=run.heartbeat_at, now=now, lease=lease)
                if why is None:
                    continue
                self._runs[run.id] = replace(
                    run, status="interrupted", ended_at=run.heartbeat_at or now
                )
                events = self._events.setdefault(run.id, [])
                seq = max((e.seq for e in events), default=0) + 1
                event = Event(
                    run_id=run.id,
                    seq=seq,
                    kind="interrupted",
                    at=now,
                    data={"why": why},
                    tenant=run.tenant,
                    actor=run.agent,
                )
                self._append([event])
                marked.append(run.id)
        return marked

    # audit log
    def audit_head(self) -> AuditHead:
        with self._lock:
            self._check()
            self._seal()
            if not self._audit:
                return AuditHead()
            last = self._audit[-1]
            return AuditHead(seq=last.seq, hash=last.hash)

    def audit_records(self, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Records with ``seq`` above ``after``, oldest first, at most ``limit``."""
        with self._lock:
            self._check()
            self._seal()
            start = bisect.bisect_right(self._audit, after, key=lambda r: r.seq)
            return self._audit[start : start + limit]

    # shared budgets
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
            self._grants[grant] = _Grant(
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

    # kill switch
    def kill_switches(self) -> list[KillSwitchState]:
        with self._lock:
            self._check()
            return list(self._kill.values())

    def set_kill_switch(self, switch: KillSwitchState, *, audit: Event | None = None) -> None:
        switch = checked_switch(switch)
        with self._lock:
            self._check()
            self._kill[(switch.scope, switch.target)] = replace(switch, set_at=time.time())
            if audit is not None:
                self._append([audit])

    def clear_kill_switch(
        self, scope: KillScope, target: str = "", *, audit: Event | None = None
    ) -> bool:
        target = kill_target(scope, target)
        with self._lock:
            self._check()
            cleared = self._kill.pop((scope, target), None) is not None
            if cleared and audit is not None:
                self._append([audit])
            return cleared

    # approvals
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

    # idempotency
    def claim(
        self,
        key: str,
        digest: str,
        *,
        tenant: str | None,
        now: float,
        lease: float,
        tool: str = "",
    ) -> Claim:
        with self._lock:
            self._check()
            rec = self._claims.get((tenant, key))
            if rec is None:
                self._claims[(tenant, key)] = {
                    "digest": digest,
                    "outcome": None,
                    "lease": now + lease,
                    "tool": tool,
                    "created": time.time(),
                }
                return Claim(status="claimed")
            if rec["digest"] != digest:
                return Claim(status="mismatch")
            if rec["outcome"] is not None:
                return Claim(status="done", outcome=rec["outcome"])
            if now >= rec["lease"]:
                return Claim(status="unknown")
            return Claim(status="in_flight")

    def complete(self, key: str, outcome: Mapping[str, Any], *, tenant: str | None) -> None:
        with self._lock:
            self._check()
            rec = self._claims.get((tenant, key))
            if rec is not None:
                rec["outcome"] = dict(outcome)

    def release(self, key: str, *, tenant: str | None) -> None:
        with self._lock:
            self._check()
            self._claims.pop((tenant, key), None)

    def renew_claim(self, key: str, *, tenant: str | None, now: float, lease: float) -> bool:
        with self._lock:
            self._check()
            rec = self._claims.get((tenant, key))
            if rec is None or rec["outcome"] is not None:
                return False
            rec["lease"] = now + lease
            return True

    def _claim_record(
        self, tenant: str | None, key: str, rec: Mapping[str, Any], now: float
    ) -> ClaimRecord:
        return ClaimRecord(
            key=key,
            tenant=tenant,
            tool=rec["tool"],
            digest=rec["digest"],
            status=claim_state(rec["outcome"], rec["lease"], now),
            created=rec["created"],
            lease_until=rec["lease"],
            outcome=rec["outcome"],
        )

    def lookup_claim(self, key: str, *, tenant: str | None, now: float) -> ClaimRecord | None:
        with self._lock:
            self._check()
            rec = self._claims.get((tenant, key))
            return None if rec is None else self._claim_record(tenant, key, rec, now)

    def list_claims(
        self,
        *,
        now: float,
        status: ClaimState | None = None,
        tenant: str | None = None,
        limit: int = 1000,
    ) -> list[ClaimRecord]:
        with self._lock:
            self._check()
            found = [
                self._claim_record(t, k, rec, now)
                for (t, k), rec in self._claims.items()
                if tenant is None or t == tenant
            ]
        found = [c for c in found if status is None or c.status == status]
        return sorted(found, key=lambda c: c.created)[:limit]

    def resolve_claim(
        self,
        key: str,
        *,
        tenant: str | None,
        now: float,
        outcome: Mapping[str, Any] | None,
        lease: float | None = None,
    ) -> bool:
        with self._lock:
            self._check()
            rec = self._claims.get((tenant, key))
            if rec is None or rec["outcome"] is not None or now < rec["lease"]:
                return False
            if outcome is not None:
                rec["outcome"] = dict(outcome)
            elif lease is not None:
                rec["lease"] = now + lease
            else:
                del self._claims[(tenant, key)]
            return True

    # breakers
    def breaker(self, name: str, *, now: float) -> BreakerState:
        with self._lock:
            self._check()
            state = self._breakers.get(name, _CLOSED)
            if state.state == "open" and now >= state.until:
                return BreakerState(state="half_open", until=state.until)
            return state

    def set_breaker(self, name: str, state: BreakerState) -> None:
        with self._lock:
            self._check()
            self._breakers[name] = state

    # degrade counters
    def _degrade_window(
        self, name: str, now: float, size: float, calls: int, failures: int, retries: int = 0
    ) -> DegradeWindow:
        start, weight = degrade_bucket(now, size)
        buckets = self._degrade.setdefault(name, {})
        for old in [b for b in buckets if b < start - size]:
            del buckets[old]
        cur = buckets.get(start, DegradeCounts())
        if calls or failures or retries:
            cur = DegradeCounts(
                calls=cur.calls + calls,
                failures=cur.failures + failures,
                retries=cur.retries + retries,
            )
            buckets[start] = cur
        prev = buckets.get(start - size, DegradeCounts())
        return DegradeWindow(current=cur, previous=prev, weight=weight)

    def degrade_add(
        self, name: str, *, now: float, size: float, calls: int = 0, failures: int = 0
    ) -> DegradeWindow:
        with self._lock:
            self._check()
            return self._degrade_window(name, now, size, calls, failures)

    def degrade_retry(
        self, name: str, *, now: float, size: float, ratio: float, floor: int, calls: int = 0
    ) -> bool:
        with self._lock:
            self._check()
            window = self._degrade_window(name, now, size, calls, 0)
            if not retry_fits(window, ratio=ratio, floor=floor):
                return False
            self._degrade_window(name, now, size, 0, 0, retries=1)
            return True

    def degrade_reset(self, name: str) -> None:
        with self._lock:
            self._check()
            self._degrade.pop(name, None)

    def close(self) -> None:
        self.leases.close()
        return None
