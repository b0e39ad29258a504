"""The metric write path: group commit of concurrent writers into few statements and few
commits, with bounded memory and backpressure.

Every metric write (LogMetric, metrics-only LogBatch, StreamMetrics chunks) becomes an
`Item` on the queue of one of a few writer tasks. A writer takes every item queued (up to a
group size), writes them as one group and resolves each item's future after the commit.
While a group commits, the next one gathers, so the busier trackd is, the larger its groups
and the fewer its commits.

A group is written by the database functions of migration 0014, to which the server hands
what depends only on the new points (each series' batch summary, summaries.partial; the
tier blocks, tiers.batch_rows; the watch events' columns):
- below store.COPY_THRESHOLD points, one statement (trackd_write_group, no BEGIN or
  COMMIT): lock, insert, fold. It declines, writing nothing, a group with a resent chunk,
  a deleted run or experiment or a point stored already;
- otherwise (or when it declined) a transaction: trackd_lock_group, then the points (COPY,
  or an INSERT that skips exact duplicates), then trackd_fold_group over the points
  inserted, with resent chunks and items of deleted runs sorted out in between.

Lock order, the same for every writer of series: stream rows (by id), then series rows (by
id). Unary LogBatch calls with params lock their run row first and then series the same
way; runs are never locked by a writer, so there is no cycle.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trackd.server.clock import now_ms
from trackd.server.domain import blocks, compaction, summaries, tiers
from trackd.server.errors import (
    FailedPrecondition,
    TrackdError,
    Unavailable,
    run_not_found,
)
from trackd.server.store import blocks as block_store
from trackd.server.store import events as event_store
from trackd.server.store import metrics as store
from trackd.server.store import tiers as tier_store
from trackd.server.store.pool import CONNECTION_ERRORS, Connection, Database

log = logging.getLogger(__name__)

CONNECTION_RETRIES = 3


@dataclass
class SeriesPoints:
    """Points of one series (run and key), column-wise."""

    run_pk: int
    run_id: str
    key: str
    steps: list[int]
    timestamps: list[int]
    values: list[float]


@dataclass
class Result:
    """What became of an item: committed (or already committed before: duplicate), or
    rejected with an error and nothing written."""

    duplicate: bool = False
    error: TrackdError | None = None


@dataclass
class Item:
    """One write request on a writer's queue."""

    series: list[SeriesPoints]
    points: int
    stream: tuple[str, int] | None = None
    # Set when the caller gave up (deadline, cancellation) before a writer took the item.
    cancelled: bool = False
    future: asyncio.Future[Result] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class LruCache:
    """A bounded mapping that forgets the least recently used entries."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data: OrderedDict[Any, int] = OrderedDict()

    def get(self, key: Any) -> int | None:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: Any, value: int) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.capacity:
            self.data.popitem(last=False)


class Writers:
    """Group-commit writer tasks with a global bound on queued points."""

    def __init__(
        self,
        db: Database,
        *,
        writers: int = 2,
        max_queued_points: int = 1_000_000,
        max_group_points: int = 100_000,
        on_commit: Callable[[int], None] | None = None,
        on_grown: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.db = db
        self.on_commit = on_commit
        # Told, after a commit, the series to which this server wrote compaction's
        # threshold of points since it last told (compaction checks them under lock).
        self.on_grown = on_grown
        self.grown = LruCache(100_000)
        # When the last group committed (time.monotonic()).
        self.last_commit = 0.0
        self.max_queued_points = max_queued_points
        self.max_group_points = max_group_points
        self.queues: list[asyncio.Queue[Item]] = [asyncio.Queue() for _ in range(writers)]
        self.tasks: list[asyncio.Task[None]] = []
        self.queued_points = 0
        self.space = asyncio.Condition()
        # Ids never change once assigned: run_id -> run_pk.
        self.run_pks = LruCache(200_000)
        self.closing = False

    def start(self) -> None:
        """Starts the writer tasks."""
        self.tasks = [
            asyncio.create_task(self._run(q), name=f"trackd-writer-{i}")
            for i, q in enumerate(self.queues)
        ]

    async def stop(self) -> None:
        """Lets the writers commit everything queued, then stops them."""
        self.closing = True
        for q in self.queues:
            await q.join()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    # -- submitting ------------------------------------------------------------------------

    async def enqueue(self, item: Item, shard: str | int) -> asyncio.Future[Result]:
        """Queues an item, waiting while too many points are queued (backpressure); returns
        the future that resolves once the item is committed or rejected."""
        if self.closing:
            raise Unavailable("the server is shutting down; retry on another server")
        async with self.space:
            await self.space.wait_for(
                lambda: (
                    self.queued_points == 0
                    or self.queued_points + item.points <= self.max_queued_points
                )
            )
            self.queued_points += item.points
        key = shard if isinstance(shard, int) else zlib.crc32(shard.encode())
        self.queues[key % len(self.queues)].put_nowait(item)
        return item.future

    async def write(self, item: Item, shard: str | int) -> Result:
        """Queues an item and waits for its commit. If the caller is cancelled (its deadline
        passed) before a writer takes the item, the item is dropped unwritten."""
        future = await self.enqueue(item, shard)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            item.cancelled = True
            raise

    async def resolve_runs(self, run_ids: Sequence[str]) -> dict[str, int]:
        """Internal keys of the existing runs among `run_ids` (cached; one query for the
        misses)."""
        found: dict[str, int] = {}
        missing = []
        for rid in set(run_ids):
            pk = self.run_pks.get(rid)
            if pk is None:
                missing.append(rid)
            else:
                found[rid] = pk
        if missing:
            fetched = await self.db.read(lambda conn: store.run_pks(conn, missing))
            for rid, pk in fetched.items():
                self.run_pks.put(rid, pk)
            found.update(fetched)
        return found

    async def resolve_run(self, run_id: str) -> int:
        """The internal key of a run; NotFound if there is none."""
        pk = (await self.resolve_runs([run_id])).get(run_id)
        if pk is None:
            raise run_not_found(run_id)
        return pk

    # -- the writer ------------------------------------------------------------------------

    async def _run(self, queue: asyncio.Queue[Item]) -> None:
        while True:
            group = [await queue.get()]
            points = group[0].points
            while not queue.empty() and points < self.max_group_points:
                item = queue.get_nowait()
                group.append(item)
                points += item.points
            try:
                await self._commit(group)
            except BaseException as exc:
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                log.warning("group of %s items failed: %r", len(group), exc)
            finally:
                async with self.space:
                    self.queued_points -= points
                    self.space.notify_all()
                for _ in group:
                    queue.task_done()

    async def _commit(self, group: list[Item]) -> None:
        live = [it for it in group if not it.cancelled]
        for it in group:
            if it.cancelled:
                it.future.cancel()
        if not live:
            return
        written: dict[int, int] = {}
        for attempt in range(CONNECTION_RETRIES):
            try:
                written.clear()
                results = await self._write(live, written)
                break
            except CONNECTION_ERRORS:
                # A group write is idempotent (stream marks, and points that skip exact
                # duplicates and fold only what they insert), so it may run again even if
                # the lost connection had committed it.
                if attempt == CONNECTION_RETRIES - 1:
                    raise
                log.warning("writer lost its connection; retrying the group")
                await asyncio.sleep(0.05 * 2**attempt)
        if self.on_commit is not None:
            done = zip(live, results, strict=True)
            self.on_commit(sum(it.points for it, r in done if r.error is None and not r.duplicate))
        self.last_commit = time.monotonic()
        self.note_written(written)
        for item, result in zip(live, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    def busy(self, within: float = 0.25) -> bool:
        """Whether points are queued or a group committed in the last `within` seconds."""
        return self.queued_points > 0 or time.monotonic() - self.last_commit < within

    def note_written(self, written: dict[int, int]) -> None:
        """Counts points committed per series id (by a writer, or by a LogBatch with params
        in its own transaction), and names to compaction the series that reached its
        threshold since they were last named."""
        if self.on_grown is None:
            return
        grown = []
        for sid, n in written.items():
            total = (self.grown.get(sid) or 0) + n
            if total >= compaction.MIN_ROWS - compaction.KEEP_ROWS:
                grown.append(sid)
                total = 0
            self.grown.put(sid, total)
        if grown:
            self.on_grown(grown)

    async def _write(self, group: list[Item], written: dict[int, int]) -> list[Result]:
        """Writes a group: below store.COPY_THRESHOLD points in one statement
        (trackd_write_group) when every chunk is new, every run active and every point new;
        otherwise, or if that statement declines, in a transaction that sorts those out."""
        if sum(it.points for it in group) < store.COPY_THRESHOLD:
            results = await self.db.statement(functools.partial(_write_simple, group, written))
            if results is not None:
                return results
        return await self.db.transact(functools.partial(_write_group, group, written))


def _stream_order(group: Sequence[Item]) -> list[bool]:
    """Whether each item is a resend of a chunk before it in the group (the same stream and
    a sequence not above one seen before it)."""
    seen: dict[str, int] = {}
    resent = []
    for it in group:
        if it.stream is None:
            resent.append(False)
            continue
        sid, seq = it.stream
        resent.append(seq <= seen.get(sid, 0))
        if not resent[-1]:
            seen[sid] = seq
    return resent


def _columns(
    series: Sequence[SeriesPoints], index: dict[tuple[int, str], int]
) -> dict[int, tuple[list[int], list[int], list[float]]]:
    """The points of `series` by their position in `index` (adding the series missing),
    column-wise."""
    by_series: dict[int, tuple[list[int], list[int], list[float]]] = {}
    for sp in series:
        i = index.setdefault((sp.run_pk, sp.key), len(index) + 1)
        cols = by_series.setdefault(i, ([], [], []))
        cols[0].extend(sp.steps)
        cols[1].extend(sp.timestamps)
        cols[2].extend(sp.values)
    return by_series


def _flat(
    by_position: dict[int, tuple[list[int], list[int], list[float]]],
    owner: Callable[[int], int],
) -> tuple[list[int], list[int], list[int], list[float]]:
    """The points of every position as four columns: each point's owner(position) (its
    position, or its series id), step, timestamp and value."""
    owners: list[int] = []
    steps: list[int] = []
    stamps: list[int] = []
    values: list[float] = []
    for i, (st, ts, vs) in by_position.items():
        owners.extend([owner(i)] * len(st))
        steps.extend(st)
        stamps.extend(ts)
        values.extend(vs)
    return owners, steps, stamps, values


def _fold(
    by_series: dict[int, tuple[list[int], list[int], list[float]]],
    recorded: Callable[[int], bool],
) -> store.Fold:
    """The fold of the inserted points of series 1..n (by_series: every position, in
    order): each one's summary, the tier blocks and the watch-event columns of the series
    `recorded` accepts."""
    partials, counts, columns = [], [], []
    for i, (steps, stamps, values) in by_series.items():
        partials.append(summaries.partial(steps, stamps, values))
        counts.append(len(steps))
        columns.append(event_store.pack(steps, stamps, values) if recorded(i) else None)
    return store.Fold(
        partials, tier_store.upsert_args(tiers.batch_rows(by_series)), counts, columns
    )


async def _write_simple(
    group: list[Item], written: dict[int, int], conn: Connection
) -> list[Result] | None:
    """Writes a group in one statement, or returns None having written nothing; counts
    the points written per series id in `written`."""
    results = [Result(duplicate=resent) for resent in _stream_order(group)]
    streams: dict[str, tuple[int, int]] = {}
    index: dict[tuple[int, str], int] = {}
    series: list[SeriesPoints] = []
    for it, r in zip(group, results, strict=True):
        if r.duplicate:
            continue
        if it.stream is not None:
            sid, seq = it.stream
            first, _ = streams.get(sid, (seq, seq))
            streams[sid] = (first, seq)
        series.extend(it.series)
    by_series = _columns(series, index)
    # Every series' event columns go along; the function records those of watched series.
    fold = _fold(by_series, lambda i: True)
    ids = await store.write_group(
        conn, streams, list(index), _flat(by_series, lambda i: i), fold, now_ms()
    )
    if ids is None:
        return None
    for i, cols in by_series.items():
        written[ids[i - 1]] = len(cols[0])
    return results


async def _write_group(
    group: list[Item], written: dict[int, int], conn: Connection
) -> list[Result]:
    """Writes a group in a transaction: resent chunks are duplicates, items of a deleted
    run or experiment are rejected, points stored already (as rows or in compacted blocks)
    are skipped. Counts the points written per series id in `written`."""
    results = [Result(duplicate=resent) for resent in _stream_order(group)]
    streams = sorted({it.stream[0] for it in group if it.stream is not None})
    index: dict[tuple[int, str], int] = {}
    for it in group:
        for sp in it.series:
            index.setdefault((sp.run_pk, sp.key), len(index) + 1)
    locked = await store.lock_group(conn, streams, list(index))
    # 1. Streams: a chunk at or below its stream's committed sequence is a resend.
    marks = dict(zip(streams, locked.marks, strict=True))
    for it, r in zip(group, results, strict=True):
        if it.stream is not None and not r.duplicate:
            sid, seq = it.stream
            if seq <= marks[sid]:
                r.duplicate = True
            else:
                marks[sid] = seq
    # 2. Items with a series of a run or experiment that is not active are rejected.
    live: list[SeriesPoints] = []
    for it, r in zip(group, results, strict=True):
        if r.duplicate:
            continue
        bad = next(
            (sp for sp in it.series if not locked.active[index[(sp.run_pk, sp.key)] - 1]), None
        )
        if bad is None:
            live.extend(it.series)
        else:
            r.error = FailedPrecondition(
                f"run {bad.run_id} is deleted, or belongs to a deleted experiment; "
                "restore it before writing to it",
                metadata={"run_id": bad.run_id},
            )
    # 3. Points and their fold.
    await _insert_and_fold(conn, _columns(live, index), locked, marks, written)
    return results


async def _insert_and_fold(
    conn: Connection,
    by_position: dict[int, tuple[list[int], list[int], list[float]]],
    locked: store.Locked,
    marks: dict[str, int],
    written: dict[int, int],
) -> int:
    """Inserts points of locked series (by position in `locked`, from 1), skipping those
    stored already, and folds the inserted ones; returns how many were inserted (and counts
    them per series id in `written`)."""
    await _drop_compacted(conn, by_position, locked)
    sids, steps, stamps, values = _flat(by_position, lambda i: locked.series_ids[i - 1])
    by_id: dict[int, tuple[list[int], list[int], list[float]]] = {}
    inserted = await store.insert_points(conn, sids, steps, stamps, values) if sids else None
    if inserted is None:
        by_id = {locked.series_ids[i - 1]: cols for i, cols in by_position.items()}
        count = len(sids)
    else:
        # Some points were exact duplicates: fold only the ones inserted.
        for r in inserted:
            cols = by_id.setdefault(r["series_id"], ([], [], []))
            cols[0].append(r["step"])
            cols[1].append(r["ts"])
            cols[2].append(r["value"])
        count = len(inserted)
    # The fold's own positions: the series with inserted points, 1..n.
    ids = list(by_id)
    watched = dict(zip(locked.series_ids, locked.watched, strict=True))
    fold = _fold(
        {k: cols for k, cols in enumerate(by_id.values(), 1)},
        lambda k: watched[ids[k - 1]],
    )
    await store.fold_group(conn, ids, [watched[sid] for sid in ids], fold, marks, now_ms())
    for sid, cols in by_id.items():
        written[sid] = len(cols[0])
    return count


async def _drop_compacted(
    conn: Connection,
    by_position: dict[int, tuple[list[int], list[int], list[float]]],
    locked: store.Locked,
) -> None:
    """Removes from `by_position` the points that repeat a point already compacted into a
    block (the primary key of metric_points skips a point that repeats a row). Only a late
    point, at or below its series' greatest compacted step, can: its series' blocks in the
    steps of such points are read, under the series lock that compaction also takes."""
    for i, (steps, stamps, values) in list(by_position.items()):
        top = locked.compacted[i - 1]
        late = [s for s in steps if s <= top] if top is not None else []
        if not late:
            continue
        found = await block_store.overlapping(
            conn, locked.series_ids[i - 1], [(min(late), max(late))]
        )
        keep = blocks.drop_compacted(steps, stamps, values, found)
        if not keep:
            del by_position[i]
        elif len(keep) < len(steps):
            by_position[i] = (
                [steps[k] for k in keep],
                [stamps[k] for k in keep],
                [values[k] for k in keep],
            )


async def write_run_series(
    conn: Connection, series: Sequence[SeriesPoints], written: dict[int, int]
) -> int:
    """Writes points of one transaction that already holds its run's lock (LogBatch with
    params or tags): creates series, locks them, inserts and folds; counts the points
    written per series id in `written` (for Writers.note_written after the commit)."""
    index: dict[tuple[int, str], int] = {}
    by_position = _columns(series, index)
    locked = await store.lock_group(conn, [], list(index))
    return await _insert_and_fold(conn, by_position, locked, {}, written)
