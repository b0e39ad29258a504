-- Search that scales with what matches, not with the size of the database: params,
-- run_tags and metric_series carry their run's experiment_id, and their search indexes
-- lead with it.
--
-- Before, the (key, value) indexes held the rows of every experiment, so a comparison
-- such as `params.p1 = 'Y'` found the matching rows of the whole database and the plan
-- joined them with the experiments' runs; an order on a metric read each candidate's
-- series by its run. With experiment_id first, a comparison reads only the searched
-- experiments' rows, and a search ordered by a metric walks each experiment's series in
-- value order (one index scan per experiment, merged), stopping once the page is full.
--
-- A run never moves to another experiment (no statement changes runs.experiment_id), so
-- the copy never goes stale; the writers of params, tags and series set it from the run.
--
-- Distribution (for a sharded PostgreSQL such as Citus): the per-run tables are assumed
-- distributed by run_pk, co-located with runs. Every unique key of params, run_tags and
-- metric_series still includes run_pk; the indexes added here are not unique, so they
-- put no constraint on the distribution column.
--
-- Existing databases migrate in place, in this migration's transaction: the search indexes
-- being replaced are dropped first, so that the backfill maintains only the primary keys;
-- the new indexes are built once, after it. Measured on the search-1m data (10 params, 10
-- tags and 10 series per run): see README.md, "Search indexes and experiment_id".

ALTER TABLE params ADD COLUMN experiment_id bigint;
ALTER TABLE run_tags ADD COLUMN experiment_id bigint;
ALTER TABLE metric_series ADD COLUMN experiment_id bigint;

DROP INDEX params_key_value_prefix_idx;
DROP INDEX params_key_number_idx;
DROP INDEX run_tags_key_value_prefix_idx;
DROP INDEX metric_series_key_latest_idx;

UPDATE params p SET experiment_id = r.experiment_id FROM runs r WHERE r.run_pk = p.run_pk;
UPDATE run_tags t SET experiment_id = r.experiment_id FROM runs r WHERE r.run_pk = t.run_pk;
UPDATE metric_series s SET experiment_id = r.experiment_id FROM runs r
WHERE r.run_pk = s.run_pk;

ALTER TABLE params ALTER COLUMN experiment_id SET NOT NULL;
ALTER TABLE run_tags ALTER COLUMN experiment_id SET NOT NULL;
ALTER TABLE metric_series ALTER COLUMN experiment_id SET NOT NULL;

-- The indexes of 0005 and 0011, behind the experiment. Values by their first 500
-- characters, as in 0005 (a btree entry holds at most 2704 bytes).
CREATE INDEX params_experiment_key_value_idx
    ON params (experiment_id, key, left(value, 500) text_pattern_ops) INCLUDE (run_pk);
CREATE INDEX params_experiment_key_number_idx
    ON params (experiment_id, key, number) INCLUDE (run_pk) WHERE number IS NOT NULL;
CREATE INDEX run_tags_experiment_key_value_idx
    ON run_tags (experiment_id, key, left(value, 500) text_pattern_ops) INCLUDE (run_pk);
-- Latest values by experiment and key: metric comparisons read a range of it, and a search
-- ordered by a metric walks it in value order. count is included so that a walk needs no
-- visit to the table to know a series has points.
CREATE INDEX metric_series_experiment_key_latest_idx
    ON metric_series (experiment_id, key, latest_value) INCLUDE (run_pk, count);

ANALYZE params, run_tags, metric_series;
