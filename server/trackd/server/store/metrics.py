"""SQL for metric series (latest point and summary per run and key) and their points."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from trackd.server.store.pool import Connection

# The write path's functions (migration 0014): trackd_lock_group locks a group's streams
# and series (creating the missing ones), trackd_fold_group folds a batch of inserted points
# into them, trackd_write_group does both around the insert in one statement.
LOCK_GROUP = "SELECT * FROM trackd_lock_group($1::text[], $2::bigint[], $3::text[])"
_FOLD_ARGS = """
    $1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::float8[], $6::float8[],
    $7::bigint[], $8::float8[], $9::float8[], $10::bigint[], $11::bigint[], $12::bigint[],
    $13::bigint[], $14::float8[], $15::text, $16::text, $17::integer, $18::integer[],
    $19::bytea[]"""
FOLD_GROUP = f"""
SELECT trackd_fold_group($20::bigint[], $21::boolean[], {_FOLD_ARGS},
                         $22::text[], $23::bigint[], $24::bigint)"""
WRITE_GROUP = f"""
SELECT trackd_write_group($20::text[], $21::bigint[], $22::bigint[], $23::bigint[],
                          $24::text[], $25::integer[], $26::bigint[], $27::bigint[],
                          $28::float8[], {_FOLD_ARGS}, $29::bigint)"""
# What trackd_write_group raises, having written nothing, for a group it does not take.
NOT_SIMPLE = "TD001"

# Inserts points; an exact duplicate (of a stored point or of another point of the same
# statement) is skipped, and only the inserted points come back.
INSERT_POINTS = """
INSERT INTO metric_points (series_id, step, ts, value)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::float8[])
ON CONFLICT DO NOTHING
RETURNING series_id, step, ts, value"""
POINT_COLUMNS = ["series_id", "step", "ts", "value"]

RUN_PKS = "SELECT run_id, run_pk FROM runs WHERE run_id = ANY($1::uuid[])"

STREAM_MARK = "SELECT last_sequence FROM ingest_streams WHERE stream_id = $1"

# One chunk of a series, as three arrays: asyncpg decodes arrays without a record per row.
# The aggregates read the ordered subquery in its order (PostgreSQL feeds a plain aggregate
# over a single sorted subquery in that order; an ORDER BY inside array_agg would sort the
# chunk again and cost three times as much).
HISTORY_CHUNK_FIRST = """
SELECT array_agg(step) AS steps, array_agg(ts) AS timestamps, array_agg(value) AS "values"
FROM (SELECT step, ts, value FROM metric_points WHERE series_id = $1
      ORDER BY step, ts, value LIMIT $2) AS c"""
HISTORY_CHUNK_AFTER = """
SELECT array_agg(step) AS steps, array_agg(ts) AS timestamps, array_agg(value) AS "values"
FROM (SELECT step, ts, value FROM metric_points
      WHERE series_id = $1 AND (step, ts, value) > ($3, $4, $5)
      ORDER BY step, ts, value LIMIT $2) AS c"""

SERIES_ID = "SELECT series_id FROM metric_series WHERE run_pk = $1 AND key = $2"
LOAD_SERIES = """
SELECT run_pk, key, count, nan_count, pos_inf_count, neg_inf_count, min_value, max_value,
       finite_mean, finite_m2, first_step, last_step, latest_step, latest_ts, latest_value
