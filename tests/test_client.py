"""The Python client against a real server: the run context manager, paging, errors."""

from __future__ import annotations

import asyncio

import pytest

from trackd.client import (
    AsyncClient,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RunStatus,
)
from trackd.server.app import Running


def _target(server: Running) -> str:
    return f"127.0.0.1:{server.port}"


async def test_sync_run_context_logs_a_thousand_metrics_and_finishes(server: Running) -> None:
    def scenario() -> tuple[object, list[float], object]:
        with Client(_target(server)) as client:
            eid = client.create_experiment("client-sync-1000")
            with client.start_run(eid, "trainer") as run:
                run.log_params({"lr": 0.001, "layers": 4})
                points = [("loss", 1.0 / (i + 1), i) for i in range(1000)]
                for start in range(0, 1000, 250):
                    run.log_batch(points[start : start + 250])
                run.log_metric("acc", 0.5, step=3)
            history = client.get_metric_history(run.run_id, "loss", page_size=300)
            return client.get_run(run.run_id), [m.value for m in history], history

    run, values, history = await asyncio.to_thread(scenario)
    assert values == [1.0 / (i + 1) for i in range(1000)]
    assert [m.step for m in history] == list(range(1000))  # type: ignore[attr-defined]
    assert run.info.status == RunStatus.FINISHED  # type: ignore[attr-defined]
    assert run.info.end_time >= run.info.start_time > 0  # type: ignore[attr-defined]
    params = run.data.params  # type: ignore[attr-defined]
    assert params == {"lr": "0.001", "layers": "4"}


async def test_sync_run_context_marks_failed_and_reraises(server: Running) -> None:
    def scenario() -> str:
        with Client(_target(server)) as client:
            run_id = ""
            with pytest.raises(ZeroDivisionError), client.start_run("0") as run:
                run_id = run.run_id
                run.log_metric("loss", 1.0)
                _ = 1 / 0
            return client.get_run(run_id).info.status

    assert await asyncio.to_thread(scenario) == RunStatus.FAILED


async def test_async_client_run_context_and_typed_errors(server: Running) -> None:
    async with AsyncClient(_target(server)) as client:
        async with client.start_run("0", "async-run") as run:
            run.log_metrics({"a": 1.0, "b": 2.0}, step=1)
            await run.log_param("seed", 7)
            with pytest.raises(FailedPreconditionError) as exc:
                await run.log_param("seed", 8)
            assert exc.value.reason == "INVALID_STATE"
        got = await client.get_run(run.run_id)
        assert got.info.status == RunStatus.FINISHED
        assert got.data.metrics == {"a": 1.0, "b": 2.0}

        with pytest.raises(NotFoundError) as missing:
            await client.get_run("f" * 32)
        assert missing.value.reason == "RESOURCE_DOES_NOT_EXIST"

        with pytest.raises(InvalidArgumentError) as bad:
            await client.log_batch(run.run_id, metrics=[("bad*key", 1.0)])
        assert "metrics[0].key" in bad.value.violations


async def test_async_client_searches_every_page(server: Running) -> None:
    async with AsyncClient(_target(server)) as client:
        made = [await client.create_experiment(f"client-page-{i}") for i in range(7)]
        seen = [e.experiment_id async for e in client.iter_experiments(page_size=2)]
        assert sorted(set(made) & set(seen)) == sorted(made)
        assert len(seen) == len(set(seen))
