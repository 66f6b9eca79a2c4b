"""Statement texts and row conversions for the PostgreSQL store (:mod:`corral.stores.postgres`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from decimal import Decimal
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from corral.stores.base import ApprovalRecord, ClaimRecord, RunRecord, claim_state
from corral.stores.owner import RunOwner

RUN_COLUMNS = (
    "id", "tenant", "agent", "status", "stop_reason", "stop", "task", "answer", "usage",
    "policy_digest", "started_at", "ended_at", "would_stop",
    "owner_host", "owner_pid", "owner_node", "owner_started", "heartbeat_at", "kill_mode",
)  # fmt: skip
RUN_FIELDS = frozenset(f.name for f in fields(RunRecord)) - {"id"}
OWNER_COLUMNS = ("owner_host", "owner_pid", "owner_node", "owner_started")
# Insert the claim unless the key is held; otherwise read the holder. The primary key lets
# exactly one claimant win. A holder that committed after this statement began is not visible
# to it (no row comes back), and the statement is run again.
CLAIM = """
WITH won AS (
    INSERT INTO corral_claims (tenant_key, key, digest, lease_until, created_at, tool)
    VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING true
)
SELECT true, NULL, NULL, NULL FROM won
UNION ALL
SELECT false, digest, outcome, lease_until FROM corral_claims
WHERE tenant_key = %s AND key = %s AND NOT EXISTS (SELECT FROM won)
"""
CLAIM_COLUMNS = "tenant_key, key, tool, digest, outcome, lease_until, created_at"
# A claim that is unknown: no outcome, and its lease lapsed (the last parameter is now).
UNKNOWN_CLAIM = "WHERE tenant_key = %s AND key = %s AND outcome IS NULL AND lease_until <= %s"
# The audit chain's head, locked for the rest of the transaction: every appender takes this
# one row first, so appends are serialized into one chain (and never deadlock on it).
LOCK_HEAD = "SELECT seq, hash FROM corral_audit_head WHERE id = 1 FOR UPDATE"
# Write sealed events (data as canonical JSON text) and renew running runs' heartbeats, if
# the chain's head is still the one they were sealed after: the head row is locked only if it
# is free (SKIP LOCKED: a busy head fails at once instead of queueing) and still holds the old
# (seq, hash); then it moves to the new one and the events are written, else nothing is.
# One statement: the fast path of an append whose store knew the head (see postgres.py).
# The parameters: old seq, old hash, new seq, new hash, mode, the ten arrays, now.
_INSERT_SEALED = """
    INSERT INTO corral_events
        (run_id, seq, kind, at, data, tenant, actor, audit_seq, prev_hash, hash, mode)
    SELECT r, s, k, a, d::jsonb, t, ac, q, p, h, %s
    FROM unnest(%s::text[], %s::int4[], %s::text[], %s::float8[], %s::text[], %s::text[],
                %s::text[], %s::int8[], %s::text[], %s::text[])
         WITH ORDINALITY AS v(r, s, k, a, d, t, ac, q, p, h, n)
"""
APPEND_IF_HEAD = f"""
WITH current AS (
    SELECT id FROM corral_audit_head WHERE id = 1 AND seq = %s AND hash = %s
    FOR UPDATE SKIP LOCKED
), head AS (
    UPDATE corral_audit_head AS h SET seq = %s, hash = %s FROM current WHERE h.id = current.id
    RETURNING 1
), added AS (
    {_INSERT_SEALED}
    WHERE EXISTS (SELECT FROM head)
    ORDER BY n
    RETURNING run_id
), beat AS (
    UPDATE corral_runs SET heartbeat_at = %s
    WHERE id IN (SELECT run_id FROM added) AND status = 'running'
)
SELECT EXISTS (SELECT FROM head)
"""
# The same, unconditionally, inside a transaction that holds the head (LOCK_HEAD).
# The parameters: new seq, new hash, mode, the ten arrays, now.
APPEND_LOCKED = f"""
WITH head AS (
    UPDATE corral_audit_head SET seq = %s, hash = %s WHERE id = 1
), added AS (
    {_INSERT_SEALED}
    ORDER BY n
    RETURNING run_id
)
UPDATE corral_runs SET heartbeat_at = %s
WHERE id IN (SELECT run_id FROM added) AND status = 'running'
"""
# Seal the events written before the audit chain existed (migration 2).
SEAL_UNSEALED = """
UPDATE corral_events AS e SET audit_seq = v.q, prev_hash = v.p, hash = v.h, mode = %s,
    at = v.a, data = v.d::jsonb
FROM unnest(%s::int8[], %s::int8[], %s::text[], %s::text[], %s::float8[], %s::text[])
     AS v(id, q, p, h, a, d)
WHERE e.id = v.id
"""
AUDIT_COLUMNS = "audit_seq, run_id, seq, kind, at, tenant, actor, data, prev_hash, hash, mode"
# Tells listeners (LISTEN corral_kill_switch) which switch changed, when the change commits.
NOTIFY_KILL = "SELECT pg_notify('corral_kill_switch', scope || ':' || target) FROM s"
# Mark the runs still as judged (status, heartbeat); returns what their `interrupted` events
# need (the store seals and appends them in the same transaction).
MARK_INTERRUPTED = """
WITH c AS (SELECT * FROM unnest(%s::text[], %s::float8[], %s::text[]) AS c(id, beat, why))
UPDATE corral_runs AS r SET status = 'interrupted', ended_at = coalesce(c.beat, %s)
FROM c WHERE r.id = c.id AND r.status = 'running' AND r.heartbeat_at IS NOT DISTINCT FROM c.beat
RETURNING r.id, c.why, r.tenant, r.agent,
    coalesce((SELECT max(e.seq) FROM corral_events AS e WHERE e.run_id = r.id), 0) + 1
