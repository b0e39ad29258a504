-- Liveness: when the server last heard from a run, so that a RUNNING run gone silent reads
-- as UNRESPONSIVE (derived when runs are read, never stored as a status).
--
-- runs.heartbeat_ms: the server's time of the run's creation, of its last Heartbeat, and of
-- an UpdateRun that set it RUNNING. metric_series.touched_ms: the server's time of the last
-- commit that added points to the series; the ingest already updates that row with the
-- series' summary, so a point costs no extra write. A run's last sign of life is the
-- greater of the two (UNIQUE (run_pk, key) makes the per-run max an index range), or its
-- start time for runs that had none of them yet.
--
-- Both columns are nullable without a default: adding them rewrites no table, and runs and
-- series from before this migration read as never heard from.
ALTER TABLE runs ADD COLUMN heartbeat_ms bigint;
ALTER TABLE metric_series ADD COLUMN touched_ms bigint;
