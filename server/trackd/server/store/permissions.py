"""SQL for permissions: a principal's effective level on an experiment (workspace role or
grant, the highest), the experiments it may see, and the grants of an experiment."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from trackd.server.store.identity import workspace_id as workspace_id  # one query, two users
from trackd.server.store.pool import Connection

# The highest workspace role or grant any of the subjects ($2) holds, per experiment;
# 0 for none. Each subquery is one probe of a primary key.
_LEVEL = """
    GREATEST(
        COALESCE((SELECT max(w.role) FROM workspace_roles w
                  WHERE w.workspace_id = e.workspace_id AND w.subject = ANY($2::text[])), 0),
        COALESCE((SELECT max(g.level) FROM experiment_grants g
                  WHERE g.experiment_id = e.experiment_id AND g.subject = ANY($2::text[])), 0)
    )::int AS level"""
# The f-strings below splice in the constant expression above only, never user input.
EXPERIMENT_LEVEL = f"""
SELECT e.experiment_id, {_LEVEL} FROM experiments e WHERE e.experiment_id = $1"""  # noqa: S608
RUN_LEVEL = f"""
SELECT e.experiment_id, {_LEVEL}
FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id
WHERE r.run_id = $1::uuid"""  # noqa: S608
MODEL_LEVEL = f"""
SELECT e.experiment_id, {_LEVEL}
FROM logged_models m JOIN experiments e ON e.experiment_id = m.experiment_id
WHERE m.model_id = $1"""  # noqa: S608
# A predicate on `e` (an experiments row): some subject of $N holds a role in its
# workspace or a grant on it. {n} is the parameter number of the subjects array.
VISIBLE = """(
    EXISTS (SELECT 1 FROM workspace_roles w
            WHERE w.workspace_id = e.workspace_id AND w.subject = ANY(${n}::text[]))
    OR EXISTS (SELECT 1 FROM experiment_grants g
               WHERE g.experiment_id = e.experiment_id AND g.subject = ANY(${n}::text[])))"""
VISIBLE_AMONG = f"""
SELECT e.experiment_id FROM experiments e
WHERE e.experiment_id = ANY($1::bigint[]) AND {VISIBLE.format(n=2)}
ORDER BY e.experiment_id"""  # noqa: S608
WORKSPACE_LEVEL = """
SELECT COALESCE(max(role), 0)::int FROM workspace_roles
WHERE workspace_id = $1 AND subject = ANY($2::text[])"""
GRANTS = """
SELECT subject, level FROM experiment_grants WHERE experiment_id = $1 ORDER BY subject"""
ROLES = """
SELECT r.subject, r.role, w.name AS workspace
FROM experiments e JOIN workspace_roles r ON r.workspace_id = e.workspace_id
JOIN workspaces w ON w.workspace_id = e.workspace_id
WHERE e.experiment_id = $1 ORDER BY r.subject"""
CLEAR_GRANTS = "DELETE FROM experiment_grants WHERE experiment_id = $1"
UPSERT_GRANTS = """
INSERT INTO experiment_grants (experiment_id, subject, level)
SELECT $1, s, l FROM unnest($2::text[], $3::smallint[]) AS t(s, l)
ON CONFLICT (experiment_id, subject) DO UPDATE SET level = EXCLUDED.level"""


async def experiment_level(
    conn: Connection, experiment_id: int, subjects: Sequence[str]
) -> asyncpg.Record | None:
    """(experiment_id, level) of the experiment for the subjects, or None if there is none."""
    return await conn.fetchrow(EXPERIMENT_LEVEL, experiment_id, list(subjects))


async def run_level(
    conn: Connection, run_id: str, subjects: Sequence[str]
) -> asyncpg.Record | None:
    """(experiment_id, level) of the run's experiment, or None if there is no such run."""
    return await conn.fetchrow(RUN_LEVEL, run_id, list(subjects))


async def model_level(
    conn: Connection, model_id: str, subjects: Sequence[str]
) -> asyncpg.Record | None:
    """(experiment_id, level) of the logged model's experiment, or None if there is none."""
    return await conn.fetchrow(MODEL_LEVEL, model_id, list(subjects))


async def visible_among(
    conn: Connection, experiment_ids: Sequence[int], subjects: Sequence[str]
) -> list[int]:
    """The experiments of `experiment_ids` that exist and that the subjects may see."""
    rows = await conn.fetch(VISIBLE_AMONG, list(experiment_ids), list(subjects))
    return [r["experiment_id"] for r in rows]


async def workspace_level(conn: Connection, workspace: int, subjects: Sequence[str]) -> int:
    """The highest role the subjects hold in the workspace; 0 for none."""
    value: int = await conn.fetchval(WORKSPACE_LEVEL, workspace, list(subjects))
    return value


async def grants(conn: Connection, experiment_id: int) -> list[asyncpg.Record]:
    """(subject, level) of every grant on the experiment, by subject."""
    return list(await conn.fetch(GRANTS, experiment_id))


async def roles(conn: Connection, experiment_id: int) -> list[asyncpg.Record]:
    """(subject, role, workspace) of every role in the experiment's workspace."""
    return list(await conn.fetch(ROLES, experiment_id))


async def set_grants(
    conn: Connection,
    experiment_id: int,
    subjects: Sequence[str],
    levels: Sequence[int],
    *,
    replace: bool,
) -> None:
    """Adds or changes grants; with `replace`, removes every other grant first."""
    if replace:
        await conn.execute(CLEAR_GRANTS, experiment_id)
    if subjects:
        await conn.execute(UPSERT_GRANTS, experiment_id, list(subjects), list(levels))
