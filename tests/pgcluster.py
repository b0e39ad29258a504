"""A PostgreSQL primary and streaming replicas of its own, for the replica and topology tests:
initdb into a temporary directory, on 127.0.0.1 and free ports, each server a child process
stopped by its pid. As root, the servers run as the `postgres` user (PostgreSQL refuses
root)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

PG_BIN = Path(os.environ.get("TRACKD_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def available() -> str | None:
    """Why a cluster cannot be made here, or None if it can."""
    for tool in ("initdb", "postgres", "pg_basebackup"):
        if not (PG_BIN / tool).exists():
            return f"no {PG_BIN / tool} (set TRACKD_TEST_PG_BIN)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run PostgreSQL as"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(command: list[str]) -> list[str]:
    """`command`, run as `postgres` when this process is root. Through runuser rather than
    Popen(user=...): changing user in the child rules out vfork, and a fork of a process
    running gRPC threads can crash in gRPC's fork handlers before the exec."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


@dataclass
class Server:
    """One PostgreSQL server: its data directory, port and process (None when stopped)."""

    data: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 30.0) -> None:
        """Starts the postmaster as a child process and waits until it accepts connections."""
        assert self.proc is None
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            _as_postgres(
                [
                    str(PG_BIN / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.data}",
                ]
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                if _ready(self.port):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid (from postmaster.pid; the child may be runuser)."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> None:
        """Stops the server by its pid (SIGINT: a fast shutdown) and reaps it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            pid = self.postmaster_pid() if self.proc.args[0] == "runuser" else self.proc.pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid or self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """A fast shutdown and a start on the same port (what `pg_ctl restart` does)."""
        self.stop()
        self.start()


def _ready(port: int) -> bool:
    """Whether the server on `port` accepts connections (pg_isready; blocking, briefly)."""
    done = subprocess.run(
        [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port), "-t", "2"],
        check=False,
    )
    return done.returncode == 0


@dataclass
class Cluster:
    """A primary (wal_level=replica) and the replicas made of it with pg_basebackup -R."""

    root: Path
    primary: Server
    replicas: list[Server] = field(default_factory=list)

    @classmethod
    def create(cls) -> Cluster:
        root = Path(tempfile.mkdtemp(prefix="trackd-pgcluster-"))
        _chown(root)
        data = root / "primary"
        data.mkdir(mode=0o700)
        _chown(data)
        subprocess.run(
            _as_postgres(
                [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-N"]
            ),
            check=True,
            capture_output=True,
        )
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                "\nwal_level = replica\nmax_wal_senders = 10\nhot_standby = on\n"
                "fsync = off\nfull_page_writes = off\nmax_connections = 200\n"
                "wal_receiver_status_interval = 1s\n"
            )
        primary = Server(data, free_port(), root / "primary.log")
        primary.start()
        return cls(root, primary)

    def add_replica(self) -> Server:
        """A streaming replica of the primary (pg_basebackup -R), started."""
        data = self.root / f"replica{len(self.replicas)}"
        subprocess.run(
            _as_postgres(
                [
                    str(PG_BIN / "pg_basebackup"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.primary.port),
                    "-U",
                    "postgres",
                    "-D",
                    str(data),
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                ]
            ),
            check=True,
            capture_output=True,
        )
        replica = Server(data, free_port(), self.root / f"replica{len(self.replicas)}.log")
        replica.start()
        self.replicas.append(replica)
        return replica

    def destroy(self) -> None:
        for server in (*self.replicas, self.primary):
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


async def wait_caught_up(primary_url: str, replica_url: str, seconds: float = 20.0) -> None:
    """Waits until the replica has replayed everything the primary has written so far."""
    import asyncio

    p = await asyncpg.connect(primary_url)
    r = await asyncpg.connect(replica_url)
    try:
        target = await p.fetchval("SELECT pg_current_wal_lsn()")
        deadline = time.monotonic() + seconds
        while not await r.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", target):
            if time.monotonic() > deadline:
                raise TimeoutError("the replica did not catch up")
            await asyncio.sleep(0.02)
    finally:
        await p.close()
        await r.close()
