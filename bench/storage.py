"""Compact metric storage: bytes per point on disk, history reads and ingest, with points as
rows and after compaction into blocks, in the same process and database.

A series of 1,000,000 points is logged through a server with compaction off, measured (the
rows: heap and primary key) and read back; a compacting server then moves it into blocks,
and the same series is measured (blocks, their TOAST and index, plus the rows left) and read
again. Two series: a typical loss curve (steps 1..N, a timestamp every ~100 ms with jitter,
a noisy decaying value) and the worst case (random doubles: every bit of the mantissa is
noise). Ingest: StreamMetrics points/s with compaction on and off, alternately."""

from __future__ import annotations

import asyncio
import math
import time
import uuid

import asyncpg
import grpc
import numpy as np

from bench.common import server_process
from bench.ingest import _stream, read_history, streaming
from trackd.v1 import run_service_pb2 as rpb
from trackd.v1 import run_service_pb2_grpc

POINTS = 1_000_000
CHUNK = 10_000
T0 = 1_700_000_000_000
SIZES = """
SELECT pg_total_relation_size('metric_points') AS rows_bytes,
       pg_total_relation_size('metric_blocks') AS blocks_bytes,
       (SELECT count(*) FROM metric_points) AS n_rows,
       (SELECT coalesce(sum(count), 0) FROM metric_blocks) AS n_blocked"""


def typical(n: int, seed: int) -> tuple[list[int], list[int], list[float]]:
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n + 1, dtype=np.int64)
    stamps = T0 + np.cumsum(rng.integers(90, 111, n)).astype(np.int64)
    values = 2.5 * np.exp(-steps / (n / 5)) + 0.1 + rng.normal(0, 0.02, n)
    return steps.tolist(), stamps.tolist(), values.tolist()


def worst(n: int, seed: int) -> tuple[list[int], list[int], list[float]]:
    rng = np.random.default_rng(seed)
    steps, stamps, _ = typical(n, seed)
    return steps, stamps, rng.random(n).tolist()


Columns = tuple[list[int], list[int], list[float]]


def _chunks(run_id: str, cols: Columns) -> list[rpb.StreamMetricsRequest]:
    steps, stamps, values = cols
    msgs = [rpb.StreamMetricsRequest(stream_id=uuid.uuid4().hex, sequence=0)]
    for seq, a in enumerate(range(0, len(steps), CHUNK), 1):
        msgs.append(
            rpb.StreamMetricsRequest(
                stream_id=msgs[0].stream_id,
                sequence=seq,
                series=[
                    rpb.MetricColumns(
                        run_id=run_id,
                        key="loss",
                        steps=steps[a : a + CHUNK],
                        timestamps=stamps[a : a + CHUNK],
                        values=values[a : a + CHUNK],
                    )
                ],
            )
        )
    return msgs


async def _best_read(stub: run_service_pb2_grpc.RunServiceStub, run_id: str) -> tuple[float, float]:
    reads = [await read_history(stub, run_id, "loss") for _ in range(3)]
    assert all(r[2] == POINTS for r in reads)
    return min(r[0] for r in reads), min(r[1] for r in reads)


async def _sizes(conn: asyncpg.Connection) -> asyncpg.Record:
    await conn.execute("VACUUM (ANALYZE) metric_points, metric_blocks")
    return await conn.fetchrow(SIZES)


