"""Turning what a caller passes (dicts, tuples, entities, messages) into checked request
messages, so that a bad key, value or type is reported at the call that made it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from google.protobuf.message import Message

from trackd.client import checks
from trackd.client.entities import (
    Dataset,
    DatasetInput,
    LoggedModelInput,
    LoggedModelOutput,
    Metric,
    RunSource,
    key_values,
    param_type_number,
    run_source_type_number,
)
from trackd.v1 import dataset_pb2, experiment_pb2, logged_model_pb2, metric_pb2, run_pb2

# A metric point for log_batch: a Metric (entity or message), or a tuple (key, value),
# (key, value, step) or (key, value, step, timestamp).
MetricLike = Metric | metric_pb2.Metric | tuple[Any, ...]

# The input tag that says what a dataset was used for (MLflow's name).
DATASET_CONTEXT_TAG = "mlflow.data.context"


def now_ms() -> int:
    """The client's clock, in milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def metric(m: MetricLike, field: str) -> metric_pb2.Metric:
    """A checked Metric message for one item of a batch.

    Raises:
        TypeError: the item or one of its fields has the wrong type.
        InvalidArgumentError: a key or value breaks a rule.
    """
    if isinstance(m, Metric):
        m = m.to_proto()
    if isinstance(m, metric_pb2.Metric):
        return metric_pb2.Metric(
            key=checks.check_key(m.key, f"{field}.key"),
            value=m.value,
            timestamp=checks.timestamp_value(m.timestamp or None, f"{field}.timestamp"),
            step=m.step,
            model_id=m.model_id,
            dataset_name=m.dataset_name,
            dataset_digest=m.dataset_digest,
        )
    if not isinstance(m, tuple) or not 2 <= len(m) <= 4:
        raise TypeError(
            f"{field} must be a Metric or a tuple (key, value[, step[, timestamp]]), "
            f"not {type(m).__name__}"
        )
    key, value, *rest = m
    return metric_pb2.Metric(
        key=checks.check_key(key, f"{field}.key"),
        value=checks.metric_value(value, f"{field}.value"),
        step=checks.step_value(rest[0] if rest else None, f"{field}.step"),
        timestamp=checks.timestamp_value(rest[1] if len(rest) > 1 else None, f"{field}.timestamp"),
    )


def metrics(items: Iterable[MetricLike], arg: str = "metrics") -> list[metric_pb2.Metric]:
    """Checked Metric messages for a batch; fields are named `metrics[i].key` and so on."""
    return [metric(m, f"{arg}[{i}]") for i, m in enumerate(items)]


Pairs = Mapping[str, object] | Iterable[Any] | None
M = TypeVar("M", bound=Message)


def _pairs(
    items: Pairs, arg: str, make: Callable[..., M], value: Callable[[object, str], str]
) -> list[M]:
    """Checked key/value messages from a dict or a sequence of (key, value)-likes; fields
    are named `arg[i].key` and `arg[i].value`."""
    return [
        make(key=checks.check_key(k, f"{arg}[{i}].key"), value=value(v, f"{arg}[{i}].value"))
        for i, (k, v) in enumerate(key_values(items, arg))
    ]


def _experiment_tag_value(value: object, field: str) -> str:
    return checks.tag_value(value, field, checks.EXPERIMENT_TAG_VALUE_MAX)


def param(key: object, value: object, field: str, kind: object = None) -> run_pb2.Param:
    """A checked Param message, typed from the value's Python type (checks.param_type)
    unless `kind` (a ParamType word, enum or number; None or "" for none) says the type,
    which the text must then be a literal of; fields are named `field.key` and
    `field.value`.

    Raises:
        TypeError: a key or value of the wrong type. ValueError: an unknown type.
        InvalidArgumentError: a bad key, or a value too long or not of its type.
    """
    text, typed = checks.typed_param_value(value, f"{field}.value")
    if kind is not None and kind != "":
        typed = param_type_number(kind, f"{field}.type")
        checks.param_literal(text, typed, f"{field}.value")
    return run_pb2.Param(key=checks.check_key(key, f"{field}.key"), value=text, type=typed)


def params(items: Pairs, arg: str = "params") -> list[run_pb2.Param]:
    """Checked, typed Param messages from a dict or a sequence of Param (entity or
    message: a type it names is kept) or (key, value) pairs; a value's type is its Python
    type's (bool BOOL, int INT, float DOUBLE, str STRING, else untyped), its text
    MLflow's `str(value)`."""
    if items is None or isinstance(items, Mapping | str | bytes):
        kinds: list[object] = []
    else:
        items = list(items)
        kinds = [getattr(item, "type", None) for item in items]
    return [
        param(k, v, f"{arg}[{i}]", kinds[i] if kinds else None)
        for i, (k, v) in enumerate(key_values(items, arg))
    ]


def run_tags(items: Pairs, arg: str = "tags") -> list[run_pb2.RunTag]:
    """Checked RunTag messages from a dict or a sequence of RunTag/(key, value)."""
    return _pairs(items, arg, run_pb2.RunTag, checks.tag_value)


