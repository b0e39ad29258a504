"""Ingest benchmark: the raw COPY limit of PostgreSQL against trackd's streaming ingest,
LogBatch, LogMetric, and history reads, all on the same database in the same run.

Every trackd figure is measured through gRPC against a trackd server process, with
metric summaries maintained as always. The raw limit is asyncpg's copy_records_to_table
of the same (series_id, step, ts, value) rows into trackd's own metric_points table,
10,000 rows per committed transaction, on one connection.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import grpc

from bench.common import server_process, summary_ms
from trackd.v1 import metric_pb2, run_service_pb2_grpc
from trackd.v1 import run_service_pb2 as rpb

CHUNK = 10_000


async def raw_copy(conn: asyncpg.Connection, points: int) -> float:
    """Rows/s of COPY into metric_points, CHUNK rows per committed transaction."""
    series = await conn.fetchval("SELECT coalesce(max(series_id), 0) + 1000000 FROM metric_series")
    rows = [(series, i, 1_700_000_000_000 + i, i * 0.001) for i in range(points)]
    t0 = time.perf_counter()
    for start in range(0, points, CHUNK):
        async with conn.transaction():
            await conn.copy_records_to_table(
                "metric_points",
                records=rows[start : start + CHUNK],
                columns=["series_id", "step", "ts", "value"],
            )
    elapsed = time.perf_counter() - t0
    await conn.execute("DELETE FROM metric_points WHERE series_id = $1", series)
    return points / elapsed


def _chunks(stream_id: str, run_id: str, key: str, points: int) -> list[rpb.StreamMetricsRequest]:
    msgs = [rpb.StreamMetricsRequest(stream_id=stream_id, sequence=0)]
    for seq, start in enumerate(range(0, points, CHUNK), start=1):
        steps = list(range(start, min(points, start + CHUNK)))
        msgs.append(
            rpb.StreamMetricsRequest(
                stream_id=stream_id,
                sequence=seq,
                series=[
                    rpb.MetricColumns(
                        run_id=run_id,
                        key=key,
                        steps=steps,
                        timestamps=[1_700_000_000_000 + s for s in steps],
                        values=[s * 0.001 for s in steps],
                    )
                ],
            )
        )
    return msgs


async def _stream(
    stub: run_service_pb2_grpc.RunServiceStub, msgs: list[rpb.StreamMetricsRequest]
) -> None:
    async def gen():  # type: ignore[no-untyped-def]
        for m in msgs:
            yield m

    last = 0
    async for ack in stub.StreamMetrics(gen()):
        assert not ack.rejections
        last = ack.acked_sequence
    assert last == msgs[-1].sequence


async def _new_run(stub: run_service_pb2_grpc.RunServiceStub) -> str:
    return (await stub.CreateRun(rpb.CreateRunRequest(run_name="bench"))).run.info.run_id


async def streaming(stub: run_service_pb2_grpc.RunServiceStub, clients: int, points: int) -> float:
    """Points/s of `clients` concurrent streams, each sending `points` to its own run."""
    runs = [await _new_run(stub) for _ in range(clients)]
    msgs = [_chunks(uuid.uuid4().hex, r, "loss", points) for r in runs]
    t0 = time.perf_counter()
    await asyncio.gather(*(_stream(stub, m) for m in msgs))
    return clients * points / (time.perf_counter() - t0)


async def log_batch(stub: run_service_pb2_grpc.RunServiceStub, batches: int) -> float:
    """Points/s of sequential LogBatch calls of 1000 points from one client."""
    run_id = await _new_run(stub)
    reqs = [
        rpb.LogBatchRequest(
            run_id=run_id,
            metrics=[
                metric_pb2.Metric(
                    key="acc", value=i * 0.5, step=b * 1000 + i, timestamp=1_700_000_000_000
                )
                for i in range(1000)
            ],
        )
        for b in range(batches)
    ]
    t0 = time.perf_counter()
    for req in reqs:
        await stub.LogBatch(req)
    return batches * 1000 / (time.perf_counter() - t0)


async def log_metric_latency(stub: run_service_pb2_grpc.RunServiceStub, calls: int) -> list[float]:
    """Latency of sequential LogMetric calls from one client."""
    run_id = await _new_run(stub)
    times = []
    for i in range(calls):
        req = rpb.LogMetricRequest(run_id=run_id, key="lat", value=i, step=i, timestamp=1)
        t0 = time.perf_counter()
        await stub.LogMetric(req)
        times.append(time.perf_counter() - t0)
    return times[20:]


async def log_metric_concurrent(
    stub: run_service_pb2_grpc.RunServiceStub,
    callers: int,
    seconds: float,
    stubs: list[run_service_pb2_grpc.RunServiceStub] | None = None,
) -> float:
    """Calls/s of `callers` concurrent LogMetric loops for `seconds` (spread over `stubs`,
    each its own connection, when given)."""
    pool = stubs or [stub]
    run_ids = [await _new_run(stub) for _ in range(8)]
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller(c: int) -> None:
        nonlocal done
        i = 0
        target = pool[c % len(pool)]
        while time.perf_counter() < deadline:
            await target.LogMetric(
                rpb.LogMetricRequest(
                    run_id=run_ids[c % 8], key=f"c{c}", value=i, step=i, timestamp=1
                )
            )
            i += 1
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    return done / (time.perf_counter() - t0)


async def read_history(
    stub: run_service_pb2_grpc.RunServiceStub, run_id: str, key: str
) -> tuple[float, float, int]:
    """Seconds to read a series by unary pages of 25,000 and by the stream, and its points."""
    t0 = time.perf_counter()
    token, n = "", 0
    while True:
        resp = await stub.GetMetricHistory(
            rpb.GetMetricHistoryRequest(run_id=run_id, metric_key=key, page_token=token)
        )
        n += len(resp.metrics)
        token = resp.next_page_token
        if not token:
            break
    paged = time.perf_counter() - t0
    t0 = time.perf_counter()
    streamed_n = 0
    async for c in stub.StreamMetricHistory(
        rpb.StreamMetricHistoryRequest(run_id=run_id, metric_key=key)
    ):
        streamed_n += len(c.values)
    streamed = time.perf_counter() - t0
    assert streamed_n == n
    return paged, streamed, n


async def history(stub: run_service_pb2_grpc.RunServiceStub, points: int) -> tuple[float, float]:
    """Seconds to read a series of `points` by unary pages of 25,000 and by the stream."""
    run_id = await _new_run(stub)
    await _stream(stub, _chunks(uuid.uuid4().hex, run_id, "h", points))
    paged, streamed, n = await read_history(stub, run_id, "h")
    assert n == points
    return paged, streamed


async def run(database_url: str) -> dict[str, dict[str, str]]:
    conn = await asyncpg.connect(database_url)
    out: dict[str, dict[str, str]] = {}
    try:
        async with server_process(database_url) as server:
            async with grpc.aio.insecure_channel(
                server.target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
            ) as ch:
                stub = run_service_pb2_grpc.RunServiceStub(ch)
                await streaming(stub, 1, 50_000)  # warm-up: caches, plans, pages
                raw = await raw_copy(conn, 500_000)
                one = await streaming(stub, 1, 500_000)
                eight = await streaming(stub, 8, 125_000)
                raw_after = await raw_copy(conn, 500_000)
                raw_mean = (raw + raw_after) / 2
                out["raw limit: asyncpg COPY into metric_points, 10k rows/commit"] = {
                    "rows/s": f"{raw_mean:,.0f} (before {raw:,.0f}, after {raw_after:,.0f})"
                }
                out["StreamMetrics, 10k-point chunks, summaries maintained"] = {
                    "1 client": f"{one:,.0f} points/s ({one / raw_mean:.0%} of raw)",
                    "8 clients": f"{eight:,.0f} points/s ({eight / raw_mean:.0%} of raw)",
                }
                batch = await log_batch(stub, 100)
                out["LogBatch, 1000 points a call, 1 client"] = {"points/s": f"{batch:,.0f}"}
                lat = await log_metric_latency(stub, 1020)
                conc = await log_metric_concurrent(stub, 64, 5.0)
                out["LogMetric"] = {
                    "1 client": summary_ms(lat),
                    "64 concurrent callers": f"{conc:,.0f} calls/s",
                }
                for n in (100_000, 1_000_000):
                    paged, streamed = await history(stub, n)
                    out[f"history of {n:,} points"] = {
                        "GetMetricHistory, 25k pages": f"{paged:.3f} s",
                        "StreamMetricHistory": f"{streamed:.3f} s",
                    }
                out["server"] = {"peak RSS": f"{server.rss_mb():.0f} MB"}
        # The per-call access log line costs CPU at thousands of calls a second: the same
        # LogMetric load against a server with it switched off.
        async with server_process(database_url, "--access-log", "off") as quiet:
            async with grpc.aio.insecure_channel(quiet.target) as ch:
                stub = run_service_pb2_grpc.RunServiceStub(ch)
                await log_metric_latency(stub, 120)
                conc = await log_metric_concurrent(stub, 64, 5.0)
                out["LogMetric"]["64 concurrent callers, --access-log off"] = f"{conc:,.0f} calls/s"
        # Unary calls beyond one Python process: two workers sharing the port; the callers
        # use 8 connections, which the kernel spreads over the workers.
        async with server_process(database_url, "--workers", "2") as pair:
            channels = [grpc.aio.insecure_channel(pair.target) for _ in range(8)]
            try:
                stubs = [run_service_pb2_grpc.RunServiceStub(ch) for ch in channels]
                await log_metric_latency(stubs[0], 120)
                conc = await log_metric_concurrent(stubs[0], 64, 5.0, stubs)
                out["LogMetric"]["64 concurrent callers, --workers 2"] = f"{conc:,.0f} calls/s"
            finally:
                for ch in channels:
                    await ch.close()
    finally:
        await conn.close()
    return out
