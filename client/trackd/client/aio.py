"""The asyncio client: one method per trackd call, plus `start_run`."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import grpc

from trackd.client.errors import TrackdError, from_rpc_error
from trackd.client.logger import (
    DEFAULT_CAPACITY,
    DEFAULT_CHUNK_POINTS,
    DEFAULT_MAX_INFLIGHT,
    AsyncMetricLogger,
    OnFull,
)
from trackd.v1 import (
    common_pb2,
    dataset_pb2,
    experiment_pb2,
    experiment_service_pb2,
    experiment_service_pb2_grpc,
    logged_model_pb2,
    logged_model_service_pb2,
    logged_model_service_pb2_grpc,
    metric_pb2,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
)

P = ParamSpec("P")
T = TypeVar("T")

# A metric point given as (key, value), (key, value, step) or (key, value, step, timestamp).
MetricLike = metric_pb2.Metric | tuple[Any, ...]

DEFAULT_TARGET = "127.0.0.1:50051"
# The input tag that says what a dataset was used for (MLflow's name).
DATASET_CONTEXT_TAG = "mlflow.data.context"


def now_ms() -> int:
    """The client's clock, in milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def _rpc(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turns a failed call's AioRpcError into the matching TrackdError."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None

    return wrapper


def _metric(m: MetricLike) -> metric_pb2.Metric:
    if isinstance(m, metric_pb2.Metric):
        return m
    key, value, *rest = m
    step = rest[0] if rest else 0
    ts = rest[1] if len(rest) > 1 else now_ms()
    return metric_pb2.Metric(key=key, value=float(value), step=step, timestamp=ts)


