"""Databases as an earlier release left them, for the migration tests: brought to a
migration exactly as that release's migrate() left it, filled by the test with plain SQL,
then served by today's trackd, which migrates them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc

from conftest import server_config, with_database
from trackd.server import app
from trackd.server.store import migrate
from trackd.v1 import run_service_pb2_grpc


async def migrate_to(conn: asyncpg.Connection, last: int) -> None:
    """Applies migrations 1..`last` as migrate() does: each in its own transaction,
    recorded in schema_migrations."""
    await conn.execute(migrate.CREATE_TABLE)
    for version, name, sql in migrate.available():
        if version > last:
            break
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute(migrate.RECORD, version, name)


@contextlib.asynccontextmanager
async def old_database(pg_url: str, version: int) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    """A fresh database at migration `version`, and a connection to it for the test to fill
    (closed when the block ends); the database is dropped afterwards."""
    name = f"trackd_test_old_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = with_database(pg_url, name)
        conn = await asyncpg.connect(url)
        try:
            await migrate_to(conn, version)
            yield url, conn
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def run_service(url: str) -> AsyncIterator[run_service_pb2_grpc.RunServiceStub]:
    """RunService of a trackd started on the database (which it migrates)."""
    running = await app.start(server_config(), url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            yield run_service_pb2_grpc.RunServiceStub(ch)
    finally:
        await running.stop(1.0)
