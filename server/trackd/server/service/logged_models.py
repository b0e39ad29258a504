"""The LoggedModelService servicer."""

from __future__ import annotations

from trackd.server import convert
from trackd.server.domain.auth.policy import Gate
from trackd.server.domain.logged_models import LoggedModels
from trackd.server.service import sizes
from trackd.server.service.rpc import Context
from trackd.v1 import logged_model_service_pb2 as pb
from trackd.v1 import logged_model_service_pb2_grpc


class LoggedModelService(logged_model_service_pb2_grpc.LoggedModelServiceServicer):
    """trackd.v1.LoggedModelService over the logged models domain."""

    def __init__(self, models: LoggedModels) -> None:
        self.models = models
        # The permission policy of every call (service/rpc.py applies it).
        self.gate = Gate(models.db)

    async def CreateLoggedModel(
        self, request: pb.CreateLoggedModelRequest, context: Context
    ) -> pb.CreateLoggedModelResponse:
        sizes.check_created(request, "params", "params and tags")
        view = await self.models.create(
            experiment_id=request.experiment_id,
            name=request.name,
            model_type=request.model_type,
            source_run_id=request.source_run_id,
            params=convert.pairs(request.params),
            tags=convert.pairs(request.tags),
        )
        return pb.CreateLoggedModelResponse(model=convert.logged_model(view))

    async def GetLoggedModel(
        self, request: pb.GetLoggedModelRequest, context: Context
    ) -> pb.GetLoggedModelResponse:
        view = await self.models.get(request.model_id)
        return pb.GetLoggedModelResponse(model=convert.logged_model(view))

    async def FinalizeLoggedModel(
        self, request: pb.FinalizeLoggedModelRequest, context: Context
    ) -> pb.FinalizeLoggedModelResponse:
        view = await self.models.finalize(request.model_id, request.status, request.status_message)
        return pb.FinalizeLoggedModelResponse(model=convert.logged_model(view))

    async def DeleteLoggedModel(
        self, request: pb.DeleteLoggedModelRequest, context: Context
    ) -> pb.DeleteLoggedModelResponse:
        await self.models.delete(request.model_id)
        return pb.DeleteLoggedModelResponse()

    async def SetLoggedModelTags(
        self, request: pb.SetLoggedModelTagsRequest, context: Context
    ) -> pb.SetLoggedModelTagsResponse:
        await self.models.set_tags(request.model_id, convert.pairs(request.tags))
        return pb.SetLoggedModelTagsResponse()

    async def DeleteLoggedModelTag(
        self, request: pb.DeleteLoggedModelTagRequest, context: Context
    ) -> pb.DeleteLoggedModelTagResponse:
        await self.models.delete_tag(request.model_id, request.tag_key)
        return pb.DeleteLoggedModelTagResponse()

    async def LogLoggedModelParams(
        self, request: pb.LogLoggedModelParamsRequest, context: Context
    ) -> pb.LogLoggedModelParamsResponse:
        await self.models.log_params(request.model_id, convert.pairs(request.params))
        return pb.LogLoggedModelParamsResponse()

    async def SearchLoggedModels(
        self, request: pb.SearchLoggedModelsRequest, context: Context
    ) -> pb.SearchLoggedModelsResponse:
        views, token = await self.models.search(
            list(request.experiment_ids),
            request.filter,
            [(d.dataset_name, d.dataset_digest) for d in request.datasets],
            list(request.order_by),
            request.max_results,
            request.page_token,
        )
        response = pb.SearchLoggedModelsResponse(
            models=[convert.logged_model(v) for v in views], next_page_token=token
        )
        sizes.fit_page(response, "models", views, "SearchLoggedModels")
        return response
