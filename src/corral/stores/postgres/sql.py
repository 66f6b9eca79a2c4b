"""The PostgreSQL store's statements: every SQL text it sends, in one place.

Plain strings with ``%s`` placeholders, and :mod:`psycopg.sql` compositions (built
once, or by a builder for the statements whose columns or conditions vary); the
schema itself, with the ``corral_reserve``, ``corral_settle`` and ``corral_reclaim``
functions, is in ``migrations/postgres/``. Imports nothing of corral.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from psycopg import sql

RUN_COLUMNS = (
    "id", "tenant", "agent", "status", "stop_reason", "stop", "task", "answer", "usage",
    "policy_digest", "started_at", "ended_at", "would_stop",
    "owner_host", "owner_pid", "owner_node", "owner_started", "heartbeat_at", "kill_mode",
    "served_by",
)  # fmt: skip
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
# One statement: the fast path of an append whose store knew the head (see events.py).
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


# -- runs ----------------------------------------------------------------------------------
GET_RUN = select("corral_runs", RUN_COLUMNS, "WHERE id = %s")
LIST_RUNS = select("corral_runs", RUN_COLUMNS, "ORDER BY started_at DESC, seq LIMIT %s")
LIST_TENANT_RUNS = select(
    "corral_runs", RUN_COLUMNS, "WHERE tenant = %s ORDER BY started_at DESC, seq LIMIT %s"
)
RUNNING_RUNS = select(
    "corral_runs", ("id", *OWNER_COLUMNS, "heartbeat_at"), "WHERE status = 'running'"
)
HEARTBEAT = "UPDATE corral_runs SET heartbeat_at = %s WHERE id = %s"


# A server taking over a run: only from the holder it saw, and only a run not ended.
TAKE_RUN = """
UPDATE corral_runs SET served_by = %s, status = 'running', ended_at = NULL, heartbeat_at = %s,
    owner_host = %s, owner_pid = %s, owner_node = %s, owner_started = %s
