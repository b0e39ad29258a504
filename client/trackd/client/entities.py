"""Plain Python results: runs, experiments, metrics, datasets and logged models as MLflow's
entities look, built from trackd's messages (each keeps its message as `.proto`).

Statuses and stages are the words of the filter language (`run.info.status == "FINISHED"`,
`experiment.lifecycle_stage == "active"`); params, tags and latest metrics are dicts.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from trackd.v1 import (
    artifact_pb2,
    common_pb2,
    dataset_pb2,
    experiment_pb2,
    logged_model_pb2,
    metric_pb2,
    run_pb2,
)

T = TypeVar("T")


class RunStatus(enum.StrEnum):
    """A run's status, as the filter language writes it (`status = 'FINISHED'`)."""

    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"
    # A RUNNING run the server has not heard from (no heartbeat, no point) within its
    # liveness window; read only, derived when the run is read.
    UNRESPONSIVE = "UNRESPONSIVE"


class LifecycleStage(enum.StrEnum):
    """Whether an experiment, run or model is live or soft-deleted (MLflow's words)."""

    ACTIVE = "active"
    DELETED = "deleted"


class LoggedModelStatus(enum.StrEnum):
    """A logged model's status: PENDING at creation, then READY or UPLOAD_FAILED."""

    PENDING = "PENDING"
    READY = "READY"
    UPLOAD_FAILED = "UPLOAD_FAILED"


class RunSourceType(enum.StrEnum):
    """What kind of thing created a run (`RunInfo.source.type`)."""

    JOB = "JOB"
    NOTEBOOK = "NOTEBOOK"
    CONTAINER = "CONTAINER"
    PROJECT = "PROJECT"
    LOCAL = "LOCAL"


class ParamType(enum.StrEnum):
    """The type a param was logged with, from the Python type of its value (an untyped,
    MLflow-style param has none: "")."""

    STRING = "STRING"
    INT = "INT"
    DOUBLE = "DOUBLE"
    BOOL = "BOOL"


class ViewType(enum.IntEnum):
    """Which lifecycle stages a search returns (the numbers are MLflow's and trackd's)."""

    ACTIVE_ONLY = 1
    DELETED_ONLY = 2
    ALL = 3


def _enum_number(value: object, words: type[enum.Enum], prefix: str, arg: str) -> int:
    """The protobuf number of an enum argument given as a word ("FAILED", "failed"), a
    member of `words`, or the number itself.

    Raises:
        ValueError: an unknown word. TypeError: neither a word nor a number.
    """
    if isinstance(value, words):
        name = value.name
    elif isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{arg} must be one of {_choices(words)}, not {type(value).__name__}")
    elif isinstance(value, int):
        return value
    else:
        name = value.strip().upper().removeprefix(prefix)
        if name not in words.__members__:
            raise ValueError(f"{arg} must be one of {_choices(words)}, not {value!r}")
    return _PROTO_NUMBERS[prefix][name]


def _choices(words: type[enum.Enum]) -> str:
    return ", ".join(repr(name) for name in words.__members__)


_PROTO_NUMBERS: dict[str, dict[str, int]] = {
    "RUN_STATUS_": {n: run_pb2.RunStatus.Value(f"RUN_STATUS_{n}") for n in RunStatus.__members__},
    "LOGGED_MODEL_STATUS_": {
        n: logged_model_pb2.LoggedModelStatus.Value(f"LOGGED_MODEL_STATUS_{n}")
        for n in LoggedModelStatus.__members__
    },
    "VIEW_TYPE_": {n: common_pb2.ViewType.Value(f"VIEW_TYPE_{n}") for n in ViewType.__members__},
    "RUN_SOURCE_TYPE_": {
        n: run_pb2.RunSourceType.Value(f"RUN_SOURCE_TYPE_{n}") for n in RunSourceType.__members__
    },
    "PARAM_TYPE_": {n: run_pb2.ParamType.Value(f"PARAM_TYPE_{n}") for n in ParamType.__members__},
}


