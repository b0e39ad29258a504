"""Migration 0013 (params, tags and metric series carry their run's experiment) over data
stored before it, seen through the public API.

A fresh database is brought to 0011 exactly as migrate() left it and filled with plain SQL
the way that schema stored runs (params, typed or not, tags, metric series with their
summaries and points, a series created without points), in three experiments whose runs
share keys and values; then trackd starts on it, migrates to the latest, and SearchRuns
must find in each experiment exactly its runs, by param, tag and metric and ordered by a
metric, and what is logged after the migration is found the same way."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
import pytest_asyncio

from old_db import old_database, run_service
from trackd.server.store import migrate
from trackd.v1 import run_pb2, run_service_pb2_grpc
from trackd.v1 import run_service_pb2 as rpb

# The last migration this data's schema had: 0011 (0012 and 0013 come after it).
OLD_VERSION = 11
START = 1_700_000_000_000
FINISHED = 3


@dataclass(frozen=True)
class OldRun:
    run_id: str
    experiment: str
    lr: str  # untyped param "lr"
    depth: int  # INT param "depth" (type 2, with its number)
    team: str  # tag "team"
    loss: float | None  # latest "loss"; None: a series without points


@dataclass
class Old:
    url: str
    experiments: dict[str, int]
    runs: list[OldRun]


async def _fill(conn: asyncpg.Connection) -> tuple[dict[str, int], list[OldRun]]:
    exps: dict[str, int] = {}
    for name in ("a", "b", "c"):
        exps[name] = await conn.fetchval(
            "INSERT INTO experiments (name, artifact_location, creation_time, last_update_time)"
            " VALUES ($1, '', $2, $2) RETURNING experiment_id",
            f"old-{name}",
            START,
        )
    out: list[OldRun] = []
    n = 0
    for name, eid in exps.items():
        for i in range(6):
            n += 1
            rid = uuid.uuid4()
            pk = await conn.fetchval(
                "INSERT INTO runs (run_id, experiment_id, run_name, user_id, status,"
                " start_time, end_time, artifact_uri)"
                " VALUES ($1, $2, $3, 'old', $4, $5, $5, '') RETURNING run_pk",
                rid,
                eid,
                f"{name}{i}",
                FINISHED,
                START + n * 1000,
            )
            run = OldRun(
                rid.hex,
                name,
                lr=str(i % 2),
                depth=i % 3,
                team="vision" if i < 3 else "nlp",
                loss=None if i == 5 else (math.nan if i == 4 else i / 10 + (n % 7) / 100),
            )
            await conn.execute(
                "INSERT INTO params (run_pk, key, value) VALUES ($1, 'lr', $2)", pk, run.lr
            )
            await conn.execute(
                "INSERT INTO params (run_pk, key, value, type, number)"
                " VALUES ($1, 'depth', $2, 2, $3)",
                pk,
                str(run.depth),
                run.depth,
            )
            await conn.execute(
                "INSERT INTO run_tags (run_pk, key, value) VALUES ($1, 'team', $2)",
                pk,
                run.team,
            )
            if run.loss is None:
                # Created, never given a point: not a metric of the run.
                await conn.execute(
                    "INSERT INTO metric_series (run_pk, key) VALUES ($1, 'loss')", pk
                )
            else:
                sid = await conn.fetchval(
                    "INSERT INTO metric_series (run_pk, key, count, nan_count, min_value,"
                    " max_value, finite_mean, first_step, last_step, latest_step, latest_ts,"
                    " latest_value)"
                    " VALUES ($1, 'loss', 1, $3, $4, $4, $5, 0, 0, 0, $6, $2)"
                    " RETURNING series_id",
                    pk,
                    run.loss,
                    1 if math.isnan(run.loss) else 0,
                    None if math.isnan(run.loss) else run.loss,
                    0.0 if math.isnan(run.loss) else run.loss,
                    START,
                )
                await conn.execute(
                    "INSERT INTO metric_points (series_id, step, ts, value) VALUES ($1, 0, $2, $3)",
                    sid,
                    START,
                    run.loss,
                )
            out.append(run)
    return exps, out


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def old(pg_url: str) -> AsyncIterator[Old]:
    """A fresh database at migration 0011 holding data stored before 0013; dropped
    afterwards."""
    async with old_database(pg_url, OLD_VERSION) as (url, conn):
        async with conn.transaction():
            exps, runs = await _fill(conn)
        yield Old(url, exps, runs)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runs(old: Old) -> AsyncIterator[run_service_pb2_grpc.RunServiceStub]:
    """RunService of a trackd started on the old database (which it migrates)."""
    async with run_service(old.url) as stub:
        yield stub


async def _search(
    runs: run_service_pb2_grpc.RunServiceStub,
    eids: list[int],
    filter_: str,
    order: str = "",
) -> list[str]:
    resp = await runs.SearchRuns(
        rpb.SearchRunsRequest(
            experiment_ids=[str(e) for e in eids],
            filter=filter_,
            order_by=[order] if order else [],
        )
    )
    assert resp.next_page_token == ""
    return [r.info.run_id for r in resp.runs]


async def test_migration_records_every_version(old: Old, runs: object) -> None:
    conn = await asyncpg.connect(old.url)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [(r["version"], r["name"]) for r in rows] == [(v, n) for v, n, _ in migrate.available()]
    assert 13 in [r["version"] for r in rows]


FILTERS = [
    ("params.lr = '1'", lambda r: r.lr == "1"),
    ("params.depth >= 1", lambda r: r.depth >= 1),
    ("tags.team = 'vision'", lambda r: r.team == "vision"),
    ("tags.team LIKE 'n%'", lambda r: r.team == "nlp"),
    ("metrics.loss < 0.25", lambda r: r.loss is not None and r.loss < 0.25),
    ("metrics.loss IS NULL", lambda r: r.loss is None),
    (
        "params.lr = '0' AND metrics.loss >= 0",
        lambda r: r.lr == "0" and r.loss is not None and r.loss >= 0,
    ),
]


@pytest.mark.parametrize(("filter_", "keep"), FILTERS)
async def test_old_runs_are_found_in_their_experiments_only(
    old: Old, runs: run_service_pb2_grpc.RunServiceStub, filter_: str, keep: object
) -> None:
    for scope in (["a"], ["b", "c"], ["a", "b", "c"]):
        eids = [old.experiments[s] for s in scope]
        want = {r.run_id for r in old.runs if r.experiment in scope and keep(r)}  # type: ignore[operator]
        assert set(await _search(runs, eids, filter_)) == want, (filter_, scope)


@pytest.mark.parametrize("descending", [True, False])
async def test_old_runs_order_by_their_latest_metric(
    old: Old, runs: run_service_pb2_grpc.RunServiceStub, descending: bool
) -> None:
    """Numbers in order, then NaN, then the run whose series has no point; ties by
    start_time DESC (each run here starts at its own time)."""
    scope = ["a", "c"]
    mine = [r for r in old.runs if r.experiment in scope]

    def key(r: OldRun) -> tuple[int, float]:
        if r.loss is None:
            return (2, 0.0)
        if math.isnan(r.loss):
            return (1, 0.0)
        return (0, -r.loss if descending else r.loss)

    # Stable sort over runs in start order, newest first, so ties keep start_time DESC.
    want = [r.run_id for r in sorted(reversed(mine), key=key)]
    eids = [old.experiments[s] for s in scope]
    order = "metrics.loss DESC" if descending else "metrics.loss ASC"
    assert await _search(runs, eids, "", order) == want


async def test_logging_to_an_old_run_after_the_migration_is_searchable(
    old: Old, runs: run_service_pb2_grpc.RunServiceStub
) -> None:
    run = next(r for r in old.runs if r.experiment == "b")
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=run.run_id,
            params=[run_pb2.Param(key="fresh", value="yes")],
            tags=[run_pb2.RunTag(key="team", value="audio")],
        )
    )
    await runs.LogMetric(
        rpb.LogMetricRequest(run_id=run.run_id, key="acc", value=0.9, timestamp=START)
    )
    b = [old.experiments["b"]]
    for filter_ in ("params.fresh = 'yes'", "tags.team = 'audio'", "metrics.acc > 0.5"):
        assert await _search(runs, b, filter_) == [run.run_id], filter_
        assert await _search(runs, [old.experiments["a"]], filter_) == [], filter_
