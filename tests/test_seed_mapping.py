"""The seed APIs, mapped: README.md's tables, checked against the contract and filled from a
running server.

The tables are read from README.md (section "The seed APIs, mapped"), never copied here, so
that the README cannot drift from what trackd answers. The static half checks every RPC and
field path against the generated descriptors of `trackd.v1` and that each seed's fields are
all listed; the live half writes runs, reads them back through the RPCs the tables name,
fills each seed's document row by row, and compares it with what was written.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import math
import pkgutil
import re
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor as pbd
from google.protobuf import message_factory
from google.protobuf.message import Message

import trackd.v1
from helpers import upload_artifact
from trackd.v1 import artifact_service_pb2 as apb
from trackd.v1 import (
    artifact_service_pb2_grpc,
    dataset_pb2,
    logged_model_service_pb2_grpc,
    metric_pb2,
    run_pb2,
)
from trackd.v1 import experiment_pb2 as xpb
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import logged_model_service_pb2 as lpb
from trackd.v1 import run_service_pb2 as rpb

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "### The seed APIs, mapped"
SEEDS = ("Datadog", "Foundry", "PAI", "Oracle", "Databricks")
NONE = "—"

FIELD_HEADER = ("seed field", "trackd call", "trackd field", "note")
REQUEST_HEADER = ("seed parameter", "trackd call", "trackd request field", "trackd value", "note")
VALUE_HEADER = ("seed value", "trackd value", "note")
METHOD_HEADER = ("seed call", "trackd call", "note")

# -- the seeds' own vocabulary (from their published documents) -------------------------------

_DATADOG_SUMMARY = ("key", "count", "first_step", "last_step", "latest", "max", "mean", "min")
SEED_FIELDS: dict[str, set[str]] = {
    "Datadog": {"data.id", "data.type"}
    | {
        f"data.attributes.{name}"
        for name in (
            "completed_at created_at deleted_at descendant_match description duration "
            "external_url has_children is_pinned mlflow_artifact_location name owner_id "
            "project_id started_at status updated_at"
        ).split()
    }
    | {f"data.attributes.params[].{k}" for k in ("key", "value")}
    | {f"data.attributes.tags[].{k}" for k in ("key", "value")}
    | {f"data.attributes.metric_summaries[].{k}" for k in (*_DATADOG_SUMMARY, "stddev")},
    "Foundry": {
        "rid",
        "modelRid",
        "createdTime",
        "createdBy",
        "source.type",
        "source.containerRid",
        "source.deploymentRid",
        "status",
        "branch",
        "parameters[].name",
        "parameters[].value.type",
        "parameters[].value.value",
        "series[].name",
        "series[].length",
        "series[].value.type",
        "series[].value.min",
        "series[].value.max",
        "series[].value.last",
        "summaryMetrics[].seriesName",
        "summaryMetrics[].aggregation",
        "summaryMetrics[].value",
        "artifacts{}.name",
        "artifacts{}.description",
        "artifacts{}.sizeBytes",
        "artifacts{}.details.type",
        "artifacts{}.details.rowCount",
        "tags[]",
        "linkedModelVersion",
        "jobRid",
    },
    "PAI": {"requestId", "TotalCount", "NextPageToken"}
    | {
        f"Runs[].{name}"
        for name in (
            "RunId Name ExperimentId WorkspaceId OwnerId UserId SourceType SourceId "
            "Accessibility GmtCreateTime GmtModifiedTime RequestId"
        ).split()
    }
    | {f"Runs[].Params[].{k}" for k in ("Key", "Value")}
    | {f"Runs[].Labels[].{k}" for k in ("Key", "Value", "RunId", "GmtCreateTime")}
    | {"Runs[].Labels[].GmtModifiedTime"}
    | {f"Runs[].Metrics[].{k}" for k in ("Key", "Value", "Step", "Timestamp")},
    "Oracle": {"etag"}
    | {
        f"run.info.{name}"
        for name in (
            "artifact_uri end_time experiment_id lifecycle_stage run_id run_name run_uuid "
            "start_time status user_id"
        ).split()
    }
    | {f"run.data.metrics[].{k}" for k in ("key", "step", "timestamp", "value")}
    | {f"run.data.params[].{k}" for k in ("key", "value")}
    | {f"run.data.tags[].{k}" for k in ("key", "value")}
    | {
        f"run.inputs.dataset_inputs[].dataset.{k}"
        for k in ("digest", "name", "profile", "schema", "source", "source_type")
    }
    | {f"run.inputs.dataset_inputs[].tags[].{k}" for k in ("key", "value")}
    | {"run.inputs.model_inputs[].model_id"}
    | {f"run.outputs.model_outputs[].{k}" for k in ("model_id", "step")},
}

SEED_PARAMETERS: dict[str, set[str]] = {
    "Datadog": {"run_id"},
    "Foundry": {"experimentRid", "modelRid", "preview"},
    "PAI": set(
        (
            "Name WorkspaceId ExperimentId SourceType SourceId Labels Verbose GmtCreateTime "
            "OrderBy SortBy Order PageToken MaxResults PageNumber PageSize"
        ).split()
    ),
    "Oracle": {"run_id", "aiDataPlatformId", "workspaceKey", "dh-user-principal", "opc-request-id"},
}

SEED_STATUS_VALUES: dict[str, set[str]] = {
    "Datadog": set("pending running completed failed killed unresponsive paused".split()),
    "Foundry": {"RUNNING", "SUCCEEDED", "FAILED"},
    "Oracle": set("RUNNING SCHEDULED FINISHED FAILED KILLED INTERNAL_ERROR".split()),
}
SEED_STATUS_FIELD = {
    "Datadog": "data.attributes.status",
    "Foundry": "status",
    "Oracle": "run.info.status",
}

DATABRICKS_METHODS = set(
    (
        "createExperiment createLoggedModel createRun deleteExperiment deleteLoggedModel "
        "deleteLoggedModelTag deleteRun deleteRuns deleteTag finalizeLoggedModel getByName "
        "getExperiment getHistory getLoggedModel getPermissionLevels getPermissions getRun "
        "listArtifacts listExperiments logBatch logInputs logLoggedModelParams logMetric "
        "logModel logOutputs logParam restoreExperiment restoreRun restoreRuns "
        "searchExperiments searchLoggedModels searchRuns setExperimentTag setLoggedModelTags "
        "setPermissions setTag updateExperiment updatePermissions updateRun"
    ).split()
)

# -- reading the README's tables ---------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    seed: str
    title: str
    header: tuple[str, ...]
    applies_to: tuple[str, ...]  # the backticked names of the heading (value tables)
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class FieldRow:
    seed: str
    seed_field: str
    call: str | None
    path: str | None
    constant: Any
    is_constant: bool
    note: str


@dataclass(frozen=True)
class RequestRow:
    seed: str
    parameter: str
    call: str | None
    field: str | None
    value: str | None
    note: str


@dataclass(frozen=True)
class ValueRow:
    seed: str
    fields: tuple[str, ...]
    seed_value: str
    trackd_values: tuple[str, ...]
    note: str


@dataclass(frozen=True)
class MethodRow:
    seed_call: str
    call: str | None
    note: str


def _code(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def _one_code(cell: str) -> str | None:
    """The single backticked span of a cell, or None for `—`."""
    if cell.strip() == NONE:
        return None
    spans = _code(cell)
    assert len(spans) == 1, f"expected one `...` in {cell!r}"
    return spans[0]


def _cells(line: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in line.strip().strip("|").split("|"))


@cache
def tables() -> tuple[Table, ...]:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    body = text.split(SECTION, 1)[1]
    end = re.search(r"^#{2,3} ", body, flags=re.MULTILINE)
    body = body[: end.start()] if end else body
    found: list[Table] = []
    for part in re.split(r"^#### ", body, flags=re.MULTILINE)[1:]:
        title, _, rest = part.partition("\n")
        lines = [ln for ln in rest.splitlines() if ln.startswith("|")]
        assert len(lines) >= 3, f"no table under #### {title}"
        seeds = [s for s in SEEDS if title.startswith(s)]
        assert len(seeds) == 1, f"#### {title} names no seed"
        header = _cells(lines[0])
        rows = tuple(_cells(ln) for ln in lines[2:])
        for row in rows:
            assert len(row) == len(header), f"#### {title}: {row} has not {len(header)} cells"
        found.append(Table(seeds[0], title, header, tuple(_code(title)), rows))
    return tuple(found)


def of_kind(header: tuple[str, ...], seed: str | None = None) -> list[Table]:
    return [t for t in tables() if t.header == header and seed in (None, t.seed)]


def field_rows(seed: str | None = None) -> list[FieldRow]:
    out = []
    for t in of_kind(FIELD_HEADER, seed):
        for seed_field, call, path, note in t.rows:
            target = _one_code(path)
            constant = target is not None and target.startswith("= ")
            out.append(
                FieldRow(
                    seed=t.seed,
                    seed_field=_one_code(seed_field) or "",
                    call=_one_code(call),
                    path=None if constant else target,
                    constant=json.loads(target[2:]) if constant and target else None,
                    is_constant=constant,
                    note=note,
                )
            )
    return out


def request_rows(seed: str | None = None) -> list[RequestRow]:
    out = []
    for t in of_kind(REQUEST_HEADER, seed):
        for parameter, call, field, value, note in t.rows:
            out.append(
                RequestRow(
                    seed=t.seed,
                    parameter=_one_code(parameter) or "",
                    call=_one_code(call),
                    field=_one_code(field),
                    value=_one_code(value) if value else None,
                    note=note,
                )
            )
    return out


def value_rows(seed: str | None = None) -> list[ValueRow]:
    out = []
    for t in of_kind(VALUE_HEADER, seed):
        for seed_value, trackd_values, note in t.rows:
            values = () if trackd_values == NONE else tuple(_code(trackd_values))
            out.append(ValueRow(t.seed, t.applies_to, _one_code(seed_value) or "", values, note))
    return out


def method_rows() -> list[MethodRow]:
    out = []
    for t in of_kind(METHOD_HEADER):
        for seed_call, call, note in t.rows:
            out.append(MethodRow(_one_code(seed_call) or "", _one_code(call), note))
    return out


# -- the contract, from the generated descriptors ----------------------------------------------


@cache
def pb2_modules() -> tuple[ModuleType, ...]:
    names = [m.name for m in pkgutil.iter_modules(trackd.v1.__path__) if m.name.endswith("_pb2")]
    return tuple(importlib.import_module(f"trackd.v1.{name}") for name in sorted(names))


@cache
def methods() -> dict[str, list[pbd.MethodDescriptor]]:
    found: dict[str, list[pbd.MethodDescriptor]] = {}
    for module in pb2_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.setdefault(method.name, []).append(method)
    return found


def method(name: str) -> pbd.MethodDescriptor:
    named = methods().get(name, [])
    assert len(named) == 1, f"{name}: {len(named)} RPCs of that name in trackd.v1"
    return named[0]


@cache
def enum_values() -> dict[str, pbd.EnumValueDescriptor]:
    found: dict[str, pbd.EnumValueDescriptor] = {}
    for module in pb2_modules():
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            for value in enum.values:
                found[value.name] = value
    return found


def field_path(message: pbd.Descriptor, path: str) -> tuple[pbd.FieldDescriptor, int]:
    """The field `path` names under `message`, and how many repeated fields it crosses."""
    repeated = 0
    current: pbd.Descriptor | None = message
    fd: pbd.FieldDescriptor | None = None
    for segment in path.split("."):
        assert current is not None, f"{path}: {fd.name if fd else ''} is not a message"
        assert segment in current.fields_by_name, f"{path}: {current.full_name} has no {segment}"
        fd = current.fields_by_name[segment]
        repeated += fd.is_repeated
        current = fd.message_type
    assert fd is not None
    return fd, repeated


def _markers(seed_field: str) -> int:
    return seed_field.count("[]") + seed_field.count("{}")


# -- static checks ------------------------------------------------------------------------------


def test_the_section_has_each_seeds_tables() -> None:
    kinds = {(t.seed, t.header) for t in tables()}
    for seed in ("Datadog", "Foundry", "PAI", "Oracle"):
        assert (seed, REQUEST_HEADER) in kinds, seed
        assert (seed, FIELD_HEADER) in kinds, seed
    assert ("Databricks", METHOD_HEADER) in kinds
    headers = {FIELD_HEADER, REQUEST_HEADER, VALUE_HEADER, METHOD_HEADER}
    assert {t.header for t in tables()} <= headers, [t.header for t in tables()]


def test_every_trackd_call_named_is_one_rpc_of_the_contract() -> None:
    calls = {r.call for r in field_rows() if r.call}
    calls |= {r.call for r in request_rows() if r.call}
    calls |= {r.call for r in method_rows() if r.call}
    assert calls
    for call in sorted(calls):
        method(call)


def test_every_response_field_path_resolves() -> None:
    for row in field_rows():
        if row.path is None:
            continue
        assert row.call, f"{row.seed} {row.seed_field}: a field without a call"
        fd, repeated = field_path(method(row.call).output_type, row.path)
        assert fd.message_type is None, f"{row.seed} {row.seed_field}: {row.path} is a message"
        # A list in the seed is a repeated field in trackd; a seed scalar read from a list
        # takes its one element (a search narrowed to the run, the run's one model); a value
        # outside a list is given to every element (a run's id to each of its labels).
        assert repeated <= _markers(row.seed_field) + 1, (row.seed_field, row.path)


def test_every_request_field_resolves() -> None:
    for row in request_rows():
        if row.field is None:
            continue
        assert row.call and row.value, f"{row.seed} {row.parameter}: needs a call and a value"
        fd, _ = field_path(method(row.call).input_type, row.field)
        assert fd.message_type is None, row


def test_every_row_without_a_counterpart_says_why() -> None:
    for frow in field_rows():
        if frow.path is None:
            assert frow.note.strip(), f"{frow.seed} {frow.seed_field}: no trackd field, no reason"
        if frow.is_constant:
            assert frow.call is None, frow
    for rrow in request_rows():
        if rrow.field is None:
            assert rrow.call is None and not rrow.value, rrow
            assert rrow.note.strip(), f"{rrow.seed} {rrow.parameter}: no trackd field, no reason"
    for vrow in value_rows():
        if not vrow.trackd_values:
            assert vrow.note.strip(), f"{vrow.seed} {vrow.seed_value}: no trackd value, no reason"
    for mrow in method_rows():
        if mrow.call is None:
            assert mrow.note.strip(), f"{mrow.seed_call}: no trackd call, no reason"


def test_each_seeds_fields_and_parameters_are_all_listed() -> None:
    for seed, expected in SEED_FIELDS.items():
        listed = [r.seed_field for r in field_rows(seed)]
        assert len(listed) == len(set(listed)), f"{seed}: a seed field listed twice"
        assert set(listed) == expected, (
            f"{seed}: missing {expected - set(listed)}, unknown {set(listed) - expected}"
        )
    for seed, expected_params in SEED_PARAMETERS.items():
        params = {r.parameter.split(" ")[0] for r in request_rows(seed)}
        assert params == expected_params, seed


def test_databricks_methods_are_all_listed() -> None:
    listed = [r.seed_call for r in method_rows()]
    assert len(listed) == len(set(listed))
    assert set(listed) == DATABRICKS_METHODS


def test_value_tables_name_enum_values_of_the_fields_they_map() -> None:
    assert value_rows()
    for t in of_kind(VALUE_HEADER):
        assert t.applies_to, f"#### {t.title} names no field"
        enums = set()
        for name in t.applies_to:
            enums |= {_enum_of(t.seed, name)}
        assert len(enums) == 1, f"#### {t.title}: fields of different types {enums}"
        enum = enums.pop()
        seen: set[str] = set()
        for row in value_rows(t.seed):
            if row.fields != t.applies_to:
                continue
            for value in row.trackd_values:
                assert value in enum.values_by_name, f"#### {t.title}: {value} not in {enum.name}"
                assert value not in seen, f"#### {t.title}: {value} in two rows"
                seen.add(value)
    for seed, expected in SEED_STATUS_VALUES.items():
        status_rows = [r for r in value_rows(seed) if SEED_STATUS_FIELD[seed] in r.fields]
        assert {r.seed_value for r in status_rows} == expected, seed


def _enum_of(seed: str, name: str) -> pbd.EnumDescriptor:
    """The trackd enum behind seed field (or request parameter) `name`."""
    for row in field_rows(seed):
        if row.seed_field == name and row.path and row.call:
            fd, _ = field_path(method(row.call).output_type, row.path)
            assert fd.enum_type is not None, f"{seed} {name}: {row.path} is not an enum"
            return fd.enum_type
    for rrow in request_rows(seed):
        if rrow.parameter == name and rrow.value:
            # A filter value: the enum a value row names.
            for vrow in value_rows(seed):
                if name in vrow.fields and vrow.trackd_values:
                    return enum_values()[vrow.trackd_values[0]].type
    raise AssertionError(f"{seed}: no field {name} to map values of")


# -- filling a seed's document from answers ------------------------------------------------------


def lookup(message: Message, path: str) -> Any:
    """The value at `path` in `message`: a list per repeated field crossed, None for an unset
    field with presence, an enum's value name."""
    name, _, rest = path.partition(".")
    fd = message.DESCRIPTOR.fields_by_name[name]
    value = getattr(message, name)
    if fd.is_repeated:
        return [_leaf(fd, v, rest) for v in value]
    if fd.has_presence and not message.HasField(name):
        return None
    return _leaf(fd, value, rest)