WHERE id = %s AND served_by IS NOT DISTINCT FROM %s AND status IN ('running', 'interrupted')
RETURNING 1
"""


def update_run(columns: Iterable[str]) -> sql.Composed:
    """Set ``columns`` of one run (the last parameter is its id); a row comes back if it
    exists."""
    return sql.SQL("UPDATE corral_runs SET {} WHERE id = %s RETURNING 1").format(
        sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in columns)
    )


# -- events and the audit chain ------------------------------------------------------------
RUN_EVENTS = (
    "SELECT run_id, seq, kind, at, data, tenant, actor FROM corral_events "
    "WHERE run_id = %s ORDER BY id"
)
AUDIT_HEAD = "SELECT seq, hash FROM corral_audit_head"
AUDIT_RECORDS = (
    f"SELECT {AUDIT_COLUMNS} FROM corral_events WHERE audit_seq > %s ORDER BY audit_seq LIMIT %s"
)
MOVE_HEAD = "UPDATE corral_audit_head SET seq = %s, hash = %s WHERE id = 1"
# The events written before the audit chain existed (migration 2), to seal.
UNSEALED = (
    "SELECT id, run_id, seq, kind, at, data, tenant, actor FROM corral_events "
    "WHERE audit_seq IS NULL ORDER BY id"
)

# -- shared budgets (the functions are the schema's) ---------------------------------------
RESERVE = (
    "SELECT * FROM corral_reserve(%s, %s, %s::text[], %s::float8[], %s::text[], "
    "%s::int8[], %s::numeric[], %s::int8[], %s::numeric[], %s::float8[], "
    "%s::bool[], %s, %s, %s)"
)
SETTLE = "SELECT corral_settle(%s, %s::text[], %s::int8[], %s::numeric[])"
RENEW_GRANTS = "UPDATE corral_grants SET lease_until = %s WHERE holder = %s AND NOT reclaimed"
RECLAIM = "SELECT corral_reclaim(%s)"
SCOPE_USAGE = "SELECT calls, usd FROM corral_scopes WHERE scope = %s"

# -- kill switches -------------------------------------------------------------------------
KILL_SWITCHES = (
    "SELECT scope, target, mode, reason, actor, extract(epoch FROM set_at) "
    "FROM corral_kill_switches ORDER BY seq"
)
SET_KILL_SWITCH = (
    "WITH s AS (INSERT INTO corral_kill_switches (scope, target, mode, reason, actor) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (scope, target) DO UPDATE SET "
    "mode = EXCLUDED.mode, reason = EXCLUDED.reason, actor = EXCLUDED.actor, "
    f"set_at = now() RETURNING scope, target) {NOTIFY_KILL}"
)
CLEAR_KILL_SWITCH = (
    "WITH s AS (DELETE FROM corral_kill_switches WHERE scope = %s AND target = %s "
    f"RETURNING scope, target) {NOTIFY_KILL}"
)

# -- approvals -----------------------------------------------------------------------------
INSERT_APPROVAL = upsert("corral_approvals", APPROVAL_FIELDS)
GET_APPROVAL = select("corral_approvals", APPROVAL_FIELDS, "WHERE id = %s")
APPROVAL_EXISTS = "SELECT 1 FROM corral_approvals WHERE id = %s"


def move_approval(when: str) -> sql.Composed:
    """Move one approval from the status expected to another, stamping ``when``
    (``decided_at`` or ``used_at``); the approval comes back if it moved."""
    return sql.SQL(
        "UPDATE corral_approvals SET status = %s, approver = COALESCE(%s::text, approver), "
        "reason = COALESCE(%s::text, reason), {} = %s WHERE id = %s AND status = %s "
        "RETURNING {}"
    ).format(sql.Identifier(when), sql.SQL(", ").join(map(sql.Identifier, APPROVAL_FIELDS)))


def list_approvals(columns: Sequence[str]) -> sql.Composed:
    """Approvals in the order they were made, those whose ``columns`` equal the parameters."""
    where = " AND ".join(f"{k} = %s" for k in columns)
    return select(
        "corral_approvals", APPROVAL_FIELDS, f"{'WHERE ' + where if where else ''} ORDER BY seq"
    )


# -- idempotency claims --------------------------------------------------------------------
COMPLETE_CLAIM = "UPDATE corral_claims SET outcome = %s WHERE tenant_key = %s AND key = %s"
RELEASE_CLAIM = "DELETE FROM corral_claims WHERE tenant_key = %s AND key = %s"
RENEW_CLAIM = (
    "UPDATE corral_claims SET lease_until = %s "
    "WHERE tenant_key = %s AND key = %s AND outcome IS NULL"
)
LOOKUP_CLAIM = f"SELECT {CLAIM_COLUMNS} FROM corral_claims WHERE tenant_key = %s AND key = %s"
CLAIM_OF_TENANT = "tenant_key = %s"
# What each derived status is in the table (the unknown and in-flight ones take now).
CLAIM_STATUS = {
    "done": "outcome IS NOT NULL",
    "unknown": "outcome IS NULL AND lease_until <= %s",
    "in_flight": "outcome IS NULL AND lease_until > %s",
}
RESOLVE_DONE = f"UPDATE corral_claims SET outcome = %s {UNKNOWN_CLAIM}"
RESOLVE_TAKEN = f"UPDATE corral_claims SET lease_until = %s {UNKNOWN_CLAIM}"
RESOLVE_FREED = f"DELETE FROM corral_claims {UNKNOWN_CLAIM}"


def list_claims(where: Sequence[str]) -> str:
    """Claims meeting every condition of ``where`` (none: all), oldest first (the last
    parameter is the limit)."""
    return (
        f"SELECT {CLAIM_COLUMNS} FROM corral_claims WHERE {' AND '.join(['true', *where])} "
        "ORDER BY created_at, key LIMIT %s"
    )


# -- breakers and degrade counters ---------------------------------------------------------
BREAKER = "SELECT state, until FROM corral_breakers WHERE name = %s"
SET_BREAKER = (
    "INSERT INTO corral_breakers (name, state, until) VALUES (%s, %s, %s) "
    "ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state, until = EXCLUDED.until"
)
DEGRADE_RESET = "DELETE FROM corral_degrade WHERE name = %s"
DEGRADE_BUCKETS = "SELECT start, calls, failures, retries FROM corral_degrade WHERE name = %s"

# -- the schema ----------------------------------------------------------------------------
# Concurrent CREATE SCHEMA IF NOT EXISTS can still collide: it is serialized by this lock.
LOCK_SCHEMA = "SELECT pg_advisory_xact_lock(hashtext(%s))"

# The figures of ended runs that started in [since, until), with an aggregate of their events
# (see corral.stores.figures): answered model calls and their tokens, tool calls' seconds, the
# model ids, the tool definitions' digests of the run's start.
RUN_FIGURES = """
SELECT r.id, r.tenant, r.agent, r.status, r.stop_reason, r.started_at, r.policy_digest, r.usage,
    COUNT(e.id) FILTER (WHERE e.kind = 'model_call' AND e.data->>'outcome' = 'ok'),
    COALESCE(SUM(
        (CASE WHEN jsonb_typeof(e.data->'input_tokens') = 'number'
              THEN (e.data->>'input_tokens')::numeric ELSE 0 END)
      + (CASE WHEN jsonb_typeof(e.data->'output_tokens') = 'number'
              THEN (e.data->>'output_tokens')::numeric ELSE 0 END)
    ) FILTER (WHERE e.kind = 'model_call' AND e.data->>'outcome' = 'ok'), 0),
    array_agg((e.data->>'seconds')::float8 ORDER BY e.id) FILTER (WHERE e.kind = 'tool_call'
        AND jsonb_typeof(e.data->'seconds') = 'number'),
    array_agg(DISTINCT e.data->>'model') FILTER (WHERE e.kind = 'model_call'
        AND jsonb_typeof(e.data->'model') = 'string'),
    (array_agg(e.data->'tools' ORDER BY e.id) FILTER (WHERE e.kind = 'run_start'
        AND jsonb_typeof(e.data->'tools') = 'object'))[1]
FROM corral_runs AS r
LEFT JOIN corral_events AS e
    ON e.run_id = r.id AND e.kind IN ('run_start', 'model_call', 'tool_call')
WHERE r.started_at >= %s AND r.started_at < %s AND r.status <> 'running'
    AND (%s::text IS NULL OR r.tenant = %s) AND (%s::text IS NULL OR r.agent = %s)
GROUP BY r.id
ORDER BY r.started_at, r.id
LIMIT %s
"""


def create_schema(schema: str) -> sql.Composed:
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
