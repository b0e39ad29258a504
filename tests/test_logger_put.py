"""The logger's plain, lock-free `put` and `put_many` against real servers: points put from
the event loop's thread and from several threads at once all land exactly once, bad points
raise at the call and buffer nothing, and a full buffer raises or blocks per on_full and
the calling thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from conftest import server_config
from helpers import new_run
from trackd.client.errors import InvalidArgumentError
from trackd.client.logger import (
    AsyncMetricLogger,
    BufferFullError,
    LoggerClosedError,
    MetricLogger,
)
from trackd.server import app
from trackd.server.app import Running
from trackd.v1 import run_service_pb2 as rpb
from trackd.v1 import run_service_pb2_grpc

Triple = tuple[int, int, float]  # (step, timestamp, value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _logger(port: int, **options: object) -> AsyncIterator[AsyncMetricLogger]:
    """A logger on its own channel to 127.0.0.1:port (which need not be listening yet);
    closed, or abandoned, on exit."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        logger = AsyncMetricLogger(
            run_service_pb2_grpc.RunServiceStub(channel),
            backoff_initial=0.02,
            backoff_max=0.2,
            **options,  # type: ignore[arg-type]
        )
        try:
            yield logger
        finally:
            with contextlib.suppress(Exception):
                await logger.close(timeout=5.0)


async def _history(runs, run_id: str, key: str) -> list[Triple]:  # type: ignore[no-untyped-def]
    """Every point of a series, read back through GetMetricHistory pages."""
    points: list[Triple] = []
    token = ""
    while True:
        page = await runs.GetMetricHistory(
            rpb.GetMetricHistoryRequest(run_id=run_id, metric_key=key, page_token=token)
        )
        points += [(m.step, m.timestamp, m.value) for m in page.metrics]
        token = page.next_page_token
        if not token:
            return points


