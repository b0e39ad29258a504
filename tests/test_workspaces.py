"""Cross-workspace probes: search, history, streams, datasets and logged models never
return or accept another workspace's rows, and what is hidden answers exactly as what is
missing.

The server runs with `--auth on`; alice and bob are API tokens made by `trackd token
create` with an EDIT role in their own workspace.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from conftest import server_config
from test_permissions import make_token, trackd
from trackd.server import app
from trackd.v1 import (
    dataset_pb2,
    experiment_service_pb2,
    experiment_service_pb2_grpc,
    logged_model_service_pb2,
    logged_model_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALICE, BOB = "alice", "bob"


class Stubs:
    """The three services' stubs, each call made as one principal."""

    def __init__(self, ch: grpc.aio.Channel, md: tuple[tuple[str, str], ...]) -> None:
        self.md = md
        self.exp = experiment_service_pb2_grpc.ExperimentServiceStub(ch)
        self.runs = run_service_pb2_grpc.RunServiceStub(ch)
        self.models = logged_model_service_pb2_grpc.LoggedModelServiceStub(ch)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def two(database_url: str) -> AsyncIterator[tuple[Stubs, Stubs, dict[str, Any]]]:
    """alice edits workspace ws-a, bob ws-b; each has an experiment with a run that logged
    a metric and a dataset, and a logged model."""
    tokens = {}
    for ws, who in (("ws-a", ALICE), ("ws-b", BOB)):
        trackd(database_url, "workspace", "create", ws)
        tokens[who] = make_token(database_url, who, "--role", f"{ws}=EDIT")
    running = await app.start(server_config(auth="on"), database_url)
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    a, b = Stubs(ch, tokens[ALICE]), Stubs(ch, tokens[BOB])
    made: dict[str, Any] = {}
    for who, s, ws in ((ALICE, a, "ws-a"), (BOB, b, "ws-b")):
        eid = (
            await s.exp.CreateExperiment(
                experiment_service_pb2.CreateExperimentRequest(name="shared-name", workspace=ws),
                metadata=s.md,
            )
        ).experiment_id
        run = (
            await s.runs.CreateRun(
                run_service_pb2.CreateRunRequest(experiment_id=eid), metadata=s.md
            )
        ).run.info.run_id
        await s.runs.LogMetric(
            run_service_pb2.LogMetricRequest(run_id=run, key="loss", value=1.0, timestamp=1),
            metadata=s.md,
        )
        await s.runs.LogInputs(
            run_service_pb2.LogInputsRequest(
                run_id=run,
                datasets=[
                    dataset_pb2.DatasetInput(
                        dataset=dataset_pb2.Dataset(
                            name=f"data-{who}", digest="d", source_type="local", source="/x"
                        )
                    )
                ],
            ),
            metadata=s.md,
        )
        mid = (
            await s.models.CreateLoggedModel(
                logged_model_service_pb2.CreateLoggedModelRequest(
                    experiment_id=eid, source_run_id=run
                ),
                metadata=s.md,
            )
        ).model.info.model_id
        made[who] = {"experiment_id": eid, "run_id": run, "model_id": mid}
    try:
        yield a, b, made
    finally:
        await ch.close()
        await running.stop(1.0)


async def _error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    return exc.value


async def test_experiments_carry_workspace_and_owner_and_names_repeat_across(
    two: tuple[Stubs, Stubs, dict[str, Any]],
) -> None:
    a, b, made = two
    got = await a.exp.GetExperimentByName(
        experiment_service_pb2.GetExperimentByNameRequest(experiment_name="shared-name"),
        metadata=a.md,
    )
    assert got.experiment.experiment_id == made[ALICE]["experiment_id"]
    assert (got.experiment.workspace, got.experiment.owner) == ("ws-a", ALICE)
    got = await b.exp.GetExperimentByName(
        experiment_service_pb2.GetExperimentByNameRequest(experiment_name="shared-name"),
        metadata=b.md,
    )
    assert got.experiment.experiment_id == made[BOB]["experiment_id"]
    found = await b.exp.SearchExperiments(
        experiment_service_pb2.SearchExperimentsRequest(view_type=3), metadata=b.md
    )
    assert [e.experiment_id for e in found.experiments] == [made[BOB]["experiment_id"]]


