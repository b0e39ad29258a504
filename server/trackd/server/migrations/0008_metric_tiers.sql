-- Pre-aggregated blocks of metric series, read by StreamMetricEnvelopes instead of the
-- points. For each series and x axis (1: step, 2: timestamp; relative time is the
-- timestamp shifted by the run's start), level k holds one row per block of x values
-- [block << k, (block + 1) << k) that has points: on the step axis k = 8, 12, ..., 28, on
-- the timestamp axis k = 10, 14, ..., 30 (1,024 ms at the finest: timestamps are sparser
-- than steps), each level 16 times coarser than the one below. The finest level is the
-- narrowest bucket a read makes from the blocks; a read groups at most 16 blocks (48 for
-- a width of 3 * 2^g) into a bucket.
-- A row is exact over the points of its block:
--   count, nan_count, pos_inf_count, neg_inf_count: the points, and the NaN, +Inf, -Inf;
--   min_value, max_value: over the finite values, NULL when there is none;
--   x_min, x_max: the least and greatest x of a point (the block's actual extent);
--   y_min, y_max: on the timestamp axis, the least and greatest step (the points of a
--                 timestamp block are found through the primary key in that step range);
--                 NULL on the step axis;
--   first_y, first_value / last_y, last_value: the point with the least / greatest
--                 (x, y, value) in PostgreSQL's float8 order (NaN greatest); its x is
--                 x_min / x_max.
-- The writers of points maintain the rows in the transaction that inserts the points,
-- folding in only the points inserted, under the lock of the series row. No foreign key,
-- as for metric_points: series are never removed while their run exists.
CREATE TABLE metric_tiers (
    series_id     bigint   NOT NULL,
    axis          smallint NOT NULL,
    level         smallint NOT NULL,
    block         bigint   NOT NULL,
    count         bigint   NOT NULL,
    nan_count     bigint   NOT NULL,
    pos_inf_count bigint   NOT NULL,
    neg_inf_count bigint   NOT NULL,
    min_value     float8,
    max_value     float8,
    x_min         bigint   NOT NULL,
    x_max         bigint   NOT NULL,
    y_min         bigint,
    y_max         bigint,
    first_y       bigint   NOT NULL,
    first_value   float8   NOT NULL,
    last_y        bigint   NOT NULL,
    last_value    float8   NOT NULL,
    PRIMARY KEY (series_id, axis, level, block)
) WITH (fillfactor = 80);
-- Every commit rewrites the few coarse blocks its points fall in: the free fifth of each
-- page keeps those updates HOT (no new index entry, the old version pruned in place).

-- The blocks of the points stored before this migration: the finest level from the
-- points, each coarser level from the finest.
CREATE TEMPORARY TABLE metric_tiers_finest ON COMMIT DROP AS
SELECT p.series_id, a.axis, a.f AS level, a.x >> a.f AS block,
       count(*) AS count,
       count(*) FILTER (WHERE p.value = 'NaN') AS nan_count,
       count(*) FILTER (WHERE p.value = 'Infinity') AS pos_inf_count,
       count(*) FILTER (WHERE p.value = '-Infinity') AS neg_inf_count,
       min(p.value) FILTER (WHERE p.value > '-Infinity' AND p.value < 'Infinity') AS min_value,
       max(p.value) FILTER (WHERE p.value > '-Infinity' AND p.value < 'Infinity') AS max_value,
       min(a.x) AS x_min, max(a.x) AS x_max,
       CASE WHEN a.axis = 2 THEN min(a.y) END AS y_min,
       CASE WHEN a.axis = 2 THEN max(a.y) END AS y_max,
       (array_agg(a.y ORDER BY a.x, a.y, p.value))[1] AS first_y,
       (array_agg(p.value ORDER BY a.x, a.y, p.value))[1] AS first_value,
       (array_agg(a.y ORDER BY a.x DESC, a.y DESC, p.value DESC))[1] AS last_y,
       (array_agg(p.value ORDER BY a.x DESC, a.y DESC, p.value DESC))[1] AS last_value
FROM metric_points p
CROSS JOIN LATERAL (VALUES (1::smallint, p.step, p.ts, 8::smallint),
                           (2::smallint, p.ts, p.step, 10::smallint)) AS a(axis, x, y, f)
GROUP BY p.series_id, a.axis, a.f, a.x >> a.f;

INSERT INTO metric_tiers
SELECT * FROM metric_tiers_finest
UNION ALL
SELECT f.series_id, f.axis, f.level + 4 * l.n, f.block >> (4 * l.n),
       sum(f.count), sum(f.nan_count), sum(f.pos_inf_count), sum(f.neg_inf_count),
       min(f.min_value), max(f.max_value), min(f.x_min), max(f.x_max), min(f.y_min),
       max(f.y_max),
       (array_agg(f.first_y ORDER BY f.block))[1], (array_agg(f.first_value ORDER BY f.block))[1],
       (array_agg(f.last_y ORDER BY f.block DESC))[1],
       (array_agg(f.last_value ORDER BY f.block DESC))[1]
FROM metric_tiers_finest f
CROSS JOIN generate_series(1, 5) AS l(n)
GROUP BY f.series_id, f.axis, f.level + 4 * l.n, f.block >> (4 * l.n);