def _leaf(fd: Any, value: Any, rest: str) -> Any:
    if rest:
        return lookup(value, rest)
    if fd.enum_type is not None:
        return fd.enum_type.values_by_number[value].name
    return value


def deep_map(f: Callable[[Any], Any], value: Any) -> Any:
    if isinstance(value, list):
        return [deep_map(f, v) for v in value]
    return f(value)


def _tokens(seed_field: str) -> list[tuple[str, str]]:
    out = []
    for segment in seed_field.split("."):
        m = re.fullmatch(r"([^\[\]{}]+)(\[\]|\{\})?", segment)
        assert m, seed_field
        out.append((m.group(1), m.group(2) or ""))
    return out


def put(doc: dict[str, Any], tokens: list[tuple[str, str]], value: Any) -> None:
    """Sets a seed field: a list value fills a list marker element by element, a single value
    is given to every element already there."""
    (name, mark), rest = tokens[0], tokens[1:]
    if isinstance(value, list) and not any(m for _, m in tokens):
        value = value[0] if value else None
    if not rest:
        doc[name] = value
        return
    if not mark:
        put(doc.setdefault(name, {}), rest, value)
        return
    items = doc.setdefault(name, [])
    if isinstance(value, list):
        while len(items) < len(value):
            items.append({})
        for item, v in zip(items, value, strict=False):
            put(item, rest, v)
    else:
        for item in items:
            put(item, rest, value)


