"""A run being logged to: created or resumed on entry, metrics through a buffered logger,
flushed and ended on exit. `AsyncActiveRun` is the implementation; `ActiveRun` drives one
from synchronous code, so both share one life of a run."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from trackd.client.entities import Dataset, FileInfo, Run, RunInfo, RunStatus
from trackd.client.errors import TrackdError
from trackd.client.inputs import MetricLike, RunSourceLike
from trackd.client.logger import AsyncMetricLogger, MetricLogger
from trackd.client.system_metrics import (
    DEFAULT_SYSTEM_METRICS_INTERVAL,
    PREFIX,
    SystemMetricsMonitor,
    import_psutil,
)
from trackd.client.transfer import ProgressCallback
from trackd.v1 import dataset_pb2

if TYPE_CHECKING:
    from trackd.client.aio import AsyncClient
    from trackd.client.sync import Client


def end_status(exc_type: type[BaseException] | None) -> RunStatus:
    """FINISHED for a clean exit, KILLED for cancellation or Ctrl-C, FAILED otherwise."""
    if exc_type is None:
        return RunStatus.FINISHED
    if (
        issubclass(exc_type, KeyboardInterrupt | GeneratorExit)
        or exc_type.__name__ == "CancelledError"
    ):
        return RunStatus.KILLED
    return RunStatus.FAILED


def _not_started(*_: object) -> None:
    raise RuntimeError("the run has not started; use `with` or call start()")


class AsyncActiveRun:
    """A run being logged to from asyncio code; the methods log to it without repeating its
    id. `log_metric` and `log_metrics` are plain methods that buffer and return at once
    (the logger streams in the background); `await flush()` waits for the server's
    acknowledgements. Made by `AsyncClient.start_run`."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        experiment_id: str = "0",
        run_name: str | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, object] | None = None,
        description: str | None = None,
        external_url: str | None = None,
        source: RunSourceLike | None = None,
        user_id: str | None = None,
        logger_options: dict[str, Any] | None = None,
        logger: AsyncMetricLogger | None = None,
        flush_timeout: float | None = None,
        log_system_metrics: bool = False,
        system_metrics_interval: float = DEFAULT_SYSTEM_METRICS_INTERVAL,
    ) -> None:
        self.client = client
        self._experiment_id = experiment_id
        self._run_name = run_name
        self._resume_id = run_id
        self._parent_run_id = parent_run_id
        self._tags = tags
        self._description = description
        self._external_url = external_url
        self._source = source
        self._user_id = user_id
        self._logger_options = logger_options or {}
        self._owns_logger = logger is None
        self._logger = logger
        self.flush_timeout = flush_timeout
        self.log_system_metrics = log_system_metrics
        self.system_metrics_interval = system_metrics_interval
        # Samples the machine into the run's logger while the run lasts, if asked to.
        self.system_metrics: SystemMetricsMonitor | None = None
        self.run: Run | None = None
        self._run_id = ""
        self._put: Callable[..., None] = _not_started
        self._put_many: Callable[..., None] = _not_started
        self.ended = False
        # Called with the run once it has ended (the fluent API pops its stack).
        self.on_end: list[Callable[[AsyncActiveRun], None]] = []

    # -- state -------------------------------------------------------------------------------

    def _started(self) -> Run:
        if self.run is None:
            raise RuntimeError("the run has not started; use `async with` or `await start()`")
        return self.run

    @property
    def run_id(self) -> str:
        """The run's id (once started)."""
        return self._started().info.run_id

    @property
    def experiment_id(self) -> str:
        """The run's experiment (once started)."""
        return self._started().info.experiment_id

    @property
    def logger(self) -> AsyncMetricLogger:
        """The logger the run's metrics go through (once started)."""
        self._started()
        assert self._logger is not None
        return self._logger

    # -- life --------------------------------------------------------------------------------

    async def start(self) -> AsyncActiveRun:
        """Creates the run, or resumes it when started with a run id (its status is set
        RUNNING again); starts its logger. Calling it again does nothing.

        Raises:
            NotFoundError: the experiment, the parent or the resumed run does not exist.
        """
        if self.run is not None:
            return self
        if self.log_system_metrics:
            import_psutil()  # fail before creating the run
        if self._resume_id:
            run = await self.client.get_run(self._resume_id)
            if run.info.status != RunStatus.RUNNING:
                await self.client.update_run(run.info.run_id, RunStatus.RUNNING)
                run = await self.client.get_run(run.info.run_id)
        else:
            run = await self.client.create_run(
                self._experiment_id,
                tags=self._tags,
                run_name=self._run_name,
                user_id=self._user_id,
                parent_run_id=self._parent_run_id,
                description=self._description,
                external_url=self._external_url,
                source=self._source,
            )
        if self._logger is None:
            self._logger = self.client.logger(**self._logger_options)
        self.run = run
        # Bound once: log_metric is the training loop's hot path.
        self._put = self._logger.put
        self._put_many = self._logger.put_many
        self._run_id = run.info.run_id
        # Heartbeats go from the logger's task on the event loop, never from this thread.
        self._logger.heartbeats.keep_alive(self._run_id)
        if self.log_system_metrics:
            # A resumed run's samples go on after the last step of its system series.
            steps = [m.step for k, m in run.data.latest_metrics.items() if k.startswith(PREFIX)]
            self.system_metrics = SystemMetricsMonitor(
                self._logger.put_many,
                self._run_id,
                self.system_metrics_interval,
                max(steps) + 1 if steps else 0,
            ).start()
        return self

    async def end(
        self,
        status: RunStatus | str | int = RunStatus.FINISHED,
        exc: BaseException | None = None,
    ) -> None:
        """Flushes the run's metrics, then ends the run with `status` (FAILED instead of
        FINISHED when the flush failed). Calling it again does nothing.

        Args:
            status: the run's final status.
            exc: the exception ending the block, if any: a flush failure is noted on it
                instead of raised.

        Raises:
            RejectedPointsError, TimeoutError, TrackdError: the flush failed (after the
                run was ended FAILED).
        """
        if self.run is None or self.ended:
            return
        self.ended = True
        if self.system_metrics is not None:
            await self.system_metrics.stop_async()
        self.logger.heartbeats.release(self.run_id)
        flush_error: Exception | None = None
        try:
            if self._owns_logger:
                await self.logger.close(self.flush_timeout)
            else:
                await self.logger.flush(self.flush_timeout)
        except (TrackdError, TimeoutError) as err:
            flush_error = err
        if flush_error is not None and status == RunStatus.FINISHED:
            status = RunStatus.FAILED
        try:
            await self.client.set_terminated(self.run_id, status)
        except TrackdError as end_error:
            if flush_error is None:
                raise
            flush_error.add_note(f"trackd: ending the run failed too: {end_error}")
        finally:
            for callback in self.on_end:
                callback(self)
        if flush_error is not None:
            if exc is None:
                raise flush_error
            exc.add_note(f"trackd: flushing the run's metrics failed: {flush_error}")

    async def __aenter__(self) -> AsyncActiveRun:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Ends the run: FINISHED, or FAILED when the block raised or the flush failed
        (KILLED on cancellation). A flush failure is raised after a clean block and
        noted on the block's exception otherwise."""
        await self.end(end_status(exc_type), exc)

    def start_run(self, run_name: str | None = None, **options: Any) -> AsyncActiveRun:
        """A child run nested in this one (same experiment, `mlflow.parentRunId`), sharing
        this run's logger; use with `async with`. Options as AsyncClient.start_run."""
        options.setdefault("logger", self.logger)
        return self.client.start_run(
            self.experiment_id, run_name, parent_run_id=self.run_id, **options
        )

    # -- logging -----------------------------------------------------------------------------

    def log_metric(
        self, key: str, value: float, step: int | None = 0, timestamp: int | None = None
    ) -> None:
        """Buffers one point of the run and returns at once: a plain method, not a
        coroutine. A full buffer raises BufferFullError (an event loop cannot block):
        `await run.flush()` or `await run.logger.log(...)` wait for room instead.

        Args:
            key: the series' key (checked here).
            value: a number (None or a str is a TypeError).
            step: training step; None means 0.
            timestamp: milliseconds since the Unix epoch; now if None.

        Raises:
            BufferFullError, InvalidArgumentError, TypeError, TrackdError (the stream
            failed for good).
        """
        self._put(self._run_id, key, value, step, timestamp)

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = 0, timestamp: int | None = None
    ) -> None:
        """Buffers one point per key, all at `step` and one timestamp (now if None).

        Raises:
            The same as log_metric(); nothing is buffered if one of them is bad.
        """
        self._put_many(self._run_id, metrics, step, timestamp)

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Waits until the server has acknowledged every metric logged so far.

        Raises:
            RejectedPointsError: some points were rejected (deleted run...).
            TimeoutError: not everything was acknowledged within `timeout` seconds.
            TrackdError: the stream failed for good.
        """
        await self.logger.flush(timeout)

    async def log_param(self, key: str, value: object) -> object:
        """Logs one param of the run, typed from the value (see AsyncClient.log_param);
        returns the value."""
        return await self.client.log_param(self.run_id, key, value)

    async def log_params(self, params: Mapping[str, object]) -> None:
        """Logs params of the run in one batch, each typed from its value."""
        await self.client.log_batch(self.run_id, params=params)

    async def set_tag(self, key: str, value: object) -> None:
        """Sets one tag of the run."""
        await self.client.set_tag(self.run_id, key, value)

    async def set_tags(self, tags: Mapping[str, object]) -> None:
        """Sets tags of the run in one batch."""
        await self.client.log_batch(self.run_id, tags=tags)

    async def delete_tag(self, key: str) -> None:
        """Deletes a tag of the run."""
        await self.client.delete_tag(self.run_id, key)

    async def log_batch(
        self,
        metrics: Iterable[MetricLike] = (),
        params: Mapping[str, object] | Iterable[Any] | None = None,
        tags: Mapping[str, object] | Iterable[Any] | None = None,
    ) -> None:
        """Logs metrics, params and tags to the run atomically, in one call."""
        await self.client.log_batch(self.run_id, metrics, params, tags)

    async def log_input(
        self,
        dataset: Dataset | dataset_pb2.Dataset,
        context: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Records a dataset the run consumed (context: "training", "evaluation", ...)."""
        await self.client.log_input(self.run_id, dataset, context, tags)

    async def log_output(self, model_id: str, step: int = 0) -> None:
        """Records a logged model the run produced."""
        await self.client.log_output(self.run_id, model_id, step)

    async def log_artifact(
        self,
        local_path: str | os.PathLike[str],
        artifact_path: str | None = None,
        *,
        progress: ProgressCallback | None = None,
        progress_bar: bool = False,
    ) -> FileInfo:
        """Uploads a local file into the run's artifact directory `artifact_path` (None: the
        root); see AsyncClient.log_artifact."""
        return await self.client.log_artifact(
            self.run_id, local_path, artifact_path, progress=progress, progress_bar=progress_bar
        )

    async def log_artifacts(
        self,
        local_dir: str | os.PathLike[str],
        artifact_path: str | None = None,
        *,
        progress: ProgressCallback | None = None,
        progress_bar: bool = False,
    ) -> list[FileInfo]:
        """Uploads every file under a local directory into the run's artifact directory
        `artifact_path`, keeping relative paths; see AsyncClient.log_artifacts."""
        return await self.client.log_artifacts(
            self.run_id, local_dir, artifact_path, progress=progress, progress_bar=progress_bar
        )

    async def log_text(self, text: str, artifact_file: str) -> FileInfo:
        """Stores `text` (UTF-8) as the run's artifact `artifact_file`."""
        return await self.client.log_text(self.run_id, text, artifact_file)

    async def log_dict(
        self, dictionary: Mapping[str, Any] | list[Any], artifact_file: str
    ) -> FileInfo:
        """Stores `dictionary` as JSON (or YAML for .yaml/.yml) as the run's artifact."""
        return await self.client.log_dict(self.run_id, dictionary, artifact_file)

    async def log_figure(
        self, figure: Any, artifact_file: str, *, save_kwargs: Mapping[str, Any] | None = None
    ) -> FileInfo:
        """Stores a matplotlib or plotly figure as the run's artifact `artifact_file`."""
        return await self.client.log_figure(
            self.run_id, figure, artifact_file, save_kwargs=save_kwargs
        )


