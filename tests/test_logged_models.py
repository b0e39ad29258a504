"""LoggedModelService: creation, finalization, soft deletion, tags, immutable params, model
metrics per dataset through LogMetric and LogBatch, and SearchLoggedModels (filter,
datasets, order, paging), all through a real channel to a real PostgreSQL."""

from __future__ import annotations

import asyncio
import math
import re

import grpc
import pytest
import pytest_asyncio

from helpers import error_info, new_experiment, new_run, violations
from trackd.v1 import dataset_pb2, logged_model_service_pb2_grpc, metric_pb2, run_pb2
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import logged_model_pb2 as lpb
from trackd.v1 import logged_model_service_pb2 as mpb
from trackd.v1 import run_service_pb2 as rpb

PENDING = lpb.LOGGED_MODEL_STATUS_PENDING
READY = lpb.LOGGED_MODEL_STATUS_READY
UPLOAD_FAILED = lpb.LOGGED_MODEL_STATUS_UPLOAD_FAILED
MISSING_MODEL = "m-0123456789abcdef0123456789abcdef"
NAN = math.nan


@pytest.fixture(scope="module")
def models(channel: grpc.aio.Channel) -> logged_model_service_pb2_grpc.LoggedModelServiceStub:
    """LoggedModelService stub over the module's channel."""
    return logged_model_service_pb2_grpc.LoggedModelServiceStub(channel)


# -- helpers -----------------------------------------------------------------------------------


