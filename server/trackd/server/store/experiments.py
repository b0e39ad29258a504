"""SQL for experiments and their tags."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from trackd.server.store import permissions
from trackd.server.store.pool import Connection

ACTIVE = 1
DELETED = 2

COLUMNS = """
    e.experiment_id, e.name, e.artifact_location, e.lifecycle_stage, e.creation_time,
    e.last_update_time, e.owner,
    (SELECT w.name FROM workspaces w WHERE w.workspace_id = e.workspace_id) AS workspace,
    COALESCE((SELECT array_agg(t.key ORDER BY t.key) FROM experiment_tags t
              WHERE t.experiment_id = e.experiment_id), '{}') AS tag_keys,
    COALESCE((SELECT array_agg(t.value ORDER BY t.key) FROM experiment_tags t
              WHERE t.experiment_id = e.experiment_id), '{}') AS tag_values"""

INSERT = """
INSERT INTO experiments (name, artifact_location, creation_time, last_update_time,
                         workspace_id, owner)
VALUES ($1, $2, $3, $3, $4, $5)
RETURNING experiment_id"""
SET_LOCATION = "UPDATE experiments SET artifact_location = $2 WHERE experiment_id = $1"
DEFAULT_LOCATION = """
UPDATE experiments SET artifact_location = $1 WHERE experiment_id = 0 AND artifact_location = ''"""
# The f-strings below splice in constant column lists only, never user input.
GET = f"SELECT {COLUMNS} FROM experiments e WHERE e.experiment_id = $1"  # noqa: S608
# Among the experiments the subjects ($2) may see; all of them when $2 is NULL (admins).
GET_BY_NAME = f"""
SELECT {COLUMNS} FROM experiments e
WHERE e.name = $1 AND ($2::text[] IS NULL OR {permissions.VISIBLE.format(n=2)})
ORDER BY e.lifecycle_stage, e.workspace_id, e.last_update_time DESC LIMIT 1"""  # noqa: S608
LOCK = """
SELECT experiment_id, name, lifecycle_stage, artifact_location FROM experiments
WHERE experiment_id = $1 FOR NO KEY UPDATE"""
STAGE = "SELECT lifecycle_stage, artifact_location FROM experiments WHERE experiment_id = $1"
RENAME = """
UPDATE experiments SET name = $2, last_update_time = $3 WHERE experiment_id = $1"""
SET_STAGE = """
UPDATE experiments SET lifecycle_stage = $2::smallint, last_update_time = $3::bigint,
    deleted_time = CASE WHEN $2::smallint = 2 THEN $3::bigint END
WHERE experiment_id = $1"""
TOUCH = "UPDATE experiments SET last_update_time = $2 WHERE experiment_id = $1"
UPSERT_TAGS = """
INSERT INTO experiment_tags (experiment_id, key, value)
SELECT $1, k, v FROM unnest($2::text[], $3::text[]) AS t(k, v)
ON CONFLICT (experiment_id, key) DO UPDATE SET value = EXCLUDED.value"""
DELETE_TAG = "DELETE FROM experiment_tags WHERE experiment_id = $1 AND key = $2"


async def insert(
    conn: Connection,
    name: str,
    artifact_location: str,
    now: int,
    tag_keys: Sequence[str],
    tag_values: Sequence[str],
    workspace_id: int = 1,
    owner: str = "",
) -> int:
    """Inserts an experiment with its tags into a workspace; returns its id. An artifact
    location of '' is filled in from `artifact_root` by the caller via set_location."""
    experiment_id: int = await conn.fetchval(
        INSERT, name, artifact_location, now, workspace_id, owner
    )
    if tag_keys:
        await conn.execute(UPSERT_TAGS, experiment_id, tag_keys, tag_values)
    return experiment_id


async def set_location(conn: Connection, experiment_id: int, location: str) -> None:
    """Sets the artifact location of an experiment."""
    await conn.execute(SET_LOCATION, experiment_id, location)


async def set_default_location(conn: Connection, location: str) -> None:
    """Gives the Default experiment its artifact location if it has none yet."""
    await conn.execute(DEFAULT_LOCATION, location)


async def get(conn: Connection, experiment_id: int) -> asyncpg.Record | None:
    """The experiment with its tags, or None."""
    return await conn.fetchrow(GET, experiment_id)


async def get_by_name(
    conn: Connection, name: str, subjects: Sequence[str] | None
) -> asyncpg.Record | None:
    """The experiment of that name the subjects may see (any for None), the active one
    first, then that of the lowest workspace id, or None."""
    return await conn.fetchrow(GET_BY_NAME, name, None if subjects is None else list(subjects))


async def lock(conn: Connection, experiment_id: int) -> asyncpg.Record | None:
    """Locks the experiment's row for a change and returns its state, or None."""
    return await conn.fetchrow(LOCK, experiment_id)


async def stage(conn: Connection, experiment_id: int) -> asyncpg.Record | None:
    """The experiment's lifecycle stage and artifact location, or None."""
    return await conn.fetchrow(STAGE, experiment_id)


async def rename(conn: Connection, experiment_id: int, name: str, now: int) -> None:
    """Renames the experiment."""
    await conn.execute(RENAME, experiment_id, name, now)


async def set_stage(conn: Connection, experiment_id: int, stage: int, now: int) -> None:
    """Moves the experiment to a lifecycle stage."""
    await conn.execute(SET_STAGE, experiment_id, stage, now)


async def touch(conn: Connection, experiment_id: int, now: int) -> None:
    """Sets the experiment's last update time."""
    await conn.execute(TOUCH, experiment_id, now)


async def upsert_tags(
    conn: Connection, experiment_id: int, keys: Sequence[str], values: Sequence[str]
) -> None:
    """Creates or replaces tags; keys must be distinct."""
    await conn.execute(UPSERT_TAGS, experiment_id, keys, values)


async def delete_tag(conn: Connection, experiment_id: int, key: str) -> bool:
    """Deletes a tag; False if there was none."""
    status: str = await conn.execute(DELETE_TAG, experiment_id, key)
    return status != "DELETE 0"
