-- Version 8: the kill-switch mode a run applies when a switch is set without one (its
-- policy's kill_switch.mode_when_enabled), recorded when the run starts or resumes, so
-- `corral kill enable` can say what each running run will do. Runs started before this
-- version have none.
ALTER TABLE corral_runs ADD COLUMN kill_mode TEXT;
