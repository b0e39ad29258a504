"""Rules for runs: lifecycle, immutable params, upserted tags, appended metrics, batches,
and what runs consume and produce (datasets and logged models)."""

from __future__ import annotations

import functools
import math
import struct
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg

from trackd.server.clock import now_ms
from trackd.server.domain import (
    blocks,
    datasets,
    ingest,
    limits,
    logged_models,
    names,
    paging,
    validation,
)
from trackd.server.domain.auth import policy
from trackd.server.domain.liveness import Liveness
from trackd.server.domain.validation import Violations
from trackd.server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    experiment_not_found,
    run_not_found,
)
from trackd.server.store import datasets as dataset_store
from trackd.server.store import events as event_store
from trackd.server.store import experiments as experiment_store
from trackd.server.store import logged_models as model_store
from trackd.server.store import metrics as metric_store
from trackd.server.store import runs as store
from trackd.server.store.pool import Connection, Database, ReadOnPrimary, reading_replica

RUN_NAME_TAG = "mlflow.runName"
PARENT_RUN_TAG = "mlflow.parentRunId"
DESCRIPTION_TAG = store.DESCRIPTION_TAG

HISTORY_CHUNK_DEFAULT = 50_000
HISTORY_CHUNK_MAX = 200_000
VALID_STATUSES = frozenset({1, 2, 3, 4, 5})


@dataclass
class MetricColumns:
    """Metric points column-wise, as they travel from the wire to the database. The model
    columns are either empty (no point names a model) or as long as `keys`."""

    keys: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    model_ids: list[str] = field(default_factory=list)
    dataset_names: list[str] = field(default_factory=list)
    dataset_digests: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def names_models(self) -> bool:
        """Whether some point carries a model id or a dataset."""
        return any(self.model_ids) or any(self.dataset_names) or any(self.dataset_digests)


@dataclass
class RunView:
    """A run as read: its info row, params, tags and metric series rows, and the datasets
    and models it consumed and produced."""

    info: asyncpg.Record
    params: list[asyncpg.Record]
    tags: list[asyncpg.Record]
    series: list[asyncpg.Record]
    dataset_inputs: list[asyncpg.Record] = field(default_factory=list)
    model_inputs: list[asyncpg.Record] = field(default_factory=list)
    model_outputs: list[asyncpg.Record] = field(default_factory=list)


