"""The asyncio client: every trackd call under MlflowClient's name, with plain Python results
(trackd.client.entities), plus `start_run` and the streaming logger."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import grpc

from trackd.client import checks, inputs
from trackd.client.entities import (
    Dataset,
    DatasetInput,
    DatasetSummary,
    Experiment,
    LoggedModel,
    LoggedModelInput,
    LoggedModelOutput,
    LoggedModelStatus,
    Metric,
    PagedList,
    Run,
    RunInfo,
    RunStatus,
    ViewType,
    model_status_number,
    run_status_number,
    view_type_number,
)
from trackd.client.errors import NotFoundError, from_rpc_error
from trackd.client.inputs import DATASET_CONTEXT_TAG, DESCRIPTION_TAG, MetricLike, now_ms
from trackd.client.logger import (
    DEFAULT_CAPACITY,
    DEFAULT_CHUNK_POINTS,
    DEFAULT_MAX_INFLIGHT,
    AsyncMetricLogger,
    OnFull,
)
from trackd.v1 import (
    dataset_pb2,
    experiment_service_pb2,
    experiment_service_pb2_grpc,
    logged_model_service_pb2,
    logged_model_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
)

if TYPE_CHECKING:
    from trackd.client.active_run import AsyncActiveRun

P = ParamSpec("P")
T = TypeVar("T")

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


def _rpc(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turns a failed call's AioRpcError into the matching TrackdError."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None

    return wrapper


async def _all_pages(
    fetch: Callable[[str], Awaitable[tuple[Iterable[T], str]]],
) -> AsyncIterator[T]:
    """Every item of a paged search: `fetch(token)` returns a page and the next token."""
    token = ""
    while True:
        items, token = await fetch(token)
        for item in items:
            yield item
        if not token:
            return


class AsyncClient:
    """trackd over one grpc.aio channel, with MlflowClient's method names. Use as
    `async with AsyncClient(target) as c:` or call `close()`. Failed calls raise
    trackd.client.TrackdError subclasses; bad arguments raise TypeError or
    InvalidArgumentError before anything is sent.

    Args:
        target: "host:port" (a `grpc://` prefix is allowed); None means
            $TRACKD_TRACKING_URI, else 127.0.0.1:50051.
        channel: a channel to use instead of opening one (not closed by `close()`).
        timeout: deadline of each unary call, in seconds; None waits as long as it takes.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self.target = resolve_target(target)
        self._owns_channel = channel is None
        self.channel = channel or grpc.aio.insecure_channel(
            self.target,
            options=[
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

    # -- experiments -----------------------------------------------------------------------

    @_rpc
    async def create_experiment(
        self,
        name: str,
        artifact_location: str | None = None,
        tags: Mapping[str, object] | None = None,
    ) -> str:
        """Creates an experiment; returns its id.

        Raises:
            AlreadyExistsError: the name is taken. InvalidArgumentError: a bad name or tag.
        """
        req = experiment_service_pb2.CreateExperimentRequest(
            name=name,
            artifact_location=artifact_location or "",
            tags=inputs.experiment_tags(tags),
        )
        resp = await self.experiments.CreateExperiment(req, timeout=self.timeout)
        return resp.experiment_id

    @_rpc
    async def get_experiment(self, experiment_id: str) -> Experiment:
        """The experiment with that id.

        Raises:
            NotFoundError: no such experiment.
        """
        req = experiment_service_pb2.GetExperimentRequest(experiment_id=experiment_id)
        resp = await self.experiments.GetExperiment(req, timeout=self.timeout)
        return Experiment.from_proto(resp.experiment)

    async def get_experiment_by_name(self, name: str) -> Experiment | None:
        """The experiment with that name (the active one first), or None (as MLflow)."""
        req = experiment_service_pb2.GetExperimentByNameRequest(experiment_name=name)
        try:
            resp = await self.experiments.GetExperimentByName(req, timeout=self.timeout)
        except grpc.aio.AioRpcError as err:
            error = from_rpc_error(err)
            if isinstance(error, NotFoundError):
                return None
            raise error from None
        return Experiment.from_proto(resp.experiment)

    @_rpc
    async def search_experiments(
        self,
        view_type: ViewType | str | int = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        filter_string: str | None = None,
        order_by: Iterable[str] | None = None,
        page_token: str | None = None,
    ) -> PagedList[Experiment]:
        """One page of experiments matching `filter_string` (`name LIKE 'mnist%'`,
        `tags.team = 'vision'`), in `order_by` (default newest first); `.token` fetches
        the next page. `iter_experiments` walks every page.

        Raises:
            InvalidArgumentError: a bad filter, order or token.
        """
        req = experiment_service_pb2.SearchExperimentsRequest(
            view_type=view_type_number(view_type),
            max_results=max_results,
            filter=filter_string or "",
            order_by=inputs.order_by(order_by),
            page_token=page_token or "",
        )
        resp = await self.experiments.SearchExperiments(req, timeout=self.timeout)
        return PagedList(map(Experiment.from_proto, resp.experiments), resp.next_page_token)

    def iter_experiments(
        self,
        view_type: ViewType | str | int = ViewType.ACTIVE_ONLY,
        filter_string: str | None = None,
        order_by: Iterable[str] | None = None,
        page_size: int = 1000,
    ) -> AsyncIterator[Experiment]:
        """Every experiment matching the search, fetching page after page."""
        order = list(order_by or ())

        async def fetch(token: str) -> tuple[Iterable[Experiment], str]:
            page = await self.search_experiments(view_type, page_size, filter_string, order, token)
            return page, page.token or ""

        return _all_pages(fetch)

    @_rpc
    async def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        """Renames an experiment (the UpdateExperiment call).

        Raises:
            AlreadyExistsError: the name is taken. NotFoundError: no such experiment.
        """
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
    async def set_experiment_tag(self, experiment_id: str, key: str, value: object) -> None:
        """Sets a tag of an experiment (values at most 5000 characters)."""
        (tag,) = inputs.experiment_tags([(key, value)], "tag")
        req = experiment_service_pb2.SetExperimentTagRequest(
            experiment_id=experiment_id, key=tag.key, value=tag.value
        )
        await self.experiments.SetExperimentTag(req, timeout=self.timeout)

    @_rpc
    async def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        """Deletes a tag of an experiment.

        Raises:
            NotFoundError: the experiment has no such tag.
        """
        req = experiment_service_pb2.DeleteExperimentTagRequest(
            experiment_id=experiment_id, key=checks.check_key(key)
        )
        await self.experiments.DeleteExperimentTag(req, timeout=self.timeout)

    @_rpc
    async def search_datasets(
        self,
        experiment_ids: str | Iterable[str],
        max_results: int = 1000,
        page_token: str | None = None,
    ) -> PagedList[DatasetSummary]:
        """One page of the datasets the experiments' runs used, with their contexts."""
        req = experiment_service_pb2.SearchDatasetsRequest(
            experiment_ids=inputs.ids(experiment_ids, "experiment_ids"),
            max_results=max_results,
            page_token=page_token or "",
        )
        resp = await self.experiments.SearchDatasets(req, timeout=self.timeout)
        return PagedList(
            map(DatasetSummary.from_proto, resp.dataset_summaries), resp.next_page_token
        )

    # -- runs ------------------------------------------------------------------------------

    @_rpc
    async def create_run(
        self,
        experiment_id: str,
        start_time: int | None = None,
        tags: Mapping[str, object] | Iterable[Any] | None = None,
        run_name: str | None = None,
        *,
        user_id: str | None = None,
        parent_run_id: str | None = None,
        description: str | None = None,
    ) -> Run:
        """Creates a RUNNING run (MlflowClient's argument order); returns it.

        Args:
            experiment_id: the experiment ("0" is the default experiment).
            start_time: milliseconds since the Unix epoch; now if None.
            tags: a dict or a sequence of RunTag.
            run_name: a name; the server makes one up if None.
            user_id: who runs it.
            parent_run_id: the run this one is nested in (`mlflow.parentRunId`).
            description: the run's note (`mlflow.note.content`).

        Raises:
            NotFoundError: no such experiment or parent. InvalidArgumentError: a bad tag.
        """
        all_tags = inputs.run_tags(tags)
        if description is not None:
            all_tags += inputs.run_tags({DESCRIPTION_TAG: description}, "description")
        req = run_service_pb2.CreateRunRequest(
            experiment_id=experiment_id,
            run_name=run_name or "",
            start_time=0
            if start_time is None
            else checks.timestamp_value(start_time, "start_time"),
            tags=all_tags,
            user_id=user_id or "",
            parent_run_id=parent_run_id or "",
        )
        return Run.from_proto((await self.runs.CreateRun(req, timeout=self.timeout)).run)

    @_rpc
    async def get_run(self, run_id: str) -> Run:
        """The run with its latest metrics, summaries, params, tags, inputs and outputs.

        Raises:
            NotFoundError: no such run.
        """
        req = run_service_pb2.GetRunRequest(run_id=run_id)
        return Run.from_proto((await self.runs.GetRun(req, timeout=self.timeout)).run)

    async def get_parent_run(self, run_id: str) -> Run | None:
        """The run this one is nested in (its `mlflow.parentRunId` tag), or None."""
        parent = (await self.get_run(run_id)).data.tags.get("mlflow.parentRunId")
        return await self.get_run(parent) if parent else None

    @_rpc
    async def update_run(
        self,
        run_id: str,
        status: RunStatus | str | int | None = None,
        name: str | None = None,
        *,
        end_time: int | None = None,
    ) -> RunInfo:
        """Changes a run's status ("FINISHED", ...), name or end time (None leaves each
        as it is); returns the run's info."""
        req = run_service_pb2.UpdateRunRequest(
            run_id=run_id,
            status=run_pb2.RUN_STATUS_UNSPECIFIED if status is None else run_status_number(status),
        )
        if end_time is not None:
            req.end_time = checks.timestamp_value(end_time, "end_time")
        if name is not None:
            req.run_name = name
        return RunInfo.from_proto((await self.runs.UpdateRun(req, timeout=self.timeout)).run_info)

    async def set_terminated(
        self,
        run_id: str,
        status: RunStatus | str | int | None = None,
        end_time: int | None = None,
    ) -> None:
        """Ends a run: status FINISHED unless given, end time now unless given."""
        await self.update_run(
            run_id, RunStatus.FINISHED if status is None else status, end_time=end_time or now_ms()
        )

    @_rpc
    async def delete_run(self, run_id: str) -> None:
        """Soft-deletes a run."""
        req = run_service_pb2.DeleteRunRequest(run_id=run_id)
        await self.runs.DeleteRun(req, timeout=self.timeout)

    @_rpc
    async def restore_run(self, run_id: str) -> None:
        """Restores a deleted run."""
        req = run_service_pb2.RestoreRunRequest(run_id=run_id)
        await self.runs.RestoreRun(req, timeout=self.timeout)

    @_rpc
    async def delete_runs(
        self, experiment_id: str, max_timestamp_millis: int, max_runs: int | None = None
    ) -> int:
        """Soft-deletes an experiment's live runs created at or before the time (at most
        `max_runs`, default and limit 10000); returns how many."""
        req = run_service_pb2.DeleteRunsRequest(
            experiment_id=experiment_id,
            max_timestamp_millis=max_timestamp_millis,
            max_runs=max_runs or 0,
        )
        return (await self.runs.DeleteRuns(req, timeout=self.timeout)).runs_deleted

    @_rpc
    async def restore_runs(
        self, experiment_id: str, min_timestamp_millis: int, max_runs: int | None = None
    ) -> int:
        """Restores an experiment's runs deleted at or after the time; returns how many."""
        req = run_service_pb2.RestoreRunsRequest(
            experiment_id=experiment_id,
            min_timestamp_millis=min_timestamp_millis,
            max_runs=max_runs or 0,
        )
        return (await self.runs.RestoreRuns(req, timeout=self.timeout)).runs_restored

    @_rpc
    async def log_metric(
        self,
        run_id: str,
        key: str,
        value: float,
        timestamp: int | None = None,
        step: int | None = None,
        synchronous: bool | None = None,
        dataset_name: str | None = None,
        dataset_digest: str | None = None,
        model_id: str | None = None,
    ) -> None:
        """Appends one metric point in its own call (MlflowClient's argument order; a run
        context's buffered `run.log_metric` is far cheaper for many points). With
        `model_id` (and a dataset), the point also counts as that logged model's metric.
        `synchronous` is accepted for MlflowClient's sake: every unary call returns once
        the point is committed.

        Raises:
            TypeError: a value of the wrong type (None, a str). InvalidArgumentError: a
                bad key. FailedPreconditionError: the run is deleted.
        """
        req = run_service_pb2.LogMetricRequest(
            run_id=run_id,
            key=checks.check_key(key),
            value=checks.metric_value(value),
            step=checks.step_value(step),
            timestamp=checks.timestamp_value(timestamp),
            model_id=model_id or "",
            dataset_name=dataset_name or "",
            dataset_digest=dataset_digest or "",
        )
        await self.runs.LogMetric(req, timeout=self.timeout)

    @_rpc
    async def log_param(
        self, run_id: str, key: str, value: object, synchronous: bool | None = None
    ) -> object:
        """Logs one immutable param (numbers and bools as str(value)); returns `value`.

        Raises:
            TypeError: value is None. FailedPreconditionError: the key has another value.
        """
        req = run_service_pb2.LogParamRequest(
            run_id=run_id, key=checks.check_key(key), value=checks.param_value(value)
        )
        await self.runs.LogParam(req, timeout=self.timeout)
        return value

    @_rpc
    async def set_tag(
        self, run_id: str, key: str, value: object, synchronous: bool | None = None
    ) -> None:
        """Sets one tag of a run (numbers and bools as str(value)).

        Raises:
            TypeError: value is None.
        """
        req = run_service_pb2.SetTagRequest(
            run_id=run_id, key=checks.check_key(key), value=checks.tag_value(value)
        )
        await self.runs.SetTag(req, timeout=self.timeout)

    @_rpc
    async def delete_tag(self, run_id: str, key: str) -> None:
        """Deletes one tag of a run.

        Raises:
            NotFoundError: the run has no such tag.
        """
        req = run_service_pb2.DeleteTagRequest(run_id=run_id, key=checks.check_key(key))
        await self.runs.DeleteTag(req, timeout=self.timeout)

    @_rpc
    async def log_batch(
        self,
        run_id: str,
        metrics: Iterable[MetricLike] = (),
        params: Mapping[str, object] | Iterable[Any] | None = None,
        tags: Mapping[str, object] | Iterable[Any] | None = None,
        synchronous: bool | None = None,
    ) -> None:
        """Logs metrics, params and tags atomically: all of it or none of it (at most
        1000 metrics, 100 params, 100 tags).

        Args:
            run_id: the run.
            metrics: Metric objects, or tuples (key, value[, step[, timestamp]]).
            params: a dict, or a sequence of Param or (key, value).
            tags: a dict, or a sequence of RunTag or (key, value).

        Raises:
            TypeError, InvalidArgumentError: a bad item (`violations` names
                `metrics[3].key`); nothing is written.
        """
        req = run_service_pb2.LogBatchRequest(
            run_id=run_id,
            metrics=inputs.metrics(metrics),
            params=inputs.params(params),
            tags=inputs.run_tags(tags),
        )
        await self.runs.LogBatch(req, timeout=self.timeout)

    @_rpc
    async def _metric_history_page(
        self, run_id: str, key: str, page_size: int, token: str
    ) -> tuple[list[Metric], str]:
        req = run_service_pb2.GetMetricHistoryRequest(
            run_id=run_id, metric_key=key, max_results=page_size, page_token=token
        )
        resp = await self.runs.GetMetricHistory(req, timeout=self.timeout)
        # A page names its key once (older servers repeated it in every point instead).
        page_key = resp.metric_key or key
        points = []
        for m in resp.metrics:
            m.key = page_key
            points.append(Metric.from_proto(m))
        return points, resp.next_page_token

    def iter_metric_history(
        self, run_id: str, key: str, page_size: int = 25000
    ) -> AsyncIterator[Metric]:
        """Every point of a series in (step, timestamp, value) order, page by page."""
        return _all_pages(functools.partial(self._metric_history_page, run_id, key, page_size))

    async def get_metric_history(
        self, run_id: str, key: str, *, page_size: int = 25000
    ) -> list[Metric]:
        """Every point of a series in (step, timestamp, value) order (all pages).

        Raises:
            NotFoundError: no such run.
        """
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
        """A whole series in (step, timestamp, value) order as (steps, timestamps, values)
        columns, streamed (the cheapest way to read a long series).

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

    @_rpc
    async def search_runs(
        self,
        experiment_ids: str | Iterable[str],
        filter_string: str = "",
        run_view_type: ViewType | str | int = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        order_by: Iterable[str] | None = None,
        page_token: str | None = None,
    ) -> PagedList[Run]:
        """One page of runs of the experiments matching `filter_string` (MLflow's language
        plus OR, NOT, parentheses, IS NULL and `metrics.loss.min`), in `order_by` (default
        newest first); `.token` fetches the next page. `iter_runs` walks every page.

        Raises:
            InvalidArgumentError: a bad filter (the message points at the column), order
                or token.
        """
        req = run_service_pb2.SearchRunsRequest(
            experiment_ids=inputs.ids(experiment_ids, "experiment_ids"),
            filter=filter_string or "",
            run_view_type=view_type_number(run_view_type, "run_view_type"),
            max_results=max_results,
            order_by=inputs.order_by(order_by),
            page_token=page_token or "",
        )
        resp = await self.runs.SearchRuns(req, timeout=self.timeout)
        return PagedList(map(Run.from_proto, resp.runs), resp.next_page_token)

    def iter_runs(
        self,
        experiment_ids: str | Iterable[str],
        filter_string: str = "",
        run_view_type: ViewType | str | int = ViewType.ACTIVE_ONLY,
        order_by: Iterable[str] | None = None,
        page_size: int = 1000,
    ) -> AsyncIterator[Run]:
        """Every run matching the search, fetching page after page."""
        eids = inputs.ids(experiment_ids, "experiment_ids")
        order = list(order_by or ())

        async def fetch(token: str) -> tuple[Iterable[Run], str]:
            page = await self.search_runs(
                eids, filter_string, run_view_type, page_size, order, token
            )
            return page, page.token or ""

        return _all_pages(fetch)

    # -- datasets, inputs and outputs --------------------------------------------------------

    @_rpc
    async def log_inputs(
        self,
        run_id: str,
        datasets: Iterable[DatasetInput | dataset_pb2.DatasetInput] | None = None,
        models: Iterable[LoggedModelInput | str] | None = None,
    ) -> None:
        """Records datasets (with the tags of their use) and logged models a run consumed.

        Raises:
            TrackdError: the call failed (INVALID_ARGUMENT names the offending field).
        """
        req = run_service_pb2.LogInputsRequest(
            run_id=run_id,
            datasets=[inputs.dataset_input(d) for d in datasets or ()],
            models=[inputs.model_input(m) for m in models or ()],
        )
        await self.runs.LogInputs(req, timeout=self.timeout)

    async def log_input(
        self,
        run_id: str,
        dataset: Dataset | dataset_pb2.Dataset,
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
            dataset=inputs.dataset(dataset),
            tags=[dataset_pb2.InputTag(key=k, value=v) for k, v in all_tags.items()],
        )
        await self.log_inputs(run_id, [use])

    @_rpc
    async def log_outputs(self, run_id: str, models: Iterable[LoggedModelOutput | str]) -> None:
        """Records logged models a run produced (a bare id means step 0).

        Raises:
            TrackdError: the call failed.
        """
        req = run_service_pb2.LogOutputsRequest(
            run_id=run_id, models=[inputs.model_output(m) for m in models]
        )
        await self.runs.LogOutputs(req, timeout=self.timeout)

    async def log_output(self, run_id: str, model_id: str, step: int = 0) -> None:
        """Records one logged model a run produced, with the step that produced it."""
        await self.log_outputs(run_id, [LoggedModelOutput(model_id, step)])

    # -- logged models -----------------------------------------------------------------------

    @_rpc
    async def create_logged_model(
        self,
        experiment_id: str,
        name: str | None = None,
        source_run_id: str | None = None,
        tags: Mapping[str, object] | None = None,
        params: Mapping[str, object] | None = None,
        model_type: str | None = None,
    ) -> LoggedModel:
        """Creates a logged model (status PENDING; MlflowClient's argument order); returns
        it with its `m-...` id.

        Raises:
            NotFoundError: no such experiment or source run.
        """
        req = logged_model_service_pb2.CreateLoggedModelRequest(
            experiment_id=experiment_id,
            name=name or "",
            model_type=model_type or "",
            source_run_id=source_run_id or "",
            params=inputs.model_params(params),
            tags=inputs.model_tags(tags),
        )
        resp = await self.models.CreateLoggedModel(req, timeout=self.timeout)
        return LoggedModel.from_proto(resp.model)

    @_rpc
    async def get_logged_model(self, model_id: str) -> LoggedModel:
        """The logged model with its params, tags and latest metrics per dataset.

        Raises:
            NotFoundError: an unknown or deleted model.
        """
        req = logged_model_service_pb2.GetLoggedModelRequest(model_id=model_id)
        resp = await self.models.GetLoggedModel(req, timeout=self.timeout)
        return LoggedModel.from_proto(resp.model)

    @_rpc
    async def finalize_logged_model(
        self,
        model_id: str,
        status: LoggedModelStatus | str | int = LoggedModelStatus.READY,
        status_message: str | None = None,
    ) -> LoggedModel:
        """Marks a model "READY" or "UPLOAD_FAILED"; returns it.

        Raises:
            FailedPreconditionError: it was finalized with another status.
        """
        req = logged_model_service_pb2.FinalizeLoggedModelRequest(
            model_id=model_id,
            status=model_status_number(status),
            status_message=status_message or "",
        )
        resp = await self.models.FinalizeLoggedModel(req, timeout=self.timeout)
        return LoggedModel.from_proto(resp.model)

    @_rpc
    async def delete_logged_model(self, model_id: str) -> None:
        """Soft-deletes a logged model."""
        req = logged_model_service_pb2.DeleteLoggedModelRequest(model_id=model_id)
        await self.models.DeleteLoggedModel(req, timeout=self.timeout)

    @_rpc
    async def set_logged_model_tags(self, model_id: str, tags: Mapping[str, object]) -> None:
        """Sets tags of a logged model."""
        req = logged_model_service_pb2.SetLoggedModelTagsRequest(
            model_id=model_id, tags=inputs.model_tags(tags)
        )
        await self.models.SetLoggedModelTags(req, timeout=self.timeout)

    @_rpc
    async def delete_logged_model_tag(self, model_id: str, key: str) -> None:
        """Deletes a tag of a logged model.

        Raises:
            NotFoundError: the model has no such tag.
        """
        req = logged_model_service_pb2.DeleteLoggedModelTagRequest(
            model_id=model_id, tag_key=checks.check_key(key)
        )
        await self.models.DeleteLoggedModelTag(req, timeout=self.timeout)

    @_rpc
    async def log_model_params(self, model_id: str, params: Mapping[str, object]) -> None:
        """Logs immutable params of a logged model (the LogLoggedModelParams call).

        Raises:
            FailedPreconditionError: a param had another value.
        """
        req = logged_model_service_pb2.LogLoggedModelParamsRequest(
            model_id=model_id, params=inputs.model_params(params)
        )
        await self.models.LogLoggedModelParams(req, timeout=self.timeout)

    @_rpc
    async def search_logged_models(
        self,
        experiment_ids: str | Iterable[str],
        filter_string: str | None = None,
        datasets: Iterable[Mapping[str, str] | tuple[str, str]] | None = None,
        max_results: int | None = None,
        order_by: Iterable[str | Mapping[str, Any]] | None = None,
        page_token: str | None = None,
    ) -> PagedList[LoggedModel]:
        """One page of live logged models of the experiments matching `filter_string`, in
        `order_by` (default newest first); `.token` fetches the next page.

        Args:
            experiment_ids: the experiments.
            filter_string: e.g. "metrics.acc > 0.9 AND params.lr = '0.1'".
            datasets: {"dataset_name": ..., "dataset_digest": ...} dicts (MLflow's form)
                or (name, digest) pairs restricting metric clauses and ordering; an empty
                digest means any.
            max_results: page size (default 100).
            order_by: "metrics.acc DESC" strings, or MLflow's
                {"field_name": ..., "ascending": ...} dicts.
            page_token: a previous page's token.

        Raises:
            InvalidArgumentError: a bad filter, order or token.
        """
        req = logged_model_service_pb2.SearchLoggedModelsRequest(
            experiment_ids=inputs.ids(experiment_ids, "experiment_ids"),
            filter=filter_string or "",
            datasets=[_dataset_filter(d) for d in datasets or ()],
            order_by=inputs.order_by(order_by),
            max_results=max_results or 100,
            page_token=page_token or "",
        )
        resp = await self.models.SearchLoggedModels(req, timeout=self.timeout)
        return PagedList(map(LoggedModel.from_proto, resp.models), resp.next_page_token)

    def iter_logged_models(
        self,
        experiment_ids: str | Iterable[str],
        filter_string: str | None = None,
        datasets: Iterable[Mapping[str, str] | tuple[str, str]] | None = None,
        order_by: Iterable[str | Mapping[str, Any]] | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[LoggedModel]:
        """Every logged model matching the search, fetching page after page."""
        eids = inputs.ids(experiment_ids, "experiment_ids")
        sets = list(datasets or ())
        order = list(order_by or ())

        async def fetch(token: str) -> tuple[Iterable[LoggedModel], str]:
            page = await self.search_logged_models(
                eids, filter_string, sets, page_size, order, token
            )
            return page, page.token or ""

        return _all_pages(fetch)

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
        user_id: str | None = None,
        buffer_points: int = DEFAULT_CAPACITY,
        on_full: OnFull = "block",
        logger: AsyncMetricLogger | None = None,
        flush_timeout: float | None = None,
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
            tags, description, user_id: as create_run().
            buffer_points: capacity of the run's own logger, in points.
            on_full: "block" or "raise" when the run's logger is full.
            logger: a logger (from `logger()`) to share instead of the run's own; the run
                flushes it on exit but does not close it.
            flush_timeout: most seconds the exit waits for acknowledgements; None waits
                as long as it takes.
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
            user_id=user_id,
            logger_options={"capacity": buffer_points, "on_full": on_full},
            logger=logger,
            flush_timeout=flush_timeout,
        )


def _dataset_filter(
    d: Mapping[str, str] | tuple[str, str],
) -> logged_model_service_pb2.SearchLoggedModelsRequest.DatasetFilter:
    if isinstance(d, Mapping):
        name, digest = d.get("dataset_name", ""), d.get("dataset_digest") or ""
    else:
        name, digest = d
    return logged_model_service_pb2.SearchLoggedModelsRequest.DatasetFilter(
        dataset_name=name, dataset_digest=digest
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
