"""Search benchmark: runs across experiments, each with params, metrics and tags; a filter
on one metric and one param, ordered by a metric, 100 results a page.

The data is loaded with set-based SQL straight into trackd's tables (the ingest paths have
benchmarks of their own); the searches go through gRPC to a trackd server process. The
baseline is the same logical query hand-written in SQL and run with raw asyncpg on the same
database in the same run.
"""

from __future__ import annotations

import random
import time

import asyncpg
import grpc

from bench.common import server_process, summary_ms
from trackd.v1 import run_service_pb2, run_service_pb2_grpc

LOAD_EXPERIMENTS = """
INSERT INTO experiments (name, artifact_location, creation_time, last_update_time)
SELECT $1 || '-' || i, '', 0, 0 FROM generate_series(1, $2) AS i
RETURNING experiment_id"""
LOAD_RUNS = """
INSERT INTO runs (run_id, experiment_id, run_name, user_id, status, start_time, artifact_uri)
SELECT md5($1 || i)::uuid, ($2::bigint[])[1 + i % array_length($2::bigint[], 1)],
       'run-' || i, 'bench', 3, 1700000000000 + i, ''
FROM generate_series(1, $3) AS i"""
LOAD_PARAMS = """
INSERT INTO params (run_pk, key, value)
SELECT r.run_pk, 'p' || k, ((r.run_pk * 7 + k * 13) % 10)::text
FROM runs r, generate_series(0, 9) AS k WHERE r.experiment_id = ANY($1::bigint[])"""
LOAD_TAGS = """
INSERT INTO run_tags (run_pk, key, value)
SELECT r.run_pk, 't' || k, 'tag-' || ((r.run_pk + k) % 50)
FROM runs r, generate_series(0, 9) AS k WHERE r.experiment_id = ANY($1::bigint[])"""
LOAD_SERIES = """
INSERT INTO metric_series (run_pk, key, count, min_value, max_value, finite_mean,
    first_step, last_step, latest_step, latest_ts, latest_value)
SELECT run_pk, key, 1, v, v, v, 0, 0, 0, 1700000000000, v
FROM (SELECT r.run_pk, 'm' || k AS key, random() AS v
      FROM runs r, generate_series(0, 9) AS k WHERE r.experiment_id = ANY($1::bigint[])) AS x"""
LOAD_POINTS = """
INSERT INTO metric_points (series_id, step, ts, value)
SELECT s.series_id, 0, s.latest_ts, s.latest_value
FROM metric_series s JOIN runs r USING (run_pk) WHERE r.experiment_id = ANY($1::bigint[])"""

# The same search written by hand: the fastest plain SQL for it, as the baseline.
RAW_QUERY = """
SELECT r.run_pk, r.run_id, r.run_name, o.latest_value
FROM runs r
JOIN metric_series f ON f.run_pk = r.run_pk AND f.key = 'm0' AND f.latest_value < $2
JOIN params p ON p.run_pk = r.run_pk AND p.key = 'p1' AND p.value = $3
LEFT JOIN metric_series o ON o.run_pk = r.run_pk AND o.key = 'm2'
WHERE r.experiment_id = ANY($1::bigint[]) AND r.lifecycle_stage = 1
ORDER BY o.latest_value DESC NULLS LAST, r.start_time DESC, r.run_id
LIMIT 100"""
RAW_DATA = [
    "SELECT run_pk, key, value FROM params WHERE run_pk = ANY($1::bigint[])",
    "SELECT run_pk, key, value FROM run_tags WHERE run_pk = ANY($1::bigint[])",
    "SELECT * FROM metric_series WHERE run_pk = ANY($1::bigint[])",
]


async def load(conn: asyncpg.Connection, label: str, n_experiments: int, n_runs: int) -> list[int]:
    """Creates experiments with n_runs runs spread over them; returns the experiment ids."""
    eids = [r[0] for r in await conn.fetch(LOAD_EXPERIMENTS, label, n_experiments)]
    await conn.execute(LOAD_RUNS, label, eids, n_runs)
    for sql in (LOAD_PARAMS, LOAD_TAGS, LOAD_SERIES, LOAD_POINTS):
        await conn.execute(sql, eids)
    return eids


async def measure(target: str, conn: asyncpg.Connection, eids: list[int], n: int) -> dict[str, str]:
    rng = random.Random(7)
    trackd_times: list[float] = []
    raw_times: list[float] = []
    sizes = []
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    ) as ch:
        stub = run_service_pb2_grpc.RunServiceStub(ch)
        for i in range(n + 5):
            threshold = round(rng.uniform(0.2, 0.8), 3)
            pval = str(rng.randrange(10))
            req = run_service_pb2.SearchRunsRequest(
                experiment_ids=[str(e) for e in eids],
                filter=f"metrics.m0 < {threshold} AND params.p1 = '{pval}'",
                order_by=["metrics.m2 DESC"],
                max_results=100,
            )
            t0 = time.perf_counter()
            resp = await stub.SearchRuns(req)
            t1 = time.perf_counter()
            rows = await conn.fetch(RAW_QUERY, eids, threshold, pval)
            pks = [r["run_pk"] for r in rows]
            for sql in RAW_DATA:
                await conn.fetch(sql, pks)
            t2 = time.perf_counter()
            if i >= 5:  # warm-up
                trackd_times.append(t1 - t0)
                raw_times.append(t2 - t1)
                sizes.append(len(resp.runs))
                assert [r.info.run_name for r in resp.runs] == [r["run_name"] for r in rows]
    p50 = sorted(trackd_times)[len(trackd_times) // 2]
    raw50 = sorted(raw_times)[len(raw_times) // 2]
    return {
        "trackd SearchRuns": summary_ms(trackd_times),
        "raw asyncpg query + data": summary_ms(raw_times),
        "ratio (trackd p50 / raw p50)": f"{p50 / raw50:.2f}",
        "runs per page": f"{min(sizes)}-{max(sizes)}",
    }


async def run(
    database_url: str, n_searches: int = 200, big: int = 100_000
) -> dict[str, dict[str, str]]:
    """Loads 1k and `big` runs, then times searches over each."""
    # The baseline connection gets the session settings trackd's pool uses.
    conn = await asyncpg.connect(database_url, server_settings={"parallel_setup_cost": "10000"})
    results: dict[str, dict[str, str]] = {}
    try:
        async with server_process(database_url) as server:
            t0 = time.perf_counter()
            small = await load(conn, "small", 1, 1_000)
            large = await load(conn, "large", 10, big)
            await conn.execute("ANALYZE")
            load_s = time.perf_counter() - t0
            print(f"  loaded {big + 1000} runs x (10 params, 10 metrics, 10 tags) in {load_s:.1f}s")
            results["search, 1k runs (1 experiment)"] = await measure(
                server.target, conn, small, n_searches
            )
            results[f"search, {big // 1000}k runs (10 experiments)"] = await measure(
                server.target, conn, large, n_searches
            )
    finally:
        await conn.close()
    return results
