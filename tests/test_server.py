"""The server as a whole: restarts, two servers on one database, health, reflection,
migrations under concurrency, SIGTERM draining, configuration precedence."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import uuid

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import server_config
from helpers import new_experiment, new_run
from trackd.server import app
from trackd.server.config import parse, resolve
from trackd.server.startup import StartupError
from trackd.server.store import migrate
from trackd.v1 import experiment_service_pb2_grpc, run_service_pb2_grpc
from trackd.v1 import run_service_pb2 as rpb


def _stubs(port: int) -> tuple[grpc.aio.Channel, object, object]:
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return (
        ch,
        experiment_service_pb2_grpc.ExperimentServiceStub(ch),
        run_service_pb2_grpc.RunServiceStub(ch),
    )


async def test_data_survives_a_server_restart(database_url: str) -> None:
    first = await app.start(server_config(), database_url)
    ch, experiments, runs = _stubs(first.port)
    eid = await new_experiment(experiments)
    run = await new_run(runs, eid)
    await runs.LogMetric(rpb.LogMetricRequest(run_id=run.info.run_id, key="m", value=3.5, step=2))
    await ch.close()
    await first.stop(1.0)

    second = await app.start(server_config(), database_url)
    ch, experiments, runs = _stubs(second.port)
    try:
        got = (await runs.GetRun(rpb.GetRunRequest(run_id=run.info.run_id))).run
        assert [(m.key, m.value, m.step) for m in got.data.metrics] == [("m", 3.5, 2)]
    finally:
        await ch.close()
        await second.stop(1.0)


async def test_two_servers_on_one_database_both_serve(database_url: str) -> None:
    a = await app.start(server_config(), database_url)
    b = await app.start(server_config(), database_url)
    ch_a, exp_a, runs_a = _stubs(a.port)
    ch_b, _, runs_b = _stubs(b.port)
    try:
        run = await new_run(runs_a, await new_experiment(exp_a))
        await runs_b.LogParam(rpb.LogParamRequest(run_id=run.info.run_id, key="k", value="v"))
        got = (await runs_a.GetRun(rpb.GetRunRequest(run_id=run.info.run_id))).run
        assert [(p.key, p.value) for p in got.data.params] == [("k", "v")]
    finally:
        await ch_a.close()
        await ch_b.close()
        await a.stop(1.0)
        await b.stop(1.0)


async def test_health_reports_serving_for_each_service(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "trackd.v1.RunService", "trackd.v1.ExperimentService"):
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_trackd_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for resp in stub.ServerReflectionInfo(requests()):
        names = {s.name for s in resp.list_services_response.service}
        assert {"trackd.v1.RunService", "trackd.v1.ExperimentService"} <= names
        break


async def test_concurrent_migrations_apply_each_version_once(pg_url: str) -> None:
    from conftest import with_database

    name = f"trackd_test_migrate_race_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conns = [await asyncpg.connect(with_database(pg_url, name)) for _ in range(4)]
        results = await asyncio.gather(*(migrate.migrate(c) for c in conns))
        applied = [n for r in results for n in r]
        assert sorted(applied) == sorted(v[1] for v in migrate.available())
        rows = await conns[0].fetch("SELECT version FROM schema_migrations")
        assert len(rows) == len(migrate.available())
        for c in conns:
            await c.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_sigterm_drains_and_exits_zero(database_url: str) -> None:
    env = {**os.environ, "TRACKD_DATABASE_URL": database_url, "TRACKD_LISTEN": "127.0.0.1:0"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "trackd.server",
        "serve",
        "--grace-period",
        "5",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        port = None
        while port is None:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)  # type: ignore[union-attr]
            assert line, "server exited before listening"
            m = re.search(rb"listening on .* \(port (\d+)\)", line)
            if m:
                port = int(m.group(1))
        ch, experiments, runs = _stubs(port)
        run = await new_run(runs, await new_experiment(experiments))
        calls = [
            runs.LogMetric(rpb.LogMetricRequest(run_id=run.info.run_id, key="k", value=i, step=i))
            for i in range(50)
        ]
        pending = asyncio.gather(*calls, return_exceptions=True)
        await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        results = await pending
        code = await asyncio.wait_for(proc.wait(), 15)
        assert code == 0
        await ch.close()
        # Every call the server acknowledged is stored.
        acked = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
        conn = await asyncpg.connect(database_url)
        try:
            stored = await conn.fetch(
                "SELECT p.step FROM metric_points p JOIN metric_series s USING (series_id) "
                "JOIN runs r USING (run_pk) WHERE r.run_id = $1",
                run.info.run_id,
            )
        finally:
            await conn.close()
        assert set(acked) <= {r["step"] for r in stored}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_flags_win_over_environment_over_defaults() -> None:
    import argparse

    from trackd.server.config import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    env = {"TRACKD_LISTEN": "127.0.0.1:7000", "TRACKD_POOL_MAX_SIZE": "3"}
    cfg = resolve(parser.parse_args(["--pool-max-size", "5"]), env)
    assert cfg.listen == "127.0.0.1:7000"
    assert cfg.pool_max_size == 5
    assert cfg.grace_period == 10.0
    assert parse([]).listen in ("127.0.0.1:50051", os.environ.get("TRACKD_LISTEN"))


def test_bad_environment_value_is_a_clear_error() -> None:
    import argparse

    from trackd.server.config import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(StartupError, match="TRACKD_POOL_MAX_SIZE"):
        resolve(parser.parse_args([]), {"TRACKD_POOL_MAX_SIZE": "many"})
