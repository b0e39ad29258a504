"""trackd through pgbouncer in transaction pooling mode (--database-pooler transaction): a
server whose pool (8 connections) shares 2 server connections of a pgbouncer of its own,
with concurrent writes, searches and a watch; every point stored exactly once and
delivered to the watch, migrations and LISTEN on the direct URL. Runs whenever a pgbouncer
binary exists (tests/pgbouncer.py), whatever TRACKD_TEST_PGBOUNCER says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import grpc
import pytest
import pytest_asyncio

import pgbouncer
from conftest import server_config
from helpers import new_experiment, new_run, stored_points
from test_watch import synced, watching
from trackd.server import app
from trackd.server.config import Config, parse
from trackd.server.startup import StartupError
from trackd.v1 import (
    experiment_service_pb2_grpc,
    metric_pb2,
    run_pb2,
    run_service_pb2_grpc,
)
from trackd.v1 import run_service_pb2 as rpb

pytestmark = pytest.mark.skipif(
    pgbouncer.binary() is None, reason="no pgbouncer binary (install pgbouncer to run these)"
)

# Server connections pgbouncer opens to the database: fewer than the server's pool.
SERVER_CONNECTIONS = 2
WRITERS = 6
BATCHES = 15
POINTS = 40


@pytest.fixture(scope="module")
def bouncer(pg_url: str) -> Iterator[pgbouncer.Bouncer]:
    with pgbouncer.running(pg_url, pool_size=SERVER_CONNECTIONS) as b:
        yield b


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pooled(database_url: str, bouncer: pgbouncer.Bouncer) -> AsyncIterator[app.Running]:
    config = server_config(
        pool_min_size=8,
        pool_max_size=8,
        database_pooler="transaction",
        direct_database_url=database_url,
    )
    running = await app.start(config, bouncer.url(database_url))
    yield running
    await running.stop(1.0)


async def _backends(database_url: str) -> list[str]:
    """application_name of every other session on the test database."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return [r["application_name"] for r in rows]


async def test_concurrent_writes_searches_and_a_watch_through_transaction_pooling(
    pooled: app.Running, database_url: str
) -> None:
    assert pooled.db.pooled
    async with grpc.aio.insecure_channel(f"127.0.0.1:{pooled.port}") as channel:
        experiments = experiment_service_pb2_grpc.ExperimentServiceStub(channel)
        runs = run_service_pb2_grpc.RunServiceStub(channel)
        exp = await new_experiment(experiments)
        run_ids = [(await new_run(runs, exp)).info.run_id for _ in range(3)]

        async def write(w: int) -> None:
            run = run_ids[w % len(run_ids)]
            for b in range(BATCHES):
                base = (w // len(run_ids)) * BATCHES * POINTS + b * POINTS
                await runs.LogBatch(
                    rpb.LogBatchRequest(
                        run_id=run,
                        metrics=[
                            metric_pb2.Metric(
                                key=f"m{w % 2}", value=float(s), step=s, timestamp=1000 + s
                            )
                            for s in range(base, base + POINTS)
                        ],
                        params=[run_pb2.Param(key=f"p{w}-{b}", value=str(b))] if b % 5 else [],
                    )
                )

        async def search() -> int:
            found = 0
            for _ in range(BATCHES):
                resp = await runs.SearchRuns(
                    rpb.SearchRunsRequest(
                        experiment_ids=[exp], filter="metrics.m0 >= 0", max_results=10
                    )
                )
                found = len(resp.runs)
            return found

        async with watching(runs, experiment_id=exp) as watch:
            await synced(watch, runs, run_ids[0])  # its start position is set
            results = await asyncio.gather(
                *(write(w) for w in range(WRITERS)), *(search() for _ in range(3))
            )
            assert all(n <= len(run_ids) for n in results[WRITERS:])

            expected: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
            for w in range(WRITERS):
                run = run_ids[w % len(run_ids)]
                for b in range(BATCHES):
                    base = (w // len(run_ids)) * BATCHES * POINTS + b * POINTS
                    expected.setdefault((run, f"m{w % 2}"), []).extend(
                        (s, 1000 + s, float(s)) for s in range(base, base + POINTS)
                    )
            total = sum(len(v) for v in expected.values())

            seen = await watch.until(
                lambda s: sum(len(v) for v in s.points.values()) >= total, seconds=60
            )
            got = {k: sorted(v) for k, v in seen.points.items() if k[1] != "sync"}
            assert got == {k: sorted(v) for k, v in expected.items()}

        stored = await stored_points(database_url, run_ids)
        # Exactly once: no point lost, none stored twice.
        assert {k: sorted(v) for k, v in stored.items() if k[1] != "sync"} == {
            k: sorted(v) for k, v in expected.items()
        }

    # The server's 8 pooled connections shared pgbouncer's 2 server connections; the watch
    # listener has a session of its own.
    assert pooled.db.pool.get_size() == 8
    names = await _backends(database_url)
    assert names.count("trackd-watch") == 1, names
    assert len([n for n in names if n != "trackd-watch"]) <= SERVER_CONNECTIONS, names
    # Migrations ran over the direct URL: their lock is not left behind on a shared session.
    conn = await asyncpg.connect(database_url)
    try:
        held = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    finally:
        await conn.close()
    assert held == 0


async def test_a_second_server_migrates_through_the_direct_url(
    database_url: str, bouncer: pgbouncer.Bouncer
) -> None:
    """Starting against an up-to-date database applies nothing and takes the migration
    lock on the direct URL (a session-level advisory lock through pgbouncer would stay on
    a server connection that other clients then share)."""
    config = server_config(database_pooler="transaction", direct_database_url=database_url)
    running = await app.start(config, bouncer.url(database_url))
    try:
        assert running.watches is not None and running.watches.url == database_url
    finally:
        await running.stop(1.0)


def test_a_pooler_needs_the_direct_url() -> None:
    with pytest.raises(StartupError, match="--direct-database-url"):
        parse(["--database-url", "postgresql://h:6432/db", "--database-pooler", "transaction"])
    with pytest.raises(StartupError, match="--database-pooler"):
        parse(["--database-url", "postgresql://h/db", "--database-pooler", "session"])
    with pytest.raises(StartupError, match="--database-url"):
        parse(["--database-pooler", "transaction", "--direct-database-url", "postgresql://h/d"])
    cfg = parse(
        [
            "--database-url",
            "postgresql://h:6432/db",
            "--database-pooler",
            "transaction",
            "--direct-database-url",
            "postgresql://h:5432/db",
        ]
    )
    assert cfg.database_pooler == "transaction"
    assert Config().database_pooler == "off" and Config().direct_database_url == ""


def test_the_suites_servers_go_through_pgbouncer_when_asked(server: app.Running) -> None:
    """With TRACKD_TEST_PGBOUNCER=1, conftest's servers reach PostgreSQL through pgbouncer
    (the whole suite is then one more CI target); without it, directly."""
    assert server.db.pooled == pgbouncer.wanted()
