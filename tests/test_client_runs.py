"""Runs the way trainers use them, against a real server: resuming a run after the job
restarts, nesting, the async run's plain `log_metric`, rules checked at the call, and the
module-level API in MLflow's manner (in a real interpreter, so that its exit is real)."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import textwrap

import pytest

from helpers import run_python
from trackd.client import (
    AsyncClient,
    BufferFullError,
    Client,
    InvalidArgumentError,
    RunStatus,
)
from trackd.server.app import Running


def _target(server: Running) -> str:
    return f"127.0.0.1:{server.port}"


# -- resuming and nesting --

PREEMPTED_JOB = textwrap.dedent(
    """
    import os, sys
    from trackd.client import Client

    client = Client(sys.argv[1])
    run = client.start_run("0", "preempted").start()
    for step in range(50):
        run.log_metric("loss", 1.0 / (step + 1), step)
    run.flush()
    print(run.run_id, flush=True)
    os._exit(0)  # pre-empted: no end_run, no close
    """
)


async def test_a_preempted_job_resumes_its_run_and_logs_exactly_once(server: Running) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PREEMPTED_JOB, _target(server), stdout=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    run_id = out.decode().split()[0]

    def resume() -> tuple[object, list[int], object]:
        with Client(_target(server)) as client:
            before = client.get_run(run_id).info.status
            with client.start_run(run_id=run_id) as run:
                assert run.run_id == run_id
                assert run.info.status == "RUNNING"
                for step in range(50, 100):
                    run.log_metric("loss", 1.0 / (step + 1), step)
            steps = [m.step for m in client.get_metric_history(run_id, "loss")]
            return before, steps, client.get_run(run_id).info

    before, steps, info = await asyncio.to_thread(resume)
    assert before == "RUNNING"  # the killed job never ended it
    assert steps == list(range(100))  # every point once
    assert info.status == "FINISHED" and info.end_time is not None  # type: ignore[attr-defined]


async def test_resuming_a_finished_run_sets_it_running_until_the_block_ends(
    server: Running,
) -> None:
    async with AsyncClient(_target(server)) as client:
        async with client.start_run("0", "twice") as run:
            run.log_metric("x", 1.0, 0)
        assert (await client.get_run(run.run_id)).info.status == RunStatus.FINISHED
        async with client.start_run(run_id=run.run_id) as again:
            assert (await client.get_run(run.run_id)).info.status == "RUNNING"
            again.log_metric("x", 2.0, 1)
        got = await client.get_run(run.run_id)
        assert got.info.status == "FINISHED"
        assert got.data.metric_summaries["x"].count == 2


async def test_child_runs_nest_in_a_running_run_and_share_its_stream(server: Running) -> None:
    async with AsyncClient(_target(server)) as client:
        eid = await client.create_experiment("nesting")
        async with client.start_run(eid, "sweep") as parent:
            for i in range(3):
                async with parent.start_run(f"trial-{i}") as child:
                    assert child.logger is parent.logger
                    child.log_metric("loss", float(i), 0)
                    async with child.start_run("fold") as grandchild:
                        grandchild.log_metric("loss", 10.0 + i, 0)
            parent.log_metric("best", 0.0, 0)
        every = [r async for r in client.iter_runs(eid)]
        assert len(every) == 7
        runs = {r.info.run_name: r for r in every}
        for i in range(3):
            trial = runs[f"trial-{i}"]
            assert trial.data.tags["mlflow.parentRunId"] == parent.run_id
            assert trial.data.metrics == {"loss": float(i)}
            assert trial.info.status == "FINISHED"
        folds = [r for r in every if r.info.run_name == "fold"]
        trial_ids = {runs[f"trial-{i}"].info.run_id for i in range(3)}
        assert {r.data.tags["mlflow.parentRunId"] for r in folds} == trial_ids
        children = [
            r async for r in client.iter_runs(eid, f"tags.mlflow.parentRunId = '{parent.run_id}'")
        ]
        assert len(children) == 3


async def test_a_failing_child_fails_alone(server: Running) -> None:
    def scenario() -> tuple[str, str]:
        with Client(_target(server)) as client:
            with client.start_run("0", "parent") as parent:
                with pytest.raises(RuntimeError), parent.start_run("child") as child:
                    raise RuntimeError("diverged")
            return (
                client.get_run(parent.run_id).info.status,
                client.get_run(child.run_id).info.status,
            )

    assert await asyncio.to_thread(scenario) == ("FINISHED", "FAILED")


# -- the async run's plain log_metric --


async def test_async_log_metric_is_a_plain_method_that_buffers(server: Running) -> None:
    async with AsyncClient(_target(server)) as client:
        async with client.start_run("0", "plain") as run:
            assert not inspect.iscoroutinefunction(run.log_metric)
            assert not inspect.iscoroutinefunction(run.log_metrics)
            for step in range(1000):
                assert run.log_metric("loss", step * 0.5, step) is None
            run.log_metrics({"a": 1.0, "b": 2.0}, step=7)
            await run.flush()
            assert run.logger.pending == 0
            got = await client.get_run(run.run_id)
            assert got.data.metric_summaries["loss"].count == 1000
            assert got.data.metrics == {"loss": 499.5, "a": 1.0, "b": 2.0}


async def test_async_full_buffer_raises_instead_of_blocking_the_loop(server: Running) -> None:
    async with AsyncClient(_target(server)) as client:
        async with client.start_run("0", "tiny", buffer_points=10) as run:
            with pytest.raises(BufferFullError):
                for step in range(1_000_000):
                    run.log_metric("loss", 1.0, step)
            await run.flush()
            run.log_metric("loss", 2.0, 10**7)  # room again once acknowledged


# -- rules checked at the call --


async def test_bad_values_are_reported_at_the_call(server: Running) -> None:
    async with AsyncClient(_target(server)) as client:
        async with client.start_run("0", "rules") as run:
            rid = run.run_id
            with pytest.raises(InvalidArgumentError) as long_key:
                run.log_metric("k" * 300, 1.0)
            assert "250" in str(long_key.value) and "key" in long_key.value.violations
            with pytest.raises(InvalidArgumentError):
                run.log_metric("bad*key", 1.0)
            with pytest.raises(TypeError, match="None"):
                run.log_metric("loss", None)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                run.log_metric("loss", "0.5")  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError):
                run.log_metrics({"ok": 1.0, "bad*key": 2.0})
            with pytest.raises(TypeError, match="None"):
                await client.log_param(rid, "p", None)
            with pytest.raises(TypeError, match="None"):
                await client.set_tag(rid, "t", None)
            with pytest.raises(TypeError):
                await client.log_metric(rid, "loss", "0.5")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="None"):
                await client.log_metric(rid, "loss", None)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgumentError) as batch:
                await client.log_batch(rid, metrics=[("ok", 1.0), ("bad*key", 1.0)])
            assert "metrics[1].key" in batch.value.violations
            with pytest.raises(InvalidArgumentError) as too_long:
                await client.log_param(rid, "long", "x" * 6001)
            assert "6000" in str(too_long.value)
            await client.log_batch(rid, params=[("p", 1), ("q", 2.5)], tags={"t": 3})
            await client.log_param(rid, "edge", "y" * 6000)
            await client.set_tag(rid, "edge", "z" * 8000)
            await client.log_metric(rid, "k" * 250, 1.0)
        got = await client.get_run(rid)
        assert {k: got.data.params[k] for k in ("p", "q")} == {"p": "1", "q": "2.5"}
        assert got.data.tags["t"] == "3"
        assert len(got.data.params["edge"]) == 6000 and len(got.data.tags["edge"]) == 8000
        # Nothing of the rejected calls reached the server.
        assert set(got.data.metrics) == {"k" * 250}
        assert "None" not in got.data.params.values()
        with pytest.raises(ValueError, match="status must be one of"):
            await client.set_terminated(rid, "DONE")
        with pytest.raises(TypeError):
            await client.search_runs([rid], run_view_type=None)  # type: ignore[arg-type]


# -- the module-level API --

FLUENT_SCRIPT = textwrap.dedent(
    """
    import trackd.client as trackd

    print(trackd.get_tracking_uri())
    exp = trackd.set_experiment("fluent")
    with trackd.start_run(run_name="outer") as outer:
        trackd.log_param("lr", 0.01)
        trackd.set_tag("team", "vision")
        for step in range(20):
            trackd.log_metric("loss", 1 / (step + 1), step=step)
        with trackd.start_run(run_name="inner", nested=True) as inner:
            trackd.log_metrics({"acc": 0.9}, step=1)
            assert trackd.active_run().run_id == inner.run_id
        assert trackd.active_run().run_id == outer.run_id
        try:
            trackd.start_run(run_name="not nested")
        except RuntimeError as exc:
            print("refused:", "already active" in str(exc))
    assert trackd.active_run() is None
    print(trackd.last_active_run().info.status)
    # Left open on purpose: the interpreter's exit ends it FINISHED after flushing.
    left = trackd.start_run(run_name="left-open")
    for step in range(500):
        trackd.log_metric("loss", float(step), step=step)
    print(exp.experiment_id, outer.run_id, inner.run_id, left.run_id)
    """
)


async def test_fluent_api_with_env_uri_nesting_and_end_at_exit(server: Running) -> None:
    out = await run_python(FLUENT_SCRIPT, env={"TRACKD_TRACKING_URI": f"grpc://{_target(server)}"})
    lines = out.splitlines()
    assert lines[0] == _target(server)
    assert lines[1] == "refused: True"
    assert lines[2] == "FINISHED"
    eid, outer_id, inner_id, left_id = lines[3].split()
    async with AsyncClient(_target(server)) as client:
        outer = await client.get_run(outer_id)
        inner = await client.get_run(inner_id)
        left = await client.get_run(left_id)
    assert outer.info.experiment_id == eid
    assert outer.data.params == {"lr": "0.01"} and outer.data.tags["team"] == "vision"
    assert outer.data.metric_summaries["loss"].count == 20
    assert inner.data.tags["mlflow.parentRunId"] == outer_id
    assert inner.data.metrics == {"acc": 0.9}
    assert left.info.status == "FINISHED"
    assert left.data.metric_summaries["loss"].count == 500
