"""The asyncio client: every trackd call under MlflowClient's name, with plain Python results
(trackd.client.entities), plus `start_run` and the streaming logger."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc

from trackd.client.artifact_calls import ArtifactCalls
from trackd.client.credentials import TlsArg, open_channel, resolve_tls, resolve_token
from trackd.client.experiment_calls import ExperimentCalls
from trackd.client.heartbeat import DEFAULT_HEARTBEAT_INTERVAL
from trackd.client.inputs import MetricLike, RunSourceLike, now_ms
from trackd.client.live_calls import LiveCalls
from trackd.client.logger import (
    DEFAULT_CAPACITY,
    DEFAULT_CHUNK_POINTS,
    DEFAULT_MAX_INFLIGHT,
    AsyncMetricLogger,
    OnFull,
)
from trackd.client.model_calls import LoggedModelCalls
from trackd.client.routing import LsnTracker, channel_options, channel_target
from trackd.client.run_calls import RunCalls
from trackd.client.system_metrics import DEFAULT_SYSTEM_METRICS_INTERVAL
from trackd.v1 import (
    artifact_service_pb2_grpc,
    experiment_service_pb2_grpc,
    logged_model_service_pb2_grpc,
    run_service_pb2_grpc,
)

if TYPE_CHECKING:
    from trackd.client.active_run import AsyncActiveRun

DEFAULT_TARGET = "127.0.0.1:50051"
# Where the clients and the fluent API connect when given no target.
TRACKING_URI_ENV = "TRACKD_TRACKING_URI"

# The client method of each RPC whose name is not the RPC's in snake_case. Every other RPC
# of the contract has a method of its own name in both clients (tests/test_client_api.py
# walks the service descriptors to keep it so).
RPC_METHOD_NAMES = {
    "trackd.v1.ExperimentService.UpdateExperiment": "rename_experiment",
    "trackd.v1.RunService.StreamMetrics": "logger",
    "trackd.v1.RunService.StreamMetricHistory": "iter_metric_columns",
    "trackd.v1.RunService.StreamMetricEnvelopes": "get_metric_envelope",
    "trackd.v1.LoggedModelService.LogLoggedModelParams": "log_model_params",
}


def rpc_method_name(full_name: str) -> str:
    """The client method serving the RPC `trackd.v1.Service.Method`."""
    if full_name in RPC_METHOD_NAMES:
        return RPC_METHOD_NAMES[full_name]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", full_name.rsplit(".", 1)[1]).lower()


def resolve_target(target: str | None) -> str:
    """The gRPC target: the argument, else $TRACKD_TRACKING_URI, else 127.0.0.1:50051. A
    `grpc://` prefix is dropped."""
    target = target or os.environ.get(TRACKING_URI_ENV) or DEFAULT_TARGET
    return target.removeprefix("grpc://").rstrip("/")


class AsyncClient(ExperimentCalls, RunCalls, LiveCalls, LoggedModelCalls, ArtifactCalls):
    """trackd over one grpc.aio channel, with MlflowClient's method names. Use as
    `async with AsyncClient(target) as c:` or call `close()`. Failed calls raise
    trackd.client.TrackdError subclasses; bad arguments raise TypeError or
    InvalidArgumentError before anything is sent.

    Args:
        target: "host:port" (a `grpc://` prefix is allowed), several servers as
            "host1:port1,host2:port2", or a gRPC target such as "dns:///name:port" (every
            address the name resolves to); calls are spread over the servers round robin,
            and idempotent ones retried on another when one is unavailable. None means
            $TRACKD_TRACKING_URI, else 127.0.0.1:50051.
        channel: a channel to use instead of opening one (not closed by `close()`); it
            carries its own credentials (`token` and `tls` are then not used).
        timeout: deadline of each unary call, in seconds; None waits as long as it takes.
        token: bearer token sent as `authorization: Bearer ...` on every call (an API token
            from `trackd token create`, or a JWT); None means $TRACKD_TOKEN, else none.
        tls: True for TLS with the system's roots, or a TlsConfig (or dict) with `ca`,
            `cert`, `key` PEM paths (cert and key for mTLS); None means TLS when
            $TRACKD_TLS_CA, $TRACKD_TLS_CERT or $TRACKD_TLS_KEY is set, else plaintext.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float | None = 30.0,
        token: str | None = None,
        tls: TlsArg = None,
    ) -> None:
        self.target = resolve_target(target)
        self._owns_channel = channel is None
        # The highest WAL position seen, sent on every call (read-your-writes with replicas).
        self.lsn = LsnTracker()
        self.channel = channel or open_channel(
            channel_target(self.target),
            resolve_token(token),
            resolve_tls(tls),
            options=[
                # Reconnect soon after a server restart (gRPC's default backoff grows to 120s).
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
                *channel_options(),
            ],
            interceptors=self.lsn.interceptors(),
        )
        self.timeout = timeout
        self.experiments = experiment_service_pb2_grpc.ExperimentServiceStub(self.channel)
        self.runs = run_service_pb2_grpc.RunServiceStub(self.channel)
        self.models = logged_model_service_pb2_grpc.LoggedModelServiceStub(self.channel)
        self.artifacts = artifact_service_pb2_grpc.ArtifactServiceStub(self.channel)
        self._loggers: set[AsyncMetricLogger] = set()

    def logger(
        self,
        *,
        capacity: int = DEFAULT_CAPACITY,
        on_full: OnFull = "block",
        chunk_points: int = DEFAULT_CHUNK_POINTS,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        **options: Any,
    ) -> AsyncMetricLogger:
        """A buffered logger streaming points of any runs over StreamMetrics; closed by
        `close()` unless closed before. Call it with the event loop running.

        Args:
            capacity: most points held unacknowledged (buffered or in flight).
            on_full: "block" (wait for room) or "raise" (BufferFullError) when full.
            chunk_points: most points per chunk.
            max_inflight: most chunks sent and not yet acknowledged.
            **options: further AsyncMetricLogger options (ack_timeout, stream_id,
                backoff_initial, backoff_max, chunk_bytes).

        Returns:
            The logger, already running.

        Raises:
            ValueError: an option is out of range.
        """
        lg = AsyncMetricLogger(
            self.runs,
            capacity=capacity,
            on_full=on_full,
            chunk_points=chunk_points,
            max_inflight=max_inflight,
            **options,
        )
        self._loggers.add(lg)
        lg._on_close.append(self._loggers.discard)
        return lg

    async def close(self) -> None:
        """Closes the loggers this client made (flushing them), then the channel (if this
        client opened it).

        Raises:
            TrackdError: a logger could not deliver every point (the channel is closed
                anyway); the first such error.
        """
        first: Exception | None = None
        for lg in list(self._loggers):
            try:
                await lg.close()
            except Exception as exc:  # noqa: BLE001 - closing goes on; the first is raised
                first = first or exc
        if self._owns_channel:
            await self.channel.close(None)
        if first is not None:
            raise first

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- runs as context managers ------------------------------------------------------------

    def start_run(
        self,
        experiment_id: str = "0",
        run_name: str | None = None,
        *,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, object] | None = None,
        description: str | None = None,
        external_url: str | None = None,
        source: RunSourceLike | None = None,
        user_id: str | None = None,
        buffer_points: int = DEFAULT_CAPACITY,
        on_full: OnFull = "block",
        logger: AsyncMetricLogger | None = None,
        flush_timeout: float | None = None,
        heartbeat_interval: float | None = DEFAULT_HEARTBEAT_INTERVAL,
        log_system_metrics: bool = False,
        system_metrics_interval: float = DEFAULT_SYSTEM_METRICS_INTERVAL,
    ) -> AsyncActiveRun:
        """A run for `async with` (or `await run.start()` ... `await run.end()`): created
        (or, with `run_id`, resumed) on entry; its metrics stream through a buffered
        logger; on exit the logger is flushed, then the run is ended FINISHED on a clean
        exit, FAILED when the block raises, KILLED on cancellation.

        Args:
            experiment_id: the run's experiment (ignored when resuming).
            run_name: a name; the server makes one up if None.
            run_id: resume this run (a job restarted after pre-emption): it is set
                RUNNING again and logging goes on where it stopped.
            parent_run_id: nest the new run in this one.
            tags, description, external_url, source, user_id: as create_run() (ignored
                when resuming).
            buffer_points: capacity of the run's own logger, in points.
            on_full: "block" or "raise" when the run's logger is full.
            logger: a logger (from `logger()`) to share instead of the run's own; the run
                flushes it on exit but does not close it.
            flush_timeout: most seconds the exit waits for acknowledgements; None waits
                as long as it takes.
            heartbeat_interval: seconds between the run's Heartbeat calls, sent by its
                logger's task on the event loop so that the server reads the run RUNNING
                (not UNRESPONSIVE) while this process lives; None or 0 sends none. A
                shared `logger` beats at its own interval.
            log_system_metrics: sample CPU, memory, disk, network (psutil, `pip install
                'trackd[system]'`) and GPUs (NVML, if nvidia-ml-py is installed) in a
                background thread and log them as `system/...` metrics of the run, until
                it ends.
            system_metrics_interval: seconds between two samples.

        Raises:
            ImportError: log_system_metrics is True and psutil is not installed (when the
                run starts).
        """
        from trackd.client.active_run import AsyncActiveRun

        return AsyncActiveRun(
            self,
            experiment_id=experiment_id,
            run_name=run_name,
            run_id=run_id,
            parent_run_id=parent_run_id,
            tags=tags,
            description=description,
            external_url=external_url,
            source=source,
            user_id=user_id,
            logger_options={
                "capacity": buffer_points,
                "on_full": on_full,
                "heartbeat_interval": heartbeat_interval,
            },
            logger=logger,
            flush_timeout=flush_timeout,
            log_system_metrics=log_system_metrics,
            system_metrics_interval=system_metrics_interval,
        )


__all__ = [
    "DEFAULT_TARGET",
    "RPC_METHOD_NAMES",
    "AsyncClient",
    "MetricLike",
    "now_ms",
    "resolve_target",
    "rpc_method_name",
]
