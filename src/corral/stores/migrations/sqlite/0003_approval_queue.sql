-- Version 3: approvals as a queue shared by processes. A waiting run files a request; an
-- operator decides it from another process; the run consumes an approval once (status
-- 'used'). kill_modes (the switch modes that block the call, comma-separated) and
-- kill_mode (the run's kill_switch.mode_when_enabled, for a switch set without a mode) let
-- a kill switch set from the CLI cancel exactly the pending approvals it covers. decided_at and used_at say when.

ALTER TABLE corral_approvals ADD COLUMN kill_modes TEXT NOT NULL
    DEFAULT 'stop_all,disable_writes,disable_expensive';
ALTER TABLE corral_approvals ADD COLUMN kill_mode TEXT;
ALTER TABLE corral_approvals ADD COLUMN decided_at REAL;
ALTER TABLE corral_approvals ADD COLUMN used_at REAL;

-- A resumed run finds its own open request for the same action.
CREATE INDEX corral_approvals_action ON corral_approvals (run_id, tool, args_digest);
