"""WatchRun benchmark: from commit to delivery when the writer is another trackd process
than the watched one (two server processes on one database), idle and under ingest load,
and what watchers cost StreamMetrics ingest.

A point's latency is measured from just before its LogMetric call (sent to process B) to
its arrival on the WatchRun call (served by process A): an upper bound of commit to
delivery, since the commit happens inside that call. The time from LogMetric's answer
(after the commit) to the arrival is reported too; it is negative when the point arrives
before the writer's own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid

import grpc

from bench.common import percentile, server_process
from bench.ingest import _chunks, _new_run, _stream
from trackd.v1 import run_service_pb2 as rpb
from trackd.v1 import run_service_pb2_grpc

SAMPLES = 300


def _figures(samples: list[float]) -> str:
    return (
        f"p50 {percentile(samples, 50) * 1000:.1f} ms, p95 {percentile(samples, 95) * 1000:.1f} ms,"
        f" p99 {percentile(samples, 99) * 1000:.1f} ms (n={len(samples)})"
    )


async def latency(
    writer: run_service_pb2_grpc.RunServiceStub,
    watcher: run_service_pb2_grpc.RunServiceStub,
    samples: int,
) -> tuple[list[float], list[float]]:
    """(send to arrival, answer to arrival) of `samples` points logged one at a time."""
    run_id = await _new_run(writer)
    arrived: dict[int, float] = {}
    ready = asyncio.Event()
    # Set once every measured point (steps 0 .. samples - 1) has arrived.
    complete = asyncio.Event()
    call = watcher.WatchRun(rpb.WatchRunRequest(run_id=run_id, metric_keys=["lat", "sync"]))

    async def read() -> None:
        async for r in call:
            if r.WhichOneof("event") == "points":
                for step in r.points.steps:
                    arrived.setdefault(step, time.perf_counter())
                ready.set()
                if all(s in arrived for s in range(samples)):
                    complete.set()

    reader = asyncio.create_task(read())
    try:
        # The watch's start: log until one point arrives.
        for i in range(200):
            await writer.LogMetric(
                rpb.LogMetricRequest(run_id=run_id, key="sync", value=0, step=-1 - i)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), 0.2)
                break
        sent: dict[int, float] = {}
        answered: dict[int, float] = {}
        for step in range(samples):
            sent[step] = time.perf_counter()
            await writer.LogMetric(
                rpb.LogMetricRequest(run_id=run_id, key="lat", value=step, step=step)
            )
            answered[step] = time.perf_counter()
            await asyncio.sleep(random.uniform(0.01, 0.03))
        await asyncio.wait_for(complete.wait(), 10)
        return (
            [arrived[s] - sent[s] for s in sent],
            [arrived[s] - answered[s] for s in sent],
        )
    finally:
        call.cancel()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await reader


async def ingest(
    writer: run_service_pb2_grpc.RunServiceStub,
    watcher: run_service_pb2_grpc.RunServiceStub | None,
    clients: int,
    points: int,
) -> float:
    """Points/s of `clients` StreamMetrics calls, each to its own run, with (or without) a
    WatchRun call reading every run through the other process."""
    runs = [await _new_run(writer) for _ in range(clients)]
    got = [0]
    total = clients * points
    complete = asyncio.Event()
    calls = []
    readers = []
    if watcher is not None:
        for run_id in runs:
            call = watcher.WatchRun(rpb.WatchRunRequest(run_id=run_id))
            calls.append(call)

            async def read(call=call) -> None:  # type: ignore[no-untyped-def]
                async for r in call:
                    got[0] += len(r.points.steps)
                    if got[0] >= total:
                        complete.set()

            readers.append(asyncio.create_task(read()))
        await asyncio.sleep(0.5)
    msgs = [_chunks(uuid.uuid4().hex, r, "loss", points) for r in runs]
    t0 = time.perf_counter()
    await asyncio.gather(*(_stream(writer, m) for m in msgs))
    elapsed = time.perf_counter() - t0
    if watcher is not None:
        await asyncio.wait_for(complete.wait(), 60)
        assert got[0] == total, (got[0], total)
        for call in calls:
            call.cancel()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return total / elapsed


async def run(database_url: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    async with server_process(database_url) as a, server_process(database_url) as b:
        opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        async with (
            grpc.aio.insecure_channel(a.target, options=opts) as cha,
            grpc.aio.insecure_channel(b.target, options=opts) as chb,
        ):
            watched = run_service_pb2_grpc.RunServiceStub(cha)
            writer = run_service_pb2_grpc.RunServiceStub(chb)
            await latency(writer, watched, 30)  # warm-up
            sent, answered = await latency(writer, watched, SAMPLES)
            out["commit to delivery, writer in process B, watcher on process A, idle"] = {
                "LogMetric sent -> point delivered": _figures(sent),
                "LogMetric answered -> point delivered": _figures(answered),
            }
            # The same while another client streams points to another run through B.
            load_run = await _new_run(writer)

            async def load() -> None:
                for i in range(1000):
                    await _stream(writer, _chunks(uuid.uuid4().hex, load_run, f"load{i}", 500_000))

            background = asyncio.create_task(load())
            await asyncio.sleep(1.0)
            sent, answered = await latency(writer, watched, SAMPLES)
            loaded = not background.done()
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await background
            key = "commit to delivery, during StreamMetrics ingest through process B"
            out[key] = {
                "LogMetric sent -> point delivered": _figures(sent),
                "LogMetric answered -> point delivered": _figures(answered),
                "ingest ran throughout": str(loaded),
            }
            alone = await ingest(writer, None, 8, 125_000)
            watched_rate = await ingest(writer, watched, 8, 125_000)
            alone_after = await ingest(writer, None, 8, 125_000)
            mean = (alone + alone_after) / 2
            out["StreamMetrics through B, 8 clients x 125,000 points"] = {
                "nobody watching": f"{mean:,.0f} points/s "
                f"(before {alone:,.0f}, after {alone_after:,.0f})",
                "each run watched through A": f"{watched_rate:,.0f} points/s "
                f"({watched_rate / mean:.0%})",
            }
    return out
