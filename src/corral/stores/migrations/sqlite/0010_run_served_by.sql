-- Version 10: the address of the `corral serve` process that holds a run an agent drives
-- over HTTP (`served_by`), so that a replica receiving a request for a run another holds
-- can pass it on, and a replica can take over a run whose holder is gone. NULL for runs
-- not driven through a server.
ALTER TABLE corral_runs ADD COLUMN served_by TEXT;
