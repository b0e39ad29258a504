"""Search benchmark: runs across experiments, each with params, metrics and tags; a filter
on one metric and one param, ordered by a metric, 100 results a page. Over 100k runs also:
a numeric comparison of a typed param, root runs only with nested runs in the data, and
filters on a run's duration and description.

The data is loaded with set-based SQL straight into trackd's tables (the ingest paths have
benchmarks of their own); the searches go through gRPC to a trackd server process. The
baseline is the same logical query hand-written in SQL and run with raw asyncpg on the same
database in the same run.

`search-compare` runs the first two scenarios alternately against the server of another
source tree (TRACKD_BENCH_BASE_TREE, e.g. a git worktree of main) and of this one, each
round on a fresh database with the same data.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc

from bench.common import fresh_database, percentile, server_process, summary_ms
from trackd.v1 import run_service_pb2, run_service_pb2_grpc

LOAD_EXPERIMENTS = """
INSERT INTO experiments (name, artifact_location, creation_time, last_update_time)
SELECT $1 || '-' || i, '', 0, 0 FROM generate_series(1, $2) AS i
RETURNING experiment_id"""
# Run i is in experiment i % E, FINISHED, with a duration of (i * 7919) % 3,600,000 ms.
LOAD_RUNS = """
INSERT INTO runs (run_id, experiment_id, run_name, user_id, status, start_time, end_time,
                  artifact_uri)
SELECT md5($1 || i)::uuid, ($2::bigint[])[1 + i % array_length($2::bigint[], 1)],
       'run-' || i, 'bench', 3, 1700000000000 + i,
       1700000000000 + i + (i::bigint * 7919) % 3600000, ''
FROM generate_series(1, $3) AS i"""
# Nesting, within an experiment (E experiments, run i's position there q = i / E): a run
# with q % 10 = 1 is a child of the run before it in its experiment (i - E, a root); one
# with q % 100 = 2 a grandchild (of i - E, itself a child): 10% children, 1% grandchildren.
# With migration 0011, runs.path holds the ancestors too (root first).
LOAD_NESTING = """
UPDATE runs c SET
    parent_run_pk = p.run_pk,
    path = CASE WHEN g.run_pk IS NULL THEN ARRAY[p.run_pk] ELSE ARRAY[g.run_pk, p.run_pk] END
FROM generate_series(1, $3) AS i
JOIN runs p ON p.run_id = md5($1 || (i - $2))::uuid
LEFT JOIN runs g ON (i / $2) % 100 = 2 AND g.run_id = md5($1 || (i - 2 * $2))::uuid
WHERE c.run_id = md5($1 || i)::uuid AND i > $2 AND ((i / $2) % 10 = 1 OR (i / $2) % 100 = 2)"""
# Before it, the parent alone.
LOAD_NESTING_NO_PATH = """
UPDATE runs c SET parent_run_pk = p.run_pk
FROM generate_series(1, $3) AS i
JOIN runs p ON p.run_id = md5($1 || (i - $2))::uuid
WHERE c.run_id = md5($1 || i)::uuid AND i > $2 AND ((i / $2) % 10 = 1 OR (i / $2) % 100 = 2)"""
# {e}: ", experiment_id" where params, tags and series carry it (migration 0013), else "".
LOAD_PARAMS = """
INSERT INTO params (run_pk{e}, key, value)
SELECT r.run_pk{e}, 'p' || k, ((r.run_pk * 7 + k * 13) % 10)::text
FROM runs r, generate_series(0, 9) AS k WHERE r.experiment_id = ANY($1::bigint[])"""
# With migration 0011: the same values, as INT params (ParamType 2) with their numbers.
LOAD_TYPED_PARAMS = """
INSERT INTO params (run_pk{e}, key, value, type, number)
SELECT r.run_pk{e}, 'p' || k, ((r.run_pk * 7 + k * 13) % 10)::text, 2, (r.run_pk * 7 + k * 13) % 10
FROM runs r, generate_series(0, 9) AS k WHERE r.experiment_id = ANY($1::bigint[])"""
LOAD_TAGS = """
INSERT INTO run_tags (run_pk{e}, key, value)
SELECT r.run_pk{e}, 't' || k, 'tag-' || ((r.run_pk + k) % 50)
FROM runs r, generate_series(0, 9) AS k WHERE r.experiment_id = ANY($1::bigint[])"""
# A description (the mlflow.note.content tag) on 30% of runs, starting with one of 26
# letters.
LOAD_DESCRIPTIONS = """
INSERT INTO run_tags (run_pk{e}, key, value)
SELECT r.run_pk{e}, 'mlflow.note.content',
       chr(97 + (r.run_pk / 10 % 26)::int) || ' note on run ' || r.run_pk