class Runs:
    """Run operations over a database."""

    def __init__(
        self, db: Database, writers: ingest.Writers, liveness: Liveness | None = None
    ) -> None:
        self.db = db
        self.writers = writers
        self.liveness = liveness or Liveness()

    # -- lifecycle -------------------------------------------------------------------------

    async def create(
        self,
        *,
        experiment_id: str,
        run_name: str,
        start_time: int,
        tags: Sequence[tuple[str, str]],
        user_id: str,
        parent_run_id: str,
        description: str = "",
        external_url: str = "",
        source: tuple[int, str] = (0, ""),
    ) -> RunView:
        """Creates a RUNNING run and returns it. The `mlflow.parentRunId` and
        `mlflow.note.content` tags name the parent and give the description too.

        Raises InvalidArgument for bad fields (a parent at the greatest nesting depth
        included), NotFound for an unknown experiment or parent, FailedPrecondition for a
        deleted experiment or parent."""
        eid = validation.experiment_id(experiment_id or "0")
        user_id = _user_id(user_id)
        v = Violations()
        v.text("run_name", run_name, max_len=limits.RUN_NAME_MAX)
        v.text("user_id", user_id, max_len=limits.USER_ID_MAX)
        v.non_negative("start_time", start_time)
        v.text("description", description, max_len=limits.TAG_VALUE_MAX)
        validation.external_url(v, "external_url", external_url)
        validation.run_source(v, "source", *source)
        tag_keys, tag_values = _check_tags(v, "tags", tags)
        v.raise_if_any()
        tag_map = dict(zip(tag_keys, tag_values, strict=True))
        name = _one_of("run_name", run_name, RUN_NAME_TAG, tag_map) or names.generate()
        tag_map[RUN_NAME_TAG] = name
        parent_run_id = _one_of("parent_run_id", parent_run_id, PARENT_RUN_TAG, tag_map)
        if parent_run_id:
            validation.run_id(
                parent_run_id, "parent_run_id" if PARENT_RUN_TAG not in tag_map else "tags"
            )
            tag_map[PARENT_RUN_TAG] = parent_run_id
        else:
            tag_map.pop(PARENT_RUN_TAG, None)  # an empty tag names no parent
        description = _one_of("description", description, DESCRIPTION_TAG, tag_map)
        if description:
            tag_map[DESCRIPTION_TAG] = description
        else:
            tag_map.pop(DESCRIPTION_TAG, None)
        run_id = uuid.uuid4().hex

        async def work(conn: Connection) -> int:
            exp = await experiment_store.stage(conn, eid)
            if exp is None:
                raise experiment_not_found(eid)
            if exp["lifecycle_stage"] != experiment_store.ACTIVE:
                raise FailedPrecondition(
                    f"experiment {eid} is deleted; runs cannot be created in it",
                    metadata={"experiment_id": str(eid)},
                )
            parent_pk = None
            path: list[int] = []
            if parent_run_id:
                parent = await store.ref(conn, parent_run_id)
                if parent is None or (
                    parent["experiment_id"] != eid
                    and await policy.hidden(conn, parent["experiment_id"])
                ):
                    raise NotFound(
                        f"parent run {parent_run_id} does not exist",
                        metadata={"run_id": parent_run_id},
                    )
                if parent["experiment_id"] != eid:
                    raise InvalidArgument.for_field(
                        "parent_run_id",
                        f"run {parent_run_id} belongs to experiment {parent['experiment_id']}, "
                        f"not {eid}",
                    )
                if parent["lifecycle_stage"] != store.ACTIVE:
                    raise FailedPrecondition(
                        f"parent run {parent_run_id} is deleted",
                        metadata={"run_id": parent_run_id},
                    )
                if len(parent["path"]) >= limits.NESTING_DEPTH_MAX:
                    raise InvalidArgument.for_field(
                        "parent_run_id",
                        f"run {parent_run_id} is at nesting depth {len(parent['path'])}; runs "
                        f"nest at most {limits.NESTING_DEPTH_MAX} levels below a root run",
                    )
                parent_pk = parent["run_pk"]
                path = [*parent["path"], parent_pk]
            run_pk = await store.insert(
                conn,
                run_id=run_id,
                experiment_id=eid,
                run_name=name,
                user_id=user_id,
                status=store.RUNNING,
                start_time=start_time or now_ms(),
                artifact_uri=f"{exp['artifact_location']}/{run_id}/artifacts",
                parent_run_pk=parent_pk,
                path=path,
                now=now_ms(),
                external_url=external_url,
                source=source,
            )
            await store.upsert_tags(conn, run_pk, list(tag_map), list(tag_map.values()))
            # The watch log: a new RUNNING run (experiment watches see it) and its tags.
            await event_store.record_status(conn, run_pk, now_ms())
            await event_store.record_data(
                conn, run_pk, ([], [], []), (list(tag_map), list(tag_map.values())), now_ms()
            )
            return run_pk

        await self.db.transact(work)
        return await self.get(run_id)

    async def get(self, run_id: str) -> RunView:
        """The run with its params, tags and metric series; NotFound if there is none."""
        validation.run_id(run_id)

        async def work(conn: Connection) -> RunView:
            info = await store.get_info(conn, run_id, self.liveness.cutoff(), now_ms())
            if info is None:
                raise run_not_found(run_id)
            return (await load_views(conn, [info]))[0]

        return await self.db.read(work)

    async def update(
        self,
        run_id: str,
        status: int,
        end_time: int | None,
        run_name: str | None,
        *,
        description: str | None = None,
        external_url: str | None = None,
        source: tuple[int, str] | None = None,
    ) -> asyncpg.Record:
        """Changes status (0 leaves it), end time, name, description, external URL and
        source (None leaves them; an empty description, URL or source clears it)."""
        validation.run_id(run_id)
        v = Violations()
        if description is not None:
            v.text("description", description, max_len=limits.TAG_VALUE_MAX)
        if external_url is not None:
            validation.external_url(v, "external_url", external_url)
        if source is not None:
            validation.run_source(v, "source", *source)
        if status == store.UNRESPONSIVE:
            v.add("status", "UNRESPONSIVE is derived when a run is read; it cannot be set")
        elif status != 0 and status not in VALID_STATUSES:
            v.add("status", f"{status} is not a RunStatus")
        if end_time is not None:
            v.non_negative("end_time", end_time)
        if run_name is not None:
            v.text("run_name", run_name, max_len=limits.RUN_NAME_MAX, required=True)
        v.raise_if_any()

        async def work(conn: Connection) -> asyncpg.Record:
            run_pk = await _lock_writable(conn, run_id)
            tag_keys: list[str] = []
            tag_values: list[str] = []
            if run_name is not None:
                tag_keys.append(RUN_NAME_TAG)
                tag_values.append(run_name)
            if description:
                tag_keys.append(DESCRIPTION_TAG)
                tag_values.append(description)
            elif description is not None:
                await store.delete_tag(conn, run_pk, DESCRIPTION_TAG)
            if tag_keys:
                await store.upsert_tags(conn, run_pk, tag_keys, tag_values)
                await event_store.record_data(
                    conn, run_pk, ([], [], []), (tag_keys, tag_values), now_ms()
                )
            updated = await store.update(
                conn,
                run_pk,
                status or None,
                end_time,
                run_name,
                now=now_ms(),
                cutoff=self.liveness.cutoff(),
                external_url=external_url,
                source=source,
            )
            if status or end_time is not None:
                await event_store.record_status(conn, run_pk, now_ms())
            return updated

        return await self.db.transact(work)

    async def delete(self, run_id: str) -> None:
        """Soft-deletes a run; FailedPrecondition if it is deleted already."""
        validation.run_id(run_id)

        async def work(conn: Connection) -> None:
            row = await _lock(conn, run_id)
            if row["lifecycle_stage"] != store.ACTIVE:
                raise FailedPrecondition(
                    f"run {run_id} is already deleted", metadata={"run_id": run_id}
                )
            await store.set_stage(conn, row["run_pk"], store.DELETED, now_ms())

        await self.db.transact(work)

    async def restore(self, run_id: str) -> None:
        """Restores a deleted run; FailedPrecondition if it is active or its experiment is
        deleted."""
        validation.run_id(run_id)

        async def work(conn: Connection) -> None:
            row = await _lock(conn, run_id)
            if row["lifecycle_stage"] == store.ACTIVE:
                raise FailedPrecondition(
                    f"run {run_id} is not deleted", metadata={"run_id": run_id}
                )
            if row["experiment_stage"] != experiment_store.ACTIVE:
                raise FailedPrecondition(
                    f"run {run_id} belongs to deleted experiment {row['experiment_id']}; "
                    "restore the experiment",
                    metadata={"run_id": run_id, "experiment_id": str(row["experiment_id"])},
                )
            await store.set_stage(conn, row["run_pk"], store.ACTIVE, now_ms())

        await self.db.transact(work)

    async def delete_many(
        self, experiment_id: str, max_timestamp_millis: int, max_runs: int
    ) -> int:
        """Deletes up to max_runs active runs started at or before a time; returns how many."""
        eid = validation.experiment_id(experiment_id)
        size = validation.page_size(
            max_runs, default=limits.BULK_RUNS_MAX, maximum=limits.BULK_RUNS_MAX, field="max_runs"
        )

        async def work(conn: Connection) -> int:
            await _lock_active_experiment(conn, eid)
            return await store.delete_many(conn, eid, max_timestamp_millis, size, now_ms())

        return await self.db.transact(work)

    async def restore_many(
        self, experiment_id: str, min_timestamp_millis: int, max_runs: int
    ) -> int:
        """Restores up to max_runs runs deleted at or after a time; returns how many."""
        eid = validation.experiment_id(experiment_id)
        size = validation.page_size(
            max_runs, default=limits.BULK_RUNS_MAX, maximum=limits.BULK_RUNS_MAX, field="max_runs"
        )

        async def work(conn: Connection) -> int:
            await _lock_active_experiment(conn, eid)
            return await store.restore_many(conn, eid, min_timestamp_millis, size)

        return await self.db.transact(work)

    async def heartbeat(self, run_id: str) -> None:
        """Records that the run is alive (the server's time; a RUNNING run silent for the
        liveness window reads as UNRESPONSIVE). Raises InvalidArgument for a malformed id,
        NotFound for an unknown run, FailedPrecondition for a deleted run or a run of a
        deleted experiment."""
        validation.run_id(run_id)

        async def work(conn: Connection) -> None:
            await store.heartbeat(conn, await _lock_writable(conn, run_id), now_ms())

        await self.db.transact(work)

    # -- logging ---------------------------------------------------------------------------

    async def log_batch(
        self,
        run_id: str,
        metrics: MetricColumns,
        params: Sequence[tuple[str, str, int]],
        tags: Sequence[tuple[str, str]],
    ) -> None:
        """Logs metrics, params (key, value, ParamType) and tags in one transaction: all of
        it or none of it.

        Raises InvalidArgument naming every bad field, NotFound for an unknown run and
        FailedPrecondition for a deleted run or a param logged before with another value."""
        validation.run_id(run_id)
        v = Violations()
        v.count("metrics", len(metrics), max_count=limits.BATCH_METRICS_MAX)
        v.count("params", len(params), max_count=limits.BATCH_PARAMS_MAX)
        v.count("tags", len(tags), max_count=limits.BATCH_TAGS_MAX)
        total = len(metrics) + len(params) + len(tags)
        if total > limits.BATCH_ITEMS_MAX:
            v.add(
                "metrics+params+tags",
                f"the batch has {total} items; the limit is {limits.BATCH_ITEMS_MAX}",
            )
        v.raise_if_any()
        await self._log(run_id, metrics, params, tags, batch=True)

    async def _log(
        self,
        run_id: str,
        metrics: MetricColumns,
        params: Sequence[tuple[str, str, int]],
        tags: Sequence[tuple[str, str]],
        *,
        batch: bool,
    ) -> None:
        """Validates and writes the items of a batch (violations name `metrics[3].key`) or
        of a single-item request (violations name its own `key`, `value`, `timestamp`)."""
        v = Violations()
        _check_metrics(v, "metrics" if batch else "", metrics)
        typed = validation.typed_params(v, "params" if batch else "", params)
        tag_keys, tag_values = _check_tags(v, "tags" if batch else "", tags)
        v.raise_if_any()
        with_models = metrics.names_models()

        if metrics.keys and not typed and not tag_keys and not with_models:
            # Metrics alone go through the group-commit writers; metrics of models take the
            # locked path below, which also folds them into the models' latest metrics.
            run_pk = await self.writers.resolve_run(run_id)
            item = ingest.Item(_series_points(run_pk, run_id, metrics), len(metrics))
            result = await self.writers.write(item, run_pk)
            if result.error is not None:
                raise result.error
            return

        written: dict[int, int] = {}

        async def work(conn: Connection) -> None:
            written.clear()
            row = await _lock_writable_row(conn, run_id)
            run_pk: int = row["run_pk"]
            fresh = validation.TypedParams()
            if typed:
                fresh = await _write_params(conn, run_pk, run_id, typed)
            if tag_keys:
                await _write_tags(conn, row, tag_keys, tag_values, "tags" if batch else "value")
            await event_store.record_data(
                conn,
                run_pk,
                (fresh.keys, fresh.values, fresh.types),
                (tag_keys, tag_values),
                now_ms(),
            )
            if metrics.keys:
                await ingest.write_run_series(
                    conn, _series_points(run_pk, run_id, metrics), written
                )
            if with_models:
                await _write_model_metrics(
                    conn, run_pk, row["experiment_id"], metrics, "metrics" if batch else ""
                )

        await self.db.transact(work)
        self.writers.note_written(written)

    async def log_metric(
        self,
        run_id: str,
        key: str,
        value: float,
        timestamp: int,
        step: int,
        model_id: str = "",
        dataset_name: str = "",
        dataset_digest: str = "",
    ) -> None:
        """Appends one metric point, of the run and, with a model id, of that model on the
        dataset if one is named; see log_batch for the errors."""
        validation.run_id(run_id)
        metrics = MetricColumns([key], [value], [timestamp], [step])
        if model_id or dataset_name or dataset_digest:
            metrics.model_ids = [model_id]
            metrics.dataset_names = [dataset_name]
            metrics.dataset_digests = [dataset_digest]
        await self._log(run_id, metrics, (), (), batch=False)

    async def log_param(self, run_id: str, key: str, value: str, type_: int = 0) -> None:
        """Logs one immutable param of a ParamType; see log_batch for the errors."""
        validation.run_id(run_id)
        await self._log(run_id, MetricColumns(), ((key, value, type_),), (), batch=False)

    async def set_tag(self, run_id: str, key: str, value: str) -> None:
        """Creates or replaces one tag; see log_batch for the errors."""
        validation.run_id(run_id)
        await self._log(run_id, MetricColumns(), (), ((key, value),), batch=False)

    async def delete_tag(self, run_id: str, key: str) -> None:
        """Deletes one tag; NotFound if the run has no such tag."""
        validation.run_id(run_id)
        v = Violations()
        v.key("key", key)
        v.raise_if_any()

        written: dict[int, int] = {}

        async def work(conn: Connection) -> None:
            written.clear()
            row = await _lock_writable_row(conn, run_id)
            run_pk = row["run_pk"]
            if key == PARENT_RUN_TAG and row["parent_run_pk"] is not None:
                raise InvalidArgument.for_field(
                    "key",
                    f"{PARENT_RUN_TAG} names the parent of run {run_id}, which is set when a "
                    "run is created and cannot be removed",
                )
            if not await store.delete_tag(conn, run_pk, key):
                raise NotFound(
                    f"run {run_id} has no tag {key!r}", metadata={"run_id": run_id, "key": key}
                )

        await self.db.transact(work)

    # -- inputs and outputs ----------------------------------------------------------------

    async def log_inputs(
        self,
        run_id: str,
        dataset_inputs: Sequence[datasets.DatasetInput],
        model_ids: Sequence[str],
    ) -> None:
        """Records datasets (with the tags of their use) and logged models the run consumed,
        in one transaction. A dataset is stored once per experiment by (name, digest);
        logging an input again merges its tags.

        Raises InvalidArgument naming every bad field, NotFound for an unknown run or an
        unknown or deleted model, FailedPrecondition for a deleted run."""
        validation.run_id(run_id)
        v = Violations()
        merged = datasets.check_inputs(v, "datasets", dataset_inputs)
        v.count("models", len(model_ids), max_count=limits.INPUTS_MODELS_MAX)
        wanted = _model_refs(v, "models", model_ids)
        v.raise_if_any()

        written: dict[int, int] = {}

        async def work(conn: Connection) -> None:
            written.clear()
            row = await _lock_writable_row(conn, run_id)
            run_pk: int = row["run_pk"]
            if merged:
                await datasets.add_inputs(conn, run_pk, row["experiment_id"], merged)
            if wanted:
                # A run may consume a model of any experiment (to fine-tune or evaluate it).
                found = await logged_models.resolve(conn, wanted, experiment_id=None)
                await model_store.add_run_inputs(conn, run_pk, list(found.values()))

        await self.db.transact(work)

    async def log_outputs(self, run_id: str, outputs: Sequence[tuple[str, int]]) -> None:
        """Records logged models (model_id, step) the run produced, in one transaction; each
        must be a live model of the run's experiment. An output logged again is a no-op.

        Raises InvalidArgument naming every bad field (a model of another experiment
        included), NotFound for an unknown run or an unknown or deleted model,
        FailedPrecondition for a deleted run."""
        validation.run_id(run_id)
        v = Violations()
        v.count("models", len(outputs), max_count=limits.OUTPUTS_MODELS_MAX)
        wanted = _model_refs(v, "models", [m for m, _ in outputs])
        v.raise_if_any()

        written: dict[int, int] = {}

        async def work(conn: Connection) -> None:
            written.clear()
            row = await _lock_writable_row(conn, run_id)
            if not wanted:
                return
            found = await logged_models.resolve(conn, wanted, experiment_id=row["experiment_id"])
            await model_store.add_run_outputs(
                conn, row["run_pk"], [(found[m], step) for m, step in outputs]
            )

        await self.db.transact(work)

    # -- reading metrics -------------------------------------------------------------------

    async def metric_history(
        self, run_id: str, key: str, max_results: int, page_token: str
    ) -> tuple[tuple[list[int], list[int], list[float]], str]:
        """One page of a series in (step, timestamp, value) order, column-wise, and the next
        page's token ('' on the last page)."""
        validation.run_id(run_id)
        v = Violations()
        v.key("metric_key", key)
        v.raise_if_any()
        size = validation.page_size(
            max_results,
            default=limits.HISTORY_MAX_RESULTS_DEFAULT,
            maximum=limits.HISTORY_MAX_RESULTS_MAX,
        )
        fingerprint = paging.query_fingerprint("history", run_id, key)
        position = paging.decode(page_token, fingerprint)
        after = _history_position(position) if position is not None else None

        async def work(conn: Connection) -> tuple[list[int], list[int], list[float]]:
            ref = await store.ref(conn, run_id)
            if reading_replica() and (ref is None or not await store.finished(conn, ref["run_pk"])):
                # Only a finished run's series is read from the replica: it no longer grows.
                raise ReadOnPrimary
            if ref is None:
                raise run_not_found(run_id)
            sid = await metric_store.series_id(conn, ref["run_pk"], key)
            if sid is None:
                return [], [], []
            return await blocks.history(conn, sid, after, size + 1)

        steps, stamps, values = await self.db.read_lagging(work)
        if len(steps) <= size:
            return (steps, stamps, values), ""
        steps, stamps, values = steps[:size], stamps[:size], values[:size]
        bits = struct.unpack("<q", struct.pack("<d", values[-1]))[0]
        return (steps, stamps, values), paging.encode([steps[-1], stamps[-1], bits], fingerprint)

    async def stream_history(
        self, run_id: str, key: str, chunk_size: int
    ) -> AsyncIterator[tuple[list[int], list[int], list[float]]]:
        """The whole series in (step, timestamp, value) order, column-wise, `chunk_size`
        points at a time. Each chunk is read on its own (a connection is held only while a
        chunk is read, never while the client consumes it); keyset continuation keeps the
        order whatever is appended meanwhile."""
        validation.run_id(run_id)
        v = Violations()
        v.key("metric_key", key)
        v.raise_if_any()
        size = validation.page_size(
            chunk_size,
            default=HISTORY_CHUNK_DEFAULT,
            maximum=HISTORY_CHUNK_MAX,
            field="chunk_size",
        )

        async def find(conn: Connection) -> int | None:
            ref = await store.ref(conn, run_id)
            if ref is None:
                raise run_not_found(run_id)
            return await metric_store.series_id(conn, ref["run_pk"], key)

        sid = await self.db.read(find)
        if sid is None:
            return
        after: tuple[int, int, float] | None = None
        while True:
            steps, stamps, values = await self.db.read(
                functools.partial(_history_chunk, sid=sid, after=after, size=size)
            )
            if not steps:
                return
            yield steps, stamps, values
            if len(steps) < size:
                return
            after = (steps[-1], stamps[-1], values[-1])


