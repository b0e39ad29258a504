"""Starting trackd as its own process for fault tests: on 127.0.0.1, stopped by its pid."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass
class Proc:
    """A trackd server process and its port."""

    proc: asyncio.subprocess.Process
    port: int
    drain: asyncio.Task[None]

    async def wait(self, seconds: float) -> int:
        return await asyncio.wait_for(self.proc.wait(), seconds)


async def start(database_url: str, port: int = 0, *flags: str) -> Proc:
    """Starts `python -m trackd.server serve` and waits until it listens."""
    env = {
        **os.environ,
        "TRACKD_DATABASE_URL": database_url,
        "TRACKD_LISTEN": f"127.0.0.1:{port}",
        "TRACKD_LOG_LEVEL": "INFO",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "trackd.server",
        "serve",
        *flags,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    bound = None
    while bound is None:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        if not line:
            raise RuntimeError("trackd exited before listening")
        m = re.search(rb"\(port (\d+)\)", line)
        if m:
            bound = int(m.group(1))

    async def drain() -> None:
        assert proc.stderr is not None
        while await proc.stderr.readline():
            pass

    return Proc(proc, bound, asyncio.create_task(drain()))


async def stop(p: Proc) -> None:
    """Kills the process by its pid if it still runs, and reaps it."""
    if p.proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            p.proc.send_signal(signal.SIGKILL)
        await p.proc.wait()
    p.drain.cancel()


@contextlib.asynccontextmanager
async def running(database_url: str, port: int = 0, *flags: str) -> AsyncIterator[Proc]:
    """A trackd process for the duration of the block."""
    p = await start(database_url, port, *flags)
    try:
        yield p
    finally:
        await stop(p)
