"""Buffered metric logging over the StreamMetrics call, so that a training loop never waits
for the network.

`log` puts a point in a bounded, thread-safe buffer and returns; a background task on the
client's event loop turns buffered points into column-wise chunks, numbers them 1, 2, 3, ...
and streams them over one StreamMetrics call. Every chunk is kept, unchanged, until the
server acknowledges it. When the connection fails (server down or restarting, connection
reset, a retryable status), the task reconnects with exponential backoff and jitter, sends
the handshake (the stream's id and sequence 0), drops every kept chunk the server says it
has committed and resends the rest in order, so that no point is lost or written twice.

A chunk the server acknowledges as rejected (unknown or deleted run, a bad key...) is
split into one chunk per series and sent again, so that one bad series does not take the
other series of its chunk down with it; the rejections that remain are reported, once, by
the next `flush`.

`put` and `put_many` are the hot path of a training loop: plain (not coroutine) methods,
callable from any thread, that check the point by the client's rules (trackd.client.checks:
a bad key raises at the call) and append it to the buffer without taking a lock, in well
under a microsecond for a key seen before. The buffer is a deque that producers only ever
append to and the sender only ever pops from the left (under the lock); the points held
are `len(buffer) + unacked`, where `unacked` (points taken into chunks and not yet
acknowledged) changes only under the lock, on the event loop's thread, and is raised
before points leave the buffer and lowered after they come back or are acknowledged. A
put compares `len(buffer)` with `room` (capacity - unacked, kept with it; -1 once closed
or failed) without the lock: it may see less room than there is (and then checks again
under the lock), never more while it is the only thread putting. `flush` counts the points
taken plus those buffered, under the lock: every point whose put returned before flush was
called is among them. An idle sender sets its flag, then looks at the buffer; a put
appends, then looks at the flag: one of them sees the other, so no point waits unseen.

`AsyncMetricLogger` is the implementation, used from the event loop it runs on;
`MetricLogger` drives one from any other thread (the blocking `Client` uses it).
"""

from __future__ import annotations

import asyncio
import logging
import operator
import random
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc

from trackd.client.checks import _KEY_CACHE, check_key, metric_value, step_value, timestamp_value
from trackd.client.errors import TrackdError, from_rpc_error
from trackd.client.heartbeat import DEFAULT_HEARTBEAT_INTERVAL, Heartbeats
from trackd.v1 import run_service_pb2, run_service_pb2_grpc

log = logging.getLogger(__name__)

OnFull = Literal["block", "raise"]

DEFAULT_CAPACITY = 1_000_000
DEFAULT_CHUNK_POINTS = 20_000
DEFAULT_MAX_INFLIGHT = 8
DEFAULT_ACK_TIMEOUT = 60.0
# Rough bound on one chunk's encoded size; the server's default request limit is 4 MiB.
DEFAULT_CHUNK_BYTES = 2 * 1024 * 1024
# The protocol's limit on points per chunk.
MAX_CHUNK_POINTS = 100_000

# Estimated encoded bytes of one point (three packed varints/doubles, worst case) and of a
# series besides its points.
_POINT_BYTES = 30
_SERIES_BYTES = 24

# Status codes after which the stream is reopened. Everything else (INVALID_ARGUMENT for the
# stream itself, UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED, ...) is final.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)

# gRPC status code names by number (google.rpc.Code numbers them the same way).
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _code_name(rejection: run_service_pb2.ChunkRejection) -> str:
    """The status code name of a rejection, from its numeric status_code (a server older
    than that field sends only the deprecated name)."""
    if rejection.status_code:
        return _CODE_NAMES.get(rejection.status_code, "UNKNOWN")
    return rejection.code


# A buffered point: (run_id, key, step, timestamp, value).
Point = tuple[str, str, int, int, float]


_time_ns = time.time_ns


def _now_ms() -> int:
    return _time_ns() // 1_000_000


def make_point(
    run_id: str, key: str, value: object, step: object = 0, timestamp: object = None
) -> Point:
    """A point checked by the same rules as `put` (trackd.client.checks); the timestamp
    defaults to the client's clock now (ms).

    Raises:
        TypeError: run_id or key is not a str, value is not a number, or step or timestamp
            is not an integer.
        InvalidArgumentError: the key breaks a rule, or step or timestamp is out of range.
    """
    if run_id.__class__ is not str:
        raise TypeError(f"run_id must be a str, not {type(run_id).__name__}")
    return (
        run_id,
        check_key(key),
        step_value(step),
        timestamp_value(timestamp),
        metric_value(value),
    )


@dataclass(frozen=True)
class Rejection:
    """Points the server acknowledged without writing them.

    Attributes: `sequence` (the chunk's number in the stream), `code` (gRPC status code
    name, such as NOT_FOUND or FAILED_PRECONDITION), `reason` (MLflow-style reason),
    `message` (what was wrong), and the series: `run_id`, `key` and `points` (how many
    points were dropped)."""

    sequence: int
    code: str
    reason: str
    message: str
    run_id: str
    key: str
    points: int


