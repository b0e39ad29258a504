"""Background compaction of metric points into blocks (domain/blocks.py).

A series is compacted once it holds at least MIN_ROWS points as rows: its oldest rows after
its last block, in (step, ts, value) order, become full blocks of BLOCK_POINTS points, and
at least KEEP_ROWS of its newest rows stay rows (the recent points a live chart and a late
duplicate touch). One transaction per series and round, under the series row's lock (the
lock every writer of the series takes): it reads the rows, inserts their blocks, deletes
exactly those rows and counts them as compacted. A reader's snapshot sees the points as
rows or in blocks, never both; a crash at any moment leaves the transaction committed or
not at all.

While the writers are busy, compaction takes at most BUSY_SHARE of the time, so that a
burst of ingest keeps its speed and leaves its points as rows for a while; compaction
catches up once the burst is over.

What to compact comes from two places: the writers name the series whose rows passed the
threshold in a commit (`note`), and a sweep of every series (at start, then every
`sweep_every` seconds) finds what no writer named: points stored before this server
started, by LogBatch calls with params, or named to a server that then stopped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable

import numpy as np

from trackd.server.domain import blocks
from trackd.server.store import blocks as store
from trackd.server.store import metrics as metric_store
from trackd.server.store.pool import CONNECTION_ERRORS, Connection, Database

log = logging.getLogger(__name__)

BLOCK_POINTS = blocks.BLOCK_POINTS
# Rows a series keeps after compaction, at least.
KEEP_ROWS = BLOCK_POINTS
# Rows that make a series worth compacting: four blocks beyond the rows it keeps, so that
# a busy series is compacted in fewer, larger transactions.
MIN_ROWS = KEEP_ROWS + 4 * BLOCK_POINTS
# Blocks one transaction writes at most (a series with more rows takes several rounds):
# a round holds its series' lock, which that series' writers wait for, for some 50 ms.
BLOCKS_PER_ROUND = 16
# While the writers are busy, the share of the time compaction may take (it shares the
# server's event loop and PostgreSQL with them): ingest keeps at least about 90% of its
# speed, and compaction catches up on what a burst left as rows once the burst is over.
BUSY_SHARE = 0.1


class CompactionConflict(Exception):
    """The rows deleted were not the rows compacted (never expected under the lock)."""


async def compact_series(conn: Connection, series_id: int, *, max_blocks: int) -> int:
    """Moves the oldest rows of a series after its last block into up to `max_blocks`
    blocks, keeping KEEP_ROWS rows; returns the points moved. Runs in the caller's
    transaction."""
    row = await store.lock(conn, series_id)
    if row is None or row["count"] - row["compacted_count"] < KEEP_ROWS + BLOCK_POINTS:
        return 0
    last = await store.last_key(conn, series_id)
    # The rows after the last block, in order: the history read's own query.
    steps, stamps, values = await metric_store.history_chunk(
        conn, series_id, last, max_blocks * BLOCK_POINTS + KEEP_ROWS
    )
    n = (len(steps) - KEEP_ROWS) // BLOCK_POINTS
    if n <= 0:
        return 0
    moved = n * BLOCK_POINTS
    cols = (
        np.asarray(steps[:moved], dtype=np.int64),
        np.asarray(stamps[:moved], dtype=np.int64),
        np.asarray(values[:moved], dtype=np.float64),
    )
    built = [
        blocks.encode(*(c[k : k + BLOCK_POINTS] for c in cols))
        for k in range(0, moved, BLOCK_POINTS)
    ]
    await store.insert(conn, series_id, built)
    first = (steps[0], stamps[0], values[0])
    end = (steps[moved - 1], stamps[moved - 1], values[moved - 1])
    deleted = await store.delete_rows(conn, series_id, first, end)
    if deleted != moved:
        raise CompactionConflict(
            f"series {series_id}: compacted {moved} rows but the range held {deleted}"
        )
    await store.mark(conn, series_id, moved, end[0])
    return moved


# A round that fails on these is retried in a later round.
_RETRIED: tuple[type[BaseException], ...] = (CompactionConflict, OSError, *CONNECTION_ERRORS)


async def _compact(conn: Connection, *, series_id: int) -> int:
    return await compact_series(conn, series_id, max_blocks=BLOCKS_PER_ROUND)


class Compactor:
    """The background task that compacts series named by the writers and found by sweeps."""

    def __init__(
        self,
        db: Database,
        *,
        sweep_every: float = 3600.0,
        delay: float = 0.5,
        on_compacted: Callable[[int], None] | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.db = db
        # Whether the writers are busy now (compaction then takes at most BUSY_SHARE).
        self.busy = busy
        self.sweep_every = sweep_every
        self.delay = delay
        self.on_compacted = on_compacted
        self.pending: set[int] = set()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def note(self, series_ids: Iterable[int]) -> None:
        """Names series that may have rows to compact."""
        before = len(self.pending)
        self.pending.update(series_ids)
        if len(self.pending) > before:
            self.wake.set()

    def start(self) -> None:
        """Starts the background task."""
        self.task = asyncio.create_task(self._run(), name="trackd-compactor")

    async def stop(self) -> None:
        """Stops the task (a round in progress is rolled back)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        next_sweep = 0.0
        while True:
            try:
                if time.monotonic() >= next_sweep:
                    found = await self.db.read(lambda conn: store.candidates(conn, MIN_ROWS))
                    self.pending.update(found)
                    next_sweep = time.monotonic() + self.sweep_every
                await self.drain()
            except asyncio.CancelledError:
                raise
            except _RETRIED as exc:
                log.warning("compaction round failed; retrying later: %r", exc)
                await asyncio.sleep(self.delay * 10)
                continue
            except Exception:
                # Anything else is a bug; the task keeps running (the series it was on is
                # found again by the next sweep) rather than stop compacting for good.
                log.exception("compaction round failed")
                await asyncio.sleep(self.delay * 10)
                continue
            self.wake.clear()
            timeout = max(0.0, next_sweep - time.monotonic())
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                continue
            # Let a burst of writes name its series before compacting them.
            await asyncio.sleep(self.delay)

    async def drain(self) -> int:
        """Compacts every pending series until none has rows to compact; returns the points
        moved."""
        total = 0
        while self.pending:
            # Any order will do (a round locks one series): set.pop is O(1), where taking
            # the least id would cost a pass over a sweep's every pending series.
            sid = self.pending.pop()
            work = functools.partial(_compact, series_id=sid)
            while True:
                started = time.monotonic()
                moved = await self.db.transact(work)
                if not moved:
                    break
                total += moved
                if self.on_compacted is not None:
                    self.on_compacted(moved)
                pause = 0.0
                if self.busy is not None and self.busy():
                    pause = (time.monotonic() - started) * (1 / BUSY_SHARE - 1)
                await asyncio.sleep(pause)
        return total
