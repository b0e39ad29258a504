"""Rules for logged models: creation, finalization (PENDING, then READY or UPLOAD_FAILED),
soft deletion, immutable params, upserted tags, search, and which models a run may name."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from trackd.server.clock import now_ms
from trackd.server.domain import limits, names, paging, validation
from trackd.server.domain.auth import policy
from trackd.server.domain.search import parser
from trackd.server.domain.validation import Violations
from trackd.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    experiment_not_found,
    model_not_found,
)
from trackd.server.store import experiments as experiment_store
from trackd.server.store import logged_models as store
from trackd.server.store import runs as run_store
from trackd.server.store import search as search_store
from trackd.server.store.pool import Connection, Database

FINAL_STATUSES = frozenset({store.READY, store.UPLOAD_FAILED})
STATUS_NAMES = {
    store.PENDING: "PENDING",
    store.READY: "READY",
    store.UPLOAD_FAILED: "UPLOAD_FAILED",
}
FILTER_MAX = limits.SEARCH_FILTER_MAX
ORDER_BY_MAX = 10
EXPERIMENT_IDS_MAX = 100


@dataclass
class LoggedModelView:
    """A logged model as read: its row, params, tags and latest metrics per dataset."""

    info: asyncpg.Record
    params: list[asyncpg.Record]
    tags: list[asyncpg.Record]
    metrics: list[asyncpg.Record]


class LoggedModels:
    """Logged model operations over a database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self,
        *,
        experiment_id: str,
        name: str,
        model_type: str,
        source_run_id: str,
        params: Sequence[tuple[str, str]],
        tags: Sequence[tuple[str, str]],
    ) -> LoggedModelView:
        """Creates a PENDING model and returns it.

        Raises InvalidArgument for bad fields (a source run of another experiment included),
        NotFound for an unknown experiment or source run, FailedPrecondition for a deleted
        experiment or source run."""
        eid = validation.experiment_id(experiment_id or "0")
        v = Violations()
        v.text("name", name, max_len=limits.MODEL_NAME_MAX)
        v.text("model_type", model_type, max_len=limits.MODEL_TYPE_MAX)
        v.count("params", len(params), max_count=limits.MODEL_PARAMS_MAX)
        param_keys, param_values = validation.params(v, "params", params)
        v.count("tags", len(tags), max_count=limits.MODEL_TAGS_MAX)
        tag_keys, tag_values = validation.tags(v, "tags", tags, value_max=limits.TAG_VALUE_MAX)
        v.raise_if_any()
        if source_run_id:
            validation.run_id(source_run_id, "source_run_id")
        model_id = "m-" + uuid.uuid4().hex

        async def work(conn: Connection) -> None:
            exp = await experiment_store.stage(conn, eid)
            if exp is None:
                raise experiment_not_found(eid)
            if exp["lifecycle_stage"] != experiment_store.ACTIVE:
                raise FailedPrecondition(
                    f"experiment {eid} is deleted; models cannot be created in it",
                    metadata={"experiment_id": str(eid)},
                )
            if source_run_id:
                await _check_source_run(conn, source_run_id, eid)
            model_pk = await store.insert(
                conn,
                model_id=model_id,
                experiment_id=eid,
                name=name or names.generate(),
                model_type=model_type,
                source_run_id=source_run_id or None,
                status=store.PENDING,
                now=now_ms(),
                artifact_uri=f"{exp['artifact_location']}/models/{model_id}/artifacts",
            )
            if param_keys:
                await store.insert_params(conn, model_pk, param_keys, param_values)
            if tag_keys:
                await store.upsert_tags(conn, model_pk, tag_keys, tag_values)

        await self.db.transact(work)
        return await self.get(model_id)

    async def get(self, model_id: str) -> LoggedModelView:
        """The live model with its params, tags and metrics; NotFound if there is none."""
        validation.model_id(model_id)

        async def work(conn: Connection) -> LoggedModelView:
            row = await store.get(conn, model_id)
            if row is None or row["lifecycle_stage"] != store.ACTIVE:
                raise model_not_found(model_id, row is not None)
            views = await load_views(conn, [row])
            return views[0]

        return await self.db.read(work)

    async def finalize(self, model_id: str, status: int, status_message: str) -> LoggedModelView:
        """Sets the final status, READY or UPLOAD_FAILED, and its message. The same status
        again is accepted (the message is replaced); another final status is
        FailedPrecondition."""
        validation.model_id(model_id)
        v = Violations()
        if status not in FINAL_STATUSES:
            v.add(
                "status",
                f"{status} is not a final status; use LOGGED_MODEL_STATUS_READY or "
                "LOGGED_MODEL_STATUS_UPLOAD_FAILED",
            )
        v.text("status_message", status_message, max_len=limits.MODEL_STATUS_MESSAGE_MAX)
        v.raise_if_any()

        async def work(conn: Connection) -> None:
            row = await _lock_writable(conn, model_id)
            if row["status"] != store.PENDING and row["status"] != status:
                raise FailedPrecondition(
                    f"model {model_id} is already finalized as {STATUS_NAMES[row['status']]}; "
                    f"it cannot become {STATUS_NAMES[status]}",
                    metadata={"model_id": model_id, "status": STATUS_NAMES[row["status"]]},
                )
            await store.finalize(conn, row["model_pk"], status, status_message, now_ms())

        await self.db.transact(work)
        return await self.get(model_id)

    async def delete(self, model_id: str) -> None:
        """Soft-deletes a model; afterwards it is NotFound everywhere."""
        validation.model_id(model_id)

        async def work(conn: Connection) -> None:
            row = await _lock_writable(conn, model_id)
            await store.delete(conn, row["model_pk"], now_ms())

        await self.db.transact(work)

    async def set_tags(self, model_id: str, tags: Sequence[tuple[str, str]]) -> None:
        """Creates or replaces 1 to 100 tags (the last value of a repeated key wins)."""
        validation.model_id(model_id)
        v = Violations()
        if not tags:
            v.add("tags", "must hold at least one tag")
        v.count("tags", len(tags), max_count=limits.MODEL_TAGS_MAX)
        keys, values = validation.tags(v, "tags", tags, value_max=limits.TAG_VALUE_MAX)
        v.raise_if_any()

        async def work(conn: Connection) -> None:
            row = await _lock_writable(conn, model_id)
            await store.upsert_tags(conn, row["model_pk"], keys, values)
            await store.touch(conn, row["model_pk"], now_ms())

        await self.db.transact(work)

    async def delete_tag(self, model_id: str, key: str) -> None:
        """Deletes one tag; NotFound if the model has no such tag."""
        validation.model_id(model_id)
        v = Violations()
        v.key("tag_key", key)
        v.raise_if_any()

        async def work(conn: Connection) -> None:
            row = await _lock_writable(conn, model_id)
            if not await store.delete_tag(conn, row["model_pk"], key):
                raise NotFound(
                    f"model {model_id} has no tag {key!r}",
                    metadata={"model_id": model_id, "key": key},
                )
            await store.touch(conn, row["model_pk"], now_ms())

        await self.db.transact(work)

    async def log_params(self, model_id: str, params: Sequence[tuple[str, str]]) -> None:
        """Logs 1 to 100 immutable params: the same value again is accepted, another value
        is FailedPrecondition, a key twice in the request with two values InvalidArgument."""
        validation.model_id(model_id)
        v = Violations()
        if not params:
            v.add("params", "must hold at least one param")
        v.count("params", len(params), max_count=limits.MODEL_PARAMS_MAX)
        keys, values = validation.params(v, "params", params)
        v.raise_if_any()

        async def work(conn: Connection) -> None:
            row = await _lock_writable(conn, model_id)
            stored = await store.params_of(conn, row["model_pk"], keys)
            fresh_keys, fresh_values = validation.fresh_params(
                stored, keys, values, f"model {model_id}", {"model_id": model_id}
            )
            if fresh_keys:
                await store.insert_params(conn, row["model_pk"], fresh_keys, fresh_values)
                await store.touch(conn, row["model_pk"], now_ms())

        await self.db.transact(work)

    async def search(
        self,
        experiment_ids: Sequence[str],
        filter_: str,
        datasets: Sequence[tuple[str, str]],
        order_by: Sequence[str],
        max_results: int,
        page_token: str,
    ) -> tuple[list[LoggedModelView], str]:
        """One page of live models matching the filter, with their data, and the next
        page's token ('' on the last page). `datasets` ((name, digest), an empty digest
        meaning any) restricts metric comparisons and ordering to those datasets; with a
        filter that compares no metric, it keeps only the models with a metric on one of
        them (MLflow's meaning). Raises InvalidArgument for a bad filter, dataset, order,
        size or token."""
        eids = validation.experiment_ids(experiment_ids, maximum=EXPERIMENT_IDS_MAX)
        v = Violations()
        v.text("filter", filter_, max_len=FILTER_MAX)
        v.count("order_by", len(order_by), max_count=ORDER_BY_MAX)
        v.count("datasets", len(datasets), max_count=limits.MODEL_SEARCH_DATASETS_MAX)
        for i, (name, digest) in enumerate(datasets):
            v.text(
                f"datasets[{i}].dataset_name", name, max_len=limits.DATASET_NAME_MAX, required=True
            )
            v.text(f"datasets[{i}].dataset_digest", digest, max_len=limits.DATASET_DIGEST_MAX)
        v.raise_if_any()
        node = parser.parse_filter(filter_, parser.LOGGED_MODELS)
        order = parser.parse_order_by(list(order_by), parser.LOGGED_MODELS)
        size = validation.page_size(
            max_results,
            default=limits.MODEL_SEARCH_MAX_RESULTS_DEFAULT,
            maximum=limits.MODEL_SEARCH_MAX_RESULTS_MAX,
        )
        wanted = sorted(set(datasets))
        fingerprint = paging.query_fingerprint(
            "logged_models", eids, filter_, wanted, list(order_by)
        )

        async def fetch(
            conn: Connection, after: list[Any] | None, limit: int
        ) -> tuple[list[asyncpg.Record], int]:
            # Only the experiments the caller may see (in this snapshot), as for runs.
            visible = await policy.visible_among(conn, eids)
            return await search_store.search_logged_models(
                conn, visible, node, order, wanted, after, limit
            )

        return await paging.keyset_page(self.db, page_token, fingerprint, size, fetch, load_views)


