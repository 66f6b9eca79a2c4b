-- Version 2: the audit log. Every event is an audit record, sealed into one hash chain when it
-- is appended (corral.stores.chain): a gap-free global audit_seq, the previous record's hash,
-- its own hash, and the mode that made it (sha256, or hmac-sha256:<key id> when keyed).
-- tenant and actor travel with each event. Events written before this version are sealed by
-- the store, in this same transaction, right after this script.

ALTER TABLE corral_events
    ADD COLUMN tenant TEXT,
    ADD COLUMN actor TEXT,
    ADD COLUMN audit_seq BIGINT,
    ADD COLUMN prev_hash TEXT,
    ADD COLUMN hash TEXT,
    ADD COLUMN mode TEXT;

UPDATE corral_events AS e SET tenant = r.tenant, actor = r.agent
FROM corral_runs AS r WHERE r.id = e.run_id;

CREATE UNIQUE INDEX corral_events_audit_seq ON corral_events (audit_seq);

-- The chain's head: the last record's seq and hash. Appenders lock this one row (FOR UPDATE)
-- for their transaction, so concurrent appenders on any machine make one chain.
CREATE TABLE corral_audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO corral_audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Append-only: a sealed record cannot be changed, deleted or truncated through SQL. (A
-- superuser can still drop the triggers and edit rows; `corral audit verify` detects that.)
CREATE FUNCTION corral_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'corral_events is append-only: audit records cannot be changed or deleted';
END
$$;
CREATE TRIGGER corral_events_append_only BEFORE UPDATE OR DELETE ON corral_events
FOR EACH ROW WHEN (OLD.audit_seq IS NOT NULL) EXECUTE FUNCTION corral_append_only();
CREATE TRIGGER corral_events_no_truncate BEFORE TRUNCATE ON corral_events
FOR EACH STATEMENT EXECUTE FUNCTION corral_append_only();
