"""Conversion between database rows and trackd.v1 messages, and from request messages to
the domain's column-wise inputs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import grpc
from google.rpc import code_pb2

from trackd.server.domain.datasets import DatasetInput
from trackd.server.domain.experiments import AccessEntry
from trackd.server.domain.logged_models import LoggedModelView
from trackd.server.domain.runs import MetricColumns, RunView
from trackd.v1 import (
    artifact_pb2,
    dataset_pb2,
    experiment_pb2,
    logged_model_pb2,
    metric_pb2,
    run_pb2,
    run_service_pb2,
)


def file_info(row: Any) -> artifact_pb2.FileInfo:
    """A FileInfo from an artifact row (a mapping), or a directory entry."""
    if row.get("is_dir"):
        return artifact_pb2.FileInfo(path=row["path"], is_dir=True)
    return artifact_pb2.FileInfo(
        path=row["path"],
        file_size=row["size"],
        sha256=row["sha256"],
        content_type=row["content_type"],
        modification_time=row["modified_ms"],
        row_count=row["row_count"],
    )


def experiment(row: asyncpg.Record) -> experiment_pb2.Experiment:
    """An Experiment from a row of store.experiments (with tag_keys/tag_values arrays)."""
    return experiment_pb2.Experiment(
        experiment_id=str(row["experiment_id"]),
        name=row["name"],
        artifact_location=row["artifact_location"],
        lifecycle_stage=row["lifecycle_stage"],
        creation_time=row["creation_time"],
        last_update_time=row["last_update_time"],
        tags=[
            experiment_pb2.ExperimentTag(key=k, value=v)
            for k, v in zip(row["tag_keys"], row["tag_values"], strict=True)
        ],
        workspace=row["workspace"],
        owner=row["owner"],
    )


def access_list(entries: Sequence[AccessEntry]) -> list[experiment_pb2.AccessControl]:
    """AccessControl messages of who holds which level on an experiment."""
    return [
        experiment_pb2.AccessControl(
            user_name=e.user_name,
            group_name=e.group_name,
            all_permissions=[
                experiment_pb2.Permission(
                    permission_level=experiment_pb2.PermissionLevel.ValueType(level),
                    inherited=inherited,
                    inherited_from_object=src,
                )
                for level, inherited, src in e.levels
            ],
        )
        for e in entries
    ]


def grants(
    requests: Iterable[experiment_pb2.AccessControlRequest],
) -> list[tuple[str, str, int]]:
    """(user_name, group_name, level) of AccessControlRequest messages."""
    return [(r.user_name, r.group_name, r.permission_level) for r in requests]


def run_info(row: asyncpg.Record) -> run_pb2.RunInfo:
    """A RunInfo from a row of store.runs' info columns."""
    parent = row["parent_run_id"]
    info = run_pb2.RunInfo(
        run_id=row["run_id"].hex,
        run_name=row["run_name"],
        experiment_id=str(row["experiment_id"]),
        user_id=row["user_id"],
        status=row["status"],
        start_time=row["start_time"],
        end_time=row["end_time"] or 0,
        artifact_uri=row["artifact_uri"],
        lifecycle_stage=row["lifecycle_stage"],
        last_seen_time=row["last_seen_time"],
        parent_run_id=parent.hex if parent is not None else "",
        has_children=row["has_children"],
        description=row["description"],
        external_url=row["external_url"],
        deleted_time=row["deleted_time"] or 0,
        depth=row["depth"],
    )
    if row["source_type"] or row["source_id"]:
        info.source.type = row["source_type"]
        info.source.id = row["source_id"]
    if row["duration"] is not None:
        info.duration = row["duration"]
    return info


def run(view: RunView) -> run_pb2.Run:
    """A Run with its latest metrics, summaries, params and tags."""
    out = run_pb2.Run(info=run_info(view.info))
    if view.info.get("descendant_match"):
        out.descendant_match = True
    data = out.data
    add_param = data.params.add
    for _, k, v, t in view.params:
        add_param(key=k, value=v, type=t)
    add_tag = data.tags.add
    for _, k, v in view.tags:
        add_tag(key=k, value=v)
    add_metric = data.metrics.add
    add_summary = data.metric_summaries.add
    for s in view.series:
        add_metric(
            key=s["key"], value=s["latest_value"], timestamp=s["latest_ts"], step=s["latest_step"]
        )
        add_summary(**summary_fields(s))
    if view.dataset_inputs or view.model_inputs or view.model_outputs:
        add_inputs_and_outputs(out, view)
    return out


def add_inputs_and_outputs(out: run_pb2.Run, view: RunView) -> None:
    """Fills a Run's inputs (datasets with their tags, models) and outputs (models)."""
    add_input = out.inputs.dataset_inputs.add
    for d in view.dataset_inputs:
        add_input(
            dataset=dataset_pb2.Dataset(
                name=d["name"],
                digest=d["digest"],
                source_type=d["source_type"],
                source=d["source"],
                schema=d["schema"],
                profile=d["profile"],
            ),
            tags=[
                dataset_pb2.InputTag(key=k, value=v)
                for k, v in zip(d["tag_keys"], d["tag_values"], strict=True)
            ],
        )
    add_model_input = out.inputs.model_inputs.add
    for m in view.model_inputs:
        add_model_input(model_id=m["model_id"])
    add_model_output = out.outputs.model_outputs.add
    for m in view.model_outputs:
        add_model_output(model_id=m["model_id"], step=m["step"])


