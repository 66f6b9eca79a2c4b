-- Version 4: degrade counters shared by every process (corral.breaker). One row per tool (or
-- model endpoint, "model:<name>") and window bucket: the bucket's start (epoch seconds, a
-- multiple of the degrade window length) and the attempts, failures and retries counted in it.
-- Writers add under the write lock (BEGIN IMMEDIATE) and drop the buckets older than the one
-- before the current one.

CREATE TABLE corral_degrade (
    name     TEXT NOT NULL,
    start    REAL NOT NULL,
    calls    INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    retries  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name, start)
);
