"""MLflow 3's logged-models endpoints and the dataset paths (log_inputs, log_outputs,
experiments/search-datasets) over trackd's HTTP front, driven by the official mlflow client
(MlflowClient and the fluent API) against a real server: no mocks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import mlflow
import numpy as np
import pytest
import pytest_asyncio
import requests
from mlflow import MlflowClient
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import (
    LoggedModelInput,
    LoggedModelOutput,
    LoggedModelParameter,
    LoggedModelStatus,
    LoggedModelTag,
)
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.service_pb2 import SearchDatasets
from mlflow.store.tracking.rest_store import RestStore
from mlflow.types.schema import ColSpec, Schema
from mlflow.utils.proto_json_utils import message_to_json
from mlflow.utils.rest_utils import MlflowHostCreds, call_endpoint

from conftest import server_config
from trackd.server import app

T = TypeVar("T")


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """The sync mlflow client, off the event loop that serves it."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def error_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> MlflowException:
    with pytest.raises(MlflowException) as info:
        await call(fn, *args, **kwargs)
    return info.value


@pytest.fixture(scope="module")
def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri)


@pytest.fixture(scope="module")
def fluent(tracking_uri: str) -> None:
    """The fluent API pointed at the module's trackd."""
    mlflow.set_tracking_uri(tracking_uri)


async def new_experiment(client: MlflowClient) -> str:
    return await call(client.create_experiment, unique("models"))


# -- create, get, params, finalize ---------------------------------------------------------


async def test_create_and_get_a_model(client: MlflowClient) -> None:
    eid = await new_experiment(client)
    run = await call(client.create_run, eid)
    model = await call(
        client.create_logged_model,
        eid,
        name="classifier",
        source_run_id=run.info.run_id,
        tags={"team": "vision", "stage": "dev"},
        params={"lr": "0.01", "layers": "3"},
        model_type="agent",
    )
    assert model.model_id.startswith("m-")
    assert model.experiment_id == eid
    assert model.name == "classifier"
    assert model.model_type == "agent"
    assert model.source_run_id == run.info.run_id
    assert model.status == LoggedModelStatus.PENDING
    assert model.tags == {"team": "vision", "stage": "dev"}
    assert model.params == {"lr": "0.01", "layers": "3"}
    assert model.artifact_location == f"mlflow-artifacts:/{eid}/models/{model.model_id}/artifacts"
    assert model.creation_timestamp > 0
    assert model.last_updated_timestamp >= model.creation_timestamp

    got = await call(client.get_logged_model, model.model_id)
    assert got.to_dictionary() == model.to_dictionary()


async def test_a_model_without_a_name_gets_one(client: MlflowClient) -> None:
    eid = await new_experiment(client)
    model = await call(client.create_logged_model, eid)
    assert model.name
    assert model.model_type is None or model.model_type == ""
    assert model.source_run_id in (None, "")


async def test_log_model_params(client: MlflowClient) -> None:
    eid = await new_experiment(client)
    model = await call(client.create_logged_model, eid, params={"a": "1"})
    await call(client.log_model_params, model.model_id, {"b": "2", "c": "3"})
    got = await call(client.get_logged_model, model.model_id)
    assert got.params == {"a": "1", "b": "2", "c": "3"}
    # The same value again is accepted; another value is refused as MLflow refuses a
    # changed param.
    await call(client.log_model_params, model.model_id, {"a": "1"})
    err = await error_of(client.log_model_params, model.model_id, {"a": "9"})
    assert err.error_code == "INVALID_PARAMETER_VALUE"
    # No params is a no-op, as in MLflow (the client sends none; another client may).
    response = await call(
        requests.post,
        f"{client.tracking_uri}/api/2.0/mlflow/logged-models/{model.model_id}/params",
        json={"model_id": model.model_id, "params": []},
        timeout=30,
    )
    assert (response.status_code, response.json()) == (200, {})


async def test_more_params_than_one_request_holds(client: MlflowClient) -> None:
    """The client sends the first 100 params with the create and the rest in batches of
    100 to /params."""
    eid = await new_experiment(client)
    params = {f"p{i:03d}": str(i) for i in range(250)}
    model = await call(client.create_logged_model, eid, params=params)
    assert model.params == params