async def _history_chunk(
    conn: Connection, *, sid: int, after: tuple[int, int, float] | None, size: int
) -> tuple[list[int], list[int], list[float]]:
    return await blocks.history(conn, sid, after, size)


async def load_views(
    conn: Connection, rows: Sequence[asyncpg.Record], *, brief: bool = False
) -> list[RunView]:
    """Runs (rows of their info columns) with their params, tags, series, dataset inputs
    (without schema and profile when `brief`) and model inputs and outputs, in six queries
    whatever their number."""
    pks = [r["run_pk"] for r in rows]
    loaded: list[dict[int, list[asyncpg.Record]]] = [defaultdict(list) for _ in range(6)]
    if pks:
        loads: tuple[Callable[[Connection, list[int]], Awaitable[list[asyncpg.Record]]], ...] = (
            store.load_params,
            store.load_tags,
            metric_store.load_series,
            functools.partial(dataset_store.load_inputs, brief=brief),
            model_store.load_run_inputs,
            model_store.load_run_outputs,
        )
        for by_run, load in zip(loaded, loads, strict=True):
            for r in await load(conn, pks):
                by_run[r["run_pk"]].append(r)
    params, tags, series, dataset_inputs, model_inputs, model_outputs = loaded
    return [
        RunView(
            r,
            params[r["run_pk"]],
            tags[r["run_pk"]],
            series[r["run_pk"]],
            dataset_inputs[r["run_pk"]],
            model_inputs[r["run_pk"]],
            model_outputs[r["run_pk"]],
        )
        for r in rows
    ]