async def load_views(conn: Connection, rows: Sequence[asyncpg.Record]) -> list[LoggedModelView]:
    """Models with their params, tags and metrics, in three queries whatever their number."""
    pks = [r["model_pk"] for r in rows]
    params: dict[int, list[asyncpg.Record]] = defaultdict(list)
    tags: dict[int, list[asyncpg.Record]] = defaultdict(list)
    metrics: dict[int, list[asyncpg.Record]] = defaultdict(list)
    if pks:
        for r in await store.load_params(conn, pks):
            params[r["model_pk"]].append(r)
        for r in await store.load_tags(conn, pks):
            tags[r["model_pk"]].append(r)
        for r in await store.load_metrics(conn, pks):
            metrics[r["model_pk"]].append(r)
    return [
        LoggedModelView(r, params[r["model_pk"]], tags[r["model_pk"]], metrics[r["model_pk"]])
        for r in rows
    ]


async def resolve(
    conn: Connection, wanted: Sequence[tuple[str, str]], *, experiment_id: int | None
) -> dict[str, int]:
    """The internal keys of models a run names, by id. `wanted` holds (field path, model
    id). Raises NotFound for an unknown or deleted model and, when `experiment_id` is given,
    InvalidArgument naming every field whose model belongs to another experiment."""
    found = await store.refs(conn, [m for _, m in wanted])
    others = {r["experiment_id"] for r in found.values()} - {experiment_id}
    if others:
        # Models of experiments the caller may not see are answered as missing ones.
        hidden = others - set(await policy.visible_among(conn, sorted(others)))
        found = {m: r for m, r in found.items() if r["experiment_id"] not in hidden}
    v = Violations()
    for path, model_id in wanted:
        row = found.get(model_id)
        if row is None or row["lifecycle_stage"] != store.ACTIVE:
            raise model_not_found(model_id, row is not None)
        if experiment_id is not None and row["experiment_id"] != experiment_id:
            v.add(
                path,
                f"model {model_id} belongs to experiment {row['experiment_id']}, not to the "
                f"run's experiment {experiment_id}",
            )
    v.raise_if_any()
    return {model_id: row["model_pk"] for model_id, row in found.items()}