FROM runs r WHERE r.experiment_id = ANY($1::bigint[]) AND r.run_pk % 10 < 3"""
LOAD_SERIES = """
INSERT INTO metric_series (run_pk{e}, key, count, min_value, max_value, finite_mean,
    first_step, last_step, latest_step, latest_ts, latest_value)
SELECT run_pk{e}, key, 1, v, v, v, 0, 0, 0, 1700000000000, v
FROM (SELECT r.run_pk{e}, 'm' || k AS key, random() AS v
      FROM runs r, generate_series(0, 9) AS k WHERE r.experiment_id = ANY($1::bigint[])) AS x"""
LOAD_POINTS = """
INSERT INTO metric_points (series_id, step, ts, value)
SELECT s.series_id, 0, s.latest_ts, s.latest_value
FROM metric_series s JOIN runs r USING (run_pk) WHERE r.experiment_id = ANY($1::bigint[])"""

# The same searches written by hand: the fastest plain SQL for each, as the baseline. Each
# returns run_pk and run_name (and, for roots, descendant_match) in trackd's order.
RAW_QUERY = """
SELECT r.run_pk, r.run_id, r.run_name, o.latest_value
FROM runs r
JOIN metric_series f ON f.run_pk = r.run_pk AND f.key = 'm0' AND f.latest_value < $2
JOIN params p ON p.run_pk = r.run_pk AND p.key = 'p1' AND p.value = $3
LEFT JOIN metric_series o ON o.run_pk = r.run_pk AND o.key = 'm2'
WHERE r.experiment_id = ANY($1::bigint[]) AND r.lifecycle_stage = 1
ORDER BY o.latest_value DESC NULLS LAST, r.start_time DESC, r.run_id
LIMIT 100"""
RAW_TYPED = """
SELECT r.run_pk, r.run_id, r.run_name, o.latest_value
FROM runs r
JOIN params p ON p.run_pk = r.run_pk AND p.key = 'p1' AND p.number < $2
LEFT JOIN metric_series o ON o.run_pk = r.run_pk AND o.key = 'm2'
WHERE r.experiment_id = ANY($1::bigint[]) AND r.lifecycle_stage = 1
ORDER BY o.latest_value DESC NULLS LAST, r.start_time DESC, r.run_id
LIMIT 100"""
# Every run of the data is active, so a match's root is the first of its ancestors (or
# itself), and the root has a matching descendant when some match has ancestors (a root's
# path is NULL).
RAW_ROOTS = """
WITH matched AS MATERIALIZED (
    SELECT r.run_pk, r.path FROM runs r
    JOIN metric_series f ON f.run_pk = r.run_pk AND f.key = 'm0' AND f.latest_value < $2
    JOIN params p ON p.run_pk = r.run_pk AND p.key = 'p3' AND p.value = $3
    WHERE r.experiment_id = ANY($1::bigint[]) AND r.lifecycle_stage = 1),
roots AS (
    SELECT coalesce(m.path[1], m.run_pk) AS run_pk,
           bool_or(m.path IS NOT NULL) AS descendant_match
    FROM matched m GROUP BY 1)
SELECT r.run_pk, r.run_id, r.run_name, x.descendant_match
FROM roots x JOIN runs r ON r.run_pk = x.run_pk
ORDER BY r.start_time DESC, r.run_id
LIMIT 100"""
# Every run of the data is FINISHED with an end time: its duration is end minus start.
RAW_DURATION = """
SELECT r.run_pk, r.run_id, r.run_name
FROM runs r
WHERE r.experiment_id = ANY($1::bigint[]) AND r.lifecycle_stage = 1
  AND r.end_time - r.start_time > $2
ORDER BY r.start_time DESC, r.run_id
LIMIT 100"""
# The description tag through its prefix index (migration 0005), as LIKE 'c%' means.
RAW_DESCRIPTION = """
SELECT r.run_pk, r.run_id, r.run_name
FROM runs r
JOIN run_tags t ON t.run_pk = r.run_pk AND t.key = 'mlflow.note.content'
    AND left(t.value, 500) ~>=~ $2 AND left(t.value, 500) ~<~ $3