def run_status_number(status: object, arg: str = "status") -> run_pb2.RunStatus.ValueType:
    """RunStatus as its protobuf number, from "FAILED", RunStatus.FAILED or the number.

    Raises:
        ValueError: an unknown word. TypeError: neither a word nor a number.
    """
    return _enum_number(status, RunStatus, "RUN_STATUS_", arg)  # type: ignore[return-value]


def model_status_number(
    status: object, arg: str = "status"
) -> logged_model_pb2.LoggedModelStatus.ValueType:
    """LoggedModelStatus as its protobuf number, from "READY", the enum or the number."""
    return _enum_number(status, LoggedModelStatus, "LOGGED_MODEL_STATUS_", arg)  # type: ignore[return-value]


def view_type_number(view: object, arg: str = "view_type") -> common_pb2.ViewType.ValueType:
    """ViewType as its protobuf number, from "ALL", ViewType.ALL or the number."""
    return _enum_number(view, ViewType, "VIEW_TYPE_", arg)  # type: ignore[return-value]


def run_source_type_number(
    kind: object, arg: str = "source.type"
) -> run_pb2.RunSourceType.ValueType:
    """RunSourceType as its protobuf number, from "job", "JOB", RunSourceType.JOB or the
    number."""
    return _enum_number(kind, RunSourceType, "RUN_SOURCE_TYPE_", arg)  # type: ignore[return-value]


def param_type_number(kind: object, arg: str = "type") -> run_pb2.ParamType.ValueType:
    """ParamType as its protobuf number, from "INT", ParamType.INT or the number; "" (an
    untyped param) is PARAM_TYPE_UNSPECIFIED."""
    if isinstance(kind, str) and not kind.strip():
        return run_pb2.PARAM_TYPE_UNSPECIFIED
    return _enum_number(kind, ParamType, "PARAM_TYPE_", arg)  # type: ignore[return-value]


def _word(number: int, enum_type: Any, prefix: str) -> str:
    """The word of a protobuf enum number ("" for UNSPECIFIED or an unknown number)."""
    try:
        name: str = enum_type.Name(number)
    except ValueError:
        return ""
    name = name.removeprefix(prefix)
    return "" if name == "UNSPECIFIED" else name


def _stage(number: int) -> str:
    return _word(number, common_pb2.LifecycleStage, "LIFECYCLE_STAGE_").lower()


class PagedList(list[T], Generic[T]):
    """One page of a search: a list, and `token` for the next page ("" or None at the
    end, as MLflow's PagedList)."""

    def __init__(self, items: Iterable[T], token: str | None) -> None:
        super().__init__(items)
        self.token = token or None


@dataclass(frozen=True)
class Metric:
    """One metric point. The positional order is MLflow's: key, value, timestamp, step."""

    key: str
    value: float
    timestamp: int = 0
    step: int = 0
    dataset_name: str | None = None
    dataset_digest: str | None = None
    model_id: str | None = None
    run_id: str | None = None
    proto: metric_pb2.Metric | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: metric_pb2.Metric) -> Metric:
        """The point of a Metric message."""
        return cls(
            m.key,
            m.value,
            m.timestamp,
            m.step,
            m.dataset_name or None,
            m.dataset_digest or None,
            m.model_id or None,
            m.run_id or None,
            m,
        )

    def to_proto(self) -> metric_pb2.Metric:
        """The point as a Metric message."""
        return metric_pb2.Metric(
            key=self.key,
            value=self.value,
            timestamp=self.timestamp,
            step=self.step,
            dataset_name=self.dataset_name or "",
            dataset_digest=self.dataset_digest or "",
            model_id=self.model_id or "",
            run_id=self.run_id or "",
        )


@dataclass(frozen=True)
class Param:
    """A run's param (immutable once logged): `value` is MLflow's string form; `type` a
    ParamType word ("INT", ...), or "" to have log_batch type it from the value (a str
    value is then STRING)."""

    key: str
    value: str
    type: str = ""


# A param's value decoded by its type: what RunData.typed_params holds.
ParamValue = str | int | float | bool


