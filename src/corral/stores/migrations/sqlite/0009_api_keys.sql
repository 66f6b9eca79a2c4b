-- Version 9: API keys for the control plane (corral.controls.keys). One row per key: its
-- public id, its tenant (NULL for a global admin key), role and name, the SHA-256 digest of
-- its secret (never the secret), when it was made and by whom, when it expires (NULL:
-- never) and when it was revoked (NULL: not revoked). A key is never deleted: a revoked one
-- stays listed.

CREATE TABLE corral_api_keys (
    id         TEXT PRIMARY KEY,
    tenant     TEXT,
    role       TEXT NOT NULL CHECK (role IN ('agent', 'approver', 'admin')),
    name       TEXT NOT NULL DEFAULT '',
    digest     TEXT NOT NULL,
    created    REAL NOT NULL,
    expires    REAL,
    revoked    REAL,
    created_by TEXT NOT NULL DEFAULT '',
    CHECK (tenant IS NOT NULL OR role = 'admin')
);

CREATE INDEX corral_api_keys_tenant ON corral_api_keys (tenant, created);
