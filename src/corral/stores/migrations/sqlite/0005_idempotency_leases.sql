-- Version 4: idempotency claims name their tool (for `corral idempotency list`), and can be
-- listed by state. A claim's lease is renewed by the process running its write; one whose
-- lease lapsed without an outcome is `unknown` (derived when read, not stored).
ALTER TABLE corral_claims ADD COLUMN tool TEXT NOT NULL DEFAULT '';
CREATE INDEX corral_claims_created ON corral_claims (created_at);