def typed_param_value(value: str, param_type: int) -> ParamValue:
    """A param's value decoded by its ParamType number: INT as int, DOUBLE as float (nan
    and inf included), BOOL as `value.lower() == "true"`, anything else (STRING, untyped)
    as the string; a value that is not a literal of its type stays the string."""
    try:
        if param_type == run_pb2.PARAM_TYPE_INT:
            return int(value)
        if param_type == run_pb2.PARAM_TYPE_DOUBLE:
            return float(value)
    except ValueError:
        return value
    if param_type == run_pb2.PARAM_TYPE_BOOL:
        return value.lower() == "true"
    return value


@dataclass(frozen=True)
class RunSource:
    """What created a run: `type` a RunSourceType word ("JOB", "NOTEBOOK", "CONTAINER",
    "PROJECT", "LOCAL") and `id` the job's, notebook's, container's... identifier."""

    type: str
    id: str = ""

    @classmethod
    def from_proto(cls, s: run_pb2.RunSource) -> RunSource | None:
        """The source of a RunSource message; None for none (no type and no id)."""
        kind = _word(s.type, run_pb2.RunSourceType, "RUN_SOURCE_TYPE_")
        return cls(kind, s.id) if kind or s.id else None

    def to_proto(self) -> run_pb2.RunSource:
        """The source as a RunSource message (an empty type is UNSPECIFIED)."""
        return run_pb2.RunSource(
            type=run_source_type_number(self.type) if self.type else 0,  # type: ignore[arg-type]
            id=self.id,
        )


@dataclass(frozen=True)
class RunTag:
    """A run's tag."""

    key: str
    value: str


@dataclass(frozen=True)
class ExperimentTag:
    """An experiment's tag."""

    key: str
    value: str


@dataclass(frozen=True)
class MetricSummary:
    """What trackd keeps of a whole series: point and NaN counts, min, max, mean and
    standard deviation of the non-NaN values, the first and last step, and the latest
    point (greatest step, timestamp, value)."""

    key: str
    count: int
    nan_count: int
    min: float
    max: float
    mean: float
    stddev: float
    first_step: int
    last_step: int
    latest_value: float
    latest_step: int
    latest_timestamp: int
    proto: metric_pb2.MetricSummary | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, s: metric_pb2.MetricSummary) -> MetricSummary:
        """The summary of a MetricSummary message."""
        return cls(
            s.key,
            s.count,
            s.nan_count,
            s.min,
            s.max,
            s.mean,
            s.stddev,
            s.first_step,
            s.last_step,
            s.latest_value,
            s.latest_step,
            s.latest_timestamp,
            s,
        )


@dataclass(frozen=True)
class RunInfo:
    """A run's attributes. `status` is a RunStatus word (UNRESPONSIVE for a RUNNING run
    silent longer than the server's liveness window); `end_time` is None while the run
    has not ended; `last_seen_time` is when the server last heard from the run (a
    heartbeat or a point; its start time if never); times are milliseconds since the Unix
    epoch.

    The run's place and provenance: `parent_run_id` (None for a root run), `depth` (0 for
    a root, its parent's plus one for a child), `has_children` (it has active child
    runs), `description` (also the `mlflow.note.content` tag), `external_url` and `source`
    (a RunSource), each None when unset; `duration` in seconds (end minus start, or now
    minus start while the run is RUNNING; None when unknown); `deleted_time` is when the
    run was deleted, None while it is active."""

    run_id: str
    run_name: str
    experiment_id: str
    user_id: str
    status: str
    start_time: int
    end_time: int | None
    artifact_uri: str
    lifecycle_stage: str
    last_seen_time: int = 0
    proto: run_pb2.RunInfo | None = field(default=None, repr=False, compare=False)
    parent_run_id: str | None = None
    has_children: bool = False
    description: str | None = None
    external_url: str | None = None
    source: RunSource | None = None
    duration: float | None = None
    deleted_time: int | None = None
    depth: int = 0

    @property
    def run_uuid(self) -> str:
        """The run id (MLflow's older name)."""
        return self.run_id

    @classmethod
    def from_proto(cls, i: run_pb2.RunInfo) -> RunInfo:
        """The attributes of a RunInfo message."""
        return cls(
            i.run_id,
            i.run_name,
            i.experiment_id,
            i.user_id,
            _word(i.status, run_pb2.RunStatus, "RUN_STATUS_"),
            i.start_time,
            i.end_time or None,
            i.artifact_uri,
            _stage(i.lifecycle_stage),
            i.last_seen_time,
            i,
            parent_run_id=i.parent_run_id or None,
            has_children=i.has_children,
            description=i.description or None,
            external_url=i.external_url or None,
            source=RunSource.from_proto(i.source) if i.HasField("source") else None,
            duration=i.duration if i.HasField("duration") else None,
            deleted_time=i.deleted_time or None,
            depth=i.depth,
        )


