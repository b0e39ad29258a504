"""SQL of the watch log (run_events): recording what commits, the watermark of what is
final, reading after a position, and pruning; and of watch interest (watch_interest), which
decides whose points are recorded."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from typing import Any

import asyncpg

from trackd.server.store.pool import Connection

# The channel every transaction that records an event notifies (at its commit).
CHANNEL = "trackd_events"

POINTS = 1
STATUS = 2
DATA = 3

# Each statement appends events and notifies CHANNEL that something committed (no payload:
# listeners read the log from their positions); PostgreSQL folds identical notifications
# of one transaction.
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', '') WHERE EXISTS (SELECT 1 FROM ins)"  # noqa: S608

RECORD_STATUS = f"""
WITH ins AS (
    INSERT INTO run_events (run_pk, experiment_id, kind, status, end_time, created_ms)
    SELECT run_pk, experiment_id, 2, status, end_time, $2 FROM runs WHERE run_pk = $1
    RETURNING experiment_id
)
{_NOTIFY}"""  # noqa: S608

RECORD_DATA = f"""
WITH ins AS (
    INSERT INTO run_events (run_pk, experiment_id, kind, names, vals, params, param_types,
                            created_ms)
    SELECT run_pk, experiment_id, 3, $2::text[], $3::text[], $4, $6::smallint[], $5
    FROM runs WHERE run_pk = $1
    RETURNING experiment_id
)
{_NOTIFY}"""  # noqa: S608

# The database's clock in milliseconds since the epoch: watch_interest's expiries are on it,
# so that servers with different clocks agree (trackd_lock_group, migration 0014, reads them too).
NOW_MS = "(extract(epoch FROM statement_timestamp()) * 1000)::bigint"

# Whether points are recorded is read by every transaction that writes points, in its
# series lock query (trackd_lock_group, migration 0014, its `watched`), before it records them:
# that read's ACCESS SHARE lock on watch_interest, held until it commits, is what a
# registration (REGISTER, after LOCK_INTEREST) waits for.

# The only mode that conflicts with the ACCESS SHARE lock of a plain read of watch_interest.
# The timeout bounds how long writers of points queue behind a registration that waits.
LOCK_INTEREST = "SET LOCAL lock_timeout = '10s'; LOCK TABLE watch_interest IN ACCESS EXCLUSIVE MODE"

# Registers interest in experiment $1 for $2 ms from now, under LOCK_INTEREST. A stretch of
# interest that is still live goes on (its since_seq kept); otherwise a new one begins, with
# a since_seq drawn now, above every position given so far. Returns since_seq and the ms
# the interest has left.
REGISTER = f"""
INSERT INTO watch_interest AS w (experiment_id, until_ms, since_seq)
VALUES ($1, {NOW_MS} + $2, nextval(pg_get_serial_sequence('run_events', 'seq')))
ON CONFLICT (experiment_id) DO UPDATE SET
    until_ms = CASE WHEN w.until_ms > {NOW_MS}
                    THEN greatest(w.until_ms, EXCLUDED.until_ms) ELSE EXCLUDED.until_ms END,
    since_seq = CASE WHEN w.until_ms > {NOW_MS} THEN w.since_seq ELSE EXCLUDED.since_seq END
RETURNING since_seq, until_ms - {NOW_MS} AS left_ms"""  # noqa: S608

# Expired interest: no writer records for it any more, and a registration starts anew.
# Extends a stretch of interest that is live for EXTEND_MARGIN_MS more at least: writers
# already record its points, and it cannot expire before this commits, so no lock is needed
# (writers are not stopped). No row: the caller registers under LOCK_INTEREST instead.
EXTEND_MARGIN_MS = 10_000
EXTEND = f"""
UPDATE watch_interest SET until_ms = greatest(until_ms, {NOW_MS} + $2)
WHERE experiment_id = $1 AND until_ms > {NOW_MS} + {EXTEND_MARGIN_MS}
RETURNING since_seq, until_ms - {NOW_MS} AS left_ms"""  # noqa: S608

FORGET_INTEREST = f"DELETE FROM watch_interest WHERE until_ms <= {NOW_MS}"  # noqa: S608

# The last seq handed out (by any transaction, committed or not); 0 before the first.
LAST_SEQ = """
SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('run_events', 'seq')::regclass),
                0)"""

# The transactions (virtual ids) that may still append events: every transaction that
# inserts into run_events holds this lock from before it draws a seq until after its
# commit is visible.
WRITERS = """
SELECT coalesce(array_agg(virtualtransaction), '{}')
FROM pg_locks
WHERE locktype = 'relation' AND relation = 'run_events'::regclass
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND mode = 'RowExclusiveLock' AND pid <> pg_backend_pid()"""

PRUNED = "SELECT through FROM run_events_pruned"

_SELECT = """
SELECT e.seq, r.run_id, e.kind, e.key, e.points, e.columns, e.status, e.end_time, e.names,
       e.vals, e.params, e.param_types, e.created_ms
