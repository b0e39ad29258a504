"""Fixtures: a real PostgreSQL, a fresh database per test module, an in-process trackd on a
free port, and stubs over a real channel.

PostgreSQL comes from TRACKD_TEST_DATABASE_URL if set; else a testcontainers PostgreSQL
where a Docker engine answers; else an embedded PostgreSQL (pgserver).

TRACKD_TEST_PGBOUNCER=1 runs the suite through pgbouncer in transaction pooling mode: one
pgbouncer for the session in front of that PostgreSQL (tests/pgbouncer.py), and every
in-process server (app.start) given a database URL on the test PostgreSQL reaches it
through pgbouncer instead (--database-pooler transaction), with the URL it was given as
its direct URL (migrations, LISTEN). Test code that reads or changes the database itself
keeps the direct URL; servers started as processes (`trackd serve`) do too.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
import pytest_asyncio

import pgbouncer
from trackd.server import app

# The mlflow client retries a failed request with backoff for minutes by default: in the
# tests, a server error should fail the test at once, not after the retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
from trackd.server.config import Config
from trackd.v1 import experiment_service_pb2_grpc, run_service_pb2_grpc


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means no usable Docker
        return False


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a PostgreSQL server the tests may create databases on."""
    configured = os.environ.get("TRACKD_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url()
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="trackd-pg-") as data:
        server = pgserver.get_server(data, cleanup_mode="stop")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


@pytest.fixture(scope="session", autouse=True)
def through_pgbouncer(request: pytest.FixtureRequest) -> Iterator[pgbouncer.Bouncer | None]:
    """With TRACKD_TEST_PGBOUNCER=1: one pgbouncer (transaction mode) in front of the test
    PostgreSQL for the whole session, and app.start routed through it; else nothing."""
    if not pgbouncer.wanted():
        yield None
        return
    if pgbouncer.binary() is None:
        raise pytest.UsageError(
            "TRACKD_TEST_PGBOUNCER is set but there is no pgbouncer binary (install "
            "pgbouncer or set TRACKD_TEST_PGBOUNCER_BIN)"
        )
    pg_url = request.getfixturevalue("pg_url")
    real_start = app.start
    with pgbouncer.running(pg_url, pool_size=8) as bouncer:

        async def start(config: Config, database_url: str) -> app.Running:
            if config.database_pooler == "off" and bouncer.fronts(database_url):
                config = dataclasses.replace(
                    config,
                    database_pooler="transaction",
                    direct_database_url=config.direct_database_url or database_url,
                )
                database_url = bouncer.url(database_url)
            return await real_start(config, database_url)

        app.start = start  # type: ignore[assignment]
        try:
            yield bouncer
        finally:
            app.start = real_start  # type: ignore[assignment]


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def database_url(pg_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test module; dropped afterwards."""
    name = f"trackd_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield with_database(pg_url, name)
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def server_config(**overrides: object) -> Config:
    """A Config for an in-process server on a free loopback port."""
    base = {
        "listen": "127.0.0.1:0",
        "pool_min_size": 1,
        "pool_max_size": 8,
        "artifact_root": "file:///tmp/trackd-test-artifacts",
        "grace_period": 2.0,
    }
    base.update(overrides)
    return Config(**base)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(database_url: str) -> AsyncIterator[app.Running]:
    """trackd serving the module's database on 127.0.0.1 and a free port."""
    running = await app.start(server_config(), database_url)
    yield running
    await running.stop(1.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def channel(server: app.Running) -> AsyncIterator[grpc.aio.Channel]:
    """A real channel to the module's server."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def experiments(channel: grpc.aio.Channel) -> experiment_service_pb2_grpc.ExperimentServiceStub:
    """ExperimentService stub over the module's channel."""
    return experiment_service_pb2_grpc.ExperimentServiceStub(channel)


@pytest.fixture(scope="module")
def runs(channel: grpc.aio.Channel) -> run_service_pb2_grpc.RunServiceStub:
    """RunService stub over the module's channel."""
    return run_service_pb2_grpc.RunServiceStub(channel)


def pytest_report_header() -> str | None:
    """Says when the suite runs through pgbouncer."""
    if pgbouncer.wanted():
        return f"trackd: servers reach PostgreSQL through pgbouncer ({pgbouncer.binary()})"
    return None


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """Reports how many faults the fault suite injected and how many generated inputs the
    property tests tried."""
    from helpers import STATS

    if any(STATS.values()):
        terminalreporter.write_line("trackd: " + ", ".join(f"{k}: {v}" for k, v in STATS.items()))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http_server(database_url: str) -> AsyncIterator[app.Running]:
    """trackd serving the module's database with its HTTP front (MLflow's REST API) on
    127.0.0.1 and a free port (`running.http_port`)."""
    running = await app.start(server_config(http_listen="127.0.0.1:0"), database_url)
    yield running
    await running.stop(None)


@pytest.fixture(scope="module")
def tracking_uri(http_server: app.Running) -> str:
    """The MLFLOW_TRACKING_URI of the module's trackd."""
    return f"http://127.0.0.1:{http_server.http_port}"