def logged_model(view: LoggedModelView) -> logged_model_pb2.LoggedModel:
    """A LoggedModel with its tags, params and latest metrics per dataset."""
    row = view.info
    out = logged_model_pb2.LoggedModel(
        info=logged_model_pb2.LoggedModelInfo(
            model_id=row["model_id"],
            experiment_id=str(row["experiment_id"]),
            name=row["name"],
            model_type=row["model_type"],
            source_run_id=row["source_run_id"].hex if row["source_run_id"] else "",
            status=row["status"],
            status_message=row["status_message"],
            creation_timestamp=row["creation_timestamp"],
            last_updated_timestamp=row["last_updated_timestamp"],
            artifact_uri=row["artifact_uri"],
        )
    )
    add_tag = out.info.tags.add
    for _, k, v in view.tags:
        add_tag(key=k, value=v)
    add_param = out.data.params.add
    for _, k, v in view.params:
        add_param(key=k, value=v)
    add_metric = out.data.metrics.add
    for m in view.metrics:
        add_metric(
            key=m["key"],
            value=m["latest_value"],
            timestamp=m["latest_ts"],
            step=m["latest_step"],
            model_id=row["model_id"],
            dataset_name=m["dataset_name"],
            dataset_digest=m["dataset_digest"],
            run_id=m["run_id"].hex,
        )
    return out


def dataset_inputs(items: Iterable[dataset_pb2.DatasetInput]) -> list[DatasetInput]:
    """The domain's dataset inputs from DatasetInput messages (a missing dataset reads as
    empty fields, which validation reports)."""
    return [
        DatasetInput(
            name=i.dataset.name,
            digest=i.dataset.digest,
            source_type=i.dataset.source_type,
            source=i.dataset.source,
            schema=i.dataset.schema,
            profile=i.dataset.profile,
            tags=[(t.key, t.value) for t in i.tags],
        )
        for i in items
    ]


def dataset_summary(row: asyncpg.Record) -> dataset_pb2.DatasetSummary:
    """A DatasetSummary from a row of store.datasets.summaries."""
    return dataset_pb2.DatasetSummary(
        experiment_id=str(row["experiment_id"]),
        name=row["name"],
        digest=row["digest"],
        context=row["context"],
    )


def summary_fields(s: asyncpg.Record) -> dict[str, Any]:
    """The MetricSummary fields of one series row (store.metrics.LOAD_SERIES columns):
    counts, extremes, mean and population stddev."""
    (
        _,
        key,
        count,
        nan_count,
        pinf,
        ninf,
        low,
        high,
        fmean,
        fm2,
        first,
        last,
        lstep,
        lts,
        lvalue,
    ) = s
    n_fin = count - nan_count - pinf - ninf
    if pinf and ninf:
        mean = math.nan
    elif pinf:
        mean = math.inf
    elif ninf:
        mean = -math.inf
    elif n_fin == 0:
        mean = math.nan
    else:
        mean = fmean
    if pinf or ninf or n_fin == 0:
        stddev = math.nan
    else:
        stddev = math.sqrt(max(fm2, 0.0) / n_fin)
    return dict(
        key=key,
        count=count,
        nan_count=nan_count,
        min=math.nan if low is None else low,
        max=math.nan if high is None else high,
        mean=mean,
        stddev=stddev,
        first_step=first,
        last_step=last,
        latest_value=lvalue,
        latest_step=lstep,
        latest_timestamp=lts,
    )


def add_history(out: Any, columns: tuple[list[int], list[int], list[float]]) -> None:
    """Appends Metric messages for history columns (steps, timestamps, values) to the
    repeated field `out` (its add() is several times faster than building messages). The
    points leave `key` empty: a history page names its key once."""
    add = out.add
    for s, t, v in zip(*columns, strict=True):
        add(value=v, timestamp=t, step=s)


# gRPC status code numbers (google.rpc.Code) by name.
_CODE_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}
REJECTION_REASON_MAX = 64
REJECTION_MESSAGE_MAX = 2000


def complete_rejection(rejection: run_service_pb2.ChunkRejection) -> None:
    """Fills a ChunkRejection's numeric status_code from its code name and bounds its
    reason and message (so that an acknowledgement stays small whatever went wrong)."""
    rejection.status_code = _CODE_NUMBERS.get(rejection.code, code_pb2.UNKNOWN)
    rejection.reason = _shorten(rejection.reason, REJECTION_REASON_MAX)
    rejection.message = _shorten(rejection.message, REJECTION_MESSAGE_MAX)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def metric_columns(metrics: Sequence[metric_pb2.Metric]) -> MetricColumns:
    """Column-wise points from repeated Metric messages; the model columns are filled only
    when some point names a model or a dataset."""
    columns = MetricColumns(
        keys=[m.key for m in metrics],
        values=[m.value for m in metrics],
        timestamps=[m.timestamp for m in metrics],
        steps=[m.step for m in metrics],
    )
    if any(m.model_id or m.dataset_name or m.dataset_digest for m in metrics):
        columns.model_ids = [m.model_id for m in metrics]
        columns.dataset_names = [m.dataset_name for m in metrics]
        columns.dataset_digests = [m.dataset_digest for m in metrics]
    return columns


def typed_params(items: Iterable[run_pb2.Param]) -> list[tuple[str, str, int]]:
    """(key, value, ParamType) of run params."""
    return [(p.key, p.value, p.type) for p in items]


def run_source(source: run_pb2.RunSource) -> tuple[int, str]:
    """(RunSourceType, id) of a RunSource."""
    return source.type, source.id


def pairs(
    items: Iterable[
        run_pb2.Param
        | run_pb2.RunTag
        | experiment_pb2.ExperimentTag
        | logged_model_pb2.LoggedModelParameter
        | logged_model_pb2.LoggedModelTag
    ],
) -> list[tuple[str, str]]:
    """(key, value) pairs from params or tags."""
    return [(i.key, i.value) for i in items]
