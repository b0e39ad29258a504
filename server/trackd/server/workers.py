"""`trackd serve --workers N`: N server processes sharing one port (SO_REUSEPORT), for
unary-call throughput beyond one Python process. They share nothing but the database, which
is all trackd's correctness rests on: group commits, row locks and stream marks work the
same across processes as across servers. This process runs no gRPC server of its own: it
applies migrations once, starts the workers, forwards SIGTERM/SIGINT to them and exits 0
when they all did."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from trackd.server.config import Config, to_env

log = logging.getLogger(__name__)


def _listen_address(cfg: Config) -> tuple[str, int]:
    host, _, port = cfg.listen.rpartition(":")
    if int(port) != 0:
        return host, int(port)
    # Every worker must bind the same port: choose one now.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host.strip("[]"), 0))
        return host, int(s.getsockname()[1])


def _http_listen(cfg: Config) -> str:
    """The HTTP front's address, shared by every worker (SO_REUSEPORT) like the gRPC one."""
    if not cfg.http_listen:
        return ""
    host, _, port = cfg.http_listen.rpartition(":")
    if int(port) != 0:
        return cfg.http_listen
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host.strip("[]"), 0))
        return f"{host}:{s.getsockname()[1]}"


def _metrics_listen(cfg: Config, index: int) -> str:
    """Worker i serves its metrics on the configured port + i (each process has its own)."""
    if not cfg.metrics_listen:
        return ""
    host, _, port = cfg.metrics_listen.rpartition(":")
    return f"{host}:{int(port) + index}" if int(port) else cfg.metrics_listen


def run(cfg: Config, database_url: str) -> int:
    """Starts cfg.workers server processes and supervises them; returns the exit code."""
    host, port = _listen_address(cfg)
    http_listen = _http_listen(cfg)
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(cfg.workers):
        env = {
            **os.environ,
            **to_env(cfg),
            "TRACKD_DATABASE_URL": database_url,
            "TRACKD_LISTEN": f"{host}:{port}",
            "TRACKD_WORKERS": "1",
            "TRACKD_REUSE_PORT": "true",
            "TRACKD_METRICS_LISTEN": _metrics_listen(cfg, i),
            "TRACKD_HTTP_LISTEN": http_listen,
        }
        child = subprocess.Popen(
            [sys.executable, "-m", "trackd.server", "serve"], env=env, stdin=subprocess.DEVNULL
        )
        children.append(child)
        log.info("started worker %s (pid %s) on %s:%s", i, child.pid, host, port)
    log.info("started %s workers on %s:%s", cfg.workers, host, port)
    codes: dict[int, int] = {}
    while len(codes) < len(children):
        for child in children:
            if child.pid not in codes and child.poll() is not None:
                codes[child.pid] = child.returncode
                if not stopping:
                    log.error(
                        "worker pid %s exited with %s; stopping the others",
                        child.pid,
                        child.returncode,
                    )
                    stop(signal.SIGTERM, None)
        time.sleep(0.1)
    failed = {pid: code for pid, code in codes.items() if code != 0}
    if failed:
        log.error("workers exited with errors: %s", failed)
        return 1
    log.info("all workers stopped")
    return 0
