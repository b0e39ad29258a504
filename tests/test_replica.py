"""Read replicas with read-your-writes, on a real primary and a pg_basebackup streaming
replica made by the test: a client's reads always see its writes, lag-tolerant reads go to
the replica once it has replayed the caller's writes, and a stopped replica passes its reads
to the primary."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import pytest_asyncio

from conftest import server_config, with_database
from pgcluster import Cluster, Server, available, wait_caught_up
from trackd.client import AsyncClient, RunStatus
from trackd.client.routing import channel_target
from trackd.server import app
from trackd.server.store import pool
from trackd.server.store.pool import format_lsn, parse_lsn

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

ITERATIONS = 120


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster.create()
    try:
        c.add_replica()
        yield c
    finally:
        c.destroy()


@pytest.fixture(scope="module")
def replica(cluster: Cluster) -> Server:
    return cluster.replicas[0]


@pytest_asyncio.fixture(scope="module")
async def urls(cluster: Cluster, replica: Server) -> tuple[str, str]:
    admin = await asyncpg.connect(cluster.primary.url)
    try:
        await admin.execute("CREATE DATABASE trackd")
    finally:
        await admin.close()
    primary_url = with_database(cluster.primary.url, "trackd")
    replica_url = with_database(replica.url, "trackd")
    await wait_caught_up(cluster.primary.url, replica.url)
    return primary_url, replica_url


@pytest_asyncio.fixture(scope="module")
async def running(urls: tuple[str, str]) -> AsyncIterator[app.Running]:
    primary_url, replica_url = urls
    r = await app.start(server_config(read_database_url=replica_url), primary_url)
    yield r
    await r.stop(1.0)


def _replica(r: app.Running) -> pool.Replica:
    assert r.db.replica is not None
    return r.db.replica


def test_lsn_text_round_trips() -> None:
    for text in ("0/0", "0/16B3748", "1A/FF000028"):
        assert format_lsn(parse_lsn(text)) == text
    assert parse_lsn("1/0") > parse_lsn("0/FFFFFFFF")
    with pytest.raises(ValueError):
        parse_lsn("16B3748")


def test_a_list_of_addresses_is_an_address_list_target() -> None:
    assert channel_target("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target("localhost:5") in ("ipv4:127.0.0.1:5", "localhost:5")
    assert channel_target("127.0.0.1:1") == "127.0.0.1:1"
    assert channel_target("dns:///trackd:50051") == "dns:///trackd:50051"


async def test_reads_always_see_the_callers_writes(running: app.Running) -> None:
    replica = _replica(running)
    before = (replica.reads, replica.fallbacks)
    async with AsyncClient(f"127.0.0.1:{running.port}") as client:
        eid = await client.create_experiment("ryw")
        assert client.lsn.lsn > 0, "a write answers its LSN"
        seen = client.lsn.lsn
        for i in range(ITERATIONS):
            run = await client.create_run(eid, run_name=f"r{i}")
            rid = run.info.run_id
            await client.log_batch(rid, metrics=[("loss", float(i), s) for s in range(3)])
            await client.set_terminated(rid)
            found = await client.search_runs(eid, max_results=1000)
            assert len(found) == i + 1, f"iteration {i}: the search missed the new run"
            assert found[0].info.status == RunStatus.FINISHED
            history = await client.get_metric_history(rid, "loss")
            assert [m.step for m in history] == [0, 1, 2], f"iteration {i}"
            assert client.lsn.lsn >= seen, "the client's LSN went back"
            seen = client.lsn.lsn
            if i % 10 == 0:
                # Let the replica catch up now and then, so that reads also go there.
                await asyncio.sleep(0.05)
    served = replica.reads - before[0], replica.fallbacks - before[1]
    assert sum(served) >= 2 * ITERATIONS
    assert served[0] > 0, f"no read went to the replica: {served}"


async def test_caught_up_reads_go_to_the_replica(
    running: app.Running, urls: tuple[str, str]
) -> None:
    primary_url, replica_url = urls
    replica = _replica(running)
    async with AsyncClient(f"127.0.0.1:{running.port}") as client:
        eid = await client.create_experiment("caught-up")
        rid = (await client.create_run(eid)).info.run_id
        await client.set_terminated(rid)
        await wait_caught_up(primary_url, replica_url)
        await asyncio.sleep(2 * pool.REPLAY_LSN_TTL)
        before = (replica.reads, replica.fallbacks)
        for _ in range(20):
            assert len(await client.search_runs(eid)) == 1
        assert (replica.reads - before[0], replica.fallbacks - before[1]) == (20, 0)
    # The replica's own view: trackd's connections are there.
    conn = await asyncpg.connect(replica_url)
    try:
        n = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'trackd'"
        )
    finally:
        await conn.close()
    assert n >= 1


async def test_a_running_runs_history_is_read_from_the_primary(
    running: app.Running, urls: tuple[str, str]
) -> None:
    primary_url, replica_url = urls
    replica = _replica(running)
    async with AsyncClient(f"127.0.0.1:{running.port}") as client:
        rid = (await client.create_run("0")).info.run_id
        await client.log_batch(rid, metrics=[("loss", 1.0, 0)])
        await wait_caught_up(primary_url, replica_url)
        await asyncio.sleep(2 * pool.REPLAY_LSN_TTL)
        fallbacks = replica.fallbacks
        assert len(await client.get_metric_history(rid, "loss")) == 1
        assert replica.fallbacks == fallbacks + 1


async def test_a_stopped_replica_passes_reads_to_the_primary(
    running: app.Running, replica: Server, urls: tuple[str, str]
) -> None:
    """Decision (README, "Read replicas"): reads fall back to the primary, never fail
    because of the replica; the replica is tried again REPLICA_RETRY_AFTER seconds later."""
    primary_url, replica_url = urls
    rep = _replica(running)
    async with AsyncClient(f"127.0.0.1:{running.port}") as client:
        eid = await client.create_experiment("replica-down")
        replica.stop()
        try:
            fallbacks = rep.fallbacks
            for i in range(20):
                rid = (await client.create_run(eid)).info.run_id
                await client.set_terminated(rid)
                assert len(await client.search_runs(eid)) == i + 1
            assert rep.fallbacks - fallbacks == 20, (rep.reads, rep.fallbacks, fallbacks)
        finally:
            replica.start()
        await wait_caught_up(primary_url, replica_url)
        deadline = time.monotonic() + 10
        reads = rep.reads
        while rep.reads == reads:
            assert time.monotonic() < deadline, "reads did not return to the replica"
            assert len(await client.search_runs(eid)) == 20
            await asyncio.sleep(0.1)


async def test_without_a_replica_nothing_changes(urls: tuple[str, str]) -> None:
    primary_url, _ = urls
    r = await app.start(server_config(), primary_url)
    try:
        assert r.db.replica is None
        async with AsyncClient(f"127.0.0.1:{r.port}") as client:
            eid = await client.create_experiment("no-replica")
            rid = (await client.create_run(eid)).info.run_id
            await client.set_terminated(rid)
            assert len(await client.search_runs(eid)) == 1
            assert client.lsn.lsn == 0, "a server without a replica answers no LSN"
    finally:
        await r.stop(1.0)


async def test_a_dns_target_reaches_the_server(running: app.Running) -> None:
    async with AsyncClient(f"dns:///localhost:{running.port}") as client:
        eid = await client.create_experiment("dns-target")
        assert (await client.get_experiment(eid)).name == "dns-target"


async def test_concurrent_writes_share_wal_position_questions(running: app.Running) -> None:
    before = await running.db.write_lsn()
    lsns = await asyncio.gather(*(running.db.write_lsn() for _ in range(50)))
    assert all(lsn >= before for lsn in lsns)
    assert len(set(lsns)) <= 2, "callers arriving together share one or two questions"


async def test_mlflow_rest_reads_the_primary(urls: tuple[str, str]) -> None:
    """REST clients carry no LSN: their searches read the primary, and see their writes."""
    import aiohttp

    primary_url, replica_url = urls
    r = await app.start(
        server_config(read_database_url=replica_url, http_listen="127.0.0.1:0"), primary_url
    )
    try:
        rep = _replica(r)
        base = f"http://127.0.0.1:{r.http_port}/api/2.0/mlflow"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/experiments/create", json={"name": "rest"}) as resp:
                eid = (await resp.json())["experiment_id"]
            reads = rep.reads
            for i in range(10):
                async with http.post(f"{base}/runs/create", json={"experiment_id": eid}) as resp:
                    assert resp.status == 200
                async with http.post(f"{base}/runs/search", json={"experiment_ids": [eid]}) as resp:
                    assert len((await resp.json())["runs"]) == i + 1
            assert rep.reads == reads
    finally:
        await r.stop(1.0)
