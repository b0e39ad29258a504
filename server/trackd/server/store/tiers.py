"""SQL for the pre-aggregated blocks of metric series (metric_tiers) and for the envelope
reads over them and over the points."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import asyncpg

from trackd.server.store.pool import Connection

TIER_COLUMNS = (
    "series_id axis level block count nan_count pos_inf_count neg_inf_count x_min x_max "
    "y_min y_max first_y last_y min_value max_value first_value last_value"
).split()
# The integer columns come first, then the float8 ones.
_INTS = 14

# Folds a batch's blocks into the stored ones. The blocks come as two texts: every integer
# column one after the other as one bigint[] literal, then every float8 column as one
# float8[] literal, $3 blocks each. Far cheaper to write than 18 binary arrays, and exact
# (a float's shortest round-trip form); OFFSET 0 keeps each text parsed once. Row
# comparisons order float8 as PostgreSQL does (NaN greatest), which is the order of the
# points' first and last. Every right-hand side reads the stored row as it was.
UPSERT = f"""
INSERT INTO metric_tiers AS t ({", ".join(TIER_COLUMNS)})
SELECT u.*
FROM (SELECT $1::text::bigint[] AS i, $2::text::float8[] AS f OFFSET 0) AS a
CROSS JOIN LATERAL unnest(
    {", ".join(f"a.i[{k} * $3 + 1:{k + 1} * $3]" for k in range(_INTS))},
    {", ".join(f"a.f[{k} * $3 + 1:{k + 1} * $3]" for k in range(len(TIER_COLUMNS) - _INTS))}
) AS u
ON CONFLICT (series_id, axis, level, block) DO UPDATE SET
    count = t.count + excluded.count,
    nan_count = t.nan_count + excluded.nan_count,
    pos_inf_count = t.pos_inf_count + excluded.pos_inf_count,
    neg_inf_count = t.neg_inf_count + excluded.neg_inf_count,
    min_value = least(t.min_value, excluded.min_value),
    max_value = greatest(t.max_value, excluded.max_value),
    x_min = least(t.x_min, excluded.x_min),
    x_max = greatest(t.x_max, excluded.x_max),
    y_min = least(t.y_min, excluded.y_min),
    y_max = greatest(t.y_max, excluded.y_max),
    first_y = CASE WHEN (excluded.x_min, excluded.first_y, excluded.first_value)
                        < (t.x_min, t.first_y, t.first_value)
                   THEN excluded.first_y ELSE t.first_y END,
    first_value = CASE WHEN (excluded.x_min, excluded.first_y, excluded.first_value)
                            < (t.x_min, t.first_y, t.first_value)
                       THEN excluded.first_value ELSE t.first_value END,
    last_y = CASE WHEN (excluded.x_max, excluded.last_y, excluded.last_value)
                       > (t.x_max, t.last_y, t.last_value)
                  THEN excluded.last_y ELSE t.last_y END,
    last_value = CASE WHEN (excluded.x_max, excluded.last_y, excluded.last_value)
                           > (t.x_max, t.last_y, t.last_value)
                      THEN excluded.last_value ELSE t.last_value END"""  # noqa: S608

RUNS = "SELECT run_id, run_pk, start_time FROM runs WHERE run_id = ANY($1::uuid[])"
SERIES = """
SELECT run_pk, key, series_id, count FROM metric_series
WHERE run_pk = ANY($1::bigint[]) AND key = ANY($2::text[]) AND count > 0"""

# The least and greatest x of series (any level has them: its first block's x_min and its
# last block's x_max).
EXTENTS = """
SELECT q.i,
       (SELECT t.x_min FROM metric_tiers t
        WHERE t.series_id = q.sid AND t.axis = $3 AND t.level = $4
        ORDER BY t.block LIMIT 1) AS x_min,
       (SELECT t.x_max FROM metric_tiers t
        WHERE t.series_id = q.sid AND t.axis = $3 AND t.level = $4
        ORDER BY t.block DESC LIMIT 1) AS x_max
FROM unnest($1::int[], $2::bigint[]) AS q(i, sid)"""

# An upper bound of the points of series in x ranges: the counts of the blocks of a level
# that meet the range.
ESTIMATES = """
SELECT q.i,
       (SELECT coalesce(sum(t.count), 0)::bigint FROM metric_tiers t
        WHERE t.series_id = q.sid AND t.axis = $6 AND t.level = q.level
          AND t.block BETWEEN q.blo AND q.bhi AND t.x_max >= q.lo AND t.x_min <= q.hi) AS n