async def _lock_writable(conn: Connection, model_id: str) -> asyncpg.Record:
    """Locks a live model for a write; NotFound if there is none (or it was deleted),
    FailedPrecondition if its experiment is deleted."""
    row = await store.lock(conn, model_id)
    if row is None or row["lifecycle_stage"] != store.ACTIVE:
        raise model_not_found(model_id, row is not None)
    if row["experiment_stage"] != experiment_store.ACTIVE:
        raise FailedPrecondition(
            f"model {model_id} belongs to deleted experiment {row['experiment_id']}",
            metadata={"model_id": model_id, "experiment_id": str(row["experiment_id"])},
        )
    return row


async def _check_source_run(conn: Connection, run_id: str, experiment_id: int) -> None:
    """A model's source run must be an active run of the model's experiment."""
    run = await run_store.ref(conn, run_id)
    if run is None or (
        run["experiment_id"] != experiment_id and await policy.hidden(conn, run["experiment_id"])
    ):
        raise NotFound(f"source run {run_id} does not exist", metadata={"run_id": run_id})
    if run["experiment_id"] != experiment_id:
        raise InvalidArgument.for_field(
            "source_run_id",
            f"run {run_id} belongs to experiment {run['experiment_id']}, not {experiment_id}",
        )
    if run["lifecycle_stage"] != run_store.ACTIVE:
        raise FailedPrecondition(f"source run {run_id} is deleted", metadata={"run_id": run_id})