def iso(ms: Any) -> str | None:
    if not ms:
        return None
    stamp = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def value_map(seed: str, seed_field: str) -> dict[str, str] | None:
    """trackd value name -> seed value, from the value table for `seed_field`, if any."""
    rows = [r for r in value_rows(seed) if seed_field in r.fields]
    if not rows:
        return None
    return {v: r.seed_value for r in rows for v in r.trackd_values}


# Conversions of a seed's own types (times, numbers) from trackd's; the value tables are
# applied on their own.
CONVERT: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("Datadog", "data.attributes.created_at"): iso,
    ("Datadog", "data.attributes.started_at"): iso,
    ("Datadog", "data.attributes.completed_at"): iso,
    ("Datadog", "data.attributes.deleted_at"): iso,
    ("Datadog", "data.attributes.project_id"): int,
    ("Foundry", "createdTime"): iso,
    ("Foundry", "artifacts{}.details.type"): lambda rows: None if rows is None else "table",
    ("PAI", "Runs[].GmtCreateTime"): iso,
}


def fill(seed: str, answers: dict[str, Message]) -> dict[str, Any]:
    """The seed's document, filled row by row from the answers of the calls the rows name."""
    doc: dict[str, Any] = {}
    for row in field_rows(seed):
        if row.is_constant:
            value = row.constant
        elif row.path is None or row.call is None:
            continue
        else:
            assert row.call in answers, f"{seed}: no {row.call} answer for {row.seed_field}"
            value = lookup(answers[row.call], row.path)
            mapping = value_map(seed, row.seed_field)
            if mapping is not None:
                value = deep_map(mapping.get, value)
            convert = CONVERT.get((seed, row.seed_field))
            if convert is not None:
                value = deep_map(convert, value)
        put(doc, _tokens(row.seed_field), value)
    for row in field_rows(seed):  # a `{}` map is keyed by its values' names
        tokens = _tokens(row.seed_field)
        if tokens[0][1] == "{}" and isinstance(doc.get(tokens[0][0]), list):
            doc[tokens[0][0]] = {item["name"]: item for item in doc[tokens[0][0]]}
    return doc


