"""Liveness through a real channel: a RUNNING run silent for the liveness window reads as
UNRESPONSIVE in GetRun, SearchRuns and their answers, and matches the status filter; a
Heartbeat or a metric point (LogMetric, LogBatch, StreamMetrics) brings it back; finished
runs never read so; UNRESPONSIVE cannot be written; a killed trainer's run goes
UNRESPONSIVE. The server runs with a one-second window; the clock is the real one."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable

import grpc
import pytest
import pytest_asyncio

from conftest import server_config
from helpers import error_info, new_experiment, new_run, violations
from trackd.server import app
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import metric_pb2, run_pb2
from trackd.v1 import run_service_pb2 as rpb

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Long enough that a trainer logging every 0.1 s is never seen late on a loaded machine.
WINDOW_S = 2.0
# How long a test waits for the window to pass: a bound, never reached when all is well.
PATIENCE_S = WINDOW_S + 10.0
RUNNING = run_pb2.RUN_STATUS_RUNNING
FINISHED = run_pb2.RUN_STATUS_FINISHED
KILLED = run_pb2.RUN_STATUS_KILLED
FAILED = run_pb2.RUN_STATUS_FAILED
UNRESPONSIVE = run_pb2.RUN_STATUS_UNRESPONSIVE
UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(database_url: str) -> AsyncIterator[app.Running]:
    """trackd with a one-second liveness window."""
    running = await app.start(server_config(liveness_window=WINDOW_S), database_url)
    yield running
    await running.stop(1.0)


async def status_of(runs, run_id: str) -> int:  # type: ignore[no-untyped-def]
    return int((await runs.GetRun(rpb.GetRunRequest(run_id=run_id))).run.info.status)


async def until_unresponsive(runs, *run_ids: str) -> None:  # type: ignore[no-untyped-def]
    """Waits (in real time, bounded by PATIENCE_S) until every run reads UNRESPONSIVE."""
    deadline = time.monotonic() + PATIENCE_S
    pending = set(run_ids)
    while pending:
        pending = {r for r in pending if await status_of(runs, r) != UNRESPONSIVE}
        if not pending:
            return
        assert time.monotonic() < deadline, f"still not UNRESPONSIVE: {sorted(pending)}"
        await asyncio.sleep(0.1)


async def search(runs, eid: str, filter_: str = "", order_by: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    resp = await runs.SearchRuns(
        rpb.SearchRunsRequest(experiment_ids=[eid], filter=filter_, order_by=list(order_by))
    )
    return list(resp.runs)


async def search_ids(runs, eid: str, filter_: str) -> set[str]:  # type: ignore[no-untyped-def]
    return {r.info.run_id for r in await search(runs, eid, filter_)}


async def fails(
    call: Awaitable[object], code: grpc.StatusCode, reason: str
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    err = exc.value
    assert err.code() == code, f"{err.code()}: {err.details()}"
    assert error_info(err).reason == reason
    return err


async def stream_points(runs, run_id: str, key: str, steps: list[int]) -> None:  # type: ignore[no-untyped-def]
    sid = uuid.uuid4().hex

    async def gen() -> AsyncIterator[rpb.StreamMetricsRequest]:
        yield rpb.StreamMetricsRequest(stream_id=sid, sequence=0)
        yield rpb.StreamMetricsRequest(
            stream_id=sid,
            sequence=1,
            series=[
                rpb.MetricColumns(
                    run_id=run_id,
                    key=key,
                    steps=steps,
                    timestamps=[now_ms()] * len(steps),
                    values=[float(s) for s in steps],
                )
            ],
        )

    acks = [a async for a in runs.StreamMetrics(gen())]
    assert acks[-1].acked_sequence == 1 and not any(a.rejections for a in acks)


# -- going silent -------------------------------------------------------------------------


async def test_a_silent_running_run_reads_unresponsive_in_get_and_search(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    silent = (await new_run(runs, eid)).info
    assert silent.status == RUNNING
    await until_unresponsive(runs, silent.run_id)
    (found,) = await search(runs, eid)
    assert found.info.status == UNRESPONSIVE
    assert found.info.run_id == silent.run_id
    assert found.info.last_seen_time == silent.last_seen_time


async def test_a_heartbeat_brings_the_run_back_and_moves_last_seen(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    run = (await new_run(runs, eid)).info
    await until_unresponsive(runs, run.run_id)
    before = now_ms()
    await runs.Heartbeat(rpb.HeartbeatRequest(run_id=run.run_id))
    info = (await runs.GetRun(rpb.GetRunRequest(run_id=run.run_id))).run.info
    assert info.status == RUNNING
    assert info.last_seen_time >= before > run.last_seen_time
    (found,) = await search(runs, eid)
    assert (found.info.status, found.info.last_seen_time) == (RUNNING, info.last_seen_time)
    # And it goes silent again.
    await until_unresponsive(runs, run.run_id)


async def test_heartbeats_within_the_window_keep_the_run_running(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    run = (await new_run(runs, eid)).info
    end = time.monotonic() + 2.5 * WINDOW_S
    while time.monotonic() < end:
        await runs.Heartbeat(rpb.HeartbeatRequest(run_id=run.run_id))
        assert await status_of(runs, run.run_id) == RUNNING
        await asyncio.sleep(WINDOW_S / 4)


@pytest.mark.parametrize("how", ["LogMetric", "LogBatch", "LogBatch with a param", "StreamMetrics"])
async def test_a_metric_point_brings_the_run_back(experiments, runs, how: str) -> None:
    eid = await new_experiment(experiments)
    run = (await new_run(runs, eid)).info
    await until_unresponsive(runs, run.run_id)
    before = now_ms()
    # An old client timestamp: what counts is when the server received the point.
    point = metric_pb2.Metric(key="loss", value=0.5, timestamp=1_000, step=1)
    if how == "LogMetric":
        await runs.LogMetric(
            rpb.LogMetricRequest(run_id=run.run_id, key="loss", value=0.5, timestamp=1_000)
        )
    elif how == "LogBatch":
        await runs.LogBatch(rpb.LogBatchRequest(run_id=run.run_id, metrics=[point]))
    elif how == "LogBatch with a param":
        await runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=run.run_id, metrics=[point], params=[run_pb2.Param(key="lr", value="1")]
            )
        )
    else:
        await stream_points(runs, run.run_id, "loss", [1, 2, 3])
    info = (await runs.GetRun(rpb.GetRunRequest(run_id=run.run_id))).run.info
    assert info.status == RUNNING, how
    assert info.last_seen_time >= before
    await until_unresponsive(runs, run.run_id)


async def test_params_and_tags_alone_are_not_signs_of_life(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    run = (await new_run(runs, eid)).info
    await until_unresponsive(runs, run.run_id)
    await runs.SetTag(rpb.SetTagRequest(run_id=run.run_id, key="note", value="x"))
    await runs.LogParam(rpb.LogParamRequest(run_id=run.run_id, key="lr", value="1"))
    assert await status_of(runs, run.run_id) == UNRESPONSIVE


async def test_finished_failed_and_killed_runs_never_read_unresponsive(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    ended = {}
    for status in (FINISHED, FAILED, KILLED):
        rid = (await new_run(runs, eid)).info.run_id
        await runs.UpdateRun(rpb.UpdateRunRequest(run_id=rid, status=status))
        ended[rid] = status
    silent = (await new_run(runs, eid)).info.run_id
    await until_unresponsive(runs, silent)
    for rid, status in ended.items():
        assert await status_of(runs, rid) == status
    assert {r.info.run_id: r.info.status for r in await search(runs, eid)} == {
        **ended,
        silent: UNRESPONSIVE,
    }


# -- filtering and ordering ---------------------------------------------------------------


async def test_the_status_filter_sees_the_derived_status(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    silent = (await new_run(runs, eid)).info.run_id
    done = (await new_run(runs, eid)).info.run_id
    await runs.UpdateRun(rpb.UpdateRunRequest(run_id=done, status=FINISHED))
    await until_unresponsive(runs, silent)
    alive = (await new_run(runs, eid)).info.run_id
    expected = {
        "attributes.status = 'UNRESPONSIVE'": {silent},
        "status = 'RUNNING'": {alive},
        "attributes.status != 'UNRESPONSIVE'": {alive, done},
        "attributes.status != 'RUNNING'": {silent, done},
        "status IN ('UNRESPONSIVE', 'FINISHED')": {silent, done},
        "status NOT IN ('UNRESPONSIVE')": {alive, done},
        "status LIKE 'UNRESP%'": {silent},
        "status ILIKE 'unresponsive'": {silent},
    }
    for filter_, ids in expected.items():
        assert await search_ids(runs, eid, filter_) == ids, filter_
    # A heartbeat moves it from one filter to the other.
    await runs.Heartbeat(rpb.HeartbeatRequest(run_id=silent))
    assert await search_ids(runs, eid, "status = 'UNRESPONSIVE'") == set()
    assert await search_ids(runs, eid, "status = 'RUNNING'") == {alive, silent}


async def test_order_by_status_uses_the_derived_status(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    silent = (await new_run(runs, eid)).info.run_id
    done = (await new_run(runs, eid)).info.run_id
    await runs.UpdateRun(rpb.UpdateRunRequest(run_id=done, status=FINISHED))
    await until_unresponsive(runs, silent)
    alive = (await new_run(runs, eid)).info.run_id
    # FINISHED < RUNNING < UNRESPONSIVE as strings.
    ordered = [r.info.run_id for r in await search(runs, eid, "", ("attributes.status",))]
    assert ordered == [done, alive, silent]
    ordered = [r.info.run_id for r in await search(runs, eid, "", ("status DESC",))]
    assert ordered == [silent, alive, done]
    # Paged one run at a time, the order holds.
    paged, token = [], ""
    while True:
        resp = await runs.SearchRuns(
            rpb.SearchRunsRequest(
                experiment_ids=[eid], order_by=["status"], max_results=1, page_token=token
            )
        )
        paged.extend(r.info.run_id for r in resp.runs)
        token = resp.next_page_token
        if not token:
            break
    assert paged == [done, alive, silent]


async def test_last_seen_time_can_be_filtered_and_ordered(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    first = (await new_run(runs, eid)).info
    await asyncio.sleep(0.05)
    second = (await new_run(runs, eid)).info
    assert second.last_seen_time > first.last_seen_time
    by_seen = [r.info.run_id for r in await search(runs, eid, "", ("last_seen_time DESC",))]
    assert by_seen == [second.run_id, first.run_id]
    assert await search_ids(runs, eid, f"attributes.last_seen_time > {first.last_seen_time}") == {
        second.run_id
    }


# -- answers and writes -------------------------------------------------------------------


async def test_create_and_update_answers_carry_liveness(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    before = now_ms()
    # A start time long ago: last_seen_time is when the server heard from the run.
    created = (await new_run(runs, eid, start_time=1_000)).info
    assert created.status == RUNNING
    assert created.last_seen_time >= before
    await until_unresponsive(runs, created.run_id)
    renamed = await runs.UpdateRun(rpb.UpdateRunRequest(run_id=created.run_id, run_name="x"))
    assert renamed.run_info.status == UNRESPONSIVE
    assert renamed.run_info.last_seen_time == created.last_seen_time
    # Setting it RUNNING again (resuming it) is a sign of life.
    resumed = await runs.UpdateRun(rpb.UpdateRunRequest(run_id=created.run_id, status=RUNNING))
    assert resumed.run_info.status == RUNNING
    assert resumed.run_info.last_seen_time > created.last_seen_time


async def test_writing_unresponsive_is_invalid_argument(experiments, runs) -> None:
    rid = (await new_run(runs, await new_experiment(experiments))).info.run_id
    err = await fails(
        runs.UpdateRun(rpb.UpdateRunRequest(run_id=rid, status=UNRESPONSIVE)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PARAMETER_VALUE",
    )
    assert "status" in violations(err)
    assert await status_of(runs, rid) == RUNNING


async def test_heartbeat_errors(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    deleted = (await new_run(runs, eid)).info.run_id
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=deleted))
    other = await new_experiment(experiments)
    orphan = (await new_run(runs, other)).info.run_id
    await experiments.DeleteExperiment(epb.DeleteExperimentRequest(experiment_id=other))
    cases = [
        ("nope", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER_VALUE"),
        (UNKNOWN_RUN, grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST"),
        (deleted, grpc.StatusCode.FAILED_PRECONDITION, "INVALID_STATE"),
        (orphan, grpc.StatusCode.FAILED_PRECONDITION, "INVALID_STATE"),
    ]
    for run_id, code, reason in cases:
        err = await fails(runs.Heartbeat(rpb.HeartbeatRequest(run_id=run_id)), code, reason)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert "run_id" in violations(err)


async def test_a_heartbeat_to_a_finished_run_keeps_it_finished(experiments, runs) -> None:
    rid = (await new_run(runs, await new_experiment(experiments))).info.run_id
    await runs.UpdateRun(rpb.UpdateRunRequest(run_id=rid, status=FINISHED))
    await runs.Heartbeat(rpb.HeartbeatRequest(run_id=rid))
    assert await status_of(runs, rid) == FINISHED


# -- a killed trainer -----------------------------------------------------------------------

TRAINER = textwrap.dedent(
    """
    import sys, time, grpc
    from trackd.v1 import run_service_pb2 as rpb, run_service_pb2_grpc

    stub = run_service_pb2_grpc.RunServiceStub(grpc.insecure_channel(sys.argv[1]))
    run = stub.CreateRun(rpb.CreateRunRequest(experiment_id=sys.argv[2])).run
    print(run.info.run_id, flush=True)
    step = 0
    while True:
        stub.LogMetric(rpb.LogMetricRequest(run_id=run.info.run_id, key="loss",
                                            value=1.0 / (step + 1), step=step))
        step += 1
        time.sleep(0.1)
    """
)


async def test_a_killed_trainers_run_reads_unresponsive(server, experiments, runs) -> None:
    eid = await new_experiment(experiments)
    trainer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        TRAINER,
        f"127.0.0.1:{server.port}",
        eid,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert trainer.stdout is not None
        line = await asyncio.wait_for(trainer.stdout.readline(), 30)
        rid = line.decode().strip()
        assert len(rid) == 32, line
        # Logging, it stays RUNNING past the window.
        await asyncio.sleep(2 * WINDOW_S)
        assert await status_of(runs, rid) == RUNNING
        assert await search_ids(runs, eid, "status = 'RUNNING'") == {rid}
        trainer.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(trainer.wait(), 10) == -signal.SIGKILL
        # A LogMetric the trainer sent just before it died may still be committing: the
        # run is last seen when that commit lands, so the instant of death is taken after.
        await asyncio.sleep(WINDOW_S / 2)
        killed_at = now_ms()
    finally:
        if trainer.returncode is None:
            trainer.kill()
            await trainer.wait()
    await until_unresponsive(runs, rid)
    assert await search_ids(runs, eid, "status = 'UNRESPONSIVE'") == {rid}
    run = (await runs.GetRun(rpb.GetRunRequest(run_id=rid))).run
    assert run.info.last_seen_time <= killed_at
    assert run.data.metrics[0].step > 0  # it was logging when it was killed