FROM unnest($1::int[], $2::bigint[], $3::smallint[], $4::bigint[], $5::bigint[],
            $7::bigint[], $8::bigint[]) AS q(i, sid, level, blo, bhi, lo, hi)"""

# The buckets of series from the blocks of one level that lie inside the x range, as one
# array per column. A bucket is ((block >> shift) - base) / m; first and last come from the
# bucket's first and last block (blocks of a level are disjoint in x).
BUCKETS = """
SELECT q.i, a.*
FROM unnest($1::int[], $2::bigint[], $3::smallint[], $4::bigint[], $5::bigint[],
            $6::bigint[], $7::bigint[], $8::int[], $9::bigint[], $10::bigint[])
     AS q(i, sid, level, blo, bhi, lo, hi, shift, base, m)
CROSS JOIN LATERAL (
    SELECT array_agg(g.bucket) AS bucket, array_agg(g.x_first) AS x_first,
           array_agg(g.x_last) AS x_last, array_agg(g.first) AS first,
           array_agg(g.last) AS last, array_agg(g.min) AS min, array_agg(g.max) AS max,
           array_agg(g.count) AS count, array_agg(g.nan_count) AS nan_count,
           array_agg(g.pos_inf_count) AS pos_inf_count,
           array_agg(g.neg_inf_count) AS neg_inf_count
    FROM (
        SELECT ((t.block >> q.shift) - q.base) / q.m AS bucket,
               min(t.x_min) AS x_first, max(t.x_max) AS x_last,
               (array_agg(t.first_value ORDER BY t.block))[1] AS first,
               (array_agg(t.last_value ORDER BY t.block DESC))[1] AS last,
               coalesce(min(t.min_value), 'NaN') AS min,
               coalesce(max(t.max_value), 'NaN') AS max,
               sum(t.count)::bigint AS count, sum(t.nan_count)::bigint AS nan_count,
               sum(t.pos_inf_count)::bigint AS pos_inf_count,
               sum(t.neg_inf_count)::bigint AS neg_inf_count
        FROM metric_tiers t
        WHERE t.series_id = q.sid AND t.axis = $11 AND t.level = q.level
          AND t.block BETWEEN q.blo AND q.bhi AND t.x_min >= q.lo AND t.x_max <= q.hi
        GROUP BY 1 ORDER BY 1
    ) AS g
) AS a"""

# Blocks of a level within block ranges of series, with the query's index.
BLOCKS = """
SELECT q.i, t.block, t.count, t.nan_count, t.pos_inf_count, t.neg_inf_count, t.min_value,
       t.max_value, t.x_min, t.x_max, t.y_min, t.y_max, t.first_value, t.last_value
FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bigint[]) AS q(i, sid, blo, bhi)
JOIN metric_tiers t ON t.series_id = q.sid AND t.axis = $5 AND t.level = $6
                   AND t.block BETWEEN q.blo AND q.bhi
ORDER BY q.i, t.block"""

# The points of a series within step intervals and an x range.
_POINTS = """
SELECT p.step, p.ts, p.value
FROM unnest($2::bigint[], $3::bigint[]) AS r(a, b)
JOIN metric_points p ON p.series_id = $1 AND p.step BETWEEN r.a AND r.b
WHERE p.{x} BETWEEN $4 AND $5"""

_POINT_COLUMNS = """
SELECT array_agg(step) AS steps, array_agg(ts) AS timestamps, array_agg(value) AS "values"
FROM ({points} ORDER BY {x}, {y}, value LIMIT $6) AS c"""

_RAW_BUCKETS = """
SELECT (({x} >> $6) - $7) / $8 AS bucket, min({x}) AS x_first, max({x}) AS x_last,
       (array_agg(value ORDER BY {x}, {y}, value))[1] AS first,
       (array_agg(value ORDER BY {x} DESC, {y} DESC, value DESC))[1] AS last,
       coalesce(min(value) FILTER (WHERE value > '-Infinity' AND value < 'Infinity'), 'NaN')
           AS min,
       coalesce(max(value) FILTER (WHERE value > '-Infinity' AND value < 'Infinity'), 'NaN')
           AS max,
       count(*) AS count, count(*) FILTER (WHERE value = 'NaN') AS nan_count,
       count(*) FILTER (WHERE value = 'Infinity') AS pos_inf_count,
       count(*) FILTER (WHERE value = '-Infinity') AS neg_inf_count
