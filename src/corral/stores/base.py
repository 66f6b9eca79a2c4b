"""The store seam: everything several runs, processes or machines share.

One :class:`Store` Protocol, several backends (in-memory, SQLite, PostgreSQL) held to
one contract test suite. ``Store`` is the union of one small Protocol per concern, so
that code needing one concern can say so (``def f(store: KillSwitchStore)``):

- :class:`RunStore`, **runs**: the store records which process runs each run
  (:class:`~corral.stores.owner.RunOwner`) and renews the run's heartbeat on every
  write to it (``heartbeat`` renews it during a long wait); ``mark_interrupted``
  marks ``interrupted`` the runs whose process died or whose heartbeat lapsed, so a
  crash never leaves a run looking ``running`` for ever.
- :class:`EventStore`, **events and the audit log**: every event appended
  (``interrupted`` ones included) is sealed into one hash chain in the same
  transaction that appends it (see :mod:`~corral.stores.chain`): a gap-free global
  ``seq``, the previous record's hash, and its own hash, keyed when
  ``CORRAL_AUDIT_KEY`` was set when the store was opened. Concurrent appenders, in
  any number of processes, make one chain. (The in-memory store fixes each event's
  place when it is appended and computes the hashes when the chain is next read:
  nothing outside the process can see or change its records before that.)
- :class:`BudgetStore`, **scoped reservations**: charge several budget scopes at
  once, all or nothing (the rules: :mod:`corral.stores.scopes`); a grant is leased
  while its process lives (:mod:`corral.stores.grants`).
- :class:`KillSwitchStore`, **kill switches**: a switch's change and its audit record
  (``audit=``) are written in one transaction (a clear that finds nothing records
  nothing); every backend keys a switch by :func:`~corral.stores.rules.kill_target`
  (``global`` has no target, every other scope needs one), so they accept and refuse
  the same switches.
- :class:`ApprovalStore`, **approvals**: an approval changes state only by
  ``transition_approval`` (from the status the caller expects, or not at all), so of
  two processes deciding or consuming it at once one wins.
- :class:`ClaimStore`, **idempotency claims**, held under a lease their process
  renews.
- :class:`KeyStore`, **API keys**: a key's record holds the SHA-256 digest of its
  secret, never the secret; adding and revoking a key are each written with their
  audit record (``audit=``) in one transaction; ``add_key`` never replaces a key
  (``False`` when the id is taken), ``revoke_key`` changes a key once.
- :class:`RecordingStore`, **recordings**: what each run recorded for replay
  (:class:`~corral.stores.records.RecordedRun`), the policy documents by digest, and
  pruning (bodies dropped, digests kept).
- :class:`DefinitionStore`, **tool-definition changes**: a tool whose definition is not
  the pinned one, queued for an operator once per (tool, new digest) with its audit
  record in one transaction; deciding one (``approved`` or ``rejected``) moves it from
  ``pending`` only, with its audit record.
- :class:`BreakerStore`, **breakers and degrade counters**: per tool (or model
  endpoint) and UTC-aligned window bucket (``floor(now / size) * size``), the
  attempts, failures and retries every process counted. ``degrade_add`` adds
  attempts and failures and returns the window (the covering bucket and the previous
  one, weighted: :class:`~corral.stores.records.DegradeWindow`); ``degrade_retry``
  spends one retry if :func:`~corral.stores.rules.retry_fits` (check and spend in one
  atomic step, so processes cannot overspend the budget together); ``degrade_reset``
  starts a fresh window (the breaker opened or closed).
- :class:`FigureStore`, **the figures drift is judged on**: ``run_figures`` returns, in
  one query, the :class:`~corral.stores.figures.RunFigures` of every ended run that
  started in a time window (oldest first), its record and an aggregate of its events.

Contended state must use the backend's own atomicity, not in-process locks, so it
holds across replicas. ``shared`` says whether other processes see the same state
(SQLite, PostgreSQL) or only this one does (the in-memory store). A backend that
cannot answer raises :class:`~corral.exceptions.StoreError`; callers refuse the
action (fail closed).

The records, rules and helpers the backends share live in modules of their own
(:mod:`~corral.stores.records`, :mod:`~corral.stores.scopes`,
:mod:`~corral.stores.grants`, :mod:`~corral.stores.rules`); they are importable
from here too, as they always were.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from corral.stores.figures import MAX_FIGURE_RUNS, RunFigures
from corral.stores.grants import RECLAIM_EVERY, GrantLeases
from corral.stores.owner import RUN_LEASE_SECONDS
from corral.stores.records import (
    GENESIS,
    ApprovalRecord,
    ApprovalStatus,
    AuditHead,
    AuditRecord,
    BreakerState,
    Claim,
    ClaimRecord,
    ClaimState,
    ClaimStatus,
    DefinitionChange,
    DefinitionStatus,
    DegradeCounts,
    DegradeWindow,
    Event,
    KeyRecord,
    KeyRole,
    KillMode,
    KillScope,
    KillSwitchState,
    RecordedRun,
    RunRecord,
)
from corral.stores.rules import (
    KILL_MODES,
    KILL_SCOPES,
    MAX_KILL_TARGET,
    checked_switch,
    claim_state,
    degrade_bucket,
    kill_target,
    retry_fits,
)
from corral.stores.scopes import (
    MAX_CHARGE_CALLS,
    Refusal,
    ScopedCharge,
    ScopeState,
    grant_ends,
    held_charges,
    refuse,
    reserve_in,
    rolling_retry,
    settle_in,
    settled_charges,
)


def decide_pending(
    store: ApprovalStore,
    approval_id: str,
    status: ApprovalStatus,
    *,
    approver: str,
    reason: str = "",
) -> ApprovalRecord:
    """``decide_approval`` for every backend: move a pending approval to ``status`` through
    ``transition_approval``; one already decided keeps (and returns) its first decision.
    Raises ``KeyError`` for an unknown id."""
    changed = store.transition_approval(
        approval_id,
        expect="pending",
        status=status,
        at=time.time(),
        approver=approver,
        reason=reason,
    )
    if changed is not None:
        return changed
    found = store.get_approval(approval_id)
    if found is None:
        raise KeyError(approval_id)
    return found


@runtime_checkable
class RunStore(Protocol):
    """Runs: who runs each, its heartbeat, its end (see the module docstring)."""

    def create_run(self, record: RunRecord) -> None: ...
    def update_run(self, run_id: str, **changes: Any) -> None: ...
    def get_run(self, run_id: str) -> RunRecord | None: ...
    def list_runs(self, *, limit: int = 100, tenant: str | None = None) -> list[RunRecord]: ...
    def heartbeat(self, run_id: str) -> None: ...
    def take_run(self, run_id: str, *, was: str | None, now: str) -> bool:
        """Set the run's ``served_by`` to ``now`` if it is still ``was`` and the run is
        running or interrupted (it is then running again, owned by this process); whether
        it was set. Two servers taking over one run: one wins."""
        ...

    def mark_interrupted(
        self, *, now: float | None = None, lease: float = RUN_LEASE_SECONDS
    ) -> list[str]: ...


@runtime_checkable
class EventStore(Protocol):
    """A run's trace events and the audit log they are sealed into, in chain order."""

    def append_events(self, events: Sequence[Event]) -> None: ...
    def events(self, run_id: str) -> list[Event]: ...
    def audit_head(self) -> AuditHead: ...
    def audit_records(self, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]: ...


