"""Heartbeats of the runs a logger carries: a task on the client's event loop that sends
one Heartbeat per live run at a set interval, so that the server does not read a run as
UNRESPONSIVE while its process is alive, even when it logs nothing for a long time."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from trackd.v1 import run_service_pb2, run_service_pb2_grpc

log = logging.getLogger(__name__)

# Seconds between two heartbeats of a run; the server's default liveness window is 120 s.
DEFAULT_HEARTBEAT_INTERVAL = 30.0


class Heartbeats:
    """Sends a Heartbeat for each run kept alive: one right away, then every `interval`
    seconds, all from one task on the event loop (never from the thread that logs, and
    without touching the metric buffer). A failed heartbeat is logged at debug level and
    retried at the next beat: liveness is best effort, the run's logging goes on.

    Args:
        stub: RunService stub over a grpc.aio channel.
        interval: seconds between beats; None or 0 sends none.
        loop: the event loop the task runs on.
    """

    def __init__(
        self,
        stub: run_service_pb2_grpc.RunServiceAsyncStub,
        interval: float | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        if interval is not None and interval < 0:
            raise ValueError("heartbeat_interval must be positive, 0 or None")
        self._stub = stub
        self.interval = interval or 0.0
        self._loop = loop
        # Run id -> how many holders keep it alive (nested runs may share a logger).
        self._runs: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._closed = False
        self.sent = 0

    @property
    def runs(self) -> list[str]:
        """The runs kept alive."""
        return list(self._runs)

    def keep_alive(self, run_id: str) -> None:
        """Starts sending heartbeats for a run (right away, then every interval); call on
        the event loop's thread."""
        if not self.interval or self._closed:
            return
        self._runs[run_id] = self._runs.get(run_id, 0) + 1
        if self._task is None:
            self._task = self._loop.create_task(self._beat(), name="trackd-heartbeats")
        self._changed.set()

    def release(self, run_id: str) -> None:
        """Stops sending heartbeats for a run once every holder released it."""
        left = self._runs.get(run_id, 0) - 1
        if left > 0:
            self._runs[run_id] = left
        else:
            self._runs.pop(run_id, None)

    async def close(self) -> None:
        """Stops the heartbeats."""
        self._closed = True
        self._runs.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _beat(self) -> None:
        # Run id -> loop time of its next beat; a run just kept alive is due at once.
        due_at: dict[str, float] = {}
        while True:
            self._changed.clear()
            now = self._loop.time()
            due_at = {r: due_at.get(r, now) for r in self._runs}
            due = [r for r, t in due_at.items() if t <= now]
            for r in due:
                due_at[r] = now + self.interval
            if due:
                await asyncio.gather(*(self._send(r) for r in due))
            wait = min(due_at.values()) - self._loop.time() if due_at else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)

    async def _send(self, run_id: str) -> None:
        try:
            await self._stub.Heartbeat(
                run_service_pb2.HeartbeatRequest(run_id=run_id), timeout=self.interval
            )
            self.sent += 1
        except grpc.aio.AioRpcError as err:
            log.debug("heartbeat of run %s failed: %s %s", run_id, err.code(), err.details())
        except Exception as exc:  # noqa: BLE001 - best effort: a closed channel, say
            log.debug("heartbeat of run %s failed: %r", run_id, exc)


__all__ = ["DEFAULT_HEARTBEAT_INTERVAL", "Heartbeats"]
