-- Version 4: leased grants and rolling windows. A grant is held by one process (holder) until
-- lease_until, renewed while the process lives; a lapsed grant is reclaimed (its holds
-- refunded) and kept, marked, until its windows end (ends), so that a late settlement still
-- charges what was really spent. Grants from before this version have no lease: they stay.
ALTER TABLE corral_grants ADD COLUMN holder TEXT;
ALTER TABLE corral_grants ADD COLUMN lease_until DOUBLE PRECISION;
ALTER TABLE corral_grants ADD COLUMN reclaimed BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE corral_grants ADD COLUMN ends DOUBLE PRECISION;
-- No index: the table holds only the grants in flight (and reclaimed ones until their windows
-- end), and is scanned by holder or lease only by a renewal or a reclaim, not per call.

-- A rolling scope's sub-buckets still in its window: what was charged in each, counted until
-- `ends`. The scope's row holds their sums (and no window_ends: it never starts again).
CREATE TABLE corral_buckets (
    scope TEXT COLLATE "C" NOT NULL,
    ends  DOUBLE PRECISION NOT NULL,
    calls BIGINT NOT NULL DEFAULT 0,
    usd   NUMERIC NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, ends)
);

DROP FUNCTION corral_reserve(
    TEXT, DOUBLE PRECISION, TEXT[], DOUBLE PRECISION[], TEXT[], BIGINT[], NUMERIC[], BIGINT[],
    NUMERIC[], DOUBLE PRECISION[]
);

-- Reserve every charge or none, in one statement (one round trip; the rows stay locked only
-- for the statement and its commit). Charges come in the caller's order, which decides which
-- refusal is reported; p_scopes lists their distinct scopes in byte order with the window a new
-- row starts with (NULL for a rolling scope). Returns no row when granted (the grant is recorded
-- as p_grant, held by p_holder until p_lease_until), else the refusal. The rules are those of
-- the Python stores (stores/base.py): an ended window starts again from zero; a rolling scope
-- first drops the buckets that left its window, and its refusal says when enough more will.
CREATE FUNCTION corral_reserve(
    p_grant TEXT, p_now DOUBLE PRECISION, p_scopes TEXT[], p_windows DOUBLE PRECISION[],
    c_scope TEXT[], c_calls BIGINT[], c_usd NUMERIC[], c_max_calls BIGINT[], c_max_usd NUMERIC[],
    c_window DOUBLE PRECISION[], c_rolling BOOLEAN[], p_holder TEXT,
    p_lease_until DOUBLE PRECISION, p_ends DOUBLE PRECISION
) RETURNS TABLE (
    r_scope TEXT, r_dimension TEXT, r_limit NUMERIC, r_would_be NUMERIC,
    r_retry_after DOUBLE PRECISION
) LANGUAGE plpgsql AS $$
DECLARE
    v_calls BIGINT[];
    v_usd NUMERIC[];
    v_win DOUBLE PRECISION[];
    k INT;
    g RECORD;
    left_calls BIGINT;
    left_usd NUMERIC;
    any_rolling BOOLEAN := true = ANY(c_rolling);
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

    IF any_rolling THEN
        -- Buckets that left their window no longer count.
        FOR g IN DELETE FROM corral_buckets AS b WHERE b.scope = ANY(p_scopes) AND b.ends <= p_now
                 RETURNING b.scope, b.calls, b.usd LOOP
            k := array_position(p_scopes, g.scope);
            v_calls[k] := v_calls[k] - g.calls;
            v_usd[k] := v_usd[k] - g.usd;
        END LOOP;
    END IF;

    FOR i IN 1 .. coalesce(array_length(c_scope, 1), 0) LOOP
        k := array_position(p_scopes, c_scope[i]);
        IF v_win[k] IS NOT NULL AND p_now >= v_win[k] THEN
            v_calls[k] := 0;
            v_usd[k] := 0;
            v_win[k] := c_window[i];
        END IF;
        r_scope := c_scope[i];
        r_dimension := NULL;
        IF c_max_calls[i] IS NOT NULL AND c_calls[i] <> 0
                AND v_calls[k] + c_calls[i] > c_max_calls[i] THEN
            r_dimension := 'calls';
            r_limit := c_max_calls[i];
            r_would_be := v_calls[k] + c_calls[i];
        ELSIF c_max_usd[i] IS NOT NULL AND c_usd[i] <> 0
                AND v_usd[k] + c_usd[i] > c_max_usd[i] THEN
            r_dimension := 'usd';
            r_limit := c_max_usd[i];
            r_would_be := v_usd[k] + c_usd[i];
        END IF;
        IF r_dimension IS NOT NULL THEN
            r_retry_after := CASE WHEN c_window[i] IS NOT NULL THEN greatest(0, c_window[i] - p_now) END;
            IF c_rolling[i] THEN
                -- When enough buckets, oldest first, have left the window for this charge to fit.
                left_calls := v_calls[k];
                left_usd := v_usd[k];
                FOR g IN SELECT b.ends, b.calls, b.usd FROM corral_buckets AS b
                         WHERE b.scope = c_scope[i] ORDER BY b.ends LOOP
                    left_calls := left_calls - g.calls;
                    left_usd := left_usd - g.usd;
                    IF (c_max_calls[i] IS NULL OR c_calls[i] = 0
                            OR left_calls + c_calls[i] <= c_max_calls[i])
                       AND (c_max_usd[i] IS NULL OR c_usd[i] = 0
                            OR left_usd + c_usd[i] <= c_max_usd[i]) THEN
                        r_retry_after := greatest(0, g.ends - p_now);
                        EXIT;
                    END IF;
                END LOOP;
            END IF;
            RETURN NEXT;
            RETURN;
        END IF;
        v_calls[k] := v_calls[k] + c_calls[i];
        v_usd[k] := v_usd[k] + c_usd[i];
    END LOOP;

    UPDATE corral_scopes AS s SET calls = u.new_calls, usd = u.new_usd, window_ends = u.new_window
    FROM unnest(p_scopes, v_calls, v_usd, v_win) AS u(scope, new_calls, new_usd, new_window)
    WHERE s.scope = u.scope;
    IF any_rolling THEN
        INSERT INTO corral_buckets AS b (scope, ends, calls, usd)
        SELECT c_scope[i], c_window[i], sum(c_calls[i]), sum(c_usd[i])
        FROM generate_subscripts(c_scope, 1) AS i WHERE c_rolling[i] GROUP BY 1, 2
        ON CONFLICT (scope, ends) DO UPDATE
        SET calls = b.calls + EXCLUDED.calls, usd = b.usd + EXCLUDED.usd;
    END IF;
    -- What the grant holds, and in which window (or bucket): settling or reclaiming after that
    -- window ended changes nothing.
    INSERT INTO corral_grants (id, charges, created_at, holder, lease_until, ends)
    SELECT p_grant, coalesce(jsonb_agg(jsonb_build_object(
               'scope', c_scope[i], 'calls', c_calls[i], 'usd', c_usd[i]::text,
               'window_ends', CASE WHEN c_rolling[i] THEN c_window[i]
                                   ELSE v_win[array_position(p_scopes, c_scope[i])] END,
               'rolling', c_rolling[i]) ORDER BY i), '[]'),
           p_now, p_holder, p_lease_until, p_ends
    FROM generate_subscripts(c_scope, 1) AS i;
