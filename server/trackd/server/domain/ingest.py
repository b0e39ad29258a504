"""The metric write path: group commit of concurrent writers into few statements and few
commits, with bounded memory and backpressure.

Every metric write (LogMetric, metrics-only LogBatch, StreamMetrics chunks) becomes an
`Item` on the queue of one of a few writer tasks. A writer takes every item queued (up to a
group size), writes them in one transaction and resolves each item's future after the
commit: one COPY (or one INSERT) for all their points, one read and one write of the
touched series' summaries, one commit. While a group commits, the next one gathers, so the
busier trackd is, the larger its groups and the fewer its commits.

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
from trackd.server.store import experiments as experiment_store
from trackd.server.store import metrics as store
from trackd.server.store import runs as run_store
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
        # Told, after each commit, the series whose rows reached compaction's threshold.
        self.on_grown = on_grown
        # When the last group committed (time.monotonic()).
        self.last_commit = 0.0
        self.max_queued_points = max_queued_points
        self.max_group_points = max_group_points
        self.queues: list[asyncio.Queue[Item]] = [asyncio.Queue() for _ in range(writers)]
        self.tasks: list[asyncio.Task[None]] = []
        self.queued_points = 0
        self.space = asyncio.Condition()
        # Ids never change once assigned: run_id -> run_pk, (run_pk, key) -> series_id.
        self.run_pks = LruCache(200_000)
        self.series_ids = LruCache(1_000_000)
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

    def busy(self, within: float = 0.25) -> bool:
        """Whether points are queued or a group committed in the last `within` seconds."""
        return self.queued_points > 0 or time.monotonic() - self.last_commit < within

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
        created: dict[tuple[int, str], int] = {}
        grown: list[int] = []
        live = [it for it in group if not it.cancelled]
        for it in group:
            if it.cancelled:
                it.future.cancel()
        if not live:
            return
        work = functools.partial(self._write_group_in, live, created, grown)
        for attempt in range(CONNECTION_RETRIES):
            try:
                results = await self.db.transact(work)
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
            written = zip(live, results, strict=True)
            self.on_commit(
                sum(it.points for it, r in written if r.error is None and not r.duplicate)
            )
        for pair, sid in created.items():
            self.series_ids.put(pair, sid)
        self.last_commit = time.monotonic()
        if grown and self.on_grown is not None:
            self.on_grown(grown)
        for item, result in zip(live, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    async def _write_group_in(
        self,
        group: list[Item],
        created: dict[tuple[int, str], int],
        grown: list[int],
        conn: Connection,
    ) -> list[Result]:
        created.clear()
        grown.clear()
        return await self._write_group(conn, group, created, grown)

    async def _write_group(
        self,
        conn: Connection,
        group: list[Item],
        created: dict[tuple[int, str], int],
        grown: list[int],
    ) -> list[Result]:
        results = [Result() for _ in group]
        live = list(range(len(group)))
        # 1. Streams: a chunk at or below its stream's committed sequence is a resend.
        streams = [it.stream for it in group if it.stream is not None]
        marks: dict[str, int] = {}
        if streams:
            marks = await store.lock_streams(conn, [s for s, _ in streams])
            keep = []
            for i in live:
                stream = group[i].stream
                if stream is None:
                    keep.append(i)
                    continue
                sid, seq = stream
                if seq <= marks[sid]:
                    results[i].duplicate = True
                else:
                    marks[sid] = seq
                    keep.append(i)
            live = keep
        # 2. Series ids, creating the missing series.
        ids = await self._series_ids(conn, [sp for i in live for sp in group[i].series], created)
        # 3. Lock the series; reject items whose run or experiment is deleted.
        rows = {r["series_id"]: r for r in await store.lock_series(conn, set(ids.values()))}
        keep = []
        for i in live:
            bad = next(
                (
                    sp
                    for sp in group[i].series
                    if rows[ids[(sp.run_pk, sp.key)]]["run_stage"] != run_store.ACTIVE
                    or rows[ids[(sp.run_pk, sp.key)]]["experiment_stage"] != experiment_store.ACTIVE
                ),
                None,
            )
            if bad is None:
                keep.append(i)
            else:
                results[i].error = FailedPrecondition(
                    f"run {bad.run_id} is deleted, or belongs to a deleted experiment; "
                    "restore it before writing to it",
                    metadata={"run_id": bad.run_id},
                )
        live = keep
        # 4. Points and summaries.
        by_series: dict[int, tuple[list[int], list[int], list[float]]] = {}
        for i in live:
            for sp in group[i].series:
                cols = by_series.setdefault(ids[(sp.run_pk, sp.key)], ([], [], []))
                cols[0].extend(sp.steps)
                cols[1].extend(sp.timestamps)
                cols[2].extend(sp.values)
        await write_points(conn, by_series, rows)
        grown.extend(
            sid
            for sid, cols in by_series.items()
            if rows[sid]["count"] + len(cols[0]) - (rows[sid]["compacted_count"] or 0)
            >= compaction.MIN_ROWS
        )
        if streams:
            await store.advance_streams(conn, marks, now_ms())
        return results

    async def _series_ids(
        self,
        conn: Connection,
        series: Sequence[SeriesPoints],
        created: dict[tuple[int, str], int],
    ) -> dict[tuple[int, str], int]:
        ids: dict[tuple[int, str], int] = {}
        missing = []
        for sp in series:
            pair = (sp.run_pk, sp.key)
            sid = self.series_ids.get(pair)
            if sid is None:
                missing.append(pair)
            else:
                ids[pair] = sid
        if missing:
            fresh = await store.ensure_series(conn, sorted(set(missing)))
            ids.update(fresh)
            created.update(fresh)
        return ids


async def write_points(
    conn: Connection,
    by_series: dict[int, tuple[list[int], list[int], list[float]]],
    locked: dict[int, Any],
) -> int:
    """Inserts points (series_id -> steps, timestamps, values) and folds the inserted ones
    into the locked series rows' summaries; returns how many were inserted."""
    if not by_series:
        return 0
    await _drop_compacted(conn, by_series, locked)
    sids: list[int] = []
    steps: list[int] = []
    stamps: list[int] = []
    values: list[float] = []
    for sid, (st, ts, vs) in by_series.items():
        sids.extend([sid] * len(st))
        steps.extend(st)
        stamps.extend(ts)
        values.extend(vs)
    inserted = await store.insert_points(conn, sids, steps, stamps, values)
    if inserted is not None:
        # Some points were exact duplicates: fold only the ones inserted.
        by_series = {}
        for r in inserted:
            cols = by_series.setdefault(r["series_id"], ([], [], []))
            cols[0].append(r["step"])
            cols[1].append(r["ts"])
            cols[2].append(r["value"])
        count = len(inserted)
    else:
        count = len(sids)
    # Summaries and tiers in one statement (one round trip).
    folded = [summaries.fold(dict(locked[sid]), *cols) for sid, cols in by_series.items()]
    now = now_ms()
    await store.update_summaries_and_tiers(conn, folded, now, tiers.batch_rows(by_series))
    # The watch log: one event per series of a watched experiment, in this transaction
    # (WatchRun replays it).
    await event_store.record_points(conn, by_series, locked, now)
    return count