# -- validation helpers ----------------------------------------------------------------------


_item = validation.item


def _check_metrics(v: Violations, field: str, m: MetricColumns) -> None:
    """Validates keys, timestamps and model fields; a 0 timestamp becomes the server's
    now."""
    bad_keys: set[str] = set()
    good_keys: set[str] = set()
    now = 0
    for i, key in enumerate(m.keys):
        if key not in good_keys:
            if key in bad_keys or not v.key(_item(field, i, "key"), key):
                bad_keys.add(key)
            else:
                good_keys.add(key)
        ts = m.timestamps[i]
        if ts == 0:
            now = now or now_ms()
            m.timestamps[i] = now
        elif ts < 0:
            v.add(_item(field, i, "timestamp"), f"is {ts}; it must be >= 0 (milliseconds)")
    if m.names_models():
        for i, (model_id, name, digest) in enumerate(
            zip(m.model_ids, m.dataset_names, m.dataset_digests, strict=True)
        ):
            _check_metric_model(v, field, i, model_id, name, digest)


def _check_metric_model(
    v: Violations, field: str, i: int, model_id: str, name: str, digest: str
) -> None:
    """A point's model fields: a well-formed model id, and a dataset only with a model and
    given by both its name and digest (trackd keeps per-dataset metrics for models only)."""
    if model_id and not validation.is_model_id(model_id):
        v.add(
            _item(field, i, "model_id"),
            f"{model_id[:60]!r} is not a model id ('m-' and 32 lowercase hex digits)",
        )
    if not (name or digest):
        return
    if not model_id:
        v.add(
            _item(field, i, "model_id"),
            "is required with dataset_name and dataset_digest (per-dataset metrics belong "
            "to logged models)",
        )
    if not name:
        v.add(_item(field, i, "dataset_name"), "must be given with dataset_digest")
    else:
        v.text(_item(field, i, "dataset_name"), name, max_len=limits.DATASET_NAME_MAX)
    if not digest:
        v.add(_item(field, i, "dataset_digest"), "must be given with dataset_name")
    else:
        v.text(_item(field, i, "dataset_digest"), digest, max_len=limits.DATASET_DIGEST_MAX)