async def fails(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    """The error of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    return exc.value


def assert_error(err: grpc.aio.AioRpcError, code: grpc.StatusCode, reason: str) -> None:
    assert err.code() == code, err.details()
    assert error_info(err).reason == reason


def assert_invalid(err: grpc.aio.AioRpcError, fields: set[str] | None = None) -> dict[str, str]:
    """Checks an INVALID_ARGUMENT / INVALID_PARAMETER_VALUE error and, if given, that its
    BadRequest names exactly `fields`; returns the violations."""
    assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER_VALUE")
    found = violations(err)
    if fields is not None:
        assert set(found) == fields, found
    return found


async def create(models, experiment_id: str, **fields) -> lpb.LoggedModel:  # type: ignore[no-untyped-def]
    resp = await models.CreateLoggedModel(
        mpb.CreateLoggedModelRequest(experiment_id=experiment_id, **fields)
    )
    return resp.model


async def get(models, model_id: str) -> lpb.LoggedModel:  # type: ignore[no-untyped-def]
    return (await models.GetLoggedModel(mpb.GetLoggedModelRequest(model_id=model_id))).model


def tags_of(model: lpb.LoggedModel) -> dict[str, str]:
    return {t.key: t.value for t in model.info.tags}


def params_of(model: lpb.LoggedModel) -> dict[str, str]:
    return {p.key: p.value for p in model.data.params}


def metrics_of(model: lpb.LoggedModel) -> dict[tuple[str, str, str], tuple[int, int, float]]:
    """(key, dataset_name, dataset_digest) -> (step, timestamp, value)."""
    out = {}
    for m in model.data.metrics:
        assert m.model_id == model.info.model_id
        out[(m.key, m.dataset_name, m.dataset_digest)] = (m.step, m.timestamp, m.value)
    return out


def param(key: str, value: str) -> lpb.LoggedModelParameter:
    return lpb.LoggedModelParameter(key=key, value=value)


def tag(key: str, value: str) -> lpb.LoggedModelTag:
    return lpb.LoggedModelTag(key=key, value=value)


def metric(
    key: str,
    value: float,
    step: int = 0,
    timestamp: int = 1_000,
    model_id: str = "",
    dataset: tuple[str, str] = ("", ""),
) -> metric_pb2.Metric:
    return metric_pb2.Metric(
        key=key,
        value=value,
        step=step,
        timestamp=timestamp,
        model_id=model_id,
        dataset_name=dataset[0],
        dataset_digest=dataset[1],
    )


async def setup(experiments, runs, models) -> tuple[str, str, str]:  # type: ignore[no-untyped-def]
    """A fresh experiment with a run and a model in it: (experiment_id, run_id, model_id)."""
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    mid = (await create(models, eid, name="m")).info.model_id
    return eid, rid, mid


# -- create and get ----------------------------------------------------------------------------


async def test_create_returns_a_pending_model_with_id_uri_params_and_tags(
    experiments, runs, models
) -> None:
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    model = await create(
        models,
        eid,
        name="classifier",
        model_type="sklearn",
        source_run_id=rid,
        params=[param("alpha", "0.5"), param("depth", "3")],
        tags=[tag("team", "vision"), tag("team", "nlp"), tag("stage", "dev")],
    )
    info = model.info
    assert re.fullmatch(r"m-[0-9a-f]{32}", info.model_id)
    assert info.experiment_id == eid
    assert (info.name, info.model_type, info.source_run_id) == ("classifier", "sklearn", rid)
    assert info.status == PENDING
    assert info.status_message == ""
    assert info.creation_timestamp > 0
    assert info.last_updated_timestamp == info.creation_timestamp
    exp = (await experiments.GetExperiment(epb.GetExperimentRequest(experiment_id=eid))).experiment
    assert info.artifact_uri == f"{exp.artifact_location}/models/{info.model_id}/artifacts"
    assert params_of(model) == {"alpha": "0.5", "depth": "3"}
    assert tags_of(model) == {"team": "nlp", "stage": "dev"}  # the last value of a key wins
    assert [t.key for t in model.info.tags] == ["stage", "team"]
    assert await get(models, info.model_id) == model


async def test_create_without_name_or_experiment_generates_a_name_in_default(models) -> None:
    model = await create(models, "")
    assert model.info.experiment_id == "0"
    assert re.fullmatch(r"[a-z]+-[a-z]+-\d+", model.info.name), model.info.name
    assert model.info.source_run_id == ""


async def test_create_in_unknown_experiment_is_not_found(models) -> None:
    err = await fails(
        models.CreateLoggedModel(mpb.CreateLoggedModelRequest(experiment_id="987654"))
    )
    assert_error(err, grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST")


async def test_create_in_deleted_experiment_is_failed_precondition(experiments, models) -> None:
    eid = await new_experiment(experiments)
    await experiments.DeleteExperiment(epb.DeleteExperimentRequest(experiment_id=eid))
    err = await fails(models.CreateLoggedModel(mpb.CreateLoggedModelRequest(experiment_id=eid)))
    assert_error(err, grpc.StatusCode.FAILED_PRECONDITION, "INVALID_STATE")


async def test_create_with_source_run_of_another_experiment_is_invalid(
    experiments, runs, models
) -> None:
    eid = await new_experiment(experiments)
    other = (await new_run(runs, await new_experiment(experiments))).info.run_id
    err = await fails(
        models.CreateLoggedModel(
            mpb.CreateLoggedModelRequest(experiment_id=eid, source_run_id=other)
        )
    )
    assert_invalid(err, {"source_run_id"})


async def test_create_with_unknown_or_deleted_source_run_fails(experiments, runs, models) -> None:
    eid = await new_experiment(experiments)
    err = await fails(
        models.CreateLoggedModel(
            mpb.CreateLoggedModelRequest(experiment_id=eid, source_run_id="ab" * 16)
        )
    )
    assert_error(err, grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST")
    rid = (await new_run(runs, eid)).info.run_id
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=rid))
    err = await fails(
        models.CreateLoggedModel(mpb.CreateLoggedModelRequest(experiment_id=eid, source_run_id=rid))
    )
    assert_error(err, grpc.StatusCode.FAILED_PRECONDITION, "INVALID_STATE")


async def test_create_over_limits_names_every_field(models) -> None:
    err = await fails(
        models.CreateLoggedModel(
            mpb.CreateLoggedModelRequest(
                name="n" * 501,
                model_type="t" * 501,
                source_run_id="not-a-run",
                params=[param("ok", "1"), param("bad/..", "x"), param("v", "x" * 6001)],
                tags=[tag("t", "y" * 8001)],
            )
        )
    )
    assert_invalid(err, {"name", "model_type", "params[1].key", "params[2].value", "tags[0].value"})
    err = await fails(
        models.CreateLoggedModel(mpb.CreateLoggedModelRequest(source_run_id="not-a-run"))
    )
    assert_invalid(err, {"source_run_id"})


async def test_create_at_the_limits_is_accepted(models) -> None:
    model = await create(
        models,
        "0",
        name="n" * 500,
        model_type="t" * 500,
        params=[param(f"p{i}", "v" * 6000) for i in range(100)],
        tags=[tag(f"t{i}", "w" * 8000) for i in range(100)],
    )
    assert len(model.data.params) == 100
    assert len(model.info.tags) == 100
    err = await fails(
        models.CreateLoggedModel(
            mpb.CreateLoggedModelRequest(params=[param(f"p{i}", "v") for i in range(101)])
        )
    )
    assert_invalid(err, {"params"})


async def test_create_with_one_param_key_twice_with_two_values_is_invalid(models) -> None:
    err = await fails(
        models.CreateLoggedModel(
            mpb.CreateLoggedModelRequest(params=[param("lr", "1"), param("lr", "2")])
        )
    )
    assert_invalid(err, {"params[1].value"})


@pytest.mark.parametrize(
    "model_id", ["", "m-XYZ", "0123456789abcdef0123456789abcdef", "m-" + "A" * 32, "m-" + "0" * 33]
)
async def test_malformed_model_id_is_invalid(models, model_id: str) -> None:
    err = await fails(models.GetLoggedModel(mpb.GetLoggedModelRequest(model_id=model_id)))
    assert_invalid(err, {"model_id"})


async def test_get_unknown_model_is_not_found(models) -> None:
    err = await fails(models.GetLoggedModel(mpb.GetLoggedModelRequest(model_id=MISSING_MODEL)))
    assert_error(err, grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST")
    assert error_info(err).metadata["model_id"] == MISSING_MODEL


# -- finalize ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [READY, UPLOAD_FAILED])
async def test_finalize_sets_status_message_and_update_time(models, status: int) -> None:
    model = await create(models, "0")
    resp = await models.FinalizeLoggedModel(
        mpb.FinalizeLoggedModelRequest(
            model_id=model.info.model_id, status=status, status_message="done"
        )
    )
    assert resp.model.info.status == status
    assert resp.model.info.status_message == "done"
    assert resp.model.info.last_updated_timestamp >= model.info.creation_timestamp
    assert (await get(models, model.info.model_id)).info.status == status


async def test_finalize_again_with_the_same_status_is_accepted(models) -> None:
    mid = (await create(models, "0")).info.model_id
    for message in ("first", "second"):
        resp = await models.FinalizeLoggedModel(
            mpb.FinalizeLoggedModelRequest(model_id=mid, status=READY, status_message=message)
        )
    assert (resp.model.info.status, resp.model.info.status_message) == (READY, "second")


async def test_finalize_twice_with_another_status_is_failed_precondition(models) -> None:
    mid = (await create(models, "0")).info.model_id
    await models.FinalizeLoggedModel(mpb.FinalizeLoggedModelRequest(model_id=mid, status=READY))
    err = await fails(
        models.FinalizeLoggedModel(
            mpb.FinalizeLoggedModelRequest(model_id=mid, status=UPLOAD_FAILED)
        )
    )
    assert_error(err, grpc.StatusCode.FAILED_PRECONDITION, "INVALID_STATE")
    assert (await get(models, mid)).info.status == READY


@pytest.mark.parametrize("status", [0, PENDING, 7])
async def test_finalize_to_a_non_final_status_is_invalid(models, status: int) -> None:
    mid = (await create(models, "0")).info.model_id
    err = await fails(
        models.FinalizeLoggedModel(mpb.FinalizeLoggedModelRequest(model_id=mid, status=status))
    )
    assert_invalid(err, {"status"})


async def test_finalize_message_over_limit_is_invalid(models) -> None:
    mid = (await create(models, "0")).info.model_id
    err = await fails(
        models.FinalizeLoggedModel(
            mpb.FinalizeLoggedModelRequest(model_id=mid, status=READY, status_message="x" * 8001)
        )
    )
    assert_invalid(err, {"status_message"})


async def test_writes_to_a_model_of_a_deleted_experiment_are_failed_precondition(
    experiments, models
) -> None:
    eid = await new_experiment(experiments)
    mid = (await create(models, eid)).info.model_id
    await experiments.DeleteExperiment(epb.DeleteExperimentRequest(experiment_id=eid))
    calls = [
        models.FinalizeLoggedModel(mpb.FinalizeLoggedModelRequest(model_id=mid, status=READY)),
        models.SetLoggedModelTags(
            mpb.SetLoggedModelTagsRequest(model_id=mid, tags=[tag("a", "b")])
        ),
        models.LogLoggedModelParams(
            mpb.LogLoggedModelParamsRequest(model_id=mid, params=[param("a", "b")])
        ),
        models.DeleteLoggedModel(mpb.DeleteLoggedModelRequest(model_id=mid)),
    ]
    for call in calls:
        assert_error(await fails(call), grpc.StatusCode.FAILED_PRECONDITION, "INVALID_STATE")
    assert (await get(models, mid)).info.status == PENDING


# -- delete ------------------------------------------------------------------------------------


async def test_deleted_model_is_not_found_everywhere(experiments, models) -> None:
    eid = await new_experiment(experiments)
    mid = (await create(models, eid, name="gone")).info.model_id
    await models.DeleteLoggedModel(mpb.DeleteLoggedModelRequest(model_id=mid))
    calls = [
        models.GetLoggedModel(mpb.GetLoggedModelRequest(model_id=mid)),
        models.DeleteLoggedModel(mpb.DeleteLoggedModelRequest(model_id=mid)),
        models.FinalizeLoggedModel(mpb.FinalizeLoggedModelRequest(model_id=mid, status=READY)),
        models.SetLoggedModelTags(
            mpb.SetLoggedModelTagsRequest(model_id=mid, tags=[tag("a", "b")])
        ),
        models.DeleteLoggedModelTag(mpb.DeleteLoggedModelTagRequest(model_id=mid, tag_key="a")),
        models.LogLoggedModelParams(
            mpb.LogLoggedModelParamsRequest(model_id=mid, params=[param("a", "b")])
        ),
    ]
    for call in calls:
        err = await fails(call)
        assert_error(err, grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST")
        assert "deleted" in err.details()
    resp = await models.SearchLoggedModels(mpb.SearchLoggedModelsRequest(experiment_ids=[eid]))
    assert list(resp.models) == []


async def test_delete_unknown_model_is_not_found(models) -> None:
    err = await fails(
        models.DeleteLoggedModel(mpb.DeleteLoggedModelRequest(model_id=MISSING_MODEL))
    )
    assert_error(err, grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST")


# -- tags --------------------------------------------------------------------------------------


async def test_set_tags_upserts_and_updates_the_model_time(models) -> None:
    model = await create(models, "0", tags=[tag("stage", "dev")])
    mid = model.info.model_id
    await models.SetLoggedModelTags(
        mpb.SetLoggedModelTagsRequest(
            model_id=mid, tags=[tag("stage", "prod"), tag("owner", "a"), tag("owner", "b")]
        )
    )
    got = await get(models, mid)
    assert tags_of(got) == {"stage": "prod", "owner": "b"}
    assert got.info.last_updated_timestamp >= model.info.last_updated_timestamp


async def test_delete_tag_removes_it_and_a_missing_tag_is_not_found(models) -> None:
    mid = (await create(models, "0", tags=[tag("a", "1"), tag("b", "2")])).info.model_id
    await models.DeleteLoggedModelTag(mpb.DeleteLoggedModelTagRequest(model_id=mid, tag_key="a"))
    assert tags_of(await get(models, mid)) == {"b": "2"}
    err = await fails(
        models.DeleteLoggedModelTag(mpb.DeleteLoggedModelTagRequest(model_id=mid, tag_key="a"))
    )
    assert_error(err, grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST")


async def test_set_tags_limits(models) -> None:
    mid = (await create(models, "0")).info.model_id
    err = await fails(models.SetLoggedModelTags(mpb.SetLoggedModelTagsRequest(model_id=mid)))
    assert_invalid(err, {"tags"})
    err = await fails(
        models.SetLoggedModelTags(
            mpb.SetLoggedModelTagsRequest(
                model_id=mid, tags=[tag("ok", "v"), tag("/lead", "v"), tag("v", "x" * 8001)]
            )
        )
    )
    assert_invalid(err, {"tags[1].key", "tags[2].value"})
    err = await fails(
        models.SetLoggedModelTags(
            mpb.SetLoggedModelTagsRequest(
                model_id=mid, tags=[tag(f"k{i}", "v") for i in range(101)]
            )
        )
    )
    assert_invalid(err, {"tags"})
    err = await fails(
        models.DeleteLoggedModelTag(mpb.DeleteLoggedModelTagRequest(model_id=mid, tag_key=""))
    )
    assert_invalid(err, {"tag_key"})
    assert tags_of(await get(models, mid)) == {}


# -- params ------------------------------------------------------------------------------------


async def test_params_are_immutable_like_run_params(models) -> None:
    mid = (await create(models, "0", params=[param("lr", "0.1")])).info.model_id
    await models.LogLoggedModelParams(
        mpb.LogLoggedModelParamsRequest(model_id=mid, params=[param("lr", "0.1"), param("k", "2")])
    )
    assert params_of(await get(models, mid)) == {"lr": "0.1", "k": "2"}
    err = await fails(
        models.LogLoggedModelParams(
            mpb.LogLoggedModelParamsRequest(
                model_id=mid, params=[param("new", "1"), param("lr", "0.2")]
            )
        )
    )
    assert_error(err, grpc.StatusCode.FAILED_PRECONDITION, "INVALID_STATE")
    assert "lr" in err.details()
    assert "0.1" in err.details()
    assert "0.2" in err.details()
    assert params_of(await get(models, mid)) == {"lr": "0.1", "k": "2"}  # nothing written


async def test_log_params_limits(models) -> None:
    mid = (await create(models, "0")).info.model_id
    err = await fails(models.LogLoggedModelParams(mpb.LogLoggedModelParamsRequest(model_id=mid)))
    assert_invalid(err, {"params"})
    err = await fails(
        models.LogLoggedModelParams(
            mpb.LogLoggedModelParamsRequest(
                model_id=mid, params=[param("a", "1"), param("a", "2"), param("b", "x" * 6001)]
            )
        )
    )
    assert_invalid(err, {"params[1].value", "params[2].value"})
    err = await fails(
        models.LogLoggedModelParams(
            mpb.LogLoggedModelParamsRequest(
                model_id=mid, params=[param(f"p{i}", "v") for i in range(101)]
            )
        )
    )
    assert_invalid(err, {"params"})


# -- model metrics -----------------------------------------------------------------------------


async def test_log_metric_with_model_keeps_the_latest_point_per_key_and_dataset(
    experiments, runs, models
) -> None:
    _, rid, mid = await setup(experiments, runs, models)
    train, test = ("train", "d1"), ("test", "d2")
    for key, value, step, ts, ds in [
        ("acc", 0.5, 1, 100, train),
        ("acc", 0.7, 2, 100, train),
        ("acc", 0.9, 1, 999, train),  # an older step: not the latest
        ("acc", 0.6, 5, 100, test),
        ("loss", 0.3, 0, 100, ("", "")),
    ]:
        await runs.LogMetric(
            rpb.LogMetricRequest(
                run_id=rid,
                key=key,
                value=value,
                step=step,
                timestamp=ts,
                model_id=mid,
                dataset_name=ds[0],
                dataset_digest=ds[1],
            )
        )
    model = await get(models, mid)
    assert metrics_of(model) == {
        ("acc", "test", "d2"): (5, 100, 0.6),
        ("acc", "train", "d1"): (2, 100, 0.7),
        ("loss", "", ""): (0, 100, 0.3),
    }
    assert [(m.key, m.dataset_name) for m in model.data.metrics] == [
        ("acc", "test"),
        ("acc", "train"),
        ("loss", ""),
    ]
    assert {m.run_id for m in model.data.metrics} == {rid}
    # The points also belong to the run: its series holds all of them.
    run = (await runs.GetRun(rpb.GetRunRequest(run_id=rid))).run
    assert {m.key: m.value for m in run.data.metrics} == {"acc": 0.6, "loss": 0.3}
    history = await runs.GetMetricHistory(rpb.GetMetricHistoryRequest(run_id=rid, metric_key="acc"))
    assert len(history.metrics) == 4


async def test_latest_model_metric_orders_step_then_timestamp_then_value_nan_greatest(
    experiments, runs, models
) -> None:
    _, rid, mid = await setup(experiments, runs, models)
    ds = ("eval", "abc")
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid,
            metrics=[
                metric("a", 1.0, 3, 10, mid, ds),
                metric("a", 2.0, 3, 20, mid, ds),  # same step, later timestamp wins
                metric("b", 5.0, 1, 10, mid, ds),
                metric("b", NAN, 1, 10, mid, ds),  # same step and time: NaN is greatest
                metric("c", 9.0, 4, 10, mid, ds),
            ],
        )
    )
    # A later batch with smaller (step, timestamp, value) leaves the latest as it is; a
    # greater one replaces it.
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid,
            metrics=[metric("a", 100.0, 2, 99, mid, ds), metric("c", 0.5, 5, 1, mid, ds)],
        )
    )
    got = metrics_of(await get(models, mid))
    assert got[("a", "eval", "abc")] == (3, 20, 2.0)
    assert got[("b", "eval", "abc")][:2] == (1, 10)
    assert math.isnan(got[("b", "eval", "abc")][2])
    assert got[("c", "eval", "abc")] == (5, 1, 0.5)


async def test_model_metrics_from_two_runs_share_the_latest(experiments, runs, models) -> None:
    eid, rid, mid = await setup(experiments, runs, models)
    other = (await new_run(runs, eid)).info.run_id
    await runs.LogMetric(
        rpb.LogMetricRequest(run_id=rid, key="acc", value=0.1, step=1, model_id=mid)
    )
    await runs.LogMetric(
        rpb.LogMetricRequest(run_id=other, key="acc", value=0.2, step=2, model_id=mid)
    )
    model = await get(models, mid)
    assert [(m.value, m.run_id) for m in model.data.metrics] == [(0.2, other)]


async def test_concurrent_runs_logging_one_models_metrics_keep_the_greatest(
    experiments, runs, models
) -> None:
    eid = await new_experiment(experiments)
    a = (await create(models, eid)).info.model_id
    b = (await create(models, eid)).info.model_id
    rids = [(await new_run(runs, eid)).info.run_id for _ in range(8)]

    async def log(i: int, rid: str) -> None:
        # Each batch touches both models, in opposite orders for half of the runs.
        order = [a, b] if i % 2 else [b, a]
        await runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid,
                metrics=[
                    metric("acc", i / 10, step=i, model_id=mid, dataset=("ds", "1"))
                    for mid in order
                ],
                params=[run_pb2.Param(key="i", value=str(i))],
            )
        )

    await asyncio.gather(*(log(i, rid) for i, rid in enumerate(rids)))
    for mid in (a, b):
        model = await get(models, mid)
        assert metrics_of(model) == {("acc", "ds", "1"): (7, 1_000, 0.7)}
        assert model.data.metrics[0].run_id == rids[7]


async def test_log_batch_with_model_metrics_params_and_tags_is_one_transaction(
    experiments, runs, models
) -> None:
    _, rid, mid = await setup(experiments, runs, models)
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid,
                metrics=[
                    metric("acc", 0.5, model_id=mid),
                    metric("acc", 0.6, model_id=MISSING_MODEL),
                ],
                params=[run_pb2.Param(key="lr", value="1")],
            )
        )
    )
    assert_error(err, grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST")
    assert error_info(err).metadata["model_id"] == MISSING_MODEL
    run = (await runs.GetRun(rpb.GetRunRequest(run_id=rid))).run
    assert list(run.data.metrics) == []
    assert list(run.data.params) == []
    assert list((await get(models, mid)).data.metrics) == []


async def test_model_metric_of_another_experiments_model_is_invalid(
    experiments, runs, models
) -> None:
    _, rid, _ = await setup(experiments, runs, models)
    foreign = (await create(models, await new_experiment(experiments))).info.model_id
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid, metrics=[metric("a", 1.0), metric("b", 1.0, model_id=foreign)]
            )
        )
    )
    assert_invalid(err, {"metrics[1].model_id"})
    err = await fails(
        runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="a", value=1.0, model_id=foreign))
    )
    assert_invalid(err, {"model_id"})
    run = (await runs.GetRun(rpb.GetRunRequest(run_id=rid))).run
    assert list(run.data.metrics) == []


async def test_model_metric_of_a_deleted_model_is_not_found(experiments, runs, models) -> None:
    _, rid, mid = await setup(experiments, runs, models)
    await models.DeleteLoggedModel(mpb.DeleteLoggedModelRequest(model_id=mid))
    err = await fails(
        runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="a", value=1.0, model_id=mid))
    )
    assert_error(err, grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST")


async def test_model_metric_to_a_deleted_run_is_failed_precondition(
    experiments, runs, models
) -> None:
    _, rid, mid = await setup(experiments, runs, models)
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=rid))
    err = await fails(
        runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="a", value=1.0, model_id=mid))
    )
    assert_error(err, grpc.StatusCode.FAILED_PRECONDITION, "INVALID_STATE")


async def test_model_metric_fields_are_validated(experiments, runs, models) -> None:
    _, rid, mid = await setup(experiments, runs, models)
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid,
                metrics=[
                    metric("ok", 1.0, model_id=mid, dataset=("d", "x" * 36)),
                    metric("a", 1.0, model_id="m-nothex"),
                    metric("b", 1.0, dataset=("d", "1")),  # a dataset needs a model
                    metric("c", 1.0, model_id=mid, dataset=("d", "")),
                    metric("d", 1.0, model_id=mid, dataset=("", "1")),
                    metric("e", 1.0, model_id=mid, dataset=("n" * 501, "x" * 37)),
                ],
            )
        )
    )
    assert_invalid(
        err,
        {
            "metrics[1].model_id",
            "metrics[2].model_id",
            "metrics[3].dataset_digest",
            "metrics[4].dataset_name",
            "metrics[5].dataset_name",
            "metrics[5].dataset_digest",
        },
    )
    err = await fails(
        runs.LogMetric(
            rpb.LogMetricRequest(
                run_id=rid, key="a", value=1.0, dataset_name="d", dataset_digest="1"
            )
        )
    )
    assert_invalid(err, {"model_id"})
    assert list((await get(models, mid)).data.metrics) == []


async def test_metrics_without_model_id_stay_with_the_run(experiments, runs, models) -> None:
    _, rid, mid = await setup(experiments, runs, models)
    await runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="plain", value=1.0))
    assert list((await get(models, mid)).data.metrics) == []


# -- search ------------------------------------------------------------------------------------


async def search(  # type: ignore[no-untyped-def]
    models,
    experiment_ids: list[str],
    filter_: str = "",
    order_by: tuple[str, ...] = (),
    datasets: tuple[tuple[str, str], ...] = (),
    max_results: int = 0,
    page_token: str = "",
) -> mpb.SearchLoggedModelsResponse:
    return await models.SearchLoggedModels(
        mpb.SearchLoggedModelsRequest(
            experiment_ids=experiment_ids,
            filter=filter_,
            order_by=list(order_by),
            datasets=[
                mpb.SearchLoggedModelsRequest.DatasetFilter(dataset_name=n, dataset_digest=d)
                for n, d in datasets
            ],
            max_results=max_results,
            page_token=page_token,
        )
    )


class Catalog:
    """A fresh experiment with five models and their metrics:

    name   status         type  params.lr  tags.team  acc(train,d1) acc(test,d2) acc(no ds)
    m1     READY          lgbm  0.1        vision     0.9           0.5          -
    m2     READY          lgbm  0.01       nlp        0.8           0.95         -
    m3     UPLOAD_FAILED  cnn   0.1        -          -             0.7          -
    m4     PENDING        cnn   -          vision     -             -            0.99
    m5     (deleted)      cnn   0.1        vision     1.0           1.0          -
    """

    experiment_id: str
    run_id: str
    ids: dict[str, str]
    created: dict[str, int]

    def names(self, resp: mpb.SearchLoggedModelsResponse) -> list[str]:
        by_id = {v: k for k, v in self.ids.items()}
        return [by_id[m.info.model_id] for m in resp.models]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def catalog(experiments, runs, models) -> Catalog:  # type: ignore[no-untyped-def]
    cat = Catalog()
    cat.experiment_id = await new_experiment(experiments)
    cat.run_id = (await new_run(runs, cat.experiment_id)).info.run_id
    specs = [
        ("m1", READY, "lgbm", {"lr": "0.1"}, {"team": "vision"}, {"train": 0.9, "test": 0.5}),
        ("m2", READY, "lgbm", {"lr": "0.01"}, {"team": "nlp"}, {"train": 0.8, "test": 0.95}),
        ("m3", UPLOAD_FAILED, "cnn", {"lr": "0.1"}, {}, {"test": 0.7}),
        ("m4", PENDING, "cnn", {}, {"team": "vision"}, {"": 0.99}),
        ("m5", READY, "cnn", {"lr": "0.1"}, {"team": "vision"}, {"train": 1.0, "test": 1.0}),
    ]
    digests = {"train": "d1", "test": "d2", "": ""}
    cat.ids = {}
    cat.created = {}
    for name, status, kind, ps, ts, accs in specs:
        model = await create(
            models,
            cat.experiment_id,
            name=name,
            model_type=kind,
            source_run_id=cat.run_id if name == "m1" else "",
            params=[param(k, v) for k, v in ps.items()],
            tags=[tag(k, v) for k, v in ts.items()],
        )
        mid = model.info.model_id
        cat.ids[name] = mid
        cat.created[name] = model.info.creation_timestamp
        if status != PENDING:
            await models.FinalizeLoggedModel(
                mpb.FinalizeLoggedModelRequest(model_id=mid, status=status)
            )
        await runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=cat.run_id,
                metrics=[
                    metric("acc", v, model_id=mid, dataset=(ds, digests[ds]))
                    for ds, v in accs.items()
                ],
            )
        )
    await models.DeleteLoggedModel(mpb.DeleteLoggedModelRequest(model_id=cat.ids["m5"]))
    return cat


LIVE = {"m1", "m2", "m3", "m4"}


@pytest.mark.parametrize(
    ("filter_", "datasets", "expected"),
    [
        ("", (), LIVE),
        ("attributes.status = 'READY'", (), {"m1", "m2"}),
        ("status != 'READY'", (), {"m3", "m4"}),
        ("attributes.status IN ('PENDING', 'UPLOAD_FAILED')", (), {"m3", "m4"}),
        ("attributes.name = 'm2'", (), {"m2"}),
        ("name LIKE 'm%'", (), LIVE),
        ("name ILIKE 'M1'", (), {"m1"}),
        ("model_type = 'cnn'", (), {"m3", "m4"}),
        ("attributes.model_type NOT IN ('cnn')", (), {"m1", "m2"}),
        ("source_run_id = '{run}'", (), {"m1"}),
        ("source_run_id != '{run}'", (), set()),  # a missing source run matches nothing
        ("source_run_id IS NULL", (), {"m2", "m3", "m4"}),
        ("source_run_id IS NOT NULL", (), {"m1"}),
        ("creation_timestamp > 0", (), LIVE),
        ("last_updated_timestamp < 0", (), set()),
        ("params.lr = '0.1'", (), {"m1", "m3"}),
        ("params.lr != '0.1'", (), {"m2"}),
        ("params.lr IS NULL", (), {"m4"}),
        ("tags.team = 'vision'", (), {"m1", "m4"}),
        ("tags.team IS NULL", (), {"m3"}),
        ("metrics.acc > 0.9", (), {"m2", "m4"}),  # any dataset's latest
        ("metrics.acc > 0.9", (("train", ""),), set()),
        ("metrics.acc > 0.85", (("train", ""),), {"m1"}),
        ("metrics.acc > 0.85", (("train", "d1"),), {"m1"}),
        ("metrics.acc > 0.85", (("train", "other"),), set()),
        ("metrics.acc > 0.9", (("test", "d2"),), {"m2"}),
        ("metrics.acc >= 0.5", (("train", "d1"), ("test", "d2")), {"m1", "m2", "m3"}),
        ("metrics.acc < 0.6", (), {"m1"}),
        ("metrics.acc IS NULL", (("train", ""),), {"m3", "m4"}),
        ("metrics.acc IS NOT NULL", (), LIVE),
        # `datasets` without a metric comparison: the models with a metric on one of them.
        ("", (("train", ""),), {"m1", "m2"}),
        ("", (("train", "d1"), ("test", "d2")), {"m1", "m2", "m3"}),
        ("", (("train", "other"),), set()),
        ("", (("nowhere", ""),), set()),
        ("params.lr = '0.1'", (("train", ""),), {"m1"}),
        ("params.lr = '0.1'", (("test", "d2"),), {"m1", "m3"}),
        ("tags.team = 'vision' OR model_type = 'cnn'", (("test", ""),), {"m1", "m3"}),
        ("NOT name = 'm1'", (("train", "d1"),), {"m2"}),
        # With one, `datasets` restricts the metric comparisons only.
        ("metrics.acc IS NULL", (("test", ""),), {"m4"}),
        ("params.lr = '0.1' OR metrics.acc > 0.9", (("test", ""),), {"m1", "m2", "m3"}),
        ("metrics.missing = 1", (), set()),
        ("metrics.acc > 0.9 AND params.lr = '0.01'", (), {"m2"}),
        ("tags.team = 'nlp' OR status = 'PENDING'", (), {"m2", "m4"}),
        ("NOT tags.team = 'vision'", (), {"m2", "m3"}),
        ("(model_type = 'cnn' OR name = 'm1') AND NOT metrics.acc > 0.9", (), {"m1", "m3"}),
    ],
)
async def test_search_filter(
    models,
    catalog: Catalog,
    filter_: str,
    datasets: tuple[tuple[str, str], ...],
    expected: set[str],
) -> None:
    filter_ = filter_.replace("{run}", catalog.run_id)
    resp = await search(models, [catalog.experiment_id], filter_, datasets=datasets)
    assert set(catalog.names(resp)) == expected
    assert resp.next_page_token == ""


async def test_search_results_carry_params_tags_and_metrics(models, catalog: Catalog) -> None:
    resp = await search(models, [catalog.experiment_id], "name = 'm1'")
    (model,) = resp.models
    assert model == await get(models, catalog.ids["m1"])
    assert params_of(model) == {"lr": "0.1"}
    assert tags_of(model) == {"team": "vision"}
    assert set(metrics_of(model)) == {("acc", "test", "d2"), ("acc", "train", "d1")}


async def test_search_default_order_is_newest_first(models, catalog: Catalog) -> None:
    resp = await search(models, [catalog.experiment_id])
    got = [(-m.info.creation_timestamp, m.info.model_id) for m in resp.models]
    assert got == sorted(got)
    assert len(got) == 4


# In an expected order, a tuple of names stands for models that tie on every key, so the
# tiebreak (creation_timestamp DESC, then model_id, as in MLflow) orders them. `datasets`
# without a metric comparison in the filter keeps only the models with a metric on one of
# them (MLflow's meaning), so m3 and m4 drop out of the train-only orders.
@pytest.mark.parametrize(
    ("order_by", "datasets", "expected"),
    [
        (("name",), (), ["m1", "m2", "m3", "m4"]),
        (("attributes.name DESC",), (), ["m4", "m3", "m2", "m1"]),
        (("metrics.acc DESC",), (("train", "d1"),), ["m1", "m2"]),
        (("metrics.acc ASC",), (("train", "d1"),), ["m2", "m1"]),
        (("metrics.acc DESC",), (("test", ""),), ["m2", "m3", "m1"]),
        (("metrics.acc",), (("test", "d2"),), ["m1", "m3", "m2"]),
        (("metrics.acc DESC",), (), ["m4", "m2", "m1", "m3"]),
        (("metrics.acc DESC",), (("nowhere", ""),), []),
        (("metrics.nothing DESC",), (), [("m1", "m2", "m3", "m4")]),
        (("model_type",), (), [("m3", "m4"), ("m1", "m2")]),
        # Every point has step 0 and one timestamp: a model's greatest value is its latest.
        (("metrics.acc DESC",), (), ["m4", "m2", "m1", "m3"]),
        (("metrics.nothing DESC", "name"), (), ["m1", "m2", "m3", "m4"]),
        (("model_type", "name DESC"), (), ["m4", "m3", "m2", "m1"]),
        (("status", "name"), (), ["m4", "m1", "m2", "m3"]),
        (("params.lr DESC", "name"), (), ["m1", "m3", "m2", "m4"]),
        (("tags.team", "name"), (), ["m2", "m1", "m4", "m3"]),
    ],
)
async def test_search_order_missing_values_last(
    models,
    catalog: Catalog,
    order_by: tuple[str, ...],
    datasets: tuple[tuple[str, str], ...],
    expected: list[str | tuple[str, ...]],
) -> None:
    resp = await search(models, [catalog.experiment_id], order_by=order_by, datasets=datasets)
    flat: list[str] = []
    for item in expected:
        if isinstance(item, tuple):
            flat += sorted(item, key=lambda n: (-catalog.created[n], catalog.ids[n]))
        else:
            flat.append(item)
    assert catalog.names(resp) == flat


async def test_search_order_ties_break_by_creation_newest_first_then_model_id(
    experiments, models
) -> None:
    eid = await new_experiment(experiments)
    made: list[tuple[int, str]] = []
    for i in range(6):
        m = await create(models, eid, name=f"t{i}", model_type="same")
        made.append((m.info.creation_timestamp, m.info.model_id))
        await asyncio.sleep(0.003)
    expected = [mid for _, mid in sorted(made, key=lambda c: (-c[0], c[1]))]
    for order_by in (
        ("model_type",),
        ("model_type DESC",),
        ("params.none",),
        ("tags.none DESC",),
        ("metrics.none",),
        ("status", "model_type"),
    ):
        resp = await search(models, [eid], order_by=order_by)
        assert [m.info.model_id for m in resp.models] == expected, order_by
        paged: list[str] = []
        token = ""
        while True:
            page = await search(models, [eid], order_by=order_by, max_results=2, page_token=token)
            paged += [m.info.model_id for m in page.models]
            token = page.next_page_token
            if not token:
                break
        assert paged == expected, order_by


async def test_search_order_by_metric_without_datasets_uses_the_latest_point(
    experiments, runs, models
) -> None:
    eid, rid, _ = await setup(experiments, runs, models)
    a = (await create(models, eid, name="a")).info.model_id
    b = (await create(models, eid, name="b")).info.model_id
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid,
            metrics=[
                metric("s", 0.1, step=5, model_id=a, dataset=("x", "1")),
                metric("s", 0.9, step=1, model_id=a, dataset=("y", "1")),
                metric("s", 0.5, step=3, model_id=b, dataset=("x", "1")),
            ],
        )
    )
    resp = await search(models, [eid], "name != 'm'", order_by=("metrics.s DESC",))
    assert [m.info.name for m in resp.models] == ["b", "a"]  # a's latest point (step 5) is 0.1
    resp = await search(models, [eid], "name != 'm'", ("metrics.s DESC",), (("y", ""),))
    assert [m.info.name for m in resp.models] == ["a"]  # b has no point on y


async def test_search_pages_by_keyset_and_binds_the_token(models, catalog: Catalog) -> None:
    seen: list[str] = []
    token = ""
    while True:
        resp = await search(
            models, [catalog.experiment_id], order_by=("name",), max_results=3, page_token=token
        )
        seen += catalog.names(resp)
        token = resp.next_page_token
        if not token:
            break
        err = await fails(
            search(models, [catalog.experiment_id], order_by=("name DESC",), page_token=token)
        )
        assert_invalid(err, {"page_token"})
        err = await fails(
            search(
                models,
                [catalog.experiment_id],
                order_by=("name",),
                datasets=(("x", ""),),
                page_token=token,
            )
        )
        assert_invalid(err, {"page_token"})
    assert seen == ["m1", "m2", "m3", "m4"]
    err = await fails(search(models, [catalog.experiment_id], page_token="garbage!"))
    assert_invalid(err, {"page_token"})


@pytest.mark.parametrize(
    ("order_by", "datasets", "count"),
    [
        (("metrics.acc DESC",), (("train", "d1"),), 2),
        (("metrics.acc",), (("test", ""),), 3),
        (("metrics.acc DESC",), (), 4),
        (("tags.team DESC", "params.lr"), (), 4),
        (("model_type",), (), 4),
        (("status DESC",), (("test", ""),), 3),
        ((), (), 4),
        ((), (("train", ""),), 2),
    ],
)
async def test_search_pages_one_model_at_a_time_in_the_full_order(
    models,
    catalog: Catalog,
    order_by: tuple[str, ...],
    datasets: tuple[tuple[str, str], ...],
    count: int,
) -> None:
    whole = await search(models, [catalog.experiment_id], order_by=order_by, datasets=datasets)
    seen: list[str] = []
    token = ""
    while True:
        resp = await search(
            models,
            [catalog.experiment_id],
            order_by=order_by,
            datasets=datasets,
            max_results=1,
            page_token=token,
        )
        seen += catalog.names(resp)
        token = resp.next_page_token
        if not token:
            break
    assert seen == catalog.names(whole)
    assert len(seen) == count


async def test_search_spans_several_experiments_and_skips_deleted(
    experiments, models, catalog: Catalog
) -> None:
    other = await new_experiment(experiments)
    await create(models, other, name="elsewhere")
    resp = await search(models, [catalog.experiment_id, other], order_by=("name",))
    assert [m.info.name for m in resp.models] == ["elsewhere", "m1", "m2", "m3", "m4"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"experiment_ids": []}, "experiment_ids"),
        ({"experiment_ids": ["x"]}, "experiment_ids[0]"),
        ({"filter_": "metrics.acc >"}, "filter"),
        ({"filter_": "metrics.acc.min > 1"}, None),  # a dotted key, not a summary: no match
        ({"filter_": 'metrics."acc".min > 1'}, "filter"),
        ({"filter_": "datasets.name = 'x'"}, "filter"),
        ({"filter_": "run_id = 'x'"}, "filter"),
        ({"filter_": "name < 'x'"}, "filter"),
        ({"filter_": "name IS NULL"}, "filter"),
        ({"order_by": ("bogus",)}, "order_by[0]"),
        ({"order_by": ("name",) * 11}, "order_by"),
        ({"datasets": (("", "d"),)}, "datasets[0].dataset_name"),
        ({"datasets": (("n", "x" * 37),)}, "datasets[0].dataset_digest"),
        ({"max_results": 10001}, "max_results"),
        ({"max_results": -1}, "max_results"),
    ],
)
async def test_search_rejects_bad_requests(models, catalog: Catalog, kwargs, field) -> None:  # type: ignore[no-untyped-def]
    args = {"experiment_ids": [catalog.experiment_id], **kwargs}
    call = search(models, **args)
    if field is None:
        assert list((await call).models) == []
        return
    assert_invalid(await fails(call), {field})


async def test_get_run_lists_deleted_models_nowhere(experiments, runs, models) -> None:
    eid, rid, mid = await setup(experiments, runs, models)
    keep = (await create(models, eid)).info.model_id
    await runs.LogInputs(
        rpb.LogInputsRequest(
            run_id=rid,
            models=[dataset_pb2.ModelInput(model_id=mid), dataset_pb2.ModelInput(model_id=keep)],
        )
    )
    await runs.LogOutputs(
        rpb.LogOutputsRequest(
            run_id=rid,
            models=[
                dataset_pb2.ModelOutput(model_id=mid),
                dataset_pb2.ModelOutput(model_id=keep, step=3),
            ],
        )
    )
    await models.DeleteLoggedModel(mpb.DeleteLoggedModelRequest(model_id=mid))
    run = (await runs.GetRun(rpb.GetRunRequest(run_id=rid))).run
    assert [m.model_id for m in run.inputs.model_inputs] == [keep]
    assert [(m.model_id, m.step) for m in run.outputs.model_outputs] == [(keep, 3)]