async def _drop_compacted(
    conn: Connection,
    by_series: dict[int, tuple[list[int], list[int], list[float]]],
    locked: dict[int, Any],
) -> None:
    """Removes from `by_series` the points that repeat a point already compacted into a
    block (the primary key of metric_points skips a point that repeats a row). Only a late
    point, at or below its series' greatest compacted step, can: its series' blocks in the
    steps of such points are read, under the series lock that compaction also takes."""
    for sid, (steps, stamps, values) in list(by_series.items()):
        top = locked[sid]["compacted_step"]
        if top is None:
            continue
        late = [s for s in steps if s <= top]
        if not late:
            continue
        found = await block_store.overlapping(conn, sid, [(min(late), max(late))])
        keep = blocks.drop_compacted(steps, stamps, values, found)
        if len(keep) == len(steps):
            continue
        if keep:
            by_series[sid] = (
                [steps[i] for i in keep],
                [stamps[i] for i in keep],
                [values[i] for i in keep],
            )
        else:
            del by_series[sid]


async def write_run_series(conn: Connection, series: Sequence[SeriesPoints]) -> int:
    """Writes points of one transaction that already holds its run's lock (LogBatch with
    params or tags): creates series, locks them, inserts and folds."""
    ids = await store.ensure_series(conn, sorted({(sp.run_pk, sp.key) for sp in series}))
    rows = {r["series_id"]: r for r in await store.lock_series(conn, set(ids.values()))}
    by_series: dict[int, tuple[list[int], list[int], list[float]]] = {}
    for sp in series:
        cols = by_series.setdefault(ids[(sp.run_pk, sp.key)], ([], [], []))
        cols[0].extend(sp.steps)
        cols[1].extend(sp.timestamps)
        cols[2].extend(sp.values)
    return await write_points(conn, by_series, rows)
