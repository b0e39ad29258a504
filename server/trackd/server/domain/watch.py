"""Watching runs as they change (WatchRun): updates pushed as they commit, from any server
sharing the database.

Every write that a watcher can see appends rows to the watch log (`run_events`, store/
events.py) in its own transaction, and notifies the channel `trackd_events`, which
PostgreSQL delivers at commit to every server LISTENing on the database. Each server holds
one dedicated connection (not from the pool) that listens; a notification is only a hint
to look, the log is the truth.

The watermark. A seq is drawn when a row is inserted, not when its transaction commits, so
two writers can commit out of seq order: a reader that delivered seq 11 and moved on would
miss seq 10 committing a moment later. Delivery therefore stops at the watermark W, below
which no event can still appear. Every transaction that inserts into run_events holds a
RowExclusiveLock on it from before it draws a seq until after its commit is visible. So a
sample of (L = the last seq drawn, then V = the transactions holding that lock) says: once
none of V holds the lock any more, every seq up to L is final (committed and visible to any
later snapshot, or never to appear). W is the highest such L. The listener takes a sample
on every notification (and every second, in case a notification or an aborted writer went
unnoticed) and raises W for every earlier sample whose writers are gone. Long transactions
that write no event, and other databases, do not hold W back.

A watch call keeps its position (every event of its target up to it delivered) and reads
the events after it, up to W, from the table in seq order, in bounded batches, at its own
pace: a slow reader holds nothing in memory and never slows a writer. When a batch is
behind by more than COALESCE_LAG_MS, or is cut by the batch bounds, its points are merged
per series across commits and only the latest status of each run is sent (`coalesced`).
Events are pruned after --watch-retention seconds by a sweep; a position below what was
pruned ends with FAILED_PRECONDITION.

Interest. Point events are most of the log's volume and most runs are never watched, so
points are recorded only for experiments someone watches, or watched within
--watch-retention (`watch_interest`: experiment_id, until_ms on the database's clock,
since_seq). Status, params and tags events are few and always recorded.
- A writer of points learns which of its series' experiments have live interest in its
  series lock query (trackd_lock_group of migration 0014, its `watched`: no query of its own), in
  the transaction that records them, and records only those series. That read holds the
  table's ACCESS SHARE lock until the writer commits.
- A watch call, before it takes its start position or checks its resume position, registers
  interest in its experiment (a run's: the run's experiment): in one transaction, it locks
  watch_interest in ACCESS EXCLUSIVE mode (the only mode that conflicts with ACCESS SHARE),
  which waits for every writer that read the table before, and upserts until_ms = now +
  retention; then commits. Every writer that reads the table after that sees the interest
  (a READ COMMITTED statement takes its snapshot once it holds its locks), so from the
  commit on, every point of the experiment is recorded, and the ones not recorded
  committed before. While any call of the experiment is open on a server, that server
  registers again every min(retention / 4, 60 s), so interest lasts while watched and for
  the retention after.
- A stretch of continuous interest has a since_seq, drawn (nextval) under the lock when the
  stretch begins, so above every position given before; a registration that finds the
  interest live keeps it. The clock only moves forward, and a registration finds the row
  live only if every writer since the previous one (which all read that row before the lock
  was granted, at an earlier time) found it live too; so within a stretch no point of the
  experiment was left out, and every position given from its start on (a fresh call starts
  at a watermark at or above since_seq) resumes exactly. A position below the since_seq of
  the resuming call's stretch may have missed points that were never recorded: it is
  FAILED_PRECONDITION, as a position older than the retention is. A call whose own stretch
  ends (its server could not register again in time and a new stretch began) ends the same
  way, and while its interest is not known to be live (past the last registration's until)
  it delivers nothing, so it never skips silently.

Positions are opaque: "<seq>" after a whole batch or event, or "<lo>.<hi>.<k>.<mode>.<crc>"
inside one (the first k messages that the events lo < seq <= hi of the target give in that
mode were received; crc ties it to the target and keys).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import logging
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import asyncpg

from trackd.server.clock import now_ms
from trackd.server.domain.validation import Violations, experiment_id, run_id
from trackd.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    TrackdError,
    Unavailable,
    experiment_not_found,
    run_not_found,
)
from trackd.server.store import events as store
from trackd.server.store import experiments as experiment_store
from trackd.server.store import runs as run_store
from trackd.server.store.pool import CONNECTION_ERRORS, Connection, Database
from trackd.v1 import run_pb2
from trackd.v1 import run_service_pb2 as pb

log = logging.getLogger(__name__)

# At most this many keys in a watch's filter.
KEYS_MAX = 100
# A heartbeat message after this many seconds without one.
HEARTBEAT_S = 5.0
# The listener samples at least this often without a notification.
FALLBACK_S = 1.0
# While writers of an earlier sample are still in flight, sample again after this long,
# doubling up to FALLBACK_S (their commit notifies too; this covers a notification that
# arrives before their lock is released).
RETRY_S = 0.005
# Samples kept waiting for their writers.
PENDING_MAX = 64
# One read of a watch call: at most this many events, and no more once this many points.
BATCH_EVENTS = 512
BATCH_POINTS = 200_000
# A batch whose oldest event is older than this (ms) is sent coalesced.
COALESCE_LAG_MS = 1000
# Points per message: 28 bytes a point at most (sizes.py) keeps a message under the
# 4,000,000-byte limit of every response, with room for the ids and the position.
POINTS_PER_MESSAGE = 140_000
# Params and tags per message, in encoded bytes.
DATA_BYTES_MAX = 3_800_000
# How long a resume inside a batch waits for this server to see that batch as final.
CATCH_UP_S = 30.0
# Interest is registered again at least this often (and every retention / 4).
INTEREST_REFRESH_MAX_S = 60.0
# While a call's interest is not known to be live, it checks again this often.
INTEREST_POLL_S = 0.1
# The sweep: at most this many events per transaction, and at least once a minute.
PRUNE_BATCH = 10_000
SWEEP_MAX_S = 60.0

PLAIN, COALESCED = 0, 1
# What ends a listening connection: it is replaced.
_LISTENER_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, asyncpg.PostgresError)
# What fails a registration of interest: it is retried.
_INTEREST_ERRORS: tuple[type[BaseException], ...] = (*_LISTENER_ERRORS, TrackdError)


@dataclass(frozen=True)
class Target:
    """What one call watches: a run or an experiment's runs, and the keys of points."""

    run_pk: int | None
    experiment_id: int | None
    keys: list[str] | None
    # Ties a position inside a batch to this target and these keys.
    crc: int
    # The experiment whose interest the call registers (the run's, for a run).
    watched: int