"""
APPROVAL_FIELDS = (
    "id", "run_id", "tool", "args_digest", "arguments", "tenant", "agent", "status",
    "approver", "reason", "created", "expires", "kill_modes", "kill_mode", "decided_at",
    "used_at", "context",
)  # fmt: skip


def default(value: Any) -> Any:
    """JSON for what ``json`` cannot hold: decimals as their exact text, else ``str()``."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, default=default, separators=(",", ":"))


def jsonb(value: Any) -> Jsonb:
    """A JSONB parameter (see :func:`default`)."""
    return Jsonb(value, dumps=dumps)


def tenant_key(tenant: str | None) -> str:
    """``''`` for no tenant, ``':' + tenant`` otherwise: the two never collide."""
    return "" if tenant is None else ":" + tenant


def upsert(table: str, columns: Sequence[str]) -> sql.Composed:
    """Insert a row, or replace every column of the row with the same id."""
    return sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in columns if c != "id"
        ),
    )


def select(table: str, fields: Sequence[str], rest: str) -> sql.Composed:
    """``SELECT fields FROM table`` followed by ``rest`` (a literal: WHERE, ORDER BY, ...)."""
    return sql.SQL("SELECT {} FROM {} ").format(
        sql.SQL(", ").join(map(sql.Identifier, fields)), sql.Identifier(table)
    ) + sql.SQL(rest)


def run_columns(values: Mapping[str, Any]) -> dict[str, Any]:
    """RunRecord fields → column values (the owner spans four columns; JSON as JSONB)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name == "owner":
            parts = (
                (None,) * 4 if value is None else (value.host, value.pid, value.node, value.started)
            )
            out.update(zip(OWNER_COLUMNS, parts, strict=True))
        elif name in ("stop", "usage") and value is not None:
            out[name] = jsonb(dict(value))
        elif name == "would_stop":
            out[name] = jsonb([dict(w) for w in value])
        else:
            out[name] = value
    return out


def run_owner(
    host: str | None, pid: int | None, node: str | None, started: str | None
) -> RunOwner | None:
    if pid is None:
        return None
    return RunOwner(host=host or "", pid=pid, node=node or "", started=started or "")


def run_record(row: Sequence[Any]) -> RunRecord:
    data = dict(zip(RUN_COLUMNS, row, strict=True))
    owner = run_owner(*(data.pop(c) for c in OWNER_COLUMNS))
    return RunRecord(
        **data | {"usage": data["usage"] or {}, "would_stop": tuple(data["would_stop"] or ())},
        owner=owner,
    )


def approval_record(row: Sequence[Any]) -> ApprovalRecord:
    data = dict(zip(APPROVAL_FIELDS, row, strict=True))
    data["kill_modes"] = tuple(m for m in data["kill_modes"].split(",") if m)
    return ApprovalRecord(**data)


# Degrade counters: add to the bucket (name, start), drop the buckets before the previous one,
# and return the bucket's counts with the previous bucket's (NULLs when it has none).
# Parameters: name, start, calls, failures, name, previous start, previous start.
DEGRADE_ADD = """
WITH up AS (
    INSERT INTO corral_degrade AS d (name, start, calls, failures) VALUES (%s, %s, %s, %s)
    ON CONFLICT (name, start) DO UPDATE SET calls = d.calls + EXCLUDED.calls,
        failures = d.failures + EXCLUDED.failures
    RETURNING name, calls, failures, retries
), gone AS (
    DELETE FROM corral_degrade WHERE name = %s AND start < %s
)
SELECT up.calls, up.failures, up.retries, p.calls, p.failures, p.retries
FROM up LEFT JOIN corral_degrade AS p ON p.name = up.name AND p.start = %s
"""

# Spend one retry of the current bucket if it fits the budget over the weighted window (the
# rule of corral.stores.base.retry_fits); a row comes back when it was spent. The caller's
# transaction holds the current bucket's row lock. Parameters: weight, name, previous start,
# ratio, weight, floor, name, start.
DEGRADE_SPEND_RETRY = """
WITH prev AS (
    SELECT coalesce(max(calls), 0) AS calls, coalesce(max(retries), 0) AS retries,
           %s::float8 AS weight
    FROM corral_degrade WHERE name = %s AND start = %s
)
UPDATE corral_degrade AS d SET retries = d.retries + 1
FROM prev
WHERE d.retries + prev.weight * prev.retries + 1
      <= %s::float8 * (d.calls + %s::float8 * prev.calls) + %s
  AND d.name = %s AND d.start = %s
RETURNING d.retries
"""


def claim_record(row: Sequence[Any], now: float) -> ClaimRecord:
    tk, key, tool, digest, outcome, lease_until, created = row
    return ClaimRecord(
        key=key,
        tenant=tk[1:] if tk else None,
        tool=tool,
        digest=digest,
        status=claim_state(outcome, lease_until, now),
        created=created,
        lease_until=lease_until,
        outcome=outcome,
    )
