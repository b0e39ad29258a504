"""MLflow's JSON shapes: request fields read as MLflow's server reads them, and trackd's
rows and views written as MLflow's messages (snake_case names, int64 as JSON numbers, enums
by their MLflow names, NaN and the infinities as protobuf's JSON strings)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from trackd.server.domain.logged_models import LoggedModelView
from trackd.server.domain.runs import RunView
from trackd.server.errors import InvalidArgument, ResourceExhausted
from trackd.server.http.front import JSON_BODY_MAX

# trackd's RunStatus numbers as MLflow's names. UNRESPONSIVE (a RUNNING run that has gone
# quiet, derived when read) is RUNNING to MLflow, which has no such status.
RUN_STATUS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED", 6: "RUNNING"}
RUN_STATUS_NUMBER = {"RUNNING": 1, "SCHEDULED": 2, "FINISHED": 3, "FAILED": 4, "KILLED": 5}
STAGE = {1: "active", 2: "deleted"}
# MLflow's ViewType names as trackd's numbers (ACTIVE_ONLY, DELETED_ONLY, ALL).
VIEW_TYPE = {"ACTIVE_ONLY": 1, "DELETED_ONLY": 2, "ALL": 3}
# MLflow's LoggedModelStatus names as trackd's numbers (store.logged_models: PENDING 1,
# READY 2, UPLOAD_FAILED 3: the same numbers as MLflow's enum).
MODEL_STATUS_NUMBER = {
    "LOGGED_MODEL_PENDING": 1,
    "LOGGED_MODEL_READY": 2,
    "LOGGED_MODEL_UPLOAD_FAILED": 3,
}
MODEL_STATUS = {n: name for name, n in MODEL_STATUS_NUMBER.items()}
_DOUBLE_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def double(x: float) -> float | str:
    """A double as protobuf's JSON writes it: NaN and the infinities as strings."""
    if x != x:
        return "NaN"
    if x in (math.inf, -math.inf):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def _missing(name: str) -> InvalidArgument:
    return InvalidArgument(
        f"Missing value for required parameter '{name}'. See the API docs for more "
        "information about request parameters.",
        metadata={"field": name},
    )


def missing(name: str) -> InvalidArgument:
    """MLflow's error for a required field left out."""
    return _missing(name)


def _bad(name: str, value: Any, kind: str) -> InvalidArgument:
    try:
        shown = json.dumps(value if not isinstance(value, str) else value[:200])
    except (ValueError, RecursionError):
        shown = type(value).__name__
    if len(shown) > 200:
        shown = shown[:200] + "..."
    return InvalidArgument(
        f"Invalid value {shown} for parameter '{name}' supplied: it must be {kind}",
        metadata={"field": name},
    )


class Fields:
    """A request's fields: the JSON body of a POST/PATCH/DELETE (unknown fields ignored),
    or the query string of a GET (a repeated key is a list)."""

    def __init__(self, data: Mapping[str, Any] | MultiMapping[str], *, query: bool) -> None:
        self.data = data
        self.query = query

    @classmethod
    async def of(cls, request: web.Request) -> Fields:
        if request.method == "GET" or (request.method == "DELETE" and not request.can_read_body):
            return cls(request.query, query=True)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ResourceExhausted(
                f"the request body is larger than {JSON_BODY_MAX} bytes, the limit of a "
                "JSON request",
                metadata={"field": "body", "limit": str(JSON_BODY_MAX)},
                reason="RESOURCE_EXHAUSTED",
            ) from None
        if not raw.strip():
            return cls({}, query=False)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument(
                f"the request body is not valid JSON: {exc}", metadata={"field": "body"}
            ) from None
        except RecursionError:
            raise InvalidArgument(
                "the request body nests too deeply to parse", metadata={"field": "body"}
            ) from None
        if not isinstance(body, dict):
            raise InvalidArgument("the request body must be a JSON object", metadata={})
        return cls(body, query=False)

    def raw(self, name: str) -> Any:
        return self.data.get(name)

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def text(self, name: str, *, required: bool = False, default: str = "") -> str:
        v = self.data.get(name)
        if v is None:
            if required:
                raise _missing(name)
            return default
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise _bad(name, v, "a string")
        if required and v == "":
            raise _missing(name)
        return str(v)

    def int64(self, name: str, *, required: bool = False, default: int = 0) -> int:
        v = self.data.get(name)
        if v is None or v == "":
            if required:
                raise _missing(name)
            return default
        if isinstance(v, bool):
            raise _bad(name, v, "an integer")
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, str):
            try:
                v = int(v.strip())
            except ValueError:
                raise _bad(name, v, "an integer") from None
        if not isinstance(v, int) or not -(2**63) <= v < 2**63:
            raise _bad(name, v, "a 64-bit integer")
        return v

    def optional_int64(self, name: str) -> int | None:
        return self.int64(name) if self.has(name) and self.data.get(name) != "" else None

    def double(self, name: str, *, required: bool = False) -> float:
        return parse_double(self.data.get(name), name, required=required)

    def boolean(self, name: str) -> bool:
        v = self.data.get(name)
        if v is None:
            return False
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        raise _bad(name, v, "true or false")

    def texts(self, name: str) -> list[str]:
        """A repeated string field: a JSON list, or every value of a repeated query key."""
        if self.query:
            return [str(v) for v in self.data.getall(name, [])]  # type: ignore[union-attr]
        v = self.data.get(name)
        if v is None:
            return []
        if isinstance(v, (str, int)) and not isinstance(v, bool):
            return [str(v)]
        if not isinstance(v, list) or not all(
            isinstance(x, (str, int)) and not isinstance(x, bool) for x in v
        ):
            raise _bad(name, v, "a list of strings")
        return [str(x) for x in v]

    def objects(self, name: str) -> list[Mapping[str, Any]]:
        """A repeated message field: a JSON list of objects."""
        v = None if self.query else self.data.get(name)
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
            raise _bad(name, v, "a list of objects")
        return v

    def enum(self, name: str, names: Mapping[str, int], default: int = 0) -> int:
        v = self.data.get(name)
        if v is None or v == "":
            return default
        if isinstance(v, str) and v in names:
            return names[v]
        raise _bad(name, v, "one of " + ", ".join(names))