WHERE r.experiment_id = ANY($1::bigint[]) AND r.lifecycle_stage = 1
ORDER BY r.start_time DESC, r.run_id
LIMIT 100"""
# With migration 0013 (params, tags and series carry experiment_id, their search indexes
# lead with it) the same joins name the experiments in every table, as a query written by
# hand for that schema would, so that each comparison reads the searched experiments' rows
# only (the prefix of a value as its index holds it, as in RAW_DESCRIPTION).
RAW_QUERY_0013 = """
SELECT r.run_pk, r.run_id, r.run_name, o.latest_value
FROM runs r
JOIN metric_series f ON f.run_pk = r.run_pk AND f.experiment_id = ANY($1::bigint[])
    AND f.key = 'm0' AND f.latest_value < $2
JOIN params p ON p.run_pk = r.run_pk AND p.experiment_id = ANY($1::bigint[])
    AND p.key = 'p1' AND left(p.value, 500) = $3
LEFT JOIN metric_series o ON o.run_pk = r.run_pk AND o.experiment_id = ANY($1::bigint[])
    AND o.key = 'm2'
WHERE r.experiment_id = ANY($1::bigint[]) AND r.lifecycle_stage = 1
ORDER BY o.latest_value DESC NULLS LAST, r.start_time DESC, r.run_id
LIMIT 100"""
RAW_TYPED_0013 = """
SELECT r.run_pk, r.run_id, r.run_name, o.latest_value
FROM runs r
JOIN params p ON p.run_pk = r.run_pk AND p.experiment_id = ANY($1::bigint[])
    AND p.key = 'p1' AND p.number < $2
LEFT JOIN metric_series o ON o.run_pk = r.run_pk AND o.experiment_id = ANY($1::bigint[])
    AND o.key = 'm2'
WHERE r.experiment_id = ANY($1::bigint[]) AND r.lifecycle_stage = 1
ORDER BY o.latest_value DESC NULLS LAST, r.start_time DESC, r.run_id
LIMIT 100"""
RAW_ROOTS_0013 = """
WITH matched AS MATERIALIZED (
    SELECT r.run_pk, r.path FROM runs r
    JOIN metric_series f ON f.run_pk = r.run_pk AND f.experiment_id = ANY($1::bigint[])
        AND f.key = 'm0' AND f.latest_value < $2
    JOIN params p ON p.run_pk = r.run_pk AND p.experiment_id = ANY($1::bigint[])
        AND p.key = 'p3' AND left(p.value, 500) = $3
    WHERE r.experiment_id = ANY($1::bigint[]) AND r.lifecycle_stage = 1),
roots AS (
    SELECT coalesce(m.path[1], m.run_pk) AS run_pk,
           bool_or(m.path IS NOT NULL) AS descendant_match
    FROM matched m GROUP BY 1)
SELECT r.run_pk, r.run_id, r.run_name, x.descendant_match
FROM roots x JOIN runs r ON r.run_pk = x.run_pk
ORDER BY r.start_time DESC, r.run_id
LIMIT 100"""
RAW_DESCRIPTION_0013 = """
SELECT r.run_pk, r.run_id, r.run_name
FROM runs r
JOIN run_tags t ON t.run_pk = r.run_pk AND t.experiment_id = ANY($1::bigint[])
    AND t.key = 'mlflow.note.content'
    AND left(t.value, 500) ~>=~ $2 AND left(t.value, 500) ~<~ $3
