"""The Python client's datasets, inputs, outputs and logged models, against a real server."""

from __future__ import annotations

import asyncio

import pytest

from trackd.client import (
    AsyncClient,
    Client,
    Dataset,
    FailedPreconditionError,
    LoggedModelStatus,
    NotFoundError,
)
from trackd.server.app import Running
from trackd.v1 import metric_pb2


def _target(server: Running) -> str:
    return f"127.0.0.1:{server.port}"


async def test_async_client_inputs_outputs_and_models(server: Running) -> None:
    async with AsyncClient(_target(server)) as client:
        eid = await client.create_experiment("client-models")
        train = Dataset(name="mnist", digest="d1", source_type="s3", source="s3://b/mnist")
        async with client.start_run(eid, "trainer") as run:
            await run.log_input(train, context="training")
            model = await client.create_logged_model(
                eid,
                name="cnn",
                model_type="torch",
                source_run_id=run.run_id,
                params={"layers": 4},
                tags={"team": "vision"},
            )
            assert model.model_id.startswith("m-")
            assert model.status == LoggedModelStatus.PENDING
            await client.log_metric(
                run.run_id,
                "acc",
                0.9,
                step=1,
                model_id=model.model_id,
                dataset_name="mnist",
                dataset_digest="d1",
            )
            await client.log_batch(
                run.run_id,
                [
                    metric_pb2.Metric(
                        key="acc",
                        value=0.95,
                        step=2,
                        timestamp=5,
                        model_id=model.model_id,
                        dataset_name="mnist",
                        dataset_digest="d1",
                    )
                ],
            )
            await run.log_output(model.model_id, step=2)
        ready = await client.finalize_logged_model(model.model_id)
        assert ready.status == "READY"
        with pytest.raises(FailedPreconditionError):
            await client.finalize_logged_model(model.model_id, "UPLOAD_FAILED")
        got = await client.get_run(run.run_id)
        uses = got.inputs.dataset_inputs
        assert [(u.dataset.name, u.tags) for u in uses] == [
            ("mnist", {"mlflow.data.context": "training"})
        ]
        assert [o.model_id for o in got.outputs.model_outputs] == [model.model_id]
        fetched = await client.get_logged_model(model.model_id)
        assert [(m.key, m.value, m.dataset_name) for m in fetched.metrics] == [
            ("acc", 0.95, "mnist")
        ]
        await client.set_logged_model_tags(model.model_id, {"stage": "prod"})
        await client.log_model_params(model.model_id, {"lr": 0.1})
        found = [
            m
            async for m in client.iter_logged_models(
                [eid],
                filter_string="metrics.acc > 0.9",
                datasets=[("mnist", "")],
                order_by=["metrics.acc DESC"],
                page_size=1,
            )
        ]
        assert [m.model_id for m in found] == [model.model_id]
        await client.delete_logged_model(model.model_id)
        with pytest.raises(NotFoundError):
            await client.get_logged_model(model.model_id)
        assert await client.search_logged_models([eid]) == []


async def test_sync_client_models(server: Running) -> None:
    def scenario() -> tuple[str, list[str]]:
        with Client(_target(server)) as client:
            eid = client.create_experiment("client-models-sync")
            with client.start_run(eid) as run:
                run.log_input(
                    Dataset(name="eval", digest="e", source_type="local", source="/data/eval"),
                    "evaluation",
                )
                model = client.create_logged_model(eid, name="m", source_run_id=run.run_id)
                run.log_output(model.model_id)
            client.finalize_logged_model(model.model_id, status_message="uploaded")
            status = client.get_logged_model(model.model_id).status_message
            names = [m.name for m in client.search_logged_models([eid])]
            return status, names

    assert await asyncio.to_thread(scenario) == ("uploaded", ["m"])