@dataclass(frozen=True)
class RunData:
    """A run's data: `metrics` (key -> latest value), `params`, `tags` (key -> value),
    `metric_summaries` (key -> MetricSummary) and `latest_metrics` (key -> Metric, the
    latest point with its step and timestamp). `params` holds MLflow's string forms
    ("0.001", "True"); `typed_params` the values decoded by the type they were logged with
    (0.001, True; an untyped param stays a string)."""

    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]
    metric_summaries: dict[str, MetricSummary]
    latest_metrics: dict[str, Metric]
    proto: run_pb2.RunData | None = field(default=None, repr=False, compare=False)
    typed_params: dict[str, ParamValue] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, d: run_pb2.RunData) -> RunData:
        """The data of a RunData message."""
        latest = {m.key: Metric.from_proto(m) for m in d.metrics}
        return cls(
            {k: m.value for k, m in latest.items()},
            {p.key: p.value for p in d.params},
            {t.key: t.value for t in d.tags},
            {s.key: MetricSummary.from_proto(s) for s in d.metric_summaries},
            latest,
            d,
            {p.key: typed_param_value(p.value, p.type) for p in d.params},
        )


@dataclass(frozen=True)
class Dataset:
    """A dataset as a run uses it (MLflow's fields): name and digest identify it within an
    experiment; source_type ("s3", "local", ...) and source (where it lives) are required;
    schema and profile are optional JSON text."""

    name: str
    digest: str
    source_type: str
    source: str
    schema: str = ""
    profile: str = ""

    @classmethod
    def from_proto(cls, d: dataset_pb2.Dataset) -> Dataset:
        """The dataset of a Dataset message."""
        return cls(d.name, d.digest, d.source_type, d.source, d.schema, d.profile)

    def to_proto(self) -> dataset_pb2.Dataset:
        """The dataset as a Dataset message."""
        return dataset_pb2.Dataset(
            name=self.name,
            digest=self.digest,
            source_type=self.source_type,
            source=self.source,
            schema=self.schema,
            profile=self.profile,
        )


@dataclass(frozen=True)
class DatasetInput:
    """A dataset a run consumed, with the tags of that use (`mlflow.data.context`)."""

    dataset: Dataset
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, d: dataset_pb2.DatasetInput) -> DatasetInput:
        """The use of a DatasetInput message."""
        return cls(Dataset.from_proto(d.dataset), {t.key: t.value for t in d.tags})

    def to_proto(self) -> dataset_pb2.DatasetInput:
        """The use as a DatasetInput message."""
        return dataset_pb2.DatasetInput(
            dataset=self.dataset.to_proto(),
            tags=[dataset_pb2.InputTag(key=k, value=v) for k, v in self.tags.items()],
        )


@dataclass(frozen=True)
class LoggedModelInput:
    """A logged model a run consumed."""

    model_id: str


@dataclass(frozen=True)
class LoggedModelOutput:
    """A logged model a run produced, at a step."""

    model_id: str
    step: int = 0


@dataclass(frozen=True)
class RunInputs:
    """What a run consumed: datasets and logged models."""

    dataset_inputs: list[DatasetInput]
    model_inputs: list[LoggedModelInput]

    @classmethod
    def from_proto(cls, i: dataset_pb2.RunInputs) -> RunInputs:
        """The inputs of a RunInputs message."""
        return cls(
            [DatasetInput.from_proto(d) for d in i.dataset_inputs],
            [LoggedModelInput(m.model_id) for m in i.model_inputs],
        )