def parse_double(v: Any, name: str, *, required: bool = False) -> float:
    if v is None:
        if required:
            raise _missing(name)
        return 0.0
    if isinstance(v, bool):
        raise _bad(name, v, "a number")
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:
            raise _bad(name, v, "a number within a double's range") from None
    if isinstance(v, str):
        if v in _DOUBLE_NAMES:
            return _DOUBLE_NAMES[v]
        try:
            return float(v)
        except ValueError:
            pass
    raise _bad(name, v, "a number")


def item_text(obj: Mapping[str, Any], name: str, where: str) -> str:
    v = obj.get(name)
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise _bad(f"{where}.{name}", v, "a string")
    return v if isinstance(v, str) else json.dumps(v)


def item_int64(obj: Mapping[str, Any], name: str, where: str) -> int:
    return Fields(obj, query=False).int64(name) if name in obj else 0


def pairs(items: Iterable[Mapping[str, Any]], where: str) -> list[tuple[str, str]]:
    """(key, value) of MLflow's tag or param objects."""
    return [
        (item_text(x, "key", f"{where}[{i}]"), item_text(x, "value", f"{where}[{i}]"))
        for i, x in enumerate(items)
    ]


# -- trackd's rows and views as MLflow's messages ------------------------------------------


def kv(items: Iterable[Any]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in items]


def experiment(row: Any) -> dict[str, Any]:
    eid = str(row["experiment_id"])
    return {
        "experiment_id": eid,
        "name": row["name"],
        "artifact_location": artifact_location(eid),
        "lifecycle_stage": STAGE.get(row["lifecycle_stage"], "active"),
        "last_update_time": row["last_update_time"],
        "creation_time": row["creation_time"],
        "tags": kv(zip(row["tag_keys"], row["tag_values"], strict=True)),
    }


def artifact_location(experiment_id: str) -> str:
    """Where MLflow clients reach an experiment's artifacts: through trackd's proxy."""
    return f"mlflow-artifacts:/{experiment_id}"


def run_artifact_uri(experiment_id: str, run_id: str) -> str:
    """A run's artifact URI as the mlflow client resolves it: trackd's artifact proxy
    (/api/2.0/mlflow-artifacts/artifacts/<experiment_id>/<run_id>/artifacts/...)."""
    return f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"


def model_artifact_uri(experiment_id: str, model_id: str) -> str:
    """A logged model's artifact location as the mlflow client resolves it: trackd's
    artifact proxy (/api/2.0/mlflow-artifacts/artifacts/<experiment_id>/models/<model_id>/
    artifacts/...), the layout MLflow's own server gives logged models."""
    return f"mlflow-artifacts:/{experiment_id}/models/{model_id}/artifacts"


