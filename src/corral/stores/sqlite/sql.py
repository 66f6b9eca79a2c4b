"""The SQLite store's statements: every SQL text it sends, by concern, in one place.

Plain strings (and a few builders for the statements whose columns or conditions vary)
with ``?`` placeholders; the schema itself is in ``migrations/sqlite/``. Imports nothing
of corral.
"""

from __future__ import annotations

from collections.abc import Sequence

# -- the connection ------------------------------------------------------------------------
WAL = "PRAGMA journal_mode=WAL"
SYNCHRONOUS = "PRAGMA synchronous={}"
BUSY_TIMEOUT = "PRAGMA busy_timeout = {}"
AUTOCHECKPOINT = "PRAGMA wal_autocheckpoint = {}"
BEGIN = "BEGIN IMMEDIATE"  # takes the write lock before the transaction reads anything
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"

# -- runs ----------------------------------------------------------------------------------
RUN_COLUMNS = (
    "id, tenant, agent, status, stop_reason, stop, task, answer, usage, policy_digest, "
    "started_at, ended_at, would_stop, owner_host, owner_pid, owner_node, owner_started, "
    "heartbeat_at, kill_mode, served_by"
)
INSERT_RUN = (
    f"INSERT OR REPLACE INTO corral_runs ({RUN_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
GET_RUN = f"SELECT {RUN_COLUMNS} FROM corral_runs WHERE id = ?"
LIST_RUNS = f"SELECT {RUN_COLUMNS} FROM corral_runs ORDER BY started_at DESC, rowid LIMIT ?"
LIST_TENANT_RUNS = (
    f"SELECT {RUN_COLUMNS} FROM corral_runs WHERE tenant = ? "
    "ORDER BY started_at DESC, rowid LIMIT ?"
)
HEARTBEAT = "UPDATE corral_runs SET heartbeat_at = ? WHERE id = ?"
# A server taking over a run: only from the holder it saw, and only a run not ended.
TAKE_RUN = (
    "UPDATE corral_runs SET served_by = ?, status = 'running', ended_at = NULL, "
    "heartbeat_at = ?, owner_host = ?, owner_pid = ?, owner_node = ?, owner_started = ? "
    "WHERE id = ? AND served_by IS ? AND status IN ('running', 'interrupted')"
)
# The heartbeat renewed by an append: a run already ended keeps its last one.
HEARTBEAT_RUNNING = "UPDATE corral_runs SET heartbeat_at = ? WHERE id = ? AND status = 'running'"
RUNNING_RUNS = (
    "SELECT id, owner_host, owner_pid, owner_node, owner_started, heartbeat_at, "
    "tenant, agent FROM corral_runs WHERE status = 'running'"
)
# Only if nothing renewed the run since it was judged (its owner may be alive elsewhere).
MARK_INTERRUPTED = (
    "UPDATE corral_runs SET status = 'interrupted', ended_at = ? "
    "WHERE id = ? AND status = 'running' AND heartbeat_at IS ?"
)
NEXT_EVENT_SEQ = "SELECT COALESCE(MAX(seq), 0) + 1 FROM corral_events WHERE run_id = ?"


def update_run(columns: Sequence[str]) -> str:
    """Set ``columns`` of one run (the last parameter is its id)."""
    assignments = ", ".join(f"{c} = ?" for c in columns)
    return f"UPDATE corral_runs SET {assignments} WHERE id = ?"


# -- events and the audit chain ------------------------------------------------------------
RUN_EVENTS = (
    "SELECT run_id, seq, kind, at, data, tenant, actor FROM corral_events "
    "WHERE run_id = ? ORDER BY id"
)
AUDIT_COLUMNS = "id, run_id, seq, kind, at, tenant, actor, data, prev_hash, hash, mode"
AUDIT_RECORDS = f"SELECT {AUDIT_COLUMNS} FROM corral_events WHERE id > ? ORDER BY id LIMIT ?"
AUDIT_HEAD = "SELECT seq, hash FROM corral_audit_head"
MOVE_HEAD = "UPDATE corral_audit_head SET seq = ?, hash = ?"
# Moves the head only if it is still the one given (the last two parameters).
MOVE_HEAD_FROM = "UPDATE corral_audit_head SET seq = ?, hash = ? WHERE seq = ? AND hash = ?"
INSERT_EVENT = (
    "INSERT INTO corral_events (id, run_id, seq, kind, at, tenant, actor, data, "
    "prev_hash, hash, mode) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The events written before the audit chain existed (migration 2), to number and seal.
UNSEALED = (
    "SELECT id, run_id, seq, kind, at, data, tenant, actor FROM corral_events "
    "WHERE hash IS NULL ORDER BY id"
)
RENUMBER_EVENT = "UPDATE corral_events SET id = ? WHERE id = ?"
SEAL_EVENT = (
    "UPDATE corral_events SET prev_hash = ?, hash = ?, mode = ?, at = ?, data = ? WHERE id = ?"
)

# -- shared budgets ------------------------------------------------------------------------
INSERT_GRANT = (
    "INSERT INTO corral_grants (id, charges, created_at, holder, lease_until, ends) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
GET_GRANT = "SELECT charges, reclaimed FROM corral_grants WHERE id = ?"
DELETE_GRANT = "DELETE FROM corral_grants WHERE id = ?"
RENEW_GRANTS = "UPDATE corral_grants SET lease_until = ? WHERE holder = ? AND reclaimed = 0"
LAPSED_GRANTS = "SELECT id, charges FROM corral_grants WHERE reclaimed = 0 AND lease_until < ?"
MARK_RECLAIMED = "UPDATE corral_grants SET reclaimed = 1 WHERE id = ?"
FORGET_RECLAIMED = "DELETE FROM corral_grants WHERE reclaimed = 1 AND ends <= ?"
SCOPE_USAGE = "SELECT calls, usd FROM corral_scopes WHERE scope = ?"
LOAD_SCOPE = "SELECT calls, usd, window_ends, buckets FROM corral_scopes WHERE scope = ?"
SAVE_SCOPE = (
    "INSERT OR REPLACE INTO corral_scopes (scope, calls, usd, window_ends, buckets) "
    "VALUES (?, ?, ?, ?, ?)"
)

# -- kill switches -------------------------------------------------------------------------
KILL_SWITCHES = (
    "SELECT scope, target, mode, reason, actor, set_at FROM corral_kill_switches ORDER BY rowid"
)
SET_KILL_SWITCH = (
    "INSERT INTO corral_kill_switches (scope, target, mode, reason, actor, set_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope, target) DO UPDATE SET "
    "mode = excluded.mode, reason = excluded.reason, actor = excluded.actor, "
    "set_at = excluded.set_at"
)
CLEAR_KILL_SWITCH = "DELETE FROM corral_kill_switches WHERE scope = ? AND target = ?"

# -- approvals -----------------------------------------------------------------------------
APPROVAL_COLUMNS = (
    "id, run_id, tool, args_digest, arguments, tenant, agent, status, approver, reason, "
    "created, expires, kill_modes, kill_mode, decided_at, used_at, context"
)
INSERT_APPROVAL = (
    f"INSERT OR REPLACE INTO corral_approvals ({APPROVAL_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
GET_APPROVAL = f"SELECT {APPROVAL_COLUMNS} FROM corral_approvals WHERE id = ?"


def move_approval(when: str) -> str:
    """Move one approval from the status expected to another, stamping ``when``
    (``decided_at`` or ``used_at``); changes nothing when it is not in that status."""
    return (
        f"UPDATE corral_approvals SET status = ?, approver = COALESCE(?, approver), "
        f"reason = COALESCE(?, reason), {when} = ? WHERE id = ? AND status = ?"
    )


def list_approvals(columns: Sequence[str]) -> str:
    """Approvals in the order they were made, those whose ``columns`` equal the parameters."""
    where = " AND ".join(f"{k} = ?" for k in columns)
    return (
        f"SELECT {APPROVAL_COLUMNS} FROM corral_approvals "
        f"{'WHERE ' + where if where else ''} ORDER BY rowid"
    )


# -- idempotency claims --------------------------------------------------------------------
CLAIM_COLUMNS = "tenant_key, key, tool, digest, outcome, lease_until, created_at"
CLAIM_HELD = (
    "SELECT digest, outcome, lease_until FROM corral_claims WHERE tenant_key = ? AND key = ?"
)
# Takes a free key; changes nothing (no row counted) when the key is held already.
INSERT_CLAIM = (
    "INSERT INTO corral_claims (tenant_key, key, digest, outcome, lease_until, "
    "created_at, tool) VALUES (?, ?, ?, NULL, ?, ?, ?) "
    "ON CONFLICT (tenant_key, key) DO NOTHING"
)
COMPLETE_CLAIM = "UPDATE corral_claims SET outcome = ? WHERE tenant_key = ? AND key = ?"
RELEASE_CLAIM = "DELETE FROM corral_claims WHERE tenant_key = ? AND key = ?"
RENEW_CLAIM = (
    "UPDATE corral_claims SET lease_until = ? WHERE tenant_key = ? AND key = ? AND outcome IS NULL"
)
LOOKUP_CLAIM = f"SELECT {CLAIM_COLUMNS} FROM corral_claims WHERE tenant_key = ? AND key = ?"
CLAIM_OF_TENANT = "tenant_key = ?"
# What each derived status is in the table (the unknown and in-flight ones take now).
CLAIM_STATUS = {
    "done": "outcome IS NOT NULL",
    "unknown": "outcome IS NULL AND lease_until <= ?",
    "in_flight": "outcome IS NULL AND lease_until > ?",
}
# A claim that is unknown: no outcome, and its lease lapsed (the last parameter is now).
_UNKNOWN = "WHERE tenant_key = ? AND key = ? AND outcome IS NULL AND lease_until <= ?"
RESOLVE_DONE = f"UPDATE corral_claims SET outcome = ? {_UNKNOWN}"
RESOLVE_TAKEN = f"UPDATE corral_claims SET lease_until = ? {_UNKNOWN}"
RESOLVE_FREED = f"DELETE FROM corral_claims {_UNKNOWN}"


def list_claims(where: Sequence[str]) -> str:
    """Claims meeting every condition of ``where`` (none: all), oldest first (the last
    parameter is the limit)."""
    return (
        f"SELECT {CLAIM_COLUMNS} FROM corral_claims WHERE {' AND '.join(['1 = 1', *where])} "
        "ORDER BY created_at, rowid LIMIT ?"
    )


# -- breakers and degrade counters ---------------------------------------------------------
BREAKER = "SELECT state, until FROM corral_breakers WHERE name = ?"
SET_BREAKER = "INSERT OR REPLACE INTO corral_breakers (name, state, until) VALUES (?, ?, ?)"
DEGRADE_ADD = (
    "INSERT INTO corral_degrade (name, start, calls, failures) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (name, start) DO UPDATE SET calls = calls + excluded.calls, "
    "failures = failures + excluded.failures"
)
DEGRADE_PRUNE = "DELETE FROM corral_degrade WHERE name = ? AND start < ?"
DEGRADE_BUCKETS = "SELECT start, calls, failures, retries FROM corral_degrade WHERE name = ?"
DEGRADE_SPEND_RETRY = "UPDATE corral_degrade SET retries = retries + 1 WHERE name = ? AND start = ?"
DEGRADE_RESET = "DELETE FROM corral_degrade WHERE name = ?"

# The figures of ended runs that started in [since, until), with an aggregate of their events
# (see corral.stores.figures): answered model calls and their tokens, tool calls' seconds, the
# model ids, the tool definitions' digests of the run's start.
RUN_FIGURES = """
SELECT r.id, r.tenant, r.agent, r.status, r.stop_reason, r.started_at, r.policy_digest, r.usage,
    SUM(CASE WHEN e.kind = 'model_call' AND json_extract(e.data, '$.outcome') = 'ok'
        THEN 1 ELSE 0 END),
    SUM(CASE WHEN e.kind = 'model_call' AND json_extract(e.data, '$.outcome') = 'ok'
        THEN (CASE WHEN json_type(e.data, '$.input_tokens') = 'integer'
                   THEN json_extract(e.data, '$.input_tokens') ELSE 0 END)
           + (CASE WHEN json_type(e.data, '$.output_tokens') = 'integer'
                   THEN json_extract(e.data, '$.output_tokens') ELSE 0 END)
        ELSE 0 END),
    json_group_array(CASE WHEN e.kind = 'tool_call'
        AND json_type(e.data, '$.seconds') IN ('integer', 'real')
        THEN json_extract(e.data, '$.seconds') END),
    json_group_array(DISTINCT CASE WHEN e.kind = 'model_call'
        THEN json_extract(e.data, '$.model') END),
    MAX(CASE WHEN e.kind = 'run_start' AND json_type(e.data, '$.tools') = 'object'
        THEN json_extract(e.data, '$.tools') END)
FROM corral_runs AS r
LEFT JOIN corral_events AS e
    ON e.run_id = r.id AND e.kind IN ('run_start', 'model_call', 'tool_call')
WHERE r.started_at >= ? AND r.started_at < ? AND r.status != 'running'
    AND (? IS NULL OR r.tenant = ?) AND (? IS NULL OR r.agent = ?)
GROUP BY r.id
ORDER BY r.started_at, r.id
LIMIT ?
"""