def _model_refs(v: Violations, field: str, model_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(field path, model id) of each well-formed id of a repeated field; malformed ones are
    recorded as violations."""
    wanted = []
    for i, model_id in enumerate(model_ids):
        if validation.is_model_id(model_id):
            wanted.append((_item(field, i, "model_id"), model_id))
        else:
            v.add(
                _item(field, i, "model_id"),
                f"{model_id[:60]!r} is not a model id ('m-' and 32 lowercase hex digits)",
            )
    return wanted


def _check_tags(
    v: Violations, field: str, tags: Sequence[tuple[str, str]]
) -> tuple[list[str], list[str]]:
    v.count(field, len(tags), max_count=limits.BATCH_TAGS_MAX)
    # The run name tag mirrors RunInfo.run_name, so it has the run name's limit.
    return validation.tags(
        v,
        field,
        tags,
        value_max=limits.TAG_VALUE_MAX,
        value_max_of={RUN_NAME_TAG: limits.RUN_NAME_MAX},
    )


def _history_position(position: list[object]) -> tuple[int, int, float]:
    if len(position) != 3 or not all(isinstance(p, int) for p in position):
        raise InvalidArgument.for_field("page_token", "is not a token this server issued")
    step, ts, bits = (int(p) for p in position)  # type: ignore[call-overload]
    try:
        value = struct.unpack("<d", struct.pack("<q", bits))[0]
    except struct.error as exc:
        raise InvalidArgument.for_field("page_token", "is not a token this server issued") from exc
    return step, ts, value


# -- write helpers (inside a transaction holding the run's lock) ------------------------------


def _user_id(user_id: str) -> str:
    """The user_id a run records: the caller's name when auth is on (a different one given
    is INVALID_ARGUMENT), else the one given."""
    principal = policy.caller()
    if principal.anonymous:
        return user_id
    if user_id and user_id != principal.name:
        raise InvalidArgument.for_field(
            "user_id",
            f"is {user_id[:100]!r}, but the caller is {principal.name!r}; with auth on, "
            "user_id is the caller's name: leave it empty or give that name",
        )
    return principal.name


def _one_of(field: str, value: str, tag: str, tag_map: dict[str, str]) -> str:
    """A field CreateRun also takes as a tag (run_name, parent_run_id, description): the
    one given, or the tag's value; both given must agree (INVALID_ARGUMENT)."""
    by_tag = tag_map.get(tag)
    if value and by_tag is not None and by_tag != value:
        raise InvalidArgument.for_field(
            field, f"is {value[:100]!r} but the {tag} tag says {by_tag[:100]!r}; give one"
        )
    return value or by_tag or ""