END
$$;

-- Add (negative: refund) amounts to the scopes (and rolling buckets) where a grant held them,
-- only while that window or bucket still counts. The scopes are locked in byte order.
CREATE FUNCTION corral_apply(
    d_scope TEXT[], d_calls BIGINT[], d_usd NUMERIC[], d_window DOUBLE PRECISION[],
    d_rolling BOOLEAN[]
) RETURNS VOID LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM corral_scopes WHERE scope = ANY(d_scope) ORDER BY scope FOR UPDATE;
    WITH u AS (
        SELECT * FROM unnest(d_scope, d_calls, d_usd, d_window, d_rolling)
            AS u(scope, calls, usd, w, r)
    ), buckets AS (
        UPDATE corral_buckets AS b SET calls = b.calls + u.calls, usd = b.usd + u.usd
        FROM u WHERE u.r AND b.scope = u.scope AND b.ends = u.w
        RETURNING b.scope, b.ends
    ), counted AS (
        SELECT u.scope, sum(u.calls) AS calls, sum(u.usd) AS usd FROM u JOIN corral_scopes AS s
        ON s.scope = u.scope
        WHERE CASE WHEN u.r
                   THEN EXISTS (SELECT FROM buckets AS b WHERE b.scope = u.scope AND b.ends = u.w)
                   ELSE s.window_ends IS NOT DISTINCT FROM u.w END
        GROUP BY u.scope
    )
    UPDATE corral_scopes AS s SET calls = s.calls + counted.calls, usd = s.usd + counted.usd
    FROM counted WHERE s.scope = counted.scope;
END
$$;

