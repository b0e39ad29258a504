"""The compacting server killed with SIGKILL, again and again, while it moves points into
blocks: after each kill the database holds every point exactly once (rows and blocks agree
with the series' counts), and once compaction completes on a fresh start, every series
reads back bit for bit as it was logged."""

from __future__ import annotations

import asyncio
import random
import signal
import struct
import time

import asyncpg
import grpc
from procs import running

from conftest import server_config
from helpers import STATS, new_run, stored_points
from test_envelopes import adversarial, log, stored
from trackd.server import app
from trackd.v1 import run_service_pb2_grpc

SERIES = 12
POINTS = 40_000
KILLS = 4
BLOCK = 1024


def _bits(points: list[tuple[int, int, float]]) -> list[tuple[int, int, bytes]]:
    return sorted((s, t, struct.pack("<d", v)) for s, t, v in points)


async def _state(database_url: str) -> tuple[int, int, int]:
    """(points, points in blocks, blocks) over every series, asserting in one snapshot
    that each series' rows and blocks hold exactly its points."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT s.count, coalesce(s.compacted_count, 0) AS compacted,"
            " (SELECT count(*) FROM metric_points p WHERE p.series_id = s.series_id) AS n_rows,"
            " (SELECT coalesce(sum(b.count), 0) FROM metric_blocks b"
            "   WHERE b.series_id = s.series_id) AS in_blocks,"
            " (SELECT count(*) FROM metric_blocks b WHERE b.series_id = s.series_id) AS n_blocks"
            " FROM metric_series s"
        )
    finally:
        await conn.close()
    for r in rows:
        assert r["compacted"] == r["in_blocks"], dict(r)
        assert r["count"] == r["in_blocks"] + r["n_rows"], dict(r)
    return (
        sum(r["count"] for r in rows),
        sum(r["compacted"] for r in rows),
        sum(r["n_blocks"] for r in rows),
    )


async def _left(database_url: str) -> int:
    """Series still holding two blocks of rows or more (compaction leaves fewer)."""
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM metric_series"
                " WHERE count - coalesce(compacted_count, 0) >= $1",
                2 * BLOCK,
            )
        )
    finally:
        await conn.close()


async def test_sigkill_mid_compaction_loses_and_duplicates_nothing(database_url: str) -> None:
    # Logged with compaction off, so that the killed servers find it all to compact.
    plain = await app.start(server_config(compaction=False), database_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plain.port}") as ch:
            runs = run_service_pb2_grpc.RunServiceStub(ch)
            run_ids = []
            want = {}
            for k in range(SERIES):
                run_id = (await new_run(runs)).info.run_id
                points = adversarial(POINTS, 500 + k)
                random.Random(k).shuffle(points)
                await log(runs, run_id, "m", points, chunk=5000)
                run_ids.append(run_id)
                want[run_id] = _bits(await stored(runs, run_id, "m"))
    finally:
        await plain.stop(1.0)
    total, compacted, _ = await _state(database_url)
    assert total == sum(len(w) for w in want.values()) and compacted == 0

    rng = random.Random(9)
    # Kills after which series were still left to compact: the kill cut the work short.
    interrupted = 0
    for _ in range(KILLS):
        async with running(database_url, 0, "--compaction", "on") as server:
            # Kill it a moment after it has committed some progress: mid-round, as often as
            # not, with a transaction open.
            deadline = time.monotonic() + 30
            start = (await _state(database_url))[1]
            while (await _state(database_url))[1] == start:
                if (await _state(database_url))[2] * BLOCK >= total - SERIES * 2 * BLOCK:
                    break  # nothing left to compact
                assert time.monotonic() < deadline, "compaction made no progress"
                await asyncio.sleep(0.005)
            await asyncio.sleep(rng.uniform(0.0, 0.05))
            server.proc.send_signal(signal.SIGKILL)
            await server.proc.wait()
            STATS["faults injected"] += 1
        interrupted += await _left(database_url) > 0
        total_now, _, _ = await _state(database_url)
        assert total_now == total
        stored_now = await stored_points(database_url, run_ids)
        for rid in run_ids:
            assert _bits(stored_now[(rid, "m")]) == want[rid], "a kill lost or duplicated points"

    assert interrupted >= 1, "no kill interrupted the compaction"
    # A last start finishes the work; every series then reads back as it was logged.
    async with running(database_url, 0, "--compaction", "on") as server:
        deadline = time.monotonic() + 120
        while True:
            left = await _left(database_url)
            if left == 0:
                break
            assert time.monotonic() < deadline, f"{left} series still to compact"
            await asyncio.sleep(0.1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            runs = run_service_pb2_grpc.RunServiceStub(ch)
            for rid in run_ids:
                assert _bits(await stored(runs, rid, "m")) == want[rid]
    total_end, compacted_end, _ = await _state(database_url)
    assert total_end == total and compacted_end >= total - SERIES * 2 * BLOCK