async def _lock(conn: Connection, run_id: str) -> asyncpg.Record:
    row = await store.lock(conn, run_id)
    if row is None:
        raise run_not_found(run_id)
    return row


async def _lock_writable(conn: Connection, run_id: str) -> int:
    """Locks a run for writing and returns its key; FailedPrecondition if it, or its
    experiment, is deleted."""
    run_pk: int = (await _lock_writable_row(conn, run_id))["run_pk"]
    return run_pk


async def _lock_writable_row(conn: Connection, run_id: str) -> asyncpg.Record:
    """Locks a run for writing and returns its run_pk and experiment_id; FailedPrecondition
    if it, or its experiment, is deleted."""
    row = await _lock(conn, run_id)
    if row["lifecycle_stage"] != store.ACTIVE:
        raise FailedPrecondition(
            f"run {run_id} is deleted; restore it before writing to it",
            metadata={"run_id": run_id},
        )
    if row["experiment_stage"] != experiment_store.ACTIVE:
        raise FailedPrecondition(
            f"run {run_id} belongs to deleted experiment {row['experiment_id']}",
            metadata={"run_id": run_id, "experiment_id": str(row["experiment_id"])},
        )
    return row


async def _lock_active_experiment(conn: Connection, eid: int) -> None:
    row = await experiment_store.lock(conn, eid)
    if row is None:
        raise experiment_not_found(eid)
    if row["lifecycle_stage"] != experiment_store.ACTIVE:
        raise FailedPrecondition(
            f"experiment {eid} is deleted; restore it first", metadata={"experiment_id": str(eid)}
        )


