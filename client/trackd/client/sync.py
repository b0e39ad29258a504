"""The blocking client: AsyncClient driven on a private event-loop thread, so that both
share one implementation and a training loop never needs asyncio."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from trackd.client.aio import DEFAULT_TARGET, AsyncClient, MetricLike, end_status
from trackd.v1 import common_pb2, experiment_pb2, metric_pb2, run_pb2

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
        """Closes the channel and stops the client's thread."""
        if self._loop.is_closed():
            return
        self._call(self.aio.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

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
        self, run_id: str, key: str, value: float, step: int = 0, timestamp: int | None = None
    ) -> None:
        """Appends one metric point (timestamp defaults to now)."""
        self._call(self.aio.log_metric(run_id, key, value, step, timestamp))

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

    def start_run(
        self,
        experiment_id: str = "0",
        run_name: str = "",
        *,
        tags: Mapping[str, str] | None = None,
        user_id: str = "",
        parent_run_id: str = "",
    ) -> ActiveRun:
        """A run for `with`: created on entry, ended FINISHED on a clean exit and FAILED
        when the block raises (KILLED on Ctrl-C)."""
        return ActiveRun(
            self,
            {
                "experiment_id": experiment_id,
                "run_name": run_name,
                "tags": tags,
                "user_id": user_id,
                "parent_run_id": parent_run_id,
            },
        )


class ActiveRun:
    """A run being logged to from synchronous code."""

    def __init__(self, client: Client, create_args: dict[str, Any]) -> None:
        self.client = client
        self._create_args = create_args
        self.run: run_pb2.Run | None = None

    @property
    def run_id(self) -> str:
        """The run's id (once started)."""
        if self.run is None:
            raise RuntimeError("the run has not started; use `with`")
        return self.run.info.run_id

    def __enter__(self) -> ActiveRun:
        self.run = self.client.create_run(**self._create_args)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.client.end_run(self.run_id, end_status(exc_type))

    def log_metric(
        self, key: str, value: float, step: int = 0, timestamp: int | None = None
    ) -> None:
        """Appends one point to the run."""
        self.client.log_metric(self.run_id, key, value, step, timestamp)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Appends one point per key, all at `step`, in one batch."""
        self.client.log_batch(self.run_id, [(k, v, step) for k, v in metrics.items()])

    def log_param(self, key: str, value: object) -> None:
        """Logs one param of the run."""
        self.client.log_param(self.run_id, key, value)

    def log_params(self, params: Mapping[str, object]) -> None:
        """Logs params of the run in one batch."""
        self.client.log_batch(self.run_id, params=params)

    def set_tag(self, key: str, value: str) -> None:
        """Sets one tag of the run."""
        self.client.set_tag(self.run_id, key, value)

    def log_batch(
        self,
        metrics: Sequence[MetricLike] = (),
        params: Mapping[str, object] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Logs metrics, params and tags to the run atomically."""
        self.client.log_batch(self.run_id, metrics, params, tags)
