-- Compacted metric points. Recent points are rows of metric_points (fast to insert, an
-- exact duplicate skipped by its primary key); the background compaction moves the older
-- points of a series, 1,024 at a time in (step, timestamp, value) order, into one row
-- here, in the transaction that deletes their rows, under the series row's lock. A point
-- is therefore a row or in a block, never both and never neither.
-- A block holds a contiguous run of its series' points: the blocks of a series never
-- overlap in (step, ts, value) order, and the primary key orders them.
--   first_* / last_*: the block's least and greatest point (PostgreSQL's float8 order,
--                     NaN greatest);
--   count, nan_count, pos_inf_count, neg_inf_count: its points, and the NaN, +Inf, -Inf;
--   min_value, max_value: over its finite values, NULL when there is none;
--   ts_min, ts_max: the extent of its timestamps;
--   codec: how the three columns are encoded (1: each column compressed on its own by
--          pcodec's standalone format, version 1; lossless, NaN payloads and -0.0 kept);
--   steps, timestamps, "values": the columns, in the block's point order.
-- No foreign key, as for metric_points: series are never removed while their run exists.
CREATE TABLE metric_blocks (
    series_id     bigint   NOT NULL,
    first_step    bigint   NOT NULL,
    first_ts      bigint   NOT NULL,
    first_value   float8   NOT NULL,
    last_step     bigint   NOT NULL,
    last_ts       bigint   NOT NULL,
    last_value    float8   NOT NULL,
    count         integer  NOT NULL,
    nan_count     integer  NOT NULL,
    pos_inf_count integer  NOT NULL,
    neg_inf_count integer  NOT NULL,
    min_value     float8,
    max_value     float8,
    ts_min        bigint   NOT NULL,
    ts_max        bigint   NOT NULL,
    codec         smallint NOT NULL,
    steps         bytea    NOT NULL,
    timestamps    bytea    NOT NULL,
    "values"      bytea    NOT NULL,
    PRIMARY KEY (series_id, first_step, first_ts, first_value)
);
-- The columns are compressed already: TOAST stores them without trying pglz on them.
ALTER TABLE metric_blocks ALTER COLUMN steps SET STORAGE EXTERNAL,
                          ALTER COLUMN timestamps SET STORAGE EXTERNAL,
                          ALTER COLUMN "values" SET STORAGE EXTERNAL;

-- Per series: how many of its points are in blocks, and the greatest step of a block
-- (NULL: none). A writer checks a point against the blocks only when its step is at most
-- compacted_step (a late point); every other point cannot repeat a compacted one. Both
-- change only under the series row's lock, as the summaries do.
ALTER TABLE metric_series ADD COLUMN compacted_count bigint,
                          ADD COLUMN compacted_step bigint;