async def _write_params(
    conn: Connection, run_pk: int, run_id: str, params: validation.TypedParams
) -> validation.TypedParams:
    """Inserts the params not logged before; returns them."""
    stored = await store.params_of(conn, run_pk, params.keys)
    fresh = validation.fresh_typed_params(stored, params, f"run {run_id}", {"run_id": run_id})
    if fresh:
        await store.insert_params(
            conn, run_pk, fresh.keys, fresh.values, fresh.types, fresh.numbers
        )
    return fresh


async def _write_tags(
    conn: Connection, row: asyncpg.Record, keys: list[str], values: list[str], field: str
) -> None:
    """Upserts tags of the locked run `row` (the name tag renames it). The parent tag may
    only repeat the value it has: a run's parent is set when it is created."""
    run_pk: int = row["run_pk"]
    if PARENT_RUN_TAG in keys:
        value = values[keys.index(PARENT_RUN_TAG)]
        if value != await store.tag_value(conn, run_pk, PARENT_RUN_TAG):
            raise InvalidArgument.for_field(
                field,
                f"{PARENT_RUN_TAG} is {value[:100]!r}, but a run's parent is set when it is "
                "created (CreateRun's parent_run_id or this tag) and cannot change",
            )
    await store.upsert_tags(conn, run_pk, keys, values)
    if RUN_NAME_TAG in keys:
        await store.set_name(conn, run_pk, values[keys.index(RUN_NAME_TAG)])


