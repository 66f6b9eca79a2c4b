-- corral's shared state in PostgreSQL, version 1.
-- Money is NUMERIC (exact); times are epoch seconds (DOUBLE PRECISION, like the clock);
-- keys that are locked in sorted order use COLLATE "C" so SQL order equals Python order.

CREATE TABLE corral_runs (
    seq           BIGSERIAL,
    id            TEXT PRIMARY KEY,
    tenant        TEXT,
    agent         TEXT,
    status        TEXT NOT NULL DEFAULT 'running',
    stop_reason   TEXT,
    stop          JSONB,
    task          TEXT NOT NULL DEFAULT '',
    answer        TEXT,
    usage         JSONB NOT NULL DEFAULT '{}',
    policy_digest TEXT NOT NULL DEFAULT '',
    started_at    DOUBLE PRECISION NOT NULL DEFAULT 0,
    ended_at      DOUBLE PRECISION,
    would_stop    JSONB NOT NULL DEFAULT '[]',
    -- who runs it (see corral.stores.owner) and when it last wrote
    owner_host    TEXT,
    owner_pid     INTEGER,
    owner_node    TEXT,
    owner_started TEXT,
    heartbeat_at  DOUBLE PRECISION
);
CREATE INDEX corral_runs_started ON corral_runs (started_at DESC, seq);
CREATE INDEX corral_runs_tenant_started ON corral_runs (tenant, started_at DESC, seq);
CREATE INDEX corral_runs_running ON corral_runs (status) WHERE status = 'running';

