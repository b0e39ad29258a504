"""WatchRun through real servers: points, status changes, params and tags as they commit;
experiment watches; writes of another server process; exact resume; key filters; a slow
watcher that coalesces without slowing ingest; a lost listener; retention; heartbeats; points
recorded only for watched experiments, and a resume after the interest expired."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest

from conftest import server_config
from faults.procs import running
from helpers import error_info, new_experiment, new_run
from trackd.server import app
from trackd.server.domain import watch as watch_domain
from trackd.v1 import metric_pb2, run_pb2, run_service_pb2_grpc
from trackd.v1 import run_service_pb2 as rpb


@dataclass
class Seen:
    """What a watcher received, accumulated."""

    points: dict[tuple[str, str], list[tuple[int, int, float]]] = field(default_factory=dict)
    statuses: list[tuple[str, int, int]] = field(default_factory=list)
    params: dict[tuple[str, str], str] = field(default_factory=dict)
    param_types: dict[tuple[str, str], int] = field(default_factory=dict)
    tags: dict[tuple[str, str], str] = field(default_factory=dict)
    heartbeats: list[int] = field(default_factory=list)
    coalesced: int = 0
    messages: int = 0
    position: str = ""

    def add(self, r: rpb.WatchRunResponse) -> None:
        self.messages += 1
        self.position = r.position
        self.coalesced += r.coalesced
        which = r.WhichOneof("event")
        if which == "points":
            p = r.points
            stamps = list(p.timestamps) or [0] * len(p.steps)
            got = self.points.setdefault((p.run_id, p.key), [])
            got.extend(zip(p.steps, stamps, p.values, strict=True))
        elif which == "status":
            self.statuses.append((r.status.run_id, r.status.status, r.status.end_time))
        elif which == "data":
            for prm in r.data.params:
                self.params[(r.data.run_id, prm.key)] = prm.value
                self.param_types[(r.data.run_id, prm.key)] = prm.type
            for tag in r.data.tags:
                self.tags[(r.data.run_id, tag.key)] = tag.value
        elif which == "heartbeat_time":
            self.heartbeats.append(r.heartbeat_time)

    def series(self, run_id: str, key: str) -> list[tuple[int, int, float]]:
        return self.points.get((run_id, key), [])


class Watch:
    """One WatchRun call read by a background task into a queue (so that waiting for a
    response never cancels the call)."""

    def __init__(self, stub: run_service_pb2_grpc.RunServiceStub, **request: Any) -> None:
        self.call = stub.WatchRun(rpb.WatchRunRequest(**request))
        self.queue: asyncio.Queue[rpb.WatchRunResponse | grpc.aio.AioRpcError | None] = (
            asyncio.Queue()
        )
        self.seen = Seen()
        self.task: asyncio.Task[None] | None = None
        # Cleared to stop reading (the call stays open; cancelling a read would end it).
        self.reading = asyncio.Event()
        self.reading.set()

    def pump(self) -> Watch:
        self.task = asyncio.create_task(self._pump())
        return self

    async def _pump(self) -> None:
        try:
            async for r in self.call:
                await self.queue.put(r)
                await self.reading.wait()
            await self.queue.put(None)
        except grpc.aio.AioRpcError as err:
            await self.queue.put(err)

    async def next(self, seconds: float = 10.0) -> rpb.WatchRunResponse:
        item = await asyncio.wait_for(self.queue.get(), seconds)
        if isinstance(item, grpc.aio.AioRpcError):
            raise item
        assert item is not None, "the call ended"
        self.seen.add(item)
        return item

    async def until(self, done: Callable[[Seen], bool], seconds: float = 20.0) -> Seen:
        deadline = time.monotonic() + seconds
        while not done(self.seen):
            left = deadline - time.monotonic()
            assert left > 0, f"not seen in {seconds} s: {self.seen}"
            await self.next(left)
        return self.seen

    async def close(self) -> None:
        self.call.cancel()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@contextlib.asynccontextmanager
async def watching(
    stub: run_service_pb2_grpc.RunServiceStub, **request: Any
) -> AsyncIterator[Watch]:
    w = Watch(stub, **request).pump()
    try:
        yield w
    finally:
        await w.close()


async def synced(w: Watch, runs: run_service_pb2_grpc.RunServiceStub, run_id: str) -> None:
    """Waits until the watch delivers a point logged after it started (its start position is
    then set): logs `sync` points until one arrives."""
    for i in range(100):
        await runs.LogMetric(rpb.LogMetricRequest(run_id=run_id, key="sync", value=i, step=i))
        with contextlib.suppress(TimeoutError):
            await w.until(lambda s: bool(s.series(run_id, "sync")), seconds=0.3)
            return
    raise AssertionError("the watch never delivered")


def columns(run_id: str, key: str, steps: list[int], seed: int = 0) -> rpb.MetricColumns:
    rnd = random.Random(seed)
    values = [rnd.uniform(-1e6, 1e6) for _ in steps]
    if steps:
        values[0] = math.nan
    return rpb.MetricColumns(
        run_id=run_id,
        key=key,
        steps=steps,
        timestamps=[1_700_000_000_000 + s for s in steps],
        values=values,
    )


def expected(c: rpb.MetricColumns) -> list[tuple[int, int, float]]:
    return list(zip(c.steps, c.timestamps, c.values, strict=True))


def bits(points: list[tuple[int, int, float]]) -> list[tuple[int, int, bytes]]:
    """Points with values as their bytes (NaN compares equal, -0.0 apart from 0.0)."""
    return [(s, t, struct.pack("<d", v)) for s, t, v in points]


async def stream(
    runs: run_service_pb2_grpc.RunServiceStub, chunks: list[list[rpb.MetricColumns]]
) -> None:
    """Sends chunks on one StreamMetrics call and waits for the last ack."""
    sid = uuid.uuid4().hex

    async def requests() -> AsyncIterator[rpb.StreamMetricsRequest]:
        yield rpb.StreamMetricsRequest(stream_id=sid, sequence=0)
        for i, series in enumerate(chunks, start=1):
            yield rpb.StreamMetricsRequest(stream_id=sid, sequence=i, series=series)

    acked = 0
    async for ack in runs.StreamMetrics(requests()):
        assert not ack.rejections
        acked = ack.acked_sequence
    assert acked == len(chunks)


async def point_events(database_url: str, run_id: str, key: str | None = None) -> int:
    """How many point events of a run (of one key) the watch log holds (a white-box check
    of what ingest pays for)."""
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM run_events e JOIN runs r ON r.run_pk = e.run_pk "
            "WHERE r.run_id = $1 AND e.kind = 1 AND ($2::text IS NULL OR e.key = $2)",
            uuid.UUID(run_id),
            key,
        )
    finally:
        await conn.close()
    return count


async def test_watch_pushes_points_status_params_and_tags(runs, experiments) -> None:  # type: ignore[no-untyped-def]
    run = (await new_run(runs)).info.run_id
    async with watching(runs, run_id=run) as w:
        await synced(w, runs, run)
        batch = columns(run, "loss", list(range(10)), seed=1)
        await runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=run,
                metrics=[
                    metric_pb2.Metric(key="acc", value=v, step=s, timestamp=t)
                    for s, t, v in [(0, 5, 0.5), (1, 6, -0.0)]
                ],
                params=[run_pb2.Param(key="lr", value="0.1", type=run_pb2.PARAM_TYPE_DOUBLE)],
                tags=[run_pb2.RunTag(key="phase", value="warmup")],
            )
        )
        await stream(runs, [[batch]])
        await runs.LogParam(
            rpb.LogParamRequest(run_id=run, key="layers", value="12", type=run_pb2.PARAM_TYPE_INT)
        )
        await runs.SetTag(rpb.SetTagRequest(run_id=run, key="phase", value="main"))
        await runs.UpdateRun(
            rpb.UpdateRunRequest(run_id=run, status=run_pb2.RUN_STATUS_FINISHED, end_time=4242)
        )
        seen = await w.until(
            lambda s: (
                bool(s.statuses)
                and s.tags.get((run, "phase")) == "main"
                and len(s.series(run, "loss")) == 10
            )
        )
        assert bits(seen.series(run, "loss")) == bits(expected(batch))
        assert bits(seen.series(run, "acc")) == bits([(0, 5, 0.5), (1, 6, -0.0)])
        assert seen.params == {(run, "lr"): "0.1", (run, "layers"): "12"}
        assert seen.param_types == {
            (run, "lr"): run_pb2.PARAM_TYPE_DOUBLE,
            (run, "layers"): run_pb2.PARAM_TYPE_INT,
        }
        assert seen.statuses[-1] == (run, run_pb2.RUN_STATUS_FINISHED, 4242)
        assert all(r != run or k != "lr" for r, k in seen.points)
        assert seen.position


async def test_watch_on_experiment_sees_runs_created_later(runs, experiments) -> None:  # type: ignore[no-untyped-def]
    eid = await new_experiment(experiments)
    first = (await new_run(runs, eid)).info.run_id
    async with watching(runs, experiment_id=eid) as w:
        await synced(w, runs, first)
        later = (await new_run(runs, eid, run_name="later-run")).info.run_id
        await runs.LogMetric(rpb.LogMetricRequest(run_id=later, key="x", value=3.0, step=7))
        seen = await w.until(lambda s: bool(s.series(later, "x")))
        assert (later, run_pb2.RUN_STATUS_RUNNING, 0) in seen.statuses
        assert seen.tags[(later, "mlflow.runName")] == "later-run"
        assert [(s, v) for s, _, v in seen.series(later, "x")] == [(7, 3.0)]
    # Another experiment's writes are not this watch's.
    other = (await new_run(runs)).info.run_id
    async with watching(runs, experiment_id=eid) as w:
        await synced(w, runs, first)
        await runs.LogMetric(rpb.LogMetricRequest(run_id=other, key="x", value=1.0, step=1))
        await runs.LogMetric(rpb.LogMetricRequest(run_id=first, key="after", value=1.0, step=1))
        seen = await w.until(lambda s: bool(s.series(first, "after")))
        assert not seen.series(other, "x")


async def test_watch_sees_writes_of_another_server_process(runs, database_url) -> None:  # type: ignore[no-untyped-def]
    run = (await new_run(runs)).info.run_id
    async with running(database_url) as other:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as ch:
            remote = run_service_pb2_grpc.RunServiceStub(ch)
            async with watching(runs, run_id=run) as w:
                await synced(w, remote, run)
                delays = []
                for i in range(20):
                    t0 = time.perf_counter()
                    await remote.LogMetric(
                        rpb.LogMetricRequest(run_id=run, key="remote", value=i, step=i)
                    )
                    await w.until(lambda s, i=i: len(s.series(run, "remote")) == i + 1)
                    delays.append(time.perf_counter() - t0)
                await remote.UpdateRun(
                    rpb.UpdateRunRequest(run_id=run, status=run_pb2.RUN_STATUS_KILLED)
                )
                seen = await w.until(lambda s: bool(s.statuses))
                assert [s for _, s, _ in seen.statuses] == [run_pb2.RUN_STATUS_KILLED]
                assert [st for st, _, _ in seen.series(run, "remote")] == list(range(20))
                # Write, commit and delivery through another process: well under a second.
                assert sorted(delays)[10] < 0.5


async def test_resume_replays_exactly_what_was_missed(runs, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Small messages, so that calls are dropped inside events and inside merged batches.
    monkeypatch.setattr(watch_domain, "POINTS_PER_MESSAGE", 37)
    run = (await new_run(runs)).info.run_id
    w = Watch(runs, run_id=run).pump()
    await synced(w, runs, run)
    position = w.seen.position
    await w.close()
    written: dict[str, list[tuple[int, int, float]]] = {}

    async def writer(key: str, unary: bool) -> None:
        rnd = random.Random(key)
        step = 0
        for _ in range(40):
            n = rnd.randint(1, 300)
            c = columns(run, key, list(range(step, step + n)), seed=step)
            step += n
            if unary:
                await runs.LogBatch(
                    rpb.LogBatchRequest(
                        run_id=run,
                        metrics=[
                            metric_pb2.Metric(key=key, value=v, step=s, timestamp=t)
                            for s, t, v in expected(c)[:1000]
                        ],
                    )
                )
            else:
                await stream(runs, [[c]])
            written.setdefault(key, []).extend(expected(c))
            await asyncio.sleep(rnd.random() * 0.01)

    writers = asyncio.gather(writer("a", False), writer("b", False), writer("c", True))
    received = Seen()
    drops = inside = 0
    deadline = time.monotonic() + 90

    def complete() -> bool:
        return writers.done() and all(
            len(received.series(run, k)) >= len(v) for k, v in written.items()
        )

    while not complete():
        assert time.monotonic() < deadline, "the watch fell behind for 90 s"
        inside += watch_domain.Position.parse(position).k > 0
        w = Watch(runs, run_id=run, resume_position=position).pump()
        try:
            for _ in range(random.randint(1, 25)):
                try:
                    r = await w.next(seconds=1.0 if writers.done() else 3.0)
                except TimeoutError:
                    break
                received.add(r)
                position = r.position
        finally:
            await w.close()
        drops += 1
    await writers
    assert drops > 3
    assert inside > 0  # some calls resumed inside an event or a merged batch
    for key, points in written.items():
        assert bits(received.series(run, key)) == bits(points), key
    assert not received.series(run, "sync")


async def test_points_of_unwatched_experiments_are_not_recorded(  # type: ignore[no-untyped-def]
    runs, experiments, database_url
) -> None:
    eid = await new_experiment(experiments)
    run = (await new_run(runs, eid)).info.run_id
    await stream(runs, [[columns(run, "x", list(range(100)))]])
    await runs.LogMetric(rpb.LogMetricRequest(run_id=run, key="y", value=1.0, step=1))
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=run,
            metrics=[metric_pb2.Metric(key="z", value=1.0, step=1, timestamp=1)],
            params=[run_pb2.Param(key="p", value="1")],
        )
    )
    assert await point_events(database_url, run) == 0
    # Watched, its points are recorded and delivered; another experiment's still are not.
    other = (await new_run(runs, await new_experiment(experiments))).info.run_id
    async with watching(runs, experiment_id=eid) as w:
        await synced(w, runs, run)
        await stream(runs, [[columns(run, "x", list(range(100, 150)))]])
        await stream(runs, [[columns(other, "x", list(range(50)))]])
        seen = await w.until(lambda s: len(s.series(run, "x")) == 50)
        assert [st for st, _, _ in seen.series(run, "x")] == list(range(100, 150))
    assert await point_events(database_url, run, "x") > 0
    assert await point_events(database_url, other) == 0


async def test_dropped_watcher_resumes_what_another_server_wrote_meanwhile(  # type: ignore[no-untyped-def]
    runs, experiments, database_url
) -> None:
    eid = await new_experiment(experiments)
    run = (await new_run(runs, eid)).info.run_id
    async with watching(runs, run_id=run) as w:
        await synced(w, runs, run)
        position = w.seen.position
    # Nobody watches now, but the interest lasts the retention: a server that never had a
    # watcher records what it writes, and the resume (on that server) replays it exactly.
    async with running(database_url) as other:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as ch:
            remote = run_service_pb2_grpc.RunServiceStub(ch)
            chunks = [
                [columns(run, "away", list(range(i * 100, (i + 1) * 100)), i)] for i in range(5)
            ]
            await stream(remote, chunks)
            for i in range(3):
                await remote.LogMetric(
                    rpb.LogMetricRequest(run_id=run, key="unary", value=i, step=i)
                )
            assert await point_events(database_url, run, "away") > 0
            async with watching(remote, run_id=run, resume_position=position) as w:
                seen = await w.until(
                    lambda s: len(s.series(run, "away")) == 500 and len(s.series(run, "unary")) == 3
                )
                want = [p for c in chunks for p in expected(c[0])]
                assert bits(seen.series(run, "away")) == bits(want)
                assert [st for st, _, _ in seen.series(run, "unary")] == [0, 1, 2]
                assert not seen.series(run, "sync")


async def test_watch_started_while_another_server_writes_misses_nothing_after_its_start(  # type: ignore[no-untyped-def]
    runs, experiments, database_url
) -> None:
    eid = await new_experiment(experiments)
    run = (await new_run(runs, eid)).info.run_id
    chunks = [columns(run, "x", list(range(i * 50, (i + 1) * 50)), i) for i in range(300)]

    async def requests() -> AsyncIterator[rpb.StreamMetricsRequest]:
        sid = uuid.uuid4().hex
        yield rpb.StreamMetricsRequest(stream_id=sid, sequence=0)
        for i, c in enumerate(chunks, start=1):
            yield rpb.StreamMetricsRequest(stream_id=sid, sequence=i, series=[c])
            await asyncio.sleep(0.01)

    async def write(remote: run_service_pb2_grpc.RunServiceStub) -> None:
        async for ack in remote.StreamMetrics(requests()):
            assert not ack.rejections

    async with running(database_url) as other:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as ch:
            remote = run_service_pb2_grpc.RunServiceStub(ch)
            writer = asyncio.create_task(write(remote))
            watches = []
            try:
                # Watches start (and register) while the other server's groups commit.
                for _ in range(4):
                    await asyncio.sleep(0.3)
                    watches.append(Watch(runs, experiment_id=eid).pump())
                assert not writer.done()
                await writer
                for w in watches:
                    seen = await w.until(
                        lambda s: [p[0] for p in s.series(run, "x")[-1:]] == [14_999]
                    )
                    steps = [st for st, _, _ in seen.series(run, "x")]
                    # What follows the start of a watch, all of it: a gapless tail.
                    assert steps == list(range(steps[0], 15_000)), steps[:3]
                    assert bits(seen.series(run, "x")) == bits(
                        [p for c in chunks for p in expected(c)][steps[0] :]
                    )
            finally:
                writer.cancel()
                for w in watches:
                    await w.close()


async def test_keys_filter_points(runs) -> None:  # type: ignore[no-untyped-def]
    run = (await new_run(runs)).info.run_id
    async with watching(runs, run_id=run, metric_keys=["sync", "a"]) as w:
        await synced(w, runs, run)
        await stream(runs, [[columns(run, "b", [1, 2]), columns(run, "a", [1, 2, 3])]])
        await runs.SetTag(rpb.SetTagRequest(run_id=run, key="t", value="v"))
        seen = await w.until(lambda s: (run, "t") in s.tags)
        assert len(seen.series(run, "a")) == 3
        assert not seen.series(run, "b")


async def test_slow_watcher_coalesces_loses_nothing_and_never_slows_ingest(runs) -> None:  # type: ignore[no-untyped-def]
    run = (await new_run(runs)).info.run_id
    w = Watch(runs, run_id=run).pump()
    try:
        await synced(w, runs, run)
        w.reading.clear()
        # 1,000,000 points: more than gRPC's transport buffers hold, so the server's side
        # of the call waits on the reader and the log piles up behind it.
        chunks = [
            [columns(run, "x", list(range(i * 2500, (i + 1) * 2500)), seed=i)] for i in range(400)
        ]
        t0 = time.perf_counter()
        await asyncio.wait_for(stream(runs, chunks), 60)
        await runs.UpdateRun(rpb.UpdateRunRequest(run_id=run, status=run_pb2.RUN_STATUS_FAILED))
        ingest_s = time.perf_counter() - t0
        # The reference: the same volume with nobody watching.
        other = (await new_run(runs)).info.run_id
        t0 = time.perf_counter()
        await stream(runs, [[columns(other, "x", c[0].steps)] for c in chunks])
        alone_s = time.perf_counter() - t0
        assert ingest_s < 3 * alone_s + 2, (ingest_s, alone_s)
        await asyncio.sleep(1.5)  # now the watcher is over a second behind
        w.reading.set()
        seen = await w.until(
            lambda s: len(s.series(run, "x")) >= 1_000_000 and bool(s.statuses), seconds=60
        )
        want = [p for c in chunks for p in expected(c[0])]
        assert bits(seen.series(run, "x")) == bits(want)
        assert seen.coalesced > 0
        assert seen.statuses[-1][1] == run_pb2.RUN_STATUS_FAILED
    finally:
        await w.close()


async def test_watch_survives_a_lost_listener_connection(runs, server, database_url) -> None:  # type: ignore[no-untyped-def]
    run = (await new_run(runs)).info.run_id
    async with watching(runs, run_id=run) as w:
        await synced(w, runs, run)
        connects = server.watches.connects
        conn = server.watches.conn
        assert conn is not None
        admin = await asyncpg.connect(database_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        finally:
            await admin.close()
        for i in range(5):
            await runs.LogMetric(rpb.LogMetricRequest(run_id=run, key="k", value=i, step=i))
        seen = await w.until(lambda s: len(s.series(run, "k")) == 5)
        assert [s for s, _, _ in seen.series(run, "k")] == list(range(5))
        for _ in range(100):
            if server.watches.connects > connects:
                break
            await asyncio.sleep(0.05)
        assert server.watches.connects > connects


async def test_heartbeat_after_five_quiet_seconds(runs) -> None:  # type: ignore[no-untyped-def]
    run = (await new_run(runs)).info.run_id
    async with watching(runs, run_id=run) as w:
        t0 = time.monotonic()
        r = await w.next(seconds=9)
        assert r.WhichOneof("event") == "heartbeat_time"
        assert 4.5 <= time.monotonic() - t0
        assert abs(r.heartbeat_time - time.time() * 1000) < 5000
        position = r.position
    await runs.LogMetric(rpb.LogMetricRequest(run_id=run, key="after", value=1.0, step=1))
    async with watching(runs, run_id=run, resume_position=position) as w:
        seen = await w.until(lambda s: bool(s.series(run, "after")))
        assert seen.messages == 1


async def test_bad_requests(runs, experiments) -> None:  # type: ignore[no-untyped-def]
    run = (await new_run(runs)).info.run_id

    async def first_error(**request: Any) -> grpc.aio.AioRpcError:
        call = runs.WatchRun(rpb.WatchRunRequest(**request))
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(call.read(), 10)
            return err.value
        finally:
            call.cancel()

    for request, code in [
        ({"run_id": "nope"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"experiment_id": "x1"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"run_id": uuid.uuid4().hex}, grpc.StatusCode.NOT_FOUND),
        ({"experiment_id": "987654321"}, grpc.StatusCode.NOT_FOUND),
        ({"run_id": run, "metric_keys": ["bad..key"]}, grpc.StatusCode.INVALID_ARGUMENT),
        (
            {"run_id": run, "metric_keys": [f"k{i}" for i in range(101)]},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        ({"run_id": run, "resume_position": "not a position"}, grpc.StatusCode.INVALID_ARGUMENT),
        # A position beyond anything written: not one a response gave.
        (
            {"run_id": run, "resume_position": watch_domain.Position(10**15).token()},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]:
        err = await first_error(**request)
        assert err.code() == code, request
        assert error_info(err).reason in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")


async def test_position_older_than_retention_is_failed_precondition(runs, database_url) -> None:  # type: ignore[no-untyped-def]
    # Last in this module but one: this server's sweep prunes every event older than a
    # second.
    run = (await new_run(runs)).info.run_id
    async with watching(runs, run_id=run) as w:
        await synced(w, runs, run)
        position = w.seen.position
    await runs.LogMetric(rpb.LogMetricRequest(run_id=run, key="gone", value=1.0, step=1))
    short = await app.start(server_config(watch_retention=1.0), database_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{short.port}") as ch:
            stub = run_service_pb2_grpc.RunServiceStub(ch)
            seq = watch_domain.Position.parse(position).hi
            for _ in range(100):
                pruned = await short.db.pool.fetchval("SELECT through FROM run_events_pruned")
                if pruned > seq:
                    break
                await asyncio.sleep(0.1)
            assert pruned > seq
            call = stub.WatchRun(rpb.WatchRunRequest(run_id=run, resume_position=position))
            try:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await asyncio.wait_for(call.read(), 10)
            finally:
                call.cancel()
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_info(err.value).reason == "INVALID_STATE"
    finally:
        await short.stop(1.0)


async def test_resume_after_the_interest_expired_is_failed_precondition(  # type: ignore[no-untyped-def]
    experiments, database_url
) -> None:
    # Last in this module: this server's sweep prunes every event older than a second.
    short = await app.start(server_config(watch_retention=1.0), database_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{short.port}") as ch:
            stub = run_service_pb2_grpc.RunServiceStub(ch)
            run = (await new_run(stub, await new_experiment(experiments))).info.run_id
            async with watching(stub, run_id=run) as w:
                await synced(w, stub, run)
                # Open longer than the retention: the interest is kept while watched.
                await asyncio.sleep(1.5)
                await stub.LogMetric(
                    rpb.LogMetricRequest(run_id=run, key="kept", value=1.0, step=1)
                )
                await w.until(lambda s: bool(s.series(run, "kept")))
                position = w.seen.position
            await asyncio.sleep(1.5)  # the interest expires a second after the watch ended
            await stub.LogMetric(rpb.LogMetricRequest(run_id=run, key="lost", value=1.0, step=1))
            assert await point_events(database_url, run, "lost") == 0
            call = stub.WatchRun(rpb.WatchRunRequest(run_id=run, resume_position=position))
            try:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await asyncio.wait_for(call.read(), 10)
            finally:
                call.cancel()
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            info = error_info(err.value)
            assert info.reason == "INVALID_STATE"
            assert "watched_since" in info.metadata
            # A new watch from now works, and sees what is written from now on.
            async with watching(stub, run_id=run) as w:
                await synced(w, stub, run)
                await stub.LogMetric(rpb.LogMetricRequest(run_id=run, key="new", value=2.0, step=2))
                seen = await w.until(lambda s: bool(s.series(run, "new")))
                assert not seen.series(run, "lost")
    finally:
        await short.stop(1.0)


async def test_a_second_watch_of_a_watched_experiment_does_not_stop_writers(  # type: ignore[no-untyped-def]
    runs, experiments, database_url
) -> None:
    """Registering interest that is live extends it without the lock that waits for every
    transaction that read watch_interest: a transaction holding that read open (as a
    writer of points does until it commits) does not hold the second watch back."""
    eid = await new_experiment(experiments)
    run = (await new_run(runs, eid)).info.run_id
    async with watching(runs, experiment_id=eid) as first:
        await synced(first, runs, run)
        writer = await asyncpg.connect(database_url)
        try:
            tx = writer.transaction()
            await tx.start()
            await writer.fetch("SELECT experiment_id FROM watch_interest")  # ACCESS SHARE
            async with watching(runs, experiment_id=eid) as second:
                # Within a few seconds, not after the writer ends (it never does here).
                await synced(second, runs, run)
            await tx.rollback()
        finally:
            await writer.close()
