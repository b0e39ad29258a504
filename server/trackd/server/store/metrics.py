"""SQL for metric series (latest point and summary per run and key) and their points."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from trackd.server.store.pool import Connection

# Creates the missing series of a run (keys sorted, so that concurrent creators meet the
# unique index in one order) and returns the ids of all the asked keys.
ENSURE_SERIES = """
WITH wanted AS (SELECT DISTINCT k FROM unnest($2::text[]) AS k),
created AS (
    INSERT INTO metric_series (run_pk, key)
    SELECT $1, k FROM wanted ORDER BY k
    ON CONFLICT (run_pk, key) DO NOTHING
    RETURNING key, series_id
)
SELECT key, series_id FROM created
UNION ALL
SELECT s.key, s.series_id FROM metric_series s
WHERE s.run_pk = $1 AND s.key IN (SELECT k FROM wanted)"""

# Inserts points (an exact duplicate is skipped) and folds the inserted ones, and only
# those, into each series' latest point and summary, in one statement. The caller holds the
# lock of every run whose series it writes.
INSERT_POINTS = """
WITH ins AS (
    INSERT INTO metric_points (series_id, step, ts, value)
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::float8[])
    ON CONFLICT DO NOTHING
    RETURNING series_id, step, ts, value
),
agg AS (
    SELECT series_id,
           count(*) AS n,
           count(*) FILTER (WHERE value = 'NaN') AS n_nan,
           count(*) FILTER (WHERE value = 'Infinity') AS n_pinf,
           count(*) FILTER (WHERE value = '-Infinity') AS n_ninf,
           count(*) FILTER (WHERE value NOT IN ('NaN', 'Infinity', '-Infinity')) AS n_fin,
           min(value) FILTER (WHERE value <> 'NaN') AS vmin,
           max(value) FILTER (WHERE value <> 'NaN') AS vmax,
           avg(value) FILTER (WHERE value NOT IN ('NaN', 'Infinity', '-Infinity')) AS fmean,
           var_pop(value) FILTER (WHERE value NOT IN ('NaN', 'Infinity', '-Infinity')) AS fvar,
           min(step) AS smin,
           max(step) AS smax
    FROM ins GROUP BY series_id
),
lat AS (
    SELECT DISTINCT ON (series_id) series_id, step, ts, value
    FROM ins ORDER BY series_id, step DESC, ts DESC, value DESC
),
old AS (
    SELECT s.series_id,
           (s.count - s.nan_count - s.pos_inf_count - s.neg_inf_count)::float8 AS n_fin,
           s.latest_step IS NULL
             OR (l.step, l.ts, l.value) > (s.latest_step, s.latest_ts, s.latest_value)
             AS newer
    FROM metric_series s JOIN lat l ON l.series_id = s.series_id
)
UPDATE metric_series s SET
    count = s.count + a.n,
    nan_count = s.nan_count + a.n_nan,
    pos_inf_count = s.pos_inf_count + a.n_pinf,
    neg_inf_count = s.neg_inf_count + a.n_ninf,
    min_value = least(s.min_value, a.vmin),
    max_value = greatest(s.max_value, a.vmax),
    finite_mean = CASE WHEN a.n_fin = 0 THEN s.finite_mean
        ELSE s.finite_mean + (a.fmean - s.finite_mean) * a.n_fin / (o.n_fin + a.n_fin) END,
    finite_m2 = CASE WHEN a.n_fin = 0 THEN s.finite_m2
        ELSE s.finite_m2 + a.fvar * a.n_fin
             + (a.fmean - s.finite_mean) ^ 2 * o.n_fin * a.n_fin / (o.n_fin + a.n_fin) END,
    first_step = least(s.first_step, a.smin),
    last_step = greatest(s.last_step, a.smax),
    latest_step = CASE WHEN o.newer THEN l.step ELSE s.latest_step END,
    latest_ts = CASE WHEN o.newer THEN l.ts ELSE s.latest_ts END,
    latest_value = CASE WHEN o.newer THEN l.value ELSE s.latest_value END
FROM agg a
JOIN lat l ON l.series_id = a.series_id
JOIN old o ON o.series_id = a.series_id
WHERE s.series_id = a.series_id"""

SERIES_ID = "SELECT series_id FROM metric_series WHERE run_pk = $1 AND key = $2"
LOAD_SERIES = """
SELECT run_pk, key, count, nan_count, pos_inf_count, neg_inf_count, min_value, max_value,
       finite_mean, finite_m2, first_step, last_step, latest_step, latest_ts, latest_value
FROM metric_series
WHERE run_pk = ANY($1::bigint[]) AND count > 0
ORDER BY run_pk, key"""
HISTORY_FIRST = """
SELECT step, ts, value FROM metric_points WHERE series_id = $1
ORDER BY step, ts, value LIMIT $2"""
HISTORY_AFTER = """
SELECT step, ts, value FROM metric_points
WHERE series_id = $1 AND (step, ts, value) > ($3, $4, $5)
ORDER BY step, ts, value LIMIT $2"""


async def ensure_series(conn: Connection, run_pk: int, keys: Sequence[str]) -> dict[str, int]:
    """Ids of the run's series for `keys`, creating the missing ones."""
    return {r["key"]: r["series_id"] for r in await conn.fetch(ENSURE_SERIES, run_pk, keys)}


async def insert_points(
    conn: Connection,
    series_ids: Sequence[int],
    steps: Sequence[int],
    timestamps: Sequence[int],
    values: Sequence[float],
) -> None:
    """Appends points column-wise and maintains their series' latest point and summary."""
    await conn.execute(INSERT_POINTS, series_ids, steps, timestamps, values)


async def series_id(conn: Connection, run_pk: int, key: str) -> int | None:
    """The id of the run's series for `key`, or None."""
    sid: int | None = await conn.fetchval(SERIES_ID, run_pk, key)
    return sid


async def load_series(conn: Connection, run_pks: Sequence[int]) -> list[asyncpg.Record]:
    """Latest points and summaries of every series of many runs, ordered by run and key."""
    return list(await conn.fetch(LOAD_SERIES, run_pks))


async def history_page(
    conn: Connection, series_id: int, after: tuple[int, int, float] | None, limit: int
) -> list[asyncpg.Record]:
    """Up to `limit` points (step, ts, value) of a series after the key `after`."""
    if after is None:
        return list(await conn.fetch(HISTORY_FIRST, series_id, limit))
    return list(await conn.fetch(HISTORY_AFTER, series_id, limit, *after))