@runtime_checkable
class BudgetStore(Protocol):
    """Shared budgets: scoped reservations (:mod:`corral.stores.scopes`) and their grants."""

    def reserve(self, charges: Sequence[ScopedCharge], *, now: float) -> str | Refusal: ...
    def settle(self, grant: str, actual: Sequence[ScopedCharge]) -> None: ...
    def renew_grants(self, now: float) -> int: ...
    def reclaim(self, now: float) -> int: ...
    def scope_usage(self, scope: str) -> tuple[int, Decimal]: ...


@runtime_checkable
class KillSwitchStore(Protocol):
    """Kill switches, each change with its audit record."""

    def kill_switches(self) -> list[KillSwitchState]: ...
    def set_kill_switch(self, switch: KillSwitchState, *, audit: Event | None = None) -> None: ...
    def clear_kill_switch(
        self, scope: KillScope, target: str = "", *, audit: Event | None = None
    ) -> bool: ...


@runtime_checkable
class ApprovalStore(Protocol):
    """The approval queue: requests for a human decision on one write."""

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


@runtime_checkable
class ClaimStore(Protocol):
    """Idempotency claims, each held under a lease its process renews (``renew_claim``)."""

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


@runtime_checkable
class BreakerStore(Protocol):
    """Breakers and their degrade counters (the breaker's window and the retry budget)."""

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
    def degrade_window(self, name: str, *, now: float, size: float) -> DegradeWindow:
        """The window at ``now``, read only (what a recording keeps of it)."""
        ...


