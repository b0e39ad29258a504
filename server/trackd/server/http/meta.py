"""The server's own routes, answered without authentication: `/health` (as MLflow's, plain
"OK" once the server is up), `/version` (trackd's version) and MLflow 3's
`/api/3.0/mlflow/server-info` (what the mlflow client learns of a server before it logs
in). They name no resource and carry no secret."""

from __future__ import annotations

from aiohttp import web

from trackd.client._version import __version__
from trackd.server.http.front import Route, json_response

SERVER_INFO = {
    "store_type": "trackd",
    "workspaces_enabled": False,
    "trace_archival_enabled": False,
    # Artifacts go through trackd's proxy with one PUT or GET a file: trackd has no
    # presigned part URLs, and its mpu/presigned endpoints answer NOT_IMPLEMENTED with
    # MLflow's message, on which the client falls back (mlflow_artifacts.py).
    "multipart_uploads_enabled": False,
    "multipart_downloads_enabled": False,
    "presigned_upload_run_id_supported": False,
    "presigned_upload_model_id_supported": False,
    "features_enabled": {"gateway": False},
}


async def health(request: web.Request) -> web.StreamResponse:
    return web.Response(text="OK")


async def version(request: web.Request) -> web.StreamResponse:
    return web.Response(text=__version__)


async def server_info(request: web.Request) -> web.StreamResponse:
    return json_response(SERVER_INFO)


def routes() -> list[Route]:
    return [
        Route("GET", "/health", health, ""),
        Route("GET", "/version", version, ""),
        Route("GET", "/server-info", server_info, "", ("/api/3.0/mlflow", "/ajax-api/3.0/mlflow")),
    ]