def _series_points(run_pk: int, run_id: str, m: MetricColumns) -> list[ingest.SeriesPoints]:
    """The points of a batch grouped by key, column-wise."""
    by_key: dict[str, ingest.SeriesPoints] = {}
    for key, value, ts, step in zip(m.keys, m.values, m.timestamps, m.steps, strict=True):
        sp = by_key.get(key)
        if sp is None:
            sp = by_key[key] = ingest.SeriesPoints(run_pk, run_id, key, [], [], [])
        sp.steps.append(step)
        sp.timestamps.append(ts)
        sp.values.append(value)
    return list(by_key.values())


async def _write_model_metrics(
    conn: Connection, run_pk: int, experiment_id: int, m: MetricColumns, field: str
) -> None:
    """Folds the points that name a model into the models' latest metrics per (key,
    dataset). Each model must be a live model of the run's experiment."""
    wanted = [(_item(field, i, "model_id"), mid) for i, mid in enumerate(m.model_ids) if mid]
    found = await logged_models.resolve(conn, wanted, experiment_id=experiment_id)
    latest: dict[tuple[int, str, str, str], tuple[int, int, float]] = {}
    for i, model_id in enumerate(m.model_ids):
        if not model_id:
            continue
        slot = (found[model_id], m.keys[i], m.dataset_names[i], m.dataset_digests[i])
        point = (m.steps[i], m.timestamps[i], m.values[i])
        old = latest.get(slot)
        if old is None or _point_order(point) > _point_order(old):
            latest[slot] = point
    await model_store.upsert_metrics(
        conn, [(*slot, *point, run_pk) for slot, point in sorted(latest.items())]
    )


def _point_order(point: tuple[int, int, float]) -> tuple[int, int, int, float]:
    """A sort key for (step, timestamp, value) that puts NaN above every number, as
    PostgreSQL orders float8."""
    step, ts, value = point
    return (step, ts, 1, 0.0) if math.isnan(value) else (step, ts, 0, value)