WHERE r.experiment_id = ANY($1::bigint[]) AND r.lifecycle_stage = 1
ORDER BY r.start_time DESC, r.run_id
LIMIT 100"""
# Each baseline and its form for migration 0013's schema.
RAW_0013 = {
    RAW_QUERY: RAW_QUERY_0013,
    RAW_TYPED: RAW_TYPED_0013,
    RAW_ROOTS: RAW_ROOTS_0013,
    RAW_DESCRIPTION: RAW_DESCRIPTION_0013,
}
RAW_DATA = [
    "SELECT run_pk, key, value FROM params WHERE run_pk = ANY($1::bigint[])",
    "SELECT run_pk, key, value FROM run_tags WHERE run_pk = ANY($1::bigint[])",
    "SELECT * FROM metric_series WHERE run_pk = ANY($1::bigint[])",
]


@dataclass
class Search:
    """One search of a scenario: the gRPC request and the baseline's query and arguments
    (after the experiment ids)."""

    request: run_service_pb2.SearchRunsRequest
    raw_sql: str
    raw_args: list[Any]


# A scenario: given the random source and the experiment ids, the next search.
Scenario = Callable[[random.Random, list[int]], Search]


def _search(
    eids: list[int], filter_: str, order: str, raw_sql: str, raw_args: list[Any], **request: Any
) -> Search:
    """A search of 100 runs of the experiments, and its baseline."""
    return Search(
        run_service_pb2.SearchRunsRequest(
            experiment_ids=[str(e) for e in eids],
            filter=filter_,
            order_by=[order],
            max_results=100,
            **request,
        ),
        raw_sql,
        raw_args,
    )


def metric_and_param(rng: random.Random, eids: list[int]) -> Search:
    """`metrics.m0 < X AND params.p1 = 'Y'` ordered by metrics.m2 DESC."""
    threshold = round(rng.uniform(0.2, 0.8), 3)
    pval = str(rng.randrange(10))
    where = f"metrics.m0 < {threshold} AND params.p1 = '{pval}'"
    return _search(eids, where, "metrics.m2 DESC", RAW_QUERY, [threshold, pval])


def typed_param(rng: random.Random, eids: list[int]) -> Search:
    """`params.p1 < N` on INT params, ordered by metrics.m2 DESC."""
    n = rng.randrange(2, 9)
    return _search(eids, f"params.p1 < {n}", "metrics.m2 DESC", RAW_TYPED, [n])


def root_runs(rng: random.Random, eids: list[int]) -> Search:
    """root_runs_only, `metrics.m0 < X AND params.p3 = 'Y'`, newest first."""
    threshold = round(rng.uniform(0.2, 0.8), 3)
    pval = str(rng.randrange(10))
    where = f"metrics.m0 < {threshold} AND params.p3 = '{pval}'"
    return _search(
        eids,
        where,
        "attributes.start_time DESC",
        RAW_ROOTS,
        [threshold, pval],
        root_runs_only=True,
    )


def duration(rng: random.Random, eids: list[int]) -> Search:
    """`attributes.duration > N` (seconds), newest first."""
    n = rng.randrange(600, 3000)
    where = f"attributes.duration > {n}"
    return _search(eids, where, "attributes.start_time DESC", RAW_DURATION, [n * 1000])


def description(rng: random.Random, eids: list[int]) -> Search:
    """`attributes.description LIKE 'c%'`, newest first."""
    c = chr(97 + rng.randrange(26))
    where = f"attributes.description LIKE '{c}%'"
    return _search(eids, where, "attributes.start_time DESC", RAW_DESCRIPTION, [c, chr(ord(c) + 1)])


async def has_column(conn: asyncpg.Connection, table: str, column: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns"
            " WHERE table_name = $1 AND column_name = $2)",
            table,
            column,
        )
    )


async def load(conn: asyncpg.Connection, label: str, n_experiments: int, n_runs: int) -> list[int]:
    """Creates experiments with n_runs runs spread over them, nested as LOAD_NESTING says;
    returns the experiment ids. Typed params and ancestor paths only where the schema has
    them (migration 0011), so that the same data loads into an older trackd's schema."""
    hierarchy = await has_column(conn, "runs", "path")
    eids = [r[0] for r in await conn.fetch(LOAD_EXPERIMENTS, label, n_experiments)]
    await conn.execute(LOAD_RUNS, label, eids, n_runs)
    if hierarchy:
        await conn.execute(LOAD_NESTING, label, n_experiments, n_runs)
    else:
        await conn.execute(LOAD_NESTING_NO_PATH, label, n_experiments, n_runs)
    params = LOAD_TYPED_PARAMS if await has_column(conn, "params", "number") else LOAD_PARAMS
    e = ", experiment_id" if await has_column(conn, "params", "experiment_id") else ""
    for sql in (params, LOAD_TAGS, LOAD_DESCRIPTIONS, LOAD_SERIES):
        await conn.execute(sql.replace("{e}", e), eids)
    await conn.execute(LOAD_POINTS, eids)
    return eids


