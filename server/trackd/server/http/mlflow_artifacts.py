"""MLflow's artifact proxy (`/api/2.0/mlflow-artifacts/...`), `artifacts/list` and
ListLoggedModelArtifacts over trackd's artifact store (domain/artifacts.py).

Runs appear in REST with the artifact URI `mlflow-artifacts:/<experiment_id>/<run_id>/artifacts`
and logged models with `mlflow-artifacts:/<experiment_id>/models/<model_id>/artifacts`
(mlflow_json.run_artifact_uri, mlflow_json.model_artifact_uri); the mlflow client turns
them into paths of the proxy, so a proxy path is one of

    <experiment_id>/<run_id>/artifacts[/<path>]
    <experiment_id>/models/<model_id>/artifacts[/<path>]

and names a file (or directory) of that run or logged model. Anything else is refused
(INVALID_PARAMETER_VALUE): trackd keeps no files outside a run's or logged model's root.
Every handler checks the caller against the rule of the ArtifactService RPC it mirrors,
with the owner the path names.

Multipart uploads and presigned downloads are not offered (server-info says so); their
endpoints answer NOT_IMPLEMENTED with MLflow's own message, on which the mlflow client
falls back to a plain PUT or GET, as against MLflow's server over a store without them.
"""

from __future__ import annotations

import contextlib
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from trackd.server.domain import validation
from trackd.server.domain.artifacts import (
    CHUNK_BYTES_MAX,
    LIST_MAX,
    Artifacts,
    Owner,
    Upload,
)
from trackd.server.errors import Aborted, InvalidArgument, NotFound
from trackd.server.http import mlflow_json as mj
from trackd.server.http.front import HttpFront, Route, json_response
from trackd.server.http.mlflow_json import Fields
from trackd.server.store import artifacts as store
from trackd.v1 import artifact_service_pb2 as apb

log = logging.getLogger(__name__)

_ART = "trackd.v1.ArtifactService."
_UPLOAD = _ART + "UploadArtifact"
_DOWNLOAD = _ART + "DownloadArtifact"
_LIST = _ART + "ListArtifacts"
_DELETE = _ART + "DeleteArtifact"

PROXY_PREFIXES = ("/api/2.0/mlflow-artifacts", "/ajax-api/2.0/mlflow-artifacts")
MLFLOW_PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")

# MLflow's messages for a store without multipart uploads or presigned downloads: the
# mlflow client recognises the first (mpu/create) and then uploads with one PUT.
MULTIPART_UPLOAD_UNSUPPORTED = (
    "Multipart upload is not supported for the current artifact repository"
)
MULTIPART_DOWNLOAD_UNSUPPORTED = (
    "Multipart download is not supported for the current artifact repository"
)
_FORMS = (
    "'<experiment_id>/<run_id>/artifacts/<path>' or "
    "'<experiment_id>/models/<model_id>/artifacts/<path>'"
)
_EXPERIMENT_RE = re.compile(r"[0-9]{1,19}")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


def _not_implemented(message: str) -> web.Response:
    """MLflow's answer for what its API defines and the artifact store does not offer
    (HTTP-only: no gRPC call can ask for it, so it is no reason of trackd's contract)."""
    return json_response({"error_code": "NOT_IMPLEMENTED", "message": message}, 501)


@dataclass(frozen=True)
class Place:
    """What a proxy path names: an owner (run or logged model) of an experiment, and a
    path under the owner's artifact root ("" for the root)."""

    kind: int
    ident: str
    experiment_id: str
    rel: str

    def target(self, cls: Any, **fields: Any) -> Any:
        """The trackd request message `cls` naming this owner (what the rule reads)."""
        owner = "run_id" if self.kind == store.RUN else "model_id"
        return cls(**{owner: self.ident}, **fields)


def _bad_path(path: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"Invalid path {path[:300]!r}: {why}", metadata={"field": "path"})


