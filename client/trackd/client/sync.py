"""The blocking client: AsyncClient driven on a private event-loop thread, so that both
share one implementation and a training loop never needs asyncio."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from trackd.client.aio import DEFAULT_TARGET, AsyncActiveRun, AsyncClient, MetricLike
from trackd.client.logger import (
    DEFAULT_CAPACITY,
    DEFAULT_CHUNK_POINTS,
    DEFAULT_MAX_INFLIGHT,
    AsyncMetricLogger,
    MetricLogger,
    OnFull,
)
from trackd.v1 import common_pb2, dataset_pb2, experiment_pb2, logged_model_pb2, metric_pb2, run_pb2

T = TypeVar("T")


class Client:
    """trackd for synchronous code. Use as `with Client(target) as c:` or call `close()`.
    Failed calls raise trackd.client.TrackdError subclasses."""

    def __init__(self, target: str = DEFAULT_TARGET, *, timeout: float | None = 30.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="trackd-client", daemon=True
        )
        self._thread.start()

        async def make() -> AsyncClient:
            return AsyncClient(target, timeout=timeout)

        self.aio: AsyncClient = self._call(make())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Closes the loggers this client made (flushing them), the channel, and stops the
        client's thread.

        Raises:
            TrackdError: a logger could not deliver every point (everything is closed
                anyway).
        """
        if self._loop.is_closed():
            return
        try:
            self._call(self.aio.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def logger(
        self,
        *,
        capacity: int = DEFAULT_CAPACITY,
        on_full: OnFull = "block",
        chunk_points: int = DEFAULT_CHUNK_POINTS,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        **options: Any,
    ) -> MetricLogger:
        """A buffered logger streaming points of any runs over StreamMetrics from the
        client's thread; closed by `close()` unless closed before.

        Args:
            capacity: most points held unacknowledged (buffered or in flight).
            on_full: "block" (the logging thread waits for room) or "raise"
                (BufferFullError) when full.
            chunk_points: most points per chunk.
            max_inflight: most chunks sent and not yet acknowledged.
            **options: further AsyncMetricLogger options (ack_timeout, stream_id,
                backoff_initial, backoff_max, chunk_bytes).

        Returns:
            The logger, already running.

        Raises:
            ValueError: an option is out of range.
        """

        async def make() -> AsyncMetricLogger:
            return self.aio.logger(
                capacity=capacity,
                on_full=on_full,
                chunk_points=chunk_points,
                max_inflight=max_inflight,
                **options,
            )

        return MetricLogger(self._call(make()), self._loop)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- experiments -----------------------------------------------------------------------

    def create_experiment(
        self, name: str, artifact_location: str = "", tags: Mapping[str, str] | None = None
    ) -> str:
        """Creates an experiment; returns its id."""
        return self._call(self.aio.create_experiment(name, artifact_location, tags))

    def get_experiment(self, experiment_id: str) -> experiment_pb2.Experiment:
        """The experiment with that id."""
        return self._call(self.aio.get_experiment(experiment_id))

    def get_experiment_by_name(self, name: str) -> experiment_pb2.Experiment:
        """The experiment with that name, the active one first."""
        return self._call(self.aio.get_experiment_by_name(name))

    def search_experiments(
        self, view_type: common_pb2.ViewType.ValueType = common_pb2.VIEW_TYPE_ACTIVE_ONLY
    ) -> list[experiment_pb2.Experiment]:
        """Every experiment of the view type, newest first."""
        return self._call(self.aio.search_experiments(view_type))

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        """Renames an experiment."""
        self._call(self.aio.rename_experiment(experiment_id, new_name))

    def delete_experiment(self, experiment_id: str) -> None:
        """Soft-deletes an experiment and its runs."""
        self._call(self.aio.delete_experiment(experiment_id))

    def restore_experiment(self, experiment_id: str) -> None:
        """Restores a deleted experiment and the runs deleted with it."""
        self._call(self.aio.restore_experiment(experiment_id))

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        """Sets a tag of an experiment."""
        self._call(self.aio.set_experiment_tag(experiment_id, key, value))

    # -- runs ------------------------------------------------------------------------------

    def create_run(self, experiment_id: str = "0", run_name: str = "", **kw: Any) -> run_pb2.Run:
        """Creates a RUNNING run (keywords: tags, user_id, parent_run_id, start_time)."""
        return self._call(self.aio.create_run(experiment_id, run_name, **kw))

    def get_run(self, run_id: str) -> run_pb2.Run:
        """The run with its latest metrics, summaries, params and tags."""
        return self._call(self.aio.get_run(run_id))

    def update_run(self, run_id: str, **kw: Any) -> run_pb2.RunInfo:
        """Changes status, end_time or run_name of a run."""
        return self._call(self.aio.update_run(run_id, **kw))

    def end_run(
        self, run_id: str, status: run_pb2.RunStatus.ValueType = run_pb2.RUN_STATUS_FINISHED
    ) -> run_pb2.RunInfo:
        """Ends a run with a status and the current time."""
        return self._call(self.aio.end_run(run_id, status))

    def delete_run(self, run_id: str) -> None:
        """Soft-deletes a run."""
        self._call(self.aio.delete_run(run_id))

    def restore_run(self, run_id: str) -> None:
        """Restores a deleted run."""
        self._call(self.aio.restore_run(run_id))

    def log_metric(
        self,
        run_id: str,
        key: str,
        value: float,
        step: int = 0,
        timestamp: int | None = None,
        **model: str,
    ) -> None:
        """Appends one metric point (timestamp defaults to now); keywords model_id,
        dataset_name, dataset_digest make it a logged model's metric too."""
        self._call(self.aio.log_metric(run_id, key, value, step, timestamp, **model))

    def log_param(self, run_id: str, key: str, value: object) -> None:
        """Logs one immutable param."""
        self._call(self.aio.log_param(run_id, key, value))

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        """Sets one tag of a run."""
        self._call(self.aio.set_tag(run_id, key, value))

    def delete_tag(self, run_id: str, key: str) -> None:
        """Deletes one tag of a run."""
        self._call(self.aio.delete_tag(run_id, key))

    def log_batch(
        self,
        run_id: str,
        metrics: Iterable[MetricLike] = (),
        params: Mapping[str, object] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Logs metrics, params and tags atomically."""
        self._call(self.aio.log_batch(run_id, list(metrics), params, tags))

    def get_metric_history(
        self, run_id: str, key: str, page_size: int = 25000
    ) -> list[metric_pb2.Metric]:
        """Every point of a series in (step, timestamp, value) order (all pages)."""
        return self._call(self.aio.get_metric_history(run_id, key, page_size))

    def get_metric_columns(self, run_id: str, key: str) -> tuple[list[int], list[int], list[float]]:
        """A whole series in (step, timestamp, value) order as (steps, timestamps, values),
        over one StreamMetricHistory call.

        Raises:
            TrackdError: the call failed.
        """
        return self._call(self.aio.get_metric_columns(run_id, key))

    # -- datasets, inputs, outputs and logged models -----------------------------------------

    def log_inputs(
        self,
        run_id: str,
        datasets: Sequence[dataset_pb2.DatasetInput] = (),
        model_ids: Sequence[str] = (),
    ) -> None:
        """Records datasets and logged models a run consumed."""
        self._call(self.aio.log_inputs(run_id, datasets, model_ids))

    def log_input(
        self,
        run_id: str,
        dataset: dataset_pb2.Dataset,
        context: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Records one dataset a run consumed; `context` becomes mlflow.data.context."""
        self._call(self.aio.log_input(run_id, dataset, context, tags))

    def log_output(self, run_id: str, model_id: str, step: int = 0) -> None:
        """Records a logged model a run produced."""
        self._call(self.aio.log_output(run_id, model_id, step))

    def create_logged_model(self, experiment_id: str, **kw: Any) -> logged_model_pb2.LoggedModel:
        """Creates a logged model (keywords: name, model_type, source_run_id, params, tags)."""
        return self._call(self.aio.create_logged_model(experiment_id, **kw))

    def get_logged_model(self, model_id: str) -> logged_model_pb2.LoggedModel:
        """The logged model with its params, tags and latest metrics per dataset."""
        return self._call(self.aio.get_logged_model(model_id))

    def finalize_logged_model(
        self,
        model_id: str,
        status: logged_model_pb2.LoggedModelStatus.ValueType = (
            logged_model_pb2.LOGGED_MODEL_STATUS_READY
        ),
        status_message: str = "",
    ) -> logged_model_pb2.LoggedModel:
        """Marks a model READY (default) or UPLOAD_FAILED."""
        return self._call(self.aio.finalize_logged_model(model_id, status, status_message))

    def delete_logged_model(self, model_id: str) -> None:
        """Soft-deletes a logged model."""
        self._call(self.aio.delete_logged_model(model_id))

    def set_logged_model_tags(self, model_id: str, tags: Mapping[str, str]) -> None:
        """Sets tags of a logged model."""
        self._call(self.aio.set_logged_model_tags(model_id, tags))

    def log_logged_model_params(self, model_id: str, params: Mapping[str, object]) -> None:
        """Logs immutable params of a logged model."""
        self._call(self.aio.log_logged_model_params(model_id, params))

    def search_logged_models(
        self, experiment_ids: Sequence[str], **kw: Any
    ) -> list[logged_model_pb2.LoggedModel]:
        """Every live logged model matching (keywords: filter, datasets, order_by)."""
        return self._call(self.aio.search_logged_models(experiment_ids, **kw))

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
        logger: MetricLogger | None = None,
        flush_timeout: float | None = None,
    ) -> ActiveRun:
        """A run for `with`: created on entry; its metrics stream through a buffered
        logger; on exit the logger is flushed, then the run is ended FINISHED on a clean
        exit and FAILED when the block raises (KILLED on Ctrl-C).

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
        aio_run = self.aio.start_run(
            experiment_id,
            run_name,
            tags=tags,
            user_id=user_id,
            parent_run_id=parent_run_id,
            buffer_points=buffer_points,
            on_full=on_full,
            logger=logger.aio if logger is not None else None,
            flush_timeout=flush_timeout,
        )
        return ActiveRun(self, aio_run, logger)


class ActiveRun:
    """A run being logged to from synchronous code: an AsyncActiveRun driven on the
    client's thread, so that both share one implementation of the run's life (creation,
    flush on exit, FINISHED/FAILED/KILLED). Metrics go through a buffered logger
    (`self.logger`): log_metric returns at once unless the buffer is full."""

    def __init__(self, client: Client, aio: AsyncActiveRun, logger: MetricLogger | None) -> None:
        self.client = client
        self.aio = aio
        self._logger = logger

    @property
    def run(self) -> run_pb2.Run | None:
        """The run as created (once started)."""
        return self.aio.run

    @property
    def run_id(self) -> str:
        """The run's id (once started)."""
        return self.aio.run_id

    @property
    def logger(self) -> MetricLogger:
        """The logger the run's metrics go through (once started)."""
        if self._logger is None:
            self._logger = MetricLogger(self.aio.logger, self.client._loop)
        return self._logger

    def __enter__(self) -> ActiveRun:
        self.client._call(self.aio.__aenter__())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Flushes the run's metrics, then ends the run: FINISHED, or FAILED when the block
        raised or the flush failed (KILLED on Ctrl-C). A flush failure is raised after a
        clean block and noted on the block's exception otherwise."""
        self.client._call(self.aio.__aexit__(exc_type, exc, tb))

    def log_metric(
        self, key: str, value: float, step: int = 0, timestamp: int | None = None
    ) -> None:
        """Buffers one point of the run; returns at once unless the buffer is full (then
        it blocks, or raises with on_full="raise").

        Args:
            key: the series' key.
            value: the value.
            step: training step.
            timestamp: milliseconds since the Unix epoch; now if None.

        Raises:
            BufferFullError: the buffer is full and on_full is "raise".
            TrackdError: the run's stream failed for good.
        """
        self.logger.log(self.run_id, key, value, step, timestamp)

    def log_metrics(
        self, metrics: Mapping[str, float], step: int = 0, timestamp: int | None = None
    ) -> None:
        """Buffers one point per key, all at `step` and one timestamp (now if None).

        Raises:
            The same as log_metric().
        """
        self.logger.log_many(self.run_id, metrics, step, timestamp)

    def flush(self, timeout: float | None = None) -> None:
        """Blocks until the server has acknowledged every metric logged so far.

        Raises:
            RejectedPointsError: some points were rejected (unknown run, bad key...).
            TimeoutError: not everything was acknowledged within `timeout` seconds.
            TrackdError: the stream failed for good.
        """
        self.logger.flush(timeout)

    def log_param(self, key: str, value: object) -> None:
        """Logs one param of the run."""
        self.client.log_param(self.run_id, key, value)

    def log_params(self, params: Mapping[str, object]) -> None:
        """Logs params of the run in one batch."""
        self.client.log_batch(self.run_id, params=params)

    def set_tag(self, key: str, value: str) -> None:
        """Sets one tag of the run."""
        self.client.set_tag(self.run_id, key, value)

    def log_input(
        self,
        dataset: dataset_pb2.Dataset,
        context: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Records a dataset the run consumed (context: "training", "evaluation", ...)."""
        self.client.log_input(self.run_id, dataset, context, tags)

    def log_output(self, model_id: str, step: int = 0) -> None:
        """Records a logged model the run produced."""
        self.client.log_output(self.run_id, model_id, step)

    def log_batch(
        self,
        metrics: Sequence[MetricLike] = (),
        params: Mapping[str, object] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Logs metrics, params and tags to the run atomically."""
        self.client.log_batch(self.run_id, metrics, params, tags)
