"""Envelope benchmark: StreamMetricEnvelopes against a full scan of the same points, and
StreamMetrics ingest with the tiers maintained against the same server without them.

- A 10,000,000-point series, ingested through StreamMetrics: 1,000 buckets over the whole
  series and over a zoomed range that cuts blocks, against one SQL aggregate over every
  point of the series (the least a read of every point costs).
- 100 runs of 100,000 points: 500 buckets per series in one call for the 100 runs, against
  one SQL aggregate over their 10,000,000 points.
- Ingest: the ingest scenario's StreamMetrics measurement (1 client, 500,000 points; 8
  clients, 125,000 points each) against trackd and against the same code with the tiers
  switched off (bench.server_without_tiers), alternating, medians.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
import uuid

import asyncpg
import grpc

from bench import ingest
from bench.common import server_process
from trackd.v1 import run_service_pb2 as rpb
from trackd.v1 import run_service_pb2_grpc

T0 = 1_700_000_000_000
CHUNK = 10_000
FULL_SCAN = """
SELECT count(*), min(value), max(value), count(*) FILTER (WHERE value = 'NaN'), min(step),
       max(step)
FROM metric_points WHERE series_id = ANY($1::bigint[])"""
SERIES_IDS = """
SELECT s.series_id FROM metric_series s JOIN runs r USING (run_pk)
WHERE r.run_id = ANY($1::uuid[]) AND s.key = $2"""


def _value(i: int) -> float:
    if i % 1_000_003 == 17:
        return 1e9  # a spike every million points
    return math.sin(i / 1000.0)


def _requests(stream_id: str, run_id: str, key: str, start: int, points: int):  # type: ignore[no-untyped-def]
    yield rpb.StreamMetricsRequest(stream_id=stream_id, sequence=0)
    for seq, first in enumerate(range(start, start + points, CHUNK), start=1):
        steps = list(range(first, min(start + points, first + CHUNK)))
        yield rpb.StreamMetricsRequest(
            stream_id=stream_id,
            sequence=seq,
            series=[
                rpb.MetricColumns(
                    run_id=run_id,
                    key=key,
                    steps=steps,
                    timestamps=[T0 + s for s in steps],
                    values=[_value(s) for s in steps],
                )
            ],
        )


async def _log(stub: run_service_pb2_grpc.RunServiceStub, run_id: str, points: int) -> None:
    """Streams `points` points of key "m" to a run, 4 streams in parallel."""
    parts = 4
    per = -(-points // parts)

    async def one(p: int) -> None:
        start = p * per
        n = max(0, min(per, points - start))
        async for ack in stub.StreamMetrics(
            _requests(uuid.uuid4().hex, run_id, "m", start, n)  # type: ignore[arg-type]
        ):
            assert not ack.rejections

    await asyncio.gather(*(one(p) for p in range(parts)))


async def _new_run(stub: run_service_pb2_grpc.RunServiceStub) -> str:
    resp = await stub.CreateRun(rpb.CreateRunRequest(run_name="env", start_time=T0))
    return resp.run.info.run_id


async def _timed(coro_fn, rounds: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await coro_fn()
        out.append(time.perf_counter() - t0)
    return out


def _ms(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples) * 1e3:.1f} ms (min {min(samples) * 1e3:.1f})"


async def run(database_url: str) -> dict[str, dict[str, str]]:
    conn = await asyncpg.connect(database_url)
    out: dict[str, dict[str, str]] = {}
    opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    try:
        async with server_process(database_url) as server:
            async with grpc.aio.insecure_channel(server.target, options=opts) as ch:
                stub = run_service_pb2_grpc.RunServiceStub(ch)
                await _one_series(stub, conn, out)
                await _many_series(stub, conn, out)
        await _ingest(database_url, opts, out)
    finally:
        await conn.close()
    return out


async def _one_series(
    stub: run_service_pb2_grpc.RunServiceStub,
    conn: asyncpg.Connection,
    out: dict[str, dict[str, str]],
) -> None:
    n = 10_000_000
    run_id = await _new_run(stub)
    t0 = time.perf_counter()
    await _log(stub, run_id, n)
    loaded = time.perf_counter() - t0
    sids = [r["series_id"] for r in await conn.fetch(SERIES_IDS, [run_id], "m")]
    await conn.execute("ANALYZE metric_points; ANALYZE metric_tiers")

    async def envelope(**kw: int) -> rpb.StreamMetricEnvelopesResponse:
        req = rpb.StreamMetricEnvelopesRequest(run_ids=[run_id], metric_keys=["m"], **kw)
        got = [r async for r in stub.StreamMetricEnvelopes(req)]
        return got[0]

    whole = await envelope(buckets=1000)
    assert sum(whole.count) == n and max(whole.max) == 1e9
    zoom = {"x_min": 3_333_333, "x_max": 3_433_332}
    zoomed = await envelope(buckets=1000, **zoom)
    assert sum(zoomed.count) == 100_000
    env = await _timed(lambda: envelope(buckets=1000), 20)
    env_zoom = await _timed(lambda: envelope(buckets=1000, **zoom), 20)
    wall = await _timed(lambda: envelope(buckets=1000, axis=rpb.METRIC_AXIS_WALL_TIME), 10)
    scan = await _timed(lambda: conn.fetchrow(FULL_SCAN, sids), 3)
    out["10M-point series: StreamMetricEnvelopes, 1,000 buckets"] = {
        "load (StreamMetrics, 4 streams)": f"{loaded:.1f} s ({n / loaded:,.0f} points/s)",
        "whole series, step axis": f"{_ms(env)}; {len(whole.count)} buckets",
        "whole series, wall-time axis": _ms(wall),
        "zoom: 100,000 steps cutting blocks": f"{_ms(env_zoom)}; {len(zoomed.count)} buckets",
        "full scan: one SQL aggregate over the 10M points": _ms(scan),
        "envelope / full scan": f"{statistics.median(env) / statistics.median(scan):.4f}",
    }


async def _many_series(
    stub: run_service_pb2_grpc.RunServiceStub,
    conn: asyncpg.Connection,
    out: dict[str, dict[str, str]],
) -> None:
    runs = [await _new_run(stub) for _ in range(100)]
    t0 = time.perf_counter()
    for start in range(0, 100, 8):
        await asyncio.gather(*(_log(stub, r, 100_000) for r in runs[start : start + 8]))
    loaded = time.perf_counter() - t0
    sids = [r["series_id"] for r in await conn.fetch(SERIES_IDS, runs, "m")]
    await conn.execute("ANALYZE metric_points; ANALYZE metric_tiers")
    req = rpb.StreamMetricEnvelopesRequest(run_ids=runs, metric_keys=["m"], buckets=500)

    async def call() -> list[rpb.StreamMetricEnvelopesResponse]:
        return [r async for r in stub.StreamMetricEnvelopes(req)]

    got = await call()
    assert len(got) == 100 and all(sum(g.count) == 100_000 for g in got)
    env = await _timed(call, 10)
    scan = await _timed(lambda: conn.fetchrow(FULL_SCAN, sids), 3)
    out["100 runs x 100,000 points: 500 buckets per series, one call"] = {
        "load (StreamMetrics)": f"{loaded:.1f} s ({10_000_000 / loaded:,.0f} points/s)",
        "StreamMetricEnvelopes": f"{_ms(env)}; {len(got[0].count)} buckets per series",
        "full scan: one SQL aggregate over the 10M points": _ms(scan),
        "envelopes / full scan": f"{statistics.median(env) / statistics.median(scan):.4f}",
    }


async def _ingest(
    database_url: str, opts: list[tuple[str, int]], out: dict[str, dict[str, str]]
) -> None:
    figures: dict[str, dict[str, list[float]]] = {"tiers": {}, "no tiers": {}}
    for _ in range(3):
        for name, module in (
            ("tiers", "trackd.server"),
            ("no tiers", "bench.server_without_tiers"),
        ):
            async with server_process(database_url, module=module) as server:
                async with grpc.aio.insecure_channel(server.target, options=opts) as ch:
                    stub = run_service_pb2_grpc.RunServiceStub(ch)
                    await ingest.streaming(stub, 1, 50_000)  # warm-up
                    one = await ingest.streaming(stub, 1, 500_000)
                    eight = await ingest.streaming(stub, 8, 125_000)
            figures[name].setdefault("1 client", []).append(one)
            figures[name].setdefault("8 clients", []).append(eight)
    section: dict[str, str] = {}
    for label in ("1 client", "8 clients"):
        on = statistics.median(figures["tiers"][label])
        off = statistics.median(figures["no tiers"][label])
        section[f"StreamMetrics, {label}"] = (
            f"{on:,.0f} points/s with tiers, {off:,.0f} without: {on / off:.3f} "
            f"(runs: {', '.join(f'{x:,.0f}' for x in figures['tiers'][label])} / "
            f"{', '.join(f'{x:,.0f}' for x in figures['no tiers'][label])})"
        )
    out["ingest with the tiers maintained, against without (3 alternating rounds)"] = section
