"""AsyncClient's calls for runs as they train: a heartbeat, plot-ready envelopes of metric
series at any zoom, and watching a run (or an experiment's runs) push its updates."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable

import grpc

from trackd.client import checks, inputs
from trackd.client.calls import Calls, rpc
from trackd.client.errors import from_rpc_error
from trackd.client.live_entities import MetricAxis, MetricEnvelope, RunUpdate, axis_number
from trackd.client.transfer import retryable
from trackd.v1 import run_service_pb2

# Reconnects of a watch in a row without receiving anything, before it gives up.
DEFAULT_WATCH_RETRIES = 8


class LiveCalls(Calls):
    """Liveness, envelopes and watching."""

    @rpc
    async def heartbeat(self, run_id: str) -> None:
        """Tells the server the run is alive: a RUNNING run silent (no heartbeat, no point)
        for longer than the server's liveness window reads as UNRESPONSIVE until it
        beats again. A run started with `start_run` beats by itself.

        Raises:
            NotFoundError: no such run. FailedPreconditionError: the run is deleted.
        """
        req = run_service_pb2.HeartbeatRequest(run_id=run_id)
        await self.runs.Heartbeat(req, timeout=self.timeout)

    @rpc
    async def get_metric_envelope(
        self,
        run_ids: str | Iterable[str],
        keys: str | Iterable[str],
        axis: MetricAxis | str | int = MetricAxis.STEP,
        x_min: int | None = None,
        x_max: int | None = None,
        buckets: int = 1000,
        *,
        as_numpy: bool | None = None,
    ) -> dict[tuple[str, str], MetricEnvelope]:
        """Plot-ready envelopes of metric series, in one streamed StreamMetricEnvelopes
        call: for each (run, key), up to `buckets` buckets over the x range, each exact
        over every point in it (first, last, min, max, counts of points, NaN, +Inf and
        -Inf), so that no spike is lost at any zoom. A series with no more points in the
        range than buckets comes back point for point (`points` is True).

        Args:
            run_ids: a run id or up to 100 of them.
            keys: a metric key or up to 100 of them; a run without a key has no entry.
            axis: "step", "wall_time" (ms since the epoch) or "relative_time" (ms since
                the run's start).
            x_min, x_max: the x range, inclusive, in the axis' unit (zoom); None for the
                series' first or last point.
            buckets: buckets per series, 1 to 2000 (the server aligns buckets to its
                pre-aggregated blocks, so there may be fewer).
            as_numpy: numpy columns (True), plain lists (False), or numpy when it is
                installed (None).

        Returns:
            {(run_id, key): MetricEnvelope}, in the order the server sent them.

        Raises:
            InvalidArgumentError: a malformed id or key, too many runs or keys, x_min
                above x_max, or buckets out of range. NotFoundError: an unknown run.
            ImportError: as_numpy is True and numpy is not installed.
        """
        req = run_service_pb2.StreamMetricEnvelopesRequest(
            run_ids=inputs.ids(run_ids, "run_ids"),
            metric_keys=[checks.check_key(k) for k in inputs.ids(keys, "keys")],
            axis=axis_number(axis),
            buckets=buckets,
        )
        if x_min is not None:
            req.x_min = checks.step_value(x_min, "x_min")
        if x_max is not None:
            req.x_max = checks.step_value(x_max, "x_max")
        out: dict[tuple[str, str], MetricEnvelope] = {}
        async for resp in self.runs.StreamMetricEnvelopes(req, timeout=self.timeout):
            out[resp.run_id, resp.metric_key] = MetricEnvelope.from_proto(resp, as_numpy)
        return out

    async def watch_run(
        self,
        run_id: str | None = None,
        *,
        experiment_id: str | None = None,
        keys: str | Iterable[str] | None = None,
        resume_position: str | None = None,
        max_retries: int = DEFAULT_WATCH_RETRIES,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> AsyncIterator[RunUpdate]:
        """What happens to a run (or to every run of an experiment) as it commits: new
        points (columns), status changes, new params and tags, and a heartbeat every 5 s
        of silence, over one WatchRun call, as an async iterator of RunUpdate (a
        blocking iterator in Client). Each update carries its `position`; when the
        connection drops, the iterator reconnects by itself from the last position
        received (with backoff and jitter), so that nothing is lost or seen twice.
        Leaving the loop (`break`, or `aclose()`) cancels the call.

        Args:
            run_id: the run to watch; or
            experiment_id: the experiment whose runs to watch (runs created while
                watching included).
            keys: a key or keys whose points to receive; None for every key.
            resume_position: the position of the last update received in an earlier
                watch, to receive what followed it; None to start now.
            max_retries: reconnects in a row with nothing received before giving up.
            backoff_initial, backoff_max: the first and the longest wait before a
                reconnect, in seconds (doubling in between).

        Yields:
            RunUpdate, each with its position.

        Raises:
            ValueError: neither or both of run_id and experiment_id.
            InvalidArgumentError: a malformed id or key, or a position this server did
                not give. NotFoundError: an unknown run or experiment.
                FailedPreconditionError: a position older than the server keeps.
            TrackdError: the connection failed max_retries + 1 times in a row.
        """
        if (run_id is None) == (experiment_id is None):
            raise ValueError("give exactly one of run_id and experiment_id")
        metric_keys = [checks.check_key(k) for k in inputs.ids(keys or (), "keys")]
        position = resume_position or ""
        failures = 0
        while True:
            req = run_service_pb2.WatchRunRequest(metric_keys=metric_keys, resume_position=position)
            if run_id is not None:
                req.run_id = run_id
            else:
                req.experiment_id = experiment_id or ""
            call = self.runs.WatchRun(req)
            try:
                async for resp in call:
                    failures = 0
                    if resp.position:
                        position = resp.position
                    yield RunUpdate.from_proto(resp)
                return
            except grpc.aio.AioRpcError as err:
                # A dropped connection, not an answer of trackd's (an INTERNAL it sent is final).
                if not retryable(err) or failures >= max_retries:
                    raise from_rpc_error(err) from None
            finally:
                call.cancel()
            delay = min(backoff_max, backoff_initial * 2**failures)
            failures += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))


__all__ = ["DEFAULT_WATCH_RETRIES", "LiveCalls"]
