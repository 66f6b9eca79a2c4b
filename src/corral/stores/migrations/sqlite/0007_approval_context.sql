-- Version 7: what an approver is told besides the action itself: the run's step, the model's
-- tool-call identity, its stated purpose (the text of that turn), the tool's declared cost
-- and effect and the write's idempotency key, as one JSON object (redacted like the
-- arguments). Requests filed before this version have none.
ALTER TABLE corral_approvals ADD COLUMN context TEXT NOT NULL DEFAULT '{}';