def parse_path(path: str) -> Place:
    """The owner and relative path a proxy path names (see the module's docstring);
    InvalidArgument for a path of another form, one with a '.' or '..' segment, or a
    malformed id. The relative path itself is checked by the domain."""
    segments = path.strip("/").split("/") if path.strip("/") else []
    if any(s in (".", "..") for s in segments) or "\\" in path or "\x00" in path:
        raise _bad_path(path, "'.', '..', backslashes and NUL are not allowed in a path")
    if len(segments) >= 3 and segments[2] == "artifacts" and segments[1] != "models":
        eid, run_id, rest = segments[0], segments[1], segments[3:]
        kind, ident = store.RUN, run_id
    elif len(segments) >= 4 and segments[1] == "models" and segments[3] == "artifacts":
        eid, ident, rest = segments[0], segments[2], segments[4:]
        kind = store.MODEL
    else:
        raise _bad_path(path, f"trackd serves artifacts at {_FORMS}")
    if not _EXPERIMENT_RE.fullmatch(eid):
        raise _bad_path(path, f"{eid[:40]!r} is not an experiment id")
    if kind == store.RUN:
        validation.run_id(ident, "path")
    else:
        validation.model_id(ident, "path")
    return Place(kind, ident, eid, "/".join(rest))


def _directory(rel: str) -> str:
    """A directory path as the domain takes it (no trailing '/')."""
    return rel.rstrip("/")


