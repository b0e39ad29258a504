-- Indexes for search: a comparison on a param, tag or metric value finds its runs through
-- (key, value) without touching other keys; run_pk is included so that the join back to
-- runs needs no heap visit.
CREATE INDEX params_key_value_idx ON params (key, value) INCLUDE (run_pk);
CREATE INDEX run_tags_key_value_idx ON run_tags (key, value) INCLUDE (run_pk);
CREATE INDEX metric_series_key_latest_idx ON metric_series (key, latest_value) INCLUDE (run_pk);
CREATE INDEX experiment_tags_key_value_idx ON experiment_tags (key, value);