def rounded(value: Any) -> Any:
    """`value` with floats rounded to 12 significant digits (summaries are computed in
    another order on the server)."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


# -- the live half: a world of runs, read back through the mapped calls --------------------------

DESCRIPTION = "Fine-tuning run with custom hyperparameters."
EXTERNAL_URL = "https://ci.example.com/jobs/42"
JOB_ID = "job-rbvg5wzlj"
CONTAINER_ID = "ri.foundry-container-service.main.container.a1b2c3d4"
OWNER = "alice"
PARENT_PARAMS = [
    ("algorithm", "gpt4", run_pb2.PARAM_TYPE_STRING),
    ("epochs", "3", run_pb2.PARAM_TYPE_INT),
    ("learning_rate", "0.001", run_pb2.PARAM_TYPE_DOUBLE),
    ("use_amp", "true", run_pb2.PARAM_TYPE_BOOL),
]
CHILD_PARAMS = [
    ("learning_rate", "0.01", run_pb2.PARAM_TYPE_DOUBLE),
    ("role", "child", run_pb2.PARAM_TYPE_STRING),
]
# key -> [(step, value)]; integers so that mean and stddev are exact.
PARENT_SERIES = {
    "accuracy": [(0, 1.0), (1, 3.0)],
    "loss": [(s, v) for s, v in enumerate([9.0, 7.0, 5.0, 5.0, 4.0, 4.0, 4.0, 2.0])],
}
CHILD_SERIES = {"loss": [(0, 1.5), (1, 0.05), (2, 0.07)]}
TABLE_ROWS = 100


@dataclass
class World:
    experiment_id: str
    start: int
    parent: run_pb2.Run
    child: run_pb2.Run
    grandchild: run_pb2.Run
    model_in: str
    model_out: str
    model_child: str
    artifact: Any


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _points(series: dict[str, list[tuple[int, float]]], start: int) -> list[metric_pb2.Metric]:
    return [
        metric_pb2.Metric(key=key, value=value, step=step, timestamp=start + 1000 * step)
        for key, points in series.items()
        for step, value in points
    ]


def _params(params: list[tuple[str, str, Any]]) -> list[run_pb2.Param]:
    return [run_pb2.Param(key=k, value=v, type=t) for k, v, t in params]


@pytest.fixture(scope="module")
def artifacts(channel: grpc.aio.Channel) -> artifact_service_pb2_grpc.ArtifactServiceStub:
    return artifact_service_pb2_grpc.ArtifactServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel: grpc.aio.Channel) -> logged_model_service_pb2_grpc.LoggedModelServiceStub:
    return logged_model_service_pb2_grpc.LoggedModelServiceStub(channel)


async def _model(models: Any, eid: str, name: str, source_run_id: str = "") -> str:
    resp = await models.CreateLoggedModel(
        lpb.CreateLoggedModelRequest(experiment_id=eid, name=name, source_run_id=source_run_id)
    )
    return str(resp.model.info.model_id)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(experiments: Any, runs: Any, artifacts: Any, models: Any) -> World:
    """An experiment with a parent run (a job), its child (a container, failed) and a
    grandchild, with everything the seeds' documents show."""
    tag = uuid.uuid4().hex[:8]
    eid = (
        await experiments.CreateExperiment(
            epb.CreateExperimentRequest(
                name=f"seeds-{tag}", tags=[xpb.ExperimentTag(key="team", value="vision")]
            )
        )
    ).experiment_id
    start = _now_ms() - 600_000
    parent = (
        await runs.CreateRun(
            rpb.CreateRunRequest(
                experiment_id=eid,
                run_name=f"seed-parent-{tag}",
                start_time=start,
                user_id=OWNER,
                description=DESCRIPTION,
                external_url=EXTERNAL_URL,
                source=run_pb2.RunSource(type=run_pb2.RUN_SOURCE_TYPE_JOB, id=JOB_ID),
                tags=[
                    run_pb2.RunTag(key="model", value="opus"),
                    run_pb2.RunTag(key="is_evaluation", value="true"),
                ],
            )
        )
    ).run
    pid = parent.info.run_id
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=pid, params=_params(PARENT_PARAMS), metrics=_points(PARENT_SERIES, start)
        )
    )
    child = (
        await runs.CreateRun(
            rpb.CreateRunRequest(
                experiment_id=eid,
                run_name=f"seed-child-{tag}",
                start_time=start + 1000,
                user_id=OWNER,
                parent_run_id=pid,
                source=run_pb2.RunSource(type=run_pb2.RUN_SOURCE_TYPE_CONTAINER, id=CONTAINER_ID),
                tags=[run_pb2.RunTag(key="production", value="")],
            )
        )
    ).run
    cid = child.info.run_id
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=cid, params=_params(CHILD_PARAMS), metrics=_points(CHILD_SERIES, start)
        )
    )
    csv = b"id,prediction\n" + b"".join(b"%d,%d\n" % (i, i % 2) for i in range(TABLE_ROWS))
    _, artifact, _ = await upload_artifact(artifacts, csv, run_id=cid, path="predictions_table.csv")
    model_child = await _model(models, eid, "classifier", cid)
    await runs.LogOutputs(
        rpb.LogOutputsRequest(run_id=cid, models=[dataset_pb2.ModelOutput(model_id=model_child)])
    )
    await runs.UpdateRun(
        rpb.UpdateRunRequest(run_id=cid, status=run_pb2.RUN_STATUS_FAILED, end_time=start + 61_000)
    )
    grandchild = (
        await runs.CreateRun(
            rpb.CreateRunRequest(
                experiment_id=eid,
                run_name=f"seed-grandchild-{tag}",
                start_time=start + 2000,
                user_id=OWNER,
                parent_run_id=cid,
            )
        )
    ).run
    await runs.UpdateRun(
        rpb.UpdateRunRequest(
            run_id=grandchild.info.run_id,
            status=run_pb2.RUN_STATUS_FINISHED,
            end_time=start + 3000,
        )
    )
    model_in = await _model(models, eid, "base")
    model_out = await _model(models, eid, "tuned", pid)
    await runs.LogInputs(
        rpb.LogInputsRequest(
            run_id=pid,
            datasets=[
                dataset_pb2.DatasetInput(
                    tags=[dataset_pb2.InputTag(key="mlflow.data.context", value="training")],
                    dataset=dataset_pb2.Dataset(
                        name="mnist",
                        digest="d41d8cd9",
                        source_type="s3",
                        source='{"uri": "s3://bucket/mnist"}',
                        schema='{"columns": ["x", "y"]}',
                        profile='{"rows": 60000}',
                    ),
                )
            ],
            models=[dataset_pb2.ModelInput(model_id=model_in)],
        )
    )
    await runs.LogOutputs(
        rpb.LogOutputsRequest(
            run_id=pid, models=[dataset_pb2.ModelOutput(model_id=model_out, step=7)]
        )
    )
    await runs.UpdateRun(
        rpb.UpdateRunRequest(
            run_id=pid, status=run_pb2.RUN_STATUS_FINISHED, end_time=start + 90_000
        )
    )
    return World(eid, start, parent, child, grandchild, model_in, model_out, model_child, artifact)