@dataclass(frozen=True)
class RunOutputs:
    """What a run produced: logged models."""

    model_outputs: list[LoggedModelOutput]

    @classmethod
    def from_proto(cls, o: dataset_pb2.RunOutputs) -> RunOutputs:
        """The outputs of a RunOutputs message."""
        return cls([LoggedModelOutput(m.model_id, m.step) for m in o.model_outputs])


@dataclass(frozen=True)
class Run:
    """A run: `info` (attributes), `data` (metrics, params, tags, summaries), `inputs`
    and `outputs`; `proto` is the Run message it was made from. `descendant_match` is set
    in `search_runs(..., root_runs_only=True)` results: some descendant of this root run
    matched the filter."""

    info: RunInfo
    data: RunData
    inputs: RunInputs
    outputs: RunOutputs
    proto: run_pb2.Run | None = field(default=None, repr=False, compare=False)
    descendant_match: bool = False

    @classmethod
    def from_proto(cls, r: run_pb2.Run) -> Run:
        """The run of a Run message."""
        return cls(
            RunInfo.from_proto(r.info),
            RunData.from_proto(r.data),
            RunInputs.from_proto(r.inputs),
            RunOutputs.from_proto(r.outputs),
            r,
            r.descendant_match,
        )


@dataclass(frozen=True)
class Experiment:
    """An experiment; `lifecycle_stage` is "active" or "deleted", times are milliseconds
    since the Unix epoch, `tags` is a dict."""

    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: str
    creation_time: int
    last_update_time: int
    tags: dict[str, str]
    proto: experiment_pb2.Experiment | None = field(default=None, repr=False, compare=False)
    # The workspace it belongs to ("default" with auth off) and the principal that made it.
    workspace: str = "default"
    owner: str = ""

    @classmethod
    def from_proto(cls, e: experiment_pb2.Experiment) -> Experiment:
        """The experiment of an Experiment message."""
        return cls(
            e.experiment_id,
            e.name,
            e.artifact_location,
            _stage(e.lifecycle_stage),
            e.creation_time,
            e.last_update_time,
            {t.key: t.value for t in e.tags},
            e,
            e.workspace,
            e.owner,
        )


# Databricks' names of the levels, by PermissionLevel number.
PERMISSION_LEVELS = {1: "CAN_READ", 2: "CAN_EDIT", 3: "CAN_MANAGE"}


def permission_level_number(level: str | int) -> int:
    """The PermissionLevel number of "CAN_READ"/"CAN_EDIT"/"CAN_MANAGE" (or 1..3)."""
    if isinstance(level, int):
        return level
    for number, name in PERMISSION_LEVELS.items():
        if level.upper() in (name, name.removeprefix("CAN_")):
            return number
    raise ValueError(f"{level!r} is not CAN_READ, CAN_EDIT or CAN_MANAGE")


@dataclass(frozen=True)
class Permission:
    """One level held on an experiment: `permission_level` is "CAN_READ", "CAN_EDIT" or
    "CAN_MANAGE"; `inherited_from_object` names the workspace of an inherited one."""

    permission_level: str
    inherited: bool
    inherited_from_object: str


@dataclass(frozen=True)
class AccessControl:
    """Every level one principal (`user_name`) or group (`group_name`) holds."""

    user_name: str
    group_name: str
    all_permissions: list[Permission]

    @classmethod
    def from_proto(cls, a: experiment_pb2.AccessControl) -> AccessControl:
        """The entry of an AccessControl message."""
        return cls(
            a.user_name,
            a.group_name,
            [
                Permission(
                    PERMISSION_LEVELS.get(p.permission_level, "UNSPECIFIED"),
                    p.inherited,
                    p.inherited_from_object,
                )
                for p in a.all_permissions
            ],
        )


