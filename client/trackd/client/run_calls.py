"""AsyncClient's run calls, under MlflowClient's names: runs, params, tags, metrics and
their history, run search, and what runs consume and produce."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc

from trackd.client import checks, inputs
from trackd.client.calls import Calls, all_pages, rpc
from trackd.client.entities import (
    Dataset,
    DatasetInput,
    LoggedModelInput,
    LoggedModelOutput,
    Metric,
    PagedList,
    Run,
    RunInfo,
    RunStatus,
    ViewType,
    run_status_number,
    view_type_number,
)
from trackd.client.errors import from_rpc_error
from trackd.client.inputs import (
    DATASET_CONTEXT_TAG,
    MetricLike,
    RunSourceLike,
    now_ms,
)
from trackd.v1 import dataset_pb2, run_pb2, run_service_pb2


class RunCalls(Calls):
    """Runs and everything logged to them."""

    @rpc
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
        external_url: str | None = None,
        source: RunSourceLike | None = None,
    ) -> Run:
        """Creates a RUNNING run (MlflowClient's argument order); returns it.

        Args:
            experiment_id: the experiment ("0" is the default experiment).
            start_time: milliseconds since the Unix epoch; now if None.
            tags: a dict or a sequence of RunTag.
            run_name: a name; the server makes one up if None.
            user_id: who runs it.
            parent_run_id: the run this one is nested in, of the same experiment (also
                the `mlflow.parentRunId` tag); it cannot change later.
            description: the run's description (also the `mlflow.note.content` tag).
            external_url: a link to the run elsewhere (an http or https URL).
            source: what created the run: a RunSource, or a pair (type, id) such as
                ("job", "train-42"), the type a word or a RunSourceType.

        Raises:
            NotFoundError: no such experiment or parent. InvalidArgumentError: a bad tag,
                URL or source, or a parent of another experiment. ValueError: an unknown
                source type.
        """
        req = run_service_pb2.CreateRunRequest(
            experiment_id=experiment_id,
            run_name=run_name or "",
            start_time=0
            if start_time is None
            else checks.timestamp_value(start_time, "start_time"),
            tags=inputs.run_tags(tags),
            user_id=user_id or "",
            parent_run_id=parent_run_id or "",
            description=description or "",
            external_url=external_url or "",
        )
        if source is not None:
            req.source.CopyFrom(inputs.run_source(source))
        return Run.from_proto((await self.runs.CreateRun(req, timeout=self.timeout)).run)

    @rpc
    async def get_run(self, run_id: str) -> Run:
        """The run with its latest metrics, summaries, params, tags, inputs and outputs.

        Raises:
            NotFoundError: no such run.
        """
        req = run_service_pb2.GetRunRequest(run_id=run_id)
        return Run.from_proto((await self.runs.GetRun(req, timeout=self.timeout)).run)

    async def get_parent_run(self, run_id: str) -> Run | None:
        """The run this one is nested in (its parent_run_id: the server's, which also
        follows MLflow's `mlflow.parentRunId` tag), or None for a root run."""
        parent = (await self.get_run(run_id)).info.parent_run_id
        return await self.get_run(parent) if parent else None

    @rpc
    async def update_run(
        self,
        run_id: str,
        status: RunStatus | str | int | None = None,
        name: str | None = None,
        *,
        end_time: int | None = None,
        description: str | None = None,
        external_url: str | None = None,
        source: RunSourceLike | str | None = None,
    ) -> RunInfo:
        """Changes a run's status ("FINISHED", ...), name, end time, description, external
        URL or source; None leaves each as it is, "" clears the description, the URL or
        the source. Returns the run's info.

        Args:
            run_id: the run.
            status: a RunStatus word, the enum or its number.
            name: a new name (also the `mlflow.runName` tag).
            end_time: milliseconds since the Unix epoch.
            description: a new description (also the `mlflow.note.content` tag).
            external_url: a new link (an http or https URL).
            source: a RunSource or a (type, id) pair as create_run(); "" clears it.

        Raises:
            NotFoundError: no such run. InvalidArgumentError: a bad field.
            FailedPreconditionError: the run is deleted.
        """
        req = run_service_pb2.UpdateRunRequest(
            run_id=run_id,
            status=run_pb2.RUN_STATUS_UNSPECIFIED if status is None else run_status_number(status),
        )
        if end_time is not None:
            req.end_time = checks.timestamp_value(end_time, "end_time")
        if name is not None:
            req.run_name = name
        if description is not None:
            req.description = description
        if external_url is not None:
            req.external_url = external_url
        if source is not None:
            req.source.CopyFrom(inputs.run_source(source))
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

    @rpc
    async def delete_run(self, run_id: str) -> None:
        """Soft-deletes a run."""
        req = run_service_pb2.DeleteRunRequest(run_id=run_id)
        await self.runs.DeleteRun(req, timeout=self.timeout)

    @rpc
    async def restore_run(self, run_id: str) -> None:
        """Restores a deleted run."""
        req = run_service_pb2.RestoreRunRequest(run_id=run_id)
        await self.runs.RestoreRun(req, timeout=self.timeout)

    @rpc
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

    @rpc
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

    @rpc
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

    @rpc
    async def log_param(
        self, run_id: str, key: str, value: object, synchronous: bool | None = None
    ) -> object:
        """Logs one immutable param; returns `value`. It is stored as MLflow's str(value)
        ("0.001", "True") with the type of the value: bool BOOL, int (numpy's too) INT,
        float DOUBLE, str STRING, anything else untyped. INT and DOUBLE params compare by
        value in search_runs (`params.lr < 0.01`).

        Raises:
            TypeError: value is None. FailedPreconditionError: the key has another value
                (or the same text with another type: 1 then "1").
        """
        text, kind = checks.typed_param_value(value)
        req = run_service_pb2.LogParamRequest(
            run_id=run_id, key=checks.check_key(key), value=text, type=kind
        )
        await self.runs.LogParam(req, timeout=self.timeout)
        return value

    @rpc
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

    @rpc
    async def delete_tag(self, run_id: str, key: str) -> None:
        """Deletes one tag of a run.

        Raises:
            NotFoundError: the run has no such tag.
        """
        req = run_service_pb2.DeleteTagRequest(run_id=run_id, key=checks.check_key(key))
        await self.runs.DeleteTag(req, timeout=self.timeout)

    @rpc
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
            params: a dict, or a sequence of Param or (key, value); each typed from its
                value as log_param() types it.
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

    @rpc
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
        return all_pages(functools.partial(self._metric_history_page, run_id, key, page_size))

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

    @rpc
    async def search_runs(
        self,
        experiment_ids: str | Iterable[str],
        filter_string: str = "",
        run_view_type: ViewType | str | int = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        order_by: Iterable[str] | None = None,
        page_token: str | None = None,
        *,
        root_runs_only: bool = False,
    ) -> PagedList[Run]:
        """One page of runs of the experiments matching `filter_string` (MLflow's language
        plus OR, NOT, parentheses, IS NULL, `metrics.loss.min` and numeric comparisons of
        typed params such as `params.lr < 0.01`), in `order_by` (default newest first);
        `.token` fetches the next page. `iter_runs` walks every page.

        With `root_runs_only`, only root runs (without a parent) are returned: those that
        match or have a descendant that matches; `run.descendant_match` says whether one
        did.

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
            root_runs_only=root_runs_only,
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
        *,
        root_runs_only: bool = False,
    ) -> AsyncIterator[Run]:
        """Every run matching the search, fetching page after page."""
        eids = inputs.ids(experiment_ids, "experiment_ids")
        order = list(order_by or ())

        async def fetch(token: str) -> tuple[Iterable[Run], str]:
            page = await self.search_runs(
                eids,
                filter_string,
                run_view_type,
                page_size,
                order,
                token,
                root_runs_only=root_runs_only,
            )
            return page, page.token or ""

        return all_pages(fetch)

    @rpc
    async def list_child_runs(
        self,
        run_id: str,
        max_results: int = 1000,
        page_token: str | None = None,
        run_view_type: ViewType | str | int = ViewType.ACTIVE_ONLY,
    ) -> PagedList[Run]:
        """One page of a run's child runs (one level down), newest first (start time
        descending, then run id), with the data search_runs returns; `.token` fetches the
        next page. `iter_child_runs` walks every page. A deleted run's children are
        listed too; `run_view_type` says which children (active only by default).

        Raises:
            NotFoundError: no such run. InvalidArgumentError: a bad max_results, view type
                or token.
        """
        req = run_service_pb2.ListChildRunsRequest(
            run_id=run_id,
            max_results=max_results,
            page_token=page_token or "",
            run_view_type=view_type_number(run_view_type, "run_view_type"),
        )
        resp = await self.runs.ListChildRuns(req, timeout=self.timeout)
        return PagedList(map(Run.from_proto, resp.runs), resp.next_page_token)

    def iter_child_runs(
        self,
        run_id: str,
        run_view_type: ViewType | str | int = ViewType.ACTIVE_ONLY,
        page_size: int = 1000,
    ) -> AsyncIterator[Run]:
        """Every child run of a run, newest first, fetching page after page."""

        async def fetch(token: str) -> tuple[Iterable[Run], str]:
            page = await self.list_child_runs(run_id, page_size, token, run_view_type)
            return page, page.token or ""

        return all_pages(fetch)

    # -- datasets, inputs and outputs --------------------------------------------------------

    @rpc
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

    @rpc
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
