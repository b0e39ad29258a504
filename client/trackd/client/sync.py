"""The blocking client: AsyncClient driven on a private event-loop thread. Every method is
made from AsyncClient's of the same name, so the two cannot drift apart, and a training
loop never needs asyncio."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

from trackd.client.active_run import ActiveRun
from trackd.client.aio import AsyncClient
from trackd.client.credentials import TlsArg
from trackd.client.heartbeat import DEFAULT_HEARTBEAT_INTERVAL
from trackd.client.inputs import RunSourceLike
from trackd.client.logger import (
    DEFAULT_CAPACITY,
    DEFAULT_CHUNK_POINTS,
    DEFAULT_MAX_INFLIGHT,
    AsyncMetricLogger,
    MetricLogger,
    OnFull,
)
from trackd.client.system_metrics import DEFAULT_SYSTEM_METRICS_INTERVAL

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(
    fn: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Client, P], T]:
    """The blocking twin of an AsyncClient coroutine method (same name, arguments and
    docstring)."""

    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._call(fn(self.aio, *args, **kwargs))

    functools.update_wrapper(method, fn)
    return method


def _blocking_iter(
    fn: Callable[Concatenate[AsyncClient, P], AsyncIterator[T]],
) -> Callable[Concatenate[Client, P], Iterator[T]]:
    """The blocking twin of an AsyncClient method returning an async iterator: a generator
    fetching each item (page by page) on the client's thread; closing it closes the async
    iterator (cancelling its call)."""

    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        async def make() -> AsyncIterator[T]:
            return fn(self.aio, *args, **kwargs)

        agen = self._call(make())

        async def step() -> tuple[bool, T | None]:
            try:
                return True, await anext(agen)
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self._call(step())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            # Leaving early (break, close(), garbage collection) ends the call too.
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and not self._loop.is_closed():
                self._call(aclose())

    functools.update_wrapper(method, fn)
    return method


class Client:
    """trackd for synchronous code, with MlflowClient's method names. Use as
    `with Client(target) as c:` or call `close()`. Failed calls raise
    trackd.client.TrackdError subclasses.

    Args:
        target: "host:port" (a `grpc://` prefix is allowed); None means
            $TRACKD_TRACKING_URI, else 127.0.0.1:50051.
        timeout: deadline of each unary call, in seconds.
        token: bearer token sent on every call; None means $TRACKD_TOKEN (see AsyncClient).
        tls: TLS settings; None means from $TRACKD_TLS_* (see AsyncClient).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float | None = 30.0,
        token: str | None = None,
        tls: TlsArg = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="trackd-client", daemon=True
        )
        self._thread.start()

        async def make() -> AsyncClient:
            return AsyncClient(target, timeout=timeout, token=token, tls=tls)

        self.aio: AsyncClient = self._call(make())

    @property
    def target(self) -> str:
        """The server's address."""
        return self.aio.target

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

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        client's thread; closed by `close()` unless closed before. See AsyncClient.logger.
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
        logger: MetricLogger | None = None,
        flush_timeout: float | None = None,
        heartbeat_interval: float | None = DEFAULT_HEARTBEAT_INTERVAL,
        log_system_metrics: bool = False,
        system_metrics_interval: float = DEFAULT_SYSTEM_METRICS_INTERVAL,
    ) -> ActiveRun:
        """A run for `with` (or `start()` ... `end()`): created, or resumed with `run_id`,
        on entry; metrics are buffered and streamed; the exit flushes them and ends the
        run FINISHED, FAILED when the block raises, KILLED on Ctrl-C. Arguments as
        AsyncClient.start_run; `logger` is a MetricLogger from `logger()`."""
        aio_run = self.aio.start_run(
            experiment_id,
            run_name,
            run_id=run_id,
            parent_run_id=parent_run_id,
            tags=tags,
            description=description,
            external_url=external_url,
            source=source,
            user_id=user_id,
            buffer_points=buffer_points,
            on_full=on_full,
            logger=logger.aio if logger is not None else None,
            flush_timeout=flush_timeout,
            heartbeat_interval=heartbeat_interval,
            log_system_metrics=log_system_metrics,
            system_metrics_interval=system_metrics_interval,
        )
        return ActiveRun(self, aio_run)

    # Every call, from AsyncClient.
    create_experiment = _blocking(AsyncClient.create_experiment)
    get_experiment = _blocking(AsyncClient.get_experiment)
    get_experiment_by_name = _blocking(AsyncClient.get_experiment_by_name)
    search_experiments = _blocking(AsyncClient.search_experiments)
    iter_experiments = _blocking_iter(AsyncClient.iter_experiments)
    rename_experiment = _blocking(AsyncClient.rename_experiment)
    delete_experiment = _blocking(AsyncClient.delete_experiment)
    restore_experiment = _blocking(AsyncClient.restore_experiment)
    get_experiment_permission_levels = _blocking(AsyncClient.get_experiment_permission_levels)
    get_experiment_permissions = _blocking(AsyncClient.get_experiment_permissions)
    set_experiment_permissions = _blocking(AsyncClient.set_experiment_permissions)
    update_experiment_permissions = _blocking(AsyncClient.update_experiment_permissions)
    set_experiment_tag = _blocking(AsyncClient.set_experiment_tag)
    delete_experiment_tag = _blocking(AsyncClient.delete_experiment_tag)
    search_datasets = _blocking(AsyncClient.search_datasets)

    create_run = _blocking(AsyncClient.create_run)
    get_run = _blocking(AsyncClient.get_run)
    get_parent_run = _blocking(AsyncClient.get_parent_run)
    update_run = _blocking(AsyncClient.update_run)
    set_terminated = _blocking(AsyncClient.set_terminated)
    delete_run = _blocking(AsyncClient.delete_run)
    restore_run = _blocking(AsyncClient.restore_run)
    delete_runs = _blocking(AsyncClient.delete_runs)
    restore_runs = _blocking(AsyncClient.restore_runs)
    log_metric = _blocking(AsyncClient.log_metric)
    log_param = _blocking(AsyncClient.log_param)
    set_tag = _blocking(AsyncClient.set_tag)
    delete_tag = _blocking(AsyncClient.delete_tag)
    log_batch = _blocking(AsyncClient.log_batch)
    get_metric_history = _blocking(AsyncClient.get_metric_history)
    iter_metric_history = _blocking_iter(AsyncClient.iter_metric_history)
    iter_metric_columns = _blocking_iter(AsyncClient.iter_metric_columns)
    get_metric_columns = _blocking(AsyncClient.get_metric_columns)
    search_runs = _blocking(AsyncClient.search_runs)
    iter_runs = _blocking_iter(AsyncClient.iter_runs)
    list_child_runs = _blocking(AsyncClient.list_child_runs)
    iter_child_runs = _blocking_iter(AsyncClient.iter_child_runs)

    heartbeat = _blocking(AsyncClient.heartbeat)
    get_metric_envelope = _blocking(AsyncClient.get_metric_envelope)
    watch_run = _blocking_iter(AsyncClient.watch_run)

    log_inputs = _blocking(AsyncClient.log_inputs)
    log_input = _blocking(AsyncClient.log_input)
    log_outputs = _blocking(AsyncClient.log_outputs)
    log_output = _blocking(AsyncClient.log_output)

    create_logged_model = _blocking(AsyncClient.create_logged_model)
    get_logged_model = _blocking(AsyncClient.get_logged_model)
    finalize_logged_model = _blocking(AsyncClient.finalize_logged_model)
    delete_logged_model = _blocking(AsyncClient.delete_logged_model)
    set_logged_model_tags = _blocking(AsyncClient.set_logged_model_tags)
    delete_logged_model_tag = _blocking(AsyncClient.delete_logged_model_tag)
    log_model_params = _blocking(AsyncClient.log_model_params)
    search_logged_models = _blocking(AsyncClient.search_logged_models)
    iter_logged_models = _blocking_iter(AsyncClient.iter_logged_models)

    upload_artifact = _blocking(AsyncClient.upload_artifact)
    download_artifact = _blocking(AsyncClient.download_artifact)
    get_artifact = _blocking(AsyncClient.get_artifact)
    delete_artifact = _blocking(AsyncClient.delete_artifact)
    iter_artifacts = _blocking_iter(AsyncClient.iter_artifacts)
    list_artifacts = _blocking(AsyncClient.list_artifacts)
    list_logged_model_artifacts = _blocking(AsyncClient.list_logged_model_artifacts)
    log_artifact = _blocking(AsyncClient.log_artifact)
    log_artifacts = _blocking(AsyncClient.log_artifacts)
    log_model_artifact = _blocking(AsyncClient.log_model_artifact)
    log_model_artifacts = _blocking(AsyncClient.log_model_artifacts)
    log_text = _blocking(AsyncClient.log_text)
    log_dict = _blocking(AsyncClient.log_dict)
    log_figure = _blocking(AsyncClient.log_figure)
    download_artifacts = _blocking(AsyncClient.download_artifacts)
    download_model_artifacts = _blocking(AsyncClient.download_model_artifacts)


__all__ = ["ActiveRun", "Client"]