-- Replace a grant's holds by the actual amounts (refunding the unused part), once: deleting the
-- grant row consumes it, so a second settlement finds nothing. A grant that was reclaimed (its
-- holds already refunded) adds the actual amounts instead. Only the scopes whose figures change
-- are locked (in byte order) and written: settling at the reserved amount touches none.
CREATE OR REPLACE FUNCTION corral_settle(
    p_grant TEXT, a_scope TEXT[], a_calls BIGINT[], a_usd NUMERIC[]
) RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    held JSONB;
    was_reclaimed BOOLEAN;
    d_scope TEXT[];
    d_calls BIGINT[];
    d_usd NUMERIC[];
    d_window DOUBLE PRECISION[];
    d_rolling BOOLEAN[];
BEGIN
    DELETE FROM corral_grants WHERE id = p_grant RETURNING charges, reclaimed
    INTO held, was_reclaimed;
    IF held IS NULL THEN
        RETURN;
    END IF;
    WITH h AS (
        SELECT e->>'scope' AS scope, sum((e->>'calls')::BIGINT) AS calls,
               sum((e->>'usd')::NUMERIC) AS usd,
               (array_agg((e->>'window_ends')::DOUBLE PRECISION))[1] AS w,
               bool_or(coalesce((e->>'rolling')::BOOLEAN, false)) AS r
        FROM jsonb_array_elements(held) AS e GROUP BY 1
    ), a AS (
        SELECT u.scope, sum(u.calls) AS calls, sum(u.usd) AS usd
        FROM unnest(a_scope, a_calls, a_usd) AS u(scope, calls, usd) GROUP BY 1
    ), d AS (
        SELECT h.scope,
               coalesce(a.calls, 0) - CASE WHEN was_reclaimed THEN 0 ELSE h.calls END AS calls,
               coalesce(a.usd, 0) - CASE WHEN was_reclaimed THEN 0 ELSE h.usd END AS usd,
               h.w, h.r
        FROM h LEFT JOIN a ON a.scope = h.scope
    )
    SELECT array_agg(d.scope), array_agg(d.calls), array_agg(d.usd), array_agg(d.w),
           array_agg(d.r)
    INTO d_scope, d_calls, d_usd, d_window, d_rolling
    FROM d WHERE d.calls <> 0 OR d.usd <> 0;
    IF d_scope IS NOT NULL THEN
        PERFORM corral_apply(d_scope, d_calls, d_usd, d_window, d_rolling);
    END IF;
END
$$;

-- Reclaim the grants whose lease lapsed before p_now: mark them reclaimed and refund their holds
-- in the windows that still count. Grants another transaction holds are left for the next time
-- (SKIP LOCKED: a reclaim never waits on a settlement or a renewal). Reclaimed grants whose
-- windows have all ended are forgotten. Returns how many grants were reclaimed.
CREATE FUNCTION corral_reclaim(p_now DOUBLE PRECISION) RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    n INT;
    lapsed_charges JSONB;
    d_scope TEXT[];
    d_calls BIGINT[];
    d_usd NUMERIC[];
    d_window DOUBLE PRECISION[];
    d_rolling BOOLEAN[];
BEGIN
    WITH lapsed AS (
        SELECT id FROM corral_grants WHERE NOT reclaimed AND lease_until < p_now
        FOR UPDATE SKIP LOCKED
    ), marked AS (
        UPDATE corral_grants AS g SET reclaimed = true FROM lapsed WHERE g.id = lapsed.id
        RETURNING g.charges
    )
    SELECT coalesce(jsonb_agg(marked.charges), '[]'), count(*) INTO lapsed_charges, n
    FROM marked;
    IF n > 0 THEN
        WITH e AS (
            SELECT x->>'scope' AS scope, (x->>'calls')::BIGINT AS calls,
                   (x->>'usd')::NUMERIC AS usd, (x->>'window_ends')::DOUBLE PRECISION AS w,
                   coalesce((x->>'rolling')::BOOLEAN, false) AS r
            FROM jsonb_array_elements(lapsed_charges) AS g, jsonb_array_elements(g) AS x
        ), d AS (
            SELECT e.scope, -sum(e.calls) AS calls, -sum(e.usd) AS usd, e.w, e.r FROM e
            WHERE e.w IS NULL OR e.w > p_now GROUP BY e.scope, e.w, e.r
        )
        SELECT array_agg(d.scope), array_agg(d.calls), array_agg(d.usd), array_agg(d.w),
               array_agg(d.r)
        INTO d_scope, d_calls, d_usd, d_window, d_rolling
        FROM d WHERE d.calls <> 0 OR d.usd <> 0;
        IF d_scope IS NOT NULL THEN
            PERFORM corral_apply(d_scope, d_calls, d_usd, d_window, d_rolling);
        END IF;
    END IF;
    DELETE FROM corral_grants WHERE reclaimed AND ends <= p_now;
    RETURN n;
END
$$;
