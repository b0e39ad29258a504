"""SQL for logged models: their rows, params, tags and latest metrics per dataset, and the
models runs consume and produce."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from trackd.server.store.pool import Connection

ACTIVE = 1
DELETED = 2

PENDING = 1
READY = 2
UPLOAD_FAILED = 3

COLUMNS = """
    m.model_pk, m.model_id, m.experiment_id, m.name, m.model_type, m.source_run_id, m.status,
    m.status_message, m.creation_timestamp, m.last_updated_timestamp, m.artifact_uri,
    m.lifecycle_stage"""

INSERT = """
INSERT INTO logged_models (model_id, experiment_id, name, model_type, source_run_id, status,
                           status_message, creation_timestamp, last_updated_timestamp,
                           artifact_uri)
VALUES ($1, $2, $3, $4, $5, $6, '', $7, $7, $8)
RETURNING model_pk"""
# The f-strings below splice in the constant column list only, never user input.
GET = f"SELECT {COLUMNS} FROM logged_models m WHERE m.model_id = $1"  # noqa: S608
# Every write to a model first takes this lock, so that writers of one model queue in one
# place (a param's check-then-insert is race-free across servers).
LOCK = """
SELECT m.model_pk, m.model_id, m.experiment_id, m.status, m.lifecycle_stage,
       e.lifecycle_stage AS experiment_stage
FROM logged_models m JOIN experiments e ON e.experiment_id = m.experiment_id
WHERE m.model_id = $1
FOR NO KEY UPDATE OF m"""
REFS = """
SELECT model_pk, model_id, experiment_id, lifecycle_stage FROM logged_models
WHERE model_id = ANY($1::text[])"""
FINALIZE = """
UPDATE logged_models SET status = $2, status_message = $3, last_updated_timestamp = $4
WHERE model_pk = $1"""
DELETE = """
UPDATE logged_models SET lifecycle_stage = 2, deleted_time = $2, last_updated_timestamp = $2
WHERE model_pk = $1"""
TOUCH = "UPDATE logged_models SET last_updated_timestamp = $2 WHERE model_pk = $1"

PARAMS_OF = """
SELECT key, value FROM logged_model_params WHERE model_pk = $1 AND key = ANY($2::text[])"""
INSERT_PARAMS = """
INSERT INTO logged_model_params (model_pk, key, value)
SELECT $1, k, v FROM unnest($2::text[], $3::text[]) AS t(k, v)
ON CONFLICT (model_pk, key) DO NOTHING"""
UPSERT_TAGS = """
INSERT INTO logged_model_tags (model_pk, key, value)
SELECT $1, k, v FROM unnest($2::text[], $3::text[]) AS t(k, v)
ON CONFLICT (model_pk, key) DO UPDATE SET value = EXCLUDED.value"""
DELETE_TAG = "DELETE FROM logged_model_tags WHERE model_pk = $1 AND key = $2"

LOAD_PARAMS = """
SELECT model_pk, key, value FROM logged_model_params WHERE model_pk = ANY($1::bigint[])
ORDER BY model_pk, key"""
LOAD_TAGS = """
SELECT model_pk, key, value FROM logged_model_tags WHERE model_pk = ANY($1::bigint[])
ORDER BY model_pk, key"""
LOAD_METRICS = """
SELECT x.model_pk, x.key, x.dataset_name, x.dataset_digest, x.latest_step, x.latest_ts,
       x.latest_value, r.run_id
FROM logged_model_metrics x JOIN runs r ON r.run_pk = x.run_pk
WHERE x.model_pk = ANY($1::bigint[])
ORDER BY x.model_pk, x.key, x.dataset_name, x.dataset_digest"""

# Folds each (model, key, dataset)'s greatest new point into its latest one: a new row, or
# a replacement when (step, timestamp, value) is greater (NaN above every number, as
# PostgreSQL orders float8). Rows go in key order, the one order every writer locks them in.
UPSERT_METRICS = """
INSERT INTO logged_model_metrics AS x (model_pk, key, dataset_name, dataset_digest,
                                       latest_step, latest_ts, latest_value, run_pk)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                     $6::bigint[], $7::float8[], $8::bigint[])
ORDER BY 1, 2, 3, 4
ON CONFLICT (model_pk, key, dataset_name, dataset_digest) DO UPDATE SET
    latest_step = EXCLUDED.latest_step, latest_ts = EXCLUDED.latest_ts,
    latest_value = EXCLUDED.latest_value, run_pk = EXCLUDED.run_pk
WHERE (EXCLUDED.latest_step, EXCLUDED.latest_ts, EXCLUDED.latest_value)
    > (x.latest_step, x.latest_ts, x.latest_value)"""

INSERT_RUN_INPUTS = """
INSERT INTO run_model_inputs (run_pk, model_pk)
SELECT $1, m FROM unnest($2::bigint[]) AS m ORDER BY m
ON CONFLICT DO NOTHING"""
INSERT_RUN_OUTPUTS = """
INSERT INTO run_model_outputs (run_pk, model_pk, step)
SELECT $1, m, s FROM unnest($2::bigint[], $3::bigint[]) AS t(m, s) ORDER BY m, s
ON CONFLICT DO NOTHING"""
# Deleted models appear nowhere, not even among a run's inputs and outputs.
LOAD_RUN_INPUTS = """
SELECT i.run_pk, m.model_id
FROM run_model_inputs i JOIN logged_models m ON m.model_pk = i.model_pk
WHERE i.run_pk = ANY($1::bigint[]) AND m.lifecycle_stage = 1
ORDER BY i.run_pk, m.model_id"""
LOAD_RUN_OUTPUTS = """
SELECT o.run_pk, m.model_id, o.step
FROM run_model_outputs o JOIN logged_models m ON m.model_pk = o.model_pk
WHERE o.run_pk = ANY($1::bigint[]) AND m.lifecycle_stage = 1
ORDER BY o.run_pk, o.step, m.model_id"""


async def insert(
    conn: Connection,
    *,
    model_id: str,
    experiment_id: int,
    name: str,
    model_type: str,
    source_run_id: str | None,
    status: int,
    now: int,
    artifact_uri: str,
) -> int:
    """Inserts a model; returns its internal key."""
    model_pk: int = await conn.fetchval(
        INSERT,
        model_id,
        experiment_id,
        name,
        model_type,
        source_run_id,
        status,
        now,
        artifact_uri,
    )
    return model_pk


async def get(conn: Connection, model_id: str) -> asyncpg.Record | None:
    """The model's columns (with model_pk), or None."""
    return await conn.fetchrow(GET, model_id)


