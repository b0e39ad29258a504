"""MLflow 3's logged-models endpoints (`/api/2.0/mlflow/logged-models...`) over trackd's
logged models domain. Each handler reads MLflow's fields, checks the caller against the
rule of the LoggedModelService RPC it mirrors, calls the domain and answers MLflow's JSON.

Where MLflow's server and trackd's domain differ, the handler gives MLflow's answer for what
a client can tell apart: a model id that is not well formed names no model
(RESOURCE_DOES_NOT_EXIST, as MLflow's store answers any unknown id), model names refuse
MLflow's forbidden characters, `experiment_id` and `experiment_ids` are required."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from trackd.server.domain import validation
from trackd.server.domain.logged_models import LoggedModels
from trackd.server.errors import InvalidArgument, model_not_found
from trackd.server.http import mlflow_json as mj
from trackd.server.http.front import HttpFront, Route, json_response
from trackd.server.http.mlflow_api import PREFIXES, ns
from trackd.server.http.mlflow_json import Fields

_LM = "trackd.v1.LoggedModelService."
# MLflow's _validate_logged_model_name: characters a model name may not hold.
_NAME_BAD_CHARS = ("/", ":", ".", "%", '"', "'")
# A metric, param or tag key written bare in an order_by clause; others are quoted.
_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def _invalid(message: str, field: str) -> InvalidArgument:
    return InvalidArgument(message, metadata={"field": field})


def _model_id(request: web.Request) -> str:
    """The model id of the path. One that is not a trackd model id names no model."""
    model_id = request.match_info["model_id"]
    if not validation.is_model_id(model_id):
        raise model_not_found(model_id)
    return model_id


def _check_name(name: str) -> None:
    """MLflow's rule for a logged model's name (an empty name means a generated one)."""
    if name and any(c in name for c in _NAME_BAD_CHARS):
        raise _invalid(
            f"Invalid model name ({name!r}) provided. Model name must be a non-empty string "
            f"and cannot contain the following characters: {_NAME_BAD_CHARS}",
            "name",
        )


def _text(obj: Mapping[str, Any], name: str, where: str) -> str:
    return mj.item_text(obj, name, where)


def _datasets(f: Fields) -> list[tuple[str, str]]:
    """SearchLoggedModels.datasets as (name, digest); MLflow requires the name."""
    out = []
    for i, d in enumerate(f.objects("datasets")):
        name = _text(d, "dataset_name", f"datasets[{i}]")
        if not name:
            raise _invalid("`dataset_name` in the `datasets` clause must be specified.", "datasets")
        out.append((name, _text(d, "dataset_digest", f"datasets[{i}]")))
    return out


def _order_key(field_name: str, where: str) -> str:
    """An MLflow order_by field name (`creation_timestamp`, `metrics.acc`, `params.x`) as
    trackd's clause identifier, quoting a key that is not a bare word."""
    entity, dot, key = field_name.partition(".")
    if not field_name.strip() or (dot and not key):
        raise _invalid(f"Invalid order by field name: {field_name}", where)
    if not dot or _BARE_KEY.fullmatch(key):
        return field_name
    if "`" not in key:
        return f"{entity}.`{key}`"
    if '"' not in key:
        return f'{entity}."{key}"'
    raise _invalid(
        f'Invalid order by field name: {field_name} (a key cannot hold both ` and ")', where
    )


def _order_by(f: Fields, datasets: list[tuple[str, str]]) -> list[str]:
    """SearchLoggedModels.order_by objects as trackd's clauses ("metrics.acc DESC").

    trackd restricts metric ordering to the request's `datasets`, so an order_by entry
    naming a dataset is accepted when `datasets` holds exactly that dataset (the same
    meaning); otherwise it is refused rather than ordered differently than MLflow would."""
    clauses = []
    for i, ob in enumerate(f.objects("order_by")):
        where = f"order_by[{i}]"
        field_name = _text(ob, "field_name", where)
        ascending = ob.get("ascending", True)
        if not isinstance(ascending, bool):
            raise _invalid(f"{where}.ascending must be true or false", where)
        ds_name = _text(ob, "dataset_name", where)
        ds_digest = _text(ob, "dataset_digest", where)
        if ds_digest and not ds_name:
            raise _invalid(
                f"{where}.dataset_digest may only be set if {where}.dataset_name is also set",
                where,
            )
        if ds_name:
            if not field_name.startswith("metrics."):
                raise _invalid(
                    f"{where}.dataset_name may only be set if field_name refers to a metric",
                    where,
                )
            if len(datasets) != 1 or datasets[0][0] != ds_name or datasets[0][1] != ds_digest:
                raise _invalid(
                    f"{where} names dataset {ds_name!r}: trackd orders by the metrics of the "
                    "request's `datasets`, so it must hold exactly that dataset (name and "
                    "digest) for an order_by entry to name one",
                    where,
                )
        clauses.append(f"{_order_key(field_name, where)} {'ASC' if ascending else 'DESC'}")
    return clauses


