"""The server killed with SIGKILL while 8 clients stream metrics through the Python run
logger: after a restart and the loggers' own retries, every point is present exactly once
(count and checksum compared with what the clients logged)."""

from __future__ import annotations

import asyncio
import math
import signal
import socket

from procs import running

from helpers import STATS, stored_points
from trackd.client import AsyncClient

CLIENTS = 8
POINTS = 6_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _checksums(database_url: str, run_ids: list[str]) -> dict[str, tuple[int, int, float]]:
    out = {}
    for (rid, _), points in (await stored_points(database_url, run_ids)).items():
        out[rid] = (len(points), sum(p[0] for p in points), math.fsum(p[2] for p in points))
    return out


async def test_points_held_by_loggers_arrive_exactly_once_across_sigkill(
    database_url: str,
) -> None:
    port = _free_port()
    target = f"127.0.0.1:{port}"
    first = running(database_url, port)
    server = await first.__aenter__()
    killed = False
    clients = [AsyncClient(target) for _ in range(CLIENTS)]
    try:
        run_ids = [
            (await c.create_run("0", run_name=f"kill-{i}")).info.run_id
            for i, c in enumerate(clients)
        ]
        loggers = [c.logger(chunk_points=500, backoff_max=0.5) for c in clients]
        halfway = asyncio.Event()

        async def produce(i: int) -> None:
            for step in range(POINTS):
                await loggers[i].log(run_ids[i], "loss", step * 0.5, step=step, timestamp=step + 1)
                if step % 200 == 0:
                    await asyncio.sleep(0.01)
                if step == POINTS // 2 and i == 0:
                    halfway.set()

        producers = [asyncio.create_task(produce(i)) for i in range(CLIENTS)]
        await asyncio.wait_for(halfway.wait(), 30)
        server.proc.send_signal(signal.SIGKILL)
        STATS["faults injected"] += 1
        await server.proc.wait()
        killed = True
        await first.__aexit__(None, None, None)
        await asyncio.sleep(0.3)
        async with running(database_url, port):
            await asyncio.wait_for(asyncio.gather(*producers), 60)
            await asyncio.wait_for(asyncio.gather(*(lg.flush(timeout=60) for lg in loggers)), 90)
            reconnects = sum(lg.reconnects for lg in loggers)
            for lg in loggers:
                await lg.close(timeout=30)
        assert reconnects >= CLIENTS, "the loggers did not have to reconnect"
        expected = (POINTS, sum(range(POINTS)), sum(s * 0.5 for s in range(POINTS)))
        got = await _checksums(database_url, run_ids)
        assert got == {r: expected for r in run_ids}
    finally:
        for c in clients:
            await c.close()
        if not killed:
            await first.__aexit__(None, None, None)