async def test_finalize_ready_and_failed(client: MlflowClient) -> None:
    eid = await new_experiment(client)
    good = await call(client.create_logged_model, eid)
    bad = await call(client.create_logged_model, eid)
    ready = await call(client.finalize_logged_model, good.model_id, LoggedModelStatus.READY)
    assert ready.status == LoggedModelStatus.READY
    failed = await call(client.finalize_logged_model, bad.model_id, "FAILED")
    assert failed.status == LoggedModelStatus.FAILED
    assert (await call(client.get_logged_model, good.model_id)).status == LoggedModelStatus.READY
    # The same status again is accepted; a READY model cannot become FAILED.
    await call(client.finalize_logged_model, good.model_id, "READY")
    err = await error_of(client.finalize_logged_model, good.model_id, "FAILED")
    assert err.error_code == "INVALID_PARAMETER_VALUE"


# -- tags and deletion ---------------------------------------------------------------------


async def test_set_and_delete_tags(client: MlflowClient) -> None:
    eid = await new_experiment(client)
    model = await call(client.create_logged_model, eid, tags={"a": "1"})
    await call(client.set_logged_model_tags, model.model_id, {"a": "2", "b": "x", "dir/key": "y"})
    got = await call(client.get_logged_model, model.model_id)
    assert got.tags == {"a": "2", "b": "x", "dir/key": "y"}
    await call(client.delete_logged_model_tag, model.model_id, "b")
    await call(client.delete_logged_model_tag, model.model_id, "dir/key")
    got = await call(client.get_logged_model, model.model_id)
    assert got.tags == {"a": "2"}
    err = await error_of(client.delete_logged_model_tag, model.model_id, "b")
    assert err.error_code == "RESOURCE_DOES_NOT_EXIST"
    # No tags is a no-op, as in MLflow (on a model that exists).
    await call(client.set_logged_model_tags, model.model_id, {})
    store = client._tracking_client.store
    err = await error_of(store.set_logged_model_tags, "m-" + uuid.uuid4().hex, [])
    assert err.error_code == "RESOURCE_DOES_NOT_EXIST"
    # MLflow's limit per request is not trackd's: more than 100 tags at once are refused.
    err = await error_of(
        client.set_logged_model_tags, model.model_id, {f"k{i}": "v" for i in range(101)}
    )
    assert err.error_code == "INVALID_PARAMETER_VALUE"


async def test_delete_a_model(client: MlflowClient) -> None:
    eid = await new_experiment(client)
    model = await call(client.create_logged_model, eid, name="doomed")
    await call(client.delete_logged_model, model.model_id)
    err = await error_of(client.get_logged_model, model.model_id)
    assert err.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert model.model_id in err.message
    found = await call(client.search_logged_models, [eid])
    assert [m.model_id for m in found] == []
    err = await error_of(client.delete_logged_model, model.model_id)
    assert err.error_code == "RESOURCE_DOES_NOT_EXIST"


# -- metrics logged with a model -----------------------------------------------------------


async def test_metrics_logged_with_a_model_appear_on_it(client: MlflowClient) -> None:
    eid = await new_experiment(client)
    run = await call(client.create_run, eid)
    model = await call(client.create_logged_model, eid, source_run_id=run.info.run_id)
    rid = run.info.run_id
    await call(client.log_metric, rid, "acc", 0.5, step=0, model_id=model.model_id)
    await call(client.log_metric, rid, "acc", 0.75, step=1, model_id=model.model_id)
    await call(
        client.log_metric,
        rid,
        "acc",
        0.9,
        step=1,
        model_id=model.model_id,
        dataset_name="eval",
        dataset_digest="d1",
    )
    await call(client.log_metric, rid, "loss", float("nan"), step=2, model_id=model.model_id)
    got = await call(client.get_logged_model, model.model_id)
    by_dataset = {(m.key, m.dataset_name): m for m in got.metrics}
    assert set(by_dataset) == {("acc", None), ("acc", "eval"), ("loss", None)}
    assert by_dataset["acc", None].value == 0.75
    assert by_dataset["acc", None].step == 1
    assert by_dataset["acc", None].run_id == rid
    assert by_dataset["acc", None].model_id == model.model_id
    assert by_dataset["acc", "eval"].value == 0.9
    assert by_dataset["acc", "eval"].dataset_digest == "d1"
    assert by_dataset["loss", None].value != by_dataset["loss", None].value  # NaN


