"""The store seam: everything several runs, processes or machines share.

One Protocol, several backends (in-memory, SQLite, PostgreSQL) held to one
contract test suite. Contended state must use the backend's own atomicity, not
in-process locks, so it holds across replicas:

- **scoped reservations**: charge several budget scopes (tenant, agent, tool, each
  window) at once, all or nothing, refusals naming the scope;
- **degrade counters**: per tool (or model endpoint) and UTC-aligned window bucket
  (``floor(now / size) * size``), the attempts, failures and retries every process
  counted. ``degrade_add`` adds attempts and failures and returns the window (the
  covering bucket and the previous one, weighted: :class:`DegradeWindow`);
  ``degrade_retry`` spends one retry if :func:`retry_fits` (check and spend in one
  atomic step, so processes cannot overspend the budget together); ``degrade_reset``
  starts a fresh window (the breaker opened or closed);
- **kill switches**, **approvals**, **idempotency claims**, **breakers**; a kill
  switch's change and its audit record (``audit=``) are written in one transaction
  (a clear that finds nothing records nothing); an approval changes state only by
  ``transition_approval`` (from the status the caller expects, or not at all), so of
  two processes deciding or consuming it at once one wins;
- **runs and their events** (trace and decisions). The store records which process
  runs each run (:class:`~corral.stores.owner.RunOwner`) and renews the run's
  heartbeat on every write to it (``heartbeat`` renews it during a long wait);
  ``mark_interrupted`` marks ``interrupted`` the runs whose process died or whose
  heartbeat lapsed, so a crash never leaves a run looking ``running`` for ever.
- **the audit log**: every event appended (``interrupted`` ones included) is sealed
  into one hash chain in the same transaction that appends it (see
  :mod:`~corral.stores.chain`): a gap-free global ``seq``, the previous record's
  hash, and its own hash, keyed when ``CORRAL_AUDIT_KEY`` was set when the store
  was opened. Concurrent appenders, in any number of processes, make one chain.
  (The in-memory store fixes each event's place when it is appended and computes
  the hashes when the chain is next read: nothing outside the process can see or
  change its records before that.)

A backend that cannot answer raises :class:`~corral.exceptions.StoreError`;
callers refuse the action (fail closed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol, runtime_checkable

from .owner import RUN_LEASE_SECONDS, RunOwner

KillMode = Literal["disable_writes", "disable_expensive", "stop_all"]
KillScope = Literal["global", "tenant", "agent", "tool", "run"]
ClaimStatus = Literal["claimed", "done", "in_flight", "mismatch", "unknown"]
ClaimState = Literal["in_flight", "unknown", "done"]
ApprovalStatus = Literal["pending", "approved", "denied", "expired", "cancelled", "used"]


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


def refuse(c: ScopedCharge, calls: int, usd: Decimal, *, now: float) -> Refusal | None:
    """The refusal ``c`` meets in a scope that holds ``calls`` and ``usd``, or ``None``.

    One rule for every backend that checks in Python (PostgreSQL checks the same in SQL).
    """
    retry = None if c.window_ends is None else max(0.0, c.window_ends - now)
    if c.max_calls is not None and c.calls and calls + c.calls > c.max_calls:
        return Refusal(
            scope=c.scope,
            dimension="calls",
            limit=c.max_calls,
            would_be=calls + c.calls,
            retry_after=retry,
        )
    if c.max_usd is not None and c.usd and usd + c.usd > c.max_usd:
        return Refusal(
            scope=c.scope, dimension="usd", limit=c.max_usd, would_be=usd + c.usd, retry_after=retry
        )
    return None


@dataclass(frozen=True, kw_only=True, slots=True)
class KillSwitchState:
    scope: KillScope
    target: str = ""
    mode: KillMode | None = None
    reason: str = ""
    actor: str = ""
    set_at: float = 0.0
    """When the switch was last set (epoch seconds); the store fills it in."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim:
    status: ClaimStatus
    outcome: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimRecord:
    """An idempotency claim as stored: what ``corral idempotency list`` shows.

    ``status`` is derived when the claim is read: ``done`` once it has an outcome,
    else ``in_flight`` while its lease runs (its process renews it) and ``unknown``
    once the lease lapsed (the process died: whether the side effect happened is
    not known).
    """

    key: str
    tenant: str | None
    tool: str
    digest: str
    status: ClaimState
    created: float
    lease_until: float
    outcome: Mapping[str, Any] | None = None


