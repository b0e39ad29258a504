"""Faults on the database side and between servers: connections killed under load,
deadlines that expire while the database works, stalled client streams, and two servers
racing on one database."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import grpc
import pytest

from conftest import server_config
from helpers import STATS, error_info, new_experiment, new_run
from trackd.server import app
from trackd.server.store import pool
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import experiment_service_pb2_grpc, metric_pb2, run_pb2, run_service_pb2_grpc
from trackd.v1 import run_service_pb2 as rpb

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}


async def _terminate_trackd_backends(admin: asyncpg.Connection, database: str) -> int:
    return len(
        await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND application_name = 'trackd' AND pid <> pg_backend_pid()",
            database,
        )
    )


async def test_killed_connections_fail_calls_unavailable_and_the_pool_recovers(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="trackd.server")
    running = await app.start(server_config(pool_max_size=6), database_url)
    admin = await asyncpg.connect(database_url)
    database = await admin.fetchval("SELECT current_database()")
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    runs = run_service_pb2_grpc.RunServiceStub(ch)
    try:
        run_id = (await new_run(runs)).info.run_id
        seen: dict[grpc.StatusCode, int] = {}
        stop = time.monotonic() + 3.0

        async def writer(w: int) -> int:
            """Logs batches, retrying UNAVAILABLE as a client would; returns batches sent."""
            b = 0
            while time.monotonic() < stop and b < 400:
                # Odd writers send params too: those batches take the transactional path,
                # even ones the group-commit writers (which retry a lost connection).
                req = rpb.LogBatchRequest(
                    run_id=run_id,
                    metrics=[
                        metric_pb2.Metric(
                            key=f"w{w}", value=float(b * 10 + i), step=b * 10 + i, timestamp=1
                        )
                        for i in range(10)
                    ],
                    params=[run_pb2.Param(key=f"w{w}b{b}", value=str(b))] if w % 2 else [],
                )
                for _attempt in range(50):
                    try:
                        await runs.LogBatch(req, timeout=10)
                        break
                    except grpc.aio.AioRpcError as err:
                        seen[err.code()] = seen.get(err.code(), 0) + 1
                        assert err.code() in RETRYABLE, (err.code(), err.details())
                        await asyncio.sleep(0.02)
                else:
                    raise AssertionError("retries never succeeded")
                b += 1
            return b

        async def killer() -> int:
            killed = 0
            for _ in range(6):
                await asyncio.sleep(0.4)
                killed += await _terminate_trackd_backends(admin, database)
            return killed

        results = await asyncio.gather(*(writer(w) for w in range(4)), killer())
        sent, killed = results[:4], results[4]
        assert killed > 0
        STATS["faults injected"] += killed
        # Each kill was met either by a call (UNAVAILABLE, retried by the client) or by
        # the server itself (a writer rerunning its idempotent group, or a dead pooled
        # connection replaced before any work ran on it).
        absorbed = [r for r in caplog.records if "retrying" in r.getMessage()]
        assert seen.get(grpc.StatusCode.UNAVAILABLE, 0) + len(absorbed) > 0
        got = (await runs.GetRun(rpb.GetRunRequest(run_id=run_id))).run
        counts = {s.key: s.count for s in got.data.metric_summaries}
        # Every acknowledged batch is there exactly once; retried ones were not doubled.
        assert counts == {f"w{w}": sent[w] * 10 for w in range(4)}
        assert len(got.data.params) == sent[1] + sent[3]
        # The pool came back to full health by itself.
        await runs.GetRun(rpb.GetRunRequest(run_id=run_id))
    finally:
        await ch.close()
        await admin.close()
        await running.stop(1.0)


async def test_reads_under_killed_connections_rerun_on_a_fresh_connection(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """GetRun and GetMetricHistory whose connection is killed are rerun by the server: while
    kills come now and then, no read fails; while they come faster than a read can finish,
    a read answers UNAVAILABLE only after every one of its bounded attempts lost its
    connection, and never INTERNAL."""
    caplog.set_level("INFO", logger="trackd.server")
    running = await app.start(server_config(pool_max_size=6), database_url)
    admin = await asyncpg.connect(database_url)
    database = await admin.fetchval("SELECT current_database()")
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    runs = run_service_pb2_grpc.RunServiceStub(ch)
    try:
        run_id = (await new_run(runs)).info.run_id
        await runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=run_id,
                metrics=[
                    metric_pb2.Metric(key="loss", value=float(i), step=i, timestamp=1)
                    for i in range(500)
                ],
                params=[run_pb2.Param(key=f"p{i}", value="v") for i in range(50)],
            )
        )

        async def phase(interval: float, kills: int) -> tuple[dict[grpc.StatusCode, int], int]:
            """Readers run while every trackd connection is killed `kills` times,
            `interval` seconds apart; returns the readers' failures and the kills."""
            failures: dict[grpc.StatusCode, int] = {}
            done = asyncio.Event()

            async def reader(i: int) -> None:
                while not done.is_set():
                    try:
                        if i % 2:
                            got = await runs.GetRun(rpb.GetRunRequest(run_id=run_id), timeout=20)
                            assert len(got.run.data.params) == 50
                        else:
                            hist = await runs.GetMetricHistory(
                                rpb.GetMetricHistoryRequest(run_id=run_id, metric_key="loss"),
                                timeout=20,
                            )
                            assert len(hist.metrics) == 500
                    except grpc.aio.AioRpcError as err:
                        failures[err.code()] = failures.get(err.code(), 0) + 1
                        assert err.code() == grpc.StatusCode.UNAVAILABLE, (
                            err.code(),
                            err.details(),
                        )
                        assert error_info(err).reason == "TEMPORARILY_UNAVAILABLE"

            async def killer() -> int:
                killed = 0
                for _ in range(kills):
                    await asyncio.sleep(interval)
                    killed += await _terminate_trackd_backends(admin, database)
                done.set()
                return killed

            *_, killed = await asyncio.gather(*(reader(i) for i in range(6)), killer())
            return failures, killed

        def reruns() -> int:
            return sum("retrying" in r.getMessage() for r in caplog.records)

        # Kills now and then: every read whose connection died was rerun and succeeded.
        failures, killed = await phase(0.3, 8)
        assert killed > 0
        STATS["faults injected"] += killed
        assert reruns() > 0, "no kill met a read"
        assert failures == {}, failures
        # Kills faster than reads: a read may run out of attempts, and then answers
        # UNAVAILABLE, having been rerun on another connection every time but the last.
        caplog.clear()
        failures, killed = await phase(0.01, 150)
        STATS["faults injected"] += killed
        attempts = pool.STALE_RETRIES
        assert reruns() >= (attempts - 1) * failures.get(grpc.StatusCode.UNAVAILABLE, 0)
        # And once the kills stop, reads work at once.
        got = (await runs.GetRun(rpb.GetRunRequest(run_id=run_id))).run
        assert len(got.data.params) == 50
    finally:
        await ch.close()
        await admin.close()
        await running.stop(1.0)