# -- search --------------------------------------------------------------------------------


async def _search_fixture(client: MlflowClient) -> tuple[str, str, dict[str, str]]:
    """An experiment with four models: m0..m3 with params p=i, tags kind=even/odd, metric
    acc=i/10 (on dataset "eval" for m2 and m3 only, 1 - i/10 there)."""
    eid = await new_experiment(client)
    run = await call(client.create_run, eid)
    rid = run.info.run_id
    ids: dict[str, str] = {}
    for i in range(4):
        m = await call(
            client.create_logged_model,
            eid,
            name=f"m{i}",
            params={"p": str(i)},
            tags={"kind": "even" if i % 2 == 0 else "odd"},
            model_type="big" if i >= 2 else "small",
        )
        ids[f"m{i}"] = m.model_id
        await call(client.log_metric, rid, "acc", i / 10, model_id=m.model_id)
        if i >= 2:
            await call(
                client.log_metric,
                rid,
                "acc",
                1 - i / 10,
                model_id=m.model_id,
                dataset_name="eval",
                dataset_digest="abc",
            )
    return eid, rid, ids


def names(models: Any) -> list[str]:
    return [m.name for m in models]


async def test_search_filters(client: MlflowClient) -> None:
    eid, _, _ = await _search_fixture(client)
    s = client.search_logged_models
    assert sorted(names(await call(s, [eid], filter_string="params.p = '2'"))) == ["m2"]
    assert sorted(names(await call(s, [eid], filter_string="metrics.acc >= 0.2"))) == [
        "m2",
        "m3",
    ]
    assert sorted(names(await call(s, [eid], filter_string="tags.kind = 'odd'"))) == [
        "m1",
        "m3",
    ]
    assert sorted(names(await call(s, [eid], filter_string="name = 'm1'"))) == ["m1"]
    assert sorted(names(await call(s, [eid], filter_string="model_type = 'big'"))) == [
        "m2",
        "m3",
    ]
    either = "name = 'm0' OR name IN ('m3', 'zz')"
    assert sorted(names(await call(s, [eid], filter_string=either))) == ["m0", "m3"]
    assert names(await call(s, [eid], filter_string="status = 'READY'")) == []
    assert len(await call(s, [eid], filter_string="status = 'PENDING'")) == 4
    assert len(await call(s, [eid], filter_string="last_updated_time > 0")) == 4
    both = "attributes.model_type = 'small' AND tags.kind = 'even'"
    assert names(await call(s, [eid], filter_string=both)) == ["m0"]
    assert names(await call(s, [eid], filter_string="name LIKE 'm%'", max_results=10)) != []


async def test_search_order_by(client: MlflowClient) -> None:
    eid, _, _ = await _search_fixture(client)
    s = client.search_logged_models
    # The default order: newest first.
    assert names(await call(s, [eid])) == ["m3", "m2", "m1", "m0"]
    # Without datasets, a metric orders by its latest value on any dataset (MLflow's
    # meaning): m2 and m3 last logged acc on "eval", 0.8 and 0.7.
    up = [{"field_name": "metrics.acc", "ascending": True}]
    assert names(await call(s, [eid], order_by=up)) == ["m0", "m1", "m3", "m2"]
    down = [{"field_name": "metrics.acc", "ascending": False}]
    assert names(await call(s, [eid], order_by=down)) == ["m2", "m3", "m1", "m0"]
    # A model without the metric comes last either way.
    await call(client.create_logged_model, eid, name="m9")
    assert names(await call(s, [eid], order_by=up))[-1] == "m9"
    assert names(await call(s, [eid], order_by=down))[-1] == "m9"
    await call(client.delete_logged_model, (await call(s, [eid], max_results=1))[0].model_id)
    assert names(await call(s, [eid], order_by=[{"field_name": "name"}])) == [
        "m0",
        "m1",
        "m2",
        "m3",
    ]
    by_time = [{"field_name": "creation_timestamp", "ascending": True}]
    assert names(await call(s, [eid], order_by=by_time)) == ["m0", "m1", "m2", "m3"]


