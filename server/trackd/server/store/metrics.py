"""SQL for metric series (latest point and summary per run and key) and their points."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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

# Inserts points; an exact duplicate (of a stored point or of another point of the same
# batch) is skipped. Returns the inserted points only, which insert_points folds into their
# series' latest point and summary.
INSERT_POINTS = """
INSERT INTO metric_points (series_id, step, ts, value)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::float8[])
ON CONFLICT DO NOTHING
RETURNING series_id, step, ts, value"""
# The latest point and summary of series, locked until the transaction ends.
LOCK_SUMMARIES = """
SELECT series_id, count, nan_count, pos_inf_count, neg_inf_count, min_value, max_value,
       finite_mean, finite_m2, first_step, last_step, latest_step, latest_ts, latest_value
FROM metric_series WHERE series_id = ANY($1::bigint[])
ORDER BY series_id
FOR NO KEY UPDATE"""
UPDATE_SUMMARIES = """
UPDATE metric_series s SET
    count = u.count, nan_count = u.nan_count, pos_inf_count = u.pos_inf_count,
    neg_inf_count = u.neg_inf_count, min_value = u.min_value, max_value = u.max_value,
    finite_mean = u.finite_mean, finite_m2 = u.finite_m2, first_step = u.first_step,
    last_step = u.last_step, latest_step = u.latest_step, latest_ts = u.latest_ts,
    latest_value = u.latest_value
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
            $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::bigint[],
            $11::bigint[], $12::bigint[], $13::bigint[], $14::float8[])
    AS u(series_id, count, nan_count, pos_inf_count, neg_inf_count, min_value, max_value,
         finite_mean, finite_m2, first_step, last_step, latest_step, latest_ts, latest_value)
WHERE s.series_id = u.series_id"""
# The columns of UPDATE_SUMMARIES' arrays, in order.
_SUMMARY_COLUMNS = (
    "series_id count nan_count pos_inf_count neg_inf_count min_value max_value finite_mean "
    "finite_m2 first_step last_step latest_step latest_ts latest_value"
).split()

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
    """Appends points column-wise and maintains their series' latest point and summary.

    The summary arithmetic runs here rather than in SQL: PostgreSQL raises on float8
    overflow and underflow (a square of 1e-200, a sum of two 1e308), which would reject
    legitimate doubles. Python's floats saturate to +-Inf or 0 instead."""
    inserted = await conn.fetch(INSERT_POINTS, series_ids, steps, timestamps, values)
    if not inserted:
        return
    points: dict[int, list[tuple[int, int, float]]] = {}
    for r in inserted:
        points.setdefault(r["series_id"], []).append((r["step"], r["ts"], r["value"]))
    rows = await conn.fetch(LOCK_SUMMARIES, list(points))
    folded = [_fold(dict(r), points[r["series_id"]]) for r in rows]
    await conn.execute(UPDATE_SUMMARIES, *([f[c] for f in folded] for c in _SUMMARY_COLUMNS))


def _order_key(point: tuple[int, int, float]) -> tuple[int, int, bool, float]:
    """Sort key of (step, ts, value) in PostgreSQL's float8 order, where NaN is greatest."""
    step, ts, value = point
    nan = math.isnan(value)
    return step, ts, nan, 0.0 if nan else value


def _fold(s: dict[str, Any], points: Sequence[tuple[int, int, float]]) -> dict[str, Any]:
    """Series row `s` with new points folded into its counts, extremes, finite mean and
    sum of squared deviations (Chan et al.'s pairwise update), steps and latest point."""
    n_old = s["count"] - s["nan_count"] - s["pos_inf_count"] - s["neg_inf_count"]
    values = [v for _, _, v in points]
    finite = [v for v in values if math.isfinite(v)]
    numbers = [v for v in values if not math.isnan(v)]
    s["count"] += len(values)
    s["nan_count"] += len(values) - len(numbers)
    s["pos_inf_count"] += sum(1 for v in numbers if v == math.inf)
    s["neg_inf_count"] += sum(1 for v in numbers if v == -math.inf)
    if numbers:
        low, high = min(numbers), max(numbers)
        s["min_value"] = low if s["min_value"] is None else min(s["min_value"], low)
        s["max_value"] = high if s["max_value"] is None else max(s["max_value"], high)
    if finite:
        n_new = len(finite)
        try:
            mean_new = math.fsum(finite) / n_new
        except OverflowError:  # the sum leaves the double range; the mean cannot
            mean_new = math.fsum(v / n_new for v in finite)
        try:
            m2_new = math.fsum((v - mean_new) * (v - mean_new) for v in finite)
        except OverflowError:
            m2_new = math.inf
        if n_old == 0:
            s["finite_mean"], s["finite_m2"] = mean_new, m2_new
        else:
            n = n_old + n_new
            mean_old = s["finite_mean"]
            delta = mean_new - mean_old  # +-Inf when the means are far apart
            if math.isfinite(delta):
                s["finite_mean"] = mean_old + delta * (n_new / n)
            else:
                s["finite_mean"] = mean_old * (n_old / n) + mean_new * (n_new / n)
            s["finite_m2"] = s["finite_m2"] + m2_new + delta * delta * (n_old * n_new / n)
    steps = [p[0] for p in points]
    s["first_step"] = min(steps) if s["first_step"] is None else min(s["first_step"], *steps)
    s["last_step"] = max(steps) if s["last_step"] is None else max(s["last_step"], *steps)
    latest = max(points, key=_order_key)
    if s["latest_step"] is None or _order_key(latest) > _order_key(
        (s["latest_step"], s["latest_ts"], s["latest_value"])
    ):
        s["latest_step"], s["latest_ts"], s["latest_value"] = latest
    return s


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
