"""MLflow REST benchmark (issue 16): one mlflow-client script against trackd's HTTP front
and against MLflow's own tracking server, each on its own fresh database of the same
PostgreSQL; the script differs only in its tracking URI.

The script's phases, each run against every server in turn before the next phase (so that
the machine's drift hits all of them alike):
- log_batch: a 100,000-point series ("loss", steps 0..N-1) logged by calls of 1,000 points;
- get_metric_history of that series (the client pages it, 25,000 points a page);
- search_runs over an experiment of 1,000 runs, each with 10 params, 10 metrics and 10
  tags (loaded by create_run + log_batch, 4 client threads): `metrics.m0 < X AND
  params.p1 = 'vY'` ordered by `metrics.m2 DESC`, 100 results a page, X and Y varying the
  same way on every server; the pages must hold the same runs in the same order.

MLflow's server (the full `mlflow` package, which trackd does not depend on) runs from a
virtualenv the benchmark makes on first use, bench/.mlflow-venv; when it cannot be made
or the server does not start, trackd's side runs alone and the figures say why. The same
script also runs through trackd's own Python client over gRPC (trackd.client.Client, whose
methods have MlflowClient's names), for reference.

Every server listens on 127.0.0.1; every loop stops at its count or after LOOP_SECONDS;
MLflow's server runs in its own process group, stopped by its pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import fresh_database, percentile, server_process, with_database

MLFLOW_VERSION = "3.17.2"
VENV = Path(__file__).resolve().parent / ".mlflow-venv"
VENV_STAMP = VENV / f".installed-mlflow-{MLFLOW_VERSION}"
INSTALL_SECONDS = 900
START_SECONDS = 180

BATCH = 1_000
POINTS = int(os.environ.get("TRACKD_BENCH_MLFLOW_POINTS", "100000"))
RUNS = int(os.environ.get("TRACKD_BENCH_MLFLOW_RUNS", "1000"))
SEARCHES = 100
HISTORY_READS = 10
LOAD_THREADS = 4
# No loop of the script runs longer than this (it then reports the calls it made).
LOOP_SECONDS = 300.0
SEED = 16


@dataclass
class Side:
    """One server as the script sees it: a client object with MlflowClient's methods and
    the entity classes it takes."""

    name: str
    client: Any
    metric: Callable[..., Any]
    param: Callable[..., Any]
    tag: Callable[..., Any]
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    pages: list[list[str]] = field(default_factory=list)
    run_id: str = ""
    experiment_id: str = ""


def _timed(s: Side, op: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """call(*args, **kwargs), its wall time added to s.samples[op] and the benchmark
    process's CPU time (the client's work: encoding, decoding, building entities) to
    s.samples[op + " cpu"]."""
    cpu, start = time.process_time(), time.perf_counter()
    result = call(*args, **kwargs)
    s.samples.setdefault(op, []).append(time.perf_counter() - start)
    s.samples.setdefault(op + " cpu", []).append(time.process_time() - cpu)
    return result


def _bounded(n: int) -> Iterator[int]:
    """range(n), stopped early once LOOP_SECONDS have passed."""
    end = time.monotonic() + LOOP_SECONDS
    for i in range(n):
        if i and time.monotonic() > end:
            return
        yield i


def phase_log_batch(s: Side) -> None:
    """The POINTS-point series "loss" in calls of BATCH points, each call timed."""
    c = s.client
    exp = c.create_experiment(f"rest-bench-history-{uuid.uuid4().hex[:8]}")
    s.run_id = c.create_run(exp, run_name="history").info.run_id
    t0 = int(time.time() * 1000)
    warm = c.create_run(exp, run_name="warm-up").info.run_id
    for w in range(3):
        c.log_batch(warm, metrics=[s.metric("w", 0.5, t0, w * BATCH + i) for i in range(BATCH)])
    for call in _bounded(POINTS // BATCH):
        batch = [
            s.metric("loss", 1.0 / (1 + step) + (step % 7) * 1e-4, t0 + step, step)
            for step in range(call * BATCH, (call + 1) * BATCH)
        ]
        _timed(s, "log_batch", c.log_batch, s.run_id, metrics=batch)


def phase_history(s: Side) -> None:
    """get_metric_history of the series, each read timed; checks the point count."""
    expected = len(s.samples["log_batch"]) * BATCH
    for _ in _bounded(HISTORY_READS):
        history = _timed(s, "get_metric_history", s.client.get_metric_history, s.run_id, "loss")
        if len(history) != expected:
            raise RuntimeError(f"{s.name}: {len(history)} points read, {expected} logged")


def _metric_value(i: int, k: int) -> float:
    """Metric m{k} of run i: distinct across runs for each k (1,000,003 is prime)."""
    return (i * 7919 + k * 104729) % 1_000_003 / 1_000_003


def phase_load_runs(s: Side) -> None:
    """RUNS runs, each with 10 params, 10 metrics and 10 tags, by create_run + log_batch
    from LOAD_THREADS threads (timed as a whole, not a target)."""
    c = s.client
    s.experiment_id = c.create_experiment(f"rest-bench-search-{uuid.uuid4().hex[:8]}")
    t0 = int(time.time() * 1000)

    def load(i: int) -> None:
        run_id = c.create_run(s.experiment_id, start_time=t0 + i, run_name=f"run-{i}").info.run_id
        c.log_batch(
            run_id,
            metrics=[s.metric(f"m{k}", _metric_value(i, k), t0, 0) for k in range(10)],
            params=[s.param(f"p{k}", f"v{(i + k) % 4}") for k in range(10)],
            tags=[s.tag(f"t{k}", f"tag-{(i + k) % 50}") for k in range(10)],
        )

    start = time.perf_counter()
    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        list(pool.map(load, range(RUNS)))
    s.notes["load"] = f"{time.perf_counter() - start:.1f} s"


def phase_search(s: Side) -> None:
    """SEARCHES searches (after 3 warm-up searches) of 100 results, each timed; keeps the
    run names of each page."""
    rng = random.Random(SEED)
    queries = [(round(rng.uniform(0.5, 0.95), 3), rng.randrange(4)) for _ in range(SEARCHES)]

    def search(x: float, y: int) -> list[str]:
        page = s.client.search_runs(
            [s.experiment_id],
            filter_string=f"metrics.m0 < {x} AND params.p1 = 'v{y}'",
            max_results=100,
            order_by=["metrics.m2 DESC"],
        )
        return [r.info.run_name for r in page]

    for x, y in queries[:3]:
        search(x, y)
    for n in _bounded(SEARCHES):
        s.pages.append(_timed(s, "search_runs", search, *queries[n]))


PHASES = [phase_log_batch, phase_history, phase_load_runs, phase_search]


# MLflow's server


async def _mlflow_python() -> tuple[Path | None, str]:
    """The python of bench/.mlflow-venv, made with mlflow==MLFLOW_VERSION and psycopg2 on
    first use; or None and why it could not be made."""
    python = VENV / "bin" / "python"
    if VENV_STAMP.exists():
        return python, "ready"
    print(f"# making {VENV} (mlflow=={MLFLOW_VERSION}, psycopg2-binary; a few minutes)")
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            f"mlflow=={MLFLOW_VERSION}",
            "psycopg2-binary",
        ],
    ]
    end = time.monotonic() + INSTALL_SECONDS
    for cmd in steps:
        with tempfile.TemporaryFile() as out:
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=out, stderr=out)
            try:
                await asyncio.wait_for(proc.wait(), max(1.0, end - time.monotonic()))
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return None, f"`{' '.join(cmd[-3:])}` took over {INSTALL_SECONDS} s"
            if proc.returncode != 0:
                out.seek(0)
                tail = out.read().decode(errors="replace").strip().splitlines()[-1:]
                return None, f"`{' '.join(cmd[-3:])}` failed: {' '.join(tail)}"
    VENV_STAMP.touch()
    return python, "made"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextlib.asynccontextmanager
async def mlflow_server(python: Path, backend_url: str) -> AsyncIterator[str]:
    """`mlflow server` on 127.0.0.1 and a free port, one worker, its artifacts in a
    temporary folder, in its own process group (its workers are children); yields its
    tracking URI once /health answers; SIGTERM (then SIGKILL) to the group at the end."""
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    with (
        tempfile.TemporaryDirectory(prefix="trackd-bench-mlflow-") as artifacts,
        tempfile.NamedTemporaryFile(prefix="trackd-bench-mlflow-", suffix=".log") as logfile,
    ):
        proc = await asyncio.create_subprocess_exec(
            str(python.parent / "mlflow"),
            "server",
            "--backend-store-uri",
            backend_url,
            "--default-artifact-root",
            artifacts,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            stdout=logfile,
            stderr=logfile,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        )
        try:
            end = time.monotonic() + START_SECONDS
            while not await asyncio.to_thread(_healthy, uri + "/health"):
                if proc.returncode is not None or time.monotonic() > end:
                    log = await asyncio.to_thread(Path(logfile.name).read_bytes)
                    tail = log.decode(errors="replace").strip().splitlines()[-3:]
                    raise RuntimeError(f"MLflow's server did not start: {' | '.join(tail)}")
                await asyncio.sleep(0.5)
            yield uri
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
            # A worker left behind after its parent exited is still in the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


async def _version(python: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(python),
        "-c",
        "import mlflow, sqlalchemy; print(mlflow.__version__, sqlalchemy.__version__)",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    mlflow_v, _, sa_v = out.decode().strip().partition(" ")
    return f"mlflow {mlflow_v} (SQLAlchemy {sa_v}, uvicorn, 1 worker)"


# The run


def _mlflow_side(name: str, uri: str) -> Side:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    return Side(name, MlflowClient(tracking_uri=uri), Metric, Param, RunTag)


def _grpc_side(target: str) -> Side:
    from trackd.client import Client
    from trackd.client.entities import Metric, Param, RunTag

    return Side("trackd gRPC (trackd.client)", Client(target), Metric, Param, RunTag)


def _ms(samples: list[float]) -> str:
    if not samples:
        return "-"
    return (
        f"p50 {percentile(samples, 50) * 1000:.2f} ms, p99 {percentile(samples, 99) * 1000:.2f} ms"
        f" (n={len(samples)})"
    )


def _report(sides: list[Side], skipped: str) -> dict[str, dict[str, str]]:
    names = {
        "log_batch": f"log_batch, {BATCH:,} metrics a call",
        "get_metric_history": f"get_metric_history, {POINTS:,} points (pages of 25,000)",
        "search_runs": f"search_runs over {RUNS:,} runs, filter + order_by a metric, 100 a page",
    }
    targets = {"log_batch": 10, "get_metric_history": 10, "search_runs": 5}
    rest = next(s for s in sides if s.name == "trackd REST")
    mlflow = next((s for s in sides if s.name.startswith("MLflow")), None)
    out: dict[str, dict[str, str]] = {}
    for op, title in names.items():
        figures = {s.name: _ms(s.samples.get(op, [])) for s in sides}
        if op == "log_batch":
            for s in sides:
                if s.samples.get(op):
                    rate = BATCH / statistics.median(s.samples[op])
                    figures[s.name] += f", {rate:,.0f} metrics/s at p50"
        for s in sides:
            if s.samples.get(op):
                figures[f"{s.name}: client CPU a call (this process)"] = _ms(s.samples[op + " cpu"])
        if mlflow is not None and mlflow.samples.get(op) and rest.samples.get(op):
            ratio = statistics.median(mlflow.samples[op]) / statistics.median(rest.samples[op])
            ratio99 = percentile(mlflow.samples[op], 99) / percentile(rest.samples[op], 99)
            verdict = "met" if ratio >= targets[op] else "missed"
            figures["MLflow / trackd REST"] = (
                f"{ratio:.1f}x at p50, {ratio99:.1f}x at p99 (target >= {targets[op]}x: {verdict})"
            )
            # What is left of a call's median without the client's own CPU: the server, the
            # network stack and waiting for a core (an estimate, the calls being sequential).
            m_srv, r_srv = (
                statistics.median(x.samples[op]) - statistics.median(x.samples[op + " cpu"])
                for x in (mlflow, rest)
            )
            figures["MLflow / trackd REST without the client's CPU (estimate)"] = (
                f"{m_srv * 1000:.1f} / {r_srv * 1000:.1f} ms = {m_srv / max(r_srv, 1e-6):.1f}x"
            )
        out[title] = figures
    out["setup"] = {s.name: f"loaded {RUNS:,} runs in {s.notes.get('load', '-')}" for s in sides}
    for s in sides:
        if s is not rest:
            same = s.pages == rest.pages
            out["setup"][f"same search pages (runs, order) as trackd REST: {s.name}"] = str(same)
    if mlflow is None:
        out["setup"]["MLflow's server"] = f"skipped: {skipped}"
    return out


async def run(database_url: str) -> dict[str, dict[str, str]]:
    # The mlflow client retries failed calls for minutes by default: fail at once instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    python, status = await _mlflow_python()
    load_before = os.getloadavg()
    versions = {"client": f"mlflow-skinny {_skinny_version()}"}
    async with contextlib.AsyncExitStack() as stack:
        trackd = await stack.enter_async_context(
            server_process(database_url, "--http-listen", "127.0.0.1:0")
        )
        sides = [
            _mlflow_side("trackd REST", f"http://127.0.0.1:{trackd.http_port}"),
            _grpc_side(trackd.target),
        ]
        stack.callback(sides[1].client.close)
        skipped = status
        # The databases whose statistics are refreshed after the load (see below).
        analyzed = [database_url]
        if python is not None:
            try:
                admin = with_database(database_url, "postgres")
                mlflow_db = await stack.enter_async_context(fresh_database(admin))
                analyzed.append(mlflow_db)
                # SQLAlchemy 2.1 takes postgresql:// for psycopg 3: name psycopg2.
                mlflow_db = "postgresql+psycopg2://" + mlflow_db.split("://", 1)[1]
                uri = await stack.enter_async_context(mlflow_server(python, mlflow_db))
                versions["MLflow's server"] = await _version(python)
                sides.insert(0, _mlflow_side("MLflow server", uri))
            except (RuntimeError, OSError, asyncpg.PostgresError) as exc:
                skipped = str(exc)
        for phase in PHASES:
            if phase is phase_search:
                # Right after a load of 1,000 runs no table has statistics yet, and both
                # servers' planners guess (trackd's search took 66 ms instead of 5 ms);
                # autovacuum would ANALYZE them within a minute. Do it now, on both.
                for url in analyzed:
                    conn = await asyncpg.connect(url)
                    try:
                        await conn.execute("ANALYZE")
                    finally:
                        await conn.close()
            for side in sides:
                print(f"# {phase.__name__} on {side.name}", flush=True)
                await asyncio.to_thread(phase, side)
        report = _report(sides, skipped)
    report["versions"] = versions
    report["machine"] = {
        "cores": str(os.cpu_count()),
        "load average (1, 5, 15 min) before / after": (
            f"{' '.join(f'{x:.2f}' for x in load_before)} /"
            f" {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        ),
    }
    return report


def _skinny_version() -> str:
    from importlib.metadata import version

    return version("mlflow-skinny")
