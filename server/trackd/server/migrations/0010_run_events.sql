-- The watch log (WatchRun): what happened to runs, appended in the transaction of what it
-- describes, so that a position (a seq) replays exactly what committed. Rows older than
-- --watch-retention are pruned by a periodic sweep.
--
-- kind 1: points of one series committed by one transaction (one row per series per group
--         commit): key, points (how many) and columns (`points` little-endian int64 steps,
--         then as many int64 timestamps, then as many float64 values).
-- kind 2: a run's status after a change (run creation included): status, end_time.
-- kind 3: params and tags a run logged: names and vals, the first `params` of them params.
CREATE TABLE run_events (
    seq           bigint   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_pk        bigint   NOT NULL,
    experiment_id bigint   NOT NULL,
    kind          smallint NOT NULL,
    key           text,
    points        integer,
    columns       bytea,
    status        smallint,
    end_time      bigint,
    names         text[],
    vals          text[],
    params        integer,
    created_ms    bigint   NOT NULL
);
-- Point columns are dense doubles and integers: compressing them costs CPU on every
-- commit and saves little.
ALTER TABLE run_events ALTER COLUMN columns SET STORAGE EXTERNAL;
CREATE INDEX run_events_run_idx ON run_events (run_pk, seq);
CREATE INDEX run_events_experiment_idx ON run_events (experiment_id, seq);

-- The highest seq the sweep has pruned: a position below it may have lost events.
CREATE TABLE run_events_pruned (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    through bigint  NOT NULL
);
INSERT INTO run_events_pruned (one, through) VALUES (true, 0);

-- Which experiments are watched: point events (kind 1) are recorded only for experiments
-- with a row here whose until_ms (the database's clock, ms since the epoch) is ahead. A
-- watch call registers its experiment before it takes its position and keeps until_ms
-- --watch-retention ahead while it runs, so interest lasts while watched and for the
-- retention after, and a dropped watcher resumes exactly. since_seq is a seq drawn when
-- this stretch of continuous interest began: every point of the experiment committed
-- after any position >= since_seq was recorded; a position below it may have missed
-- points, and resuming from it is FAILED_PRECONDITION (domain/watch.py explains the
-- protocol).
CREATE TABLE watch_interest (
    experiment_id bigint PRIMARY KEY,
    until_ms      bigint NOT NULL,
    since_seq     bigint NOT NULL
);
