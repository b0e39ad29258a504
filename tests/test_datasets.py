"""Run inputs and outputs: LogInputs (datasets stored once per experiment, input tags,
model inputs), LogOutputs, what GetRun and SearchRuns return, ExperimentService.
SearchDatasets, searching runs by datasets.name/digest/context, and the limits, all through
a real channel to a real PostgreSQL."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
import pytest_asyncio

from helpers import error_info, new_experiment, new_run, violations
from trackd.v1 import dataset_pb2 as dpb
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import logged_model_service_pb2 as mpb
from trackd.v1 import logged_model_service_pb2_grpc, run_pb2
from trackd.v1 import run_service_pb2 as rpb

CONTEXT = "mlflow.data.context"
MISSING_RUN = "0123456789abcdef0123456789abcdef"
MISSING_MODEL = "m-0123456789abcdef0123456789abcdef"


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


def dataset(  # type: ignore[no-untyped-def]
    name: str = "mnist",
    digest: str = "abc123",
    context: str | None = None,
    tags: dict[str, str] | None = None,
    **fields,
) -> dpb.DatasetInput:
    """A DatasetInput; `context` becomes the mlflow.data.context tag."""
    all_tags = dict(tags or {})
    if context is not None:
        all_tags[CONTEXT] = context
    values = {"source_type": "local", "source": '{"uri": "/data/x"}', **fields}
    return dpb.DatasetInput(
        dataset=dpb.Dataset(name=name, digest=digest, **values),
        tags=[dpb.InputTag(key=k, value=v) for k, v in all_tags.items()],
    )


async def log_inputs(runs, run_id: str, *datasets: dpb.DatasetInput, models=()) -> None:  # type: ignore[no-untyped-def]
    await runs.LogInputs(
        rpb.LogInputsRequest(
            run_id=run_id,
            datasets=list(datasets),
            models=[dpb.ModelInput(model_id=m) for m in models],
        )
    )


async def get(runs, run_id: str) -> run_pb2.Run:  # type: ignore[no-untyped-def]
    return (await runs.GetRun(rpb.GetRunRequest(run_id=run_id))).run


def inputs_of(run: run_pb2.Run) -> dict[tuple[str, str], dict[str, str]]:
    """(name, digest) -> input tags."""
    return {
        (i.dataset.name, i.dataset.digest): {t.key: t.value for t in i.tags}
        for i in run.inputs.dataset_inputs
    }


async def new_model(models, experiment_id: str) -> str:  # type: ignore[no-untyped-def]
    resp = await models.CreateLoggedModel(mpb.CreateLoggedModelRequest(experiment_id=experiment_id))
    return str(resp.model.info.model_id)


async def summaries(  # type: ignore[no-untyped-def]
    experiments, experiment_ids: list[str], max_results: int = 0, page_token: str = ""
) -> epb.SearchDatasetsResponse:
    return await experiments.SearchDatasets(
        epb.SearchDatasetsRequest(
            experiment_ids=experiment_ids, max_results=max_results, page_token=page_token
        )
    )


def summary_tuples(resp: epb.SearchDatasetsResponse) -> list[tuple[str, str, str, str]]:
    return [(s.experiment_id, s.name, s.digest, s.context) for s in resp.dataset_summaries]


# -- LogInputs and GetRun ----------------------------------------------------------------------


async def test_log_inputs_are_returned_by_get_run_in_full(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    train = dataset(
        "mnist",
        "d1",
        context="training",
        tags={"split": "train"},
        source_type="s3",
        source='{"uri": "s3://b/mnist"}',
        schema='{"mlflow_colspec": []}',
        profile='{"num_rows": 60000}',
    )
    await log_inputs(runs, rid, dataset("zoo", "z9", context="evaluation"), train)
    run = await get(runs, rid)
    assert [(i.dataset.name, i.dataset.digest) for i in run.inputs.dataset_inputs] == [
        ("mnist", "d1"),
        ("zoo", "z9"),
    ]
    got = run.inputs.dataset_inputs[0]
    assert got.dataset == train.dataset
    assert [(t.key, t.value) for t in got.tags] == [(CONTEXT, "training"), ("split", "train")]
    assert inputs_of(run)[("zoo", "z9")] == {CONTEXT: "evaluation"}
    assert list(run.inputs.model_inputs) == []
    assert list(run.outputs.model_outputs) == []


async def test_a_run_without_inputs_has_empty_inputs_and_outputs(runs) -> None:
    run = await get(runs, (await new_run(runs)).info.run_id)
    assert list(run.inputs.dataset_inputs) == []
    assert list(run.inputs.model_inputs) == []
    assert list(run.outputs.model_outputs) == []


async def test_a_dataset_is_stored_once_per_experiment_whatever_the_runs(
    experiments, runs, database_url: str
) -> None:
    eid = await new_experiment(experiments)
    first, second = [(await new_run(runs, eid)).info.run_id for _ in range(2)]
    await log_inputs(runs, first, dataset("mnist", "d1", context="training", source="first"))
    await log_inputs(runs, second, dataset("mnist", "d1", context="evaluation", source="second"))
    # The stored dataset keeps the fields of its first logging; each run keeps its own tags.
    for rid, context in ((first, "training"), (second, "evaluation")):
        run = await get(runs, rid)
        assert [i.dataset.source for i in run.inputs.dataset_inputs] == ["first"]
        assert inputs_of(run) == {("mnist", "d1"): {CONTEXT: context}}
    conn = await asyncpg.connect(database_url)
    try:
        n = await conn.fetchval("SELECT count(*) FROM datasets WHERE experiment_id = $1", int(eid))
    finally:
        await conn.close()
    assert n == 1
    resp = await summaries(experiments, [eid])
    assert summary_tuples(resp) == [
        (eid, "mnist", "d1", "evaluation"),
        (eid, "mnist", "d1", "training"),
    ]


async def test_runs_logging_one_new_dataset_at_once_share_one_stored_dataset(
    experiments, runs, database_url: str
) -> None:
    eid = await new_experiment(experiments)
    rids = [(await new_run(runs, eid)).info.run_id for _ in range(8)]
    # Each run logs the same two new datasets, in opposite orders for half of them.
    pair = [dataset("a", "1"), dataset("b", "2")]
    await asyncio.gather(
        *(log_inputs(runs, rid, *(pair if i % 2 else pair[::-1])) for i, rid in enumerate(rids))
    )
    for rid in rids:
        assert set(inputs_of(await get(runs, rid))) == {("a", "1"), ("b", "2")}
    conn = await asyncpg.connect(database_url)
    try:
        n = await conn.fetchval("SELECT count(*) FROM datasets WHERE experiment_id = $1", int(eid))
    finally:
        await conn.close()
    assert n == 2


async def test_the_same_dataset_in_another_experiment_is_another_dataset(experiments, runs) -> None:
    a, b = await new_experiment(experiments), await new_experiment(experiments)
    ra, rb = (await new_run(runs, a)).info.run_id, (await new_run(runs, b)).info.run_id
    await log_inputs(runs, ra, dataset("mnist", "d1", source="in-a"))
    await log_inputs(runs, rb, dataset("mnist", "d1", source="in-b"))
    assert (await get(runs, ra)).inputs.dataset_inputs[0].dataset.source == "in-a"
    assert (await get(runs, rb)).inputs.dataset_inputs[0].dataset.source == "in-b"


async def test_logging_an_input_again_merges_its_tags(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    await log_inputs(runs, rid, dataset("ds", "1", context="training", tags={"a": "1"}))
    await log_inputs(runs, rid, dataset("ds", "1", tags={"a": "2", "b": "3"}))
    await log_inputs(runs, rid, dataset("ds", "1"))
    run = await get(runs, rid)
    assert len(run.inputs.dataset_inputs) == 1
    assert inputs_of(run) == {("ds", "1"): {CONTEXT: "training", "a": "2", "b": "3"}}


async def test_one_dataset_twice_in_a_request_is_one_input_with_merged_tags(
    experiments, runs
) -> None:
    rid = (await new_run(runs, await new_experiment(experiments))).info.run_id
    await log_inputs(
        runs,
        rid,
        dataset("ds", "1", tags={"a": "1", "b": "1"}, source="first"),
        dataset("ds", "1", tags={"b": "2"}, source="second"),
    )
    run = await get(runs, rid)
    assert [i.dataset.source for i in run.inputs.dataset_inputs] == ["first"]
    assert inputs_of(run) == {("ds", "1"): {"a": "1", "b": "2"}}


async def test_input_values_round_trip_exactly(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    ds = dataset(
        "größe ✓ 学习率",
        "🚀" * 36,
        tags={"note": "a\nb  "},
        source_type="ç" * 36,
        source="x" * 65535,
        schema="s" * 1_048_575,
    )
    await log_inputs(runs, rid, ds)
    got = (await get(runs, rid)).inputs.dataset_inputs[0]
    assert got.dataset == ds.dataset
    assert [(t.key, t.value) for t in got.tags] == [("note", "a\nb  ")]


async def test_log_inputs_limits_name_every_offending_field(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    err = await fails(
        runs.LogInputs(
            rpb.LogInputsRequest(
                run_id=rid,
                datasets=[
                    dataset("n" * 500, "d" * 36),  # at the limits
                    dataset("n" * 501, "d" * 37),
                    dataset(source_type="t" * 37, source="s" * 65536),
                    dataset(schema="x" * 1_048_576),
                    dataset(profile="x" * 1_048_576),
                    dataset(tags={"bad..key": "v", "ok": "v" * 501}),
                    dataset(tags={f"k{i}": "v" for i in range(101)}),
                    dpb.DatasetInput(),  # no dataset at all
                    dataset(name="a\x00b"),
                ],
            )
        )
    )
    assert_invalid(
        err,
        {
            "datasets[1].dataset.name",
            "datasets[1].dataset.digest",
            "datasets[2].dataset.source_type",
            "datasets[2].dataset.source",
            "datasets[3].dataset.schema",
            "datasets[4].dataset.profile",
            "datasets[5].tags[0].key",
            "datasets[5].tags[1].value",
            "datasets[6].tags",
            "datasets[7].dataset.name",
            "datasets[7].dataset.digest",
            "datasets[7].dataset.source_type",
            "datasets[7].dataset.source",
            "datasets[8].dataset.name",
        },
    )
    assert list((await get(runs, rid)).inputs.dataset_inputs) == []


async def test_log_inputs_takes_at_most_1000_datasets_and_1000_models(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    await log_inputs(runs, rid, *[dataset(f"d{i}", str(i)) for i in range(1000)])
    assert len((await get(runs, rid)).inputs.dataset_inputs) == 1000
    err = await fails(
        runs.LogInputs(
            rpb.LogInputsRequest(
                run_id=rid, datasets=[dataset(f"d{i}", str(i)) for i in range(1001)]
            )
        )
    )
    assert_invalid(err, {"datasets"})
    err = await fails(
        runs.LogInputs(
            rpb.LogInputsRequest(run_id=rid, models=[dpb.ModelInput(model_id=MISSING_MODEL)] * 1001)
        )
    )
    assert_invalid(err, {"models"})


async def test_log_inputs_to_unknown_deleted_or_malformed_runs_fails(runs) -> None:
    err = await fails(runs.LogInputs(rpb.LogInputsRequest(run_id=MISSING_RUN)))
    assert_error(err, grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST")
    err = await fails(runs.LogInputs(rpb.LogInputsRequest(run_id="nope", datasets=[dataset()])))
    assert_invalid(err, {"run_id"})
    rid = (await new_run(runs)).info.run_id
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=rid))
    err = await fails(runs.LogInputs(rpb.LogInputsRequest(run_id=rid, datasets=[dataset()])))
    assert_error(err, grpc.StatusCode.FAILED_PRECONDITION, "INVALID_STATE")
    err = await fails(runs.LogOutputs(rpb.LogOutputsRequest(run_id=rid)))
    assert_error(err, grpc.StatusCode.FAILED_PRECONDITION, "INVALID_STATE")


# -- model inputs and outputs ------------------------------------------------------------------


async def test_model_inputs_may_come_from_any_experiment(experiments, runs, models) -> None:
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    own = await new_model(models, eid)
    foreign = await new_model(models, await new_experiment(experiments))
    await log_inputs(runs, rid, dataset(), models=[foreign, own, own])
    await log_inputs(runs, rid, models=[own])
    run = await get(runs, rid)
    assert [m.model_id for m in run.inputs.model_inputs] == sorted([own, foreign])
    assert len(run.inputs.dataset_inputs) == 1


async def test_log_inputs_is_one_transaction(experiments, runs, models) -> None:
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    own = await new_model(models, eid)
    err = await fails(
        runs.LogInputs(
            rpb.LogInputsRequest(
                run_id=rid,
                datasets=[dataset()],
                models=[dpb.ModelInput(model_id=own), dpb.ModelInput(model_id=MISSING_MODEL)],
            )
        )
    )
    assert_error(err, grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST")
    assert error_info(err).metadata["model_id"] == MISSING_MODEL
    run = await get(runs, rid)
    assert list(run.inputs.dataset_inputs) == []
    assert list(run.inputs.model_inputs) == []
    assert summary_tuples(await summaries(experiments, [eid])) == []


async def test_malformed_and_deleted_model_inputs_fail(runs, models) -> None:
    rid = (await new_run(runs)).info.run_id
    err = await fails(
        runs.LogInputs(
            rpb.LogInputsRequest(
                run_id=rid,
                models=[dpb.ModelInput(model_id=MISSING_MODEL), dpb.ModelInput(model_id="m-1")],
            )
        )
    )
    assert_invalid(err, {"models[1].model_id"})
    gone = await new_model(models, "0")
    await models.DeleteLoggedModel(mpb.DeleteLoggedModelRequest(model_id=gone))
    err = await fails(runs.LogInputs(rpb.LogInputsRequest(run_id=rid, models=[{"model_id": gone}])))
    assert_error(err, grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST")


async def test_log_outputs_records_models_with_steps(experiments, runs, models) -> None:
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    a, b = await new_model(models, eid), await new_model(models, eid)
    await runs.LogOutputs(
        rpb.LogOutputsRequest(
            run_id=rid,
            models=[
                dpb.ModelOutput(model_id=a, step=10),
                dpb.ModelOutput(model_id=b, step=5),
                dpb.ModelOutput(model_id=a, step=10),  # again: a no-op
            ],
        )
    )
    await runs.LogOutputs(rpb.LogOutputsRequest(run_id=rid, models=[{"model_id": a, "step": 20}]))
    run = await get(runs, rid)
    assert [(m.model_id, m.step) for m in run.outputs.model_outputs] == [
        (b, 5),
        (a, 10),
        (a, 20),
    ]


async def test_log_outputs_requires_models_of_the_runs_experiment(
    experiments, runs, models
) -> None:
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    own = await new_model(models, eid)
    foreign = await new_model(models, await new_experiment(experiments))
    err = await fails(
        runs.LogOutputs(
            rpb.LogOutputsRequest(
                run_id=rid,
                models=[
                    dpb.ModelOutput(model_id=own),
                    dpb.ModelOutput(model_id=foreign),
                    dpb.ModelOutput(model_id="bad"),
                ],
            )
        )
    )
    assert_invalid(err, {"models[2].model_id"})
    err = await fails(
        runs.LogOutputs(
            rpb.LogOutputsRequest(
                run_id=rid,
                models=[dpb.ModelOutput(model_id=own), dpb.ModelOutput(model_id=foreign)],
            )
        )
    )
    assert_invalid(err, {"models[1].model_id"})
    err = await fails(
        runs.LogOutputs(rpb.LogOutputsRequest(run_id=rid, models=[{"model_id": MISSING_MODEL}]))
    )
    assert_error(err, grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST")
    err = await fails(
        runs.LogOutputs(
            rpb.LogOutputsRequest(run_id=rid, models=[dpb.ModelOutput(model_id=own)] * 1001)
        )
    )
    assert_invalid(err, {"models"})
    assert list((await get(runs, rid)).outputs.model_outputs) == []


# -- SearchDatasets ----------------------------------------------------------------------------


async def test_search_datasets_lists_each_context_of_active_runs(experiments, runs) -> None:
    a, b = await new_experiment(experiments), await new_experiment(experiments)
    r1, r2 = (await new_run(runs, a)).info.run_id, (await new_run(runs, a)).info.run_id
    r3 = (await new_run(runs, b)).info.run_id
    await log_inputs(runs, r1, dataset("mnist", "d1", context="training"), dataset("raw", "r"))
    await log_inputs(runs, r2, dataset("mnist", "d1", context="training"))
    await log_inputs(runs, r2, dataset("cifar", "c1", context="evaluation"))
    await log_inputs(runs, r3, dataset("mnist", "d1", context="training"))
    resp = await summaries(experiments, [b, a])
    assert summary_tuples(resp) == [
        (a, "cifar", "c1", "evaluation"),
        (a, "mnist", "d1", "training"),
        (a, "raw", "r", ""),
        (b, "mnist", "d1", "training"),
    ]
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=r2))
    assert summary_tuples(await summaries(experiments, [a])) == [
        (a, "mnist", "d1", "training"),
        (a, "raw", "r", ""),
    ]


async def test_search_datasets_pages_and_binds_the_token(experiments, runs) -> None:
    a, b = await new_experiment(experiments), await new_experiment(experiments)
    rid = (await new_run(runs, a)).info.run_id
    await log_inputs(runs, rid, *[dataset(f"d{i}", "x", context="c") for i in range(5)])
    seen: list[str] = []
    token = ""
    while True:
        resp = await summaries(experiments, [a], max_results=2, page_token=token)
        assert len(resp.dataset_summaries) <= 2
        seen += [s.name for s in resp.dataset_summaries]
        token = resp.next_page_token
        if not token:
            break
        err = await fails(summaries(experiments, [a, b], page_token=token))
        assert_invalid(err, {"page_token"})
    assert seen == [f"d{i}" for i in range(5)]


@pytest.mark.parametrize(
    ("ids", "kwargs", "field"),
    [
        ([], {}, "experiment_ids"),
        (["abc"], {}, "experiment_ids[0]"),
        ([str(i) for i in range(101)], {}, "experiment_ids"),
        (["0"], {"max_results": 50001}, "max_results"),
        (["0"], {"page_token": "%%%"}, "page_token"),
    ],
)
async def test_search_datasets_rejects_bad_requests(  # type: ignore[no-untyped-def]
    experiments, ids, kwargs, field
) -> None:
    err = await fails(summaries(experiments, ids, **kwargs))
    assert_invalid(err, {field})


# -- SearchRuns --------------------------------------------------------------------------------


@dataclass
class Fixture:
    experiment_id: str
    ids: dict[str, str]

    def names(self, resp: rpb.SearchRunsResponse) -> set[str]:
        by_id = {v: k for k, v in self.ids.items()}
        return {by_id[r.info.run_id] for r in resp.runs}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def data(experiments, runs) -> Fixture:  # type: ignore[no-untyped-def]
    """train: mnist/d1 (training), cifar/c1 (evaluation); eval: mnist/d1 (evaluation);
    bare: imagenet/i1 (no tags); none: no datasets."""
    eid = await new_experiment(experiments)
    ids = {name: (await new_run(runs, eid, run_name=name)).info.run_id for name in NAMES}
    await log_inputs(
        runs,
        ids["train"],
        dataset("mnist", "d1", context="training", schema="{}", profile="{}"),
        dataset("cifar", "c1", context="evaluation"),
    )
    await log_inputs(runs, ids["eval"], dataset("mnist", "d1", context="evaluation"))
    await log_inputs(runs, ids["bare"], dataset("imagenet", "i1"))
    return Fixture(eid, ids)


NAMES = ("train", "eval", "bare", "none")
ALL = set(NAMES)


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        ("datasets.name = 'mnist'", {"train", "eval"}),
        ("dataset.name = 'MNIST'", set()),
        ("datasets.name != 'mnist'", {"train", "bare"}),  # some other dataset of the run
        ("datasets.name LIKE 'm%'", {"train", "eval"}),
        ("datasets.name LIKE 'M%'", set()),
        ("datasets.name ILIKE 'M%'", {"train", "eval"}),
        ("datasets.name IN ('cifar', 'imagenet')", {"train", "bare"}),
        ("datasets.name NOT IN ('mnist', 'cifar')", {"bare"}),
        ("datasets.digest = 'd1'", {"train", "eval"}),
        ("datasets.digest IN ('i1', 'zzz')", {"bare"}),
        ("datasets.digest != 'd1'", {"train", "bare"}),
        ("datasets.context = 'training'", {"train"}),
        ("datasets.context != 'training'", {"train", "eval"}),  # bare has no context
        ("datasets.context LIKE '%tion'", {"train", "eval"}),
        ("datasets.context ILIKE 'EVAL%'", {"train", "eval"}),
        ("datasets.context IN ('evaluation')", {"train", "eval"}),
        ("datasets.context NOT IN ('evaluation')", {"train"}),
        ("datasets.name = 'cifar' AND datasets.context = 'training'", {"train"}),
        ("datasets.name = 'mnist' AND datasets.context = 'evaluation'", {"train", "eval"}),
        ("NOT datasets.name = 'mnist'", {"bare", "none"}),  # plain negation
        ("datasets.name = 'imagenet' OR attributes.run_name = 'none'", {"bare", "none"}),
        ("datasets.name = 'x'", set()),
    ],
)
async def test_search_runs_by_datasets(
    runs, data: Fixture, filter_: str, expected: set[str]
) -> None:
    resp = await runs.SearchRuns(
        rpb.SearchRunsRequest(experiment_ids=[data.experiment_id], filter=filter_)
    )
    assert data.names(resp) == expected


async def test_search_runs_returns_inputs_without_schema_and_profile(
    runs, models, experiments, data: Fixture
) -> None:
    resp = await runs.SearchRuns(
        rpb.SearchRunsRequest(
            experiment_ids=[data.experiment_id], filter="attributes.run_name = 'train'"
        )
    )
    (run,) = resp.runs
    full = await get(runs, data.ids["train"])
    assert [i.dataset.profile for i in full.inputs.dataset_inputs] == ["", "{}"]
    assert [(i.dataset.schema, i.dataset.profile) for i in run.inputs.dataset_inputs] == [
        ("", ""),
        ("", ""),
    ]
    assert inputs_of(run) == inputs_of(full)
    assert [i.dataset.source for i in run.inputs.dataset_inputs] == [
        i.dataset.source for i in full.inputs.dataset_inputs
    ]


async def test_search_runs_returns_model_inputs_and_outputs(experiments, runs, models) -> None:
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    mid = await new_model(models, eid)
    await log_inputs(runs, rid, models=[mid])
    await runs.LogOutputs(rpb.LogOutputsRequest(run_id=rid, models=[{"model_id": mid, "step": 2}]))
    (run,) = (await runs.SearchRuns(rpb.SearchRunsRequest(experiment_ids=[eid]))).runs
    assert [m.model_id for m in run.inputs.model_inputs] == [mid]
    assert [(m.model_id, m.step) for m in run.outputs.model_outputs] == [(mid, 2)]


async def test_datasets_cannot_order_runs(runs, data: Fixture) -> None:
    err = await fails(
        runs.SearchRuns(
            rpb.SearchRunsRequest(experiment_ids=[data.experiment_id], order_by=["datasets.name"])
        )
    )
    assert_invalid(err, {"order_by[0]"})
