"""SQL for datasets (once per experiment by name and digest), the datasets runs consume
with the tags of each use, and the experiment-wide dataset listing."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from trackd.server.store.pool import Connection

CONTEXT_TAG = "mlflow.data.context"

# Creates the datasets not stored yet, in (name, digest) order so that concurrent creators
# meet the unique index in one order. The ids are read by a second statement: in READ
# COMMITTED that one sees a dataset another transaction committed while this one waited on
# it, which a CTE's own snapshot would not.
INSERT_DATASETS = """
INSERT INTO datasets (experiment_id, name, digest, source_type, source, schema, profile)
SELECT $1, n, d, st, s, sc, p
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
    AS t(n, d, st, s, sc, p)
ORDER BY n, d
ON CONFLICT (experiment_id, name, digest) DO NOTHING"""
DATASET_PKS = """
SELECT d.dataset_pk, d.name, d.digest
FROM datasets d JOIN unnest($2::text[], $3::text[]) AS w(n, dg) ON d.name = w.n AND d.digest = w.dg
WHERE d.experiment_id = $1"""
INSERT_INPUTS = """
INSERT INTO run_dataset_inputs (run_pk, dataset_pk)
SELECT $1, d FROM unnest($2::bigint[]) AS d ORDER BY d
ON CONFLICT DO NOTHING"""
UPSERT_INPUT_TAGS = """
INSERT INTO run_dataset_input_tags (run_pk, dataset_pk, key, value)
SELECT $1, d, k, v FROM unnest($2::bigint[], $3::text[], $4::text[]) AS t(d, k, v)
ORDER BY d, k
ON CONFLICT (run_pk, dataset_pk, key) DO UPDATE SET value = EXCLUDED.value"""

_INPUT_TAGS = """
    COALESCE((SELECT array_agg(t.key ORDER BY t.key) FROM run_dataset_input_tags t
              WHERE t.run_pk = i.run_pk AND t.dataset_pk = i.dataset_pk), '{}') AS tag_keys,
    COALESCE((SELECT array_agg(t.value ORDER BY t.key) FROM run_dataset_input_tags t
              WHERE t.run_pk = i.run_pk AND t.dataset_pk = i.dataset_pk), '{}') AS tag_values"""
# The f-strings below splice in constant fragments only, never user input.
LOAD_INPUTS = f"""
SELECT i.run_pk, d.name, d.digest, d.source_type, d.source, d.schema, d.profile, {_INPUT_TAGS}
FROM run_dataset_inputs i JOIN datasets d ON d.dataset_pk = i.dataset_pk
WHERE i.run_pk = ANY($1::bigint[])
ORDER BY i.run_pk, d.name, d.digest"""  # noqa: S608
# The same without schema and profile (up to 1 MiB each), for search pages.
LOAD_INPUTS_BRIEF = f"""
SELECT i.run_pk, d.name, d.digest, d.source_type, d.source, '' AS schema, '' AS profile,
       {_INPUT_TAGS}
FROM run_dataset_inputs i JOIN datasets d ON d.dataset_pk = i.dataset_pk
WHERE i.run_pk = ANY($1::bigint[])
ORDER BY i.run_pk, d.name, d.digest"""  # noqa: S608

# Datasets used by active runs of experiments, once per context, keyset-paged.
_SUMMARIES = """
SELECT DISTINCT d.experiment_id, d.name, d.digest, COALESCE(t.value, '') AS context
FROM datasets d
JOIN run_dataset_inputs i ON i.dataset_pk = d.dataset_pk
JOIN runs r ON r.run_pk = i.run_pk AND r.lifecycle_stage = 1
LEFT JOIN run_dataset_input_tags t
    ON t.run_pk = i.run_pk AND t.dataset_pk = i.dataset_pk AND t.key = $2
WHERE d.experiment_id = ANY($1::bigint[])"""
SUMMARIES_FIRST = (
    _SUMMARIES
    + """
ORDER BY 1, 2, 3, 4 LIMIT $3"""
)
SUMMARIES_AFTER = (
    _SUMMARIES
    + """
    AND (d.experiment_id, d.name, d.digest, COALESCE(t.value, ''))
        > ($4::bigint, $5::text, $6::text, $7::text)
ORDER BY 1, 2, 3, 4 LIMIT $3"""
)


async def ensure_datasets(
    conn: Connection,
    experiment_id: int,
    rows: Sequence[tuple[str, str, str, str, str, str]],
) -> dict[tuple[str, str], int]:
    """Ids of the experiment's datasets (name, digest, source_type, source, schema, profile),
    creating those not stored yet; a stored one keeps its fields. Keyed by (name, digest)."""
    columns = [list(c) for c in zip(*rows, strict=True)]
    await conn.execute(INSERT_DATASETS, experiment_id, *columns)
    found = await conn.fetch(DATASET_PKS, experiment_id, columns[0], columns[1])
    return {(r["name"], r["digest"]): r["dataset_pk"] for r in found}


async def add_inputs(
    conn: Connection,
    run_pk: int,
    dataset_pks: Sequence[int],
    tags: Sequence[tuple[int, str, str]],
) -> None:
    """Records that the run consumed the datasets (again is a no-op) and upserts the tags
    (dataset_pk, key, value) of those uses; keys must be distinct per dataset."""
    await conn.execute(INSERT_INPUTS, run_pk, sorted(set(dataset_pks)))
    if tags:
        await conn.execute(
            UPSERT_INPUT_TAGS,
            run_pk,
            [t[0] for t in tags],
            [t[1] for t in tags],
            [t[2] for t in tags],
        )


async def load_inputs(
    conn: Connection, run_pks: Sequence[int], *, brief: bool = False
) -> list[asyncpg.Record]:
    """Dataset inputs of many runs with their tag_keys/tag_values arrays, ordered by run,
    name and digest; `brief` leaves schema and profile empty."""
    return list(await conn.fetch(LOAD_INPUTS_BRIEF if brief else LOAD_INPUTS, run_pks))


async def summaries(
    conn: Connection,
    experiment_ids: Sequence[int],
    after: tuple[int, str, str, str] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Up to `limit` (experiment_id, name, digest, context) used by active runs of the
    experiments, in that order, strictly after `after`."""
    if after is None:
        return list(await conn.fetch(SUMMARIES_FIRST, list(experiment_ids), CONTEXT_TAG, limit))
    return list(await conn.fetch(SUMMARIES_AFTER, list(experiment_ids), CONTEXT_TAG, limit, *after))