async def measure(
    target: str, conn: asyncpg.Connection, eids: list[int], n: int, scenario: Scenario
) -> dict[str, str]:
    rng = random.Random(7)
    trackd_times: list[float] = []
    raw_times: list[float] = []
    sizes = []
    scoped = await has_column(conn, "params", "experiment_id")
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    ) as ch:
        stub = run_service_pb2_grpc.RunServiceStub(ch)
        for i in range(n + 5):
            search = scenario(rng, eids)
            t0 = time.perf_counter()
            resp = await stub.SearchRuns(search.request)
            t1 = time.perf_counter()
            raw_sql = RAW_0013.get(search.raw_sql, search.raw_sql) if scoped else search.raw_sql
            rows = await conn.fetch(raw_sql, eids, *search.raw_args)
            pks = [r["run_pk"] for r in rows]
            for sql in RAW_DATA:
                await conn.fetch(sql, pks)
            t2 = time.perf_counter()
            if i >= 5:  # warm-up
                trackd_times.append(t1 - t0)
                raw_times.append(t2 - t1)
                sizes.append(len(resp.runs))
            assert [r.info.run_name for r in resp.runs] == [r["run_name"] for r in rows]
            if search.request.root_runs_only:
                assert [r.descendant_match for r in resp.runs] == [
                    r["descendant_match"] for r in rows
                ]
    p50 = percentile(trackd_times, 50)
    raw50 = percentile(raw_times, 50)
    return {
        "trackd SearchRuns": summary_ms(trackd_times),
        "raw asyncpg query + data": summary_ms(raw_times),
        "ratio (trackd p50 / raw p50)": f"{p50 / raw50:.2f}",
        "runs per page": f"{min(sizes)}-{max(sizes)}",
    }


async def _baseline_connection(database_url: str) -> asyncpg.Connection:
    # The baseline connection gets the session settings trackd's pool uses.
    return await asyncpg.connect(
        database_url, server_settings={"parallel_setup_cost": "10000", "jit": "off"}
    )


async def _load_all(conn: asyncpg.Connection, big: int) -> tuple[list[int], list[int]]:
    t0 = time.perf_counter()
    small = await load(conn, "small", 1, 1_000)
    large = await load(conn, "large", 10, big)
    # The nesting's updates leave dead rows: vacuumed, so that every variant and run
    # plans over the same clean tables.
    await conn.execute("VACUUM ANALYZE")
    load_s = time.perf_counter() - t0
    print(f"  loaded {big + 1000} runs x (10 params, 10 metrics, 10 tags) in {load_s:.1f}s")
    return small, large


async def run(
    database_url: str, n_searches: int = 200, big: int = 100_000
) -> dict[str, dict[str, str]]:
    """Loads 1k and `big` runs, then times searches over each; with migration 0011, also
    the searches over typed params, root runs, duration and description over `big` runs.
    The server runs from this tree, or from the source tree TRACKD_BENCH_SERVER_TREE."""
    conn = await _baseline_connection(database_url)
    results: dict[str, dict[str, str]] = {}
    try:
        tree = os.environ.get("TRACKD_BENCH_SERVER_TREE") or None
        async with server_process(database_url, tree=tree) as server:
            small, large = await _load_all(conn, big)
            k = big // 1000
            results["search, 1k runs (1 experiment)"] = await measure(
                server.target, conn, small, n_searches, metric_and_param
            )
            results[f"search, {k}k runs (10 experiments)"] = await measure(
                server.target, conn, large, n_searches, metric_and_param
            )
            if await has_column(conn, "runs", "path"):
                for name, scenario in (
                    ("params.p1 < N (INT params), order by metrics.m2 DESC", typed_param),
                    ("root_runs_only, metrics.m0 < X AND params.p3 = 'Y'", root_runs),
                    ("attributes.duration > N, order by start_time DESC", duration),
                    ("attributes.description LIKE 'c%', order by start_time DESC", description),
                ):
                    results[f"{k}k runs: {name}"] = await measure(
                        server.target, conn, large, n_searches, scenario
                    )
    finally:
        await conn.close()
    return results