async def test_expired_deadline_cancels_database_work_and_leaks_no_connection(
    database_url: str,
) -> None:
    running = await app.start(server_config(pool_max_size=4, pool_min_size=1), database_url)
    blocker = await asyncpg.connect(database_url)
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    runs = run_service_pb2_grpc.RunServiceStub(ch)
    try:
        run_id = (await new_run(runs)).info.run_id
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE", run_id)
        # Each call waits on the row lock in PostgreSQL until its deadline passes.
        for i in range(8):
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await runs.LogParam(
                    rpb.LogParamRequest(run_id=run_id, key=f"p{i}", value="v"), timeout=0.3
                )
            assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            STATS["faults injected"] += 1
        # asyncpg cancels each statement with a cancel request of its own: allow it a
        # moment, then no trackd backend of this database may still wait on the lock.
        for _ in range(60):
            waiting = await blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'trackd'"
                " AND datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting == 0:
                break
            await asyncio.sleep(0.05)
        assert waiting == 0, "a cancelled call is still waiting in PostgreSQL"
        await tx.rollback()
        pool = running.db.pool
        # A cancelled call's connection goes back once asyncpg has finished cancelling its
        # statement; a leaked one never does.
        for _ in range(100):
            if pool.get_idle_size() == pool.get_size():
                break
            await asyncio.sleep(0.05)
        assert pool.get_idle_size() == pool.get_size(), "a connection leaked"
        # Nothing of the cancelled calls was written, and the server works on.
        got = (await runs.GetRun(rpb.GetRunRequest(run_id=run_id))).run
        assert list(got.data.params) == []
        await runs.LogParam(rpb.LogParamRequest(run_id=run_id, key="after", value="ok"))
    finally:
        await ch.close()
        await blocker.close()
        await running.stop(1.0)


