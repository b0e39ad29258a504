-- Search indexes that hold every value within the documented limits.
--
-- A btree entry holds at most 2704 bytes. A param value (6000 characters), a run or model
-- tag value (8000) or an experiment tag value (5000) that does not compress (a hash, base64)
-- is larger, so the plain (key, value) indexes of 0002 and 0004 made such writes fail.
-- These index the value's first 500 characters instead (at most 2000 bytes, with a key of at
-- most 250 ASCII characters), in byte order (text_pattern_ops). The search puts, next to
-- each exact comparison, the same comparison on left(value, 500): equality and IN find the
-- rows by (key, prefix), and a LIKE with a literal prefix by a range of prefixes; the exact
-- comparison then decides. Dataset input tags keep their (key, value) index: their values
-- are at most 500 characters, which fit.

DROP INDEX params_key_value_idx;
CREATE INDEX params_key_value_prefix_idx
    ON params (key, left(value, 500) text_pattern_ops) INCLUDE (run_pk);

DROP INDEX run_tags_key_value_idx;
CREATE INDEX run_tags_key_value_prefix_idx
    ON run_tags (key, left(value, 500) text_pattern_ops) INCLUDE (run_pk);

DROP INDEX experiment_tags_key_value_idx;
CREATE INDEX experiment_tags_key_value_prefix_idx
    ON experiment_tags (key, left(value, 500) text_pattern_ops);

DROP INDEX logged_model_params_key_value_idx;
CREATE INDEX logged_model_params_key_value_prefix_idx
    ON logged_model_params (key, left(value, 500) text_pattern_ops) INCLUDE (model_pk);

DROP INDEX logged_model_tags_key_value_idx;
CREATE INDEX logged_model_tags_key_value_prefix_idx
    ON logged_model_tags (key, left(value, 500) text_pattern_ops) INCLUDE (model_pk);

-- Statistics on the indexed expressions, so that the planner estimates them from the start.
ANALYZE params, run_tags, experiment_tags, logged_model_params, logged_model_tags;