class Interest:
    """A server's interest in one experiment while calls of it are open: the stretch it
    belongs to (since_seq), until when (monotonic time) it is known to be live, and the
    task that registers it again."""

    def __init__(self, experiment: int, since: int, deadline: float) -> None:
        self.experiment = experiment
        self.since = since
        self.deadline = deadline
        # Set when the stretch ended: points may have gone unrecorded since.
        self.lapsed = False
        self.calls = 0
        self.task: asyncio.Task[None] | None = None

    def live(self) -> bool:
        return not self.lapsed and time.monotonic() < self.deadline


@dataclass(frozen=True)
class Position:
    """Where a call is: everything up to `hi` received, except, when `k` is set, the
    messages after the k-th of the batch lo < seq <= hi in `mode`."""

    hi: int
    lo: int = 0
    k: int = 0
    mode: int = PLAIN
    crc: int = 0

    def token(self) -> str:
        text = str(self.hi)
        if self.k:
            text = f"{self.lo}.{self.hi}.{self.k}.{self.mode}.{self.crc}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @staticmethod
    def parse(token: str) -> Position:
        """The position of a token; InvalidArgument if this server could not have given it."""
        bad = InvalidArgument.for_field(
            "resume_position", "is not a position a WatchRun response gave"
        )
        if len(token) > 200:
            raise bad
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            parts = [int(p) for p in text.split(".")]
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise bad from None
        if len(parts) == 1 and parts[0] >= 0:
            return Position(parts[0])
        if len(parts) == 5:
            lo, hi, k, mode, crc = parts
            if 0 <= lo < hi and k > 0 and mode in (PLAIN, COALESCED):
                return Position(hi, lo, k, mode, crc)
        raise bad