async def test_creating_in_a_workspace_without_a_role_is_not_found(
    two: tuple[Stubs, Stubs, dict[str, Any]],
) -> None:
    _, b, _ = two
    for ws in ("ws-a", "no-such-workspace"):
        err = await _error(
            b.exp.CreateExperiment(
                experiment_service_pb2.CreateExperimentRequest(name="x", workspace=ws),
                metadata=b.md,
            )
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert err.details() == f"no workspace is named {ws!r}"


async def test_hidden_run_answers_exactly_as_a_missing_one(
    two: tuple[Stubs, Stubs, dict[str, Any]],
) -> None:
    _, b, made = two
    hidden, missing = made[ALICE]["run_id"], uuid.uuid4().hex
    for rid in (hidden, missing):
        calls = [
            b.runs.GetRun(run_service_pb2.GetRunRequest(run_id=rid), metadata=b.md),
            b.runs.GetMetricHistory(
                run_service_pb2.GetMetricHistoryRequest(run_id=rid, metric_key="loss"),
                metadata=b.md,
            ),
            b.runs.LogParam(
                run_service_pb2.LogParamRequest(run_id=rid, key="k", value="v"), metadata=b.md
            ),
        ]
        shapes = []
        for call in calls:
            err = await _error(call)
            shapes.append((err.code(), (err.details() or "").replace(rid, "ID")))
        stream = b.runs.StreamMetricHistory(
            run_service_pb2.StreamMetricHistoryRequest(run_id=rid, metric_key="loss"),
            metadata=b.md,
        )
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            async for _ in stream:
                pass
        shapes.append((exc.value.code(), (exc.value.details() or "").replace(rid, "ID")))
        if rid == hidden:
            hidden_shapes = shapes
    assert shapes == hidden_shapes
    assert all(code == grpc.StatusCode.NOT_FOUND for code, _ in shapes)


async def test_searches_never_return_another_workspaces_rows(
    two: tuple[Stubs, Stubs, dict[str, Any]],
) -> None:
    _, b, made = two
    both = [made[ALICE]["experiment_id"], made[BOB]["experiment_id"]]
    runs = await b.runs.SearchRuns(
        run_service_pb2.SearchRunsRequest(experiment_ids=both, max_results=1), metadata=b.md
    )
    # The page is full with bob's run, and no token points at alice's.
    assert [r.info.run_id for r in runs.runs] == [made[BOB]["run_id"]]
    assert runs.next_page_token == ""
    only_a = await b.runs.SearchRuns(
        run_service_pb2.SearchRunsRequest(experiment_ids=both[:1]), metadata=b.md
    )
    assert list(only_a.runs) == []
    datasets = await b.exp.SearchDatasets(
        experiment_service_pb2.SearchDatasetsRequest(experiment_ids=both), metadata=b.md
    )
    assert [d.name for d in datasets.dataset_summaries] == [f"data-{BOB}"]
    models = await b.models.SearchLoggedModels(
        logged_model_service_pb2.SearchLoggedModelsRequest(experiment_ids=both), metadata=b.md
    )
    assert [m.info.model_id for m in models.models] == [made[BOB]["model_id"]]


async def test_another_workspaces_models_and_runs_are_not_accepted(
    two: tuple[Stubs, Stubs, dict[str, Any]],
) -> None:
    _, b, made = two
    mine, theirs = made[BOB], made[ALICE]
    err = await _error(
        b.models.GetLoggedModel(
            logged_model_service_pb2.GetLoggedModelRequest(model_id=theirs["model_id"]),
            metadata=b.md,
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await _error(
        b.runs.LogOutputs(
            run_service_pb2.LogOutputsRequest(
                run_id=mine["run_id"],
                models=[dataset_pb2.ModelOutput(model_id=theirs["model_id"])],
            ),
            metadata=b.md,
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == f"logged model {theirs['model_id']} does not exist"
    err = await _error(
        b.runs.LogInputs(
            run_service_pb2.LogInputsRequest(
                run_id=mine["run_id"],
                models=[dataset_pb2.ModelInput(model_id=theirs["model_id"])],
            ),
            metadata=b.md,
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await _error(
        b.runs.CreateRun(
            run_service_pb2.CreateRunRequest(
                experiment_id=mine["experiment_id"], parent_run_id=theirs["run_id"]
            ),
            metadata=b.md,
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await _error(
        b.models.CreateLoggedModel(
            logged_model_service_pb2.CreateLoggedModelRequest(
                experiment_id=mine["experiment_id"], source_run_id=theirs["run_id"]
            ),
            metadata=b.md,
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_stream_chunks_for_another_workspaces_run_are_rejected_and_not_written(
    two: tuple[Stubs, Stubs, dict[str, Any]],
) -> None:
    a, b, made = two

    def chunk(seq: int, run_id: str) -> run_service_pb2.StreamMetricsRequest:
        col = run_service_pb2.MetricColumns(
            run_id=run_id, key="loss", steps=[seq], values=[2.0], timestamps=[2]
        )
        return run_service_pb2.StreamMetricsRequest(stream_id="bob-s", sequence=seq, series=[col])

    requests = [chunk(1, made[BOB]["run_id"]), chunk(2, made[ALICE]["run_id"])]
    acks = [x async for x in b.runs.StreamMetrics(iter(requests), metadata=b.md)]
    rejected = {r.sequence: r.code for ack in acks for r in ack.rejections}
    assert rejected == {2: "NOT_FOUND"}
    history = await a.runs.GetMetricHistory(
        run_service_pb2.GetMetricHistoryRequest(run_id=made[ALICE]["run_id"], metric_key="loss"),
        metadata=a.md,
    )
    assert [p.value for p in history.metrics] == [1.0]
    mine = await b.runs.GetMetricHistory(
        run_service_pb2.GetMetricHistoryRequest(run_id=made[BOB]["run_id"], metric_key="loss"),
        metadata=b.md,
    )
    assert sorted(p.value for p in mine.metrics) == [1.0, 2.0]


async def test_stream_ids_of_one_principal_are_not_anothers(
    two: tuple[Stubs, Stubs, dict[str, Any]],
) -> None:
    a, b, made = two

    def chunk(seq: int, run_id: str) -> run_service_pb2.StreamMetricsRequest:
        cols = (
            [run_service_pb2.MetricColumns(run_id=run_id, key="s", steps=[seq], values=[1.0])]
            if seq
            else []
        )
        return run_service_pb2.StreamMetricsRequest(stream_id="same-id", sequence=seq, series=cols)

    alice = [chunk(0, ""), chunk(1, made[ALICE]["run_id"]), chunk(2, made[ALICE]["run_id"])]
    acks = [x async for x in a.runs.StreamMetrics(iter(alice), metadata=a.md)]
    assert acks[0].acked_sequence == 0 and acks[-1].acked_sequence == 2
    # bob's stream of the same id starts from nothing, and writes his chunk 1.
    bob = [chunk(0, ""), chunk(1, made[BOB]["run_id"])]
    acks = [x async for x in b.runs.StreamMetrics(iter(bob), metadata=b.md)]
    assert [x.acked_sequence for x in acks] == [0, 1]
    assert not any(x.rejections for x in acks)
    history = await b.runs.GetMetricHistory(
        run_service_pb2.GetMetricHistoryRequest(run_id=made[BOB]["run_id"], metric_key="s"),
        metadata=b.md,
    )
    assert [p.step for p in history.metrics] == [1]
    # alice resumes her own stream where she left it.
    acks = [x async for x in a.runs.StreamMetrics(iter([chunk(0, "")]), metadata=a.md)]
    assert acks[0].acked_sequence == 2
