"""SQL for compacted metric points (metric_blocks): the blocks a read needs beside the
rows, and the compaction that moves rows into blocks."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from trackd.server.store.pool import Connection

_BLOCK = """first_step, first_ts, first_value, last_step, last_ts, last_value, count, codec,
steps, timestamps, "values\""""
_KEY = "first_step, first_ts, first_value"
_KEY_DESC = "first_step DESC, first_ts DESC, first_value DESC"

# The blocks that may hold points after a position, in order: the last one that starts at
# or before it (it may straddle it) and at most $5 that start after it.
BLOCKS_AFTER = f"""
(SELECT {_BLOCK} FROM metric_blocks
 WHERE series_id = $1 AND ({_KEY}) <= ($2, $3, $4)
 ORDER BY {_KEY_DESC} LIMIT 1)
UNION ALL
(SELECT {_BLOCK} FROM metric_blocks
 WHERE series_id = $1 AND ({_KEY}) > ($2, $3, $4)
 ORDER BY {_KEY} LIMIT $5)"""  # noqa: S608
BLOCKS_FIRST = f"""
SELECT {_BLOCK} FROM metric_blocks WHERE series_id = $1 ORDER BY {_KEY} LIMIT $2"""  # noqa: S608

# The blocks of a series with a step in one of the intervals [a, b]: those that start in
# it, and the last one that starts before it (blocks are disjoint in point order, so no
# earlier block reaches a), kept when it reaches a. Ordered by block.
BLOCKS_OVERLAPPING = f"""
SELECT DISTINCT ON ({_KEY}) b.*
FROM unnest($2::bigint[], $3::bigint[]) AS r(a, z)
CROSS JOIN LATERAL (
    (SELECT {_BLOCK} FROM metric_blocks
     WHERE series_id = $1 AND first_step BETWEEN r.a AND r.z)
    UNION ALL
    (SELECT {_BLOCK} FROM metric_blocks
     WHERE series_id = $1 AND first_step < r.a
     ORDER BY {_KEY_DESC} LIMIT 1)
) AS b
WHERE b.last_step >= r.a
ORDER BY {_KEY}"""  # noqa: S608

# -- compaction ----------------------------------------------------------------------------

# The series that hold at least $1 points as rows (a full scan of the series).
CANDIDATES = """
SELECT series_id FROM metric_series
WHERE count - coalesce(compacted_count, 0) >= $1
ORDER BY series_id"""

# Locks a series row (the lock its writers take) and reads what compaction needs.
LOCK = """
SELECT count, coalesce(compacted_count, 0) AS compacted_count, compacted_step
FROM metric_series WHERE series_id = $1
FOR NO KEY UPDATE"""

LAST_KEY = f"""
SELECT last_step, last_ts, last_value FROM metric_blocks
WHERE series_id = $1 ORDER BY {_KEY_DESC} LIMIT 1"""  # noqa: S608

BLOCK_COLUMNS = (
    "first_step first_ts first_value last_step last_ts last_value count nan_count "
    "pos_inf_count neg_inf_count min_value max_value ts_min ts_max codec steps timestamps "
    "values"
).split()
_TYPES = (
    "bigint bigint float8 bigint bigint float8 int int int int float8 float8 bigint bigint "
    "smallint bytea bytea bytea"
).split()
INSERT = f"""
INSERT INTO metric_blocks (series_id, {", ".join(f'"{c}"' for c in BLOCK_COLUMNS)})
SELECT $1, u.* FROM unnest(
    {", ".join(f"${k + 2}::{t}[]" for k, t in enumerate(_TYPES))}
) AS u"""  # noqa: S608

# Deletes the rows of a series from one point to another, both included.
DELETE_ROWS = """
DELETE FROM metric_points
WHERE series_id = $1 AND (step, ts, value) >= ($2, $3, $4) AND (step, ts, value) <= ($5, $6, $7)"""

# Blocks are appended in point order, so the new last step is the greatest one.
MARK = """
UPDATE metric_series
SET compacted_count = coalesce(compacted_count, 0) + $2, compacted_step = $3
WHERE series_id = $1"""


async def blocks_after(
    conn: Connection, series_id: int, after: tuple[int, int, float] | None, limit: int
) -> list[asyncpg.Record]:
    """The blocks that may hold the first points after `after` (None: from the start):
    the one that may straddle it and up to `limit` more, in order."""
    if after is None:
        return list(await conn.fetch(BLOCKS_FIRST, series_id, limit))
    return list(await conn.fetch(BLOCKS_AFTER, series_id, *after, limit))


async def overlapping(
    conn: Connection, series_id: int, intervals: Sequence[tuple[int, int]]
) -> list[asyncpg.Record]:
    """The blocks of a series that hold a step in one of `intervals`, in order."""
    if not intervals:
        return []
    return list(
        await conn.fetch(
            BLOCKS_OVERLAPPING, series_id, [a for a, _ in intervals], [b for _, b in intervals]
        )
    )


async def candidates(conn: Connection, min_rows: int) -> list[int]:
    """Series holding at least `min_rows` points as rows."""
    return [r["series_id"] for r in await conn.fetch(CANDIDATES, min_rows)]


async def lock(conn: Connection, series_id: int) -> asyncpg.Record | None:
    """Locks a series row; its count, compacted_count and compacted_step."""
    return await conn.fetchrow(LOCK, series_id)


async def last_key(conn: Connection, series_id: int) -> tuple[int, int, float] | None:
    """The greatest point in a block of the series, or None."""
    row = await conn.fetchrow(LAST_KEY, series_id)
    return None if row is None else (row["last_step"], row["last_ts"], row["last_value"])


async def insert(conn: Connection, series_id: int, blocks: Sequence[dict[str, object]]) -> None:
    """Stores blocks (dicts with every column of BLOCK_COLUMNS)."""
    await conn.execute(INSERT, series_id, *([b[c] for b in blocks] for c in BLOCK_COLUMNS))


async def delete_rows(
    conn: Connection, series_id: int, first: tuple[int, int, float], last: tuple[int, int, float]
) -> int:
    """Deletes the rows of a series from `first` to `last`; returns how many."""
    status = await conn.execute(DELETE_ROWS, series_id, *first, *last)
    return int(status.split()[-1])


async def mark(conn: Connection, series_id: int, points: int, last_step: int) -> None:
    """Counts `points` more points of the series in blocks, up to step `last_step`."""
    await conn.execute(MARK, series_id, points, last_step)
