"""Auth benchmark: what authentication and permission checks cost. The same LogMetric
latency and StreamMetrics ingest loads against a server with auth off and one with
`--auth on` (on the same database), called by an API token of a principal with an EDIT
role in the default workspace (not an admin, so every call pays for the token, the
permission check and the audit record). Rounds alternate off and on so that the machine's
drift hits both. Besides wall-clock figures, it reports the server process's CPU time per
call and per point, which waiting for a core on a shared machine does not inflate.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import uuid

import grpc

from bench.common import ServerProcess, cpu_seconds, server_process
from bench.ingest import _chunks, _stream, log_metric_latency
from trackd.client.credentials import bearer_interceptors
from trackd.v1 import run_service_pb2 as rpb
from trackd.v1 import run_service_pb2_grpc

ROUNDS = 5
CALLS = 1520
STREAMS, POINTS = 8, 62_500


async def _token(database_url: str) -> str:
    """An API token of principal `bench`, EDIT in the default workspace, made by the CLI."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "trackd.server",
        "token",
        "create",
        "--principal",
        "bench",
        "--name",
        uuid.uuid4().hex[:8],
        "--role",
        "default=EDIT",
        "--database-url",
        database_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("TRACKD_")},
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError("trackd token create failed")
    return out.decode().strip()


async def _ingest(stub: run_service_pb2_grpc.RunServiceStub) -> float:
    runs = [
        (await stub.CreateRun(rpb.CreateRunRequest(run_name="auth-bench"))).run.info.run_id
        for _ in range(STREAMS)
    ]
    msgs = [_chunks(uuid.uuid4().hex, r, "loss", POINTS) for r in runs]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.gather(*(_stream(stub, m) for m in msgs))
    return STREAMS * POINTS / (loop.time() - t0)


async def _measure(server: ServerProcess, token: str | None) -> tuple[float, float, float, float]:
    """(LogMetric p50 in ms, server CPU us per LogMetric, ingest points/s, server CPU us
    per ingested point) through one channel."""
    interceptors = bearer_interceptors(token) if token else None
    pid = server.proc.pid
    async with grpc.aio.insecure_channel(server.target, interceptors=interceptors) as ch:
        stub = run_service_pb2_grpc.RunServiceStub(ch)
        cpu0 = cpu_seconds(pid)
        lat = await log_metric_latency(stub, CALLS)
        cpu1 = cpu_seconds(pid)
        rate = await _ingest(stub)
        cpu2 = cpu_seconds(pid)
    return (
        statistics.median(lat) * 1000,
        (cpu1 - cpu0) / CALLS * 1e6,
        rate,
        (cpu2 - cpu1) / (STREAMS * POINTS) * 1e6,
    )


async def run(database_url: str) -> dict[str, dict[str, str]]:
    token = await _token(database_url)
    p50: dict[str, list[float]] = {"off": [], "on": []}
    ingest: dict[str, list[float]] = {"off": [], "on": []}
    call_cpu: dict[str, list[float]] = {"off": [], "on": []}
    point_cpu: dict[str, list[float]] = {"off": [], "on": []}
    async with (
        server_process(database_url, "--access-log", "off") as off,
        server_process(database_url, "--access-log", "off", "--auth", "on") as on,
    ):
        await _measure(off, None)  # warm-up of both servers and the database
        await _measure(on, token)
        for _ in range(ROUNDS):
            for name, server, tok in (("off", off, None), ("on", on, token)):
                lat, per_call, rate, per_point = await _measure(server, tok)
                p50[name].append(lat)
                call_cpu[name].append(per_call)
                ingest[name].append(rate)
                point_cpu[name].append(per_point)
    lat_off, lat_on = statistics.median(p50["off"]), statistics.median(p50["on"])
    ing_off, ing_on = statistics.median(ingest["off"]), statistics.median(ingest["on"])
    cc_off, cc_on = statistics.median(call_cpu["off"]), statistics.median(call_cpu["on"])
    pc_off, pc_on = statistics.median(point_cpu["off"]), statistics.median(point_cpu["on"])
    return {
        "server CPU (user + system), median of rounds": {
            "per LogMetric, auth off / on": (
                f"{cc_off:.0f} / {cc_on:.0f} us ({cc_on / cc_off:.3f}; +{cc_on - cc_off:.0f} us)"
            ),
            "per streamed point, auth off / on": (
                f"{pc_off:.3f} / {pc_on:.3f} us ({pc_on / pc_off:.3f})"
            ),
        },
        f"LogMetric p50, 1 client, {CALLS} calls, median of {ROUNDS} rounds": {
            "auth off": f"{lat_off:.3f} ms (rounds {', '.join(f'{x:.3f}' for x in p50['off'])})",
            "auth on (API token, EDIT role)": (
                f"{lat_on:.3f} ms (rounds {', '.join(f'{x:.3f}' for x in p50['on'])})"
            ),
            "on / off": f"{lat_on / lat_off:.3f} (target <= 1.05)",
        },
        f"StreamMetrics, {STREAMS} streams x {POINTS:,} points, median of {ROUNDS} rounds": {
            "auth off": f"{ing_off:,.0f} points/s",
            "auth on (API token, EDIT role)": f"{ing_on:,.0f} points/s",
            "on / off": f"{ing_on / ing_off:.3f} (target >= 0.98)",
        },
    }