async def test_search_datasets_scope_metrics(client: MlflowClient) -> None:
    eid, _, _ = await _search_fixture(client)
    s = client.search_logged_models
    evals = [{"dataset_name": "eval", "dataset_digest": "abc"}]
    # Datasets with no metric comparison keep the models with a metric on them.
    assert sorted(names(await call(s, [eid], datasets=evals))) == ["m2", "m3"]
    # A metric comparison looks only at those datasets' metrics: on "eval" m2 has 0.8.
    got = await call(s, [eid], filter_string="metrics.acc > 0.75", datasets=evals)
    assert names(got) == ["m2"]
    by_eval = [
        {"field_name": "metrics.acc", "ascending": True, "dataset_name": "eval",
         "dataset_digest": "abc"}
    ]  # fmt: skip
    assert names(await call(s, [eid], datasets=evals, order_by=by_eval)) == ["m3", "m2"]
    by_name_only = [{"dataset_name": "eval"}]
    assert sorted(names(await call(s, [eid], datasets=by_name_only))) == ["m2", "m3"]
    # An order_by naming a dataset the request's datasets do not hold is refused.
    err = await error_of(s, [eid], order_by=by_eval)
    assert err.error_code == "INVALID_PARAMETER_VALUE"
    err = await error_of(s, [eid], datasets=[{"dataset_name": ""}])
    assert err.error_code == "INVALID_PARAMETER_VALUE"
    assert "dataset_name" in err.message


async def test_search_pages(client: MlflowClient) -> None:
    eid, _, ids = await _search_fixture(client)
    s = client.search_logged_models
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = await call(
            s, [eid], max_results=3, page_token=token, order_by=[{"field_name": "name"}]
        )
        seen += names(page)
        pages += 1
        token = page.token
        if not token:
            break
    assert pages == 2
    assert seen == ["m0", "m1", "m2", "m3"]
    assert set(ids) == set(seen)
    # A token is bound to its query.
    first = await call(s, [eid], max_results=1)
    err = await error_of(
        s, [eid], max_results=1, page_token=first.token, filter_string="name = 'm1'"
    )
    assert err.error_code == "INVALID_PARAMETER_VALUE"


async def test_search_errors(client: MlflowClient) -> None:
    eid = await new_experiment(client)
    s = client.search_logged_models
    for bad in ("params.p = ", "metrics.acc >> 1", "nope.x = 1", "name = 'a' AND"):
        err = await error_of(s, [eid], filter_string=bad)
        assert err.error_code == "INVALID_PARAMETER_VALUE", bad
    err = await error_of(s, [eid], order_by=[{"field_name": "metrics."}])
    assert err.error_code == "INVALID_PARAMETER_VALUE"
    err = await error_of(s, [eid], order_by=[{"field_name": "no_such_attribute"}])
    assert err.error_code == "INVALID_PARAMETER_VALUE"
    err = await error_of(s, [eid], max_results=100_000)
    assert err.error_code == "INVALID_PARAMETER_VALUE"
    err = await error_of(s, [eid], page_token="not-a-token")
    assert err.error_code == "INVALID_PARAMETER_VALUE"
    err = await error_of(s, [])
    assert err.error_code == "INVALID_PARAMETER_VALUE"
    # An unknown experiment holds no model, as in MLflow.
    assert list(await call(s, ["987654321"])) == []


# -- error paths ---------------------------------------------------------------------------


async def test_unknown_model_ids(client: MlflowClient) -> None:
    for model_id in ("m-" + uuid.uuid4().hex, "not-a-model-id"):
        for fn, args in (
            (client.get_logged_model, ()),
            (client.delete_logged_model, ()),
            (client.finalize_logged_model, ("READY",)),
            (client.delete_logged_model_tag, ("k",)),
        ):
            err = await error_of(fn, model_id, *args)
            assert err.error_code == "RESOURCE_DOES_NOT_EXIST", (fn, model_id)


