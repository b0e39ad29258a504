"""Compact metric storage seen through the public API: a series reads the same, bit for bit,
before and after its points are compacted into blocks (history, paged history, envelopes at
every zoom and summaries); reads running while compaction moves points see every point
exactly once; duplicates of compacted points are skipped as duplicates of rows are; a late
point lands in order between compacted ones.

The data is logged through a server with compaction off; a second server on the same
database, with compaction on, compacts it at start (the sweep that also compacts what an
older release stored), while the first keeps serving reads."""

from __future__ import annotations

import asyncio
import math
import random
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest_asyncio

from conftest import server_config
from helpers import STATS, new_run
from test_envelopes import AXES, T0, adversarial, envelopes, log, stored
from trackd.server import app
from trackd.v1 import metric_pb2, run_pb2, run_service_pb2_grpc
from trackd.v1 import run_service_pb2 as rpb

BLOCK = 1024
Point = tuple[int, int, float]


def nan_with(payload: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_0000 | payload))[0]


def bits(points: list[Point]) -> list[tuple[int, int, bytes]]:
    return [(s, t, struct.pack("<d", v)) for s, t, v in points]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plain(database_url: str) -> AsyncIterator[app.Running]:
    """A server that never compacts (it logs, and reads while the other compacts)."""
    running = await app.start(server_config(compaction=False), database_url)
    yield running
    await running.stop(1.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plain_runs(plain: app.Running) -> AsyncIterator[run_service_pb2_grpc.RunServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plain.port}") as ch:
        yield run_service_pb2_grpc.RunServiceStub(ch)


async def _compacted(database_url: str, run_ids: list[str]) -> dict[str, tuple[int, int, int]]:
    """(points, points in blocks, rows) of every series of the runs, by run id and key."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT r.run_id, s.key, s.count, coalesce(s.compacted_count, 0) AS compacted,"
            " (SELECT count(*) FROM metric_points p WHERE p.series_id = s.series_id) AS n_rows,"
            " (SELECT coalesce(sum(b.count), 0) FROM metric_blocks b"
            "   WHERE b.series_id = s.series_id) AS in_blocks"
            " FROM metric_series s JOIN runs r USING (run_pk) WHERE r.run_id = ANY($1::uuid[])",
            run_ids,
        )
    finally:
        await conn.close()
    out = {}
    for r in rows:
        # The counts agree whenever a snapshot is taken: blocks and rows hold every point.
        assert r["compacted"] == r["in_blocks"], dict(r)
        assert r["count"] == r["in_blocks"] + r["n_rows"], dict(r)
        out[f"{r['run_id'].hex}/{r['key']}"] = (r["count"], r["compacted"], r["n_rows"])
    return out


async def _compact(database_url: str, run_ids: list[str], seconds: float = 60.0) -> None:
    """Starts a compacting server on the database and waits until every series of the runs
    keeps fewer than two blocks of rows (what compaction leaves)."""
    running = await app.start(server_config(compaction=True), database_url)
    try:
        deadline = time.monotonic() + seconds
        while True:
            state = await _compacted(database_url, run_ids)
            if all(rows < 2 * BLOCK for _, _, rows in state.values()):
                return
            assert time.monotonic() < deadline, state
            await asyncio.sleep(0.1)
    finally:
        await running.stop(1.0)


async def _paged(runs, run_id: str, key: str, page: int) -> list[Point]:  # type: ignore[no-untyped-def]
    out: list[Point] = []
    token = ""
    while True:
        resp = await runs.GetMetricHistory(
            rpb.GetMetricHistoryRequest(
                run_id=run_id, metric_key=key, max_results=page, page_token=token
            )
        )
        out.extend((m.step, m.timestamp, m.value) for m in resp.metrics)
        token = resp.next_page_token
        if not token:
            return out


def _special(n: int, seed: int) -> list[Point]:
    """An adversarial series plus NaN payloads, -0.0 and points sharing a (step, ts)."""
    points = adversarial(n, seed)
    for i in range(0, n, 97):
        points.append((i // 3, T0 + i, nan_with(i + 1)))
        points.append((i // 3, T0 + i, -0.0 if i % 2 else 0.0))
        points.append((i // 3, T0 + i, -math.inf))
    random.Random(seed).shuffle(points)
    return points


async def _view(runs, run_id: str, key: str, start: int) -> list[Any]:  # type: ignore[no-untyped-def]
    """Everything a reader can see of a series: history whole and paged, the summary, and
    envelopes on every axis at several bucket counts and zooms."""
    whole = await stored(runs, run_id, key)
    seen: list[Any] = [bits(whole), bits(await _paged(runs, run_id, key, 777))]
    run = (await runs.GetRun(rpb.GetRunRequest(run_id=run_id))).run
    seen.append([s.SerializeToString(deterministic=True) for s in run.data.metric_summaries])
    steps = sorted(p[0] for p in whole)
    stamps = sorted(p[1] for p in whole)
    for axis in AXES:
        xs = steps if axis == rpb.METRIC_AXIS_STEP else stamps
        shift = -start if axis == rpb.METRIC_AXIS_RELATIVE_TIME else 0
        zooms: list[dict[str, int]] = [{}]
        for a, b in ((0.1, 0.15), (0.5, 0.5004), (0.33, 0.9)):
            zooms.append(
                {"x_min": xs[int(a * len(xs))] + shift, "x_max": xs[int(b * len(xs))] + shift}
            )
        for zoom in zooms:
            for buckets in (1, 7, 300, 2000):
                got = await envelopes(runs, [run_id], [key], axis=axis, buckets=buckets, **zoom)
                for g in got:
                    # A bucket holding -0.0 and 0.0 may give either as its min or max (they
                    # are equal): compare those as numbers, everything else bit for bit.
                    g.min[:] = [v + 0.0 for v in g.min]
                    g.max[:] = [v + 0.0 for v in g.max]
                seen.append([g.SerializeToString(deterministic=True) for g in got])
                STATS["generated inputs tried"] += 1
    return seen


async def test_a_series_reads_the_same_before_and_after_compaction(
    database_url: str, plain_runs
) -> None:  # type: ignore[no-untyped-def]
    run = await new_run(plain_runs, start_time=T0 - 777)
    rid = run.info.run_id
    points = _special(20_000, 7)
    await log(plain_runs, rid, "loss", points, chunk=3001)
    # A short series stays rows.
    await log(plain_runs, rid, "short", [(i, T0 + i, i / 3) for i in range(1500)])
    before = await _view(plain_runs, rid, "loss", run.info.start_time)
    before_short = await stored(plain_runs, rid, "short")
    assert (await _compacted(database_url, [rid]))[f"{rid}/loss"][1] == 0

    await _compact(database_url, [rid])

    count, compacted, rows = (await _compacted(database_url, [rid]))[f"{rid}/loss"]
    assert compacted >= count - 2 * BLOCK and compacted % BLOCK == 0 and rows >= BLOCK
    assert (await _compacted(database_url, [rid]))[f"{rid}/short"] == (1500, 0, 1500)
    after = await _view(plain_runs, rid, "loss", run.info.start_time)
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        assert b == a, f"view {i} changed by compaction"
    assert await stored(plain_runs, rid, "short") == before_short


async def test_duplicates_of_compacted_points_are_skipped_and_late_points_land_in_order(
    database_url: str, plain_runs
) -> None:  # type: ignore[no-untyped-def]
    run = await new_run(plain_runs, start_time=T0)
    rid = run.info.run_id
    points = [(i, T0 + 10 * i, math.sin(i / 100)) for i in range(8000)]
    points[100] = (100, T0 + 1000, nan_with(42))
    points[200] = (200, T0 + 2000, -0.0)
    await log(plain_runs, rid, "m", points)
    await _compact(database_url, [rid])
    assert (await _compacted(database_url, [rid]))[f"{rid}/m"][1] >= 6 * BLOCK

    def metric(step: int, ts: int, value: float) -> metric_pb2.Metric:
        return metric_pb2.Metric(key="m", step=step, timestamp=ts, value=value)

    # Exact duplicates of compacted points, as PostgreSQL's key compares them: any NaN
    # repeats a NaN, 0.0 repeats -0.0.
    dupes = [
        metric(*points[5]),
        metric(100, T0 + 1000, nan_with(7)),
        metric(200, T0 + 2000, 0.0),
        metric(*points[4000]),
    ]
    await plain_runs.LogBatch(rpb.LogBatchRequest(run_id=rid, metrics=dupes))
    for m in dupes[:2]:
        await plain_runs.LogMetric(
            rpb.LogMetricRequest(
                run_id=rid, key="m", value=m.value, timestamp=m.timestamp, step=m.step
            )
        )
    assert bits(await stored(plain_runs, rid, "m")) == bits(points)
    # Late points inside the compacted range: new timestamps or values at old steps.
    late = [(5, T0 + 51, 1.5), (100, T0 + 1000, 2.5), (3000, T0 + 1, -math.inf)]
    await plain_runs.LogBatch(rpb.LogBatchRequest(run_id=rid, metrics=[metric(*p) for p in late]))
    want = sorted(points + late, key=lambda p: (p[0], p[1], math.isnan(p[2]), p[2]))
    assert bits(await stored(plain_runs, rid, "m")) == bits(want)
    assert bits(await _paged(plain_runs, rid, "m", 333)) == bits(want)
    got = (await plain_runs.GetRun(rpb.GetRunRequest(run_id=rid))).run.data.metric_summaries
    assert [s.count for s in got] == [len(want)]


async def test_reads_during_compaction_return_every_point_exactly_once(
    database_url: str, plain_runs
) -> None:  # type: ignore[no-untyped-def]
    series = []
    for k in range(6):
        run = await new_run(plain_runs, start_time=T0)
        points = adversarial(15_000, 100 + k)
        random.Random(k).shuffle(points)
        await log(plain_runs, run.info.run_id, "m", points, chunk=2500)
        series.append((run.info.run_id, bits(await stored(plain_runs, run.info.run_id, "m"))))
    run_ids = [rid for rid, _ in series]
    reads = 0
    overlapped = 0
    done = asyncio.Event()

    async def reader(i: int) -> None:
        nonlocal reads, overlapped
        rid, want = series[i % len(series)]
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            before = sum(c for _, c, _ in (await _compacted(database_url, [rid])).values())
            got = (
                await _paged(plain_runs, rid, "m", 1100)
                if i % 2
                else await stored(plain_runs, rid, "m")
            )
            after = sum(c for _, c, _ in (await _compacted(database_url, [rid])).values())
            assert bits(got) == want, f"a read of {rid} during compaction differs"
            reads += 1
            overlapped += before != after

    readers = [asyncio.create_task(reader(i)) for i in range(4)]
    try:
        await asyncio.sleep(0.2)
        await _compact(database_url, run_ids)
    finally:
        done.set()
        await asyncio.gather(*readers)
    assert reads >= 4
    assert overlapped >= 1, "no read overlapped a compaction"
    for rid, want in series:
        assert bits(await stored(plain_runs, rid, "m")) == want


async def test_log_batch_with_tags_names_its_series_for_compaction(database_url: str) -> None:
    """A LogBatch with tags writes in its own transaction, not through the writers: its
    series are named to compaction too, and compacted without waiting for a sweep."""
    running = await app.start(server_config(compaction=True), database_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            runs = run_service_pb2_grpc.RunServiceStub(ch)
            rid = (await new_run(runs, start_time=T0)).info.run_id
            # 999 points and a tag a call: the batch limit is 1,000 items.
            points = [(i, T0 + i, i / 7) for i in range(6 * 999)]
            for k in range(0, len(points), 999):
                await runs.LogBatch(
                    rpb.LogBatchRequest(
                        run_id=rid,
                        metrics=[
                            metric_pb2.Metric(key="m", step=s, timestamp=t, value=v)
                            for s, t, v in points[k : k + 999]
                        ],
                        tags=[run_pb2.RunTag(key="batch", value=str(k))],
                    )
                )
            deadline = time.monotonic() + 30
            while (await _compacted(database_url, [rid]))[f"{rid}/m"][1] == 0:
                assert time.monotonic() < deadline, "the series was never compacted"
                await asyncio.sleep(0.05)
            assert bits(await stored(runs, rid, "m")) == bits(points)
    finally:
        await running.stop(1.0)