async def get_run(runs: Any, run_id: str) -> rpb.GetRunResponse:
    return await runs.GetRun(rpb.GetRunRequest(run_id=run_id))  # type: ignore[no-any-return]


def summaries(series: dict[str, list[tuple[int, float]]]) -> list[dict[str, Any]]:
    out = []
    for key in sorted(series):
        steps = [s for s, _ in series[key]]
        values = [v for _, v in series[key]]
        out.append(
            {
                "key": key,
                "count": len(values),
                "first_step": min(steps),
                "last_step": max(steps),
                "latest": max(series[key])[1],
                "min": min(values),
                "max": max(values),
                "mean": statistics.fmean(values),
                "stddev": statistics.pstdev(values),
            }
        )
    return out


def latest_points(series: dict[str, list[tuple[int, float]]]) -> list[Any]:
    return [(key, *max(series[key])) for key in sorted(series)]


def tags_written(run: run_pb2.Run) -> dict[str, str]:
    return {t.key: t.value for t in run.data.tags}


async def test_datadog_get_run_is_filled_from_trackd(world: World, runs: Any) -> None:
    pid = world.parent.info.run_id
    search = await runs.SearchRuns(
        rpb.SearchRunsRequest(
            experiment_ids=[world.experiment_id],
            filter="params.role = 'child'",
            root_runs_only=True,
        )
    )
    assert [r.info.run_id for r in search.runs] == [pid]
    doc = fill("Datadog", {"GetRun": await get_run(runs, pid), "SearchRuns": search})

    tags = {
        "is_evaluation": "true",
        "mlflow.note.content": DESCRIPTION,
        "mlflow.runName": world.parent.info.run_name,
        "model": "opus",
    }
    expected = {
        "data": {
            "id": pid,
            "type": "runs",
            "attributes": {
                "name": world.parent.info.run_name,
                "description": DESCRIPTION,
                "created_at": iso(world.start),
                "started_at": iso(world.start),
                "completed_at": iso(world.start + 90_000),
                "deleted_at": None,
                "duration": 90.0,
                "status": "completed",
                "external_url": EXTERNAL_URL,
                "has_children": True,
                "descendant_match": True,
                "mlflow_artifact_location": world.parent.info.artifact_uri,
                "owner_id": OWNER,
                "project_id": int(world.experiment_id),
                "params": [{"key": k, "value": v} for k, v, _ in PARENT_PARAMS],
                "tags": [{"key": k, "value": v} for k, v in sorted(tags.items())],
                "metric_summaries": summaries(PARENT_SERIES),
            },
        }
    }
    assert rounded(doc) == rounded(expected)


