"""Log-call benchmark: what one metric log costs the training loop that makes it.

A tight loop of CALLS calls, in the benchmark's own process, of
- `logger.put(run_id, "loss", value, step)` on a blocking `Client(...).logger()`;
- the same put on a logger whose server does not answer ("call only": the points stay
  buffered, so the figure is the call without the logger's background work);
- `run.log_metric("loss", value, step)` of a blocking `Client(...).start_run(...)` run;
- `logger.log(run_id, "loss", value, step)`, the logger's older checked-point path;
against a baseline loop that only appends the same (run_id, key, value, step) tuple to a
list. The loops are the same but for the call, so the ratio to the baseline is what the
call adds; the figures are medians of ROUNDS rounds, in wall time and in CPU time of the
calling thread (which the other processes on the machine do not inflate). The logger
streams the points to a trackd server process while the loop runs, so the wall figures
include the client's own background work (chunking and sending, on the same interpreter)
and the time the loop waits for a core while the server and PostgreSQL ingest; the flush
after each loop (waiting for the server's acknowledgements) is reported apart, not counted
per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import time
from collections.abc import Callable

from bench.common import server_process
from trackd.client import Client

CALLS = 1_000_000
ROUNDS = 3


Times = tuple[float, float]  # (wall, CPU of the calling thread), in seconds


def _baseline(run_id: str, n: int) -> Times:
    points: list[tuple[str, str, float, int]] = []
    append = points.append
    t0, c0 = time.perf_counter(), time.thread_time()
    for step in range(n):
        append((run_id, "loss", step * 1e-6, step))
    return time.perf_counter() - t0, time.thread_time() - c0


def _loop(call: Callable[[str, str, float, int], None], run_id: str, n: int) -> Times:
    t0, c0 = time.perf_counter(), time.thread_time()
    for step in range(n):
        call(run_id, "loss", step * 1e-6, step)
    return time.perf_counter() - t0, time.thread_time() - c0


def _run_loop(call: Callable[[str, float, int], None], n: int) -> Times:
    t0, c0 = time.perf_counter(), time.thread_time()
    for step in range(n):
        call("loss", step * 1e-6, step)
    return time.perf_counter() - t0, time.thread_time() - c0


def _measure(target: str, n: int, rounds: int) -> dict[str, list[Times]]:
    """(wall, CPU) seconds per call (and per flush) of each loop, one entry per round."""
    times: dict[str, list[Times]] = {}

    def note(name: str, seconds: Times | float, per: int = n) -> None:
        wall, cpu = seconds if isinstance(seconds, tuple) else (seconds, seconds)
        times.setdefault(name, []).append((wall / per, cpu / per))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed
    with Client(target) as client, Client(nowhere) as idle:
        run_id = client.create_run("0", run_name="bench-logcall").info.run_id
        for _ in range(rounds):
            note("baseline", _baseline(run_id, n))

            unsent = idle.logger(capacity=n)
            if hasattr(unsent, "put"):
                note("put, call only", _loop(unsent.put, run_id, n))
            with contextlib.suppress(TimeoutError):
                unsent.close(timeout=0.01)

            logger = client.logger()
            put = getattr(logger, "put", None)
            if put is not None:
                note("put", _loop(put, run_id, n))
                t0 = time.perf_counter()
                logger.flush()
                note("put flush", time.perf_counter() - t0, 1)

            note("log", _loop(logger.log, run_id, n))
            t0 = time.perf_counter()
            logger.close()
            note("log flush", time.perf_counter() - t0, 1)

            with client.start_run("0", run_name="bench-log-metric") as run:
                note("run.log_metric", _run_loop(run.log_metric, n))
                t0 = time.perf_counter()
                run.flush()
                note("run.log_metric flush", time.perf_counter() - t0, 1)
    return times


async def run(database_url: str) -> dict[str, dict[str, str]]:
    async with server_process(database_url) as server:
        times = await asyncio.to_thread(_measure, server.target, CALLS, ROUNDS)
    base_wall = statistics.median(w for w, _ in times["baseline"])
    base_cpu = statistics.median(c for _, c in times["baseline"])
    figures: dict[str, str] = {}
    for name, samples in times.items():
        wall = statistics.median(w for w, _ in samples)
        cpu = statistics.median(c for _, c in samples)
        if name.endswith("flush"):
            figures[name] = f"{wall:.2f} s after the loop (median of {len(samples)})"
            continue
        spread = ", ".join(f"{w * 1e6:.3f}" for w, _ in samples)
        figures[name] = (
            f"{wall * 1e6:.3f} us/call ({1 / wall / 1e6:.2f}M calls/s), "
            f"{wall / base_wall:.1f}x the baseline; CPU {cpu * 1e6:.3f} us/call, "
            f"{cpu / base_cpu:.1f}x (wall rounds: {spread} us)"
        )
    return {f"{CALLS:,} calls in a tight loop, {ROUNDS} rounds": figures}