async def _until(predicate: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_puts_from_the_loop_and_from_threads_all_land_exactly_once(
    server: Running,
    runs,  # type: ignore[no-untyped-def]
) -> None:
    run_id = (await new_run(runs)).info.run_id
    threads_n, per_thread = 4, 5000
    async with _logger(server.port, chunk_points=700) as logger:
        sync = MetricLogger(logger, asyncio.get_running_loop())
        start = threading.Barrier(threads_n + 1)

        def produce(t: int) -> None:
            start.wait()
            for i in range(per_thread):
                # Each thread its own series, and all of them one shared series.
                logger.put(run_id, f"thread/{t}", i * 0.5, i, 1000 + i)
                sync.put(run_id, "shared", float(t), t * per_thread + i, 7)
                if i % 500 == 0:
                    time.sleep(0.001)  # let the sender go idle and be woken again
            sync.put_many(run_id, {"many/a": 1.0, "many/b": 2.0}, step=t, timestamp=9)

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        await asyncio.to_thread(start.wait)
        for i in range(per_thread):
            logger.put(run_id, "loop", -float(i), i)  # the client's clock as timestamp
            if i % 1000 == 0:
                await asyncio.sleep(0)
        await asyncio.to_thread(lambda: [thread.join() for thread in threads])
        await logger.flush(timeout=30.0)
        assert logger.pending == 0

    for t in range(threads_n):
        expected = [(i, 1000 + i, i * 0.5) for i in range(per_thread)]
        assert await _history(runs, run_id, f"thread/{t}") == expected
    shared = await _history(runs, run_id, "shared")
    assert shared == [(s, 7, float(s // per_thread)) for s in range(threads_n * per_thread)]
    loop = await _history(runs, run_id, "loop")
    assert [(s, v) for s, _, v in loop] == [(i, -float(i)) for i in range(per_thread)]
    now = time.time_ns() // 1_000_000
    assert all(now - 120_000 < ts <= now for _, ts, _ in loop)
    for key, value in (("many/a", 1.0), ("many/b", 2.0)):
        assert await _history(runs, run_id, key) == [(t, 9, value) for t in range(threads_n)]


async def test_flush_waits_for_every_point_put_before_it_while_threads_keep_putting(
    server: Running,
    runs,  # type: ignore[no-untyped-def]
) -> None:
    run_id = (await new_run(runs)).info.run_id
    stop = threading.Event()
    count = [0, 0]  # points put by each thread so far

    async with _logger(server.port, chunk_points=300) as logger:

        def produce(t: int) -> None:
            i = 0
            while not stop.is_set() and i < 30_000:
                logger.put(run_id, f"k{t}", float(i), i, 1)
                i += 1
                count[t] = i
                if i % 500 == 0:
                    time.sleep(0.001)

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(2)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(5):
                await asyncio.sleep(0.05)
                before = list(count)
                await logger.flush(timeout=30.0)
                for t in range(2):
                    got = await _history(runs, run_id, f"k{t}")
                    assert len(got) >= before[t]
                    assert got[: before[t]] == [(i, 1, float(i)) for i in range(before[t])]
        finally:
            stop.set()
            await asyncio.to_thread(lambda: [thread.join() for thread in threads])
        await logger.flush(timeout=30.0)
    for t in range(2):
        assert len(await _history(runs, run_id, f"k{t}")) == count[t]


async def test_bad_points_raise_at_the_put_and_buffer_nothing(
    server: Running,
    runs,  # type: ignore[no-untyped-def]
) -> None:
    run_id = (await new_run(runs)).info.run_id
    async with _logger(server.port) as logger:
        with pytest.raises(InvalidArgumentError) as bad_key:
            logger.put(run_id, "bad*key", 1.0)
        assert bad_key.value.violations == {
            "key": "'bad*key' may only hold letters, digits and '_ - . space / :'"
        }
        with pytest.raises(InvalidArgumentError, match="the limit is 250"):
            logger.put(run_id, "k" * 251, 1.0)
        with pytest.raises(InvalidArgumentError, match=r"must not contain '\.\.'"):
            logger.put(run_id, "a..b", 1.0)
        with pytest.raises(TypeError, match="key must be a str, not list"):
            logger.put(run_id, ["x"], 1.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="metric value must be a number, not None"):
            logger.put(run_id, "x", None)
        with pytest.raises(TypeError, match="not str"):
            logger.put(run_id, "x", "0.5")
        with pytest.raises(TypeError, match="not bool"):
            logger.put(run_id, "x", True)
        with pytest.raises(TypeError, match="step must be an integer, not float"):
            logger.put(run_id, "x", 1.0, 1.5)
        with pytest.raises(TypeError, match="step must be an integer, not bool"):
            logger.put(run_id, "x", 1.0, True)
        with pytest.raises(InvalidArgumentError, match="within int64"):
            logger.put(run_id, "x", 1.0, 2**63)
        with pytest.raises(InvalidArgumentError, match=">= 0"):
            logger.put(run_id, "x", 1.0, 0, -1)
        with pytest.raises(TypeError, match="run_id must be a str"):
            logger.put(None, "x", 1.0)  # type: ignore[arg-type]
        # put_many: one bad key or value, and nothing of the call is buffered.
        with pytest.raises(InvalidArgumentError):
            logger.put_many(run_id, {"fine": 1.0, "/bad": 2.0})
        with pytest.raises(TypeError, match="value of 'b' must be a number, not None"):
            logger.put_many(run_id, {"a": 1.0, "b": None})
        assert logger.pending == 0 and not logger._buf
        # The waiting coroutine path checks by the same rules.
        with pytest.raises(InvalidArgumentError):
            await logger.log(run_id, "bad*key", 1.0)
        with pytest.raises(TypeError, match="None"):
            await logger.log_many(run_id, {"a": None})  # type: ignore[dict-item]
        with pytest.raises(InvalidArgumentError):
            logger.log_nowait(run_id, "x", 1.0, 2**63)
        assert logger.pending == 0 and not logger._buf

        # What is accepted: ints and other real numbers, NaN, step None (0).
        logger.put(run_id, "x", 3, None, 5)
        logger.put(run_id, "x", float("nan"), 1, 5)
        logger.put_many(run_id, {"x": 2**53, "y": -1}, step=2, timestamp=5)
        await logger.flush(timeout=10.0)
    got = await _history(runs, run_id, "x")
    assert [(s, ts) for s, ts, _ in got] == [(0, 5), (1, 5), (2, 5)]
    assert got[0][2] == 3.0 and got[1][2] != got[1][2] and got[2][2] == float(2**53)
    assert await _history(runs, run_id, "y") == [(2, 5, -1.0)]
    for key in ("fine", "a", "b"):
        assert await _history(runs, run_id, key) == []


async def test_a_full_buffer_raises_when_asked_to_from_any_thread() -> None:
    # Nothing listens on this port: nothing is ever acknowledged.
    async with _logger(_free_port(), capacity=5, on_full="raise") as logger:
        run_id = "a" * 32
        for i in range(5):
            logger.put(run_id, "x", float(i), i)
        with pytest.raises(BufferFullError) as full:
            logger.put(run_id, "x", 5.0, 5)
        assert full.value.capacity == 5 and full.value.requested == 1
        with pytest.raises(BufferFullError):
            await asyncio.to_thread(logger.put, run_id, "x", 5.0, 5)
        with pytest.raises(BufferFullError):
            logger.put_many(run_id, {"y": 1.0})
        assert logger.pending == 5
        with pytest.raises(TimeoutError):
            await logger.close(timeout=0.1)
        with pytest.raises(LoggerClosedError):
            logger.put(run_id, "x", 1.0)
        with pytest.raises(LoggerClosedError):
            await asyncio.to_thread(logger.put_many, run_id, {"x": 1.0})


async def test_a_full_buffer_blocks_other_threads_until_an_ack_frees_room(
    database_url: str,
    runs,  # type: ignore[no-untyped-def]
) -> None:
    run_id = (await new_run(runs)).info.run_id
    port = _free_port()  # no server there yet
    async with _logger(port, capacity=4, on_full="block") as logger:
        for i in range(4):
            logger.put(run_id, "x", float(i), i, 1)
        # On the event loop's thread, put cannot wait: it raises, saying what to do.
        with pytest.raises(BufferFullError, match=r"await logger\.log") as full:
            logger.put(run_id, "x", 4.0, 4, 1)
        assert full.value.requested == 1
        with pytest.raises(BufferFullError):
            logger.put_many(run_id, {"x": 4.0}, step=4, timestamp=1)

        # On another thread, it blocks until acknowledgements free room; put_many takes
        # more points than the whole capacity, buffering them as room comes.
        blocked = asyncio.create_task(asyncio.to_thread(logger.put, run_id, "x", 4.0, 4, 1))
        many = {f"m{j}": float(j) for j in range(6)}
        blocked_many = asyncio.create_task(asyncio.to_thread(logger.put_many, run_id, many, 5, 1))
        await asyncio.sleep(0.4)
        assert not blocked.done() and not blocked_many.done()
        assert logger.pending == 4
        running = await app.start(server_config(listen=f"127.0.0.1:{port}"), database_url)
        try:
            await asyncio.wait_for(asyncio.gather(blocked, blocked_many), 20.0)
            await logger.flush(timeout=20.0)
        finally:
            await running.stop(0)
    assert await _history(runs, run_id, "x") == [(i, 1, float(i)) for i in range(5)]
    for j in range(6):
        assert await _history(runs, run_id, f"m{j}") == [(5, 1, float(j))]


async def test_put_of_a_failed_logger_raises_its_failure(
    server: Running,
    runs,  # type: ignore[no-untyped-def]
) -> None:
    run_id = (await new_run(runs)).info.run_id
    async with _logger(server.port, stream_id="not a valid id!") as logger:
        logger.put(run_id, "x", 1.0)
        with pytest.raises(InvalidArgumentError):
            await logger.flush(timeout=10.0)
        with pytest.raises(InvalidArgumentError):
            logger.put(run_id, "x", 2.0)
        with pytest.raises(InvalidArgumentError):
            await asyncio.to_thread(logger.put_many, run_id, {"x": 2.0})


def test_put_is_fast() -> None:
    """Not a benchmark (see bench/logcall.py), a guard: a put of a known key costs a few
    times a list append, not a lock and a wake-up per call."""

    async def scenario() -> tuple[float, float]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{_free_port()}") as channel:
            logger = AsyncMetricLogger(
                run_service_pb2_grpc.RunServiceStub(channel), capacity=300_000
            )
            logger._task.cancel()  # no sender: only the call is measured
            n = 100_000
            put = logger.put
            points: list[object] = []
            append = points.append
            best_put = best_base = float("inf")
            for _ in range(3):
                logger._buf.clear()
                t0 = time.perf_counter()
                for i in range(n):
                    put("a" * 32, "loss", i * 1e-3, i)
                best_put = min(best_put, time.perf_counter() - t0)
                points.clear()
                t0 = time.perf_counter()
                for i in range(n):
                    append(("a" * 32, "loss", i * 1e-3, i))
                best_base = min(best_base, time.perf_counter() - t0)
            return best_put / n, best_base / n

    per_put, per_append = asyncio.run(scenario())
    # Generous bounds for a shared, noisy machine; bench/README.md has the real figures.
    assert per_put < 10e-6, per_put
    assert per_put < 15 * per_append, (per_put, per_append)
