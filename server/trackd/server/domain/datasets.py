"""Rules for datasets: their limits, one stored dataset per (experiment, name, digest), the
tags of each use by a run, and the listing of an experiment's datasets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from trackd.server.domain import limits, paging, validation
from trackd.server.domain.auth import policy
from trackd.server.domain.validation import Violations
from trackd.server.errors import InvalidArgument
from trackd.server.store import datasets as store
from trackd.server.store.pool import Connection, Database

EXPERIMENT_IDS_MAX = 100
SEARCH_MAX_RESULTS_DEFAULT = 1000
SEARCH_MAX_RESULTS_MAX = 50000


@dataclass(frozen=True)
class DatasetInput:
    """One dataset a run consumed, as requested: the dataset's fields and the tags of the
    use."""

    name: str
    digest: str
    source_type: str
    source: str
    schema: str
    profile: str
    tags: Sequence[tuple[str, str]] = ()


@dataclass
class MergedInput:
    """A validated input: the dataset's fields as first given in the request, and the tags
    of every entry of the same (name, digest), the last value of a key winning."""

    dataset: DatasetInput
    tags: dict[str, str] = field(default_factory=dict)


def check_inputs(
    v: Violations, field_name: str, inputs: Sequence[DatasetInput]
) -> list[MergedInput]:
    """Validates dataset inputs (violations name `datasets[2].dataset.digest` or
    `datasets[2].tags[0].key`) and merges entries of the same (name, digest)."""
    v.count(field_name, len(inputs), max_count=limits.INPUTS_DATASETS_MAX)
    merged: dict[tuple[str, str], MergedInput] = {}
    for i, d in enumerate(inputs):
        path = f"{field_name}[{i}].dataset"
        ok = v.text(f"{path}.name", d.name, max_len=limits.DATASET_NAME_MAX, required=True)
        ok = (
            v.text(f"{path}.digest", d.digest, max_len=limits.DATASET_DIGEST_MAX, required=True)
            and ok
        )
        ok = (
            v.text(
                f"{path}.source_type",
                d.source_type,
                max_len=limits.DATASET_SOURCE_TYPE_MAX,
                required=True,
            )
            and ok
        )
        ok = (
            v.text(f"{path}.source", d.source, max_len=limits.DATASET_SOURCE_MAX, required=True)
            and ok
        )
        ok = v.text(f"{path}.schema", d.schema, max_len=limits.DATASET_SCHEMA_MAX) and ok
        ok = v.text(f"{path}.profile", d.profile, max_len=limits.DATASET_PROFILE_MAX) and ok
        tags_path = f"{field_name}[{i}].tags"
        ok = v.count(tags_path, len(d.tags), max_count=limits.INPUT_TAGS_MAX) and ok
        keys, values = validation.tags(v, tags_path, d.tags, value_max=limits.INPUT_TAG_VALUE_MAX)
        if not ok:
            continue
        entry = merged.setdefault((d.name, d.digest), MergedInput(d))
        entry.tags.update(zip(keys, values, strict=True))
    return list(merged.values())


async def add_inputs(
    conn: Connection, run_pk: int, experiment_id: int, inputs: Sequence[MergedInput]
) -> None:
    """Within a transaction holding the run's lock: stores the datasets the experiment does
    not hold yet and records the run's use of each, upserting the use's tags."""
    ids = await store.ensure_datasets(
        conn,
        experiment_id,
        [
            (
                m.dataset.name,
                m.dataset.digest,
                m.dataset.source_type,
                m.dataset.source,
                m.dataset.schema,
                m.dataset.profile,
            )
            for m in inputs
        ],
    )
    pks = [ids[(m.dataset.name, m.dataset.digest)] for m in inputs]
    tags = [(pk, k, val) for pk, m in zip(pks, inputs, strict=True) for k, val in m.tags.items()]
    await store.add_inputs(conn, run_pk, pks, tags)


class Datasets:
    """Dataset listing over a database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def search(
        self, experiment_ids: Sequence[str], max_results: int, page_token: str
    ) -> tuple[paging.Page[asyncpg.Record], str]:
        """One page of (experiment_id, name, digest, context) used by active runs of the
        experiments, in that order (a Page, which can also resume after any row), and the
        next page's token ('' on the last page). Raises InvalidArgument for bad ids, size or
        token."""
        eids = validation.experiment_ids(experiment_ids, maximum=EXPERIMENT_IDS_MAX)
        size = validation.page_size(
            max_results, default=SEARCH_MAX_RESULTS_DEFAULT, maximum=SEARCH_MAX_RESULTS_MAX
        )
        fingerprint = paging.query_fingerprint("datasets", eids)
        position = paging.decode(page_token, fingerprint)
        after = _position(position) if position is not None else None

        async def fetch(conn: Connection) -> list[asyncpg.Record]:
            # Only the experiments the caller may see (in this snapshot), as for runs.
            visible = await policy.visible_among(conn, eids)
            return await store.summaries(conn, visible, after, size + 1)

        rows = await self.db.read(fetch)
        more = len(rows) > size
        rows = rows[:size]

        def resume(index: int) -> str:
            row = rows[index]
            position = [row["experiment_id"], row["name"], row["digest"], row["context"]]
            return paging.encode(position, fingerprint)

        return paging.Page(rows, resume), resume(len(rows) - 1) if more else ""


def _position(position: list[object]) -> tuple[int, str, str, str]:
    if (
        len(position) != 4
        or not isinstance(position[0], int)
        or isinstance(position[0], bool)
        or not -(2**63) <= position[0] < 2**63
        or not all(isinstance(p, str) and _storable(p) for p in position[1:])
    ):
        raise InvalidArgument.for_field("page_token", "is not a token this server issued")
    return position[0], str(position[1]), str(position[2]), str(position[3])


def _storable(text: str) -> bool:
    """Whether PostgreSQL can take the string (a forged token may hold anything)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text