async def test_stalled_stream_holds_no_connection_and_is_ended(database_url: str) -> None:
    running = await app.start(server_config(stream_idle_timeout=0.5), database_url)
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    runs = run_service_pb2_grpc.RunServiceStub(ch)
    try:
        run_id = (await new_run(runs)).info.run_id
        go_on = asyncio.Event()

        async def gen():  # type: ignore[no-untyped-def]
            yield rpb.StreamMetricsRequest(stream_id="stall", sequence=0)
            yield rpb.StreamMetricsRequest(
                stream_id="stall",
                sequence=1,
                series=[rpb.MetricColumns(run_id=run_id, key="k", steps=[1], values=[1.0])],
            )
            await go_on.wait()  # then stall, holding the stream open

        call = runs.StreamMetrics(gen())
        assert (await call.read()).acked_sequence == 0
        assert (await call.read()).acked_sequence == 1
        await asyncio.sleep(0.1)
        pool = running.db.pool
        for _ in range(40):  # the stream is open and silent: no connection stays taken
            if pool.get_idle_size() == pool.get_size():
                break
            await asyncio.sleep(0.05)
        assert pool.get_idle_size() == pool.get_size()
        assert running.writers.queued_points == 0
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await asyncio.wait_for(call.read(), 5)
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "nothing for 0.5 s" in (exc.value.details() or "")
        STATS["faults injected"] += 1
        go_on.set()
    finally:
        await ch.close()
        await running.stop(1.0)


async def test_two_servers_racing_on_a_param_leave_one_value(database_url: str) -> None:
    a = await app.start(server_config(), database_url)
    b = await app.start(server_config(), database_url)
    ch_a = grpc.aio.insecure_channel(f"127.0.0.1:{a.port}")
    ch_b = grpc.aio.insecure_channel(f"127.0.0.1:{b.port}")
    runs_a = run_service_pb2_grpc.RunServiceStub(ch_a)
    runs_b = run_service_pb2_grpc.RunServiceStub(ch_b)
    try:
        for round_ in range(15):
            run_id = (await new_run(runs_a)).info.run_id
            results = await asyncio.gather(
                runs_a.LogParam(rpb.LogParamRequest(run_id=run_id, key="lr", value="0.1")),
                runs_b.LogParam(rpb.LogParamRequest(run_id=run_id, key="lr", value="0.2")),
                return_exceptions=True,
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            assert len(failures) == 1, (round_, results)
            STATS["faults injected"] += 1
            err = failures[0]
            assert isinstance(err, grpc.aio.AioRpcError)
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_info(err).reason == "INVALID_STATE"
            stored = (await runs_b.GetRun(rpb.GetRunRequest(run_id=run_id))).run.data.params
            winner = "0.1" if failures[0] is results[1] else "0.2"
            assert [(p.key, p.value) for p in stored] == [("lr", winner)]
    finally:
        await ch_a.close()
        await ch_b.close()
        await a.stop(1.0)
        await b.stop(1.0)


async def test_two_servers_racing_to_create_an_experiment_make_one(database_url: str) -> None:
    a = await app.start(server_config(), database_url)
    b = await app.start(server_config(), database_url)
    ch_a = grpc.aio.insecure_channel(f"127.0.0.1:{a.port}")
    ch_b = grpc.aio.insecure_channel(f"127.0.0.1:{b.port}")
    exp_a = experiment_service_pb2_grpc.ExperimentServiceStub(ch_a)
    exp_b = experiment_service_pb2_grpc.ExperimentServiceStub(ch_b)
    try:
        for _ in range(15):
            name = f"race-{uuid.uuid4().hex[:8]}"
            results = await asyncio.gather(
                *(
                    s.CreateExperiment(epb.CreateExperimentRequest(name=name))
                    for s in (exp_a, exp_b, exp_a, exp_b)
                ),
                return_exceptions=True,
            )
            ok = [r for r in results if not isinstance(r, BaseException)]
            assert len(ok) == 1, results
            for r in results:
                if isinstance(r, BaseException):
                    assert isinstance(r, grpc.aio.AioRpcError)
                    assert r.code() == grpc.StatusCode.ALREADY_EXISTS
            got = await exp_b.GetExperimentByName(
                epb.GetExperimentByNameRequest(experiment_name=name)
            )
            assert got.experiment.experiment_id == ok[0].experiment_id
    finally:
        await ch_a.close()
        await ch_b.close()
        await a.stop(1.0)
        await b.stop(1.0)


async def test_new_experiment_helper_is_usable(experiments) -> None:
    assert await new_experiment(experiments)