def claim_state(outcome: object, lease_until: float, now: float) -> ClaimState:
    """The derived status of a claim (one rule for every backend)."""
    if outcome is not None:
        return "done"
    return "unknown" if now >= lease_until else "in_flight"


@dataclass(frozen=True, kw_only=True, slots=True)
class ApprovalRecord:
    """A request for a human decision on one write, bound to (run, tool, argument digest).

    ``pending`` until decided (``approved``, ``denied``), ``expired`` at ``expires``
    (epoch seconds), ``cancelled`` by a kill switch; an approval becomes ``used`` when
    the run proceeds on it, once. ``arguments`` are redacted. ``kill_modes`` (the
    switch modes that block the call; all three unless known) and ``kill_mode`` (the
    run's ``kill_switch.mode_when_enabled``) say which kill switches cover it. See
    :mod:`corral.approvals`.
    """

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
    kill_modes: tuple[KillMode, ...] = ("stop_all", "disable_writes", "disable_expensive")
    kill_mode: KillMode | None = None
    decided_at: float | None = None
    used_at: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerState:
    state: Literal["closed", "open", "half_open"] = "closed"
    until: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class DegradeCounts:
    """What one tool (or model endpoint) saw in one window bucket: attempts, failures, retries."""

    calls: int = 0
    failures: int = 0
    retries: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class DegradeWindow:
    """The sliding degrade window at a moment, from two UTC-aligned buckets of its length.

    ``current`` is the bucket covering the moment, ``previous`` the one before it, and
    ``weight`` the share of ``previous`` still inside the window (1 at the start of
    ``current``, 0 at its end): each total is ``current + weight x previous``, the
    standard sliding-window estimate.
    """

    current: DegradeCounts = field(default_factory=DegradeCounts)
    previous: DegradeCounts = field(default_factory=DegradeCounts)
    weight: float = 0.0

    @property
    def calls(self) -> float:
        return self.current.calls + self.weight * self.previous.calls

    @property
    def failures(self) -> float:
        return self.current.failures + self.weight * self.previous.failures

    @property
    def retries(self) -> float:
        return self.current.retries + self.weight * self.previous.retries


def degrade_bucket(now: float, size: float) -> tuple[float, float]:
    """The start of the bucket of length ``size`` covering ``now``, and the previous
    bucket's weight in the window (see :class:`DegradeWindow`)."""
    start = math.floor(now / size) * size
    return start, max(0.0, min(1.0, 1.0 - (now - start) / size))


def retry_fits(window: DegradeWindow, *, ratio: float, floor: int) -> bool:
    """Whether one more retry stays within ``ratio`` x calls + ``floor`` over ``window``.

    One rule for every backend that checks in Python (PostgreSQL checks the same in SQL).
    """
    return window.retries + 1 <= ratio * window.calls + floor


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
    """One trace event: a step, a model call, a decision, a tool outcome, the stop.

    ``tenant`` and ``actor`` (the agent, or the operator who acted) travel with each
    event into the audit log.
    """

    run_id: str
    seq: int
    kind: str
    at: float
    data: Mapping[str, Any] = field(default_factory=dict)
    tenant: str | None = None
    actor: str | None = None