class ActiveRun:
    """A run being logged to from synchronous code: an AsyncActiveRun driven on the
    client's thread. `log_metric` buffers and returns at once unless the buffer is full
    (then it blocks, or raises with on_full="raise"). Made by `Client.start_run`; use as
    `with client.start_run(...) as run:`, or call `start()` and `end()`."""

    def __init__(self, client: Client, aio: AsyncActiveRun) -> None:
        self.client = client
        self.aio = aio
        self._logger: MetricLogger | None = None

    @property
    def run(self) -> Run | None:
        """The run as created or resumed (once started)."""
        return self.aio.run

    @property
    def run_id(self) -> str:
        """The run's id (once started)."""
        return self.aio.run_id

    @property
    def experiment_id(self) -> str:
        """The run's experiment (once started)."""
        return self.aio.experiment_id

    @property
    def info(self) -> RunInfo:
        """The run's info as created or resumed (once started)."""
        return self.aio._started().info

    @property
    def logger(self) -> MetricLogger:
        """The logger the run's metrics go through (once started)."""
        if self._logger is None or self._logger.aio is not self.aio.logger:
            self._logger = MetricLogger(self.aio.logger, self.client._loop)
        return self._logger

    def start(self) -> ActiveRun:
        """Creates or resumes the run (see AsyncActiveRun.start); returns it."""
        self.client._call(self.aio.start())
        return self

    def end(self, status: RunStatus | str | int = RunStatus.FINISHED) -> None:
        """Flushes the run's metrics and ends it with `status`."""
        self.client._call(self.aio.end(status))

    def __enter__(self) -> ActiveRun:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Flushes the run's metrics, then ends the run: FINISHED, or FAILED when the block
        raised or the flush failed (KILLED on Ctrl-C)."""
        self.client._call(self.aio.end(end_status(exc_type), exc))

    def start_run(self, run_name: str | None = None, **options: Any) -> ActiveRun:
        """A child run nested in this one, sharing its logger; use with `with`."""
        options.setdefault("logger", self.logger)
        return self.client.start_run(
            self.experiment_id, run_name, parent_run_id=self.run_id, **options
        )

    def log_metric(
        self, key: str, value: float, step: int | None = 0, timestamp: int | None = None
    ) -> None:
        """Buffers one point of the run; returns at once unless the buffer is full.

        Args:
            key: the series' key (checked here).
            value: a number (None or a str is a TypeError).
            step: training step; None means 0.
            timestamp: milliseconds since the Unix epoch; now if None.

        Raises:
            BufferFullError: the buffer is full and on_full is "raise".
            InvalidArgumentError, TypeError: a bad key or value; nothing is buffered.
            TrackdError: the run's stream failed for good.
        """
        aio = self.aio
        aio._put(aio._run_id, key, value, step, timestamp)

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = 0, timestamp: int | None = None
    ) -> None:
        """Buffers one point per key, all at `step` and one timestamp (now if None)."""
        aio = self.aio
        aio._put_many(aio._run_id, metrics, step, timestamp)

    def flush(self, timeout: float | None = None) -> None:
        """Blocks until the server has acknowledged every metric logged so far.

        Raises:
            RejectedPointsError, TimeoutError, TrackdError: as AsyncActiveRun.flush().
        """
        self.client._call(self.aio.flush(timeout))

    def log_param(self, key: str, value: object) -> object:
        """Logs one param of the run; returns the value."""
        return self.client._call(self.aio.log_param(key, value))

    def log_params(self, params: Mapping[str, object]) -> None:
        """Logs params of the run in one batch."""
        self.client._call(self.aio.log_params(params))

    def set_tag(self, key: str, value: object) -> None:
        """Sets one tag of the run."""
        self.client._call(self.aio.set_tag(key, value))

    def set_tags(self, tags: Mapping[str, object]) -> None:
        """Sets tags of the run in one batch."""
        self.client._call(self.aio.set_tags(tags))

    def delete_tag(self, key: str) -> None:
        """Deletes a tag of the run."""
        self.client._call(self.aio.delete_tag(key))

    def log_batch(
        self,
        metrics: Iterable[MetricLike] = (),
        params: Mapping[str, object] | Iterable[Any] | None = None,
        tags: Mapping[str, object] | Iterable[Any] | None = None,
    ) -> None:
        """Logs metrics, params and tags to the run atomically, in one call."""
        self.client._call(self.aio.log_batch(metrics, params, tags))

    def log_input(
        self,
        dataset: Dataset | dataset_pb2.Dataset,
        context: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Records a dataset the run consumed (context: "training", "evaluation", ...)."""
        self.client._call(self.aio.log_input(dataset, context, tags))

    def log_output(self, model_id: str, step: int = 0) -> None:
        """Records a logged model the run produced."""
        self.client._call(self.aio.log_output(model_id, step))

    def log_artifact(
        self,
        local_path: str | os.PathLike[str],
        artifact_path: str | None = None,
        *,
        progress: ProgressCallback | None = None,
        progress_bar: bool = False,
    ) -> FileInfo:
        """Uploads a local file into the run's artifact directory `artifact_path` (None: the
        root), streamed and resumable; see Client.log_artifact."""
        return self.client._call(
            self.aio.log_artifact(
                local_path, artifact_path, progress=progress, progress_bar=progress_bar
            )
        )

    def log_artifacts(
        self,
        local_dir: str | os.PathLike[str],
        artifact_path: str | None = None,
        *,
        progress: ProgressCallback | None = None,
        progress_bar: bool = False,
    ) -> list[FileInfo]:
        """Uploads every file under a local directory into the run's artifact directory
        `artifact_path`, keeping relative paths; see Client.log_artifacts."""
        return self.client._call(
            self.aio.log_artifacts(
                local_dir, artifact_path, progress=progress, progress_bar=progress_bar
            )
        )

    def log_text(self, text: str, artifact_file: str) -> FileInfo:
        """Stores `text` (UTF-8) as the run's artifact `artifact_file`."""
        return self.client._call(self.aio.log_text(text, artifact_file))

    def log_dict(self, dictionary: Mapping[str, Any] | list[Any], artifact_file: str) -> FileInfo:
        """Stores `dictionary` as JSON (or YAML for .yaml/.yml) as the run's artifact."""
        return self.client._call(self.aio.log_dict(dictionary, artifact_file))

    def log_figure(
        self, figure: Any, artifact_file: str, *, save_kwargs: Mapping[str, Any] | None = None
    ) -> FileInfo:
        """Stores a matplotlib or plotly figure as the run's artifact `artifact_file`."""
        return self.client._call(
            self.aio.log_figure(figure, artifact_file, save_kwargs=save_kwargs)
        )


__all__ = ["ActiveRun", "AsyncActiveRun", "end_status"]
