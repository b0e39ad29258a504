"""trackd's deployment topology on real parts, every one started by the test on 127.0.0.1 and
stopped by its pid: a PostgreSQL primary and a pg_basebackup streaming replica, two trackd
servers as separate processes (each reading lag-tolerant queries from the replica), and
four trainers, each a client of both servers streaming points through the run logger and
probing with writes and reads. Meanwhile one trackd is killed with SIGKILL and the primary
is restarted. Afterwards every acknowledged point is stored exactly once, and no trainer
ever read an older state than it had read or written before (its LSN and the run counts it
saw only go up).

When a pgbouncer binary exists (tests/pgbouncer.py), the trackd servers reach the primary
through a pgbouncer in transaction mode (--database-pooler transaction, migrations and
LISTEN on --direct-database-url); without one the topology runs without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "faults"))

from procs import Proc, start, stop

import pgbouncer
from conftest import with_database
from helpers import STATS, stored_points
from pgcluster import Cluster, available, free_port, wait_caught_up
from trackd.client import AsyncClient, TrackdError

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

TRAINERS = 4
POINTS = 4_000
# The whole scenario's bound, in seconds.
BOUND = 150


@dataclass
class Trainer:
    """One trainer's client, run, and what it has seen."""

    client: AsyncClient
    run_id: str = ""
    probes_acknowledged: int = 0
    probe_failures: int = 0
    reads: int = 0
    last_count: int = 0
    lsns: list[int] = field(default_factory=list)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster.create()
    try:
        c.add_replica()
        yield c
    finally:
        c.destroy()


