"""How the SQLite store writes records into rows and reads them back.

Mappings (events, usage, approval arguments, outcomes) are JSON text; a value JSON
cannot hold is stored as its ``str()``, a :class:`~decimal.Decimal` as its exact
decimal text. A run's owner spans four columns; a claim's tenant is a key that never
collides with no tenant. Imports nothing of corral but the stores' records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from decimal import Decimal
from typing import Any, cast

from corral.stores.owner import RunOwner
from corral.stores.records import (
    ApprovalRecord,
    AuditRecord,
    ClaimRecord,
    KillMode,
    RunRecord,
)
from corral.stores.rules import claim_state
from corral.stores.scopes import ScopedCharge

#: The run fields stored as they are (the rest are JSON, or the owner's four columns).
PLAIN_FIELDS = frozenset(
    {
        "tenant",
        "agent",
        "status",
        "stop_reason",
        "task",
        "answer",
        "policy_digest",
        "started_at",
        "ended_at",
        "heartbeat_at",
        "kill_mode",
        "served_by",
    }
)
RUN_FIELDS = frozenset(f.name for f in fields(RunRecord))


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_default)


def dumps_or_none(value: Any) -> str | None:
    return None if value is None else dumps(value)


def loads(text: Any) -> Any:
    """JSON text as stored; a row damaged beyond parsing comes back as its raw value."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def run_record(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        id=row[0],
        tenant=row[1],
        agent=row[2],
        status=row[3],
        stop_reason=row[4],
        stop=None if row[5] is None else json.loads(row[5]),
        task=row[6],
        answer=row[7],
        usage=json.loads(row[8]),
        policy_digest=row[9],
        started_at=row[10],
        ended_at=row[11],
        would_stop=tuple(json.loads(row[12])),
        owner=run_owner(row[13], row[14], row[15], row[16]),
        heartbeat_at=row[17],
        kill_mode=row[18],
        served_by=row[19],
    )


def run_owner(
    host: str | None, pid: int | None, node: str | None, started: str | None
) -> RunOwner | None:
    if pid is None:
        return None
    return RunOwner(host=host or "", pid=pid, node=node or "", started=started or "")


def owner_columns(owner: RunOwner | None) -> list[Any]:
    if owner is None:
        return [None, None, None, None]
    return [owner.host, owner.pid, owner.node, owner.started]


def audit_record(row: Sequence[Any]) -> AuditRecord:
    return AuditRecord(
        seq=row[0],
        run_id=row[1],
        event_seq=row[2],
        kind=row[3],
        at=row[4],
        tenant=row[5],
        actor=row[6],
        data=loads(row[7]),
        prev_hash=row[8],
        hash=row[9],
        mode=row[10],
    )


def _modes(text: str) -> tuple[KillMode, ...]:
    return tuple(cast(KillMode, m) for m in text.split(",") if m)


def approval_record(row: Sequence[Any]) -> ApprovalRecord:
    return ApprovalRecord(
        id=row[0],
        run_id=row[1],
        tool=row[2],
        args_digest=row[3],
        arguments=json.loads(row[4]),
        tenant=row[5],
        agent=row[6],
        status=row[7],
        approver=row[8],
        reason=row[9],
        created=row[10],
        expires=row[11],
        kill_modes=_modes(row[12]),
        kill_mode=row[13],
        decided_at=row[14],
        used_at=row[15],
        context=json.loads(row[16]),
    )


def claim_record(row: Sequence[Any], now: float) -> ClaimRecord:
    tenant_key, key, tool, digest, outcome, lease_until, created = row
    return ClaimRecord(
        key=key,
        tenant=tenant_key[1:] if tenant_key else None,
        tool=tool,
        digest=digest,
        status=claim_state(outcome, lease_until, now),
        created=created,
        lease_until=lease_until,
        outcome=None if outcome is None else json.loads(outcome),
    )


def charge_entry(c: ScopedCharge) -> list[Any]:
    """One charge a grant holds, as its JSON entry."""
    return [c.scope, c.calls, str(c.usd), c.window_ends, c.rolling]


def grant_charges(text: str) -> list[ScopedCharge]:
    """The charges a grant holds, from its JSON (older entries have no window)."""
    out = []
    for entry in json.loads(text):
        scope, calls, usd = entry[:3]
        window_ends, rolling = entry[3:5] if len(entry) >= 5 else (None, False)
        out.append(
            ScopedCharge(
                scope=scope,
                calls=calls,
                usd=Decimal(usd),
                window_ends=window_ends,
                rolling=bool(rolling),
            )
        )
    return out
