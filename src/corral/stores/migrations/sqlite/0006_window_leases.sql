-- Version 4: leased grants and rolling windows. A grant is held by one process (holder) until
-- lease_until, renewed while the process lives; a lapsed grant is reclaimed (its holds
-- refunded) and kept, marked, until its windows end (ends), so that a late settlement still
-- charges what was really spent. Grants from before this version have no lease: they stay.
ALTER TABLE corral_grants ADD COLUMN holder TEXT;
ALTER TABLE corral_grants ADD COLUMN lease_until REAL;
ALTER TABLE corral_grants ADD COLUMN reclaimed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE corral_grants ADD COLUMN ends REAL;
-- No index: the table holds only the grants in flight (and reclaimed ones until their windows
-- end), and is scanned by holder or lease only by a renewal or a reclaim, not per call.

-- A rolling scope's sub-buckets still in its window, as JSON [[ends, calls, "usd"], ...]
-- (calls and usd hold their sums); NULL for a calendar window.
ALTER TABLE corral_scopes ADD COLUMN buckets TEXT;