async def lock(conn: Connection, model_id: str) -> asyncpg.Record | None:
    """Locks the model for a write; returns its key, experiment, status and both lifecycle
    stages (the model's and its experiment's)."""
    return await conn.fetchrow(LOCK, model_id)


async def refs(conn: Connection, model_ids: Sequence[str]) -> dict[str, asyncpg.Record]:
    """model_pk, experiment_id and lifecycle_stage of the models that exist among
    `model_ids`, by id, without a lock."""
    rows = await conn.fetch(REFS, sorted(set(model_ids)))
    return {r["model_id"]: r for r in rows}


async def finalize(
    conn: Connection, model_pk: int, status: int, status_message: str, now: int
) -> None:
    """Sets the model's status and message."""
    await conn.execute(FINALIZE, model_pk, status, status_message, now)


async def delete(conn: Connection, model_pk: int, now: int) -> None:
    """Soft-deletes the model."""
    await conn.execute(DELETE, model_pk, now)


async def touch(conn: Connection, model_pk: int, now: int) -> None:
    """Sets the model's last update time."""
    await conn.execute(TOUCH, model_pk, now)


async def params_of(conn: Connection, model_pk: int, keys: Sequence[str]) -> dict[str, str]:
    """The stored values of the given param keys (absent keys are left out)."""
    return {r["key"]: r["value"] for r in await conn.fetch(PARAMS_OF, model_pk, keys)}


async def insert_params(
    conn: Connection, model_pk: int, keys: Sequence[str], values: Sequence[str]
) -> None:
    """Inserts params whose keys are not stored yet."""
    await conn.execute(INSERT_PARAMS, model_pk, keys, values)


async def upsert_tags(
    conn: Connection, model_pk: int, keys: Sequence[str], values: Sequence[str]
) -> None:
    """Creates or replaces tags; keys must be distinct."""
    await conn.execute(UPSERT_TAGS, model_pk, keys, values)


async def delete_tag(conn: Connection, model_pk: int, key: str) -> bool:
    """Deletes a tag; False if there was none."""
    status: str = await conn.execute(DELETE_TAG, model_pk, key)
    return status != "DELETE 0"


async def load_params(conn: Connection, model_pks: Sequence[int]) -> list[asyncpg.Record]:
    """Params of many models: (model_pk, key, value) ordered by model and key."""
    return list(await conn.fetch(LOAD_PARAMS, model_pks))


async def load_tags(conn: Connection, model_pks: Sequence[int]) -> list[asyncpg.Record]:
    """Tags of many models: (model_pk, key, value) ordered by model and key."""
    return list(await conn.fetch(LOAD_TAGS, model_pks))


async def load_metrics(conn: Connection, model_pks: Sequence[int]) -> list[asyncpg.Record]:
    """Latest metrics of many models with the run that logged each, ordered by model, key,
    dataset name and digest."""
    return list(await conn.fetch(LOAD_METRICS, model_pks))


async def upsert_metrics(
    conn: Connection,
    rows: Sequence[tuple[int, str, str, str, int, int, float, int]],
) -> None:
    """Folds points (model_pk, key, dataset_name, dataset_digest, step, ts, value, run_pk),
    one per (model, key, dataset), into the models' latest metrics."""
    await conn.execute(UPSERT_METRICS, *([list(c) for c in zip(*rows, strict=True)]))


async def add_run_inputs(conn: Connection, run_pk: int, model_pks: Sequence[int]) -> None:
    """Records that the run consumed the models (again is a no-op)."""
    await conn.execute(INSERT_RUN_INPUTS, run_pk, sorted(set(model_pks)))


async def add_run_outputs(
    conn: Connection, run_pk: int, outputs: Sequence[tuple[int, int]]
) -> None:
    """Records that the run produced the models (model_pk, step) (again is a no-op)."""
    unique = sorted(set(outputs))
    await conn.execute(INSERT_RUN_OUTPUTS, run_pk, [m for m, _ in unique], [s for _, s in unique])


async def load_run_inputs(conn: Connection, run_pks: Sequence[int]) -> list[asyncpg.Record]:
    """Live models many runs consumed: (run_pk, model_id) ordered by run and model id."""
    return list(await conn.fetch(LOAD_RUN_INPUTS, run_pks))


async def load_run_outputs(conn: Connection, run_pks: Sequence[int]) -> list[asyncpg.Record]:
    """Live models many runs produced: (run_pk, model_id, step) ordered by run, step and
    model id."""
    return list(await conn.fetch(LOAD_RUN_OUTPUTS, run_pks))
