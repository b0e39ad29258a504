"""Migration 0012 (compact metric blocks) over a database filled by the previous release:
its metric points, stored as rows, are compacted in the background by the server that
migrated it, while that server answers reads, and every series reads back as it was."""

from __future__ import annotations

import asyncio
import math
import struct
import time
import uuid

import asyncpg
import grpc

from conftest import server_config
from old_db import migrate_to
from trackd.server import app
from trackd.v1 import run_service_pb2 as rpb
from trackd.v1 import run_service_pb2_grpc

# The last migration of the previous release.
OLD_VERSION = 11
START = 1_700_000_000_000
SERIES = {"loss": 30_000, "acc": 9_000, "lr": 700}


def _points(key: str, n: int) -> list[tuple[int, int, float]]:
    special = [math.nan, math.inf, -math.inf, -0.0]
    return [
        (i, START + 10 * i, special[i % 4] if i % 1000 == 999 else math.cos(i / 77) + len(key))
        for i in range(n)
    ]


def _bits(points: list[tuple[int, int, float]]) -> list[tuple[int, int, bytes]]:
    return [(s, t, struct.pack("<d", v)) for s, t, v in points]


async def _fill(conn: asyncpg.Connection) -> str:
    """A FINISHED run with three series, stored as the previous release stored them:
    points as rows, the series' counts and latest points (summaries as it kept them)."""
    rid = uuid.uuid4()
    pk = await conn.fetchval(
        "INSERT INTO runs (run_id, experiment_id, run_name, user_id, status, start_time,"
        " end_time, artifact_uri) VALUES ($1, 0, 'old', 'old-user', 3, $2, $3, $4)"
        " RETURNING run_pk",
        rid,
        START,
        START + 10**6,
        f"file:///tmp/trackd-test-artifacts/0/{rid.hex}/artifacts",
    )
    for key, n in SERIES.items():
        points = _points(key, n)
        sid = await conn.fetchval(
            "INSERT INTO metric_series (run_pk, key, count, first_step, last_step, latest_step,"
            " latest_ts, latest_value) VALUES ($1, $2, $3, 0, $4, $4, $5, $6)"
            " RETURNING series_id",
            pk,
            key,
            n,
            n - 1,
            points[-1][1],
            points[-1][2],
        )
        await conn.copy_records_to_table(
            "metric_points",
            records=[(sid, *p) for p in points],
            columns=["series_id", "step", "ts", "value"],
        )
    return rid.hex


async def _rows_left(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM metric_points"))
    finally:
        await conn.close()


async def test_old_points_are_compacted_in_the_background_and_read_back(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate_to(conn, OLD_VERSION)
        rid = await _fill(conn)
    finally:
        await conn.close()
    total = sum(SERIES.values())
    assert await _rows_left(database_url) == total

    running = await app.start(server_config(), database_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            runs = run_service_pb2_grpc.RunServiceStub(ch)

            async def read(key: str) -> list[tuple[int, int, float]]:
                out: list[tuple[int, int, float]] = []
                req = rpb.StreamMetricHistoryRequest(run_id=rid, metric_key=key, chunk_size=4000)
                async for c in runs.StreamMetricHistory(req):
                    out.extend(zip(c.steps, c.timestamps, c.values, strict=True))
                return out

            # Reads are answered while the start-up sweep compacts, and once it is done.
            deadline = time.monotonic() + 60
            while True:
                for key, n in SERIES.items():
                    assert _bits(await read(key)) == _bits(_points(key, n))
                left = await _rows_left(database_url)
                # What compaction leaves: the short series, and under two blocks of rows of
                # each long one.
                if left < SERIES["lr"] + 2 * 2 * 1024:
                    break
                assert time.monotonic() < deadline, f"{left} rows still to compact"
                await asyncio.sleep(0.05)
            run = (await runs.GetRun(rpb.GetRunRequest(run_id=rid))).run
            counts = {s.key: s.count for s in run.data.metric_summaries}
            assert counts == SERIES
    finally:
        await running.stop(1.0)