async def test_create_errors(client: MlflowClient) -> None:
    err = await error_of(client.create_logged_model, "987654321")
    assert err.error_code == "RESOURCE_DOES_NOT_EXIST"
    eid = await new_experiment(client)
    err = await error_of(client.create_logged_model, eid, name="a/b")
    assert err.error_code == "INVALID_PARAMETER_VALUE"
    assert "Invalid model name" in err.message
    err = await error_of(client.create_logged_model, eid, source_run_id=uuid.uuid4().hex)
    assert err.error_code == "RESOURCE_DOES_NOT_EXIST"
    err = await error_of(client.create_logged_model, eid, tags={"": "v"})
    assert err.error_code == "INVALID_PARAMETER_VALUE"
    await call(client.delete_experiment, eid)
    err = await error_of(client.create_logged_model, eid)
    assert err.error_code == "INVALID_PARAMETER_VALUE"


async def test_raw_request_errors(tracking_uri: str) -> None:
    """What the client never sends: every refusal is MLflow's JSON error, never a 500."""
    base = tracking_uri + "/api/2.0/mlflow/logged-models"

    def post(path: str, body: Any, method: str = "POST") -> Any:
        return call(requests.request, method, base + path, json=body, timeout=30)

    cases = await asyncio.gather(
        post("", {}),
        post("", {"experiment_id": "0", "params": "x"}),
        post("", {"experiment_id": "0", "tags": [{"key": ["k"]}]}),
        post("/search", {"experiment_ids": ["0"], "max_results": "many"}),
        post("/search", {"experiment_ids": ["0"], "order_by": [{"field_name": "name",
                                                                 "ascending": "yes"}]}),
        post("/search", {"experiment_ids": ["0"], "datasets": [{"dataset_digest": "d"}]}),
        post("/m-" + "0" * 32, {"status": "DONE"}, "PATCH"),
        post("/m-" + "0" * 32, {}, "PATCH"),
    )  # fmt: skip
    for response in cases:
        assert response.status_code in (400, 404), response.text
        body = response.json()
        assert set(body) >= {"error_code", "message"}, body
    assert cases[0].json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "experiment_id" in cases[0].json()["message"]


