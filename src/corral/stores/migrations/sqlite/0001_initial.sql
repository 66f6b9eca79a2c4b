-- corral's shared state in SQLite, version 1.
-- Money is TEXT holding the exact decimal (arithmetic happens in Python inside the write
-- transaction); JSON columns are TEXT; times are epoch seconds (REAL). Ordering "as inserted"
-- uses the rowid.

CREATE TABLE corral_runs (
    id            TEXT PRIMARY KEY,
    tenant        TEXT,
    agent         TEXT,
    status        TEXT NOT NULL DEFAULT 'running',
    stop_reason   TEXT,
    stop          TEXT,
    task          TEXT NOT NULL DEFAULT '',
    answer        TEXT,
    usage         TEXT NOT NULL DEFAULT '{}',
    policy_digest TEXT NOT NULL DEFAULT '',
    started_at    REAL NOT NULL DEFAULT 0,
    ended_at      REAL,
    would_stop    TEXT NOT NULL DEFAULT '[]',
    -- who runs it (see corral.stores.owner) and when it last wrote
    owner_host    TEXT,
    owner_pid     INTEGER,
    owner_node    TEXT,
    owner_started TEXT,
    heartbeat_at  REAL
);
CREATE INDEX corral_runs_started ON corral_runs (started_at DESC);
CREATE INDEX corral_runs_tenant_started ON corral_runs (tenant, started_at DESC);
CREATE INDEX corral_runs_running ON corral_runs (status) WHERE status = 'running';

CREATE TABLE corral_events (
    id     INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    at     REAL NOT NULL,
    data   TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX corral_events_run ON corral_events (run_id, id);

-- One row per budget scope (tenant:acme/1d, tool:browser.open/1d, ...): what is committed or
-- held in its current window.
CREATE TABLE corral_scopes (
    scope       TEXT PRIMARY KEY,
    calls       INTEGER NOT NULL DEFAULT 0,
    usd         TEXT NOT NULL DEFAULT '0',
    window_ends REAL
);

-- A granted reservation until it is settled: what each scope holds for it (JSON).
CREATE TABLE corral_grants (
    id         TEXT PRIMARY KEY,
    charges    TEXT NOT NULL,
    created_at REAL NOT NULL
);

CREATE TABLE corral_kill_switches (
    scope  TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    mode   TEXT,
    reason TEXT NOT NULL DEFAULT '',
    actor  TEXT NOT NULL DEFAULT '',
    set_at REAL NOT NULL,
    PRIMARY KEY (scope, target)
);

CREATE TABLE corral_approvals (
    id          TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL,
    tool        TEXT NOT NULL,
    args_digest TEXT NOT NULL,
    arguments   TEXT NOT NULL,
    tenant      TEXT,
    agent       TEXT,
    status      TEXT NOT NULL DEFAULT 'pending',
    approver    TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL DEFAULT '',
    created     REAL NOT NULL DEFAULT 0,
    expires     REAL NOT NULL DEFAULT 0
);
CREATE INDEX corral_approvals_status ON corral_approvals (status);

-- Idempotency claims, unique per (tenant, key): the primary key makes a claim exclusive.
-- tenant_key is '' for no tenant and ':' || tenant otherwise.
CREATE TABLE corral_claims (
    tenant_key  TEXT NOT NULL,
    key         TEXT NOT NULL,
    digest      TEXT NOT NULL,
    outcome     TEXT,
    lease_until REAL NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (tenant_key, key)
);

CREATE TABLE corral_breakers (
    name  TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    until REAL NOT NULL DEFAULT 0
);