#: The ``prev_hash`` of the first audit record.
GENESIS = "0" * 64


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditRecord:
    """One record of the audit log: an event as appended, sealed into the hash chain.

    ``seq`` counts records from 1 across the whole store, without gaps; ``hash``
    covers every other field (see :func:`corral.stores.chain.record_hash`); ``mode``
    says how: ``sha256``, or ``hmac-sha256:<key id>`` when keyed.
    """

    seq: int
    run_id: str
    event_seq: int
    kind: str
    at: float
    tenant: str | None
    actor: str | None
    data: Any
    prev_hash: str
    hash: str
    mode: str

    @property
    def tool(self) -> str | None:
        """The tool the record concerns, if any."""
        tool = self.data.get("tool") if isinstance(self.data, Mapping) else None
        return tool if isinstance(tool, str) else None

    @property
    def args_digest(self) -> str | None:
        """SHA-256 of the call's canonical arguments, if the record concerns a call."""
        digest = self.data.get("args_digest") if isinstance(self.data, Mapping) else None
        return digest if isinstance(digest, str) else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (one line of ``corral audit export``)."""
        return {
            "seq": self.seq,
            "run_id": self.run_id,
            "event_seq": self.event_seq,
            "kind": self.kind,
            "at": self.at,
            "tenant": self.tenant,
            "actor": self.actor,
            "tool": self.tool,
            "args_digest": self.args_digest,
            "data": self.data,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "mode": self.mode,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditHead:
    """The newest record of the audit log (``seq`` 0 and :data:`GENESIS` when empty)."""

    seq: int = 0
    hash: str = GENESIS


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

    # audit log: the events, in the order of the chain
    def audit_head(self) -> AuditHead: ...
    def audit_records(self, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]: ...

    # shared budgets
    def reserve(self, charges: Sequence[ScopedCharge], *, now: float) -> str | Refusal: ...
    def settle(self, grant: str, actual: Sequence[ScopedCharge]) -> None: ...

    # kill switch
    def kill_switches(self) -> list[KillSwitchState]: ...
    def set_kill_switch(self, switch: KillSwitchState, *, audit: Event | None = None) -> None: ...
    def clear_kill_switch(
        self, scope: KillScope, target: str = "", *, audit: Event | None = None
    ) -> bool: ...

    # approvals
    def create_approval(self, record: ApprovalRecord) -> None: ...
    def get_approval(self, approval_id: str) -> ApprovalRecord | None: ...
    def decide_approval(
        self, approval_id: str, status: ApprovalStatus, *, approver: str, reason: str = ""
    ) -> ApprovalRecord: ...
    def transition_approval(
        self,
        approval_id: str,
        *,
        expect: ApprovalStatus,
        status: ApprovalStatus,
        at: float,
        approver: str | None = None,
        reason: str | None = None,
    ) -> ApprovalRecord | None: ...
    def list_approvals(
        self,
        *,
        status: ApprovalStatus | None = "pending",
        tenant: str | None = None,
        run_id: str | None = None,
    ) -> list[ApprovalRecord]: ...

    # idempotency: a claim is held under a lease its process renews (``renew_claim``)
    def claim(
        self,
        key: str,
        digest: str,
        *,
        tenant: str | None,
        now: float,
        lease: float,
        tool: str = "",
    ) -> Claim: ...
    def complete(self, key: str, outcome: Mapping[str, Any], *, tenant: str | None) -> None: ...
    def release(self, key: str, *, tenant: str | None) -> None: ...
    def renew_claim(self, key: str, *, tenant: str | None, now: float, lease: float) -> bool:
        """Extend the lease of ``key`` to ``now + lease`` if it has no outcome yet."""
        ...

    def lookup_claim(self, key: str, *, tenant: str | None, now: float) -> ClaimRecord | None:
        """The claim of ``key``, read only (``None`` when there is none)."""
        ...

    def list_claims(
        self,
        *,
        now: float,
        status: ClaimState | None = None,
        tenant: str | None = None,
        limit: int = 1000,
    ) -> list[ClaimRecord]:
        """Claims, oldest first; only ``status`` ones and only ``tenant``'s when given."""
        ...

    def resolve_claim(
        self,
        key: str,
        *,
        tenant: str | None,
        now: float,
        outcome: Mapping[str, Any] | None,
        lease: float | None = None,
    ) -> bool:
        """Settle an ``unknown`` claim (no outcome, lease lapsed at ``now``), atomically.

        ``outcome`` given: it is stored (the claim is done). ``outcome`` None: the side
        effect did not happen; with ``lease`` the caller takes the claim over (in flight
        again, held for ``lease`` seconds, to run the tool itself), without it the claim
        is deleted (the key is free). ``False`` when the claim is not unknown (another
        process settled it first, it has an outcome, or its lease still runs).
        """
        ...

    # breakers
    def breaker(self, name: str, *, now: float) -> BreakerState: ...
    def set_breaker(self, name: str, state: BreakerState) -> None: ...

    # degrade counters (the breaker's window and the retry budget)
    def degrade_add(
        self, name: str, *, now: float, size: float, calls: int = 0, failures: int = 0
    ) -> DegradeWindow: ...
    def degrade_retry(
        self, name: str, *, now: float, size: float, ratio: float, floor: int, calls: int = 0
    ) -> bool: ...
    def degrade_reset(self, name: str) -> None: ...

    def close(self) -> None: ...