def _metrics(metrics_port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        return [line for line in r.read().decode().splitlines() if not line.startswith("#")]


def _lagging_reads(metrics_port: int) -> dict[str, float]:
    out = {}
    for line in _metrics(metrics_port):
        if line.startswith("trackd_lagging_reads{"):
            target = line.split('target="')[1].split('"')[0]
            out[target] = float(line.rsplit(" ", 1)[1])
    return out


def _streams_open(metrics_port: int) -> float:
    for line in _metrics(metrics_port):
        if line.startswith("trackd_streams_open "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_topology(cluster: Cluster) -> None:
    with contextlib.ExitStack() as stack:
        bouncer = None
        if pgbouncer.binary() is not None:
            # Started before any gRPC thread runs (a fork beside them is unsafe).
            bouncer = stack.enter_context(pgbouncer.running(cluster.primary.url, pool_size=4))
        async with asyncio.timeout(BOUND):
            await _scenario(cluster, bouncer)


T0 = time.monotonic()


def _phase(name: str) -> None:
    print(f"{time.monotonic() - T0:7.2f}s {name}", flush=True)  # shown when the test fails


async def _scenario(cluster: Cluster, bouncer: pgbouncer.Bouncer | None) -> None:
    replica = cluster.replicas[0]
    admin = await asyncpg.connect(cluster.primary.url)
    try:
        await admin.execute("CREATE DATABASE trackd")
    finally:
        await admin.close()
    primary_url = with_database(cluster.primary.url, "trackd")
    replica_url = with_database(replica.url, "trackd")
    await wait_caught_up(cluster.primary.url, replica.url)

    metrics_ports = [free_port(), free_port()]
    servers: list[Proc] = []
    trainers: list[Trainer] = []
    try:
        if bouncer is not None:
            url = bouncer.url(primary_url)
            pooler = ["--database-pooler=transaction", f"--direct-database-url={primary_url}"]
        else:
            url, pooler = primary_url, []
        _phase(f"trackd reaches the primary {'through pgbouncer' if bouncer else 'directly'}")
        for mport in metrics_ports:  # one after the other: the first migrates
            servers.append(
                await start(
                    url,
                    0,
                    f"--read-database-url={replica_url}",
                    f"--metrics-listen=127.0.0.1:{mport}",
                    *pooler,
                )
            )
        target = ",".join(f"127.0.0.1:{s.port}" for s in servers)
        trainers = [Trainer(AsyncClient(target, timeout=10)) for _ in range(TRAINERS)]
        eid = await trainers[0].client.create_experiment("topology")
        for t in trainers:
            t.run_id = (await t.client.create_run(eid)).info.run_id
        loggers = [
            t.client.logger(chunk_points=250, backoff_max=0.5, ack_timeout=20) for t in trainers
        ]
        progress = [0] * TRAINERS
        stop_probing = asyncio.Event()

        async def train(i: int) -> None:
            for step in range(POINTS):
                await loggers[i].log(
                    trainers[i].run_id, "loss", step * 0.5, step=step, timestamp=step + 1
                )
                progress[i] = step
                if step % 20 == 0:  # about 4 s of training, for the faults to land in
                    await asyncio.sleep(0.02)

        async def probe(t: Trainer) -> None:
            """Writes a finished run, then counts the experiment's runs: never fewer than
            it has written, never fewer than it counted before."""
            while not stop_probing.is_set():
                try:
                    rid = (await t.client.create_run(eid)).info.run_id
                    await t.client.set_terminated(rid)
                    t.probes_acknowledged += 1
                except TrackdError:
                    t.probe_failures += 1
                    await asyncio.sleep(0.1)
                    continue
                try:
                    count = len(await t.client.search_runs(eid, max_results=1000))
                except TrackdError:
                    t.probe_failures += 1
                    await asyncio.sleep(0.1)
                    continue
                t.reads += 1
                assert count >= TRAINERS + t.probes_acknowledged, "a read missed its writes"
                assert count >= t.last_count, f"a read went back in time: {count} < {t.last_count}"
                t.last_count = count
                assert not t.lsns or t.client.lsn.lsn >= t.lsns[-1], "the LSN went back"
                t.lsns.append(t.client.lsn.lsn)
                await asyncio.sleep(0.02)

        trainings = [asyncio.create_task(train(i)) for i in range(TRAINERS)]
        probes = [asyncio.create_task(probe(t)) for t in trainers]

        async def until(condition: str, check: object) -> None:
            deadline = time.monotonic() + 40
            while not check():  # type: ignore[operator]
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"timed out waiting: {condition}; progress {progress}, "
                        f"probes {[(t.probes_acknowledged, t.probe_failures) for t in trainers]}"
                    )
                for task in (*trainings, *probes):
                    if task.done() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                await asyncio.sleep(0.05)

        _phase("trainers started")
        await until("a third of the points", lambda: min(progress) >= POINTS // 3)
        # Kill the server holding more of the loggers' streams (round robin spreads them,
        # but four clients may well all pick the same one).
        streams = [await asyncio.to_thread(_streams_open, port) for port in metrics_ports]
        victim = 0 if streams[0] >= streams[1] else 1
        survivor = 1 - victim
        _phase(f"killing trackd pid {servers[victim].proc.pid}, streams open {streams}")
        servers[victim].proc.send_signal(signal.SIGKILL)
        STATS["faults injected"] += 1
        await servers[victim].proc.wait()
        await until("two thirds of the points", lambda: min(progress) >= 2 * POINTS // 3)
        _phase("restarting the primary")
        await asyncio.to_thread(cluster.primary.restart)
        STATS["faults injected"] += 1
        _phase("primary restarted")
        await asyncio.wait_for(asyncio.gather(*trainings), 90)
        _phase("every point logged")
        await asyncio.wait_for(asyncio.gather(*(lg.flush(timeout=60) for lg in loggers)), 90)
        _phase("every point acknowledged")
        reconnects = sum(lg.reconnects for lg in loggers)
        for lg in loggers:
            await lg.close(timeout=30)
        await wait_caught_up(cluster.primary.url, replica.url)
        await asyncio.sleep(0.3)  # a few more probes on a settled topology
        stop_probing.set()
        await asyncio.wait_for(asyncio.gather(*probes), 30)

        _phase(
            f"reconnects {reconnects}; probes (acknowledged, failed, reads) "
            f"{[(t.probes_acknowledged, t.probe_failures, t.reads) for t in trainers]}"
        )
        assert reconnects >= streams[victim] >= 1, (reconnects, streams)
        stored = await stored_points(primary_url, [t.run_id for t in trainers])
        expected = (POINTS, sum(range(POINTS)), sum(s * 0.5 for s in range(POINTS)))
        got = {
            rid: (len(p), sum(x[0] for x in p), math.fsum(x[2] for x in p))
            for (rid, _), p in stored.items()
        }
        assert got == {t.run_id: expected for t in trainers}
        assert all(t.reads > 0 for t in trainers), [t.reads for t in trainers]
        reads = await asyncio.to_thread(_lagging_reads, metrics_ports[survivor])
        assert reads.get("replica", 0) > 0, f"the surviving server never read the replica: {reads}"
    finally:
        # The servers first, whatever closing the clients raises: no process outlives the test.
        for s in servers:
            await stop(s)
        for t in trainers:
            with contextlib.suppress(Exception):
                await t.client.close()