@runtime_checkable
class KeyStore(Protocol):
    """API keys: records holding a digest of each secret, each change with its audit record."""

    def add_key(self, record: KeyRecord, *, audit: Event | None = None) -> bool:
        """Store ``record`` (and ``audit``, in the same transaction); ``False``, and nothing
        written, when a key with its id exists."""
        ...

    def get_key(self, key_id: str) -> KeyRecord | None: ...
    def list_keys(self, *, tenant: str | None = None) -> list[KeyRecord]:
        """Keys, oldest first; only ``tenant``'s when given (global keys have none)."""
        ...

    def revoke_key(self, key_id: str, *, at: float, audit: Event | None = None) -> bool:
        """Mark the key revoked at ``at`` (and write ``audit``, in the same transaction);
        ``False``, and nothing written, when it is unknown or already revoked."""
        ...


@runtime_checkable
class FigureStore(Protocol):
    """The figures of ended runs in a time window (see the module docstring)."""

    def run_figures(
        self,
        *,
        since: float,
        until: float,
        tenant: str | None = None,
        agent: str | None = None,
        limit: int = MAX_FIGURE_RUNS,
    ) -> list[RunFigures]:
        """Every run that started at or after ``since`` and before ``until`` (epoch
        seconds) and is no longer running, of ``tenant`` and ``agent`` when given, oldest
        first, at most ``limit``."""


@runtime_checkable
class DefinitionStore(Protocol):
    """The queue of tool-definition changes operators review (``corral mcp diff``)."""

    def queue_definition_change(
        self, change: DefinitionChange, *, audit: Event | None = None
    ) -> bool:
        """Queue ``change`` with ``audit`` unless one of the same tool and digest is
        queued already (``False`` then, and nothing is written)."""
        ...

    def definition_changes(
        self, *, status: DefinitionStatus | None = "pending", name: str | None = None
    ) -> list[DefinitionChange]:
        """The queued changes (``status`` ones, of tool ``name`` when given), oldest first."""
        ...

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
        """Move the pending change of ``name`` to ``digest`` to ``status`` with ``audit``;
        the decided change, or ``None`` when no such change is pending."""
        ...


@runtime_checkable
class RecordingStore(Protocol):
    """Runs' recordings for replay, and the policy documents they ran under (one per digest)."""

    def save_recording(
        self, record: RecordedRun, *, policy: Mapping[str, Any] | None = None
    ) -> None:
        """Store ``record`` (replacing the run's earlier one) and, when given, the policy
        document of ``record.policy_digest`` if none is stored yet."""
        ...

    def get_recording(self, run_id: str) -> RecordedRun | None: ...
    def policy_document(self, digest: str) -> Mapping[str, Any] | None: ...
    def prune_recordings(
        self, *, ended_before: float, now: float, dry_run: bool = False
    ) -> list[str]:
        """Drop the bodies of recordings of runs that ended before ``ended_before`` (their
        digests stay); the ids of those runs, oldest first. ``dry_run``: change nothing."""
        ...


@runtime_checkable
class Store(
    RunStore,
    EventStore,
    BudgetStore,
    KillSwitchStore,
    ApprovalStore,
    ClaimStore,
    BreakerStore,
    KeyStore,
    FigureStore,
    RecordingStore,
    DefinitionStore,
    Protocol,
):
    """What corral needs from shared state: every concern, and the store's life. See the
    module docstring."""

    @property
    def shared(self) -> bool:
        """Whether other processes share this state (a database), not only this one."""
        ...

    def close(self) -> None: ...


__all__ = [
    "GENESIS",
    "KILL_MODES",
    "KILL_SCOPES",
    "MAX_CHARGE_CALLS",
    "MAX_FIGURE_RUNS",
    "MAX_KILL_TARGET",
    "RECLAIM_EVERY",
    "ApprovalRecord",
    "ApprovalStatus",
    "ApprovalStore",
    "AuditHead",
    "AuditRecord",
    "BreakerState",
    "BreakerStore",
    "BudgetStore",
    "Claim",
    "ClaimRecord",
    "ClaimState",
    "ClaimStatus",
    "ClaimStore",
    "DefinitionChange",
    "DefinitionStatus",
    "DefinitionStore",
    "DegradeCounts",
    "DegradeWindow",
    "Event",
    "EventStore",
    "FigureStore",
    "GrantLeases",
    "KeyRecord",
    "KeyRole",
    "KeyStore",
    "KillMode",
    "KillScope",
    "KillSwitchState",
    "KillSwitchStore",
    "RecordedRun",
    "RecordingStore",
    "Refusal",
    "RunFigures",
    "RunRecord",
    "RunStore",
    "ScopeState",
    "ScopedCharge",
    "Store",
    "checked_switch",
    "claim_state",
    "decide_pending",
    "degrade_bucket",
    "grant_ends",
    "held_charges",
    "kill_target",
    "refuse",
    "reserve_in",
    "retry_fits",
    "rolling_retry",
    "settle_in",
    "settled_charges",
]