def experiment_tags(items: Pairs, arg: str = "tags") -> list[experiment_pb2.ExperimentTag]:
    """Checked ExperimentTag messages (values at most 5000 characters)."""
    return _pairs(items, arg, experiment_pb2.ExperimentTag, _experiment_tag_value)


def model_params(items: Pairs, arg: str = "params") -> list[logged_model_pb2.LoggedModelParameter]:
    """Checked LoggedModelParameter messages."""
    return _pairs(items, arg, logged_model_pb2.LoggedModelParameter, checks.param_value)


def model_tags(items: Pairs, arg: str = "tags") -> list[logged_model_pb2.LoggedModelTag]:
    """Checked LoggedModelTag messages."""
    return _pairs(items, arg, logged_model_pb2.LoggedModelTag, checks.tag_value)


def dataset(d: Dataset | dataset_pb2.Dataset, arg: str = "dataset") -> dataset_pb2.Dataset:
    """A Dataset message from the entity or the message."""
    if isinstance(d, Dataset):
        return d.to_proto()
    if isinstance(d, dataset_pb2.Dataset):
        return d
    raise TypeError(f"{arg} must be a trackd.client.Dataset, not {type(d).__name__}")


def dataset_input(
    d: DatasetInput | dataset_pb2.DatasetInput, arg: str = "datasets"
) -> dataset_pb2.DatasetInput:
    """A DatasetInput message from the entity or the message."""
    if isinstance(d, DatasetInput):
        return d.to_proto()
    if isinstance(d, dataset_pb2.DatasetInput):
        return d
    raise TypeError(f"{arg} items must be DatasetInput, not {type(d).__name__}")


def model_input(m: LoggedModelInput | dataset_pb2.ModelInput | str) -> dataset_pb2.ModelInput:
    """A ModelInput message from a model id, the entity or the message."""
    if isinstance(m, dataset_pb2.ModelInput):
        return m
    model_id = m.model_id if isinstance(m, LoggedModelInput) else m
    if not isinstance(model_id, str):
        raise TypeError(f"models items must be model ids or LoggedModelInput, not {type(m)}")
    return dataset_pb2.ModelInput(model_id=model_id)


def model_output(
    m: LoggedModelOutput | dataset_pb2.ModelOutput | str,
) -> dataset_pb2.ModelOutput:
    """A ModelOutput message from a model id (step 0), the entity or the message."""
    if isinstance(m, dataset_pb2.ModelOutput):
        return m
    if isinstance(m, LoggedModelOutput):
        return dataset_pb2.ModelOutput(model_id=m.model_id, step=checks.step_value(m.step))
    if not isinstance(m, str):
        raise TypeError(f"models items must be model ids or LoggedModelOutput, not {type(m)}")
    return dataset_pb2.ModelOutput(model_id=m)


# What a run's source may be given as: a RunSource (entity or message), or a pair
# (type, id) whose type is a word ("job", "JOB"), a RunSourceType or its number.
RunSourceLike = RunSource | run_pb2.RunSource | tuple[Any, Any]


def run_source(source: RunSourceLike | str, arg: str = "source") -> run_pb2.RunSource:
    """A RunSource message from a RunSource, a (type, id) pair, or "" (none: the message
    that clears a run's source).

    Raises:
        TypeError: none of these, or an id that is not a str. ValueError: an unknown type.
    """
    if isinstance(source, run_pb2.RunSource):
        return source
    if isinstance(source, str):
        if source:
            raise TypeError(f"{arg} must be a RunSource or a (type, id) pair, not a string")
        return run_pb2.RunSource()
    if isinstance(source, RunSource):
        kind, ident = source.type, source.id
    elif isinstance(source, tuple) and len(source) == 2:
        kind, ident = source
    else:
        raise TypeError(
            f"{arg} must be a RunSource or a (type, id) pair, not {type(source).__name__}"
        )
    if not isinstance(ident, str):
        raise TypeError(f"{arg} id must be a str, not {type(ident).__name__}")
    number = 0 if kind in (None, "") else run_source_type_number(kind, f"{arg}.type")
    return run_pb2.RunSource(type=number, id=ident)  # type: ignore[arg-type]


def order_by(items: Iterable[object] | None, arg: str = "order_by") -> list[str]:
    """Order clauses: strings ("metrics.acc DESC") or MLflow's logged-model dicts
    ({"field_name": "metrics.acc", "ascending": False})."""
    out: list[str] = []
    for i, item in enumerate(items or ()):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, Mapping) and isinstance(item.get("field_name"), str):
            out.append(f"{item['field_name']} {'ASC' if item.get('ascending', True) else 'DESC'}")
        else:
            raise TypeError(f"{arg}[{i}] must be a string such as 'metrics.acc DESC'")
    return out


def ids(value: str | Iterable[str], arg: str) -> list[str]:
    """A list of ids from one id or many."""
    if isinstance(value, str):
        return [value]
    out = list(value)
    for i, x in enumerate(out):
        if not isinstance(x, str):
            raise TypeError(f"{arg}[{i}] must be a str id, not {type(x).__name__}")
    return out
