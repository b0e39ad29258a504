"""AsyncClient's experiment calls, under MlflowClient's names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping

import grpc

from trackd.client import checks, inputs
from trackd.client.calls import Calls, all_pages, rpc
from trackd.client.entities import (
    PERMISSION_LEVELS,
    AccessControl,
    DatasetSummary,
    Experiment,
    PagedList,
    ViewType,
    permission_level_number,
    view_type_number,
)
from trackd.client.errors import NotFoundError, from_rpc_error
from trackd.v1 import experiment_pb2, experiment_service_pb2


class ExperimentCalls(Calls):
    """Experiments: create, read, search, rename, delete and restore, tags, datasets."""

    @rpc
    async def create_experiment(
        self,
        name: str,
        artifact_location: str | None = None,
        tags: Mapping[str, object] | None = None,
        workspace: str | None = None,
    ) -> str:
        """Creates an experiment in `workspace` (None: "default"); returns its id.

        Raises:
            AlreadyExistsError: the name is taken. InvalidArgumentError: a bad name or tag.
            NotFoundError: no such workspace (or none the caller has a role in).
        """
        req = experiment_service_pb2.CreateExperimentRequest(
            name=name,
            artifact_location=artifact_location or "",
            tags=inputs.experiment_tags(tags),
            workspace=workspace or "",
        )
        resp = await self.experiments.CreateExperiment(req, timeout=self.timeout)
        return resp.experiment_id

    @rpc
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

    @rpc
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

        return all_pages(fetch)

    @rpc
    async def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        """Renames an experiment (the UpdateExperiment call).

        Raises:
            AlreadyExistsError: the name is taken. NotFoundError: no such experiment.
        """
        req = experiment_service_pb2.UpdateExperimentRequest(
            experiment_id=experiment_id, new_name=new_name
        )
        await self.experiments.UpdateExperiment(req, timeout=self.timeout)

    @rpc
    async def delete_experiment(self, experiment_id: str) -> None:
        """Soft-deletes an experiment and its runs."""
        req = experiment_service_pb2.DeleteExperimentRequest(experiment_id=experiment_id)
        await self.experiments.DeleteExperiment(req, timeout=self.timeout)

    @rpc
    async def restore_experiment(self, experiment_id: str) -> None:
        """Restores a deleted experiment and the runs deleted with it."""
        req = experiment_service_pb2.RestoreExperimentRequest(experiment_id=experiment_id)
        await self.experiments.RestoreExperiment(req, timeout=self.timeout)

    @rpc
    async def set_experiment_tag(self, experiment_id: str, key: str, value: object) -> None:
        """Sets a tag of an experiment (values at most 5000 characters)."""
        (tag,) = inputs.experiment_tags([(key, value)], "tag")
        req = experiment_service_pb2.SetExperimentTagRequest(
            experiment_id=experiment_id, key=tag.key, value=tag.value
        )
        await self.experiments.SetExperimentTag(req, timeout=self.timeout)

    @rpc
    async def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        """Deletes a tag of an experiment.

        Raises:
            NotFoundError: the experiment has no such tag.
        """
        req = experiment_service_pb2.DeleteExperimentTagRequest(
            experiment_id=experiment_id, key=checks.check_key(key)
        )
        await self.experiments.DeleteExperimentTag(req, timeout=self.timeout)

    @rpc
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

    @rpc
    async def get_experiment_permission_levels(self, experiment_id: str) -> dict[str, str]:
        """The levels an experiment can grant ("CAN_READ", ...), with what each allows."""
        req = experiment_service_pb2.GetExperimentPermissionLevelsRequest(
            experiment_id=experiment_id
        )
        resp = await self.experiments.GetExperimentPermissionLevels(req, timeout=self.timeout)
        return {
            PERMISSION_LEVELS.get(d.permission_level, "UNSPECIFIED"): d.description
            for d in resp.permission_levels
        }

    @rpc
    async def get_experiment_permissions(self, experiment_id: str) -> list[AccessControl]:
        """Who holds which level on an experiment: grants and workspace roles (needs
        CAN_MANAGE).

        Raises:
            NotFoundError: no such experiment. PermissionDeniedError: below CAN_MANAGE.
        """
        req = experiment_service_pb2.GetExperimentPermissionsRequest(experiment_id=experiment_id)
        resp = await self.experiments.GetExperimentPermissions(req, timeout=self.timeout)
        return [AccessControl.from_proto(a) for a in resp.access_control_list]

    @rpc
    async def set_experiment_permissions(
        self, experiment_id: str, access_control_list: Iterable[Mapping[str, object]]
    ) -> list[AccessControl]:
        """Replaces the grants on an experiment with `access_control_list`, entries like
        {"user_name": "ana", "permission_level": "CAN_EDIT"} or {"group_name": ...};
        returns who holds which level after the change (needs CAN_MANAGE)."""
        req = experiment_service_pb2.SetExperimentPermissionsRequest(
            experiment_id=experiment_id, access_control_list=_grants(access_control_list)
        )
        resp = await self.experiments.SetExperimentPermissions(req, timeout=self.timeout)
        return [AccessControl.from_proto(a) for a in resp.access_control_list]

    @rpc
    async def update_experiment_permissions(
        self, experiment_id: str, access_control_list: Iterable[Mapping[str, object]]
    ) -> list[AccessControl]:
        """Adds or changes grants on an experiment (as set_experiment_permissions, keeping
        the others); returns who holds which level after the change."""
        req = experiment_service_pb2.UpdateExperimentPermissionsRequest(
            experiment_id=experiment_id, access_control_list=_grants(access_control_list)
        )
        resp = await self.experiments.UpdateExperimentPermissions(req, timeout=self.timeout)
        return [AccessControl.from_proto(a) for a in resp.access_control_list]


def _grants(
    entries: Iterable[Mapping[str, object]],
) -> list[experiment_pb2.AccessControlRequest]:
    """AccessControlRequest messages of {"user_name"|"group_name", "permission_level"}."""
    out = []
    for e in entries:
        level = e.get("permission_level", "")
        out.append(
            experiment_pb2.AccessControlRequest(
                user_name=str(e.get("user_name") or ""),
                group_name=str(e.get("group_name") or ""),
                permission_level=experiment_pb2.PermissionLevel.ValueType(
                    permission_level_number(level if isinstance(level, int) else str(level))
                ),
            )
        )
    return out
