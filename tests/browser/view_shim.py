"""A stand-in for trackd's view API over gRPC, used by the browser tests only while the
server under test has no /api/view routes of its own. It answers the same paths and JSON
(the protos as proto3 JSON with proto field names) from the gRPC services."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format

from trackd.v1 import (
    artifact_service_pb2,
    artifact_service_pb2_grpc,
    experiment_service_pb2,
    experiment_service_pb2_grpc,
    logged_model_service_pb2,
    logged_model_service_pb2_grpc,
    run_service_pb2,
    run_service_pb2_grpc,
)

# The policy trackd's HTTP front sends with the web view.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob:; connect-src 'self'"
)
WEB = Path(__file__).resolve().parents[2] / "server" / "trackd" / "server" / "web"


def _js(msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


async def start_shim(grpc_port: int) -> tuple[web.AppRunner, int, grpc.aio.Channel]:
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    exps = experiment_service_pb2_grpc.ExperimentServiceStub(ch)
    runs = run_service_pb2_grpc.RunServiceStub(ch)
    models = logged_model_service_pb2_grpc.LoggedModelServiceStub(ch)
    arts = artifact_service_pb2_grpc.ArtifactServiceStub(ch)

    def err(e: grpc.aio.AioRpcError) -> web.Response:
        status = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404}.get(
            e.code(), 500
        )
        body = {"error_code": e.code().name, "message": e.details()}
        return web.json_response(body, status=status)

    async def session(request: web.Request) -> web.Response:
        return web.json_response({"auth": False, "principal": "", "admin": True})

    async def experiments(request: web.Request) -> web.Response:
        q = request.query
        req = experiment_service_pb2.SearchExperimentsRequest(
            filter=q.get("filter", ""),
            max_results=int(q.get("max_results") or 0),
            page_token=q.get("page_token", ""),
        )
        if q.get("order_by"):
            req.order_by.append(q["order_by"])
        try:
            return web.json_response(_js(await exps.SearchExperiments(req)))
        except grpc.aio.AioRpcError as e:
            return err(e)

    async def search_runs(request: web.Request) -> web.Response:
        req = json_format.ParseDict(
            await request.json(), run_service_pb2.SearchRunsRequest(), ignore_unknown_fields=True
        )
        try:
            return web.json_response(_js(await runs.SearchRuns(req)))
        except grpc.aio.AioRpcError as e:
            return err(e)

    async def get_run(request: web.Request) -> web.Response:
        try:
            res = await runs.GetRun(run_service_pb2.GetRunRequest(run_id=request.match_info["id"]))
            return web.json_response(_js(res))
        except grpc.aio.AioRpcError as e:
            return err(e)

    async def children(request: web.Request) -> web.Response:
        req = run_service_pb2.ListChildRunsRequest(
            run_id=request.match_info["id"], page_token=request.query.get("page_token", "")
        )
        try:
            return web.json_response(_js(await runs.ListChildRuns(req)))
        except grpc.aio.AioRpcError as e:
            return err(e)

    async def envelopes(request: web.Request) -> web.Response:
        req = json_format.ParseDict(
            await request.json(),
            run_service_pb2.StreamMetricEnvelopesRequest(),
            ignore_unknown_fields=True,
        )
        try:
            out = [_js(e) async for e in runs.StreamMetricEnvelopes(req)]
        except grpc.aio.AioRpcError as e:
            return err(e)
        return web.json_response({"envelopes": out})

    async def watch(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        call = runs.WatchRun(run_service_pb2.WatchRunRequest(run_id=request.query["run_id"]))
        try:
            async for m in call:
                data = json.dumps(_js(m))
                await resp.write(f"event: update\ndata: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError, grpc.aio.AioRpcError):
            call.cancel()
        return resp

    def owner(request: web.Request) -> dict[str, str]:
        kind = request.match_info["kind"]
        return {"run_id" if kind == "runs" else "model_id": request.match_info["id"]}

    async def list_artifacts(request: web.Request) -> web.Response:
        req = artifact_service_pb2.ListArtifactsRequest(
            path=request.query.get("path", ""),
            page_token=request.query.get("page_token", ""),
            **owner(request),
        )
        try:
            return web.json_response(_js(await arts.ListArtifacts(req)))
        except grpc.aio.AioRpcError as e:
            return err(e)

    async def artifact(request: web.Request) -> web.StreamResponse:
        req = artifact_service_pb2.DownloadArtifactRequest(
            path=request.match_info["path"], **owner(request)
        )
        resp = web.StreamResponse()
        async for m in arts.DownloadArtifact(req):
            if m.HasField("artifact"):
                resp.content_type = m.artifact.content_type or "application/octet-stream"
                name = m.artifact.path.rsplit("/", 1)[-1]
                disp = "attachment" if request.query.get("download") else "inline"
                resp.headers["Content-Disposition"] = f'{disp}; filename="{name}"'
                await resp.prepare(request)
            else:
                await resp.write(m.data)
        return resp

    async def search_models(request: web.Request) -> web.Response:
        req = json_format.ParseDict(
            await request.json(),
            logged_model_service_pb2.SearchLoggedModelsRequest(),
            ignore_unknown_fields=True,
        )
        try:
            return web.json_response(_js(await models.SearchLoggedModels(req)))
        except grpc.aio.AioRpcError as e:
            return err(e)

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB / "index.html")

    @web.middleware
    async def csp(request: web.Request, handler: Any) -> web.StreamResponse:
        resp: web.StreamResponse = await handler(request)
        if not resp.prepared:
            resp.headers["Content-Security-Policy"] = CSP
        return resp

    app = web.Application(middlewares=[csp])
    app.router.add_get("/", index)
    app.router.add_static("/static/", WEB)
    app.router.add_get("/api/view/session", session)
    app.router.add_get("/api/view/experiments", experiments)
    app.router.add_post("/api/view/runs/search", search_runs)
    app.router.add_get("/api/view/runs/{id}", get_run)
    app.router.add_get("/api/view/runs/{id}/children", children)
    app.router.add_post("/api/view/envelopes", envelopes)
    app.router.add_get("/api/view/watch", watch)
    app.router.add_get("/api/view/{kind}/{id}/artifacts", list_artifacts)
    app.router.add_get("/api/view/{kind}/{id}/artifacts/{path:.+}", artifact)
    app.router.add_post("/api/view/logged-models/search", search_models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port, ch
