"""The records every store keeps, the same on every backend.

Frozen dataclasses and the literal types of their fields: runs (:class:`RunRecord`),
trace events (:class:`Event`) and the audit records they are sealed into
(:class:`AuditRecord`, :class:`AuditHead`), kill switches, approvals, idempotency
claims, breakers and degrade counters, API keys (:class:`KeyRecord`). Imports nothing of corral but
:mod:`corral.stores.owner`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from corral.stores.owner import RunOwner

KillMode = Literal["disable_writes", "disable_expensive", "stop_all"]
KillScope = Literal["global", "tenant", "agent", "tool", "run"]
ClaimStatus = Literal["claimed", "done", "in_flight", "mismatch", "unknown"]
ClaimState = Literal["in_flight", "unknown", "done"]
ApprovalStatus = Literal["pending", "approved", "denied", "expired", "cancelled", "used"]
KeyRole = Literal["agent", "approver", "admin"]


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


@dataclass(frozen=True, kw_only=True, slots=True)
class ApprovalRecord:
    """A request for a human decision on one write, bound to (run, tool, argument digest).

    ``pending`` until decided (``approved``, ``denied``), ``expired`` at ``expires``
    (epoch seconds), ``cancelled`` by a kill switch; an approval becomes ``used`` when
    the run proceeds on it, once. ``arguments`` are redacted. ``kill_modes`` (the
    switch modes that block the call; all three unless known) and ``kill_mode`` (the
    run's ``kill_switch.mode_when_enabled``) say which kill switches cover it. See
    :mod:`corral.controls.approvals`.
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
    context: Mapping[str, Any] = field(default_factory=dict)
    """What the approver is told besides the action (redacted): ``step``, ``call_id``,
    ``purpose`` (the model's text of that turn), ``cost_usd``, ``effect``,
    ``idempotency_key`` (see :class:`~corral.gateway.guards.approval.ApprovalRequest`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyRecord:
    """An API key as the store keeps it: never its secret, only the secret's SHA-256
    ``digest`` (hex). ``tenant`` is ``None`` for a global admin key. ``created``,
    ``expires`` (``None``: never) and ``revoked`` (``None``: not revoked) are epoch
    seconds; ``created_by`` is who made it. See :mod:`corral.controls.keys`."""

    id: str
    tenant: str | None
    role: KeyRole
    name: str = ""
    digest: str
    created: float
    expires: float | None = None
    revoked: float | None = None
    created_by: str = ""


#: The columns of ``corral_api_keys`` in the order :func:`key_row` and :func:`key_of_row` use.
KEY_COLUMNS = "id, tenant, role, name, digest, created, expires, revoked, created_by"


def key_row(record: KeyRecord) -> tuple[Any, ...]:
    """``record`` as a row of ``corral_api_keys`` (:data:`KEY_COLUMNS` order)."""
    return (
        record.id,
        record.tenant,
        record.role,
        record.name,
        record.digest,
        record.created,
        record.expires,
        record.revoked,
        record.created_by,
    )


def key_of_row(row: Sequence[Any]) -> KeyRecord:
    """A row of ``corral_api_keys`` (:data:`KEY_COLUMNS` order) as a record."""
    return KeyRecord(
        id=row[0],
        tenant=row[1],
        role=row[2],
        name=row[3],
        digest=row[4],
        created=float(row[5]),
        expires=None if row[6] is None else float(row[6]),
        revoked=None if row[7] is None else float(row[7]),
        created_by=row[8],
    )


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
    kill_mode: KillMode | None = None
    """The mode a kill switch set without one applies to this run (its policy's
    ``kill_switch.mode_when_enabled``); ``None`` for a run recorded before it was kept."""
    served_by: str | None = None
    """The address of the ``corral serve`` process holding the run, for a run an agent
    drives over HTTP (:meth:`~corral.stores.base.RunStore.take_run` changes it)."""


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


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordedRun:
    """What a run recorded for replay (:mod:`corral.record.recording`): its body, the
    body's digest (also in the run's ``run_end`` event, so the audit chain holds it), its
    size, when it was saved, and when it was pruned (the body is then ``None``; the digest
    stays)."""

    run_id: str
    digest: str
    policy_digest: str
    saved_at: float
    bytes: int = 0
    body: Mapping[str, Any] | None = None
    pruned_at: float | None = None
    #: The body as JSON text when its maker has it (written as is, not serialized again).
    text: str | None = field(default=None, compare=False, repr=False)


def recorded_run(row: Any) -> RecordedRun:
    """A ``corral_recordings`` row as a record (SQLite and PostgreSQL rows alike)."""
    return RecordedRun(
        run_id=row[0],
        digest=row[1],
        policy_digest=row[2],
        saved_at=float(row[3]),
        bytes=int(row[4]),
        body=None if row[5] is None else json.loads(row[5]),
        pruned_at=None if row[6] is None else float(row[6]),
    )


def recording_row(record: RecordedRun) -> tuple[Any, ...]:
    body = record.text
    if body is None and record.body is not None:
        body = json.dumps(record.body, separators=(",", ":"))
    return (
        record.run_id,
        record.digest,
        record.policy_digest,
        record.saved_at,
        record.bytes,
        body,
        record.pruned_at,
    )


#: Policy documents' JSON text by digest, made once per process (a digest's document
#: never changes).
_POLICY_TEXTS: dict[str, str] = {}


def policy_text(digest: str, document: Mapping[str, Any]) -> str:
    """The policy document of ``digest`` as the stores keep it (JSON text)."""
    found = _POLICY_TEXTS.get(digest)
    if found is None:
        if len(_POLICY_TEXTS) >= 64:
            _POLICY_TEXTS.clear()
        found = _POLICY_TEXTS[digest] = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return found


DefinitionStatus = Literal["pending", "approved", "rejected"]


@dataclass(frozen=True, kw_only=True, slots=True)
class DefinitionChange:
    """A tool whose definition is not the one pinned, queued for an operator
    (:mod:`corral.mcp.queue`): once per tool and new digest. ``pinned`` is ``None`` for a
    tool no pin names (a new or renamed tool); ``pinned_definition`` is ``None`` when the
    pin kept no definition (a lock file of version 1). ``seen_by`` is the process that saw
    it first (``host:pid``); the decision (``approved`` or ``rejected``) records who, when
    and why."""

    name: str
    server: str
    tool: str
    pinned: str | None
    digest: str
    definition: Mapping[str, Any]
    pinned_definition: Mapping[str, Any] | None = None
    first_seen: float
    seen_by: str = ""
    status: DefinitionStatus = "pending"
    decided_at: float | None = None
    decided_by: str | None = None
    reason: str | None = None


DEFINITION_COLUMNS = (
    "name, server, tool, pinned, digest, definition, pinned_definition, first_seen, "
    "seen_by, status, decided_at, decided_by, reason"
)


def definition_row(change: DefinitionChange) -> tuple[Any, ...]:
    pinned_definition = (
        None if change.pinned_definition is None else json.dumps(change.pinned_definition)
    )
    return (
        change.name,
        change.server,
        change.tool,
        change.pinned,
        change.digest,
        json.dumps(change.definition),
        pinned_definition,
        change.first_seen,
        change.seen_by,
        change.status,
        change.decided_at,
        change.decided_by,
        change.reason,
    )


def definition_of_row(row: Sequence[Any]) -> DefinitionChange:
    """A ``corral_definition_changes`` row as a record (SQLite and PostgreSQL rows alike)."""
    return DefinitionChange(
        name=row[0],
        server=row[1],
        tool=row[2],
        pinned=row[3],
        digest=row[4],
        definition=json.loads(row[5]),
        pinned_definition=None if row[6] is None else json.loads(row[6]),
        first_seen=float(row[7]),
        seen_by=row[8],
        status=row[9],
        decided_at=None if row[10] is None else float(row[10]),
        decided_by=row[11],
        reason=row[12],
    )