async def test_foundry_experiment_is_filled_from_trackd(
    world: World, runs: Any, artifacts: Any
) -> None:
    cid = world.child.info.run_id
    run = await get_run(runs, cid)
    listing = await artifacts.ListArtifacts(apb.ListArtifactsRequest(run_id=cid, recursive=True))
    doc = fill("Foundry", {"GetRun": run, "ListArtifacts": listing})
    _foundry_finish(doc, run.run)

    loss = summaries(CHILD_SERIES)[0]
    expected = {
        "rid": cid,
        "modelRid": world.experiment_id,
        "createdTime": iso(world.start + 1000),
        "createdBy": OWNER,
        "status": "FAILED",
        "source": {"type": "codeWorkspace", "containerRid": CONTAINER_ID},
        "parameters": [
            {"name": "learning_rate", "value": {"type": "double", "value": 0.01}},
            {"name": "role", "value": {"type": "string", "value": "child"}},
        ],
        "series": [
            {
                "name": "loss",
                "length": 3,
                "value": {"type": "double", "min": 0.05, "max": 1.5, "last": 0.07},
            }
        ],
        "summaryMetrics": [{"seriesName": "loss", "aggregation": "LAST", "value": 0.07}],
        "artifacts": {
            "predictions_table.csv": {
                "name": "predictions_table.csv",
                "sizeBytes": world.artifact.file_size,
                "details": {"type": "table", "rowCount": TABLE_ROWS},
            }
        },
        "tags": ["mlflow.parentRunId", "mlflow.runName", "production"],
        "linkedModelVersion": world.model_child,
    }
    assert loss["count"] == 3
    assert rounded(doc) == rounded(expected)

    # The parent ran as a job: its source is the jobRid, and it has no `source`.
    parent = await get_run(runs, world.parent.info.run_id)
    parent_doc = fill("Foundry", {"GetRun": parent, "ListArtifacts": apb.ListArtifactsResponse()})
    _foundry_finish(parent_doc, parent.run)
    assert parent_doc["jobRid"] == JOB_ID and "source" not in parent_doc
    assert parent_doc["status"] == "SUCCEEDED"
    assert parent_doc["linkedModelVersion"] == world.model_out
    assert {p["name"]: p["value"] for p in parent_doc["parameters"]} == {
        "algorithm": {"type": "string", "value": "gpt4"},
        "epochs": {"type": "integer", "value": 3},
        "learning_rate": {"type": "double", "value": 0.001},
        "use_amp": {"type": "boolean", "value": True},
    }


def _foundry_finish(doc: dict[str, Any], run: run_pb2.Run) -> None:
    """What the Foundry table's notes say: the source is the container's or the job's, and a
    param's value is parsed by its type."""
    kind = run.info.source.type
    if kind != run_pb2.RUN_SOURCE_TYPE_JOB:
        doc.pop("jobRid", None)
    if kind != run_pb2.RUN_SOURCE_TYPE_CONTAINER:
        doc.pop("source", None)
    parse: dict[str, Callable[[str], Any]] = {
        "double": float,
        "integer": int,
        "boolean": lambda v: v.lower() == "true",
        "string": str,
    }
    for p in doc.get("parameters", []):
        p["value"]["value"] = parse[p["value"]["type"]](p["value"]["value"])
    if not doc.get("artifacts"):
        doc.pop("artifacts", None)


