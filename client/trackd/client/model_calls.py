"""AsyncClient's logged-model calls (MLflow 3), under MlflowClient's names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from trackd.client import checks, inputs
from trackd.client.calls import Calls, all_pages, rpc
from trackd.client.entities import (
    LoggedModel,
    LoggedModelStatus,
    PagedList,
    model_status_number,
)
from trackd.v1 import logged_model_service_pb2


class LoggedModelCalls(Calls):
    """Logged models: create, read, finalize, delete, tags, params, search."""

    @rpc
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

    @rpc
    async def get_logged_model(self, model_id: str) -> LoggedModel:
        """The logged model with its params, tags and latest metrics per dataset.

        Raises:
            NotFoundError: an unknown or deleted model.
        """
        req = logged_model_service_pb2.GetLoggedModelRequest(model_id=model_id)
        resp = await self.models.GetLoggedModel(req, timeout=self.timeout)
        return LoggedModel.from_proto(resp.model)

    @rpc
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

    @rpc
    async def delete_logged_model(self, model_id: str) -> None:
        """Soft-deletes a logged model."""
        req = logged_model_service_pb2.DeleteLoggedModelRequest(model_id=model_id)
        await self.models.DeleteLoggedModel(req, timeout=self.timeout)

    @rpc
    async def set_logged_model_tags(self, model_id: str, tags: Mapping[str, object]) -> None:
        """Sets tags of a logged model."""
        req = logged_model_service_pb2.SetLoggedModelTagsRequest(
            model_id=model_id, tags=inputs.model_tags(tags)
        )
        await self.models.SetLoggedModelTags(req, timeout=self.timeout)

    @rpc
    async def delete_logged_model_tag(self, model_id: str, key: str) -> None:
        """Deletes a tag of a logged model.

        Raises:
            NotFoundError: the model has no such tag.
        """
        req = logged_model_service_pb2.DeleteLoggedModelTagRequest(
            model_id=model_id, tag_key=checks.check_key(key)
        )
        await self.models.DeleteLoggedModelTag(req, timeout=self.timeout)

    @rpc
    async def log_model_params(self, model_id: str, params: Mapping[str, object]) -> None:
        """Logs immutable params of a logged model (the LogLoggedModelParams call).

        Raises:
            FailedPreconditionError: a param had another value.
        """
        req = logged_model_service_pb2.LogLoggedModelParamsRequest(
            model_id=model_id, params=inputs.model_params(params)
        )
        await self.models.LogLoggedModelParams(req, timeout=self.timeout)

    @rpc
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

        return all_pages(fetch)


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