def run_info(row: Any) -> dict[str, Any]:
    run_id = row["run_id"].hex
    eid = str(row["experiment_id"])
    info: dict[str, Any] = {
        "run_id": run_id,
        "run_uuid": run_id,
        "run_name": row["run_name"],
        "experiment_id": eid,
        "user_id": row["user_id"],
        "status": RUN_STATUS.get(row["status"], "RUNNING"),
        "start_time": row["start_time"],
        "artifact_uri": run_artifact_uri(eid, run_id),
        "lifecycle_stage": STAGE.get(row["lifecycle_stage"], "active"),
    }
    if row["end_time"] is not None:
        info["end_time"] = row["end_time"]
    return info


def run(view: RunView) -> dict[str, Any]:
    out: dict[str, Any] = {
        "info": run_info(view.info),
        "data": {
            "metrics": [
                {
                    "key": s["key"],
                    "value": double(s["latest_value"]),
                    "timestamp": s["latest_ts"],
                    "step": s["latest_step"],
                }
                for s in view.series
            ],
            "params": [{"key": k, "value": v} for _, k, v, _t in view.params],
            "tags": [{"key": k, "value": v} for _, k, v in view.tags],
        },
    }
    inputs: dict[str, Any] = {}
    if view.dataset_inputs:
        inputs["dataset_inputs"] = [
            {
                "tags": kv(zip(d["tag_keys"], d["tag_values"], strict=True)),
                "dataset": {
                    "name": d["name"],
                    "digest": d["digest"],
                    "source_type": d["source_type"],
                    "source": d["source"],
                    **({"schema": d["schema"]} if d["schema"] else {}),
                    **({"profile": d["profile"]} if d["profile"] else {}),
                },
            }
            for d in view.dataset_inputs
        ]
    if view.model_inputs:
        inputs["model_inputs"] = [{"model_id": m["model_id"]} for m in view.model_inputs]
    out["inputs"] = inputs
    out["outputs"] = (
        {
            "model_outputs": [
                {"model_id": m["model_id"], "step": m["step"]} for m in view.model_outputs
            ]
        }
        if view.model_outputs
        else {}
    )
    return out


def logged_model(view: LoggedModelView) -> dict[str, Any]:
    """MLflow's LoggedModel: info (with the tags) and data (params, and the latest value of
    each metric per dataset). Empty optional strings are left out, as MLflow's server does."""
    row = view.info
    model_id = row["model_id"]
    eid = str(row["experiment_id"])
    info: dict[str, Any] = {
        "model_id": model_id,
        "experiment_id": eid,
        "name": row["name"],
        "creation_timestamp_ms": row["creation_timestamp"],
        "last_updated_timestamp_ms": row["last_updated_timestamp"],
        "artifact_uri": model_artifact_uri(eid, model_id),
        "status": MODEL_STATUS.get(row["status"], "LOGGED_MODEL_STATUS_UNSPECIFIED"),
        "tags": [{"key": k, "value": v} for _, k, v in view.tags],
    }
    if row["model_type"]:
        info["model_type"] = row["model_type"]
    if row["source_run_id"]:
        info["source_run_id"] = row["source_run_id"].hex
    if row["status_message"]:
        info["status_message"] = row["status_message"]
    metrics = []
    for m in view.metrics:
        metric: dict[str, Any] = {
            "key": m["key"],
            "value": double(m["latest_value"]),
            "timestamp": m["latest_ts"],
            "step": m["latest_step"],
            "model_id": model_id,
            "run_id": m["run_id"].hex,
        }
        if m["dataset_name"]:
            metric["dataset_name"] = m["dataset_name"]
        if m["dataset_digest"]:
            metric["dataset_digest"] = m["dataset_digest"]
        metrics.append(metric)
    return {
        "info": info,
        "data": {"params": [{"key": k, "value": v} for _, k, v in view.params], "metrics": metrics},
    }


def history_json(key: str, columns: tuple[list[int], list[int], list[float]]) -> str:
    """A page of history as MLflow's JSON array of Metric objects, written directly: twice
    as fast as building dicts and dumping them (a page holds up to 25,000 points), and the
    same text (floats by repr, NaN and the infinities as protobuf's JSON strings)."""
    head = '{"key":' + json.dumps(key, ensure_ascii=False) + ',"value":'
    text = float.__repr__
    inf, ninf = math.inf, -math.inf

    def num(v: float) -> str:
        if v != v:
            return '"NaN"'
        if v == inf:
            return '"Infinity"'
        if v == ninf:
            return '"-Infinity"'
        return text(v)

    steps, stamps, values = columns
    return (
        "["
        + ",".join(
            [
                f'{head}{num(v)},"timestamp":{t},"step":{s}}}'
                for s, t, v in zip(steps, stamps, values, strict=True)
            ]
        )
        + "]"
    )