# -- PAI: requests built from the request table -----------------------------------------------


def pai_request(params: dict[str, str]) -> rpb.SearchRunsRequest:
    """A SearchRunsRequest built from PAI ListRuns parameters by the README's request table."""
    rows = request_rows("PAI")
    by_param = {r.parameter: r for r in rows}
    request = rpb.SearchRunsRequest()
    clauses: list[str] = []

    def apply(row: RequestRow, values: dict[str, str]) -> None:
        assert row.call == "SearchRuns" and row.field and row.value, row
        text = row.value.format(**values)
        fd, _ = field_path(request.DESCRIPTOR, row.field)
        if row.field == "filter":
            clauses.append(text)
        elif fd.is_repeated:
            getattr(request, row.field).append(text)
        elif fd.type in (fd.TYPE_INT32, fd.TYPE_INT64):
            setattr(request, row.field, int(text))
        else:
            setattr(request, row.field, text)

    for name, raw in params.items():
        if name == "Labels":
            for label in raw.split(","):
                key, _, value = label.partition(":")
                apply(by_param[name], {"key": key, "value": value})
        elif name == "OrderBy":
            for part in raw.split(","):
                fieldname, _, order = part.strip().partition(" ")
                apply(by_param[f"OrderBy {fieldname}"], {"order": order or "ASC"})
        elif name == "SortBy":
            apply(by_param[f"SortBy {raw}"], {"Order": params.get("Order", "ASC")})
        elif name == "PageToken":
            apply(by_param[name], {"NextPageToken": raw})
        else:
            row = by_param[name]
            if row.field is None:
                continue  # no counterpart (the table says why)
            value = raw
            mapping = value_map("PAI", name)
            if mapping is not None:  # a seed value -> a trackd enum value, unprefixed
                names = [t for t, s in mapping.items() if s == raw]
                assert len(names) == 1, (name, raw)
                value = names[0].removeprefix("RUN_SOURCE_TYPE_")
            if name == "GmtCreateTime":
                value = str(_ms(raw))
            apply(row, {name: value})
    request.filter = " AND ".join(clauses)
    return request


def _ms(stamp: str) -> int:
    parsed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return round(parsed.timestamp() * 1000)


async def _search(runs: Any, params: dict[str, str]) -> rpb.SearchRunsResponse:
    return await runs.SearchRuns(pai_request(params))  # type: ignore[no-any-return]


def _ids(resp: rpb.SearchRunsResponse) -> list[str]:
    return [r.info.run_id for r in resp.runs]


async def test_pai_list_runs_is_filled_from_trackd(
    world: World, runs: Any, experiments: Any
) -> None:
    params = {
        "ExperimentId": world.experiment_id,
        "WorkspaceId": "228",
        "Name": world.parent.info.run_name,
        "SourceType": "TrainingService",
        "SourceId": JOB_ID,
        "Labels": "is_evaluation:true",
        "Verbose": "true",
        "OrderBy": "GmtCreateTime DESC,Name ASC",
        "MaxResults": "10",
        "PageNumber": "1",
    }
    search = await _search(runs, params)
    assert _ids(search) == [world.parent.info.run_id]
    experiment = await experiments.GetExperiment(
        epb.GetExperimentRequest(experiment_id=world.experiment_id)
    )
    doc = fill("PAI", {"SearchRuns": search, "GetExperiment": experiment})

    pid = world.parent.info.run_id
    tags = tags_written(world.parent) | {"mlflow.note.content": DESCRIPTION}
    expected = {
        "Runs": [
            {
                "RunId": pid,
                "Name": world.parent.info.run_name,
                "ExperimentId": world.experiment_id,
                "WorkspaceId": experiment.experiment.workspace,
                "OwnerId": OWNER,
                "UserId": OWNER,
                "SourceType": "TrainingService",
                "SourceId": JOB_ID,
                "GmtCreateTime": iso(world.start),
                "Params": [{"Key": k, "Value": v} for k, v, _ in PARENT_PARAMS],
                "Labels": [{"Key": k, "Value": v, "RunId": pid} for k, v in sorted(tags.items())],
                "Metrics": [
                    {"Key": k, "Value": v, "Step": s, "Timestamp": world.start + 1000 * s}
                    for k, s, v in latest_points(PARENT_SERIES)
                ],
            }
        ],
        "NextPageToken": "",
    }
    assert experiment.experiment.workspace
    assert rounded(doc) == rounded(expected)


async def test_pai_request_parameters_run_the_searches_they_describe(
    world: World, runs: Any
) -> None:
    eid = world.experiment_id
    parent, child, grand = world.parent.info, world.child.info, world.grandchild.info
    by_start = [parent.run_id, child.run_id, grand.run_id]  # started in this order
    by_name = [r.run_id for r in sorted((parent, child, grand), key=lambda r: r.run_name)]
    base = {"ExperimentId": eid}

    assert sorted(_ids(await _search(runs, base))) == sorted(by_start)
    assert _ids(await _search(runs, base | {"Name": child.run_name})) == [child.run_id]
    only_parent = [parent.run_id]
    assert _ids(await _search(runs, base | {"SourceType": "TrainingService"})) == only_parent
    assert _ids(await _search(runs, base | {"SourceId": JOB_ID})) == only_parent
    assert _ids(await _search(runs, base | {"Labels": "is_evaluation:true"})) == only_parent
    assert _ids(await _search(runs, base | {"Labels": "production:"})) == [child.run_id]
    created = iso(world.start + 1000) or ""
    assert _ids(await _search(runs, base | {"GmtCreateTime": created})) == [child.run_id]

    desc = await _search(runs, base | {"OrderBy": "GmtCreateTime DESC"})
    assert _ids(desc) == by_start[::-1]
    assert _ids(await _search(runs, base | {"OrderBy": "Name"})) == by_name
    assert _ids(await _search(runs, base | {"OrderBy": "Name DESC"})) == by_name[::-1]
    sort_asc = base | {"SortBy": "GmtCreateTime", "Order": "ASC"}
    assert _ids(await _search(runs, sort_asc)) == by_start
    sort_desc = base | {"SortBy": "Name", "Order": "DESC"}
    assert _ids(await _search(runs, sort_desc)) == by_name[::-1]

    for size in ("MaxResults", "PageSize"):
        first = await _search(runs, base | {size: "2", "OrderBy": "GmtCreateTime"})
        assert _ids(first) == by_start[:2] and first.next_page_token

    # PageToken: each page's NextPageToken gets the next page, until it is empty.
    seen: list[str] = []
    token = ""
    for _ in range(10):
        page_params = base | {"PageSize": "1", "OrderBy": "GmtCreateTime"}
        if token:
            page_params["PageToken"] = token
        page = await _search(runs, page_params)
        seen += _ids(page)
        token = page.next_page_token
        if not token:
            break
    assert seen == by_start


