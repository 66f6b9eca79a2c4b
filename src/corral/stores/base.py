"""The store seam: everything several runs, processes or machines share.

One Protocol, several backends (in-memory, SQLite, PostgreSQL) held to one
contract test suite. Contended state must use the backend's own atomicity, not
in-process locks, so it holds across replicas:

- **scoped reservations**: charge several budget scopes (tenant, agent, tool, each
  window) at once, all or nothing, refusals naming the scope;
- **kill switches**, **approvals**, **idempotency claims**, **breakers**;
- **runs and their events** (trace and decisions). The store records which process
  runs each run (:class:`~corral.stores.owner.RunOwner`) and renews the run's
  heartbeat on every write to it (``heartbeat`` renews it during a long wait);
  ``mark_interrupted`` marks ``interrupted`` the runs whose process died or whose
  heartbeat lapsed, so a crash never leaves a run looking ``running`` for ever.

A backend that cannot answer raises :class:`~corral.exceptions.StoreError`;
callers refuse the action (fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol, runtime_checkable

from .owner import RUN_LEASE_SECONDS, RunOwner

KillMode = Literal["disable_writes", "disable_expensive", "stop_all"]
KillScope = Literal["global", "tenant", "agent", "tool", "run"]
ClaimStatus = Literal["claimed", "done", "in_flight", "mismatch", "unknown"]
ApprovalStatus = Literal["pending", "approved", "denied", "expired", "cancelled"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ScopedCharge:
    """A charge against one shared scope (``tenant:acme/1d``) with that scope's limits."""

    scope: str
    calls: int = 0
    usd: Decimal = Decimal(0)
    max_calls: int | None = None
    max_usd: Decimal | None = None
    window_ends: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Refusal:
    scope: str
    dimension: Literal["calls", "usd"]
    limit: Any
    would_be: Any
    retry_after: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class KillSwitchState:
    scope: KillScope
    target: str = ""
    mode: KillMode | None = None
    reason: str = ""
    actor: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim:
    status: ClaimStatus
    outcome: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ApprovalRecord:
    id: str
    run_id: str
    tool: str
    args_digest: str
    arguments: Mapping[str, Any]
    tenant: str | None = None
    agent: str | None = None
    status: ApprovalStatus = "pending"
    approver: str = ""
    reason: str = ""
    created: float = 0.0
    expires: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerState:
    state: Literal["closed", "open", "half_open"] = "closed"
    until: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class RunRecord:
    id: str
    tenant: str | None = None
    agent: str | None = None
    status: Literal["running", "ok", "stopped", "error", "interrupted"] = "running"
    stop_reason: str | None = None
    stop: Mapping[str, Any] | None = None
    task: str = ""
    answer: str | None = None
    usage: Mapping[str, Any] = field(default_factory=dict)
    policy_digest: str = ""
    started_at: float = 0.0
    ended_at: float | None = None
    would_stop: Sequence[Mapping[str, Any]] = ()
    owner: RunOwner | None = None
    """The process running the run; the store fills it in when the run starts or resumes."""
    heartbeat_at: float | None = None
    """The last time (epoch seconds) the owner wrote to the run; the store keeps it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """One trace event: a step, a model call, a decision, a tool outcome, the stop."""

    run_id: str
    seq: int
    kind: str
    at: float
    data: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Store(Protocol):
    """What corral needs from shared state. See the module docstring."""

    # runs and trace
    def create_run(self, record: RunRecord) -> None: ...
    def update_run(self, run_id: str, **changes: Any) -> None: ...
    def get_run(self, run_id: str) -> RunRecord | None: ...
    def list_runs(self, *, limit: int = 100, tenant: str | None = None) -> list[RunRecord]: ...
    def append_events(self, events: Sequence[Event]) -> None: ...
    def events(self, run_id: str) -> list[Event]: ...
    def heartbeat(self, run_id: str) -> None: ...
    def mark_interrupted(
        self, *, now: float | None = None, lease: float = RUN_LEASE_SECONDS
    ) -> list[str]: ...

    # shared budgets
    def reserve(self, charges: Sequence[ScopedCharge], *, now: float) -> str | Refusal: ...
    def settle(self, grant: str, actual: Sequence[ScopedCharge]) -> None: ...

    # kill switch
    def kill_switches(self) -> list[KillSwitchState]: ...
    def set_kill_switch(self, switch: KillSwitchState) -> None: ...
    def clear_kill_switch(self, scope: KillScope, target: str = "") -> bool: ...

    # approvals
    def create_approval(self, record: ApprovalRecord) -> None: ...
    def get_approval(self, approval_id: str) -> ApprovalRecord | None: ...
    def decide_approval(
        self, approval_id: str, status: ApprovalStatus, *, approver: str, reason: str = ""
    ) -> ApprovalRecord: ...
    def list_approvals(
        self, *, status: ApprovalStatus | None = "pending"
    ) -> list[ApprovalRecord]: ...

    # idempotency
    def claim(
        self, key: str, digest: str, *, tenant: str | None, now: float, lease: float
    ) -> Claim: ...
    def complete(self, key: str, outcome: Mapping[str, Any], *, tenant: str | None) -> None: ...
    def release(self, key: str, *, tenant: str | None) -> None: ...

    # breakers
    def breaker(self, name: str, *, now: float) -> BreakerState: ...
    def set_breaker(self, name: str, state: BreakerState) -> None: ...

    def close(self) -> None: ...
