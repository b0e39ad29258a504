"""The metric write path's groups (one statement for a small group, a transaction for the
rest), through the public API: concurrent unary writers keep summaries, tiers and history
exact; duplicates within a call and across calls are kept once; a deleted run in a group
rejects only its own calls; summaries combine across calls at the edges of the double
range; and a database of an earlier release migrates in place and goes on summarising."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from conftest import server_config
from helpers import new_experiment, new_run
from old_db import old_database
from test_metric_history import (
    MAX_DOUBLE,
    Point,
    all_pages,
    assert_summary,
    expected_summary,
    get,
    latest_of,
    order_key,
    same_points,
    summary_of,
)
from trackd.server import app
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import metric_pb2, run_service_pb2_grpc
from trackd.v1 import run_service_pb2 as rpb


async def log_one(runs, run_id: str, key: str, point: Point) -> None:  # type: ignore[no-untyped-def]
    step, ts, value = point
    await runs.LogMetric(
        rpb.LogMetricRequest(run_id=run_id, key=key, value=value, step=step, timestamp=ts)
    )


async def test_concurrent_log_metric_calls_keep_every_summary_exact(runs) -> None:
    rids = [(await new_run(runs)).info.run_id for _ in range(4)]
    rng = random.Random(15)
    calls: list[tuple[str, str, Point]] = []
    for i in range(480):
        r = rng.random()
        value = math.nan if r < 0.03 else math.inf if r < 0.05 else rng.gauss(1e6, 3.0)
        calls.append((rids[i % 4], f"k{i % 3}", (i // 12, 1_000 + i % 5, value)))
    rng.shuffle(calls)
    await asyncio.gather(*(log_one(runs, rid, key, p) for rid, key, p in calls))
    for rid in rids:
        run = await get(runs, rid)
        for key in ("k0", "k1", "k2"):
            points = [p for r, k, p in calls if r == rid and k == key]
            want = expected_summary(points)
            s = summary_of(run, key)
            assert (s.count, s.nan_count, s.min, s.max) == (
                want["count"],
                want["nan_count"],
                want["min"],
                want["max"],
            )
            finite = [v for _, _, v in points if math.isfinite(v)]
            if len(finite) + want["nan_count"] == len(points):  # type: ignore[operator]
                assert_summary(s, want)
            else:  # +Inf among the values: the mean is infinite
                assert s.mean == math.inf and math.isnan(s.stddev)
            (history,) = await all_pages(runs, rid, key, 0)
            assert same_points(history, sorted(points, key=order_key))
            assert same_points([latest_of(run, key)], [want["latest"]])  # type: ignore[list-item]


async def test_duplicates_within_a_call_and_across_calls_are_kept_once(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    first = [(0, 1, 1.0), (0, 1, 1.0), (1, 1, 2.0), (2, 1, math.nan), (2, 1, math.nan)]
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid,
            metrics=[metric_pb2.Metric(key="d", step=s, timestamp=t, value=v) for s, t, v in first],
        )
    )
    # Concurrent unary calls, some repeating stored points, some repeating each other.
    again = [(1, 1, 2.0), (0, 1, 1.0), (3, 1, 4.0), (3, 1, 4.0), (2, 1, math.nan), (4, 1, 8.0)]
    await asyncio.gather(*(log_one(runs, rid, "d", p) for p in again * 3))
    distinct = [(0, 1, 1.0), (1, 1, 2.0), (2, 1, math.nan), (3, 1, 4.0), (4, 1, 8.0)]
    run = await get(runs, rid)
    assert_summary(summary_of(run, "d"), expected_summary(distinct))
    (history,) = await all_pages(runs, rid, "d", 0)
    assert same_points(history, distinct)


async def test_a_deleted_run_rejects_only_its_own_calls(runs, experiments) -> None:
    eid = await new_experiment(experiments)
    alive = (await new_run(runs, eid)).info.run_id
    gone = (await new_run(runs, eid)).info.run_id
    await log_one(runs, gone, "k", (0, 1, 5.0))
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=gone))
    results = await asyncio.gather(
        *(log_one(runs, alive if i % 2 else gone, "k", (i, 1, float(i))) for i in range(1, 41)),
        return_exceptions=True,
    )
    for i, r in enumerate(results, 1):
        if i % 2:
            assert r is None, r
        else:
            assert isinstance(r, grpc.aio.AioRpcError), r
            assert r.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert_summary(
        summary_of(await get(runs, alive), "k"),
        expected_summary([(i, 1, float(i)) for i in range(1, 41, 2)]),
    )
    await runs.RestoreRun(rpb.RestoreRunRequest(run_id=gone))
    (history,) = await all_pages(runs, gone, "k", 0)
    assert history == [(0, 1, 5.0)]
    assert summary_of(await get(runs, gone), "k").count == 1


@pytest.mark.parametrize(
    ("values", "mean", "stddev"),
    [
        ([MAX_DOUBLE, MAX_DOUBLE], MAX_DOUBLE, 0.0),
        ([1e308, -1e308, 1e308], 1e308 / 3, math.inf),
        ([5e-324, 5e-324, 1e-323], 5e-324, 0.0),
        ([1e-200, 3e-200], 2e-200, 0.0),
        ([-2.0, math.inf, 4.0], math.inf, math.nan),
    ],
    ids=["max", "overflowing-m2", "subnormal", "underflowing-m2", "inf"],
)
async def test_summaries_combine_across_calls_at_the_edges_of_the_double_range(
    runs, values: list[float], mean: float, stddev: float
) -> None:
    rid = (await new_run(runs)).info.run_id
    for i, v in enumerate(values):
        await log_one(runs, rid, "x", (i, 1, v))
    s = summary_of(await get(runs, rid), "x")
    assert (s.count, s.min, s.max) == (len(values), min(values), max(values))
    assert s.mean == pytest.approx(mean, rel=1e-12, abs=0)
    if math.isnan(stddev):
        assert math.isnan(s.stddev)
    else:
        assert s.stddev == pytest.approx(stddev, rel=1e-9, abs=1e-300)


# -- an earlier release's database -------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def old_url(pg_url: str) -> AsyncIterator[tuple[str, str]]:
    """A database left at migration 11 with one run whose series "m" holds two points and
    their summary, as that release wrote them; (its url, the run id)."""
    rid = uuid.uuid4()
    async with old_database(pg_url, 11) as (url, conn):
        pk = await conn.fetchval(
            "INSERT INTO runs (run_id, experiment_id, run_name, user_id, status, start_time,"
            " artifact_uri) VALUES ($1, 0, 'old', 'old-user', 1, 1, 'file:///tmp/a')"
            " RETURNING run_pk",
            rid,
        )
        sid = await conn.fetchval(
            "INSERT INTO metric_series (run_pk, key, count, min_value, max_value,"
            " finite_mean, finite_m2, first_step, last_step, latest_step, latest_ts,"
            " latest_value) VALUES ($1, 'm', 2, 1, 3, 2, 2, 0, 1, 1, 5, 3)"
            " RETURNING series_id",
            pk,
        )
        await conn.executemany(
            "INSERT INTO metric_points VALUES ($1, $2, 5, $3)", [(sid, 0, 1.0), (sid, 1, 3.0)]
        )
        yield url, rid.hex


async def test_a_database_of_an_earlier_release_migrates_in_place(
    old_url: tuple[str, str],
) -> None:
    url, rid = old_url
    running = await app.start(server_config(), url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            runs = run_service_pb2_grpc.RunServiceStub(ch)
            await log_one(runs, rid, "m", (2, 5, 8.0))
            await log_one(runs, rid, "m", (1, 5, 3.0))  # stored before the migration
            points = [(0, 5, 1.0), (1, 5, 3.0), (2, 5, 8.0)]
            run = await get(runs, rid)
            assert_summary(summary_of(run, "m"), expected_summary(points))
            (history,) = await all_pages(runs, rid, "m", 0)
            assert history == points
    finally:
        await running.stop(1.0)


async def test_log_metric_of_a_deleted_experiment_is_failed_precondition(runs, experiments) -> None:
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    await experiments.DeleteExperiment(epb.DeleteExperimentRequest(experiment_id=eid))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await log_one(runs, rid, "k", (0, 1, 1.0))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await experiments.RestoreExperiment(epb.RestoreExperimentRequest(experiment_id=eid))
    assert not (await get(runs, rid)).data.metric_summaries