CREATE TABLE corral_events (
    id     BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    at     DOUBLE PRECISION NOT NULL,
    data   JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX corral_events_run ON corral_events (run_id, id);

-- One row per budget scope (tenant:acme/1d, tool:browser.open/1d, ...): what is committed or
-- held in its current window. Reservations lock these rows in byte order of the scope (the
-- column's "C" collation), the one order every caller uses, so they never deadlock.
CREATE TABLE corral_scopes (
    scope       TEXT COLLATE "C" PRIMARY KEY,
    calls       BIGINT NOT NULL DEFAULT 0,
    usd         NUMERIC NOT NULL DEFAULT 0,
    window_ends DOUBLE PRECISION
);

-- A granted reservation until it is settled: what each scope holds for it.
CREATE TABLE corral_grants (
    id         TEXT PRIMARY KEY,
    charges    JSONB NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

-- Reserve every charge or none, in one statement (one round trip; the rows stay locked only
-- for the statement and its commit). Charges come in the caller's order, which decides which
-- refusal is reported; p_scopes lists their distinct scopes in byte order with the window a new
-- row starts with. Returns no row when granted (the grant is recorded as p_grant), else the
-- refusal. The rules are those of the in-memory store: an ended window starts again from zero.
CREATE FUNCTION corral_reserve(
    p_grant TEXT, p_now DOUBLE PRECISION, p_scopes TEXT[], p_windows DOUBLE PRECISION[],
    c_scope TEXT[], c_calls BIGINT[], c_usd NUMERIC[], c_max_calls BIGINT[], c_max_usd NUMERIC[],
    c_window DOUBLE PRECISION[]
) RETURNS TABLE (
    r_scope TEXT, r_dimension TEXT, r_limit NUMERIC, r_would_be NUMERIC,
    r_retry_after DOUBLE PRECISION
) LANGUAGE plpgsql AS $$
DECLARE
    v_calls BIGINT[];
    v_usd NUMERIC[];
    v_win DOUBLE PRECISION[];
    k INT;
BEGIN
    -- Create the scopes that do not exist yet, then lock them all, in byte order.
    INSERT INTO corral_scopes (scope, window_ends)
    SELECT u.scope, u.w FROM unnest(p_scopes, p_windows) WITH ORDINALITY AS u(scope, w, n)
    ORDER BY u.n
    ON CONFLICT (scope) DO NOTHING;
    SELECT array_agg(l.calls ORDER BY array_position(p_scopes, l.scope)),
           array_agg(l.usd ORDER BY array_position(p_scopes, l.scope)),
           array_agg(l.window_ends ORDER BY array_position(p_scopes, l.scope))
    INTO v_calls, v_usd, v_win
    FROM (SELECT s.scope, s.calls, s.usd, s.window_ends FROM corral_scopes AS s
          WHERE s.scope = ANY(p_scopes) ORDER BY s.scope FOR UPDATE) AS l;

    FOR i IN 1 .. coalesce(array_length(c_scope, 1), 0) LOOP
        k := array_position(p_scopes, c_scope[i]);
        IF v_win[k] IS NOT NULL AND p_now >= v_win[k] THEN
            v_calls[k] := 0;
            v_usd[k] := 0;
            v_win[k] := c_window[i];
        END IF;
        r_scope := c_scope[i];
        r_retry_after := CASE WHEN c_window[i] IS NOT NULL THEN greatest(0, c_window[i] - p_now) END;
        IF c_max_calls[i] IS NOT NULL AND c_calls[i] <> 0
                AND v_calls[k] + c_calls[i] > c_max_calls[i] THEN
            r_dimension := 'calls';
            r_limit := c_max_calls[i];
            r_would_be := v_calls[k] + c_calls[i];
            RETURN NEXT;
            RETURN;
        END IF;
        IF c_max_usd[i] IS NOT NULL AND c_usd[i] <> 0 AND v_usd[k] + c_usd[i] > c_max_usd[i] THEN
            r_dimension := 'usd';
            r_limit := c_max_usd[i];
            r_would_be := v_usd[k] + c_usd[i];
            RETURN NEXT;
            RETURN;
        END IF;
        v_calls[k] := v_calls[k] + c_calls[i];
        v_usd[k] := v_usd[k] + c_usd[i];
    END LOOP;

    UPDATE corral_scopes AS s SET calls = u.new_calls, usd = u.new_usd, window_ends = u.new_window
    FROM unnest(p_scopes, v_calls, v_usd, v_win) AS u(scope, new_calls, new_usd, new_window)
    WHERE s.scope = u.scope;
    -- What the grant holds, and in which window: settling after that window ended is a no-op.
    INSERT INTO corral_grants (id, charges, created_at)
    SELECT p_grant, coalesce(jsonb_agg(jsonb_build_object(
               'scope', c_scope[i], 'calls', c_calls[i], 'usd', c_usd[i]::text,
               'window_ends', v_win[array_position(p_scopes, c_scope[i])]) ORDER BY i), '[]'),
           p_now
    FROM generate_subscripts(c_scope, 1) AS i;
END
$$;

-- Replace a grant's holds by the actual amounts (refunding the unused part), once: deleting the
-- grant row consumes it, so a second settlement finds nothing. Only the scopes whose figures
-- change are locked (in byte order) and written: settling at the reserved amount touches none.
CREATE FUNCTION corral_settle(
    p_grant TEXT, a_scope TEXT[], a_calls BIGINT[], a_usd NUMERIC[]
) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    held JSONB;
    d_scope TEXT[];
    d_calls BIGINT[];
    d_usd NUMERIC[];
    d_window DOUBLE PRECISION[];
BEGIN
    DELETE FROM corral_grants WHERE id = p_grant RETURNING charges INTO held;
    IF held IS NULL THEN
        RETURN;
    END IF;
    WITH h AS (
        SELECT e->>'scope' AS scope, sum((e->>'calls')::BIGINT) AS calls,
               sum((e->>'usd')::NUMERIC) AS usd,
               (array_agg((e->>'window_ends')::DOUBLE PRECISION))[1] AS w
        FROM jsonb_array_elements(held) AS e GROUP BY 1
    ), a AS (
        SELECT u.scope, sum(u.calls) AS calls, sum(u.usd) AS usd
        FROM unnest(a_scope, a_calls, a_usd) AS u(scope, calls, usd) GROUP BY 1
    ), d AS (
        SELECT h.scope, coalesce(a.calls, 0) - h.calls AS calls,
               coalesce(a.usd, 0) - h.usd AS usd, h.w
        FROM h LEFT JOIN a ON a.scope = h.scope
    )
    SELECT array_agg(d.scope), array_agg(d.calls), array_agg(d.usd), array_agg(d.w)
    INTO d_scope, d_calls, d_usd, d_window
    FROM d WHERE d.calls <> 0 OR d.usd <> 0;
    IF d_scope IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM corral_scopes WHERE scope = ANY(d_scope) ORDER BY scope FOR UPDATE;
    -- A hold from a window that has since ended belongs to no window that still counts.
    UPDATE corral_scopes AS s SET calls = s.calls + u.calls, usd = s.usd + u.usd
    FROM unnest(d_scope, d_calls, d_usd, d_window) AS u(scope, calls, usd, w)
    WHERE s.scope = u.scope AND s.window_ends IS NOT DISTINCT FROM u.w;
END
$$;

CREATE TABLE corral_kill_switches (
    seq    BIGSERIAL,
    scope  TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    mode   TEXT,
    reason TEXT NOT NULL DEFAULT '',
    actor  TEXT NOT NULL DEFAULT '',
    set_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, target)
);

CREATE TABLE corral_approvals (
    seq         BIGSERIAL,
    id          TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL,
    tool        TEXT NOT NULL,
    args_digest TEXT NOT NULL,
    arguments   JSONB NOT NULL,
    tenant      TEXT,
    agent       TEXT,
    status      TEXT NOT NULL DEFAULT 'pending',
    approver    TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL DEFAULT '',
    created     DOUBLE PRECISION NOT NULL DEFAULT 0,
    expires     DOUBLE PRECISION NOT NULL DEFAULT 0
);
CREATE INDEX corral_approvals_status ON corral_approvals (status, seq);

-- Idempotency claims, unique per (tenant, key): the primary key is what makes a claim exclusive.
-- tenant_key is '' for no tenant and ':' || tenant otherwise, so "no tenant" and a tenant named
-- '' stay apart without relying on NULLS NOT DISTINCT.
CREATE TABLE corral_claims (
    tenant_key  TEXT NOT NULL,
    key         TEXT NOT NULL,
    digest      TEXT NOT NULL,
    outcome     JSONB,
    lease_until DOUBLE PRECISION NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant_key, key)
);

CREATE TABLE corral_breakers (
    name  TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    until DOUBLE PRECISION NOT NULL DEFAULT 0
);
