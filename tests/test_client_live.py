"""The Python client on runs as they train, against a real server: envelopes compared with a
brute-force aggregation of every point logged (as numpy arrays and as plain lists), a watch
that receives points as they are logged and resumes by itself across a cut connection
without loss or duplicates, heartbeats that keep a run RUNNING past a short liveness
window while a killed trainer's run reads UNRESPONSIVE, and system metrics sampled as
`system/*` series until the run ends."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import struct
import sys
import textwrap
import threading
import time
import types
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

import trackd.client as fluent_api
from conftest import server_config
from trackd.client import AsyncClient, Client, MetricEnvelope, RunUpdate
from trackd.client.live_entities import RunUpdate as _RunUpdate
from trackd.client.system_metrics import SystemSampler
from trackd.server import app
from trackd.server.app import Running

# The server's liveness window in this module, in seconds.
WINDOW = 1.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(database_url: str) -> AsyncIterator[Running]:
    """trackd with a one-second liveness window."""
    running = await app.start(server_config(liveness_window=WINDOW), database_url)
    yield running
    await running.stop(1.0)


@pytest_asyncio.fixture(loop_scope="module")
async def client(server: Running) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"127.0.0.1:{server.port}") as c:
        yield c


def _target(server: Running) -> str:
    return f"127.0.0.1:{server.port}"


# -- envelopes --

Point = tuple[int, int, float]  # (step, timestamp, value)


def _adversarial_series(n: int) -> list[Point]:
    """Spikes, NaN, both infinities, duplicate steps and timestamps out of order."""
    points: list[Point] = []
    base = 1_700_000_000_000
    for i in range(n):
        step = i // 3  # three points per step
        ts = base + (n - i) * 7 % 997  # unordered
        value = math.sin(i / 50)
        if i % 97 == 0:
            value = 1e6  # spike
        elif i % 89 == 0:
            value = -1e6
        elif i % 71 == 0:
            value = float("nan")
        elif i % 113 == 0:
            value = float("inf")
        elif i % 127 == 0:
            value = float("-inf")
        points.append((step, ts, value))
    return points


def _value_key(v: float) -> tuple[int, float]:
    # PostgreSQL orders NaN above every other double.
    return (1, 0.0) if math.isnan(v) else (0, v)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _ordered(points: Sequence[Point], axis: str, start_time: int) -> list[tuple[int, Point]]:
    """(x, point) in the envelope's order: (x, step or timestamp, value); an exact
    duplicate of a point counts once, as the server stores it."""
    points = list({(p[0], p[1], struct.pack("<d", p[2])): p for p in points}.values())
    if axis == "step":
        keyed = [(p[0], p) for p in points]
        return sorted(keyed, key=lambda xp: (xp[0], xp[1][1], _value_key(xp[1][2])))
    offset = start_time if axis == "relative_time" else 0
    keyed = [(p[1] - offset, p) for p in points]
    return sorted(keyed, key=lambda xp: (xp[0], xp[1][0], _value_key(xp[1][2])))


def _check_envelope(
    env: MetricEnvelope,
    points: Sequence[Point],
    axis: str = "step",
    x_min: int | None = None,
    x_max: int | None = None,
    start_time: int = 0,
) -> None:
    """Every bucket against a brute-force aggregation of its points: buckets take the
    points in order, `count` at a time, and must span exactly the x of their first and
    last point, with their first, last, finite min and max, and counts."""
    ordered = [
        xp
        for xp in _ordered(points, axis, start_time)
        if (x_min is None or xp[0] >= x_min) and (x_max is None or xp[0] <= x_max)
    ]
    assert int(sum(env.count)) == len(ordered)
    i = 0
    for b in range(len(env)):
        members = ordered[i : i + int(env.count[b])]
        i += int(env.count[b])
        assert members, f"bucket {b} is empty"
        xs = [x for x, _ in members]
        values = [p[2] for _, p in members]
        finite = [v for v in values if math.isfinite(v)]
        assert (env.x_first[b], env.x_last[b]) == (xs[0], xs[-1]), b
        assert _same(env.first[b], values[0]) and _same(env.last[b], values[-1]), b
        assert _same(env.min[b], min(finite) if finite else math.nan), b
        assert _same(env.max[b], max(finite) if finite else math.nan), b
        assert env.nan_count[b] == sum(math.isnan(v) for v in values), b
        assert env.pos_inf_count[b] == sum(v == math.inf for v in values), b
        assert env.neg_inf_count[b] == sum(v == -math.inf for v in values), b
        if b:
            assert env.x_first[b] >= env.x_last[b - 1]
    # The first and last points are always there.
    assert (env.x_first[0], env.x_last[-1]) == (ordered[0][0], ordered[-1][0])


async def _logged_run(client: AsyncClient, series: dict[str, list[Point]]) -> str:
    async with client.start_run(run_name="envelope") as run:
        for key, points in series.items():
            for step, ts, value in points:
                run.log_metric(key, value, step, ts)
        await run.flush()
    return run.run_id


async def test_an_envelope_is_exact_against_every_point_logged(client: AsyncClient) -> None:
    series = {
        "loss": _adversarial_series(5000),
        # Everything at step 0, timestamps out of order.
        "flat": [(0, 1_700_000_000_000 + (i * 13) % 800, float(i % 7)) for i in range(800)],
    }
    rid = await _logged_run(client, series)

    got = await client.get_metric_envelope(rid, ["loss", "flat", "absent"], buckets=50)
    assert list(got) == [(rid, "loss"), (rid, "flat")]
    loss = got[rid, "loss"]
    assert isinstance(loss.x_first, np.ndarray) and loss.min.dtype == np.float64
    assert loss.count.dtype == np.int64
    assert not loss.points and 1 <= len(loss) <= 50
    _check_envelope(loss, series["loss"])
    # Everything at step 0: exact still (one x, so however many buckets span it).
    _check_envelope(got[rid, "flat"], series["flat"])

    # Every spike survives as a bucket's min or max.
    assert float(np.nanmax(loss.max)) == 1e6 and float(np.nanmin(loss.min)) == -1e6

    # Zoomed in, as plain lists.
    zoom = await client.get_metric_envelope(
        [rid], "loss", "step", x_min=400, x_max=900, buckets=40, as_numpy=False
    )
    z = zoom[rid, "loss"]
    assert isinstance(z.x_first, list) and isinstance(z.min, list)
    _check_envelope(z, series["loss"], x_min=400, x_max=900)

    # Wall time and time since the run's start.
    wall = (await client.get_metric_envelope(rid, "loss", "wall_time", buckets=30))[rid, "loss"]
    _check_envelope(wall, series["loss"], "wall_time")
    start = (await client.get_run(rid)).info.start_time
    rel = (await client.get_metric_envelope(rid, "loss", "RELATIVE_TIME", buckets=30))[rid, "loss"]
    assert rel.axis == "relative_time"
    _check_envelope(rel, series["loss"], "relative_time", start_time=start)


async def test_a_short_series_comes_back_point_for_point(client: AsyncClient) -> None:
    points = [(s, 1_700_000_000_000 + s, float(s) ** 0.5) for s in range(0, 300, 3)]
    rid = await _logged_run(client, {"acc": points})
    env = (await client.get_metric_envelope(rid, "acc", buckets=1000, as_numpy=False))[rid, "acc"]
    assert env.points and len(env) == len(points)
    assert env.x_first == env.x_last == [p[0] for p in points]
    assert env.first == env.last == env.min == env.max == [p[2] for p in points]
    assert env.count == [1] * len(points)


async def test_the_blocking_client_reads_envelopes_too(server: Running) -> None:
    await asyncio.to_thread(_blocking_envelopes, _target(server))


def _blocking_envelopes(target: str) -> None:
    with Client(target) as c:
        run = c.create_run("0")
        c.log_batch(run.info.run_id, [("m", float(i), i) for i in range(10)])
        env = c.get_metric_envelope(run.info.run_id, "m", buckets=5)[run.info.run_id, "m"]
        assert int(env.count.sum()) == 10 and len(env) <= 5


# -- watching --


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 in front of the server whose connections `cut()` resets
    (both sides); later connections pass until the next cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        self.cut()  # the pipes end by themselves
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)

    def cut(self) -> None:
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_w, server_w]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(64 * 1024):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))
        finally:
            self._tasks.discard(task)


class Collected:
    """The updates of one watch, gathered by a task, with waits on what arrived."""

    def __init__(self, updates: AsyncIterator[RunUpdate]) -> None:
        self.updates = updates
        self.items: list[RunUpdate] = []
        self._arrived = asyncio.Event()
        self.task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for u in self.updates:
            self.items.append(u)
            self._arrived.set()

    def steps(self, key: str) -> list[int]:
        return [s for u in self.items if u.kind == "points" and u.key == key for s in u.steps]

    async def until(self, done: Any, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while not done():
                if self.task.done():
                    self.task.result()  # raises what ended it
                    raise AssertionError("the watch ended")
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), 0.2)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_a_watch_receives_points_status_and_params_as_they_are_logged(
    client: AsyncClient,
) -> None:
    run = await client.start_run(run_name="watched").start()
    watch = Collected(client.watch_run(run.run_id))
    try:
        await asyncio.sleep(0.3)  # the watch is established
        for step in range(50):
            run.log_metric("loss", 1 / (step + 1), step)
            if step % 10 == 9:
                await run.flush()
        await run.log_param("lr", 0.01)
        await watch.until(lambda: watch.steps("loss") == list(range(50)))
        await run.end()
        await watch.until(lambda: any(u.kind == "status" for u in watch.items))
    finally:
        await watch.close()
    assert all(u.position for u in watch.items)
    points = [u for u in watch.items if u.kind == "points"]
    assert {u.run_id for u in points} == {run.run_id}
    values = [v for u in points for v in u.values]
    assert values == [1 / (s + 1) for s in range(50)]
    data = [u for u in watch.items if u.kind == "data"]
    assert any(u.params == {"lr": "0.01"} for u in data)
    status = [u for u in watch.items if u.kind == "status"]
    assert status[-1].status == "FINISHED" and status[-1].end_time


async def test_a_watch_filters_keys_and_resumes_from_a_position(client: AsyncClient) -> None:
    run = await client.start_run(run_name="resumed").start()
    first = Collected(client.watch_run(run.run_id, keys=["acc"]))
    try:
        await asyncio.sleep(0.3)
        for step in range(10):
            run.log_metrics({"acc": step / 10, "loss": 1.0}, step)
        await run.flush()
        await first.until(lambda: first.steps("acc") == list(range(10)))
    finally:
        await first.close()
    assert first.steps("loss") == []
    position = [u for u in first.items if u.kind == "points"][-1].position
    for step in range(10, 20):
        run.log_metric("acc", step / 10, step)
    await run.flush()
    second = Collected(client.watch_run(run.run_id, keys="acc", resume_position=position))
    try:
        await second.until(lambda: second.steps("acc") == list(range(10, 20)))
    finally:
        await second.close()
    await run.end()


async def test_a_watch_resumes_by_itself_after_a_cut_without_loss_or_duplicates(
    client: AsyncClient, server: Running
) -> None:
    run = await client.start_run(run_name="cut").start()
    async with (
        CuttableProxy(server.port) as proxy,
        AsyncClient(f"127.0.0.1:{proxy.port}") as proxied,
    ):
        watch = Collected(proxied.watch_run(run.run_id, backoff_initial=0.05))
        try:
            await asyncio.sleep(0.3)
            for step in range(100):
                run.log_metric("loss", float(step), step)
            await run.flush()
            await watch.until(lambda: len(watch.steps("loss")) >= 100)
            proxy.cut()
            # Logged while the watcher is cut off, and after.
            for step in range(100, 300):
                run.log_metric("loss", float(step), step)
                if step % 50 == 0:
                    await run.flush()
                    proxy.cut()
            await run.flush()
            await watch.until(lambda: len(watch.steps("loss")) >= 300)
            await asyncio.sleep(0.3)  # nothing more arrives twice
        finally:
            await watch.close()
    assert proxy.connections >= 2
    assert watch.steps("loss") == list(range(300))
    await run.end()


async def test_an_experiment_watch_sees_runs_created_while_watching(
    client: AsyncClient,
) -> None:
    eid = await client.create_experiment(f"watched-{time.time_ns()}")
    watch = Collected(client.watch_run(experiment_id=eid))
    try:
        await asyncio.sleep(0.3)
        runs = [await client.create_run(eid) for _ in range(2)]
        for r in runs:
            await client.log_metric(r.info.run_id, "m", 1.0, step=7)
        ids = {r.info.run_id for r in runs}
        await watch.until(lambda: {u.run_id for u in watch.items if u.kind == "points"} >= ids)
    finally:
        await watch.close()


async def test_closing_a_blocking_watch_ends_its_call(server: Running) -> None:
    await asyncio.to_thread(_blocking_watch, _target(server))


def _blocking_watch(target: str) -> None:
    with Client(target) as c:
        rid = c.create_run("0").info.run_id
        updates = c.watch_run(rid)

        def log() -> None:
            time.sleep(0.3)
            c.log_metric(rid, "m", 1.0, step=1)

        threading.Thread(target=log).start()
        first = next(updates)
        assert isinstance(first, _RunUpdate)
        started = time.monotonic()
        updates.close()
        assert time.monotonic() - started < 2
        with pytest.raises(ValueError, match="exactly one"):
            next(c.watch_run())


# -- liveness --


async def test_heartbeats_keep_a_quiet_run_running_past_the_liveness_window(
    client: AsyncClient,
) -> None:
    async with client.start_run(run_name="quiet", heartbeat_interval=0.2) as run:
        await asyncio.sleep(WINDOW * 2.5)
        info = (await client.get_run(run.run_id)).info
        assert info.status == "RUNNING"
        assert info.last_seen_time > info.start_time
        assert run.logger.heartbeats.sent >= 5
    # A run without heartbeats (made by a unary call) goes UNRESPONSIVE, then back.
    silent = (await client.create_run("0")).info.run_id
    await asyncio.sleep(WINDOW * 1.5)
    assert (await client.get_run(silent)).info.status == "UNRESPONSIVE"
    found = await client.search_runs("0", "attributes.status = 'UNRESPONSIVE'", max_results=50000)
    assert silent in {r.info.run_id for r in found}
    await client.heartbeat(silent)
    assert (await client.get_run(silent)).info.status == "RUNNING"


TRAINER = textwrap.dedent(
    """
    import sys, time
    from trackd.client import Client

    with Client(sys.argv[1]) as client:
        with client.start_run(run_name="killed", heartbeat_interval=0.2) as run:
            print(run.run_id, flush=True)
            step = 0
            while True:
                time.sleep(0.05)
                step += 1
    """
)


async def test_a_killed_trainers_run_reads_unresponsive(
    client: AsyncClient, server: Running
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        TRAINER,
        _target(server),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert proc.stdout is not None
        rid = (await proc.stdout.readline()).decode().strip()
        await asyncio.sleep(WINDOW * 2)
        assert (await client.get_run(rid)).info.status == "RUNNING"
    finally:
        proc.kill()
        await proc.wait()
    await asyncio.sleep(WINDOW * 1.5)
    info = (await client.get_run(rid)).info
    assert (info.status, info.end_time) == ("UNRESPONSIVE", None)


# -- system metrics --

SYSTEM_KEYS = {
    "system/cpu_utilization_percentage",
    "system/system_memory_usage_megabytes",
    "system/system_memory_usage_percentage",
    "system/disk_usage_percentage",
    "system/disk_usage_megabytes",
    "system/disk_available_megabytes",
    "system/network_receive_megabytes",
    "system/network_transmit_megabytes",
}


async def test_system_metrics_are_logged_while_the_run_lasts(client: AsyncClient) -> None:
    async with client.start_run(
        run_name="system", log_system_metrics=True, system_metrics_interval=0.2
    ) as run:
        assert run.system_metrics is not None
        thread = run.system_metrics._thread
        assert thread is not threading.current_thread()
        await asyncio.sleep(0.9)
        await run.flush()
        data = (await client.get_run(run.run_id)).data
        assert SYSTEM_KEYS <= set(data.metrics)
        assert data.metric_summaries["system/cpu_utilization_percentage"].count >= 2
    assert not thread.is_alive()
    counts = {
        k: s.count
        for k, s in (await client.get_run(run.run_id)).data.metric_summaries.items()
        if k.startswith("system/")
    }
    await asyncio.sleep(0.6)
    after = (await client.get_run(run.run_id)).data.metric_summaries
    assert {k: after[k].count for k in counts} == counts
    steps = [
        m.step
        for m in await client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")
    ]
    assert steps == list(range(len(steps)))


async def test_the_fluent_api_logs_system_metrics_like_mlflow(server: Running) -> None:
    await asyncio.to_thread(_fluent_system_metrics, _target(server))


def _fluent_system_metrics(target: str) -> None:
    fluent_api.set_tracking_uri(target)
    fluent_api.set_system_metrics_sampling_interval(0.2)
    try:
        with fluent_api.start_run(log_system_metrics=True) as run:
            time.sleep(0.7)
        keys = set(fluent_api.get_run(run.run_id).data.metrics)
        assert SYSTEM_KEYS <= keys
        fluent_api.enable_system_metrics_logging()
        with fluent_api.start_run() as other:
            assert other.aio.system_metrics is not None
        fluent_api.disable_system_metrics_logging()
        with fluent_api.start_run() as plain:
            assert plain.aio.system_metrics is None
    finally:
        fluent_api.set_system_metrics_sampling_interval(None)
        fluent_api.set_tracking_uri("127.0.0.1:1")


def test_gpu_metrics_come_from_nvml_when_it_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nvml = types.ModuleType("pynvml")
    mem = types.SimpleNamespace(used=2_000_000_000, total=8_000_000_000)
    calls: list[str] = []
    nvml.nvmlInit = lambda: calls.append("init")  # type: ignore[attr-defined]
    nvml.nvmlShutdown = lambda: calls.append("shutdown")  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetCount = lambda: 2  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: mem  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=40 + h)  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetPowerUsage = lambda h: 150_000  # type: ignore[attr-defined]
    nvml.nvmlDeviceGetEnforcedPowerLimit = lambda h: 300_000  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    sampler = SystemSampler()
    sample = sampler.sample()
    assert sample["gpu_1_utilization_percentage"] == 41.0
    assert sample["gpu_0_memory_usage_megabytes"] == 2000.0
    assert sample["gpu_0_memory_usage_percentage"] == 25.0
    assert sample["gpu_1_power_usage_watts"] == 150.0
    assert sample["gpu_1_power_usage_percentage"] == 50.0
    sampler.close()
    assert calls == ["init", "shutdown"]


def test_without_nvml_there_are_no_gpu_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # an import of it fails
    sample = SystemSampler().sample()
    assert SYSTEM_KEYS <= {"system/" + k for k in sample}
    assert not any(k.startswith("gpu_") for k in sample)
