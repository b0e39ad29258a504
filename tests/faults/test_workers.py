"""`trackd serve --workers 2`: two processes share one port and one database, serve calls
and exactly-once streams alike, both serve the HTTP front (MLflow's REST API) on its shared
port, and stop together on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import urllib.request
import uuid

import grpc

from helpers import STATS
from trackd.v1 import run_service_pb2 as rpb
from trackd.v1 import run_service_pb2_grpc


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rest_calls(metrics_port: int) -> float:
    """How many REST calls the worker serving metrics on `metrics_port` has answered."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("trackd_requests_total{") and 'method="REST ' in line
    )


def _rest_get(port: int, run_id: str) -> dict[str, object]:
    """runs/get through the HTTP front, on a new connection."""
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={run_id}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


async def test_workers_share_a_port_and_stop_together(database_url: str) -> None:
    port = _free_port()
    http_port = _free_port()
    metrics_port = _free_port()
    while metrics_port + 1 in (port, http_port):
        metrics_port = _free_port()
    env = {**os.environ, "TRACKD_DATABASE_URL": database_url, "TRACKD_LOG_FORMAT": "text"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "trackd.server",
        "serve",
        "--workers",
        "2",
        "--listen",
        f"127.0.0.1:{port}",
        "--http-listen",
        f"127.0.0.1:{http_port}",
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    workers: set[int] = set()
    listening = 0
    lines: list[bytes] = []

    async def read() -> None:
        nonlocal listening
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            lines.append(line)
            m = re.search(rb"started worker \d \(pid (\d+)\)", line)
            if m:
                workers.add(int(m.group(1)))
            if b"trackd listening on" in line:
                listening += 1

    reader = asyncio.create_task(read())
    try:
        for _ in range(300):
            if listening == 2:
                break
            await asyncio.sleep(0.1)
        assert listening == 2 and len(workers) == 2, b"".join(lines).decode()
        # Many connections: SO_REUSEPORT spreads them over both workers.
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(8)]
        try:
            stubs = [run_service_pb2_grpc.RunServiceStub(ch) for ch in channels]
            run_id = (await stubs[0].CreateRun(rpb.CreateRunRequest())).run.info.run_id
            await asyncio.gather(
                *(
                    s.LogMetric(rpb.LogMetricRequest(run_id=run_id, key="k", value=i, step=i))
                    for i, s in enumerate(stubs * 10)
                )
            )
            # A stream resumed on whichever worker the new connection reaches.
            sid = uuid.uuid4().hex
            for i, stub in enumerate(stubs[:4]):

                async def gen(i: int = i):  # type: ignore[no-untyped-def]
                    yield rpb.StreamMetricsRequest(stream_id=sid, sequence=0)
                    for seq in (1, 2, 3):
                        yield rpb.StreamMetricsRequest(
                            stream_id=sid,
                            sequence=seq,
                            series=[
                                rpb.MetricColumns(
                                    run_id=run_id, key="s", steps=[seq], values=[float(seq)]
                                )
                            ],
                        )

                acks = [a.acked_sequence async for a in stub.StreamMetrics(gen())]
                assert acks[0] == (0 if i == 0 else 3) and acks[-1] == 3
            got = (await stubs[1].GetRun(rpb.GetRunRequest(run_id=run_id))).run
            counts = {s.key: s.count for s in got.data.metric_summaries}
            assert counts == {"k": 80, "s": 3}
            # The HTTP front on its shared port: new connections reach both workers.
            for _ in range(40):
                body = await asyncio.to_thread(_rest_get, http_port, run_id)
                assert body["run"]["info"]["run_id"] == run_id  # type: ignore[index]
            served = [await asyncio.to_thread(_rest_calls, metrics_port + i) for i in range(2)]
            assert sum(served) == 40 and all(n > 0 for n in served), served
        finally:
            for ch in channels:
                await ch.close()
        proc.send_signal(signal.SIGTERM)
        STATS["faults injected"] += 1
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        # The workers were stopped (and reaped) by the supervisor, not left behind.
        for pid in workers:
            assert not _alive(pid), f"worker {pid} outlived its supervisor"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reader.cancel()