class BufferFullError(TrackdError):
    """The logger's buffer holds `capacity` unacknowledged points and `on_full` is "raise"
    (or a plain `put` on the event loop's thread, which cannot block). Nothing of the call
    that raised was buffered. `hint`, if any, ends the message (what to do instead)."""

    def __init__(self, capacity: int, requested: int, hint: str = "") -> None:
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the metric buffer is full: {capacity} points are not yet acknowledged by the "
            f"server and {requested} more do not fit" + (f"; {hint}" if hint else ""),
            reason="BUFFER_FULL",
        )
        self.capacity = capacity
        self.requested = requested


class RejectedPointsError(TrackdError):
    """The server acknowledged some logged points without writing them. `rejections` lists
    each rejected series (see `Rejection`); `code` and `reason` are the first one's."""

    def __init__(self, rejections: Sequence[Rejection]) -> None:
        first = rejections[0]
        code = getattr(grpc.StatusCode, first.code, grpc.StatusCode.FAILED_PRECONDITION)
        total = sum(r.points for r in rejections)
        shown = [
            f"{r.points} points of run {r.run_id!r} key {r.key!r} (chunk {r.sequence}): "
            f"{r.code} {r.reason}: {r.message}"
            for r in rejections[:5]
        ]
        more = f"; and {len(rejections) - 5} more series" if len(rejections) > 5 else ""
        super().__init__(
            code,
            f"{total} logged points were rejected and not written: " + "; ".join(shown) + more,
            reason=first.reason,
        )
        self.rejections = list(rejections)


class LoggerClosedError(TrackdError):
    """The logger is closed (or closing) and takes no more points."""

    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.FAILED_PRECONDITION, "the metric logger is closed")


class _StreamBroken(Exception):
    """The stream ended or stalled in a way that a reconnect may cure."""


class _ProtocolError(Exception):
    """The server answered something that contradicts what this logger sent."""


@dataclass
class _Chunk:
    request: run_service_pb2.StreamMetricsRequest
    points: int
    # Logical index (order of logging) of the chunk's first point; flush() compares them.
    first_index: int


