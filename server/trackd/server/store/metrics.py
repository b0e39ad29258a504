"""SQL for metric series (latest point and summary per run and key) and their points."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from trackd.server.store import events, tiers
from trackd.server.store.pool import Connection

# Creates the missing series of (run, key) pairs (with their run's experiment, which the
# search index leads with), in (run, key) order so that concurrent creators meet the unique
# index in one order, and returns the ids of all the pairs.
ENSURE_SERIES = """
WITH wanted AS (
    SELECT DISTINCT r, k FROM unnest($1::bigint[], $2::text[]) AS w(r, k)
),
created AS (
    INSERT INTO metric_series (run_pk, experiment_id, key)
    SELECT r, (SELECT x.experiment_id FROM runs x WHERE x.run_pk = r), k
    FROM wanted ORDER BY r, k
    ON CONFLICT (run_pk, key) DO NOTHING
    RETURNING run_pk, key, series_id
)
SELECT run_pk, key, series_id FROM created
UNION ALL
SELECT s.run_pk, s.key, s.series_id
FROM metric_series s JOIN wanted w ON s.run_pk = w.r AND s.key = w.k"""

# Locks series rows (in id order, the one lock order every writer of series uses) and
# returns their summaries with the lifecycle stages of their runs and experiments.
LOCK_SERIES = f"""
SELECT s.series_id, s.count, s.nan_count, s.pos_inf_count, s.neg_inf_count, s.min_value,
       s.max_value, s.finite_mean, s.finite_m2, s.first_step, s.last_step, s.latest_step,
       s.latest_ts, s.latest_value, s.compacted_count, s.compacted_step, s.run_pk,
       r.experiment_id,
       r.lifecycle_stage AS run_stage, e.lifecycle_stage AS experiment_stage,
       EXISTS (SELECT 1 FROM watch_interest w
               WHERE w.experiment_id = r.experiment_id
                 AND w.until_ms > {events.NOW_MS})
           AS watched
FROM metric_series s
JOIN runs r ON r.run_pk = s.run_pk
JOIN experiments e ON e.experiment_id = r.experiment_id
WHERE s.series_id = ANY($1::bigint[])
ORDER BY s.series_id
FOR NO KEY UPDATE OF s"""  # noqa: S608

# Inserts points; an exact duplicate (of a stored point or of another point of the same
# statement) is skipped, and only the inserted points come back.
INSERT_POINTS = """
INSERT INTO metric_points (series_id, step, ts, value)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::float8[])
ON CONFLICT DO NOTHING
RETURNING series_id, step, ts, value"""
POINT_COLUMNS = ["series_id", "step", "ts", "value"]

# The columns of a series summary, in UPDATE_SUMMARIES' order.
SUMMARY_COLUMNS = (
    "series_id count nan_count pos_inf_count neg_inf_count min_value max_value finite_mean "
    "finite_m2 first_step last_step latest_step latest_ts latest_value"
).split()
# Also stamps each series with the server's time of the commit (`touched_ms`): a point is
# a sign of life of its run (runs.LAST_SEEN), at no cost beyond this update.
UPDATE_SUMMARIES = """
UPDATE metric_series s SET
    count = u.count, nan_count = u.nan_count, pos_inf_count = u.pos_inf_count,
    neg_inf_count = u.neg_inf_count, min_value = u.min_value, max_value = u.max_value,
    finite_mean = u.finite_mean, finite_m2 = u.finite_m2, first_step = u.first_step,
    last_step = u.last_step, latest_step = u.latest_step, latest_ts = u.latest_ts,
    latest_value = u.latest_value, touched_ms = greatest(s.touched_ms, $15::bigint)
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
            $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::bigint[],
            $11::bigint[], $12::bigint[], $13::bigint[], $14::float8[])
    AS u(series_id, count, nan_count, pos_inf_count, neg_inf_count, min_value, max_value,
         finite_mean, finite_m2, first_step, last_step, latest_step, latest_ts, latest_value)
