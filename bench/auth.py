"""Auth benchmark: what authentication and permission checks cost. The same LogMetric
latency and StreamMetrics ingest loads against a server with auth off and one with
`--auth on` (on the same database), called by an API token of a principal with an EDIT
role in the default workspace (not an admin, so every call pays for the token and the
permission check). Rounds alternate off and on so that the machine's drift hits both.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import uuid

import grpc

from bench.common import server_process
from bench.ingest import _chunks, _stream, log_metric_latency
from trackd.client.credentials import bearer_interceptors
from trackd.v1 import run_service_pb2 as rpb
from trackd.v1 import run_service_pb2_grpc

ROUNDS = 3
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


async def _measure(target: str, token: str | None) -> tuple[float, float]:
    """(LogMetric p50 in ms, ingest points/s) through one channel."""
    interceptors = bearer_interceptors(token) if token else None
    async with grpc.aio.insecure_channel(target, interceptors=interceptors) as ch:
        stub = run_service_pb2_grpc.RunServiceStub(ch)
        lat = await log_metric_latency(stub, CALLS)
        rate = await _ingest(stub)
    return statistics.median(lat) * 1000, rate


async def run(database_url: str) -> dict[str, dict[str, str]]:
    token = await _token(database_url)
    p50: dict[str, list[float]] = {"off": [], "on": []}
    ingest: dict[str, list[float]] = {"off": [], "on": []}
    async with (
        server_process(database_url, "--access-log", "off") as off,
        server_process(database_url, "--access-log", "off", "--auth", "on") as on,
    ):
        await _measure(off.target, None)  # warm-up of both servers and the database
        await _measure(on.target, token)
        for _ in range(ROUNDS):
            for name, server, tok in (("off", off, None), ("on", on, token)):
                lat, rate = await _measure(server.target, tok)
                p50[name].append(lat)
                ingest[name].append(rate)
    lat_off, lat_on = statistics.median(p50["off"]), statistics.median(p50["on"])
    ing_off, ing_on = statistics.median(ingest["off"]), statistics.median(ingest["on"])
    return {
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