# -- Oracle ------------------------------------------------------------------------------------


async def test_oracle_get_run_is_filled_from_trackd(world: World, runs: Any) -> None:
    pid = world.parent.info.run_id
    doc = fill("Oracle", {"GetRun": await get_run(runs, pid)})
    tags = tags_written(world.parent) | {"mlflow.note.content": DESCRIPTION}
    expected = {
        "run": {
            "info": {
                "artifact_uri": world.parent.info.artifact_uri,
                "end_time": world.start + 90_000,
                "experiment_id": world.experiment_id,
                "lifecycle_stage": "active",
                "run_id": pid,
                "run_name": world.parent.info.run_name,
                "run_uuid": pid,
                "start_time": world.start,
                "status": "FINISHED",
                "user_id": OWNER,
            },
            "data": {
                "metrics": [
                    {"key": k, "step": s, "timestamp": world.start + 1000 * s, "value": v}
                    for k, s, v in latest_points(PARENT_SERIES)
                ],
                "params": [{"key": k, "value": v} for k, v, _ in PARENT_PARAMS],
                "tags": [{"key": k, "value": v} for k, v in sorted(tags.items())],
            },
            "inputs": {
                "dataset_inputs": [
                    {
                        "dataset": {
                            "digest": "d41d8cd9",
                            "name": "mnist",
                            "profile": '{"rows": 60000}',
                            "schema": '{"columns": ["x", "y"]}',
                            "source": '{"uri": "s3://bucket/mnist"}',
                            "source_type": "s3",
                        },
                        "tags": [{"key": "mlflow.data.context", "value": "training"}],
                    }
                ],
                "model_inputs": [{"model_id": world.model_in}],
            },
            "outputs": {"model_outputs": [{"model_id": world.model_out, "step": 7}]},
        }
    }
    assert doc == expected


# -- values: statuses and deletion, through the server ------------------------------------------


def _status_cases() -> Iterator[tuple[str, str, str]]:
    """(seed, trackd status, seed value) for every writable status a status table maps."""
    for seed, seed_field in SEED_STATUS_FIELD.items():
        for row in value_rows(seed):
            if seed_field in row.fields:
                for value in row.trackd_values:
                    if value != "RUN_STATUS_UNRESPONSIVE":  # derived, never written
                        yield seed, value, row.seed_value


async def test_each_status_reads_back_as_the_seed_value_its_table_gives(
    experiments: Any, runs: Any
) -> None:
    cases = list(_status_cases())
    assert cases
    eid = (
        await experiments.CreateExperiment(
            epb.CreateExperimentRequest(name=f"seed-status-{uuid.uuid4().hex[:8]}")
        )
    ).experiment_id
    read: dict[str, rpb.GetRunResponse] = {}
    for status in sorted({status for _, status, _ in cases}):
        run = (await runs.CreateRun(rpb.CreateRunRequest(experiment_id=eid))).run
        code = run_pb2.RunStatus.Value(status)
        if code != run_pb2.RUN_STATUS_RUNNING:
            await runs.UpdateRun(rpb.UpdateRunRequest(run_id=run.info.run_id, status=code))
        read[status] = await get_run(runs, run.info.run_id)
        assert read[status].run.info.status == code
    for seed, status, seed_value in cases:
        doc = fill(seed, {"GetRun": read[status]} | _empty_answers(seed))
        got: Any = doc
        for name, _ in _tokens(SEED_STATUS_FIELD[seed]):
            got = got[name]
        assert got == seed_value, (seed, status)


def _empty_answers(seed: str) -> dict[str, Message]:
    """Empty answers for the calls of a seed other than GetRun."""
    out: dict[str, Message] = {}
    for row in field_rows(seed):
        if row.call and row.call != "GetRun":
            out[row.call] = message_factory.GetMessageClass(method(row.call).output_type)()
    return out


async def test_a_deleted_run_fills_deleted_at_and_the_deleted_stage(
    world: World, runs: Any
) -> None:
    run = (await runs.CreateRun(rpb.CreateRunRequest(experiment_id=world.experiment_id))).run
    before = _now_ms()
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=run.info.run_id))
    after = _now_ms()
    answer = await get_run(runs, run.info.run_id)
    deleted = answer.run.info.deleted_time
    assert before <= deleted <= after
    datadog = fill("Datadog", {"GetRun": answer} | _empty_answers("Datadog"))
    assert datadog["data"]["attributes"]["deleted_at"] == iso(deleted)
    oracle = fill("Oracle", {"GetRun": answer})
    assert oracle["run"]["info"]["lifecycle_stage"] == "deleted"
