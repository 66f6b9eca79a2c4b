-- Version 11: recordings for replay (corral.record.recording). One row per run: the
-- recording's digest (also in the run's run_end event, so the audit chain holds it), the
-- digest of the policy it ran under, when it was saved, its size, its body (JSON; NULL
-- once pruned: the digest stays) and when it was pruned. The policies' documents are kept
-- once per digest, so that a replay can rebuild the policy a run ran under.

CREATE TABLE corral_recordings (
    run_id        TEXT PRIMARY KEY,
    digest        TEXT NOT NULL,
    policy_digest TEXT NOT NULL DEFAULT '',
    saved_at      REAL NOT NULL,
    bytes         BIGINT NOT NULL DEFAULT 0,
    body          TEXT,
    pruned_at     REAL
);

CREATE TABLE corral_policies (
    digest   TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    saved_at REAL NOT NULL
);