FROM ({points}) AS p
GROUP BY 1 ORDER BY 1"""

_XY = {1: ("step", "ts"), 2: ("ts", "step")}
POINT_COLUMNS = {
    axis: _POINT_COLUMNS.format(points=_POINTS.format(x=x), x=x, y=y)
    for axis, (x, y) in _XY.items()
}
RAW_BUCKETS = {
    axis: _RAW_BUCKETS.format(points=_POINTS.format(x=x), x=x, y=y) for axis, (x, y) in _XY.items()
}


def upsert_args(rows: Sequence[tuple[object, ...]]) -> tuple[str, str, int]:
    """UPSERT's arguments for blocks (rows in TIER_COLUMNS order, one per key)."""
    cols = list(zip(*rows, strict=True))
    ints = itertools.chain.from_iterable(cols[:_INTS])
    floats = itertools.chain.from_iterable(cols[_INTS:])
    return _literal(ints), _literal(floats), len(rows)


def _literal(values: Iterable[object]) -> str:
    """An array literal of ints or floats (None as NULL; str of a float is its shortest
    exact form, and nan, inf and -inf read back as NaN, Infinity and -Infinity)."""
    return "{" + ",".join(map(str, values)).replace("None", "NULL") + "}"


async def runs(conn: Connection, run_ids: Sequence[str]) -> dict[str, asyncpg.Record]:
    """run_pk and start_time of the existing runs among `run_ids`, by run id."""
    return {r["run_id"].hex: r for r in await conn.fetch(RUNS, list(run_ids))}


async def series(
    conn: Connection, run_pks: Sequence[int], keys: Sequence[str]
) -> list[asyncpg.Record]:
    """The non-empty series of the runs among the keys: run_pk, key, series_id, count."""
    return list(await conn.fetch(SERIES, list(run_pks), list(keys)))


async def extents(
    conn: Connection, series_ids: Sequence[int], axis: int, level: int
) -> list[asyncpg.Record]:
    """(i, x_min, x_max) of each series, i its index in `series_ids`."""
    return list(await conn.fetch(EXTENTS, list(range(len(series_ids))), series_ids, axis, level))


async def estimates(
    conn: Connection, axis: int, items: Sequence[tuple[int, int, int, int, int, int]]
) -> dict[int, int]:
    """An upper bound of the points in range per item (sid, level, blo, bhi, lo, hi), by
    item index."""
    cols = list(zip(*items, strict=True))
    rows = await conn.fetch(
        ESTIMATES,
        list(range(len(items))),
        cols[0],
        cols[1],
        cols[2],
        cols[3],
        axis,
        cols[4],
        cols[5],
    )
    return {r["i"]: r["n"] for r in rows}


async def buckets(
    conn: Connection, axis: int, items: Sequence[tuple[int, ...]]
) -> list[asyncpg.Record]:
    """Bucket columns per item (sid, level, blo, bhi, lo, hi, shift, base, m); rows carry
    the item index `i` and one array per column (None when no block lies in range)."""
    cols = [list(c) for c in zip(*items, strict=True)]
    return list(await conn.fetch(BUCKETS, list(range(len(items))), *cols, axis))


async def blocks(
    conn: Connection, axis: int, level: int, items: Sequence[tuple[int, int, int]]
) -> list[asyncpg.Record]:
    """Blocks of a level per item (sid, blo, bhi), ordered by item index and block."""
    cols = [list(c) for c in zip(*items, strict=True)]
    return list(await conn.fetch(BLOCKS, list(range(len(items))), *cols, axis, level))


async def points(
    conn: Connection,
    axis: int,
    series_id: int,
    intervals: Sequence[tuple[int, int]],
    lo: int,
    hi: int,
    limit: int | None,
) -> tuple[list[int], list[int], list[float]]:
    """Up to `limit` (None: all) points of a series with a step in one of `intervals`
    (disjoint) and x in [lo, hi], in (x, y, value) order, as (steps, timestamps, values)."""
    row = await conn.fetchrow(
        POINT_COLUMNS[axis],
        series_id,
        [a for a, _ in intervals],
        [b for _, b in intervals],
        lo,
        hi,
        limit,
    )
    if row is None or row["steps"] is None:
        return [], [], []
    return row["steps"], row["timestamps"], row["values"]


async def raw_buckets(
    conn: Connection,
    axis: int,
    series_id: int,
    intervals: Sequence[tuple[int, int]],
    lo: int,
    hi: int,
    grid: tuple[int, int, int],
) -> list[asyncpg.Record]:
    """Buckets ((x >> shift) - base) / m of the points of a series with a step in one of
    `intervals` (disjoint) and x in [lo, hi], from the points themselves."""
    return list(
        await conn.fetch(
            RAW_BUCKETS[axis],
            series_id,
            [a for a, _ in intervals],
            [b for _, b in intervals],
            lo,
            hi,
            *grid,
        )
    )