class AsyncMetricLogger:
    """Streams metric points of any runs to trackd from a bounded buffer, exactly once.

    Create it with the event loop running (or through `AsyncClient.logger()`); use its
    coroutines on that loop. `put`, `put_many` and `log_nowait` may be called from any
    thread. Call `close()` (or `async with`) to flush and end the stream.

    Args:
        stub: RunService stub over a grpc.aio channel.
        capacity: most points held (buffered or sent but not yet acknowledged).
        on_full: "block" (wait until acknowledgements free room) or "raise"
            (BufferFullError) when a point does not fit.
        chunk_points: most points per chunk (at most 100000).
        max_inflight: most chunks sent and not yet acknowledged.
        ack_timeout: seconds without an answer, while chunks or the handshake wait for
            one, after which the connection counts as dead and is reopened.
        stream_id: the stream's identity at the server; a new uuid4 hex by default.
        backoff_initial: first delay before reconnecting, in seconds; doubles per failure.
        backoff_max: longest delay before reconnecting, in seconds.
        chunk_bytes: rough bound on a chunk's encoded size.
        heartbeat_interval: seconds between the Heartbeat calls of each run kept alive
            through `heartbeats` (runs started with `start_run` are); None or 0 sends
            none. They go from the event loop, apart from the buffer.

    Raises:
        ValueError: an option is out of range.
        RuntimeError: no event loop is running.
    """

    def __init__(
        self,
        stub: run_service_pb2_grpc.RunServiceAsyncStub,
        *,
        capacity: int = DEFAULT_CAPACITY,
        on_full: OnFull = "block",
        chunk_points: int = DEFAULT_CHUNK_POINTS,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        stream_id: str | None = None,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        heartbeat_interval: float | None = DEFAULT_HEARTBEAT_INTERVAL,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if on_full not in ("block", "raise"):
            raise ValueError('on_full must be "block" or "raise"')
        if not 1 <= chunk_points <= MAX_CHUNK_POINTS:
            raise ValueError(f"chunk_points must be within 1..{MAX_CHUNK_POINTS}")
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        if ack_timeout <= 0 or backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("ack_timeout, backoff_initial and backoff_max must be positive")
        self._stub = stub
        self.capacity = capacity
        self.on_full: OnFull = on_full
        self.chunk_points = chunk_points
        self.max_inflight = max_inflight
        self.ack_timeout = ack_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.chunk_bytes = chunk_bytes
        self.stream_id = stream_id or uuid.uuid4().hex
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

        # Shared with producer threads. Producers append to _buf without the lock (put,
        # put_many) or under it; everything else changes under _lock only. _buf is never
        # replaced: the sender pops points from its left.
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._buf: deque[Point] = deque()
        self._taken = 0  # points moved from the buffer into chunks (their logical index)
        # Points moved from the buffer into chunks and not yet acknowledged; raised before
        # points leave _buf, lowered after they are back or acknowledged, so that
        # len(_buf) + _unacked, read without the lock, never undercounts the points held.
        self._unacked = 0
        # capacity - _unacked, for put's lock-free check (len(_buf) < _room), or -1 once
        # closed or failed (so that every put goes to the slow path, which raises); set
        # by _set_room_locked after each change of _unacked.
        self._room = capacity
        self._space_waiters: list[asyncio.Future[None]] = []
        # Set by the sender, under the lock, before it checks _buf and waits for _wake: a
        # producer that appends and then sees it set wakes the sender.
        self._sender_idle = False
        self._closed = False
        self._fatal: TrackdError | None = None

        # Loop thread only.
        self._held: dict[int, _Chunk] = {}  # sent (or about to be), by sequence
        self._requeue: deque[_Chunk] = deque()  # split rejected chunks, sent first
        self._next_seq = 1
        self._acked_seq = 0
        self._clean_seq = 0  # the last chunk acknowledged as written (not rejected)
        self._handshaken = False
        self._rejections: list[Rejection] = []
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._end_requested = False
        self._attempt = 0
        self._ack_wait_since: float | None = None
        self.reconnects = 0
        self.last_error: str = ""
        self._on_close: list[Callable[[AsyncMetricLogger], None]] = []
        # The runs this logger keeps alive at the server (see trackd.client.heartbeat).
        self.heartbeats = Heartbeats(stub, heartbeat_interval, self._loop)
        self._task = self._loop.create_task(self._run(), name=f"trackd-logger-{self.stream_id}")

    # -- state -----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Points logged and not yet acknowledged by the server."""
        with self._lock:
            return self._held_locked()

    def _set_room_locked(self) -> None:
        if self._closed or self._fatal is not None:
            self._room = -1
        else:
            self._room = self.capacity - self._unacked

    def _held_locked(self) -> int:
        """Points buffered or sent and not yet acknowledged (exact under the lock, but for
        lock-free puts appending at the same time)."""
        return len(self._buf) + self._unacked

    @property
    def acked_sequence(self) -> int:
        """The last chunk sequence the server acknowledged."""
        return self._acked_seq

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._closed

    # -- logging ---------------------------------------------------------------------------

    async def log(
        self, run_id: str, key: str, value: float, step: int = 0, timestamp: int | None = None
    ) -> None:
        """Buffers one point of a run's series; returns at once unless the buffer is full.

        Args:
            run_id: the run.
            key: the series' key.
            value: the value (any float, NaN and infinities included).
            step: training step, any int64.
            timestamp: milliseconds since the Unix epoch; the client's clock now if None.

        Raises:
            BufferFullError: the buffer is full and on_full is "raise".
            LoggerClosedError: the logger is closed.
            TrackdError: the stream failed for good (the failure's code and message).
            TypeError, InvalidArgumentError: a field is of the wrong type or breaks a rule.
        """
        await self.log_points((make_point(run_id, key, value, step, timestamp),))

    async def log_many(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        step: int = 0,
        timestamp: int | None = None,
    ) -> None:
        """Buffers one point per key, all at the same step and timestamp.

        Args:
            run_id: the run.
            metrics: key -> value.
            step: training step of every point.
            timestamp: milliseconds since the Unix epoch; the client's clock now if None.

        Raises:
            The same as log(); with on_full="raise", nothing is buffered if not all fits.
        """
        ts = _now_ms() if timestamp is None else timestamp
        await self.log_points([make_point(run_id, k, v, step, ts) for k, v in metrics.items()])

    async def log_points(self, points: Sequence[Point]) -> None:
        """Buffers checked points (see `make_point`), waiting for room if on_full is
        "block". Must run on the logger's event loop.

        Raises:
            The same as log().
        """
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("AsyncMetricLogger is used from another event loop")
        i = 0
        while True:
            with self._lock:
                i = self._insert_locked(points, i)
                if i == len(points):
                    return
                fut = self._loop.create_future()
                self._space_waiters.append(fut)
            await fut

    def log_nowait(
        self, run_id: str, key: str, value: float, step: int = 0, timestamp: int | None = None
    ) -> None:
        """Buffers one point without ever waiting; thread-safe.

        Raises:
            BufferFullError: the buffer is full (whatever on_full says).
            LoggerClosedError, TrackdError, TypeError, InvalidArgumentError: as log().
        """
        point = make_point(run_id, key, value, step, timestamp)
        with self._lock:
            self._check_open_locked()
            if self._held_locked() + 1 > self.capacity:
                raise BufferFullError(self.capacity, 1)
            self._insert_locked((point,), 0)

    def put(
        self,
        run_id: str,
        key: str,
        value: object,
        step: object = 0,
        timestamp: object = None,
    ) -> None:
        """Checks one point and buffers it: a plain method (not a coroutine), callable from
        any thread, that returns at once unless the buffer is full. The fast path (a key
        seen before, a float value, an int step, no timestamp) takes no lock.

        Args:
            run_id: the run.
            key: the series' key, checked by trackd.client.checks.check_key.
            value: a number (see checks.metric_value: int, float, numpy scalars...; NaN
                and the infinities included; not a bool, a str or None).
            step: training step, an int64; None means 0.
            timestamp: milliseconds since the Unix epoch; the client's clock now if None.

        Raises:
            InvalidArgumentError: the key breaks a rule, or step or timestamp is out of
                range (nothing is buffered).
            TypeError: run_id or key is not a str, value is not a number, or step or
                timestamp is not an integer (nothing is buffered).
            BufferFullError: the buffer is full and on_full is "raise", or it is full and
                the call is on the logger's event-loop thread, which cannot block (`await
                logger.log(...)` or `await run.flush()` wait for room instead).
            LoggerClosedError: the logger is closed.
            TrackdError: the stream failed for good (the failure's code and message).

        When the buffer is full, on_full is "block" and the call is on another thread,
        it blocks that thread until acknowledgements free room. The capacity is exact
        for one producing thread; threads putting at the very same time may each add
        their point beyond it. Without a lock, a put is not ordered with a close() that
        another thread runs at the same moment: such a point may be left unsent (a put
        that starts after close() has begun raises LoggerClosedError).
        """
        # Each check is one comparison when the field is of the usual type; the checks
        # module handles (and explains) everything else.
        try:
            known = key in _KEY_CACHE
        except TypeError:  # unhashable
            known = False
        if not known:
            key = check_key(key)
        if value.__class__ is not float:
            value = metric_value(value)
        if step.__class__ is not int or not -0x8000000000000000 <= step <= 0x7FFFFFFFFFFFFFFF:
            step = step_value(step)
        if timestamp is None:
            timestamp = _time_ns() // 1_000_000
        elif timestamp.__class__ is not int or not 0 <= timestamp <= 0x7FFFFFFFFFFFFFFF:
            timestamp = timestamp_value(timestamp)
        if run_id.__class__ is not str:
            raise TypeError(f"run_id must be a str, not {type(run_id).__name__}")
        point: Point = (run_id, key, step, timestamp, value)
        buf = self._buf
        # Without the lock: may see more points held than there are (then the slow path
        # checks again under the lock), never fewer with one producing thread.
        if len(buf) < self._room:
            buf.append(point)
            # After the append: either the sender, checking _buf after setting the flag,
            # sees the point, or this sees the flag (see _wait_for_work).
            if self._sender_idle:
                self._wake_sender()
            return
        self._put_slow((point,))

    def put_many(
        self,
        run_id: str,
        metrics: Mapping[str, object],
        step: object = 0,
        timestamp: object = None,
    ) -> None:
        """Checks one point per key, all at the same step and timestamp, and buffers them
        all (or none, should one be bad); like put() otherwise.

        Args:
            run_id: the run.
            metrics: key -> value (see put()).
            step: training step of every point, an int64; None means 0.
            timestamp: milliseconds since the Unix epoch; the client's clock now if None.

        Raises:
            The same as put(). With on_full "raise" (or on the event-loop thread) nothing
            is buffered unless all fits; blocking, the points that fit are buffered first.
        """
        if step.__class__ is not int or not -0x8000000000000000 <= step <= 0x7FFFFFFFFFFFFFFF:
            step = step_value(step)
        if timestamp is None:
            timestamp = _time_ns() // 1_000_000
        else:
            timestamp = timestamp_value(timestamp)
        if run_id.__class__ is not str:
            raise TypeError(f"run_id must be a str, not {type(run_id).__name__}")
        points: list[Point] = []
        for key, value in metrics.items():
            try:
                known = key in _KEY_CACHE
            except TypeError:
                known = False
            if not known:
                key = check_key(key)
            if value.__class__ is not float:
                value = metric_value(value, f"value of {key!r}")
            points.append((run_id, key, step, timestamp, value))
        if not points:
            return
        buf = self._buf
        if len(buf) + len(points) <= self._room:
            buf.extend(points)
            if self._sender_idle:
                self._wake_sender()
            return
        self._put_slow(points)

    def _put_slow(self, points: Sequence[Point]) -> None:
        """put()'s path when the lock-free check found no room: checks again under the
        lock, then raises or blocks per on_full and the calling thread."""
        if self.on_full == "raise" or threading.get_ident() == self._loop_thread:
            with self._lock:
                self._check_open_locked()
                if len(points) > self.capacity - self._held_locked():
                    hint = ""
                    if self.on_full == "block":
                        hint = (
                            "put() cannot wait for room on the event loop's thread: "
                            "`await logger.log(...)` or `await run.flush()` instead"
                        )
                    raise BufferFullError(self.capacity, len(points), hint)
                self._insert_locked(points, 0)
            return
        i = 0
        with self._space:
            while True:
                i = self._insert_locked(points, i)
                if i == len(points):
                    return
                self._space.wait()

    def put_blocking(self, points: Sequence[Point], timeout: float | None = None) -> None:
        """Buffers checked points from a thread other than the event loop's, blocking that
        thread while the buffer is full and on_full is "block".

        Args:
            points: checked points (see `make_point`).
            timeout: most seconds to wait for room; None waits as long as it takes.

        Raises:
            RuntimeError: called on the event loop's thread (it would deadlock).
            TimeoutError: no room within `timeout` (the points that fit were buffered).
            BufferFullError, LoggerClosedError, TrackdError: as log().
        """
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("put_blocking on the event loop's thread; use `await log()`")
        deadline = None if timeout is None else time.monotonic() + timeout
        i = 0
        with self._space:
            while True:
                i = self._insert_locked(points, i)
                if i == len(points):
                    return
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"no room in the metric buffer within {timeout}s")
                self._space.wait(left)

    def _insert_locked(self, points: Sequence[Point], start: int) -> int:
        """Appends points[start:] as far as they fit; returns the index of the first point
        not appended. Raises per on_full when nothing (in "raise" mode: not all) fits."""
        self._check_open_locked()
        room = self.capacity - self._held_locked()
        n = len(points) - start
        if self.on_full == "raise" and n > room:
            raise BufferFullError(self.capacity, n)
        take = min(n, room)
        if take <= 0:
            return start
        if start == 0 and take == len(points):
            self._buf.extend(points)
        else:
            self._buf.extend(points[start : start + take])
        if self._sender_idle:
            self._sender_idle = False
            self._notify_sender()
        return start + take

    def _wake_sender(self) -> None:
        """Wakes the idle sender (after a lock-free append saw it idle), once."""
        with self._lock:
            if not self._sender_idle:
                return
            self._sender_idle = False
        self._notify_sender()

    def _notify_sender(self) -> None:
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _check_open_locked(self) -> None:
        if self._fatal is not None:
            raise self._fatal.with_traceback(None)
        if self._closed:
            raise LoggerClosedError()

    # -- flush and close -------------------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Waits until the server has acknowledged every point logged before the call.

        Args:
            timeout: most seconds to wait; None waits as long as it takes (reconnecting
                as needed).

        Raises:
            RejectedPointsError: the server rejected some points (each rejection is
                reported by one flush only).
            TimeoutError: points are still unacknowledged after `timeout`.
            TrackdError: the stream failed for good (its code and message).
        """
        with self._lock:
            # Every point put before this call is taken or still buffered.
            target = self._taken + len(self._buf)
        deadline = None if timeout is None else self._loop.time() + timeout
        while True:
            if self._fatal is not None:
                raise self._fatal.with_traceback(None)
            if self._watermark() >= target:
                break
            event = self._progress
            left = None if deadline is None else deadline - self._loop.time()
            if left is not None and left <= 0:
                extra = f"; last error: {self.last_error}" if self.last_error else ""
                raise TimeoutError(
                    f"{self.pending} metric points are not acknowledged after {timeout}s{extra}"
                )
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                pass
        if self._rejections:
            rejections, self._rejections = self._rejections, []
            raise RejectedPointsError(rejections)

    async def close(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Flushes, then ends the stream (half-closes it and waits for the server to end
        it). Further log calls raise LoggerClosedError. Calling it again does nothing.

        Args:
            timeout: most seconds for the flush; None waits as long as it takes.

        Raises:
            The same as flush(). The stream is ended (or abandoned) either way.
        """
        with self._lock:
            if self._closed and self._end_requested:
                return
            self._closed = True
            self._set_room_locked()
            self._wake_producers_locked()
        await self.heartbeats.close()
        error: BaseException | None = None
        try:
            await self.flush(timeout)
        except (TrackdError, TimeoutError) as exc:
            error = exc
        self._end_requested = True
        self._wake.set()
        if not self._task.done():
            if error is None or isinstance(error, RejectedPointsError):
                # Everything is acknowledged: give the half-close a moment, then abandon.
                done, _ = await asyncio.wait({self._task}, timeout=10.0)
                if not done:
                    self._task.cancel()
            else:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for callback in self._on_close:
            callback(self)
        self._on_close.clear()
        if error is not None:
            raise error

    async def __aenter__(self) -> AsyncMetricLogger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _watermark(self) -> int:
        """Logical index of the oldest point not yet acknowledged (the number of points
        logged, when there is none)."""
        with self._lock:
            low = self._taken
        for chunk in self._held.values():
            low = min(low, chunk.first_index)
        for chunk in self._requeue:
            low = min(low, chunk.first_index)
        return low

    def _pulse(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    def _wake_producers_locked(self) -> None:
        self._space.notify_all()
        waiters, self._space_waiters = self._space_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _release(self, points: int) -> None:
        with self._lock:
            self._unacked -= points
            self._set_room_locked()
            self._wake_producers_locked()

    def _fail(self, error: TrackdError) -> None:
        log.error("trackd metric stream %s failed for good: %s", self.stream_id, error)
        with self._lock:
            self._fatal = error
            self._set_room_locked()
            self._buf.clear()
            self._wake_producers_locked()
        self._pulse()

    # -- the background task ---------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while await self._wait_for_work():
                try:
                    await self._stream_once()
                    return
                except grpc.aio.AioRpcError as err:
                    if err.code() not in RETRYABLE_CODES:
                        self._fail(from_rpc_error(err))
                        return
                    self.last_error = f"{err.code().name}: {err.details()}"
                except (_StreamBroken, asyncio.InvalidStateError) as exc:
                    self.last_error = str(exc) or type(exc).__name__
                if self._end_requested and not self._has_work():
                    return
                delay = min(self.backoff_max, self.backoff_initial * 2**self._attempt)
                delay *= random.uniform(0.5, 1.0)
                self._attempt = min(self._attempt + 1, 30)
                self.reconnects += 1
                log.info(
                    "trackd metric stream %s: %s; reconnecting in %.2fs",
                    self.stream_id,
                    self.last_error,
                    delay,
                )
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except _ProtocolError as exc:
            self._fail(TrackdError(grpc.StatusCode.INTERNAL, str(exc), reason="STREAM_PROTOCOL"))
        except Exception as exc:  # noqa: BLE001 - surfaced on the next flush or log call
            error = TrackdError(grpc.StatusCode.INTERNAL, f"metric logger failed: {exc!r}")
            error.__cause__ = exc
            self._fail(error)

    def _has_work(self) -> bool:
        with self._lock:
            buffered = bool(self._buf)
        return buffered or bool(self._held) or bool(self._requeue)

    async def _wait_for_work(self) -> bool:
        """Waits until there are points to send (True) or the end was requested with
        nothing left to send (False). The stream is opened lazily."""
        while True:
            self._wake.clear()
            with self._lock:
                # The flag first, then the buffer: a put that appends after this check
                # sees the flag (see put).
                self._sender_idle = True
                buffered = bool(self._buf)
                if buffered:
                    self._sender_idle = False
            if buffered or self._held or self._requeue:
                return True
            if self._end_requested:
                return False
            await self._wake.wait()

    async def _stream_once(self) -> None:
        """One StreamMetrics call: handshake, resend, stream; returns after a clean end."""
        # No request iterator: the reader/writer style (grpc-stubs wants one).
        call = self._stub.StreamMetrics()  # type: ignore[call-arg]
        handshaken = asyncio.Event()
        self._ack_wait_since = time.monotonic()
        recv = asyncio.create_task(self._recv_loop(call, handshaken))
        tasks = {
            asyncio.create_task(self._send_loop(call, handshaken)),
            recv,
            asyncio.create_task(self._watchdog()),
        }
        try:
            waiting = set(tasks)
            while True:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if exc is not None:
                        status = await _status_error(call)
                        if status is not None and not isinstance(exc, grpc.aio.AioRpcError):
                            raise status from exc
                        raise exc
                if recv in done:
                    return
        finally:
            self._ack_wait_since = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            call.cancel()

    async def _send_loop(
        self,
        call: grpc.aio.StreamStreamCall[
            run_service_pb2.StreamMetricsRequest, run_service_pb2.StreamMetricsResponse
        ],
        handshaken: asyncio.Event,
    ) -> None:
        await call.write(run_service_pb2.StreamMetricsRequest(stream_id=self.stream_id))
        await handshaken.wait()
        for chunk in list(self._held.values()):
            await call.write(chunk.request)
        while True:
            self._wake.clear()
            while len(self._held) < self.max_inflight:
                next_chunk = self._next_chunk()
                if next_chunk is None:
                    break
                chunk = next_chunk
                seq = self._next_seq
                self._next_seq += 1
                chunk.request.sequence = seq
                self._held[seq] = chunk
                if self._ack_wait_since is None:
                    self._ack_wait_since = time.monotonic()
                await call.write(chunk.request)
            if self._end_requested and not self._has_work():
                await call.done_writing()
                return
            with self._lock:
                self._sender_idle = True  # the flag first, then the buffer (see put)
                idle = not self._buf
                if not idle:
                    self._sender_idle = False
            if idle or len(self._held) >= self.max_inflight:
                await self._wake.wait()

    async def _recv_loop(
        self,
        call: grpc.aio.StreamStreamCall[
            run_service_pb2.StreamMetricsRequest, run_service_pb2.StreamMetricsResponse
        ],
        handshaken: asyncio.Event,
    ) -> None:
        first = await call.read()
        if not isinstance(first, run_service_pb2.StreamMetricsResponse):  # grpc.aio.EOF
            raise _StreamBroken("the server ended the stream before answering the handshake")
        self._on_handshake(first.acked_sequence)
        self._on_ack(first)
        handshaken.set()
        while True:
            resp = await call.read()
            if not isinstance(resp, run_service_pb2.StreamMetricsResponse):  # grpc.aio.EOF
                if self._end_requested and not self._has_work():
                    return
                raise _StreamBroken("the server ended the stream unexpectedly")
            self._on_ack(resp)

    async def _watchdog(self) -> None:
        step = min(1.0, self.ack_timeout / 4)
        while True:
            await asyncio.sleep(step)
            since = self._ack_wait_since
            if since is not None and time.monotonic() - since > self.ack_timeout:
                raise _StreamBroken(f"no acknowledgement for {self.ack_timeout}s")

    def _on_handshake(self, committed: int) -> None:
        if not self._handshaken and self._next_seq == 1 and not self._held:
            # A fresh logger: continue the stream's numbering (a reused stream_id).
            self._next_seq = committed + 1
            self._acked_seq = committed
        elif self._clean_seq <= committed < self._acked_seq:
            # Every chunk after `committed` that was acknowledged had been rejected, and the
            # server did not keep their numbers: none of the kept chunks is committed, so
            # they are renumbered to follow `committed`.
            shift = self._acked_seq - committed
            log.warning(
                "trackd metric stream %s: the server reports chunk %d committed after "
                "acknowledging chunk %d (rejected chunks since); renumbering %d kept chunks",
                self.stream_id,
                committed,
                self._acked_seq,
                len(self._held),
            )
            held, self._held = self._held, {}
            for seq, chunk in held.items():
                chunk.request.sequence = seq - shift
                self._held[seq - shift] = chunk
            self._next_seq -= shift
            self._acked_seq = committed
        elif not self._acked_seq <= committed < self._next_seq:
            raise _ProtocolError(
                f"stream {self.stream_id}: the server reports chunk {committed} committed, "
                f"but this logger had chunks {self._acked_seq} acknowledged and "
                f"{self._next_seq - 1} sent"
            )
        self._handshaken = True
        log.debug(
            "trackd metric stream %s: the server has committed chunk %d; %d chunks to resend",
            self.stream_id,
            committed,
            sum(1 for seq in self._held if seq > committed),
        )

    def _on_ack(self, resp: run_service_pb2.StreamMetricsResponse) -> None:
        acked = resp.acked_sequence
        if acked >= self._next_seq:
            raise _ProtocolError(
                f"stream {self.stream_id}: acknowledgement of chunk {acked}, "
                f"but only {self._next_seq - 1} were sent"
            )
        rejected = {r.sequence: r for r in resp.rejections}
        released = 0
        split: list[_Chunk] = []
        for seq in [s for s in self._held if s <= acked]:
            chunk = self._held.pop(seq)
            rejection = rejected.get(seq)
            if rejection is None:
                released += chunk.points
                self._clean_seq = max(self._clean_seq, seq)
            elif len(chunk.request.series) > 1:
                split.extend(self._split(chunk))
            else:
                col = chunk.request.series[0]
                self._rejections.append(
                    Rejection(
                        seq,
                        _code_name(rejection),
                        rejection.reason,
                        rejection.message,
                        col.run_id,
                        col.key,
                        chunk.points,
                    )
                )
                released += chunk.points
        self._requeue.extendleft(reversed(split))
        if acked > self._acked_seq:
            self._acked_seq = acked
            self._attempt = 0
        self._ack_wait_since = time.monotonic() if self._held else None
        if released:
            self._release(released)
        self._wake.set()
        self._pulse()

    def _split(self, chunk: _Chunk) -> list[_Chunk]:
        """One chunk per series of a rejected chunk, to find the series at fault."""
        parts = []
        for col in chunk.request.series:
            req = run_service_pb2.StreamMetricsRequest(stream_id=self.stream_id)
            req.series.add().CopyFrom(col)
            parts.append(_Chunk(req, len(col.steps), chunk.first_index))
        return parts

    def _next_chunk(self) -> _Chunk | None:
        """The next chunk to send: a split one, or whatever is buffered (up to the chunk
        limits), grouped by (run_id, key)."""
        if self._requeue:
            return self._requeue.popleft()
        with self._lock:
            buf = self._buf
            n = min(len(buf), self.chunk_points)
            if n == 0:
                return None
            first = self._taken
            # Counted before the points leave the buffer (see _unacked); producers may
            # append meanwhile, never pop.
            self._unacked += n
            self._set_room_locked()
            self._taken += n
            popleft = buf.popleft
            points = [popleft() for _ in range(n)]
        series = _group(points)
        size = n * _POINT_BYTES
        for run_id, by_key in series.items():
            size += len(by_key) * (len(run_id) + _SERIES_BYTES) + sum(map(len, by_key))
        if size > self.chunk_bytes:
            columns, cut = self._columns_within_bytes(points)
            if cut < n:
                rest = points[cut:]
                with self._lock:
                    buf.extendleft(reversed(rest))
                    self._taken -= len(rest)
                    self._unacked -= len(rest)  # after the points are back (see _unacked)
                    self._set_room_locked()
        else:
            columns, cut = _columns(series), n
        req = run_service_pb2.StreamMetricsRequest(stream_id=self.stream_id)
        add = req.series.add
        for run_id, key, steps, stamps, values in columns:
            add(run_id=run_id, key=key, steps=steps, timestamps=stamps, values=values)
        return _Chunk(req, cut, first)

    def _columns_within_bytes(self, points: list[Point]) -> tuple[list[_Columns], int]:
        """The columns of the longest prefix of points (at least one) whose estimated size
        is within chunk_bytes, and that prefix's length."""
        groups: dict[tuple[str, str], tuple[list[int], list[int], list[float]]] = {}
        size = 0
        cut = len(points)
        for i, (run_id, key, step, ts, value) in enumerate(points):
            group = groups.get((run_id, key))
            if group is None:
                size += len(run_id) + len(key) + _SERIES_BYTES
                if size > self.chunk_bytes and i > 0:
                    cut = i
                    break
                group = groups[(run_id, key)] = ([], [], [])
            group[0].append(step)
            group[1].append(ts)
            group[2].append(value)
            size += _POINT_BYTES
            if size > self.chunk_bytes:
                cut = i + 1
                break
        return [(r, k, *cols) for (r, k), cols in groups.items()], cut


# (run_id, key, steps, timestamps, values) of one series in a chunk.
_Columns = tuple[str, str, list[int], list[int], list[float]]
_STEP, _TS, _VALUE = operator.itemgetter(2), operator.itemgetter(3), operator.itemgetter(4)


def _group(points: list[Point]) -> defaultdict[str, defaultdict[str, list[Point]]]:
    """The points by run_id, then key, in order of first appearance (two lookups of
    strings, whose hashes are cached, per point)."""
    series: defaultdict[str, defaultdict[str, list[Point]]] = defaultdict(lambda: defaultdict(list))
    for point in points:
        series[point[0]][point[1]].append(point)
    return series


def _columns(series: Mapping[str, Mapping[str, list[Point]]]) -> list[_Columns]:
    """Each series' points as columns (C loops: map and itemgetter)."""
    return [
        (run_id, key, list(map(_STEP, pts)), list(map(_TS, pts)), list(map(_VALUE, pts)))
        for run_id, by_key in series.items()
        for key, pts in by_key.items()
    ]


async def _status_error(
    call: grpc.aio.StreamStreamCall[Any, Any],
) -> grpc.aio.AioRpcError | None:
    """The call's final status as an AioRpcError, if it ended with an error."""
    if not call.done():
        return None
    code = await call.code()
    if code == grpc.StatusCode.OK:
        return None
    return grpc.aio.AioRpcError(
        code,
        await call.initial_metadata(),
        await call.trailing_metadata(),
        await call.details(),
        await call.debug_error_string(),  # type: ignore[attr-defined]
    )


class MetricLogger:
    """An AsyncMetricLogger driven from threads other than its event loop's: `log` blocks
    the calling thread only while the buffer is full (on_full="block"). `Client.logger()`
    makes one.

    Args:
        aio: the logger to drive.
        loop: the (running, other-thread) event loop it runs on.
    """

    def __init__(self, aio: AsyncMetricLogger, loop: asyncio.AbstractEventLoop) -> None:
        self.aio = aio
        self._loop = loop
        # The hot path without a second call: the instance's put is the logger's own.
        self.put = aio.put  # type: ignore[method-assign]
        self.put_many = aio.put_many  # type: ignore[method-assign]

    @property
    def stream_id(self) -> str:
        """The stream's identity at the server."""
        return self.aio.stream_id

    @property
    def pending(self) -> int:
        """Points logged and not yet acknowledged by the server."""
        return self.aio.pending

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self.aio.closed

    def log(
        self, run_id: str, key: str, value: float, step: int = 0, timestamp: int | None = None
    ) -> None:
        """Buffers one point of a run's series; returns at once unless the buffer is full.

        Args:
            run_id: the run.
            key: the series' key.
            value: the value (any float, NaN and infinities included).
            step: training step, any int64.
            timestamp: milliseconds since the Unix epoch; the client's clock now if None.

        Raises:
            BufferFullError: the buffer is full and on_full is "raise".
            LoggerClosedError: the logger is closed.
            TrackdError: the stream failed for good (the failure's code and message).
            TypeError, InvalidArgumentError: a field is of the wrong type or breaks a rule.
        """
        self.aio.put_blocking((make_point(run_id, key, value, step, timestamp),))

    def put(
        self,
        run_id: str,
        key: str,
        value: object,
        step: object = 0,
        timestamp: object = None,
    ) -> None:
        """AsyncMetricLogger.put: checks one point and buffers it without waiting unless
        the buffer is full (then blocks, or raises BufferFullError with on_full="raise").

        Raises:
            InvalidArgumentError, TypeError, BufferFullError, LoggerClosedError,
            TrackdError: as AsyncMetricLogger.put().
        """
        self.aio.put(run_id, key, value, step, timestamp)

    def put_many(
        self,
        run_id: str,
        metrics: Mapping[str, object],
        step: object = 0,
        timestamp: object = None,
    ) -> None:
        """AsyncMetricLogger.put_many: checks one point per key (same step and timestamp)
        and buffers them all, or none should one be bad.

        Raises:
            The same as put().
        """
        self.aio.put_many(run_id, metrics, step, timestamp)

    def log_many(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        step: int = 0,
        timestamp: int | None = None,
    ) -> None:
        """Buffers one point per key, all at the same step and timestamp.

        Raises:
            The same as log(); with on_full="raise", nothing is buffered if not all fits.
        """
        ts = _now_ms() if timestamp is None else timestamp
        self.aio.put_blocking([make_point(run_id, k, v, step, ts) for k, v in metrics.items()])

    def log_points(self, points: Iterable[Point]) -> None:
        """Buffers checked points (see `make_point`).

        Raises:
            The same as log().
        """
        self.aio.put_blocking(list(points))

    def flush(self, timeout: float | None = None) -> None:
        """Blocks until every point logged before the call is acknowledged.

        Raises:
            RejectedPointsError, TimeoutError, TrackdError: as AsyncMetricLogger.flush().
        """
        asyncio.run_coroutine_threadsafe(self.aio.flush(timeout), self._loop).result()

    def close(self, timeout: float | None = None) -> None:
        """Flushes, then ends the stream. Calling it again does nothing.

        Raises:
            RejectedPointsError, TimeoutError, TrackdError: as AsyncMetricLogger.close().
        """
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.aio.close(timeout), self._loop).result()

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "DEFAULT_CAPACITY",
    "AsyncMetricLogger",
    "BufferFullError",
    "LoggerClosedError",
    "MetricLogger",
    "OnFull",
    "Point",
    "RejectedPointsError",
    "Rejection",
    "make_point",
]