async def _series(database_url: str, name: str, cols: Columns) -> dict[str, str]:
    conn = await asyncpg.connect(database_url)
    try:
        async with server_process(database_url, "--compaction", "off") as server:
            # The database to this series alone (the server has migrated it).
            await conn.execute("TRUNCATE metric_points, metric_blocks, metric_tiers, metric_series")
            async with grpc.aio.insecure_channel(server.target) as ch:
                stub = run_service_pb2_grpc.RunServiceStub(ch)
                run_id = (await stub.CreateRun(rpb.CreateRunRequest(run_name=name))).run.info.run_id
                await _stream(stub, _chunks(run_id, cols))
                before = await _sizes(conn)
                rows_read = await _best_read(stub, run_id)
        t0 = time.perf_counter()
        async with server_process(database_url, "--compaction", "on") as server:
            while (await conn.fetchval("SELECT count(*) FROM metric_points")) >= 2 * 1024:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            compact_s = time.perf_counter() - t0
            # Both reads follow a VACUUM (what autovacuum does on its own): here it clears
            # the rows compaction deleted, before the rows' read the visibility map.
            after = await _sizes(conn)
            async with grpc.aio.insecure_channel(server.target) as ch:
                stub = run_service_pb2_grpc.RunServiceStub(ch)
                blocks_read = await _best_read(stub, run_id)
        await conn.execute("VACUUM FULL metric_points")
        packed = await conn.fetchrow(SIZES)
    finally:
        await conn.close()
    rows_bpp = before["rows_bytes"] / POINTS
    blocks_bpp = after["blocks_bytes"] / after["n_blocked"]
    total_bpp = (packed["rows_bytes"] + packed["blocks_bytes"]) / POINTS
    return {
        "as rows (heap + primary key)": f"{rows_bpp:.1f} B/point",
        "in blocks (heap, TOAST and primary key of metric_blocks)": (
            f"{blocks_bpp:.2f} B/point ({rows_bpp / blocks_bpp:.1f}x smaller; "
            f"{after['n_blocked']:,} points in blocks, {after['n_rows']:,} left as rows)"
        ),
        "whole series after compaction (metric_points rewritten by VACUUM FULL)": (
            f"{total_bpp:.2f} B/point"
        ),
        "compaction time (server start to done)": (
            f"{compact_s:.1f} s ({POINTS / compact_s:,.0f} points/s)"
        ),
        "GetMetricHistory, 25k pages, rows -> blocks": (
            f"{rows_read[0]:.3f} s -> {blocks_read[0]:.3f} s ({rows_read[0] / blocks_read[0]:.2f}x)"
        ),
        "StreamMetricHistory, rows -> blocks": (
            f"{rows_read[1]:.3f} s -> {blocks_read[1]:.3f} s ({rows_read[1] / blocks_read[1]:.2f}x)"
        ),
    }


async def _ingest(database_url: str, compaction: str) -> tuple[float, float]:
    async with server_process(database_url, "--compaction", compaction) as server:
        async with grpc.aio.insecure_channel(server.target) as ch:
            stub = run_service_pb2_grpc.RunServiceStub(ch)
            await streaming(stub, 1, 50_000)
            return await streaming(stub, 1, 500_000), await streaming(stub, 8, 125_000)


async def run(database_url: str) -> dict[str, dict[str, str]]:
    out = {
        f"typical series, {POINTS:,} points": await _series(
            database_url, "typical", typical(POINTS, 1)
        ),
        f"worst case (random doubles), {POINTS:,} points": await _series(
            database_url, "worst", worst(POINTS, 2)
        ),
    }
    # Alternate, twice each, so that drift on a shared machine hits both alike.
    figures: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for mode in ("off", "on", "on", "off"):
        figures[mode].append(await _ingest(database_url, mode))
    off1 = math.fsum(f[0] for f in figures["off"]) / 2
    on1 = math.fsum(f[0] for f in figures["on"]) / 2
    off8 = math.fsum(f[1] for f in figures["off"]) / 2
    on8 = math.fsum(f[1] for f in figures["on"]) / 2
    out["StreamMetrics ingest, compaction off -> on (mean of 2 runs each)"] = {
        "1 client, 500k points": f"{off1:,.0f} -> {on1:,.0f} points/s ({on1 / off1:.0%})",
        "8 clients, 125k points each": f"{off8:,.0f} -> {on8:,.0f} points/s ({on8 / off8:.0%})",
    }
    return out