async def test_ajax_prefix(tracking_uri: str, client: MlflowClient) -> None:
    eid = await new_experiment(client)
    response = await call(
        requests.post,
        tracking_uri + "/ajax-api/2.0/mlflow/logged-models",
        json={"experiment_id": eid, "name": "ajax"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    model = response.json()["model"]
    assert model["info"]["name"] == "ajax"
    assert model["info"]["status"] == "LOGGED_MODEL_PENDING"
    assert isinstance(model["info"]["creation_timestamp_ms"], int)


# -- the fluent API ------------------------------------------------------------------------


async def test_fluent_models(client: MlflowClient, fluent: None) -> None:
    name = unique("fluent")

    def scenario() -> tuple[Any, Any, Any, str]:
        mlflow.set_experiment(name)
        with mlflow.start_run() as run:
            model = mlflow.initialize_logged_model(
                name="agent", params={"k": "v"}, tags={"t": "1"}, model_type="agent"
            )
            mlflow.log_model_params({"extra": "2"}, model_id=model.model_id)
            mlflow.finalize_logged_model(model.model_id, "READY")
            active = mlflow.set_active_model(model_id=model.model_id)
            by_name = mlflow.set_active_model(name="agent")
            return model, active, by_name, run.info.run_id

    model, active, by_name, run_id = await call(scenario)
    assert model.source_run_id == run_id
    assert active.model_id == model.model_id
    assert by_name.model_id == model.model_id
    got = await call(client.get_logged_model, model.model_id)
    assert got.params == {"k": "v", "extra": "2"}
    assert got.tags["t"] == "1"
    assert got.status == LoggedModelStatus.READY
    found = await call(
        lambda: mlflow.search_logged_models(filter_string="name = 'agent'", output_format="list")
    )
    assert [m.model_id for m in found] == [model.model_id]


# -- datasets: log_inputs, log_outputs, search-datasets ------------------------------------


def search_datasets(tracking_uri: str, experiment_ids: list[str]) -> Any:
    """experiments/search-datasets as MLflow's UI calls it, through the client's own
    rest_utils (MlflowClient has no method for it)."""
    return call_endpoint(
        MlflowHostCreds(tracking_uri),
        "/ajax-api/2.0/mlflow/experiments/search-datasets",
        "POST",
        message_to_json(SearchDatasets(experiment_ids=experiment_ids)),
        SearchDatasets.Response(),
    )


def http_dataset(name: str) -> MetaDataset:
    """A dataset as mlflow.data builds it, without pandas (which mlflow.data.from_numpy
    needs and the test extras do not install): a CSV over HTTP with a schema."""
    return MetaDataset(
        HTTPDatasetSource(f"https://data.example.com/{name}.csv"),
        name=name,
        schema=Schema([ColSpec("double", "x"), ColSpec("long", "label")]),
    )


async def test_log_input_and_search_datasets(
    client: MlflowClient, fluent: None, tracking_uri: str
) -> None:
    name = unique("datasets")
    train, test = http_dataset("train-set"), http_dataset("test-set")

    def scenario() -> tuple[str, str]:
        exp_id = mlflow.set_experiment(name).experiment_id
        with mlflow.start_run() as run:
            mlflow.log_input(train, context="training", tags={"split": "a"})
            mlflow.log_input(test)
        return exp_id, run.info.run_id

    eid, rid = await call(scenario)
    run = await call(client.get_run, rid)
    logged = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(logged) == {"train-set", "test-set"}
    entity = train._to_mlflow_entity()
    got = logged["train-set"].dataset
    assert (got.digest, got.source_type, got.source, got.schema) == (
        entity.digest,
        "http",
        entity.source,
        entity.schema,
    )
    tags = {t.key: t.value for t in logged["train-set"].tags}
    assert tags == {"mlflow.data.context": "training", "split": "a"}

    response = await call(search_datasets, tracking_uri, [eid])
    summaries = sorted(
        (s.experiment_id, s.name, s.digest, s.context) for s in response.dataset_summaries
    )
    assert summaries == [
        (eid, "test-set", test.digest, ""),
        (eid, "train-set", train.digest, "training"),
    ]
    # MLflow's limits: at least one experiment id, at most 20.
    for ids in ([], [str(i) for i in range(1, 22)]):
        with pytest.raises(RestException) as info:
            await call(search_datasets, tracking_uri, ids)
        assert info.value.error_code == "INVALID_PARAMETER_VALUE"


async def test_log_input_from_numpy(client: MlflowClient, fluent: None) -> None:
    """mlflow.data.from_numpy, where pandas is installed (mlflow needs it for the schema)."""
    pytest.importorskip("pandas")
    name = unique("numpy")
    features = np.arange(12, dtype=np.float64).reshape(4, 3)

    def scenario() -> tuple[str, Any]:
        mlflow.set_experiment(name)
        dataset = mlflow.data.from_numpy(features, targets=np.array([0, 1, 0, 1]), name="np")
        with mlflow.start_run() as run:
            mlflow.log_input(dataset, context="training")
        return run.info.run_id, dataset

    rid, dataset = await call(scenario)
    run = await call(client.get_run, rid)
    [logged] = run.inputs.dataset_inputs
    entity = dataset._to_mlflow_entity()
    assert (logged.dataset.digest, logged.dataset.schema, logged.dataset.profile) == (
        entity.digest,
        entity.schema,
        entity.profile,
    )


async def test_log_input_with_a_model_and_outputs(client: MlflowClient, fluent: None) -> None:
    name = unique("inout")

    def scenario() -> tuple[str, str]:
        mlflow.set_experiment(name)
        with mlflow.start_run() as run:
            model = mlflow.initialize_logged_model(name="scored")
            mlflow.log_input(
                http_dataset("eval-set"), context="eval", model=LoggedModelInput(model.model_id)
            )
        return run.info.run_id, model.model_id

    rid, model_id = await call(scenario)
    await call(client.log_outputs, rid, [LoggedModelOutput(model_id, 3)])
    run = await call(client.get_run, rid)
    assert [m.model_id for m in run.inputs.model_inputs] == [model_id]
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["eval-set"]
    assert [(m.model_id, m.step) for m in run.outputs.model_outputs] == [(model_id, 3)]
    err = await error_of(client.log_outputs, rid, [LoggedModelOutput("m-" + uuid.uuid4().hex, 0)])
    assert err.error_code == "RESOURCE_DOES_NOT_EXIST"
    err = await error_of(client.log_inputs, rid, models=[LoggedModelInput("m-" + uuid.uuid4().hex)])
    assert err.error_code == "RESOURCE_DOES_NOT_EXIST"


# -- permissions ---------------------------------------------------------------------------


def trackd_cli(database_url: str, *args: str) -> str:
    """Runs the `trackd` CLI (the real entry point); its stdout."""
    result = subprocess.run(
        [sys.executable, "-m", "trackd.server", *args, "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.strip()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def authed(database_url: str) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A second trackd on the module's database with auth on and the HTTP front; API tokens
    of a reader and an editor of workspace "default" and of an outsider (MANAGE in "other"
    only)."""
    await call(trackd_cli, database_url, "workspace", "create", "other-ws")
    tokens = {}
    for who, role in (("reader", "default=READ"), ("editor", "default=EDIT")):
        tokens[who] = await call(
            trackd_cli, database_url, "token", "create", "--principal", who, "--role", role
        )
    tokens["outsider"] = await call(
        trackd_cli, database_url, "token", "create", "--principal", "outsider", "--role",
        "other-ws=MANAGE",
    )  # fmt: skip
    running = await app.start(server_config(auth="on", http_listen="127.0.0.1:0"), database_url)
    try:
        yield f"http://127.0.0.1:{running.http_port}", tokens
    finally:
        await running.stop(1.0)


def store_of(uri: str, token: str | None) -> RestStore:
    """The mlflow client's REST store, sending `token` as a Bearer token."""
    return RestStore(lambda: MlflowHostCreds(uri, token=token))


async def test_permissions(authed: tuple[str, dict[str, str]]) -> None:
    uri, tokens = authed
    editor, reader = store_of(uri, tokens["editor"]), store_of(uri, tokens["reader"])
    outsider, anonymous = store_of(uri, tokens["outsider"]), store_of(uri, None)
    eid = await call(editor.create_experiment, unique("guarded"))
    model = await call(editor.create_logged_model, eid, name="guarded")
    mid = model.model_id
    await call(editor.set_logged_model_tags, mid, [LoggedModelTag("a", "1")])

    # The reader reads and searches; every write is refused.
    assert (await call(reader.get_logged_model, mid)).tags == {"a": "1"}
    assert [m.model_id for m in await call(reader.search_logged_models, [eid])] == [mid]
    writes: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
        (reader.create_logged_model, (eid,)),
        (reader.finalize_logged_model, (mid, LoggedModelStatus.READY)),
        (reader.set_logged_model_tags, (mid, [LoggedModelTag("b", "2")])),
        (reader.delete_logged_model_tag, (mid, "a")),
        (reader.log_logged_model_params, (mid, [LoggedModelParameter("p", "1")])),
        (reader.delete_logged_model, (mid,)),
    ]
    for fn, args in writes:
        err = await error_of(fn, *args)
        assert err.error_code == "PERMISSION_DENIED", fn

    # To a caller of another workspace the model does not exist and searches find nothing.
    for fn, args in [(outsider.get_logged_model, (mid,)), *writes[1:]]:
        bound = getattr(outsider, fn.__name__)
        err = await error_of(bound, *args)
        assert err.error_code == "RESOURCE_DOES_NOT_EXIST", fn
    assert list(await call(outsider.search_logged_models, [eid])) == []

    # Without a token, nothing.
    err = await error_of(anonymous.get_logged_model, mid)
    assert err.error_code == "UNAUTHENTICATED"

    # The editor's writes go through.
    await call(editor.finalize_logged_model, mid, LoggedModelStatus.READY)
    await call(editor.delete_logged_model, mid)
