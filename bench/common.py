"""What every benchmark needs: a fresh database on the same PostgreSQL as the tests, a
trackd server in its own process, and latency statistics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import statistics
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    """TRACKD_BENCH_DATABASE_URL, else TRACKD_TEST_DATABASE_URL, else an embedded
    PostgreSQL in a temporary folder."""
    url = os.environ.get("TRACKD_BENCH_DATABASE_URL") or os.environ.get("TRACKD_TEST_DATABASE_URL")
    if url:
        yield url
        return
    import pgserver  # type: ignore[import-untyped,unused-ignore]

    with tempfile.TemporaryDirectory(prefix="trackd-bench-pg-") as data:
        server = pgserver.get_server(data, cleanup_mode="stop")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name`."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextlib.asynccontextmanager
async def kept_or_fresh_database(pg_url: str) -> AsyncIterator[str]:
    """The database TRACKD_BENCH_KEEP_DATABASE names, created when missing and never dropped
    (so that a scenario with a long load, search-1m, can reuse what an earlier run loaded);
    else a fresh one (see fresh_database)."""
    name = os.environ.get("TRACKD_BENCH_KEEP_DATABASE")
    if not name:
        async with fresh_database(pg_url) as url:
            yield url
        return
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise SystemExit("TRACKD_BENCH_KEEP_DATABASE: a lower-case database name")
    admin = await asyncpg.connect(pg_url)
    try:
        if not await admin.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name
        ):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    print(f"# kept database {name} (TRACKD_BENCH_KEEP_DATABASE): not dropped")
    yield with_database(pg_url, name)


@contextlib.asynccontextmanager
async def fresh_database(pg_url: str) -> AsyncIterator[str]:
    """A new empty database, dropped afterwards."""
    name = f"trackd_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        yield with_database(pg_url, name)
    finally:
        admin = await asyncpg.connect(pg_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (steadier than wall time on a shared
    machine: it does not count waiting for a core)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def backend_cpu_seconds(conn: asyncpg.Connection) -> float | None:
    """CPU time so far of the PostgreSQL backends serving trackd on `conn`'s database, or
    None when PostgreSQL runs elsewhere (its processes not visible here)."""
    pids = await conn.fetch(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'trackd'"
    )
    try:
        return sum(cpu_seconds(r["pid"]) for r in pids)
    except OSError:
        return None


@dataclass
class ServerProcess:
    """A trackd server started as its own process, stopped by its pid."""

    proc: asyncio.subprocess.Process
    port: int
    # The HTTP front's port (MLflow's REST API), when the server was started with
    # --http-listen.
    http_port: int | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        """Peak resident memory of the server process (VmHWM), in MB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")


@contextlib.asynccontextmanager
async def server_process(
    database_url: str, *extra: str, module: str = "trackd.server", tree: str | None = None
) -> AsyncIterator[ServerProcess]:
    """Runs `python -m trackd.server serve` (or another `module` with trackd's command
    line) on 127.0.0.1 and a free port, its log going to a file (reading it here would take
    CPU from the benchmark's clients); SIGTERM (then SIGKILL) to its pid at the end.

    `tree`: the root of another trackd source tree (a git worktree of another commit, say)
    whose server/ and client/ folders come first on the server's PYTHONPATH, so that the
    server runs that tree's code with this environment's packages."""
    env = {
        **os.environ,
        "TRACKD_DATABASE_URL": database_url,
        "TRACKD_LISTEN": "127.0.0.1:0",
        "TRACKD_LOG_LEVEL": "INFO",
    }
    if tree is not None:
        paths = [os.path.join(tree, "server"), os.path.join(tree, "client")]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
    with tempfile.NamedTemporaryFile(prefix="trackd-bench-", suffix=".log") as logfile:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            "serve",
            *extra,
            env=env,
            stderr=logfile,
        )
        try:
            port = http_port = None
            want_http = "--http-listen" in extra
            for _ in range(600):
                log = await asyncio.to_thread(_read, logfile.name)
                m = re.search(rb"\(port (\d+)\)", log)
                h = re.search(rb"MLflow REST API on \S+ \(port (\d+)\)", log)
                if m and (h or not want_http):
                    port = int(m.group(1))
                    http_port = int(h.group(1)) if h else None
                    break
                if proc.returncode is not None:
                    raise RuntimeError("trackd exited before listening")
                await asyncio.sleep(0.1)
            if port is None:
                raise RuntimeError("trackd did not start listening within 60 s")
            yield ServerProcess(proc, port, http_port)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def percentile(samples: list[float], p: float) -> float:
    """The p-th percentile (0-100) of samples, nearest-rank."""
    ordered = sorted(samples)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def summary_ms(samples: list[float]) -> str:
    """p50/p99/mean of latencies given in seconds, as milliseconds."""
    return (
        f"p50 {percentile(samples, 50) * 1000:.2f} ms, p99 {percentile(samples, 99) * 1000:.2f} ms,"
        f" mean {statistics.fmean(samples) * 1000:.2f} ms (n={len(samples)})"
    )
