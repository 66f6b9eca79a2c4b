-- Version 4: degrade counters shared by every process (corral.breaker). One row per tool (or
-- model endpoint, "model:<name>") and window bucket: the bucket's start (epoch seconds, a
-- multiple of the degrade window length) and the attempts, failures and retries counted in it.
-- Writers add with an upsert (the row lock orders them); a retry is spent by a conditional
-- update under that lock, so the shared budget cannot be overspent.

CREATE TABLE corral_degrade (
    name     TEXT NOT NULL,
    start    DOUBLE PRECISION NOT NULL,
    calls    BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,
    retries  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (name, start)
);
