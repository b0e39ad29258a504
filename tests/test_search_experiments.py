"""SearchRuns over several experiments, as searches that scale with what matches run it
(migration 0013): each experiment's params, tags and metrics are found apart from the
others', and a search ordered by a metric's latest value reads the runs with a number
first, experiment by experiment in value order, then those with NaN or no value. Checked
against an order computed here, page by page, through a real channel to a real
PostgreSQL."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import pytest_asyncio

from conftest import server_config
from helpers import new_experiment, new_run, unique
from trackd.server import app
from trackd.v1 import metric_pb2, run_pb2
from trackd.v1 import run_service_pb2 as rpb

T0 = 1_700_000_000_000
# Values with ties (0.5 three times), both infinities, NaN, and -0.0 beside 0.0.
VALUES = [0.5, 0.5, 0.5, -1.0, 2.0, math.inf, -math.inf, math.nan, 0.0, -0.0, 0.25, 7.0]


@dataclass(frozen=True)
class R:
    """A run of the data: its experiment index, start (seconds after T0), latest `m` (None:
    no `m` at all), `p` and `t`."""

    run_id: str
    experiment: int
    start: int
    m: float | None
    p: str
    t: str


@pytest_asyncio.fixture(
    scope="module", loop_scope="module", params=[0, 10_000], ids=["walk", "one-query"]
)
async def server(database_url: str, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """trackd with searches ordered by a metric walking its index whatever the number of
    runs (0), and with the default, under which these small experiments are searched by one
    query: both must give the same pages."""
    running = await app.start(server_config(search_walk_min_runs=request.param), database_url)
    yield running
    await running.stop(1.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def data(experiments, runs) -> tuple[list[str], list[R]]:  # type: ignore[no-untyped-def]
    """Three experiments of 14 runs each, plus one experiment whose runs all match `p = 'a'`
    and have the largest `m`, which searches of the three must never see."""
    rng = random.Random(15)
    eids = [await new_experiment(experiments, unique("scoped")) for _ in range(4)]
    out: list[R] = []
    for e, eid in enumerate(eids):
        for i in range(14):
            # Starts repeat (ties on start_time, decided by run_id).
            start = rng.randrange(6)
            m = 1e9 if e == 3 else rng.choice([*VALUES, None])
            p = "a" if e == 3 else rng.choice("ab")
            t = rng.choice("xy")
            run = await new_run(runs, eid, run_name=f"r{e}-{i}", start_time=T0 + start * 1000)
            metrics = [metric_pb2.Metric(key="other", value=1.0, timestamp=T0, step=0)]
            if m is not None:
                # An earlier point, so that the latest one is what counts.
                metrics.append(metric_pb2.Metric(key="m", value=3.0, timestamp=T0, step=0))
                metrics.append(metric_pb2.Metric(key="m", value=m, timestamp=T0, step=1))
            await runs.LogBatch(
                rpb.LogBatchRequest(
                    run_id=run.info.run_id,
                    metrics=metrics,
                    params=[run_pb2.Param(key="p", value=p)],
                    tags=[run_pb2.RunTag(key="t", value=t)],
                )
            )
            out.append(R(run.info.run_id, e, start, m, p, t))
    return eids, out


def expected(rows: list[R], descending: bool) -> list[str]:
    """trackd's order by `metrics.m`: numbers in the direction asked, then NaN, then runs
    without `m`; ties by start_time DESC, then run_id."""

    def key(r: R) -> tuple[int, float, int, str]:
        if r.m is None:
            group, value = 2, 0.0
        elif math.isnan(r.m):
            group, value = 1, 0.0
        else:
            group, value = 0, -r.m if descending else r.m
        # -0.0 and 0.0 are equal numbers: they tie, as in PostgreSQL.
        return (group, value + 0.0, -r.start, r.run_id)

    return [r.run_id for r in sorted(rows, key=key)]


async def search_all(  # type: ignore[no-untyped-def]
    runs, eids: list[str], filter_: str, order: str, size: int
) -> list[str]:
    got: list[str] = []
    token = ""
    for _ in range(200):
        resp = await runs.SearchRuns(
            rpb.SearchRunsRequest(
                experiment_ids=eids,
                filter=filter_,
                order_by=[order],
                max_results=size,
                page_token=token,
            )
        )
        got += [r.info.run_id for r in resp.runs]
        token = resp.next_page_token
        if not token:
            return got
        assert len(resp.runs) == size
    raise AssertionError("never reached the last page")


@pytest.mark.parametrize("descending", [True, False])
@pytest.mark.parametrize("size", [1, 3, 7, 1000])
@pytest.mark.parametrize(
    ("filter_", "keep"),
    [
        ("", lambda r: True),
        ("params.p = 'a'", lambda r: r.p == "a"),
        ("params.p = 'a' AND tags.t = 'x'", lambda r: r.p == "a" and r.t == "x"),
        ("metrics.m < 1", lambda r: r.m is not None and r.m < 1),
        (
            "metrics.m != 0.5 OR tags.t = 'y'",
            lambda r: (r.m is not None and r.m != 0.5) or r.t == "y",
        ),
    ],
)
async def test_order_by_metric_over_experiments_pages_in_full_order(
    runs, data, filter_: str, keep, size: int, descending: bool
) -> None:  # type: ignore[no-untyped-def]
    eids, rows = data
    mine = [r for r in rows if r.experiment < 3 and keep(r)]
    order = "metrics.m DESC" if descending else "metrics.m ASC"
    got = await search_all(runs, eids[:3], filter_, order, size)
    assert got == expected(mine, descending)


async def test_search_of_one_experiment_sees_only_its_runs(runs, data) -> None:  # type: ignore[no-untyped-def]
    """Every run of the fourth experiment matches and has the largest `m`: a search of the
    others never returns one of them, whatever the filter finds first."""
    eids, rows = data
    for e in range(3):
        for filter_ in ("params.p = 'a'", "tags.t = 'x'", "metrics.m > 0", ""):
            got = await search_all(runs, [eids[e]], filter_, "metrics.m DESC", 2)
            theirs = {r.run_id for r in rows if r.experiment == e}
            assert set(got) <= theirs


async def test_order_by_metric_of_unknown_experiments_is_empty(runs, data) -> None:  # type: ignore[no-untyped-def]
    got = await search_all(runs, ["987654321"], "", "metrics.m DESC", 5)
    assert got == []


async def test_params_tags_and_metrics_of_a_new_run_are_searchable_at_once(
    experiments, runs
) -> None:  # type: ignore[no-untyped-def]
    """The writers of params, tags and series (LogParam, SetTag, LogMetric, LogBatch and
    the run's creation tags) put them where a search of the run's experiment finds them."""
    eid = await new_experiment(experiments, unique("writers"))
    run = await new_run(runs, eid, tags=[run_pb2.RunTag(key="born", value="yes")])
    rid = run.info.run_id
    await runs.LogParam(rpb.LogParamRequest(run_id=rid, key="lr", value="0.1"))
    await runs.SetTag(rpb.SetTagRequest(run_id=rid, key="team", value="vision"))
    await runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="loss", value=0.25, timestamp=T0))
    for filter_ in (
        "tags.born = 'yes'",
        "params.lr = '0.1'",
        "tags.team = 'vision'",
        "metrics.loss < 0.5",
    ):
        resp = await runs.SearchRuns(
            rpb.SearchRunsRequest(experiment_ids=[eid], filter=filter_, order_by=["metrics.loss"])
        )
        assert [r.info.run_id for r in resp.runs] == [rid], filter_