FROM (
    SELECT e.*, sum(coalesce(e.points, 0)) OVER (ORDER BY e.seq) AS upto
    FROM run_events e
    WHERE e.{column} = $1 AND e.seq > $2 AND e.seq <= $3
      AND (e.kind <> 1 OR $4::text[] IS NULL OR e.key = ANY($4::text[]))
    ORDER BY e.seq
    LIMIT $5
) e
JOIN runs r ON r.run_pk = e.run_pk
WHERE e.upto - coalesce(e.points, 0) < $6
ORDER BY e.seq"""
READ_RUN = _SELECT.format(column="run_pk")
READ_EXPERIMENT = _SELECT.format(column="experiment_id")

# The end of the oldest expired stretch among the first $2 events (the seq before the first
# event not older than $1), or NULL when the oldest event is not expired.
EXPIRED_THROUGH = """
WITH w AS (SELECT seq, created_ms FROM run_events ORDER BY seq LIMIT $2)
SELECT CASE WHEN bool_and(created_ms < $1) THEN max(seq)
            ELSE min(seq) FILTER (WHERE created_ms >= $1) - 1 END
FROM w"""
PRUNE = "DELETE FROM run_events WHERE seq <= $1"
MARK_PRUNED = "UPDATE run_events_pruned SET through = greatest(through, $1)"

_BIG = sys.byteorder == "big"


def pack(steps: Sequence[int], timestamps: Sequence[int], values: Sequence[float]) -> bytes:
    """The columns of a point event: steps, timestamps, values, little-endian."""
    parts: list[array[Any]] = [array("q", steps), array("q", timestamps), array("d", values)]
    if _BIG:
        for a in parts:
            a.byteswap()
    return b"".join(a.tobytes() for a in parts)


def unpack(data: bytes, n: int) -> tuple[list[int], list[int], list[float]]:
    """(steps, timestamps, values) of a point event's columns."""
    steps, stamps, values = array("q"), array("q"), array("d")
    steps.frombytes(data[: 8 * n])
    stamps.frombytes(data[8 * n : 16 * n])
    values.frombytes(data[16 * n : 24 * n])
    if _BIG:
        for a in (steps, stamps, values):
            a.byteswap()
    return steps.tolist(), stamps.tolist(), values.tolist()


async def record_status(conn: Connection, run_pk: int, now: int) -> None:
    """Appends the run's status and end time as they are now in this transaction."""
    await conn.execute(RECORD_STATUS, run_pk, now)


async def record_data(
    conn: Connection,
    run_pk: int,
    params: tuple[Sequence[str], Sequence[str], Sequence[int]],
    tags: tuple[Sequence[str], Sequence[str]],
    now: int,
) -> None:
    """Appends params (keys, values, ParamType numbers) and tags (keys, values) a run
    logged, if any."""
    names = [*params[0], *tags[0]]
    if names:
        vals = [*params[1], *tags[1]]
        await conn.execute(RECORD_DATA, run_pk, names, vals, len(params[0]), now, list(params[2]))


async def register_interest(conn: Connection, experiment_id: int, for_ms: int) -> tuple[int, int]:
    """Registers interest in an experiment for `for_ms` from now, once every transaction
    that may have read watch_interest before has ended; returns (since_seq, ms left). The
    caller commits at once (the lock stops every writer of points meanwhile), and tries
    extend_interest first, in a transaction of its own."""
    await conn.execute(LOCK_INTEREST)
    row = await conn.fetchrow(REGISTER, experiment_id, for_ms)
    assert row is not None
    return row["since_seq"], row["left_ms"]


async def extend_interest(
    conn: Connection, experiment_id: int, for_ms: int
) -> tuple[int, int] | None:
    """Extends live interest in an experiment to `for_ms` from now without a lock (see
    EXTEND); (since_seq, ms left), or None when it is not live enough (register it)."""
    row = await conn.fetchrow(EXTEND, experiment_id, for_ms)
    return None if row is None else (row["since_seq"], row["left_ms"])


async def forget_interest(conn: Connection) -> None:
    """Deletes expired interest."""
    await conn.execute(FORGET_INTEREST)


async def last_seq(conn: Connection) -> int:
    """The last seq drawn by any transaction."""
    value: int = await conn.fetchval(LAST_SEQ)
    return value


async def writers(conn: Connection) -> frozenset[str]:
    """The transactions that may still append events."""
    found: list[str] = await conn.fetchval(WRITERS)
    return frozenset(found)


async def pruned_through(conn: Connection) -> int:
    """The highest seq pruned so far."""
    value: int = await conn.fetchval(PRUNED)
    return value


async def read(
    conn: Connection,
    *,
    run_pk: int | None,
    experiment_id: int | None,
    after: int,
    through: int,
    keys: Sequence[str] | None,
    limit: int,
    points: int,
) -> list[asyncpg.Record]:
    """Events of a run (or of an experiment's runs) with after < seq <= through, in seq
    order: at most `limit`, and no more once `points` points are reached (always the first
    one). Point events are only of `keys` when given."""
    if run_pk is not None:
        sql, target = READ_RUN, run_pk
    else:
        assert experiment_id is not None
        sql, target = READ_EXPERIMENT, experiment_id
    return list(await conn.fetch(sql, target, after, through, keys, limit, points))


async def prune(conn: Connection, expired_before_ms: int, at_most: int, below: int) -> int:
    """Deletes the oldest events created before `expired_before_ms` (at most `at_most`,
    never above seq `below`) and records how far; returns the highest seq pruned, 0 if
    none."""
    through: int | None = await conn.fetchval(EXPIRED_THROUGH, expired_before_ms, at_most)
    if through is None:
        return 0
    through = min(through, below)
    if through <= 0:
        return 0
    await conn.execute(PRUNE, through)
    await conn.execute(MARK_PRUNED, through)
    return through
