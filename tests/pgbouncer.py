"""A pgbouncer process for the tests: transaction pooling in front of the test PostgreSQL,
on 127.0.0.1 and a free port, with a generated configuration in a temporary directory.

`TRACKD_TEST_PGBOUNCER=1` makes conftest.py start one for the session and give every
in-process server its URL (see conftest.py); tests/test_pooler.py starts its own, with a
small pool. The binary is TRACKD_TEST_PGBOUNCER_BIN, else `pgbouncer` on the PATH, else
/usr/sbin/pgbouncer (Debian's package)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit


def binary() -> str | None:
    """The pgbouncer executable, or None if there is none."""
    configured = os.environ.get("TRACKD_TEST_PGBOUNCER_BIN")
    if configured:
        return configured
    for candidate in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def wanted() -> bool:
    """Whether the suite should run its servers through pgbouncer (TRACKD_TEST_PGBOUNCER)."""
    return os.environ.get("TRACKD_TEST_PGBOUNCER", "").strip().lower() in ("1", "true", "yes", "on")


def _unprivileged() -> pwd.struct_passwd:
    """The account pgbouncer switches to when started as root."""
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("pgbouncer will not run as root, and no postgres or nobody account")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Bouncer:
    """A running pgbouncer: its port, and the PostgreSQL it stands in front of."""

    port: int
    pg_host: str
    pg_port: int
    pid: int
    logfile: Path

    def url(self, direct_url: str) -> str:
        """`direct_url` (a database on the PostgreSQL behind) through this pgbouncer."""
        parts = urlsplit(direct_url)
        user = parts.username or ""
        if parts.password is not None:
            user += f":{parts.password}"
        netloc = f"{user}@127.0.0.1:{self.port}" if user else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def fronts(self, url: str) -> bool:
        """Whether `url` names the PostgreSQL this pgbouncer stands in front of."""
        try:
            parts = urlsplit(url)
            return (parts.hostname, parts.port or 5432) == (self.pg_host, self.pg_port)
        except ValueError:
            return False


def _config(directory: Path, port: int, pg_url: str, pool_size: int) -> Path:
    parts = urlsplit(pg_url)
    host = parts.hostname or "127.0.0.1"
    pg_port = parts.port or 5432
    user = unquote(parts.username or "postgres")
    password = unquote(parts.password or "")
    users = directory / "users.txt"
    # With auth_type = trust, pgbouncer takes no password from clients, and logs in to
    # PostgreSQL with the one listed here (if the server wants one).
    users.write_text(f'"{user}" "{password}"\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        f"""[databases]
* = host={host} port={pg_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
admin_users = {user}
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 2000
max_db_connections = 0
server_lifetime = 3600
server_idle_timeout = 60
; After a failed login to PostgreSQL (a restarting server), pgbouncer waits this long before
; trying again; its default, 15 s, leaves every client failing that long after a restart.
server_login_retry = 1
query_wait_timeout = 120
logfile = {directory / "pgbouncer.log"}
pidfile = {directory / "pgbouncer.pid"}
log_connections = 0
log_disconnections = 0
"""
    )
    return ini


@contextlib.contextmanager
def running(pg_url: str, *, pool_size: int = 8) -> Iterator[Bouncer]:
    """A pgbouncer in transaction mode in front of the PostgreSQL of `pg_url`, with
    `pool_size` server connections per database and user; stopped (by its PID) on exit."""
    exe = binary()
    if exe is None:
        raise RuntimeError("no pgbouncer binary (set TRACKD_TEST_PGBOUNCER_BIN)")
    parts = urlsplit(pg_url)
    with tempfile.TemporaryDirectory(prefix="trackd-pgbouncer-") as tmp:
        directory = Path(tmp)
        port = _free_port()
        ini = _config(directory, port, pg_url, pool_size)
        command = [exe, "--quiet", str(ini)]
        if os.geteuid() == 0:
            # pgbouncer refuses to run as root: it switches to another user (-u), who must
            # own its directory (the log and the PID file).
            account = _unprivileged()
            for path in (directory, *directory.iterdir()):
                os.chown(path, account.pw_uid, account.pw_gid)
            command[1:1] = ["-u", account.pw_name]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    log = directory / "pgbouncer.log"
                    err += log.read_text() if log.exists() else ""
                    raise RuntimeError(f"pgbouncer exited with {proc.returncode}: {err}")
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.5),
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("pgbouncer did not listen within 15 s")
                time.sleep(0.05)
            yield Bouncer(
                port,
                parts.hostname or "127.0.0.1",
                parts.port or 5432,
                proc.pid,
                directory / "pgbouncer.log",
            )
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stderr is not None:
                proc.stderr.close()