def _disposition(name: str) -> str:
    """A Content-Disposition naming the file to save as (RFC 6266, RFC 5987)."""
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        fallback = name.encode("ascii", "ignore").decode("ascii") or "download"
        fallback = fallback.replace("\\", "_").replace('"', "_")
        quoted = urllib.parse.quote(name, safe="!#$&+-.^_`|~")
        return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quoted}"
    safe = name.replace("\\", "_").replace('"', "_")
    return f'attachment; filename="{safe}"'


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first byte, count) of a single `bytes=` Range; None to send the whole file (no
    header, several ranges or a form not understood). web.HTTPRequestRangeNotSatisfiable
    for a range outside the file."""
    m = _RANGE_RE.fullmatch(header.strip().replace(" ", ""))
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # the last N bytes
        n = int(m.group(2))
        if n == 0:
            raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
        n = min(n, size)
        return size - n, n
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size or last < first:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    last = min(last, size - 1)
    return first, last - first + 1


class MlflowArtifactsApi:
    """The handlers of MLflow's artifact endpoints."""

    def __init__(self, front: HttpFront | None, artifacts: Artifacts) -> None:
        self.front: HttpFront = front  # type: ignore[assignment]  # set by the front
        self.artifacts = artifacts

    def routes(self) -> list[Route]:
        proxy = [
            ("PUT", "/artifacts/{path:.+}", self.upload, _UPLOAD),
            ("GET", "/artifacts/{path:.+}", self.download, _DOWNLOAD),
            ("DELETE", "/artifacts/{path:.+}", self.delete, _DELETE),
            ("GET", "/artifacts", self.list_proxy, _LIST),
            ("POST", "/mpu/create/{path:.+}", self.multipart, _UPLOAD),
            ("POST", "/mpu/complete/{path:.+}", self.multipart, _UPLOAD),
            ("POST", "/mpu/abort/{path:.+}", self.multipart, _UPLOAD),
            ("GET", "/presigned/{path:.+}", self.presigned, _DOWNLOAD),
        ]
        mlflow = [
            ("GET", "/artifacts/list", self.list_run, _LIST),
            (
                "GET",
                "/logged-models/{model_id}/artifacts/directories",
                self.list_model,
                _LIST,
            ),
        ]
        return [Route(m, p, h, rule, PROXY_PREFIXES) for m, p, h, rule in proxy] + [
            Route(m, p, h, rule, MLFLOW_PREFIXES) for m, p, h, rule in mlflow
        ]

    async def _owner(self, place: Place) -> Owner:
        """The owner a proxy path names, checked to be of the path's experiment."""
        owner = await self.artifacts.owner(place.kind, place.ident)
        if str(owner.experiment_id) != place.experiment_id:
            raise NotFound(
                f"{owner.noun} {place.ident} is not in experiment {place.experiment_id}",
                metadata={owner.id_field: place.ident},
            )
        return owner

    async def _place(self, request: web.Request, rule: str, cls: Any) -> tuple[Place, Owner]:
        place = parse_path(request.match_info["path"])
        await self.front.check(request, rule, place.target(cls))
        return place, await self._owner(place)

    # -- the proxy ---------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.StreamResponse:
        place = parse_path(request.match_info["path"])
        start = place.target(apb.UploadStart, path=place.rel)
        if request.content_length is not None and "Content-Encoding" not in request.headers:
            # The size of the file (a compressed body is inflated by aiohttp: its length
            # is not the file's); a file over the limit is refused before its bytes.
            start.size = request.content_length
        await self.front.check(request, _UPLOAD, start)
        owner = await self._owner(place)
        upload = await self.artifacts.begin(owner, start)
        try:
            await self._receive(request, upload)
            await self.artifacts.finish(upload, "")
        except BaseException:
            # A PUT is not resumable: its staged bytes are of no use to anyone.
            with contextlib.suppress(Exception):
                await self.artifacts.abort(upload)
            raise
        return json_response({})

    async def _receive(self, request: web.Request, upload: Upload) -> None:
        """Writes the request's body to the upload in chunks of the domain's size (at
        most two chunks are held at a time)."""
        pending = bytearray()
        try:
            async for data in request.content.iter_any():
                pending += data
                while len(pending) >= CHUNK_BYTES_MAX:
                    await self.artifacts.write(upload, bytes(pending[:CHUNK_BYTES_MAX]))
                    del pending[:CHUNK_BYTES_MAX]
        except (ConnectionError, HttpProcessingError) as exc:
            raise Aborted(
                f"the body of the upload of {upload.path!r} ended after {upload.received} "
                f"bytes ({exc}); nothing was stored, send the file again",
                metadata={"path": upload.path[:200]},
            ) from None
        if pending:
            await self.artifacts.write(upload, bytes(pending))

    async def download(self, request: web.Request) -> web.StreamResponse:
        place, owner = await self._place(request, _DOWNLOAD, apb.DownloadArtifactRequest)
        try:
            file = await self.artifacts.stat(owner, place.rel)
        except NotFound:
            if place.rel and await self._is_directory(owner, place.rel):
                raise InvalidArgument(
                    f"Artifact path refers to a directory, not a file: {place.rel[:300]!r}",
                    metadata={"field": "path"},
                ) from None
            raise
        size: int = file["size"]
        wanted = parse_range(request.headers.get("Range", ""), size) if size else None
        offset, count = wanted if wanted is not None else (0, size)
        # The first chunk is read before the headers go: a missing object is still an
        # error answer then, not a cut download.
        chunks = aiter(self.artifacts.read(file, offset, count))
        first = await anext(chunks, b"") if count else b""
        response = web.StreamResponse(status=206 if wanted is not None else 200)
        response.content_type = file["content_type"] or "application/octet-stream"
        response.content_length = count
        response.headers["Accept-Ranges"] = "bytes"
        response.headers["ETag"] = f'"{file["sha256"]}"'
        response.headers["Content-Disposition"] = _disposition(place.rel.rsplit("/", 1)[-1])
        response.headers["X-Content-Type-Options"] = "nosniff"
        if wanted is not None:
            response.headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{size}"
        await response.prepare(request)
        try:
            await self._send(response, first, chunks)
        except ConnectionError:
            pass  # the client went away
        except Exception as exc:  # noqa: BLE001 - the headers are sent: only a cut is left
            log.warning(
                "download of artifact %r of %s %s cut: %s",
                place.rel[:200],
                owner.noun,
                owner.ident,
                exc,
            )
            if request.transport is not None:
                request.transport.close()  # the client sees fewer bytes than announced
        return response

    @staticmethod
    async def _send(
        response: web.StreamResponse, first: bytes, chunks: AsyncIterator[bytes]
    ) -> None:
        if first:
            await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()

    async def _is_directory(self, owner: Owner, rel: str) -> bool:
        try:
            page, _ = await self.artifacts.list(owner, rel, False, 1, "")
        except InvalidArgument:
            return False
        return bool(list(page))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        place, owner = await self._place(request, _DELETE, apb.DeleteArtifactRequest)
        rel = _directory(place.rel)
        if rel:
            paths = [rel]
        else:  # the whole root: each of its entries
            owner.writable()
            paths = [e["path"] for e in await self._entries(owner, "")]
        for path in paths:
            # As MLflow's: deleting what is not there is no error.
            with contextlib.suppress(NotFound):
                await self.artifacts.delete(owner, path)
        return json_response({})

    async def list_proxy(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        place = parse_path(f.text("path"))
        await self.front.check(request, _LIST, place.target(apb.ListArtifactsRequest))
        owner = await self._owner(place)
        entries = await self._entries(owner, _directory(place.rel))
        return json_response({"files": [_file(e, e["path"].rsplit("/", 1)[-1]) for e in entries]})

    async def _entries(self, owner: Owner, directory: str) -> list[dict[str, Any]]:
        """Every entry directly under a directory (all pages)."""
        out: list[dict[str, Any]] = []
        token = ""
        while True:
            page, token = await self.artifacts.list(owner, directory, False, LIST_MAX, token)
            out.extend(page)
            if not token:
                return out

    async def multipart(self, request: web.Request) -> web.StreamResponse:
        await self._place(request, _UPLOAD, apb.UploadStart)
        return _not_implemented(MULTIPART_UPLOAD_UNSUPPORTED)

    async def presigned(self, request: web.Request) -> web.StreamResponse:
        await self._place(request, _DOWNLOAD, apb.DownloadArtifactRequest)
        return _not_implemented(MULTIPART_DOWNLOAD_UNSUPPORTED)

    # -- MLflow's listings by run and by logged model ------------------------------------

    async def list_run(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        run_id = f.text("run_id") or f.text("run_uuid")
        if not run_id:
            raise InvalidArgument(
                "Missing value for required parameter 'run_id'. See the API docs for more "
                "information about request parameters.",
                metadata={"field": "run_id"},
            )
        target = apb.ListArtifactsRequest(run_id=run_id)
        await self.front.check(request, _LIST, target)
        owner = await self.artifacts.owner(store.RUN, _well_formed(store.RUN, run_id))
        root = mj.run_artifact_uri(str(owner.experiment_id), owner.ident)
        return await self._listing(owner, root, f.text("path"), f.text("page_token"))

    async def list_model(self, request: web.Request) -> web.StreamResponse:
        f = await Fields.of(request)
        model_id = request.match_info["model_id"]
        await self.front.check(request, _LIST, apb.ListArtifactsRequest(model_id=model_id))
        owner = await self.artifacts.owner(store.MODEL, _well_formed(store.MODEL, model_id))
        root = mj.model_artifact_uri(str(owner.experiment_id), owner.ident)
        return await self._listing(
            owner, root, f.text("artifact_directory_path"), f.text("page_token")
        )

    async def _listing(
        self, owner: Owner, root: str, path: str, page_token: str
    ) -> web.StreamResponse:
        """One page (up to 10000 entries) of a directory, with paths relative to the
        owner's root, as MLflow's ListArtifacts answers."""
        directory = _directory(path)
        page, token = await self.artifacts.list(owner, directory, False, LIST_MAX, page_token)
        body: dict[str, Any] = {"root_uri": root, "files": [_file(e, e["path"]) for e in page]}
        if token:
            body["next_page_token"] = token
        return json_response(body)


def _well_formed(kind: int, ident: str) -> str:
    if kind == store.RUN:
        return validation.run_id(ident)
    return validation.model_id(ident)


def _file(entry: dict[str, Any], path: str) -> dict[str, Any]:
    """MLflow's FileInfo of a listing entry (a directory has no size)."""
    if entry.get("is_dir"):
        return {"path": path, "is_dir": True}
    return {"path": path, "is_dir": False, "file_size": entry["size"]}
