"""WAL per metric point: what trackd's ingest and compaction write to PostgreSQL's
write-ahead log, the figure that sizes replication, WAL archiving and a replica's network
(docs/scale-out.md, the capacity model).

A typical loss curve (bench.storage.typical) is streamed through a trackd process with
compaction off (StreamMetrics, 10,000-point chunks, one client), twice: right after a
CHECKPOINT (the first change of each page after a checkpoint logs a full-page image, the
worst case) and again at once (the steady state between checkpoints); then LogBatch, 1,000
points a call; then, after a CHECKPOINT (compaction reaches rows written long before, so
a checkpoint has passed since in practice), a trackd process with compaction on moves the
rows into blocks; then a VACUUM of the deleted rows. For
each phase: `pg_wal_lsn_diff` of `pg_current_wal_lsn()` around it (the whole cluster:
anything else running on the same PostgreSQL counts too) and, when the pg_walinspect
extension can be created (PostgreSQL 15+, a superuser), the bytes of the WAL records that
touch this database's relations plus the records of the same transactions (their commits),
with the full-page images apart. The attributed figure is the one to quote; the cluster
diff bounds it from above."""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg
import grpc

from bench.common import backend_cpu_seconds, cpu_seconds, server_process
from bench.ingest import _stream
from bench.storage import _chunks, typical
from trackd.v1 import metric_pb2, run_service_pb2_grpc
from trackd.v1 import run_service_pb2 as rpb

POINTS = int(os.environ.get("TRACKD_BENCH_WAL_POINTS", "500000"))
BATCHES = 100

# The WAL records of [start, end) that name a relation of database `oid`, and every record
# of the transactions they belong to (a commit record names no relation).
ATTRIBUTED = r"""
WITH r AS (
    SELECT xid, record_length, fpi_length, block_ref
    FROM pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)
), mine AS (
    SELECT DISTINCT xid FROM r
    WHERE block_ref ~ ('rel \d+/' || $3::text || '/') AND xid::text <> '0'
)
SELECT coalesce(sum(record_length), 0)::bigint AS bytes,
       coalesce(sum(fpi_length), 0)::bigint AS fpi,
       count(*) AS records
FROM r
WHERE block_ref ~ ('rel \d+/' || $3::text || '/') OR xid IN (SELECT xid FROM mine)"""


class Wal:
    """Measures the WAL written between start() and stop()."""

    def __init__(self, conn: asyncpg.Connection, inspect: bool) -> None:
        self.conn = conn
        self.inspect = inspect
        self.oid = 0
        self.lsn = ""

    async def start(self, checkpoint: bool = False) -> None:
        if checkpoint:
            await self.conn.execute("CHECKPOINT")
        self.oid = await self.conn.fetchval(
            "SELECT oid FROM pg_database WHERE datname = current_database()"
        )
        if self.inspect:
            # A temporary slot keeps the WAL from its creation until stop() (a checkpoint
            # would otherwise recycle segments before they are read); dropped in stop().
            await self.conn.execute(
                "SELECT pg_create_physical_replication_slot($1, true, true)",
                f"trackd_bench_wal_{os.getpid()}",
            )
        self.lsn = await self.conn.fetchval("SELECT pg_current_wal_lsn()::text")

    async def stop(self, points: int) -> str:
        end = await self.conn.fetchval("SELECT pg_current_wal_lsn()::text")
        # pg_walinspect reads only flushed WAL (an asynchronous commit may not be yet).
        for _ in range(100):
            if await self.conn.fetchval(
                "SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn", end
            ):
                break
            await asyncio.sleep(0.05)
        cluster = await self.conn.fetchval(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)::bigint", end, self.lsn
        )
        text = f"cluster {cluster / points:.1f} B/point"
        if self.inspect:
            try:
                row = await self.conn.fetchrow(ATTRIBUTED, self.lsn, end, str(self.oid))
            except asyncpg.PostgresError as e:
                return f"{text}; attribution failed: {e}"
            finally:
                await self.conn.execute(
                    "SELECT pg_drop_replication_slot($1)", f"trackd_bench_wal_{os.getpid()}"
                )
            text = (
                f"{row['bytes'] / points:.1f} B/point attributed to this database "
                f"(full-page images {row['fpi'] / points:.1f} of it; "
                f"{row['records'] / points:.2f} records/point); {text}"
            )
        return text


async def _log_batch(stub: run_service_pb2_grpc.RunServiceStub, run_id: str) -> None:
    for b in range(BATCHES):
        await stub.LogBatch(
            rpb.LogBatchRequest(
                run_id=run_id,
                metrics=[
                    metric_pb2.Metric(
                        key="acc",
                        value=1.0 / (1 + i),
                        step=b * 1000 + i,
                        timestamp=1_700_000_000_000 + b,
                    )
                    for i in range(1000)
                ],
            )
        )


async def run(database_url: str) -> dict[str, dict[str, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            inspect = True
        except asyncpg.PostgresError:
            inspect = False
        wal = Wal(conn, inspect)
        out: dict[str, str] = {}
        cols = typical(POINTS, 3)
        async with server_process(database_url, "--compaction", "off") as server:
            async with grpc.aio.insecure_channel(server.target) as ch:
                stub = run_service_pb2_grpc.RunServiceStub(ch)
                for label, checkpoint in (("after a CHECKPOINT", True), ("steady", False)):
                    run_id = (
                        await stub.CreateRun(rpb.CreateRunRequest(run_name="wal"))
                    ).run.info.run_id
                    msgs = _chunks(run_id, cols)
                    await wal.start(checkpoint)
                    cpu0, pg0 = cpu_seconds(server.proc.pid), await backend_cpu_seconds(conn)
                    await _stream(stub, msgs)
                    cpu1, pg1 = cpu_seconds(server.proc.pid), await backend_cpu_seconds(conn)
                    out[f"StreamMetrics, {POINTS:,} points as rows, {label}"] = await wal.stop(
                        POINTS
                    )
                    pg = (
                        "n/a" if pg0 is None or pg1 is None else f"{(pg1 - pg0) / POINTS * 1e6:.2f}"
                    )
                    out[f"StreamMetrics CPU, {label}"] = (
                        f"trackd {(cpu1 - cpu0) / POINTS * 1e6:.2f} us/point, "
                        f"PostgreSQL backends {pg} us/point"
                    )
                run_id = (
                    await stub.CreateRun(rpb.CreateRunRequest(run_name="wal-batch"))
                ).run.info.run_id
                await wal.start()
                await _log_batch(stub, run_id)
                out[
                    f"LogBatch, {BATCHES * 1000:,} points in calls of 1,000, as rows"
                ] = await wal.stop(BATCHES * 1000)
        rows = await conn.fetchval("SELECT count(*) FROM metric_points")
        await wal.start(checkpoint=True)
        t0 = time.perf_counter()
        async with server_process(database_url, "--compaction", "on"):
            while (await conn.fetchval("SELECT count(*) FROM metric_points")) >= 3 * 2 * 1024:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        compacted = await conn.fetchval("SELECT coalesce(sum(count), 0) FROM metric_blocks")
        out[f"compaction of {compacted:,} points into blocks (rows deleted, blocks inserted)"] = (
            await wal.stop(compacted) + f"; {time.perf_counter() - t0:.1f} s"
        )
        await wal.start()
        await conn.execute("VACUUM metric_points, metric_blocks")
        out["VACUUM after the compaction (the deleted rows' space)"] = await wal.stop(compacted)
        out["rows before compaction"] = f"{rows:,}"
        return {"WAL per point (typical loss curve)": out}
    finally:
        await conn.close()