FROM metric_series
WHERE run_pk = ANY($1::bigint[]) AND count > 0
ORDER BY run_pk, key"""


@dataclass
class Locked:
    """A group's streams and series as trackd_lock_group leaves them, locked: each stream's
    last committed sequence, and each series' id, whether its run and experiment are
    active and whether its experiment is watched (in the order asked)."""

    marks: list[int]
    series_ids: list[int]
    active: list[bool]
    watched: list[bool]
    # The greatest step of each series' compacted blocks (None: it has none).
    compacted: list[int | None]


async def lock_group(
    conn: Connection, stream_ids: Sequence[str], pairs: Sequence[tuple[int, str]]
) -> Locked:
    """Locks streams (distinct) and the series of (run_pk, key) pairs (distinct), creating
    the missing ones; in a transaction."""
    row = await conn.fetchrow(
        LOCK_GROUP, list(stream_ids), [p[0] for p in pairs], [p[1] for p in pairs]
    )
    assert row is not None
    return Locked(
        list(row["marks"]),
        list(row["series_ids"] or ()),
        list(row["active"] or ()),
        list(row["watched"] or ()),
        list(row["compacted"] or ()),
    )


@dataclass
class Fold:
    """trackd_fold_group's arguments for a batch's series, in one order: summaries.Partial
    columns, tier blocks (store.tiers.upsert_args; a block's series is its position here,
    from 1), watch-event point counts and columns (None: not recorded)."""

    partials: list[tuple[Any, ...]]
    tier_args: tuple[str, str, int]
    counts: list[int]
    columns: list[bytes | None]

    def args(self) -> list[Any]:
        cols = list(zip(*self.partials, strict=True)) or [()] * 14
        return [*map(list, cols), *self.tier_args, self.counts, self.columns]


async def fold_group(
    conn: Connection,
    series_ids: Sequence[int],
    watched: Sequence[bool],
    fold: Fold,
    marks: dict[str, int],
    now: int,
) -> None:
    """Folds a batch of inserted points into its locked series (ids and whether watched,
    in the fold's order) and records the streams' new marks."""
    await conn.execute(
        FOLD_GROUP, *fold.args(), list(series_ids), list(watched), list(marks),
        list(marks.values()), now,
    )  # fmt: skip


async def write_group(
    conn: Connection,
    streams: dict[str, tuple[int, int]],
    pairs: Sequence[tuple[int, str]],
    points: tuple[list[int], list[int], list[int], list[float]],
    fold: Fold,
    now: int,
) -> list[int] | None:
    """Writes a group in one statement, outside a transaction: streams (id -> the first and
    last sequence of its chunks here), series (run_pk, key), points (the series' position
    in `pairs` from 1, steps, timestamps, values) and their fold, in the order of `pairs`.
    Returns the series ids, or None (nothing written) when a chunk is a resend, a run or
    experiment is not active or a point is stored already."""
    try:
        ids: list[int] = await conn.fetchval(
            WRITE_GROUP, *fold.args(), list(streams), [s[0] for s in streams.values()],
            [s[1] for s in streams.values()], [p[0] for p in pairs], [p[1] for p in pairs],
            *points, now,
        )  # fmt: skip
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == NOT_SIMPLE:
            return None
        raise
    return ids


# Batches of at least this many points go through COPY (in a savepoint, with a fallback
# for duplicates); smaller ones through one INSERT.
COPY_THRESHOLD = 2000


async def insert_points(
    conn: Connection,
    series_ids: list[int],
    steps: list[int],
    timestamps: list[int],
    values: list[float],
) -> list[asyncpg.Record] | None:
    """Appends points column-wise. Returns None when every point was inserted, else the
    points that were (an exact duplicate of a stored point, or of another point here, is
    skipped)."""
    if len(series_ids) >= COPY_THRESHOLD:
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "metric_points",
                    records=zip(series_ids, steps, timestamps, values, strict=True),
                    columns=POINT_COLUMNS,
                )
            return None
        except asyncpg.UniqueViolationError:
            pass  # a duplicate somewhere: take the path that skips duplicates
    rows = await conn.fetch(INSERT_POINTS, series_ids, steps, timestamps, values)
    return None if len(rows) == len(series_ids) else list(rows)


async def run_pks(conn: Connection, run_ids: Sequence[str]) -> dict[str, int]:
    """Internal keys of the runs that exist among `run_ids` (32-hex ids)."""
    rows = await conn.fetch(RUN_PKS, list(run_ids))
    return {r["run_id"].hex: r["run_pk"] for r in rows}


async def stream_mark(conn: Connection, stream_id: str) -> int:
    """The last committed sequence of a stream (0 if it never committed)."""
    mark: int | None = await conn.fetchval(STREAM_MARK, stream_id)
    return mark or 0


async def history_chunk(
    conn: Connection, series_id: int, after: tuple[int, int, float] | None, limit: int
) -> tuple[list[int], list[int], list[float]]:
    """Up to `limit` points of a series after `after`, as (steps, timestamps, values)."""
    if after is None:
        row = await conn.fetchrow(HISTORY_CHUNK_FIRST, series_id, limit)
    else:
        row = await conn.fetchrow(HISTORY_CHUNK_AFTER, series_id, limit, *after)
    if row is None or row["steps"] is None:
        return [], [], []
    return row["steps"], row["timestamps"], row["values"]


async def series_id(conn: Connection, run_pk: int, key: str) -> int | None:
    """The id of the run's series for `key`, or None."""
    sid: int | None = await conn.fetchval(SERIES_ID, run_pk, key)
    return sid


async def load_series(conn: Connection, run_pks: Sequence[int]) -> list[asyncpg.Record]:
    """Latest points and summaries of every series of many runs, ordered by run and key."""
    return list(await conn.fetch(LOAD_SERIES, run_pks))
