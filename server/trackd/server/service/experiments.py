"""The ExperimentService servicer."""

from __future__ import annotations

from typing import Any

from trackd.server import convert
from trackd.server.domain.auth.policy import Gate
from trackd.server.domain.datasets import Datasets
from trackd.server.domain.experiments import Experiments
from trackd.server.service import sizes
from trackd.server.service.rpc import Context
from trackd.v1 import experiment_pb2, experiment_service_pb2_grpc
from trackd.v1 import experiment_service_pb2 as pb


class ExperimentService(experiment_service_pb2_grpc.ExperimentServiceServicer):
    """trackd.v1.ExperimentService over the experiments domain."""

    def __init__(self, experiments: Experiments, datasets: Datasets) -> None:
        self.experiments = experiments
        self.datasets = datasets
        # The permission policy of every call (service/rpc.py applies it).
        self.gate = Gate(experiments.db)

    async def CreateExperiment(
        self, request: pb.CreateExperimentRequest, context: Context
    ) -> pb.CreateExperimentResponse:
        eid = await self.experiments.create(
            request.name, request.artifact_location, convert.pairs(request.tags), request.workspace
        )
        return pb.CreateExperimentResponse(experiment_id=eid)

    async def GetExperiment(
        self, request: pb.GetExperimentRequest, context: Context
    ) -> pb.GetExperimentResponse:
        row = await self.experiments.get(request.experiment_id)
        return pb.GetExperimentResponse(experiment=convert.experiment(row))

    async def GetExperimentByName(
        self, request: pb.GetExperimentByNameRequest, context: Context
    ) -> pb.GetExperimentByNameResponse:
        row = await self.experiments.get_by_name(request.experiment_name)
        return pb.GetExperimentByNameResponse(experiment=convert.experiment(row))

    async def SearchExperiments(
        self, request: pb.SearchExperimentsRequest, context: Context
    ) -> pb.SearchExperimentsResponse:
        rows, token = await self.experiments.search(
            request.filter,
            list(request.order_by),
            request.max_results,
            request.page_token,
            request.view_type,
        )
        response = pb.SearchExperimentsResponse(
            experiments=[convert.experiment(r) for r in rows], next_page_token=token
        )
        sizes.fit_page(response, "experiments", rows, "SearchExperiments")
        return response

    async def UpdateExperiment(
        self, request: pb.UpdateExperimentRequest, context: Context
    ) -> pb.UpdateExperimentResponse:
        await self.experiments.rename(request.experiment_id, request.new_name)
        return pb.UpdateExperimentResponse()

    async def DeleteExperiment(
        self, request: pb.DeleteExperimentRequest, context: Context
    ) -> pb.DeleteExperimentResponse:
        await self.experiments.delete(request.experiment_id)
        return pb.DeleteExperimentResponse()

    async def RestoreExperiment(
        self, request: pb.RestoreExperimentRequest, context: Context
    ) -> pb.RestoreExperimentResponse:
        await self.experiments.restore(request.experiment_id)
        return pb.RestoreExperimentResponse()

    async def SetExperimentTag(
        self, request: pb.SetExperimentTagRequest, context: Context
    ) -> pb.SetExperimentTagResponse:
        await self.experiments.set_tag(request.experiment_id, request.key, request.value)
        return pb.SetExperimentTagResponse()

    async def DeleteExperimentTag(
        self, request: pb.DeleteExperimentTagRequest, context: Context
    ) -> pb.DeleteExperimentTagResponse:
        await self.experiments.delete_tag(request.experiment_id, request.key)
        return pb.DeleteExperimentTagResponse()

    async def SearchDatasets(
        self, request: pb.SearchDatasetsRequest, context: Context
    ) -> pb.SearchDatasetsResponse:
        rows, token = await self.datasets.search(
            list(request.experiment_ids), request.max_results, request.page_token
        )
        response = pb.SearchDatasetsResponse(
            dataset_summaries=[convert.dataset_summary(r) for r in rows], next_page_token=token
        )
        sizes.fit_page(response, "dataset_summaries", rows, "SearchDatasets")
        return response

    async def GetExperimentPermissionLevels(
        self, request: pb.GetExperimentPermissionLevelsRequest, context: Context
    ) -> pb.GetExperimentPermissionLevelsResponse:
        levels = await self.experiments.permission_levels(request.experiment_id)
        return pb.GetExperimentPermissionLevelsResponse(
            permission_levels=[
                experiment_pb2.PermissionLevelDescription(
                    permission_level=experiment_pb2.PermissionLevel.ValueType(level),
                    description=text,
                )
                for level, text in levels
            ]
        )

    async def GetExperimentPermissions(
        self, request: pb.GetExperimentPermissionsRequest, context: Context
    ) -> pb.GetExperimentPermissionsResponse:
        entries = await self.experiments.permissions(request.experiment_id)
        return pb.GetExperimentPermissionsResponse(
            experiment_id=request.experiment_id, access_control_list=convert.access_list(entries)
        )

    async def SetExperimentPermissions(
        self, request: pb.SetExperimentPermissionsRequest, context: Context
    ) -> pb.SetExperimentPermissionsResponse:
        return pb.SetExperimentPermissionsResponse(**await self._grant(request, replace=True))

    async def UpdateExperimentPermissions(
        self, request: pb.UpdateExperimentPermissionsRequest, context: Context
    ) -> pb.UpdateExperimentPermissionsResponse:
        return pb.UpdateExperimentPermissionsResponse(**await self._grant(request, replace=False))

    async def _grant(
        self,
        request: pb.SetExperimentPermissionsRequest | pb.UpdateExperimentPermissionsRequest,
        *,
        replace: bool,
    ) -> dict[str, Any]:
        """Set's or Update's change, and the fields of its answer."""
        entries = await self.experiments.set_permissions(
            request.experiment_id, convert.grants(request.access_control_list), replace=replace
        )
        return {
            "experiment_id": request.experiment_id,
            "access_control_list": convert.access_list(entries),
        }