class MlflowModelsApi:
    """The handlers of MLflow's logged-model endpoints."""

    def __init__(self, front: HttpFront | None, models: LoggedModels) -> None:
        self.front: HttpFront = front  # type: ignore[assignment]  # set by the front
        self.models = models

    def routes(self) -> list[Route]:
        one = "/logged-models/{model_id}"
        r = [
            ("POST", "/logged-models", self.create, "CreateLoggedModel"),
            ("POST", "/logged-models/search", self.search, "SearchLoggedModels"),
            ("GET", one, self.get, "GetLoggedModel"),
            ("PATCH", one, self.finalize, "FinalizeLoggedModel"),
            ("DELETE", one, self.delete, "DeleteLoggedModel"),
            ("PATCH", one + "/tags", self.set_tags, "SetLoggedModelTags"),
            # A tag key may hold "/": the rest of the path is the key.
            ("DELETE", one + "/tags/{tag_key:.+}", self.delete_tag, "DeleteLoggedModelTag"),
            ("POST", one + "/params", self.log_params, "LogLoggedModelParams"),
        ]
        return [Route(m, p, h, _LM + rpc, PREFIXES) for m, p, h, rpc in r]

    async def _check_model(self, request: web.Request, rpc: str, model_id: str) -> None:
        await self.front.check(request, _LM + rpc, ns(model_id=model_id))

    async def create(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        eid = f.text("experiment_id", required=True)
        name = f.text("name")
        _check_name(name)
        await self.front.check(request, _LM + "CreateLoggedModel", ns(experiment_id=eid))
        view = await self.models.create(
            experiment_id=eid,
            name=name,
            model_type=f.text("model_type"),
            source_run_id=f.text("source_run_id"),
            params=mj.pairs(f.objects("params"), "params"),
            tags=mj.pairs(f.objects("tags"), "tags"),
        )
        return json_response({"model": mj.logged_model(view)})

    async def get(self, request: web.Request) -> web.StreamResponse:
        model_id = _model_id(request)
        await self._check_model(request, "GetLoggedModel", model_id)
        return json_response({"model": mj.logged_model(await self.models.get(model_id))})

    async def finalize(self, request: web.Request) -> web.StreamResponse:
        model_id = _model_id(request)
        f = await Fields.of(request)
        status = f.raw("status")
        if status is None or status == "":
            raise mj.missing("status")
        if isinstance(status, int) and not isinstance(status, bool):
            number = status
        elif isinstance(status, str) and status in mj.MODEL_STATUS_NUMBER:
            number = mj.MODEL_STATUS_NUMBER[status]
        else:
            raise _invalid(
                f"Invalid value {status!r} for parameter 'status' supplied: it must be one of "
                + ", ".join(mj.MODEL_STATUS_NUMBER),
                "status",
            )
        await self._check_model(request, "FinalizeLoggedModel", model_id)
        view = await self.models.finalize(model_id, number, f.text("status_message"))
        return json_response({"model": mj.logged_model(view)})

    async def delete(self, request: web.Request) -> web.StreamResponse:
        model_id = _model_id(request)
        await self._check_model(request, "DeleteLoggedModel", model_id)
        await self.models.delete(model_id)
        return json_response({})

    async def set_tags(self, request: web.Request) -> web.StreamResponse:
        model_id = _model_id(request)
        f = await Fields.of(request)
        tags = mj.pairs(f.objects("tags"), "tags")
        await self._check_model(request, "SetLoggedModelTags", model_id)
        if tags:
            await self.models.set_tags(model_id, tags)
        else:
            await self.models.get(model_id)  # MLflow: no tags is a no-op on a live model
        return json_response({})

    async def delete_tag(self, request: web.Request) -> web.StreamResponse:
        model_id = _model_id(request)
        key = request.match_info["tag_key"]
        await self._check_model(request, "DeleteLoggedModelTag", model_id)
        await self.models.delete_tag(model_id, key)
        return json_response({})

    async def log_params(self, request: web.Request) -> web.StreamResponse:
        model_id = _model_id(request)
        f = await Fields.of(request)
        params = mj.pairs(f.objects("params"), "params")
        await self._check_model(request, "LogLoggedModelParams", model_id)
        if params:
            await self.models.log_params(model_id, params)
        else:
            await self.models.get(model_id)  # MLflow: no params is a no-op on a live model
        return json_response({})

    async def search(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        experiment_ids = f.texts("experiment_ids")
        if not experiment_ids:
            raise mj.missing("experiment_ids")
        datasets = _datasets(f)
        order_by = _order_by(f, datasets)
        await self.front.check(request, _LM + "SearchLoggedModels", ns())
        views, token = await self.models.search(
            experiment_ids,
            f.text("filter"),
            datasets,
            order_by,
            int(f.int64("max_results")),
            f.text("page_token"),
        )
        body: dict[str, Any] = {"models": [mj.logged_model(v) for v in views]}
        if token:
            body["next_page_token"] = token
        return json_response(body)
