"""SQL for runs, their params and tags, and their lifecycle."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import asyncpg

from trackd.server.store.pool import Connection

ACTIVE = 1
DELETED = 2

RUNNING = 1
UNRESPONSIVE = 6

# When the server last heard from run `r` (RunInfo.last_seen_time; migration 0009): the later
# of its heartbeat time (creation, Heartbeat, UpdateRun to RUNNING) and the last commit of
# points to one of its series, or its start time if it had none of them (runs from before
# liveness). All but the fallback are the server's clock, so a client clock running ahead
# cannot keep a dead run alive through a start time in the future. The max over the run's
# series is a range of the (run_pk, key) unique index.
LAST_SEEN = """coalesce(greatest(r.heartbeat_ms,
        (SELECT max(ls.touched_ms) FROM metric_series ls WHERE ls.run_pk = r.run_pk)),
    r.start_time)"""


def status_sql(cutoff: str) -> str:
    """SQL for run `r`'s status as read: UNRESPONSIVE for a RUNNING run last seen before
    `cutoff`, a bigint placeholder bound to the liveness cutoff (the server's now minus the
    window, in milliseconds). Only RUNNING runs look at their series."""
    return (
        f"(CASE WHEN r.status <> {RUNNING} THEN r.status"
        f" WHEN {LAST_SEEN} < {cutoff} THEN {UNRESPONSIVE}::smallint ELSE r.status END)"
    )


# The description of run `r`: its `mlflow.note.content` tag (MLflow's run description), a
# lookup in the (run_pk, key) primary key of run_tags.
DESCRIPTION_TAG = "mlflow.note.content"
DESCRIPTION = (
    "coalesce((SELECT dt.value FROM run_tags dt"  # noqa: S608 - constants only
    f" WHERE dt.run_pk = r.run_pk AND dt.key = '{DESCRIPTION_TAG}'), '')"
)
# The run id of run `r`'s parent (NULL for a root run).
PARENT_RUN_ID = "(SELECT pr.run_id FROM runs pr WHERE pr.run_pk = r.parent_run_pk)"
# Whether run `r` has an active child (an index probe of runs_parent_start_idx). OFFSET 0
# keeps PostgreSQL from planning it as a hashed subplan, which reads every active run of
# the database once per query: it chose that for searches estimated to pass a few hundred
# rows to the sort, costing 12-20 ms per search over 100k runs for a page of 100.
HAS_CHILDREN = (
    "EXISTS (SELECT 1 FROM runs cr WHERE cr.parent_run_pk = r.run_pk"  # noqa: S608
    f" AND cr.lifecycle_stage = {ACTIVE} OFFSET 0)"
)
# RunSourceType names by number, for search (`attributes.source_type = 'JOB'`).
SOURCE_TYPES = ("", "JOB", "NOTEBOOK", "CONTAINER", "PROJECT", "LOCAL")
SOURCE_TYPE = (
    "(ARRAY[" + ",".join(f"'{t}'" for t in SOURCE_TYPES) + "])[coalesce(r.source_type, 0) + 1]"
)
# The columns migration 0011 leaves NULL where they are empty, as read.
EXTERNAL_URL = "coalesce(r.external_url, '')"
SOURCE_ID = "coalesce(r.source_id, '')"
DEPTH = "coalesce(cardinality(r.path), 0)"


def duration_sql(now: str) -> str:
    """SQL for run `r`'s duration in seconds: end minus start once it has an end time, the
    bigint placeholder `now` minus start while it is RUNNING (as stored: UNRESPONSIVE
    included), else NULL."""
    return (
        "(CASE WHEN r.end_time IS NOT NULL THEN (r.end_time - r.start_time)::float8 / 1000"
        f" WHEN r.status = {RUNNING} THEN ({now} - r.start_time)::float8 / 1000 END)"
    )


def info_columns(cutoff: str, now: str) -> str:
    """The info columns of run `r` as read (with run_pk): the status derived against the
    liveness cutoff placeholder `cutoff`, last_seen_time, the hierarchy and descriptive
    fields, and the duration against the placeholder `now` (both bigint milliseconds)."""
    return f"""
    r.run_pk, r.run_id, r.run_name, r.experiment_id, r.user_id,
    {status_sql(cutoff)} AS status, r.start_time, r.end_time, r.artifact_uri,
    r.lifecycle_stage, {LAST_SEEN} AS last_seen_time, {PARENT_RUN_ID} AS parent_run_id,
    {HAS_CHILDREN} AS has_children, {DESCRIPTION} AS description,
    {EXTERNAL_URL} AS external_url, coalesce(r.source_type, 0) AS source_type,
    {SOURCE_ID} AS source_id, {duration_sql(now)} AS duration, r.deleted_time,
    {DEPTH} AS depth"""


INSERT = """
INSERT INTO runs (run_id, experiment_id, run_name, user_id, status, start_time, artifact_uri,
                  parent_run_pk, path, heartbeat_ms, external_url, source_type, source_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
RETURNING run_pk"""
# The f-strings below splice in constant SQL only, never user input: `now` and the
# liveness cutoff are bind parameters.
GET_INFO = f"SELECT {info_columns('$2::bigint', '$3::bigint')} FROM runs r WHERE r.run_id = $1"  # noqa: S608
# Every write to a run first takes this lock: writers of one run queue here in one order, so
# concurrent batches cannot deadlock on the rows below it, and a param's check-then-insert
# is race-free across servers.
LOCK = """
SELECT r.run_pk, r.experiment_id, r.lifecycle_stage, e.lifecycle_stage AS experiment_stage,
       r.parent_run_pk
FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id
WHERE r.run_id = $1
FOR NO KEY UPDATE OF r"""
REF = """
SELECT r.run_pk, r.experiment_id, r.lifecycle_stage, coalesce(r.path, '{}') AS path
FROM runs r WHERE r.run_id = $1"""
# Setting a run RUNNING (resuming it) is a sign of life: the run is not UNRESPONSIVE
# the moment it is resumed.
UPDATE = f"""
UPDATE runs r SET
    status = COALESCE($2, r.status),
    end_time = COALESCE($3, r.end_time),
    run_name = COALESCE($4, r.run_name),
    heartbeat_ms = CASE WHEN $2::smallint = {RUNNING}
                        THEN greatest(r.heartbeat_ms, $5::bigint) ELSE r.heartbeat_ms END,
    external_url = CASE WHEN $7::text IS NULL THEN r.external_url ELSE nullif($7, '') END,
    source_type = CASE WHEN $8::smallint IS NULL THEN r.source_type ELSE nullif($8, 0) END,
    source_id = CASE WHEN $9::text IS NULL THEN r.source_id ELSE nullif($9, '') END
WHERE r.run_pk = $1
RETURNING {info_columns("$6::bigint", "$5::bigint")}"""  # noqa: S608
HEARTBEAT = "UPDATE runs SET heartbeat_ms = greatest(heartbeat_ms, $2) WHERE run_pk = $1"
SET_NAME = "UPDATE runs SET run_name = $2 WHERE run_pk = $1"
SET_STAGE = """
UPDATE runs SET lifecycle_stage = $2::smallint,
    deleted_time = CASE WHEN $2::smallint = 2 THEN $3::bigint END,
    deleted_with_experiment = false
WHERE run_pk = $1"""
DELETE_WITH_EXPERIMENT = """
UPDATE runs SET lifecycle_stage = 2, deleted_time = $2, deleted_with_experiment = true
WHERE experiment_id = $1 AND lifecycle_stage = 1"""
RESTORE_WITH_EXPERIMENT = """
UPDATE runs SET lifecycle_stage = 1, deleted_time = NULL, deleted_with_experiment = false
WHERE experiment_id = $1 AND lifecycle_stage = 2 AND deleted_with_experiment"""
DELETE_MANY = """
WITH victims AS (
    SELECT run_pk FROM runs
    WHERE experiment_id = $1 AND lifecycle_stage = 1 AND start_time <= $2
    ORDER BY start_time, run_pk
    LIMIT $3
    FOR NO KEY UPDATE
)
UPDATE runs r SET lifecycle_stage = 2, deleted_time = $4, deleted_with_experiment = false
FROM victims v WHERE r.run_pk = v.run_pk"""
RESTORE_MANY = """
WITH chosen AS (
    SELECT run_pk FROM runs
    WHERE experiment_id = $1 AND lifecycle_stage = 2 AND deleted_time >= $2
    ORDER BY deleted_time, run_pk
    LIMIT $3
    FOR NO KEY UPDATE
)
UPDATE runs r SET lifecycle_stage = 1, deleted_time = NULL, deleted_with_experiment = false
FROM chosen c WHERE r.run_pk = c.run_pk"""

PARAMS_OF = """
SELECT key, value, coalesce(type, 0) AS type FROM params
WHERE run_pk = $1 AND key = ANY($2::text[])"""
# Params, tags and series carry their run's experiment (migration 0013), which the search
# indexes lead with; a run never changes experiment, so the copy stays right.
RUN_EXPERIMENT = "(SELECT x.experiment_id FROM runs x WHERE x.run_pk = $1)"
INSERT_PARAMS = f"""
INSERT INTO params (run_pk, experiment_id, key, value, type, number)
SELECT $1, {RUN_EXPERIMENT}, k, v, nullif(t, 0), n
FROM unnest($2::text[], $3::text[], $4::smallint[], $5::numeric[]) AS p(k, v, t, n)
ON CONFLICT (run_pk, key) DO NOTHING"""  # noqa: S608 - a constant subquery
UPSERT_TAGS = f"""
INSERT INTO run_tags (run_pk, experiment_id, key, value)
SELECT $1, {RUN_EXPERIMENT}, k, v FROM unnest($2::text[], $3::text[]) AS t(k, v)
ON CONFLICT (run_pk, key) DO UPDATE SET value = EXCLUDED.value"""  # noqa: S608
DELETE_TAG = "DELETE FROM run_tags WHERE run_pk = $1 AND key = $2"
TAG_VALUE = "SELECT value FROM run_tags WHERE run_pk = $1 AND key = $2"

LOAD_PARAMS = """
SELECT run_pk, key, value, coalesce(type, 0) AS type FROM params
WHERE run_pk = ANY($1::bigint[])
ORDER BY run_pk, key"""
LOAD_TAGS = """
SELECT run_pk, key, value FROM run_tags WHERE run_pk = ANY($1::bigint[]) ORDER BY run_pk, key"""


async def insert(
    conn: Connection,
    *,
    run_id: str,
    experiment_id: int,
    run_name: str,
    user_id: str,
    status: int,
    start_time: int,
    artifact_uri: str,
    parent_run_pk: int | None,
    path: Sequence[int],
    now: int,
    external_url: str,
    source: tuple[int, str],
) -> int:
    """Inserts a run, heard from at `now` (the server's time), under its ancestors `path`
    (root first, ending with the parent); returns its internal key."""
    run_pk: int = await conn.fetchval(
        INSERT,
        run_id,
        experiment_id,
        run_name,
        user_id,
        status,
        start_time,
        artifact_uri,
        parent_run_pk,
        list(path) or None,
        now,
        external_url or None,
        source[0] or None,
        source[1] or None,
    )
    return run_pk


async def get_info(conn: Connection, run_id: str, cutoff: int, now: int) -> asyncpg.Record | None:
    """The run's info columns (with run_pk), its status derived against the liveness
    `cutoff` and its duration against `now` (ms since the epoch), or None."""
    return await conn.fetchrow(GET_INFO, run_id, cutoff, now)


async def lock(conn: Connection, run_id: str) -> asyncpg.Record | None:
    """Locks the run for a write; returns run_pk, experiment_id and both lifecycle stages."""
    return await conn.fetchrow(LOCK, run_id)


# Terminal statuses: FINISHED, FAILED, KILLED.
FINISHED_STATUSES = (3, 4, 5)


async def finished(conn: Connection, run_pk: int) -> bool:
    """Whether the run has ended (FINISHED, FAILED or KILLED)."""
    status = await conn.fetchval("SELECT status FROM runs WHERE run_pk = $1", run_pk)
    return status in FINISHED_STATUSES


async def ref(conn: Connection, run_id: str) -> asyncpg.Record | None:
    """The run's key, experiment and lifecycle stage, without a lock."""
    return await conn.fetchrow(REF, run_id)


async def update(
    conn: Connection,
    run_pk: int,
    status: int | None,
    end_time: int | None,
    run_name: str | None,
    *,
    now: int,
    cutoff: int,
    external_url: str | None = None,
    source: tuple[int, str] | None = None,
) -> asyncpg.Record:
    """Changes the given fields (None leaves one as it is; RUNNING also records `now` as a
    sign of life); returns the run's info, its status derived against the liveness
    `cutoff`."""
    source_type, source_id = source if source is not None else (None, None)
    row = await conn.fetchrow(
        UPDATE,
        run_pk,
        status,
        end_time,
        run_name,
        now,
        cutoff,
        external_url,
        source_type,
        source_id,
    )
    assert row is not None  # the caller holds the run's lock
    return row


async def heartbeat(conn: Connection, run_pk: int, now: int) -> None:
    """Records that the server heard from the run at `now` (never moving it back)."""
    await conn.execute(HEARTBEAT, run_pk, now)


async def set_name(conn: Connection, run_pk: int, run_name: str) -> None:
    """Renames the run."""
    await conn.execute(SET_NAME, run_pk, run_name)


async def set_stage(conn: Connection, run_pk: int, stage: int, now: int) -> None:
    """Moves one run to a lifecycle stage."""
    await conn.execute(SET_STAGE, run_pk, stage, now)


async def delete_with_experiment(conn: Connection, experiment_id: int, now: int) -> None:
    """Deletes the experiment's active runs, marking them as deleted with it."""
    await conn.execute(DELETE_WITH_EXPERIMENT, experiment_id, now)


async def restore_with_experiment(conn: Connection, experiment_id: int) -> None:
    """Restores the runs that were deleted with the experiment."""
    await conn.execute(RESTORE_WITH_EXPERIMENT, experiment_id)


async def delete_many(
    conn: Connection, experiment_id: int, max_start_time: int, max_runs: int, now: int
) -> int:
    """Deletes up to `max_runs` active runs started at or before a time; returns how many."""
    status: str = await conn.execute(DELETE_MANY, experiment_id, max_start_time, max_runs, now)
    return int(status.split()[-1])


async def restore_many(
    conn: Connection, experiment_id: int, min_deleted_time: int, max_runs: int
) -> int:
    """Restores up to `max_runs` runs deleted at or after a time; returns how many."""
    status: str = await conn.execute(RESTORE_MANY, experiment_id, min_deleted_time, max_runs)
    return int(status.split()[-1])


async def params_of(
    conn: Connection, run_pk: int, keys: Sequence[str]
) -> dict[str, tuple[str, int]]:
    """The stored (value, type) of the given param keys (absent keys are left out)."""
    return {r["key"]: (r["value"], r["type"]) for r in await conn.fetch(PARAMS_OF, run_pk, keys)}


async def insert_params(
    conn: Connection,
    run_pk: int,
    keys: Sequence[str],
    values: Sequence[str],
    types: Sequence[int],
    numbers: Sequence[Decimal | None],
) -> None:
    """Inserts params whose keys are not stored yet, with their types and the exact
    numbers of INT and DOUBLE ones (None for the others)."""
    await conn.execute(INSERT_PARAMS, run_pk, keys, values, types, numbers)


async def upsert_tags(
    conn: Connection, run_pk: int, keys: Sequence[str], values: Sequence[str]
) -> None:
    """Creates or replaces tags; keys must be distinct."""
    await conn.execute(UPSERT_TAGS, run_pk, keys, values)


async def delete_tag(conn: Connection, run_pk: int, key: str) -> bool:
    """Deletes a tag; False if there was none."""
    status: str = await conn.execute(DELETE_TAG, run_pk, key)
    return status != "DELETE 0"


async def tag_value(conn: Connection, run_pk: int, key: str) -> str | None:
    """The value of one tag of the run, or None."""
    value: str | None = await conn.fetchval(TAG_VALUE, run_pk, key)
    return value


async def load_params(conn: Connection, run_pks: Sequence[int]) -> list[asyncpg.Record]:
    """Params of many runs in one query: (run_pk, key, value, type) ordered by run and
    key."""
    return list(await conn.fetch(LOAD_PARAMS, run_pks))


async def load_tags(conn: Connection, run_pks: Sequence[int]) -> list[asyncpg.Record]:
    """Tags of many runs in one query: (run_pk, key, value) ordered by run and key."""
    return list(await conn.fetch(LOAD_TAGS, run_pks))