@dataclass(frozen=True)
class LoggedModel:
    """A logged model (MLflow 3), flat as MLflow's entity: `status` is a LoggedModelStatus
    word, `params` and `tags` are dicts, `metrics` the latest point per (key, dataset)."""

    model_id: str
    experiment_id: str
    name: str
    model_type: str
    source_run_id: str
    status: str
    status_message: str
    creation_timestamp: int
    last_updated_timestamp: int
    artifact_location: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: list[Metric]
    proto: logged_model_pb2.LoggedModel | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, m: logged_model_pb2.LoggedModel) -> LoggedModel:
        """The model of a LoggedModel message."""
        i = m.info
        return cls(
            i.model_id,
            i.experiment_id,
            i.name,
            i.model_type,
            i.source_run_id,
            _word(i.status, logged_model_pb2.LoggedModelStatus, "LOGGED_MODEL_STATUS_"),
            i.status_message,
            i.creation_timestamp,
            i.last_updated_timestamp,
            i.artifact_uri,
            {t.key: t.value for t in i.tags},
            {p.key: p.value for p in m.data.params},
            [Metric.from_proto(x) for x in m.data.metrics],
            m,
        )


@dataclass(frozen=True)
class DatasetSummary:
    """A dataset an experiment's runs used, with the context of that use."""

    experiment_id: str
    name: str
    digest: str
    context: str
    proto: dataset_pb2.DatasetSummary | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, s: dataset_pb2.DatasetSummary) -> DatasetSummary:
        """The summary of a DatasetSummary message."""
        return cls(s.experiment_id, s.name, s.digest, s.context, s)


@dataclass(frozen=True)
class FileInfo:
    """An artifact file, or a directory of artifacts, of a run or a logged model. `path` is
    relative to the owner's artifact root ('/'-separated); a directory has `is_dir` True,
    `file_size` None (as MLflow's FileInfo), no hash and no time. `sha256` is 64 lowercase
    hex digits; `modification_time` is when this content was stored, in milliseconds since
    the Unix epoch; `row_count` is a CSV or Parquet table's number of data rows, where the
    server could read it cheaply, else None."""

    path: str
    is_dir: bool
    file_size: int | None
    sha256: str = ""
    content_type: str = ""
    modification_time: int | None = None
    row_count: int | None = None
    proto: artifact_pb2.FileInfo | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, f: artifact_pb2.FileInfo) -> FileInfo:
        """The entry of a FileInfo message."""
        if f.is_dir:
            return cls(f.path, True, None, proto=f)
        return cls(
            f.path,
            False,
            f.file_size,
            f.sha256,
            f.content_type,
            f.modification_time or None,
            f.row_count if f.HasField("row_count") else None,
            f,
        )


def key_values(
    items: Mapping[str, object] | Iterable[Any] | None, arg: str
) -> list[tuple[object, object]]:
    """(key, value) pairs from a dict, or from a sequence of Param/RunTag-like objects
    (anything with .key and .value, messages included) or 2-tuples.

    Raises:
        TypeError: an item is none of these.
    """
    if items is None:
        return []
    if isinstance(items, Mapping):
        return list(items.items())
    if isinstance(items, str | bytes):
        raise TypeError(f"{arg} must be a dict or a sequence of (key, value), not a string")
    out: list[tuple[object, object]] = []
    for i, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2:
            out.append((item[0], item[1]))
        elif hasattr(item, "key") and hasattr(item, "value"):
            out.append((item.key, item.value))
        else:
            raise TypeError(
                f"{arg}[{i}] must be a (key, value) pair or have .key and .value, "
                f"not {type(item).__name__}"
            )
    return out


__all__ = [
    "Dataset",
    "DatasetInput",
    "DatasetSummary",
    "Experiment",
    "ExperimentTag",
    "FileInfo",
    "LifecycleStage",
    "LoggedModel",
    "LoggedModelInput",
    "LoggedModelOutput",
    "LoggedModelStatus",
    "Metric",
    "MetricSummary",
    "PagedList",
    "Param",
    "ParamType",
    "ParamValue",
    "Run",
    "RunData",
    "RunInfo",
    "RunInputs",
    "RunOutputs",
    "RunSource",
    "RunSourceType",
    "RunStatus",
    "RunTag",
    "ViewType",
    "key_values",
    "model_status_number",
    "param_type_number",
    "run_source_type_number",
    "run_status_number",
    "typed_param_value",
    "view_type_number",
]
