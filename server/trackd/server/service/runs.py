"""The RunService servicer."""

from __future__ import annotations

from collections.abc import AsyncIterator

from trackd.server import convert
from trackd.server.domain.auth.policy import Gate
from trackd.server.domain.envelopes import Envelopes
from trackd.server.domain.run_search import RunSearch
from trackd.server.domain.runs import Runs
from trackd.server.domain.streams import MetricStreams
from trackd.server.domain.watch import Watches
from trackd.server.service import sizes
from trackd.server.service.rpc import Context
from trackd.v1 import run_service_pb2 as pb
from trackd.v1 import run_service_pb2_grpc


class RunService(run_service_pb2_grpc.RunServiceServicer):
    """trackd.v1.RunService over the runs domain."""

    def __init__(
        self,
        runs: Runs,
        search: RunSearch,
        streams: MetricStreams,
        envelopes: Envelopes,
        watches: Watches,
    ) -> None:
        self.runs = runs
        self.search = search
        self.streams = streams
        self.envelopes = envelopes
        self.watches = watches
        # The permission policy of every call (service/rpc.py applies it).
        self.gate = Gate(runs.db)

    async def CreateRun(
        self, request: pb.CreateRunRequest, context: Context
    ) -> pb.CreateRunResponse:
        view = await self.runs.create(
            experiment_id=request.experiment_id,
            run_name=request.run_name,
            start_time=request.start_time,
            tags=convert.pairs(request.tags),
            user_id=request.user_id,
            parent_run_id=request.parent_run_id,
            description=request.description,
            external_url=request.external_url,
            source=convert.run_source(request.source),
        )
        return pb.CreateRunResponse(run=convert.run(view))

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        return pb.GetRunResponse(run=convert.run(await self.runs.get(request.run_id)))

    async def UpdateRun(
        self, request: pb.UpdateRunRequest, context: Context
    ) -> pb.UpdateRunResponse:
        row = await self.runs.update(
            request.run_id,
            request.status,
            request.end_time if request.HasField("end_time") else None,
            request.run_name if request.HasField("run_name") else None,
            description=request.description if request.HasField("description") else None,
            external_url=request.external_url if request.HasField("external_url") else None,
            source=convert.run_source(request.source) if request.HasField("source") else None,
        )
        return pb.UpdateRunResponse(run_info=convert.run_info(row))

    async def DeleteRun(
        self, request: pb.DeleteRunRequest, context: Context
    ) -> pb.DeleteRunResponse:
        await self.runs.delete(request.run_id)
        return pb.DeleteRunResponse()

    async def RestoreRun(
        self, request: pb.RestoreRunRequest, context: Context
    ) -> pb.RestoreRunResponse:
        await self.runs.restore(request.run_id)
        return pb.RestoreRunResponse()

    async def DeleteRuns(
        self, request: pb.DeleteRunsRequest, context: Context
    ) -> pb.DeleteRunsResponse:
        n = await self.runs.delete_many(
            request.experiment_id, request.max_timestamp_millis, request.max_runs
        )
        return pb.DeleteRunsResponse(runs_deleted=n)

    async def RestoreRuns(
        self, request: pb.RestoreRunsRequest, context: Context
    ) -> pb.RestoreRunsResponse:
        n = await self.runs.restore_many(
            request.experiment_id, request.min_timestamp_millis, request.max_runs
        )
        return pb.RestoreRunsResponse(runs_restored=n)

    async def LogMetric(
        self, request: pb.LogMetricRequest, context: Context
    ) -> pb.LogMetricResponse:
        await self.runs.log_metric(
            request.run_id,
            request.key,
            request.value,
            request.timestamp,
            request.step,
            request.model_id,
            request.dataset_name,
            request.dataset_digest,
        )
        return pb.LogMetricResponse()

    async def LogParam(self, request: pb.LogParamRequest, context: Context) -> pb.LogParamResponse:
        await self.runs.log_param(request.run_id, request.key, request.value, request.type)
        return pb.LogParamResponse()

    async def SetTag(self, request: pb.SetTagRequest, context: Context) -> pb.SetTagResponse:
        await self.runs.set_tag(request.run_id, request.key, request.value)
        return pb.SetTagResponse()

    async def DeleteTag(
        self, request: pb.DeleteTagRequest, context: Context
    ) -> pb.DeleteTagResponse:
        await self.runs.delete_tag(request.run_id, request.key)
        return pb.DeleteTagResponse()

    async def LogBatch(self, request: pb.LogBatchRequest, context: Context) -> pb.LogBatchResponse:
        await self.runs.log_batch(
            request.run_id,
            convert.metric_columns(request.metrics),
            convert.typed_params(request.params),
            convert.pairs(request.tags),
        )
        return pb.LogBatchResponse()

    async def LogInputs(
        self, request: pb.LogInputsRequest, context: Context
    ) -> pb.LogInputsResponse:
        await self.runs.log_inputs(
            request.run_id,
            convert.dataset_inputs(request.datasets),
            [m.model_id for m in request.models],
        )
        return pb.LogInputsResponse()

    async def LogOutputs(
        self, request: pb.LogOutputsRequest, context: Context
    ) -> pb.LogOutputsResponse:
        await self.runs.log_outputs(request.run_id, [(m.model_id, m.step) for m in request.models])
        return pb.LogOutputsResponse()

    async def GetMetricHistory(
        self, request: pb.GetMetricHistoryRequest, context: Context
    ) -> pb.GetMetricHistoryResponse:
        columns, token = await self.runs.metric_history(
            request.run_id, request.metric_key, request.max_results, request.page_token
        )
        response = pb.GetMetricHistoryResponse(next_page_token=token, metric_key=request.metric_key)
        convert.add_history(response.metrics, columns)
        return response

    async def SearchRuns(
        self, request: pb.SearchRunsRequest, context: Context
    ) -> pb.SearchRunsResponse:
        views, token = await self.search.search(
            list(request.experiment_ids),
            request.filter,
            list(request.order_by),
            request.max_results,
            request.page_token,
            request.run_view_type,
            request.root_runs_only,
        )
        response = pb.SearchRunsResponse(
            runs=[convert.run(v) for v in views], next_page_token=token
        )
        sizes.fit_page(response, "runs", views, "SearchRuns")
        return response

    async def ListChildRuns(
        self, request: pb.ListChildRunsRequest, context: Context
    ) -> pb.ListChildRunsResponse:
        views, token = await self.search.children(
            request.run_id, request.max_results, request.page_token, request.run_view_type
        )
        response = pb.ListChildRunsResponse(
            runs=[convert.run(v) for v in views], next_page_token=token
        )
        sizes.fit_page(response, "runs", views, "ListChildRuns")
        return response

    async def StreamMetrics(
        self, request_iterator: AsyncIterator[pb.StreamMetricsRequest], context: Context
    ) -> AsyncIterator[pb.StreamMetricsResponse]:
        async for ack in self.streams.serve(request_iterator, self.gate.authorizer):
            for rejection in ack.rejections:
                convert.complete_rejection(rejection)
            yield ack

    async def StreamMetricHistory(
        self, request: pb.StreamMetricHistoryRequest, context: Context
    ) -> AsyncIterator[pb.StreamMetricHistoryResponse]:
        chunks = self.runs.stream_history(request.run_id, request.metric_key, request.chunk_size)
        async for columns in chunks:
            # A chunk of up to 200,000 points may exceed the message size: send it in parts.
            for steps, stamps, values in sizes.split_columns(*columns):
                yield pb.StreamMetricHistoryResponse(steps=steps, timestamps=stamps, values=values)

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: Context
    ) -> pb.HeartbeatResponse:
        await self.runs.heartbeat(request.run_id)
        return pb.HeartbeatResponse()

    async def StreamMetricEnvelopes(
        self, request: pb.StreamMetricEnvelopesRequest, context: Context
    ) -> AsyncIterator[pb.StreamMetricEnvelopesResponse]:
        async for envelope in self.envelopes.stream(request):
            yield envelope

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: Context
    ) -> AsyncIterator[pb.WatchRunResponse]:
        async for update in self.watches.watch(request):
            yield update