class Watches:
    """The watch calls of one server, the listener that tells them about commits, and the
    sweep of expired events."""

    def __init__(self, db: Database, database_url: str, *, retention: float = 3600.0) -> None:
        self.db = db
        self.url = database_url
        self.retention = retention
        # Every event with seq <= watermark is final.
        self.watermark = 0
        self._pending: list[tuple[int, frozenset[str]]] = []
        self._retry = RETRY_S
        # Set (and replaced) when the watermark rises, and after every sample.
        self._advanced = asyncio.Event()
        self._sampled = asyncio.Event()
        # Set by a notification, a lost connection or a call that wants a fresh sample.
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.closing = False
        # How many times the listener connected (observable in tests).
        self.connects = 0
        self.conn: asyncpg.Connection[Any] | None = None
        # Experiment id -> this server's interest in it, while calls of it are open.
        self._interests: dict[int, Interest] = {}

    async def start(self) -> None:
        """Starts listening for commits and the sweep; waits (up to 5 s) for the first
        watermark."""
        first = self._sampled
        self._tasks = [
            asyncio.create_task(self._listen(), name="trackd-watch-listener"),
            asyncio.create_task(self._sweep_forever(), name="trackd-watch-sweep"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(first.wait(), 5.0)

    async def stop(self) -> None:
        """Stops listening and the sweep, and ends the watch calls (UNAVAILABLE: resume on
        another server with the last position)."""
        self.closing = True
        self._advanced.set()
        tasks = [*self._tasks, *(i.task for i in self._interests.values() if i.task)]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []

    # -- the listener ----------------------------------------------------------------------

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _listen(self) -> None:
        """Keeps one connection LISTENing and samples the watermark; reconnects when it is
        lost (calls lose nothing: they read from their positions)."""
        backoff = 0.1
        while not self.closing:
            conn: asyncpg.Connection[Any] | None = None
            try:
                conn = await asyncpg.connect(
                    self.url, server_settings={"application_name": "trackd-watch"}
                )
                conn.add_termination_listener(self._notified)
                await conn.add_listener(store.CHANNEL, self._notified)
                self.conn = conn
                self.connects += 1
                self._pending.clear()
                backoff = 0.1
                while not self.closing:
                    self._wake.clear()
                    await self._sample(conn)
                    wait = self._retry if self._pending else FALLBACK_S
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                    if conn.is_closed():
                        raise ConnectionError("the listening connection closed")
            except asyncio.CancelledError:
                raise
            except _LISTENER_ERRORS as exc:
                if self.closing:
                    break
                log.warning("watch listener lost its connection (%r); reconnecting", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self.conn = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()

    async def _sample(self, conn: asyncpg.Connection[Any]) -> None:
        """Takes a sample (the last seq, then the writers in flight) and raises the
        watermark as far as the samples whose writers are gone allow."""
        last = await store.last_seq(conn)
        holders = await store.writers(conn)
        mark = self.watermark
        waiting = []
        for seq, writers in self._pending:
            if writers.isdisjoint(holders):
                mark = max(mark, seq)
            else:
                waiting.append((seq, writers))
        if not holders:
            mark = max(mark, last)
        elif last > mark and (not waiting or waiting[-1][0] < last):
            waiting.append((last, holders))
        self._pending = [p for p in waiting if p[0] > mark][:PENDING_MAX]
        self._retry = min(self._retry * 2, FALLBACK_S) if self._pending else RETRY_S
        if mark > self.watermark:
            self.watermark = mark
            advanced, self._advanced = self._advanced, asyncio.Event()
            advanced.set()
        sampled, self._sampled = self._sampled, asyncio.Event()
        sampled.set()

    async def _fresh(self) -> None:
        """Waits (up to 2 s) for a sample taken after now, so that a call starts from what
        committed before it."""
        sampled = self._sampled
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sampled.wait(), 2.0)

    # -- the sweep -------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        every = min(self.retention / 2, SWEEP_MAX_S)
        while True:
            await asyncio.sleep(every)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed sweep is retried at the next one
                log.exception("the watch log sweep failed")

    async def sweep(self) -> int:
        """Prunes events older than the retention, PRUNE_BATCH per transaction; returns the
        highest seq pruned (0 if none)."""
        cutoff = now_ms() - int(self.retention * 1000)
        highest = 0
        for _ in range(1000):
            mark = self.watermark

            async def work(conn: Connection, mark: int = mark) -> int:
                return await store.prune(conn, cutoff, PRUNE_BATCH, mark)

            through = await self.db.transact(work)
            if through <= highest:
                break
            highest = through
        await self.db.transact(store.forget_interest)
        return highest

    # -- interest --------------------------------------------------------------------------

    async def _register(self, experiment: int) -> tuple[int, float]:
        """Registers interest in an experiment for the retention; returns its stretch's
        since_seq and until when (monotonic time) it is certainly live."""
        started = time.monotonic()

        for_ms = int(self.retention * 1000)
        extend = functools.partial(store.extend_interest, experiment_id=experiment, for_ms=for_ms)
        register = functools.partial(
            store.register_interest, experiment_id=experiment, for_ms=for_ms
        )
        try:
            # Live interest goes on without stopping writers; only a new stretch locks.
            found = await self.db.transact(extend)
            since, left_ms = found if found is not None else await self.db.transact(register)
        except asyncpg.LockNotAvailableError:
            raise Unavailable("could not register the watch in time; retry") from None
        # The database's clock read `left_ms` after `started`: the deadline errs early.
        return since, started + left_ms / 1000

    async def _interest(self, experiment: int) -> Interest:
        """Registers interest in an experiment for a call (release it with _release)."""
        since, deadline = await self._register(experiment)
        interest = self._interests.get(experiment)
        if interest is None or interest.since != since or interest.lapsed:
            if interest is not None and interest.since != since:
                interest.lapsed = True
            interest = Interest(experiment, since, deadline)
            interest.task = asyncio.create_task(
                self._keep(interest), name=f"trackd-watch-interest-{experiment}"
            )
            self._interests[experiment] = interest
        else:
            interest.deadline = max(interest.deadline, deadline)
        interest.calls += 1
        return interest

    def _release(self, interest: Interest) -> None:
        interest.calls -= 1
        if interest.calls == 0:
            if interest.task is not None:
                interest.task.cancel()
            if self._interests.get(interest.experiment) is interest:
                del self._interests[interest.experiment]

    async def _keep(self, interest: Interest) -> None:
        """Registers the interest again while calls of it are open; marks it lapsed if its
        stretch ended meanwhile."""
        every = min(self.retention / 4, INTEREST_REFRESH_MAX_S)
        wait = every
        while not interest.lapsed:
            await asyncio.sleep(wait)
            try:
                since, deadline = await self._register(interest.experiment)
            except asyncio.CancelledError:
                raise
            except _INTEREST_ERRORS as exc:
                # Retried soon; meanwhile calls deliver nothing past their interest's deadline.
                log.warning("could not register watch interest again (%r); retrying", exc)
                wait = min(every, 1.0)
                continue
            wait = every
            if since != interest.since:
                interest.lapsed = True
            else:
                interest.deadline = max(interest.deadline, deadline)

    # -- a watch call ----------------------------------------------------------------------

    async def watch(
        self, request: pb.WatchRunRequest, ready: asyncio.Event | None = None
    ) -> AsyncIterator[pb.WatchRunResponse]:
        """The responses of one WatchRun call, until the caller cancels it or the server
        stops (Unavailable).

        Raises InvalidArgument for a malformed id, key or resume position, NotFound for an
        unknown run or experiment, FailedPrecondition for a position older than the
        retention (then or later, if the call falls that far behind).

        `ready`, when given, is set once the call holds its start position: every write
        committed after that is delivered (the web view answers its event stream then)."""
        target = await self._target(request)
        resume = Position.parse(request.resume_position) if request.resume_position else None
        interest = await self._interest(target.watched)
        try:
            async with contextlib.aclosing(
                self._watch(target, resume, interest, ready)
            ) as messages:
                async for message in messages:
                    yield message
        finally:
            self._release(interest)

    async def _watch(
        self,
        target: Target,
        resume: Position | None,
        interest: Interest,
        ready: asyncio.Event | None = None,
    ) -> AsyncGenerator[pb.WatchRunResponse, None]:
        await self._fresh()
        if resume is None:
            # Start at or above since_seq, so that every position this call gives resumes.
            await self._catch_up(interest.since)
            pos = self.watermark
            if ready is not None:
                ready.set()
        else:
            pruned, last = await self.db.read(_bounds)
            if resume.hi > last:
                raise InvalidArgument.for_field(
                    "resume_position", "is not a position a WatchRun response gave"
                )
            _check_retained(resume.lo if resume.k else resume.hi, pruned)
            _check_interest(resume.lo if resume.k else resume.hi, interest)
            pos = resume.hi
            replay: Iterator[pb.WatchRunResponse] = iter(())
            if resume.k:
                if resume.crc != target.crc:
                    raise InvalidArgument.for_field(
                        "resume_position", "was given for another target or other keys"
                    )
                await self._catch_up(resume.hi)
                rows = await self._read(target, resume.lo, resume.hi, BATCH_EVENTS, 2**62)
                batch = self._batch(rows, target, resume.lo, resume.hi, resume.mode)
                replay = (m for k, m in enumerate(batch, start=1) if k > resume.k)
            if ready is not None:
                ready.set()
            for message in replay:
                yield message
        quiet_since = time.monotonic()
        while True:
            if self.closing:
                raise Unavailable("the server is stopping; resume on another with the position")
            _check_interest(pos, interest)
            advanced = self._advanced
            # Nothing past pos while the interest is not known to be live: a write of points
            # after it lapsed could be missing from what follows.
            live = interest.live()
            mark = self.watermark if live else pos
            if pos < mark:
                rows = await self._read(target, pos, mark, BATCH_EVENTS, BATCH_POINTS)
                if not rows:
                    pos = mark
                    continue
                cut = len(rows) == BATCH_EVENTS or sum(r["points"] or 0 for r in rows) >= (
                    BATCH_POINTS
                )
                hi = rows[-1]["seq"] if cut else mark
                lagging = now_ms() - rows[0]["created_ms"] > COALESCE_LAG_MS
                mode = COALESCED if cut or lagging else PLAIN
                for message in self._batch(rows, target, pos, hi, mode):
                    yield message
                pos = hi
                quiet_since = time.monotonic()
                continue
            left = HEARTBEAT_S - (time.monotonic() - quiet_since)
            if left <= 0:
                yield pb.WatchRunResponse(position=Position(pos).token(), heartbeat_time=now_ms())
                quiet_since = time.monotonic()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(advanced.wait(), left if live else INTEREST_POLL_S)

    async def _catch_up(self, seq: int) -> None:
        """Waits until this server's watermark reaches `seq` (given by another server)."""
        deadline = time.monotonic() + CATCH_UP_S
        while self.watermark < seq:
            if self.closing or time.monotonic() > deadline:
                raise Unavailable("the watch log is not readable yet; retry")
            advanced = self._advanced
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(advanced.wait(), 0.5)

    async def _target(self, request: pb.WatchRunRequest) -> Target:
        which = request.WhichOneof("target")
        keys = list(request.metric_keys)
        v = Violations()
        if v.count("metric_keys", keys, max_count=KEYS_MAX):
            for i, key in enumerate(keys):
                v.key(f"metric_keys[{i}]", key)
        v.raise_if_any()
        wanted = sorted(set(keys)) or None

        def crc_of(ident: object) -> int:
            # Of the parsed id, so that "7" and "007" name the same target.
            crc = zlib.crc32(f"{which}:{ident}".encode())
            for key in wanted or ():
                crc = zlib.crc32(key.encode() + b"\x00", crc)
            return crc

        if which == "run_id":
            rid = run_id(request.run_id)
            ref = await self.db.read(lambda conn: run_store.ref(conn, rid))
            if ref is None:
                raise run_not_found(rid)
            return Target(ref["run_pk"], None, wanted, crc_of(rid), ref["experiment_id"])
        if which == "experiment_id":
            eid = experiment_id(request.experiment_id)
            if await self.db.read(lambda conn: experiment_store.stage(conn, eid)) is None:
                raise experiment_not_found(eid)
            return Target(None, eid, wanted, crc_of(eid), eid)
        raise InvalidArgument.for_field("target", "name a run_id or an experiment_id")

    async def _read(
        self, target: Target, after: int, through: int, limit: int, points: int
    ) -> list[asyncpg.Record]:
        """Events of the target after `after` up to `through`, checking in the same
        snapshot that none of them was pruned."""

        async def work(conn: Connection) -> tuple[list[asyncpg.Record], int]:
            rows = await store.read(
                conn,
                run_pk=target.run_pk,
                experiment_id=target.experiment_id,
                after=after,
                through=through,
                keys=target.keys,
                limit=limit,
                points=points,
            )
            return rows, await store.pruned_through(conn)

        rows, pruned = await self.db.read(work)
        _check_retained(after, pruned)
        return rows

    def _batch(
        self, rows: Sequence[asyncpg.Record], target: Target, lo: int, hi: int, mode: int
    ) -> Iterator[pb.WatchRunResponse]:
        """The messages of a batch (events lo < seq <= hi), each with its position."""
        if mode == PLAIN:
            prev = lo
            for i, row in enumerate(rows):
                parts = list(_plain(row))
                for k, message in enumerate(parts, start=1):
                    if k < len(parts):
                        at = Position(row["seq"], prev, k, PLAIN, target.crc)
                    else:
                        at = Position(hi if i == len(rows) - 1 else row["seq"])
                    message.position = at.token()
                    yield message
                prev = row["seq"]
            return
        merged = list(_coalesced(rows))
        for k, message in enumerate(merged, start=1):
            at = Position(hi, lo, k, COALESCED, target.crc) if k < len(merged) else Position(hi)
            message.position = at.token()
            yield message


def _check_retained(after: int, pruned: int) -> None:
    if after < pruned:
        raise FailedPrecondition(
            "the watch log no longer holds what followed this position (it keeps events "
            "for --watch-retention seconds); read the history instead, then watch from now",
            metadata={"position": str(after), "pruned_through": str(pruned)},
        )


def _check_interest(after: int, interest: Interest) -> None:
    if interest.lapsed or after < interest.since:
        raise FailedPrecondition(
            "nobody watched this experiment for --watch-retention seconds at some point after "
            "this position, so points written then were not recorded; read the history "
            "instead, then watch from now",
            metadata={"position": str(after), "watched_since": str(interest.since)},
        )


async def _bounds(conn: Connection) -> tuple[int, int]:
    return await store.pruned_through(conn), await store.last_seq(conn)


# -- building messages ---------------------------------------------------------------------


def _points(
    run_hex: str, key: str, cols: tuple[list[int], list[int], list[float]], merged: bool
) -> Iterator[pb.WatchRunResponse]:
    steps, stamps, values = cols
    for at in range(0, max(len(steps), 1), POINTS_PER_MESSAGE):
        end = at + POINTS_PER_MESSAGE
        yield pb.WatchRunResponse(
            coalesced=merged,
            points=pb.MetricColumns(
                run_id=run_hex,
                key=key,
                steps=steps[at:end],
                timestamps=stamps[at:end],
                values=values[at:end],
            ),
        )


def _data(
    run_hex: str,
    params: Sequence[tuple[str, str, int]],
    tags: Sequence[tuple[str, str]],
    merged: bool,
) -> Iterator[pb.WatchRunResponse]:
    """Params (key, value, ParamType) and tags in as few messages as DATA_BYTES_MAX
    allows."""
    message = pb.WatchRunData(run_id=run_hex)
    used = 0
    items: list[tuple[str, str, int | None]] = [*params, *((k, v, None) for k, v in tags)]
    for key, value, type_ in items:
        size = len(key.encode()) + len(value.encode()) + 16
        if used and used + size > DATA_BYTES_MAX:
            yield pb.WatchRunResponse(coalesced=merged, data=message)
            message, used = pb.WatchRunData(run_id=run_hex), 0
        if type_ is not None:
            param_type = cast("run_pb2.ParamType.ValueType", type_)
            message.params.append(run_pb2.Param(key=key, value=value, type=param_type))
        else:
            message.tags.append(run_pb2.RunTag(key=key, value=value))
        used += size
    yield pb.WatchRunResponse(coalesced=merged, data=message)


def _status(row: asyncpg.Record, merged: bool) -> pb.WatchRunResponse:
    return pb.WatchRunResponse(
        coalesced=merged,
        status=pb.WatchRunStatus(
            run_id=row["run_id"].hex, status=row["status"], end_time=row["end_time"] or 0
        ),
    )


def _pairs(
    row: asyncpg.Record,
) -> tuple[list[tuple[str, str, int]], list[tuple[str, str]]]:
    """The params (key, value, ParamType; untyped in events from before types) and tags of
    a data event."""
    pairs = list(zip(row["names"], row["vals"], strict=True))
    n = row["params"]
    types = row["param_types"] or [0] * n
    return [(k, v, t) for (k, v), t in zip(pairs[:n], types, strict=True)], pairs[n:]


def _plain(row: asyncpg.Record) -> Iterator[pb.WatchRunResponse]:
    """The messages of one event."""
    kind = row["kind"]
    if kind == store.POINTS:
        cols = store.unpack(row["columns"], row["points"])
        yield from _points(row["run_id"].hex, row["key"], cols, False)
    elif kind == store.STATUS:
        yield _status(row, False)
    elif kind == store.DATA:
        yield from _data(row["run_id"].hex, *_pairs(row), False)


@dataclass
class _Run:
    """What a coalesced batch holds for one run."""

    series: dict[str, tuple[list[int], list[int], list[float], list[int]]]
    params: dict[str, tuple[str, int]]
    tags: dict[str, str]
    data_events: int = 0
    status: asyncpg.Record | None = None
    status_events: int = 0


def _coalesced(rows: Sequence[asyncpg.Record]) -> Iterator[pb.WatchRunResponse]:
    """The messages of a batch merged per run: each series' points of every commit in one
    (split if large), then the params and tags, then the latest status."""
    runs: dict[str, _Run] = {}
    for row in rows:
        run = runs.setdefault(row["run_id"].hex, _Run({}, {}, {}))
        kind = row["kind"]
        if kind == store.POINTS:
            steps, stamps, values = store.unpack(row["columns"], row["points"])
            cols = run.series.setdefault(row["key"], ([], [], [], [0]))
            cols[0].extend(steps)
            cols[1].extend(stamps)
            cols[2].extend(values)
            cols[3][0] += 1
        elif kind == store.STATUS:
            run.status = row
            run.status_events += 1
        elif kind == store.DATA:
            params, tags = _pairs(row)
            for key, value, type_ in params:
                run.params.setdefault(key, (value, type_))
            for key, value in tags:
                run.tags.pop(key, None)
                run.tags[key] = value
            run.data_events += 1
    for run_hex, run in runs.items():
        for key, (steps, stamps, values, events) in run.series.items():
            yield from _points(run_hex, key, (steps, stamps, values), events[0] > 1)
        if run.data_events:
            yield from _data(
                run_hex,
                [(k, v, t) for k, (v, t) in run.params.items()],
                list(run.tags.items()),
                run.data_events > 1,
            )
        if run.status is not None:
            yield _status(run.status, run.status_events > 1)