WHERE s.series_id = u.series_id"""

RUN_PKS = "SELECT run_id, run_pk FROM runs WHERE run_id = ANY($1::uuid[])"

STREAMS_CREATE = """
INSERT INTO ingest_streams (stream_id)
SELECT id FROM unnest($1::text[]) AS id ORDER BY id
ON CONFLICT (stream_id) DO NOTHING"""
STREAMS_LOCK = """
SELECT stream_id, last_sequence FROM ingest_streams
WHERE stream_id = ANY($1::text[]) ORDER BY stream_id FOR UPDATE"""
STREAMS_ADVANCE = """
UPDATE ingest_streams t SET last_sequence = u.seq, updated_at = $3
FROM unnest($1::text[], $2::bigint[]) AS u(id, seq)
WHERE t.stream_id = u.id"""
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
SERIES_IDS = """
SELECT s.run_pk, s.key, s.series_id
FROM metric_series s JOIN unnest($1::bigint[], $2::text[]) AS w(r, k)
  ON s.run_pk = w.r AND s.key = w.k"""
LOAD_SERIES = """
SELECT run_pk, key, count, nan_count, pos_inf_count, neg_inf_count, min_value, max_value,
       finite_mean, finite_m2, first_step, last_step, latest_step, latest_ts, latest_value
FROM metric_series
WHERE run_pk = ANY($1::bigint[]) AND count > 0
ORDER BY run_pk, key"""


async def ensure_series(
    conn: Connection, pairs: Sequence[tuple[int, str]]
) -> dict[tuple[int, str], int]:
    """Ids of the series of (run_pk, key) pairs, creating the missing ones."""
    rows = await conn.fetch(ENSURE_SERIES, [p[0] for p in pairs], [p[1] for p in pairs])
    ids = {(r["run_pk"], r["key"]): r["series_id"] for r in rows}
    missing = [p for p in pairs if p not in ids]
    if missing:
        # A concurrent transaction created these between this statement's snapshot and
        # its insert (which then found the conflict): a new statement sees them.
        rows = await conn.fetch(SERIES_IDS, [p[0] for p in missing], [p[1] for p in missing])
        ids.update({(r["run_pk"], r["key"]): r["series_id"] for r in rows})
    return ids


async def lock_series(conn: Connection, series_ids: Iterable[int]) -> list[asyncpg.Record]:
    """Locks series rows in id order; returns their summaries, experiment and run/experiment
    stages."""
    return list(await conn.fetch(LOCK_SERIES, sorted(series_ids)))


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


def _shifted(sql: str, by: int) -> str:
    """`sql` with its parameters $n renumbered $n+by."""
    return re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + by}", sql)


# UPDATE_SUMMARIES and the tiers' upsert (store.tiers.UPSERT, its parameters after
# UPDATE_SUMMARIES') in one statement: one round trip per commit for both.
UPDATE_SUMMARIES_AND_TIERS = f"""
WITH summaries AS ({UPDATE_SUMMARIES}),
tiers AS ({_shifted(tiers.UPSERT, 15)})
SELECT 1"""


async def update_summaries_and_tiers(
    conn: Connection,
    summaries: Sequence[dict[str, Any]],
    touched_ms: int,
    tier_rows: Sequence[tuple[object, ...]],
) -> None:
    """Writes folded summaries back (dicts with every column of summaries.COLUMNS), each
    series stamped `touched_ms`, and folds the tiers' blocks, in one statement."""
    if summaries:
        await conn.execute(
            UPDATE_SUMMARIES_AND_TIERS,
            *([s[c] for s in summaries] for c in SUMMARY_COLUMNS),
            touched_ms,
            *tiers.upsert_args(tier_rows),
        )


async def run_pks(conn: Connection, run_ids: Sequence[str]) -> dict[str, int]:
    """Internal keys of the runs that exist among `run_ids` (32-hex ids)."""
    rows = await conn.fetch(RUN_PKS, list(run_ids))
    return {r["run_id"].hex: r["run_pk"] for r in rows}


async def lock_streams(conn: Connection, stream_ids: Sequence[str]) -> dict[str, int]:
    """Creates missing stream rows and locks them all (in id order); returns each stream's
    last committed sequence."""
    ids = sorted(set(stream_ids))
    await conn.execute(STREAMS_CREATE, ids)
    return {r["stream_id"]: r["last_sequence"] for r in await conn.fetch(STREAMS_LOCK, ids)}


async def advance_streams(conn: Connection, marks: dict[str, int], now: int) -> None:
    """Records the last committed sequence of streams."""
    await conn.execute(STREAMS_ADVANCE, list(marks), list(marks.values()), now)


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