async def compare(
    database_url: str, n_searches: int = 200, big: int = 100_000
) -> dict[str, dict[str, str]]:
    """The first two scenarios against the server of TRACKD_BENCH_BASE_TREE (one source
    tree, or several separated by `:`) and of this tree, alternately, TRACKD_BENCH_ROUNDS
    rounds (default 3) of each, each on a fresh database loaded with the same data; per
    variant the p50 and p99 of each round, and the median p50 and ratio over the rounds."""
    bases = [b for b in os.environ.get("TRACKD_BENCH_BASE_TREE", "").split(os.pathsep) if b]
    if not bases:
        raise SystemExit("search-compare needs TRACKD_BENCH_BASE_TREE (a trackd source tree)")
    rounds = int(os.environ.get("TRACKD_BENCH_ROUNDS", "3"))
    variants: dict[str, str | None] = {f"base ({b})": b for b in bases}
    variants["this tree"] = None
    p50s: dict[tuple[str, str], list[float]] = {}
    ratios: dict[tuple[str, str], list[float]] = {}
    p99s: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for label, tree in variants.items():
            async with fresh_database(database_url) as db_url:
                conn = await _baseline_connection(db_url)
                try:
                    async with server_process(db_url, tree=tree) as server:
                        small, large = await _load_all(conn, big)
                        for scope, eids in (("1k runs", small), (f"{big // 1000}k runs", large)):
                            figures = await measure(
                                server.target, conn, eids, n_searches, metric_and_param
                            )
                            print(f"  round {r + 1}, {label}, {scope}: {figures}")
                            p50, p99 = _p50_p99(figures["trackd SearchRuns"])
                            p50s.setdefault((label, scope), []).append(p50)
                            p99s.setdefault((label, scope), []).append(p99)
                            ratios.setdefault((label, scope), []).append(
                                float(figures["ratio (trackd p50 / raw p50)"])
                            )
                finally:
                    await conn.close()
    return {
        f"{label}, {scope}": {
            "trackd p50 per round (ms)": ", ".join(f"{v:.2f}" for v in p50s[label, scope]),
            "trackd p99 per round (ms)": ", ".join(f"{v:.2f}" for v in p99s[label, scope]),
            "median p50 (ms)": f"{statistics.median(p50s[label, scope]):.2f}",
            "median ratio to raw": f"{statistics.median(ratios[label, scope]):.2f}",
        }
        for label, scope in p50s
    }


def _p50_p99(summary: str) -> tuple[float, float]:
    """The p50 and p99 (ms) out of a summary_ms string."""
    parts = summary.replace(",", "").split()
    return float(parts[parts.index("p50") + 1]), float(parts[parts.index("p99") + 1])


async def _loaded(conn: asyncpg.Connection) -> tuple[list[int], list[int]] | None:
    """The experiment ids of search-1m's data (the 1k-run one, then the 100) when the
    database already holds all of it, else None."""
    rows = await conn.fetch(
        "SELECT experiment_id, name FROM experiments"
        " WHERE name = 'small-1' OR name LIKE 'million-%' ORDER BY experiment_id"
    )
    small = [r["experiment_id"] for r in rows if r["name"] == "small-1"]
    large = [r["experiment_id"] for r in rows if r["name"] != "small-1"]
    if len(small) != 1 or len(large) != 100:
        return None
    # The load's last step: every run of the 100 experiments has its metric points.
    runs = await conn.fetchval(
        "SELECT count(*) FROM runs r WHERE r.experiment_id = ANY($1::bigint[])"
        " AND EXISTS (SELECT 1 FROM metric_series s JOIN metric_points p USING (series_id)"
        " WHERE s.run_pk = r.run_pk)",
        large[-1:],
    )
    return (small, large) if runs == 10_000 else None


async def million(database_url: str, n_searches: int = 50) -> dict[str, dict[str, str]]:
    """Issue 15's search benchmark: 1M runs over 100 experiments (10k each, with 10 params,
    10 metrics and 10 tags each) beside the 1k-run experiment; the existing query over 1k
    runs (1 experiment), 100k runs (10 experiments) and 1M runs (all 100). Named only
    (`make bench BENCH_ARGS=search-1m`): loading takes minutes."""
    conn = await _baseline_connection(database_url)
    results: dict[str, dict[str, str]] = {}
    try:
        tree = os.environ.get("TRACKD_BENCH_SERVER_TREE") or None
        async with server_process(database_url, tree=tree) as server:
            loaded = await _loaded(conn)
            if loaded is not None:
                # A kept database (TRACKD_BENCH_KEEP_DATABASE) that an earlier run loaded,
                # migrated by the server to this tree's schema as it started.
                small, large = loaded
                await conn.execute("ANALYZE")
                print("  reusing the 1,001,000 runs already loaded")
            else:
                t0 = time.perf_counter()
                small = await load(conn, "small", 1, 1_000)
                large = await load(conn, "million", 100, 1_000_000)
                await conn.execute("VACUUM ANALYZE")
                print(f"  loaded 1,001,000 runs in {time.perf_counter() - t0:.1f}s")
            for label, eids, n in (
                ("1k runs (1 experiment of 1M+1k)", small, n_searches),
                ("100k runs (10 experiments of 1M)", large[:10], n_searches),
                ("1M runs (100 experiments)", large, n_searches),
            ):
                results[f"search-1m, {label}"] = await measure(
                    server.target, conn, eids, n, metric_and_param
                )
                print(f"  {label}: {results[f'search-1m, {label}']}")
    finally:
        await conn.close()
    return results