class AsyncClient:
    """trackd over one grpc.aio channel. Use as `async with AsyncClient(target) as c:` or
    call `close()`. Failed calls raise trackd.client.TrackdError subclasses."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self._owns_channel = channel is None
        self.channel = channel or grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                # Reconnect soon after a server restart (gRPC's default backoff grows to 120s).
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self.timeout = timeout
        self.experiments = experiment_service_pb2_grpc.ExperimentServiceStub(self.channel)
        self.runs = run_service_pb2_grpc.RunServiceStub(self.channel)
        self.models = logged_model_service_pb2_grpc.LoggedModelServiceStub(self.channel)
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
            on_full: "block" (await room) or "raise" (BufferFullError) when full.
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
        first: TrackdError | None = None
        for lg in list(self._loggers):
            try:
                await lg.close()
            except TrackdError as exc:
                first = first or exc
        if self._owns_channel:
            await self.channel.close(None)
        if first is not None:
            raise first

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- experiments -----------------------------------------------------------------------

    @_rpc
    async def create_experiment(
        self, name: str, artifact_location: str = "", tags: Mapping[str, str] | None = None
    ) -> str:
        """Creates an experiment; returns its id."""
        req = experiment_service_pb2.CreateExperimentRequest(
            name=name,
            artifact_location=artifact_location,
            tags=[experiment_pb2.ExperimentTag(key=k, value=v) for k, v in (tags or {}).items()],
        )
        resp = await self.experiments.CreateExperiment(req, timeout=self.timeout)
        return resp.experiment_id

    @_rpc
    async def get_experiment(self, experiment_id: str) -> experiment_pb2.Experiment:
        """The experiment with that id."""
        req = experiment_service_pb2.GetExperimentRequest(experiment_id=experiment_id)
        return (await self.experiments.GetExperiment(req, timeout=self.timeout)).experiment

    @_rpc
    async def get_experiment_by_name(self, name: str) -> experiment_pb2.Experiment:
        """The experiment with that name, the active one first."""
        req = experiment_service_pb2.GetExperimentByNameRequest(experiment_name=name)
        return (await self.experiments.GetExperimentByName(req, timeout=self.timeout)).experiment

    async def search_experiments(
        self,
        view_type: common_pb2.ViewType.ValueType = common_pb2.VIEW_TYPE_ACTIVE_ONLY,
        page_size: int = 1000,
    ) -> list[experiment_pb2.Experiment]:
        """Every experiment of the view type, newest first, fetching all pages."""
        return [e async for e in self.iter_experiments(view_type, page_size)]

    async def iter_experiments(
        self,
        view_type: common_pb2.ViewType.ValueType = common_pb2.VIEW_TYPE_ACTIVE_ONLY,
        page_size: int = 1000,
    ) -> AsyncIterator[experiment_pb2.Experiment]:
        """Experiments of the view type, page by page."""
        token = ""
        while True:
            req = experiment_service_pb2.SearchExperimentsRequest(
                view_type=view_type, max_results=page_size, page_token=token
            )
            try:
                resp = await self.experiments.SearchExperiments(req, timeout=self.timeout)
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err) from None
            for e in resp.experiments:
                yield e
            token = resp.next_page_token
            if not token:
                return

    @_rpc
    async def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        """Renames an experiment."""
        req = experiment_service_pb2.UpdateExperimentRequest(
            experiment_id=experiment_id, new_name=new_name
        )
        await self.experiments.UpdateExperiment(req, timeout=self.timeout)

    @_rpc
    async def delete_experiment(self, experiment_id: str) -> None:
        """Soft-deletes an experiment and its runs."""
        req = experiment_service_pb2.DeleteExperimentRequest(experiment_id=experiment_id)
        await self.experiments.DeleteExperiment(req, timeout=self.timeout)

    @_rpc
    async def restore_experiment(self, experiment_id: str) -> None:
        """Restores a deleted experiment and the runs deleted with it."""
        req = experiment_service_pb2.RestoreExperimentRequest(experiment_id=experiment_id)
        await self.experiments.RestoreExperiment(req, timeout=self.timeout)

    @_rpc
    async def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        """Sets a tag of an experiment."""
        req = experiment_service_pb2.SetExperimentTagRequest(
            experiment_id=experiment_id, key=key, value=value
        )
        await self.experiments.SetExperimentTag(req, timeout=self.timeout)

    # -- runs ------------------------------------------------------------------------------

    @_rpc
    async def create_run(
        self,
        experiment_id: str = "0",
        run_name: str = "",
        *,
        tags: Mapping[str, str] | None = None,
        user_id: str = "",
        parent_run_id: str = "",
        start_time: int = 0,
    ) -> run_pb2.Run:
        """Creates a RUNNING run; returns it."""
        req = run_service_pb2.CreateRunRequest(
            experiment_id=experiment_id,
            run_name=run_name,
            start_time=start_time,
            tags=[run_pb2.RunTag(key=k, value=v) for k, v in (tags or {}).items()],
            user_id=user_id,
            parent_run_id=parent_run_id,
        )
        return (await self.runs.CreateRun(req, timeout=self.timeout)).run

    @_rpc
    async def get_run(self, run_id: str) -> run_pb2.Run:
        """The run with its latest metrics, summaries, params and tags."""
        req = run_service_pb2.GetRunRequest(run_id=run_id)
        return (await self.runs.GetRun(req, timeout=self.timeout)).run

    @_rpc
    async def update_run(
        self,
        run_id: str,
        status: run_pb2.RunStatus.ValueType = run_pb2.RUN_STATUS_UNSPECIFIED,
        end_time: int | None = None,
        run_name: str | None = None,
    ) -> run_pb2.RunInfo:
        """Changes a run's status, end time or name; returns the run info."""
        req = run_service_pb2.UpdateRunRequest(run_id=run_id, status=status)
        if end_time is not None:
            req.end_time = end_time
        if run_name is not None:
            req.run_name = run_name
        return (await self.runs.UpdateRun(req, timeout=self.timeout)).run_info

    async def end_run(
        self, run_id: str, status: run_pb2.RunStatus.ValueType = run_pb2.RUN_STATUS_FINISHED
    ) -> run_pb2.RunInfo:
        """Ends a run with a status (FINISHED by default) and the current time."""
        return await self.update_run(run_id, status=status, end_time=now_ms())

    @_rpc
    async def delete_run(self, run_id: str) -> None:
        """Soft-deletes a run."""
        await self.runs.DeleteRun(
            run_service_pb2.DeleteRunRequest(run_id=run_id), timeout=self.timeout
        )

    @_rpc
    async def restore_run(self, run_id: str) -> None:
        """Restores a deleted run."""
        await self.runs.RestoreRun(
            run_service_pb2.RestoreRunRequest(run_id=run_id), timeout=self.timeout
        )

    @_rpc
    async def log_metric(
        self,
        run_id: str,
        key: str,
        value: float,
        step: int = 0,
        timestamp: int | None = None,
        *,
        model_id: str = "",
        dataset_name: str = "",
        dataset_digest: str = "",
    ) -> None:
        """Appends one metric point (timestamp defaults to now). With `model_id` (and a
        dataset), the point also counts as that logged model's metric on that dataset."""
        req = run_service_pb2.LogMetricRequest(
            run_id=run_id,
            key=key,
            value=float(value),
            step=step,
            timestamp=now_ms() if timestamp is None else timestamp,
            model_id=model_id,
            dataset_name=dataset_name,
            dataset_digest=dataset_digest,
        )
        await self.runs.LogMetric(req, timeout=self.timeout)

    @_rpc
    async def log_param(self, run_id: str, key: str, value: object) -> None:
        """Logs one immutable param (the value is sent as str(value))."""
        req = run_service_pb2.LogParamRequest(run_id=run_id, key=key, value=str(value))
        await self.runs.LogParam(req, timeout=self.timeout)

    @_rpc
    async def set_tag(self, run_id: str, key: str, value: str) -> None:
        """Sets one tag of a run."""
        req = run_service_pb2.SetTagRequest(run_id=run_id, key=key, value=value)
        await self.runs.SetTag(req, timeout=self.timeout)

    @_rpc
    async def delete_tag(self, run_id: str, key: str) -> None:
        """Deletes one tag of a run."""
        req = run_service_pb2.DeleteTagRequest(run_id=run_id, key=key)
        await self.runs.DeleteTag(req, timeout=self.timeout)

    @_rpc
    async def log_batch(
        self,
        run_id: str,
        metrics: Iterable[MetricLike] = (),
        params: Mapping[str, object] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Logs metrics, params and tags atomically (at most 1000 items)."""
        req = run_service_pb2.LogBatchRequest(
            run_id=run_id,
            metrics=[_metric(m) for m in metrics],
            params=[run_pb2.Param(key=k, value=str(v)) for k, v in (params or {}).items()],
            tags=[run_pb2.RunTag(key=k, value=v) for k, v in (tags or {}).items()],
        )
        await self.runs.LogBatch(req, timeout=self.timeout)

    async def iter_metric_history(
        self, run_id: str, key: str, page_size: int = 25000
    ) -> AsyncIterator[metric_pb2.Metric]:
        """Every point of a series in (step, timestamp, value) order, page by page."""
        token = ""
        while True:
            req = run_service_pb2.GetMetricHistoryRequest(
                run_id=run_id, metric_key=key, max_results=page_size, page_token=token
            )
            try:
                resp = await self.runs.GetMetricHistory(req, timeout=self.timeout)
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err) from None
            for m in resp.metrics:
                yield m
            token = resp.next_page_token
            if not token:
                return

    async def get_metric_history(
        self, run_id: str, key: str, page_size: int = 25000
    ) -> list[metric_pb2.Metric]:
        """Every point of a series in (step, timestamp, value) order (all pages)."""
        return [m async for m in self.iter_metric_history(run_id, key, page_size)]

    async def iter_metric_columns(
        self, run_id: str, key: str, chunk_size: int = 0
    ) -> AsyncIterator[tuple[list[int], list[int], list[float]]]:
        """A whole series in (step, timestamp, value) order, as column-wise chunks of one
        StreamMetricHistory call (no deadline: a series may hold millions of points).

        Args:
            run_id: the run.
            key: the series' key.
            chunk_size: points per chunk; 0 means the server's default.

        Yields:
            (steps, timestamps, values) of each chunk.

        Raises:
            TrackdError: the call failed (NOT_FOUND for an unknown run...).
        """
        req = run_service_pb2.StreamMetricHistoryRequest(
            run_id=run_id, metric_key=key, chunk_size=chunk_size
        )
        try:
            async for resp in self.runs.StreamMetricHistory(req):
                yield list(resp.steps), list(resp.timestamps), list(resp.values)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None

    async def get_metric_columns(
        self, run_id: str, key: str
    ) -> tuple[list[int], list[int], list[float]]:
        """A whole series in (step, timestamp, value) order as (steps, timestamps, values).

        Raises:
            TrackdError: the call failed.
        """
        steps: list[int] = []
        stamps: list[int] = []
        values: list[float] = []
        async for s, t, v in self.iter_metric_columns(run_id, key):
            steps += s
            stamps += t
            values += v
        return steps, stamps, values

    # -- datasets, inputs and outputs --------------------------------------------------------

    @_rpc
    async def log_inputs(
        self,
        run_id: str,
        datasets: Sequence[dataset_pb2.DatasetInput] = (),
        model_ids: Sequence[str] = (),
    ) -> None:
        """Records datasets (with the tags of their use) and logged models a run consumed.

        Raises:
            TrackdError: the call failed (INVALID_ARGUMENT names the offending field).
        """
        req = run_service_pb2.LogInputsRequest(
            run_id=run_id,
            datasets=list(datasets),
            models=[dataset_pb2.ModelInput(model_id=m) for m in model_ids],
        )
        await self.runs.LogInputs(req, timeout=self.timeout)

    async def log_input(
        self,
        run_id: str,
        dataset: dataset_pb2.Dataset,
        context: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Records one dataset a run consumed; `context` ("training", "evaluation", ...)
        becomes the `mlflow.data.context` input tag.

        Raises:
            TrackdError: the call failed.
        """
        all_tags = dict(tags or {})
        if context is not None:
            all_tags[DATASET_CONTEXT_TAG] = context
        use = dataset_pb2.DatasetInput(
            dataset=dataset,
            tags=[dataset_pb2.InputTag(key=k, value=v) for k, v in all_tags.items()],
        )
        await self.log_inputs(run_id, [use])

    @_rpc
    async def log_output(self, run_id: str, model_id: str, step: int = 0) -> None:
        """Records a logged model a run produced, with the step that produced it.

        Raises:
            TrackdError: the call failed.
        """
        req = run_service_pb2.LogOutputsRequest(
            run_id=run_id, models=[dataset_pb2.ModelOutput(model_id=model_id, step=step)]
        )
        await self.runs.LogOutputs(req, timeout=self.timeout)

    # -- logged models -----------------------------------------------------------------------

    @_rpc
    async def create_logged_model(
        self,
        experiment_id: str,
        name: str = "",
        model_type: str = "",
        source_run_id: str = "",
        params: Mapping[str, object] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> logged_model_pb2.LoggedModel:
        """Creates a logged model (status PENDING); returns it with its `m-...` id.

        Raises:
            TrackdError: the call failed.
        """
        req = logged_model_service_pb2.CreateLoggedModelRequest(
            experiment_id=experiment_id,
            name=name,
            model_type=model_type,
            source_run_id=source_run_id,
            params=[
                logged_model_pb2.LoggedModelParameter(key=k, value=str(v))
                for k, v in (params or {}).items()
            ],
            tags=[logged_model_pb2.LoggedModelTag(key=k, value=v) for k, v in (tags or {}).items()],
        )
        return (await self.models.CreateLoggedModel(req, timeout=self.timeout)).model

    @_rpc
    async def get_logged_model(self, model_id: str) -> logged_model_pb2.LoggedModel:
        """The logged model with its params, tags and latest metrics per dataset.

        Raises:
            TrackdError: the call failed (NOT_FOUND for an unknown or deleted model).
        """
        req = logged_model_service_pb2.GetLoggedModelRequest(model_id=model_id)
        return (await self.models.GetLoggedModel(req, timeout=self.timeout)).model

    @_rpc
    async def finalize_logged_model(
        self,
        model_id: str,
        status: logged_model_pb2.LoggedModelStatus.ValueType = (
            logged_model_pb2.LOGGED_MODEL_STATUS_READY
        ),
        status_message: str = "",
    ) -> logged_model_pb2.LoggedModel:
        """Marks a model READY (default) or UPLOAD_FAILED; returns it.

        Raises:
            TrackdError: FAILED_PRECONDITION if it was finalized with another status.
        """
        req = logged_model_service_pb2.FinalizeLoggedModelRequest(
            model_id=model_id, status=status, status_message=status_message
        )
        return (await self.models.FinalizeLoggedModel(req, timeout=self.timeout)).model

    @_rpc
    async def delete_logged_model(self, model_id: str) -> None:
        """Soft-deletes a logged model.

        Raises:
            TrackdError: the call failed.
        """
        req = logged_model_service_pb2.DeleteLoggedModelRequest(model_id=model_id)
        await self.models.DeleteLoggedModel(req, timeout=self.timeout)

    @_rpc
    async def set_logged_model_tags(self, model_id: str, tags: Mapping[str, str]) -> None:
        """Sets tags of a logged model.

        Raises:
            TrackdError: the call failed.
        """
        req = logged_model_service_pb2.SetLoggedModelTagsRequest(
            model_id=model_id,
            tags=[logged_model_pb2.LoggedModelTag(key=k, value=v) for k, v in tags.items()],
        )
        await self.models.SetLoggedModelTags(req, timeout=self.timeout)

    @_rpc
    async def log_logged_model_params(self, model_id: str, params: Mapping[str, object]) -> None:
        """Logs immutable params of a logged model.

        Raises:
            TrackdError: FAILED_PRECONDITION if a param had another value.
        """
        req = logged_model_service_pb2.LogLoggedModelParamsRequest(
            model_id=model_id,
            params=[
                logged_model_pb2.LoggedModelParameter(key=k, value=str(v))
                for k, v in params.items()
            ],
        )
        await self.models.LogLoggedModelParams(req, timeout=self.timeout)

    async def search_logged_models(
        self,
        experiment_ids: Sequence[str],
        filter: str = "",
        datasets: Sequence[tuple[str, str]] = (),
        order_by: Sequence[str] = (),
        page_size: int = 100,
    ) -> list[logged_model_pb2.LoggedModel]:
        """Every live logged model of the experiments matching `filter`, in `order_by`
        (default newest first), fetching all pages. `datasets` is (name, digest) pairs (an
        empty digest means any) restricting metric clauses and ordering.

        Raises:
            TrackdError: the call failed (INVALID_ARGUMENT for a bad filter).
        """
        out: list[logged_model_pb2.LoggedModel] = []
        token = ""
        while True:
            req = logged_model_service_pb2.SearchLoggedModelsRequest(
                experiment_ids=list(experiment_ids),
                filter=filter,
                datasets=[
                    logged_model_service_pb2.SearchLoggedModelsRequest.DatasetFilter(
                        dataset_name=n, dataset_digest=d
                    )
                    for n, d in datasets
                ],
                order_by=list(order_by),
                max_results=page_size,
                page_token=token,
            )
            try:
                resp = await self.models.SearchLoggedModels(req, timeout=self.timeout)
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err) from None
            out.extend(resp.models)
            token = resp.next_page_token
            if not token:
                return out

    def start_run(
        self,
        experiment_id: str = "0",
        run_name: str = "",
        *,
        tags: Mapping[str, str] | None = None,
        user_id: str = "",
        parent_run_id: str = "",
        buffer_points: int = DEFAULT_CAPACITY,
        on_full: OnFull = "block",
        logger: AsyncMetricLogger | None = None,
        flush_timeout: float | None = None,
    ) -> AsyncActiveRun:
        """A run for `async with`: created on entry; its metrics stream through a buffered
        logger; on exit the logger is flushed, then the run is ended FINISHED on a clean
        exit and FAILED when the block raises (KILLED on cancellation).

        Args:
            experiment_id, run_name, tags, user_id, parent_run_id: as create_run().
            buffer_points: capacity of the run's own logger, in points.
            on_full: "block" or "raise" when the run's logger is full.
            logger: a logger (from `logger()`) to share instead of the run's own; the run
                flushes it on exit but does not close it.
            flush_timeout: most seconds the exit waits for acknowledgements; None waits
                as long as it takes.

        Returns:
            The run context manager.
        """
        return AsyncActiveRun(
            self,
            {
                "experiment_id": experiment_id,
                "run_name": run_name,
                "tags": tags,
                "user_id": user_id,
                "parent_run_id": parent_run_id,
            },
            logger_options={"capacity": buffer_points, "on_full": on_full},
            logger=logger,
            flush_timeout=flush_timeout,
        )


class AsyncActiveRun:
    """A run being logged to; the methods log to it without repeating its id. Metrics go
    through a buffered logger (`self.logger`): log_metric returns at once unless the buffer
    is full, and the exit flushes before ending the run."""

    def __init__(
        self,
        client: AsyncClient,
        create_args: dict[str, Any],
        *,
        logger_options: dict[str, Any] | None = None,
        logger: AsyncMetricLogger | None = None,
        flush_timeout: float | None = None,
    ) -> None:
        self.client = client
        self._create_args = create_args
        self._logger_options = logger_options or {}
        self._owns_logger = logger is None
        self._logger = logger
        self.flush_timeout = flush_timeout
        self.run: run_pb2.Run | None = None

    @property
    def logger(self) -> AsyncMetricLogger:
        """The logger the run's metrics go through (once started)."""
        if self._logger is None:
            raise RuntimeError("the run has not started; use `async with`")
        return self._logger

    @property
    def run_id(self) -> str:
        """The run's id (once started)."""
        if self.run is None:
            raise RuntimeError("the run has not started; use `async with`")
        return self.run.info.run_id

    async def __aenter__(self) -> AsyncActiveRun:
        self.run = await self.client.create_run(**self._create_args)
        if self._logger is None:
            self._logger = self.client.logger(**self._logger_options)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Flushes the run's metrics, then ends the run: FINISHED, or FAILED when the block
        raised or the flush failed (KILLED on cancellation). A flush failure is raised
        after a clean block and noted on the block's exception otherwise."""
        flush_error: Exception | None = None
        if self.run is not None and self._logger is not None:
            try:
                if self._owns_logger:
                    await self._logger.close(self.flush_timeout)
                else:
                    await self._logger.flush(self.flush_timeout)
            except (TrackdError, TimeoutError) as err:
                flush_error = err
        status = end_status(exc_type)
        if exc_type is None and flush_error is not None:
            status = run_pb2.RUN_STATUS_FAILED
        try:
            await self.client.end_run(self.run_id, status)
        except TrackdError as end_error:
            if flush_error is None:
                raise
            flush_error.add_note(f"trackd: ending the run failed too: {end_error}")
        if flush_error is not None:
            if exc is None:
                raise flush_error
            exc.add_note(f"trackd: flushing the run's metrics failed: {flush_error}")

    async def log_metric(
        self, key: str, value: float, step: int = 0, timestamp: int | None = None
    ) -> None:
        """Buffers one point of the run; returns at once unless the buffer is full.

        Args:
            key: the series' key.
            value: the value.
            step: training step.
            timestamp: milliseconds since the Unix epoch; now if None.

        Raises:
            BufferFullError: the buffer is full and on_full is "raise".
            TrackdError: the run's stream failed for good.
        """
        await self.logger.log(self.run_id, key, value, step, timestamp)

    async def log_metrics(
        self, metrics: Mapping[str, float], step: int = 0, timestamp: int | None = None
    ) -> None:
        """Buffers one point per key, all at `step` and one timestamp (now if None).

        Raises:
            The same as log_metric().
        """
        await self.logger.log_many(self.run_id, metrics, step, timestamp)

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Waits until the server has acknowledged every metric logged so far.

        Raises:
            RejectedPointsError: some points were rejected (unknown run, bad key...).
            TimeoutError: not everything was acknowledged within `timeout` seconds.
            TrackdError: the stream failed for good.
        """
        await self.logger.flush(timeout)

    async def log_input(
        self,
        dataset: dataset_pb2.Dataset,
        context: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Records a dataset the run consumed (context: "training", "evaluation", ...)."""
        await self.client.log_input(self.run_id, dataset, context, tags)

    async def log_output(self, model_id: str, step: int = 0) -> None:
        """Records a logged model the run produced."""
        await self.client.log_output(self.run_id, model_id, step)

    async def log_param(self, key: str, value: object) -> None:
        """Logs one param of the run."""
        await self.client.log_param(self.run_id, key, value)

    async def log_params(self, params: Mapping[str, object]) -> None:
        """Logs params of the run in one batch."""
        await self.client.log_batch(self.run_id, params=params)

    async def set_tag(self, key: str, value: str) -> None:
        """Sets one tag of the run."""
        await self.client.set_tag(self.run_id, key, value)

    async def log_batch(
        self,
        metrics: Sequence[MetricLike] = (),
        params: Mapping[str, object] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Logs metrics, params and tags to the run atomically."""
        await self.client.log_batch(self.run_id, metrics, params, tags)


def end_status(exc_type: type[BaseException] | None) -> run_pb2.RunStatus.ValueType:
    """FINISHED for a clean exit, KILLED for cancellation or Ctrl-C, FAILED otherwise."""
    if exc_type is None:
        return run_pb2.RUN_STATUS_FINISHED
    if (
        issubclass(exc_type, KeyboardInterrupt | GeneratorExit)
        or exc_type.__name__ == "CancelledError"
    ):
        return run_pb2.RUN_STATUS_KILLED
    return run_pb2.RUN_STATUS_FAILED


__all__ = ["AsyncActiveRun", "AsyncClient", "end_status", "now_ms"]
