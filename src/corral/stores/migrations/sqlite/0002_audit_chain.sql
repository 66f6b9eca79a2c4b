-- Version 2: the audit log. Every event is an audit record, sealed into one hash chain when it
-- is appended (corral.stores.chain): its id is its place in the chain (1, 2, ... without gaps,
-- given by the appender), prev_hash the previous record's hash, hash its own, mode what made
-- it (sha256, or hmac-sha256:<key id> when keyed). tenant and actor travel with each event.
-- Events written before this version are numbered and sealed by the store, in this same
-- transaction, right after this script.

ALTER TABLE corral_events ADD COLUMN tenant TEXT;
ALTER TABLE corral_events ADD COLUMN actor TEXT;
ALTER TABLE corral_events ADD COLUMN prev_hash TEXT;
ALTER TABLE corral_events ADD COLUMN hash TEXT;
ALTER TABLE corral_events ADD COLUMN mode TEXT;

UPDATE corral_events SET
    tenant = (SELECT r.tenant FROM corral_runs AS r WHERE r.id = corral_events.run_id),
    actor = (SELECT r.agent FROM corral_runs AS r WHERE r.id = corral_events.run_id);

-- The chain's head: the last record's id and hash. Appenders read and move it inside their
-- write transaction (BEGIN IMMEDIATE), so concurrent processes make one chain.
CREATE TABLE corral_audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO corral_audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Append-only: a sealed record cannot be changed or deleted through SQL. (Someone able to drop
-- these triggers can still edit the file; `corral audit verify` detects that.)
CREATE TRIGGER corral_events_no_update BEFORE UPDATE ON corral_events
WHEN OLD.hash IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'corral_events is append-only: an audit record cannot be changed');
END;
CREATE TRIGGER corral_events_no_delete BEFORE DELETE ON corral_events
WHEN OLD.hash IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'corral_events is append-only: an audit record cannot be deleted');
END;
