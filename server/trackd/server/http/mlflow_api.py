"""MLflow's REST API (`/api/2.0/mlflow/...` and `/ajax-api/2.0/mlflow/...`) over trackd's
domain: experiments, runs, metrics, datasets. Each handler reads MLflow's fields, checks
the caller against the rule of the RPC it mirrors, calls the domain and answers MLflow's
JSON. Logged models are in mlflow_models.py, artifacts in mlflow_artifacts.py."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from aiohttp import web

from trackd.server.domain import bulk_history
from trackd.server.domain.auth.context import current_principal
from trackd.server.domain.datasets import DatasetInput, Datasets
from trackd.server.domain.experiments import Experiments
from trackd.server.domain.run_search import RunSearch
from trackd.server.domain.runs import MetricColumns, Runs
from trackd.server.errors import InvalidArgument
from trackd.server.http import mlflow_json as mj
from trackd.server.http.front import HttpFront, Route, json_response
from trackd.server.http.mlflow_json import Fields

PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
LOG_MODEL_HISTORY_TAG = "mlflow.log-model.history"
_EXP = "trackd.v1.ExperimentService."
_RUN = "trackd.v1.RunService."


def ns(**fields: Any) -> SimpleNamespace:
    """What a permission rule reads of a request: its id fields."""
    return SimpleNamespace(**fields)


def _run_id(f: Fields) -> str:
    """MLflow names a run `run_id`, or `run_uuid` in older clients."""
    run_id = f.text("run_id") or f.text("run_uuid")
    if not run_id:
        raise InvalidArgument(
            "Missing value for required parameter 'run_id'. See the API docs for more "
            "information about request parameters.",
            metadata={"field": "run_id"},
        )
    return run_id


# MLflow's server takes 1 to 20 experiment ids in experiments/search-datasets.
_SEARCH_DATASETS_IDS_MAX = 20


def _check_dataset_search_ids(experiment_ids: list[str]) -> None:
    """MLflow's limits on SearchDatasets' experiment ids, with its messages."""
    if not experiment_ids:
        raise InvalidArgument(
            "SearchDatasets request must specify at least one experiment_id.",
            metadata={"field": "experiment_ids"},
        )
    if len(experiment_ids) > _SEARCH_DATASETS_IDS_MAX:
        raise InvalidArgument(
            f"SearchDatasets request cannot specify more than {_SEARCH_DATASETS_IDS_MAX} "
            f"experiment_ids. Received {len(experiment_ids)} experiment_ids.",
            metadata={"field": "experiment_ids"},
        )


class MlflowApi:
    """The handlers of MLflow's tracking endpoints."""

    def __init__(
        self,
        front: HttpFront | None,
        experiments: Experiments,
        runs: Runs,
        search: RunSearch,
        datasets: Datasets,
    ) -> None:
        self.front: HttpFront = front  # type: ignore[assignment]  # set by the front
        self.experiments = experiments
        self.runs = runs
        self.search = search
        self.datasets = datasets

    def routes(self) -> list[Route]:
        r = [
            ("POST", "/experiments/create", self.create_experiment, _EXP + "CreateExperiment"),
            ("GET", "/experiments/get", self.get_experiment, _EXP + "GetExperiment"),
            (
                "GET",
                "/experiments/get-by-name",
                self.get_experiment_by_name,
                _EXP + "GetExperimentByName",
            ),
            ("POST", "/experiments/search", self.search_experiments, _EXP + "SearchExperiments"),
            ("GET", "/experiments/search", self.search_experiments, _EXP + "SearchExperiments"),
            ("POST", "/experiments/update", self.update_experiment, _EXP + "UpdateExperiment"),
            ("POST", "/experiments/delete", self.delete_experiment, _EXP + "DeleteExperiment"),
            ("POST", "/experiments/restore", self.restore_experiment, _EXP + "RestoreExperiment"),
            (
                "POST",
                "/experiments/set-experiment-tag",
                self.set_experiment_tag,
                _EXP + "SetExperimentTag",
            ),
            (
                "POST",
                "/experiments/delete-experiment-tag",
                self.delete_experiment_tag,
                _EXP + "DeleteExperimentTag",
            ),
            (
                "POST",
                "/experiments/search-datasets",
                self.search_datasets,
                _EXP + "SearchDatasets",
            ),
            ("POST", "/runs/create", self.create_run, _RUN + "CreateRun"),
            ("GET", "/runs/get", self.get_run, _RUN + "GetRun"),
            ("POST", "/runs/update", self.update_run, _RUN + "UpdateRun"),
            ("POST", "/runs/delete", self.delete_run, _RUN + "DeleteRun"),
            ("POST", "/runs/restore", self.restore_run, _RUN + "RestoreRun"),
            ("POST", "/runs/search", self.search_runs, _RUN + "SearchRuns"),
            ("POST", "/runs/log-metric", self.log_metric, _RUN + "LogMetric"),
            ("POST", "/runs/log-parameter", self.log_param, _RUN + "LogParam"),
            ("POST", "/runs/set-tag", self.set_tag, _RUN + "SetTag"),
            ("POST", "/runs/delete-tag", self.delete_tag, _RUN + "DeleteTag"),
            ("POST", "/runs/log-batch", self.log_batch, _RUN + "LogBatch"),
            ("POST", "/runs/log-inputs", self.log_inputs, _RUN + "LogInputs"),
            ("POST", "/runs/outputs", self.log_outputs, _RUN + "LogOutputs"),
            ("POST", "/runs/log-model", self.log_model, _RUN + "SetTag"),
            ("GET", "/metrics/get-history", self.get_history, _RUN + "GetMetricHistory"),
            (
                "GET",
                "/metrics/get-history-bulk-interval",
                self.get_history_bulk_interval,
                "http.GetMetricHistoryBulkInterval",
            ),
        ]
        return [Route(m, p, h, rule, PREFIXES) for m, p, h, rule in r]

    async def _check(self, request: web.Request, rule: str, **fields: Any) -> None:
        await self.front.check(request, rule, ns(**fields))

    # -- experiments -----------------------------------------------------------------------

    async def create_experiment(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        name = f.text("name", required=True)
        await self._check(request, _EXP + "CreateExperiment", workspace="")
        eid = await self.experiments.create(
            name, f.text("artifact_location"), mj.pairs(f.objects("tags"), "tags"), ""
        )
        return json_response({"experiment_id": str(eid)})

    async def get_experiment(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        eid = f.text("experiment_id", required=True)
        await self._check(request, _EXP + "GetExperiment", experiment_id=eid)
        return json_response({"experiment": mj.experiment(await self.experiments.get(eid))})

    async def get_experiment_by_name(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        name = f.text("experiment_name", required=True)
        await self._check(request, _EXP + "GetExperimentByName")
        return json_response(
            {"experiment": mj.experiment(await self.experiments.get_by_name(name))}
        )

    async def search_experiments(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        await self._check(request, _EXP + "SearchExperiments")
        rows, token = await self.experiments.search(
            f.text("filter"),
            f.texts("order_by"),
            int(f.int64("max_results")),
            f.text("page_token"),
            f.enum("view_type", mj.VIEW_TYPE, default=1),
        )
        body: dict[str, Any] = {"experiments": [mj.experiment(r) for r in rows]}
        if token:
            body["next_page_token"] = token
        return json_response(body)

    async def update_experiment(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        eid = f.text("experiment_id", required=True)
        await self._check(request, _EXP + "UpdateExperiment", experiment_id=eid)
        await self.experiments.rename(eid, f.text("new_name"))
        return json_response({})

    async def delete_experiment(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        eid = f.text("experiment_id", required=True)
        await self._check(request, _EXP + "DeleteExperiment", experiment_id=eid)
        await self.experiments.delete(eid)
        return json_response({})

    async def restore_experiment(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        eid = f.text("experiment_id", required=True)
        await self._check(request, _EXP + "RestoreExperiment", experiment_id=eid)
        await self.experiments.restore(eid)
        return json_response({})

    async def set_experiment_tag(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        eid = f.text("experiment_id", required=True)
        await self._check(request, _EXP + "SetExperimentTag", experiment_id=eid)
        await self.experiments.set_tag(eid, f.text("key", required=True), f.text("value"))
        return json_response({})

    async def delete_experiment_tag(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        eid = f.text("experiment_id", required=True)
        await self._check(request, _EXP + "DeleteExperimentTag", experiment_id=eid)
        await self.experiments.delete_tag(eid, f.text("key", required=True))
        return json_response({})

    async def search_datasets(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        experiment_ids = f.texts("experiment_ids")
        _check_dataset_search_ids(experiment_ids)
        await self._check(request, _EXP + "SearchDatasets")
        rows, token = await self.datasets.search(
            experiment_ids, int(f.int64("max_results")), f.text("page_token")
        )
        body: dict[str, Any] = {
            "dataset_summaries": [
                {
                    "experiment_id": str(r["experiment_id"]),
                    "name": r["name"],
                    "digest": r["digest"],
                    **({"context": r["context"]} if r["context"] else {}),
                }
                for r in rows
            ]
        }
        if token:
            body["next_page_token"] = token
        return json_response(body)

    # -- runs ------------------------------------------------------------------------------

    async def create_run(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        eid = f.text("experiment_id")
        await self._check(request, _RUN + "CreateRun", experiment_id=eid)
        view = await self.runs.create(
            experiment_id=eid,
            run_name=f.text("run_name"),
            start_time=f.int64("start_time"),
            tags=mj.pairs(f.objects("tags"), "tags"),
            # With auth on a run belongs to the caller: the mlflow client fills user_id
            # with the local OS user, which is not the caller trackd authenticated.
            user_id="" if not current_principal.get().anonymous else f.text("user_id"),
            parent_run_id="",
        )
        return json_response({"run": mj.run(view)})

    async def get_run(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        run_id = _run_id(f)
        await self._check(request, _RUN + "GetRun", run_id=run_id)
        return json_response({"run": mj.run(await self.runs.get(run_id))})

    async def update_run(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        run_id = _run_id(f)
        await self._check(request, _RUN + "UpdateRun", run_id=run_id)
        row = await self.runs.update(
            run_id,
            f.enum("status", mj.RUN_STATUS_NUMBER),
            f.optional_int64("end_time"),
            f.text("run_name") if f.has("run_name") else None,
        )
        return json_response({"run_info": mj.run_info(row)})

    async def delete_run(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        run_id = f.text("run_id", required=True)
        await self._check(request, _RUN + "DeleteRun", run_id=run_id)
        await self.runs.delete(run_id)
        return json_response({})

    async def restore_run(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        run_id = f.text("run_id", required=True)
        await self._check(request, _RUN + "RestoreRun", run_id=run_id)
        await self.runs.restore(run_id)
        return json_response({})

    async def search_runs(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        await self._check(request, _RUN + "SearchRuns")
        views, token = await self.search.search(
            f.texts("experiment_ids"),
            f.text("filter"),
            f.texts("order_by"),
            int(f.int64("max_results")),
            f.text("page_token"),
            f.enum("run_view_type", mj.VIEW_TYPE, default=1),
        )
        body: dict[str, Any] = {"runs": [mj.run(v) for v in views]}
        if token:
            body["next_page_token"] = token
        return json_response(body)

    async def log_metric(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        run_id = _run_id(f)
        await self._check(request, _RUN + "LogMetric", run_id=run_id)
        await self.runs.log_metric(
            run_id,
            f.text("key", required=True),
            f.double("value", required=True),
            f.int64("timestamp", required=True),
            f.int64("step"),
            f.text("model_id"),
            f.text("dataset_name"),
            f.text("dataset_digest"),
        )
        return json_response({})

    async def log_param(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        run_id = _run_id(f)
        await self._check(request, _RUN + "LogParam", run_id=run_id)
        await self.runs.log_param(
            run_id, f.text("key", required=True), f.text("value", required=True)
        )
        return json_response({})

    async def set_tag(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        run_id = _run_id(f)
        await self._check(request, _RUN + "SetTag", run_id=run_id)
        await self.runs.set_tag(run_id, f.text("key", required=True), f.text("value"))
        return json_response({})

    async def delete_tag(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        run_id = f.text("run_id", required=True)
        await self._check(request, _RUN + "DeleteTag", run_id=run_id)
        await self.runs.delete_tag(run_id, f.text("key", required=True))
        return json_response({})

    async def log_batch(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        run_id = f.text("run_id", required=True)
        await self._check(request, _RUN + "LogBatch", run_id=run_id)
        columns = MetricColumns()
        metrics = f.objects("metrics")
        for i, m in enumerate(metrics):
            where = f"metrics[{i}]"
            columns.keys.append(mj.item_text(m, "key", where))
            columns.values.append(mj.parse_double(m.get("value"), f"{where}.value"))
            columns.timestamps.append(mj.item_int64(m, "timestamp", where))
            columns.steps.append(mj.item_int64(m, "step", where))
        named = [
            (
                mj.item_text(m, "model_id", ""),
                mj.item_text(m, "dataset_name", ""),
                mj.item_text(m, "dataset_digest", ""),
            )
            for m in metrics
        ]
        if any(any(n) for n in named):
            columns.model_ids = [n[0] for n in named]
            columns.dataset_names = [n[1] for n in named]
            columns.dataset_digests = [n[2] for n in named]
        params = [(k, v, 0) for k, v in mj.pairs(f.objects("params"), "params")]
        await self.runs.log_batch(run_id, columns, params, mj.pairs(f.objects("tags"), "tags"))
        return json_response({})

    async def log_inputs(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        run_id = f.text("run_id", required=True)
        await self._check(request, _RUN + "LogInputs", run_id=run_id)
        inputs = []
        for i, item in enumerate(f.objects("datasets")):
            where = f"datasets[{i}]"
            d = item.get("dataset") or {}
            if not isinstance(d, dict):
                raise InvalidArgument(f"{where}.dataset must be an object", metadata={})
            inputs.append(
                DatasetInput(
                    name=mj.item_text(d, "name", where),
                    digest=mj.item_text(d, "digest", where),
                    source_type=mj.item_text(d, "source_type", where),
                    source=mj.item_text(d, "source", where),
                    schema=mj.item_text(d, "schema", where),
                    profile=mj.item_text(d, "profile", where),
                    tags=mj.pairs(item.get("tags") or [], f"{where}.tags"),
                )
            )
        models = [mj.item_text(m, "model_id", "models") for m in f.objects("models")]
        await self.runs.log_inputs(run_id, inputs, models)
        return json_response({})

    async def log_outputs(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        run_id = f.text("run_id", required=True)
        await self._check(request, _RUN + "LogOutputs", run_id=run_id)
        models = [
            (mj.item_text(m, "model_id", f"models[{i}]"), mj.item_int64(m, "step", "models"))
            for i, m in enumerate(f.objects("models"))
        ]
        await self.runs.log_outputs(run_id, models)
        return json_response({})

    async def log_model(self, request: web.Request) -> web.StreamResponse:
        """MLflow 2's record of a model logged by a run: its description appended to the
        JSON list in the run's `mlflow.log-model.history` tag (as MLflow's server does).
        The tag is read and written in two steps: two concurrent records on one run can
        lose one of them (MLflow's server has the same race)."""
        f = await Fields.of(request)
        run_id = f.text("run_id", required=True)
        text = f.text("model_json", required=True)
        try:
            model = json.loads(text)
        except ValueError:
            model = None
        if not isinstance(model, dict):
            raise InvalidArgument(
                f"Malformed model info. \n {text[:200]} \n is not a valid JSON.",
                metadata={"field": "model_json"},
            )
        missing = {"artifact_path", "flavors", "utc_time_created", "run_id"} - set(model)
        if missing:
            raise InvalidArgument(
                f"Model json is missing mandatory fields: {sorted(missing)}",
                metadata={"field": "model_json"},
            )
        await self._check(request, _RUN + "SetTag", run_id=run_id)
        entry = {
            k: model[k]
            for k in ("run_id", "utc_time_created", "artifact_path", "model_uuid")
            if k in model
        }
        flavors = model.get("flavors") or {}
        entry["flavors"] = {
            name: (
                {k: v for k, v in conf.items() if k != "config"} if isinstance(conf, dict) else conf
            )
            for name, conf in (flavors.items() if isinstance(flavors, dict) else ())
        }
        view = await self.runs.get(run_id)
        history: list[Any] = []
        for _, key, value in view.tags:
            if key == LOG_MODEL_HISTORY_TAG:
                try:
                    loaded = json.loads(value)
                except ValueError:
                    loaded = []
                history = loaded if isinstance(loaded, list) else []
        history.append(entry)
        await self.runs.set_tag(run_id, LOG_MODEL_HISTORY_TAG, json.dumps(history))
        return json_response({})

    # -- metrics ---------------------------------------------------------------------------

    async def get_history(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        run_id = _run_id(f)
        key = f.text("metric_key", required=True)
        await self._check(request, _RUN + "GetMetricHistory", run_id=run_id)
        columns, token = await self.runs.metric_history(
            run_id, key, int(f.int64("max_results")), f.text("page_token")
        )
        text = '{"metrics":' + mj.history_json(key, columns)
        if token:
            text += ',"next_page_token":' + json.dumps(token)
        return web.Response(body=(text + "}").encode("utf-8"), content_type="application/json")

    async def get_history_bulk_interval(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        run_ids = list(dict.fromkeys(f.texts("run_ids")))
        key = f.text("metric_key", required=True)
        max_results = int(f.int64("max_results", default=bulk_history.MAX_RESULTS_MAX))
        start, end = f.optional_int64("start_step"), f.optional_int64("end_step")
        bulk_history.check(run_ids, max_results, start, end)
        await self._check(request, "http.GetMetricHistoryBulkInterval", run_ids=run_ids)
        points = await bulk_history.sample(self.runs, run_ids, key, max_results, start, end)
        return json_response(
            {
                "metrics": [
                    {
                        "key": key,
                        "value": mj.double(p.value),
                        "timestamp": p.timestamp,
                        "step": p.step,
                        "run_id": p.run_id,
                    }
                    for p in points
                ]
            }
        )
