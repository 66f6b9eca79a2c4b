-- Version 12: the queue of tool-definition changes (corral.mcp.queue). One row per tool
-- (its policy name, its server and its own name) and new digest: the digest it was pinned
-- to (NULL for a tool no pin names), the new definition and the pinned one (JSON; NULL
-- when the pin kept none), when and by which process (host:pid) it was first seen, and
-- the operator's decision (pending, approved or rejected; who, when, why).

CREATE TABLE corral_definition_changes (
    name              TEXT NOT NULL,
    server            TEXT NOT NULL DEFAULT '',
    tool              TEXT NOT NULL DEFAULT '',
    pinned            TEXT,
    digest            TEXT NOT NULL,
    definition        TEXT NOT NULL,
    pinned_definition TEXT,
    first_seen        REAL NOT NULL,
    seen_by           TEXT NOT NULL DEFAULT '',
    status            TEXT NOT NULL DEFAULT 'pending',
    decided_at        REAL,
    decided_by        TEXT,
    reason            TEXT,
    PRIMARY KEY (name, digest)
);
