"""One client over two trackd servers on one database ("host:port,host:port", round robin):
one server is killed with SIGKILL; the client's calls keep succeeding on the other, and the
run loggers whose streams it held resume them there, every point stored exactly once."""

from __future__ import annotations

import asyncio
import math
import signal

from procs import start, stop

from helpers import STATS, stored_points
from trackd.client import AsyncClient

LOGGERS = 4
POINTS = 3_000


async def test_a_client_of_two_servers_survives_the_death_of_one(database_url: str) -> None:
    # One after the other: the first applies the migrations.
    a = await start(database_url)
    b = await start(database_url)
    client = AsyncClient(f"127.0.0.1:{a.port},127.0.0.1:{b.port}", timeout=20)
    try:
        eid = await client.create_experiment("failover")
        run_ids = [(await client.create_run(eid)).info.run_id for _ in range(LOGGERS)]
        # Several loggers: their streams are spread over both servers.
        loggers = [client.logger(chunk_points=200, backoff_max=0.5) for _ in range(LOGGERS)]
        halfway = asyncio.Event()

        async def produce(i: int) -> None:
            for step in range(POINTS):
                await loggers[i].log(run_ids[i], "loss", step * 0.5, step=step, timestamp=step + 1)
                if step % 100 == 0:
                    await asyncio.sleep(0.005)
                if step == POINTS // 2 and i == 0:
                    halfway.set()

        producers = [asyncio.create_task(produce(i)) for i in range(LOGGERS)]
        await asyncio.wait_for(halfway.wait(), 30)
        a.proc.send_signal(signal.SIGKILL)
        STATS["faults injected"] += 1
        await a.proc.wait()
        # Every call after the kill succeeds, on the server left.
        for i in range(30):
            rid = (await client.create_run(eid, run_name=f"after-{i}")).info.run_id
            await client.set_tag(rid, "k", "v")
            assert (await client.get_run(rid)).data.tags["k"] == "v"
        assert len(await client.search_runs(eid, max_results=1000)) == LOGGERS + 30
        await asyncio.wait_for(asyncio.gather(*producers), 60)
        await asyncio.wait_for(asyncio.gather(*(lg.flush(timeout=60) for lg in loggers)), 90)
        reconnects = sum(lg.reconnects for lg in loggers)
        for lg in loggers:
            await lg.close(timeout=30)
        assert reconnects >= 1, "no stream was on the killed server"
        stored = await stored_points(database_url, run_ids)
        expected = (POINTS, sum(range(POINTS)), sum(s * 0.5 for s in range(POINTS)))
        got = {
            rid: (len(p), sum(x[0] for x in p), math.fsum(x[2] for x in p))
            for (rid, _), p in stored.items()
        }
        assert got == {r: expected for r in run_ids}
    finally:
        await stop(a)
        await stop(b)
        await client.close()
