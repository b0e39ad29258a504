"""The web view's JSON API (`/api/view/...`): what the pages under server/trackd/server/web/
read. Bodies are trackd's own messages as proto3 JSON with the proto field names, fields
at their defaults included, int64 values as JSON numbers, enums by name and NaN and the
infinities as "NaN", "Infinity" and "-Infinity". Every route is checked against the rule
of the RPC it mirrors and calls the domain as that RPC's servicer does.

Sign-in: `POST /api/view/session` with a token sets the HttpOnly, SameSite=Strict cookie
`trackd_session` holding it, which the front then takes as the credential of every
request without an `Authorization` header (http/front.py: non-GET requests signed in by it
need `X-Trackd-View: 1`). Page scripts never see the token.

Live updates: `GET /api/view/watch` is WatchRun as server-sent events: each response as
`event: update` with its position as the event id (a browser reconnecting sends it back
as Last-Event-ID, which resumes after it), `: keepalive` after 15 s of silence.

Artifacts are served so that a user's file can never run script on trackd's origin: only
images and plain text are shown inline, with their types fixed by the file's extension;
everything else is an attachment; and every artifact response carries
`X-Content-Type-Options: nosniff` and `Content-Security-Policy: sandbox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any, TypeVar, cast

import numpy as np
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from trackd.server import convert
from trackd.server.domain import validation
from trackd.server.domain.artifacts import Artifacts, Owner
from trackd.server.domain.auth.principal import Principal
from trackd.server.domain.envelopes import Envelopes
from trackd.server.domain.experiments import Experiments
from trackd.server.domain.logged_models import LoggedModels
from trackd.server.domain.run_search import RunSearch
from trackd.server.domain.runs import Runs, RunView
from trackd.server.domain.watch import Watches
from trackd.server.errors import (
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TrackdError,
    Unauthenticated,
    Unavailable,
)
from trackd.server.http import mlflow_json as mj
from trackd.server.http.front import (
    SESSION_COOKIE,
    HttpFront,
    Route,
    bearer_of,
    dumps,
    error_body,
    json_response,
    require_view_header,
)
from trackd.server.http.mlflow_artifacts import _disposition, parse_range
from trackd.server.http.mlflow_json import Fields
from trackd.server.service import sizes
from trackd.server.service.guard import request_id
from trackd.server.service.rpc import classify
from trackd.server.store import artifacts as artifact_store
from trackd.v1 import artifact_service_pb2 as apb
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import logged_model_service_pb2 as lpb
from trackd.v1 import run_service_pb2 as pb
from trackd.v1.run_pb2 import Run

log = logging.getLogger(__name__)

VIEW = "/api/view"
_EXP = "trackd.v1.ExperimentService."
_RUN = "trackd.v1.RunService."
_MODELS = "trackd.v1.LoggedModelService."
_ART = "trackd.v1.ArtifactService."

# The collected envelopes of one request: at most this many bytes encoded (four gRPC
# messages' worth); more is RESOURCE_EXHAUSTED rather than an unbounded answer.
ENVELOPES_BYTES_MAX = 4 * sizes.MESSAGE_BYTES_MAX
# An event stream writes `: keepalive` after this many seconds without a write.
KEEPALIVE_S = 15.0
# How often an event stream checks whether its client went away or the server stops.
POLL_S = 0.5
# The reconnection delay an event stream asks of the browser (ms).
RETRY_MS = 2000
# A sign-in token longer than this is refused without looking it up.
TOKEN_CHARS_MAX = 16_384

# Artifacts shown inline: images by extension, and text (always as text/plain).
_IMAGES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
}
_TEXT_EXTENSIONS = frozenset(
    "txt log csv tsv json jsonl yaml yml md rst py toml ini cfg conf sh r sql out err "
    "properties env requirements".split()
)
_TEXT_NAMES = frozenset({"MLmodel", "requirements.txt", "conda.yaml", "python_env.yaml"})
TEXT_TYPE = "text/plain; charset=utf-8"
ARTIFACT_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}

M = TypeVar("M", bound=Message)


def to_json(message: Message) -> dict[str, Any]:
    """A message as the web view's JSON (see the module's docstring)."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


def _doubles(values: Any) -> list[float | str]:
    """Repeated doubles as JSON values: NaN and the infinities as protobuf's strings."""
    out: list[Any] = list(values)
    if out and not np.isfinite(np.asarray(out, dtype=np.float64)).all():
        out = [mj.double(x) for x in out]
    return out


def envelope_json(envelope: pb.StreamMetricEnvelopesResponse) -> dict[str, Any]:
    """An envelope as to_json writes it, built column by column (to_json goes value by
    value in Python: seconds for a chart's worth of envelopes)."""
    body: dict[str, Any] = {}
    for field in envelope.DESCRIPTOR.fields:
        value = getattr(envelope, field.name)
        if field.enum_type is not None:
            named = field.enum_type.values_by_number.get(value)
            body[field.name] = named.name if named is not None else value
        elif field.type == FieldDescriptor.TYPE_DOUBLE and field.is_repeated:
            body[field.name] = _doubles(value)
        elif field.is_repeated:
            body[field.name] = list(value)
        else:
            body[field.name] = value
    return body


def message_response(message: Message) -> web.Response:
    return json_response(to_json(message))


def parse_message(data: dict[str, Any], cls: type[M]) -> M:
    """`cls` from its proto3 JSON (unknown top-level fields ignored); InvalidArgument when
    a field has a value of the wrong type or an enum a name it does not have."""
    message = cls()
    fields = cls.DESCRIPTOR.fields
    known = {f.name for f in fields} | {f.json_name for f in fields}
    try:
        json_format.ParseDict({k: v for k, v in data.items() if k in known}, message)
    except json_format.ParseError as exc:
        text = str(exc)
        if len(text) > 500:
            text = text[:500] + "..."
        raise InvalidArgument(
            f"the request is not a valid {cls.DESCRIPTOR.name}: {text}", metadata={}
        ) from None
    except (ValueError, TypeError, AttributeError, RecursionError, OverflowError):
        raise InvalidArgument(
            f"the request is not a valid {cls.DESCRIPTOR.name}", metadata={}
        ) from None
    return message


async def body_message(request: web.Request, cls: type[M]) -> M:
    """`cls` from a request's JSON body (an empty body is the default message)."""
    f = await Fields.of(request)
    return parse_message(dict(f.data), cls)


def _query_value(field: Any, value: str) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM and value.strip().lstrip("-").isdigit():
        return int(value)
    if field.type == FieldDescriptor.TYPE_BOOL:
        lowered = value.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0", ""):
            return False
    return value


def query_message(request: web.Request, cls: type[M], **fixed: Any) -> M:
    """`cls` from a GET's query string: each scalar field by its proto name (a repeated
    one repeats the parameter), enums by name or number; then `fixed` (path parameters)."""
    data: dict[str, Any] = {}
    for field in cls.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE or field.name in fixed:
            continue
        values = request.query.getall(field.name, [])
        if not values:
            continue
        if field.is_repeated:
            data[field.name] = [_query_value(field, v) for v in values]
        else:
            data[field.name] = _query_value(field, values[-1])
    data.update(fixed)
    return parse_message(data, cls)


def artifact_type(name: str, stored: str) -> str | None:
    """The type an artifact named `name` is shown inline as, or None for an attachment.
    Chosen by the file's extension, never by what the uploader said (`stored` only lets
    an extension-less plain-text file show): HTML and SVG are never inline."""
    base = name.rsplit("/", 1)[-1]
    ext = base.rsplit(".", 1)[-1].lower() if "." in base else ""
    if ext in _IMAGES:
        return _IMAGES[ext]
    if ext in _TEXT_EXTENSIONS or base in _TEXT_NAMES:
        return TEXT_TYPE
    if not ext and stored.split(";")[0].strip().lower() == "text/plain":
        return TEXT_TYPE
    return None


def _inline(name: str) -> str:
    """A Content-Disposition showing the file, with its name for a save."""
    return "inline" + _disposition(name).removeprefix("attachment")


class ViewApi:
    """The handlers of the web view's JSON API."""

    def __init__(
        self,
        front: HttpFront | None,
        experiments: Experiments,
        runs: Runs,
        search: RunSearch,
        envelopes: Envelopes,
        watches: Watches,
        artifacts: Artifacts,
        models: LoggedModels,
    ) -> None:
        self.front: HttpFront = front  # type: ignore[assignment]  # set by the front
        self.experiments = experiments
        self.runs = runs
        self.search = search
        self.envelopes = envelopes
        self.watches = watches
        self.artifacts = artifacts
        self.models = models

    def routes(self) -> list[Route]:
        r = [
            ("GET", "/session", self.session_get, ""),
            ("POST", "/session", self.session_post, ""),
            ("DELETE", "/session", self.session_delete, ""),
            ("GET", "/experiments", self.experiments_search, _EXP + "SearchExperiments"),
            ("POST", "/runs/search", self.runs_search, _RUN + "SearchRuns"),
            ("GET", "/runs/{run_id}", self.run_get, _RUN + "GetRun"),
            ("GET", "/runs/{run_id}/children", self.run_children, _RUN + "ListChildRuns"),
            ("POST", "/envelopes", self.envelopes_collect, _RUN + "StreamMetricEnvelopes"),
            ("GET", "/watch", self.watch, _RUN + "WatchRun"),
            ("GET", "/runs/{run_id}/artifacts", self.run_artifacts, _ART + "ListArtifacts"),
            (
                "GET",
                "/runs/{run_id}/artifacts/{path:.+}",
                self.run_artifact,
                _ART + "DownloadArtifact",
            ),
            (
                "POST",
                "/logged-models/search",
                self.models_search,
                _MODELS + "SearchLoggedModels",
            ),
            ("GET", "/models/{model_id}/artifacts", self.model_artifacts, _ART + "ListArtifacts"),
            (
                "GET",
                "/models/{model_id}/artifacts/{path:.+}",
                self.model_artifact,
                _ART + "DownloadArtifact",
            ),
        ]
        return [
            Route(m, VIEW + p, h, rule, challenge=False, replica_reads=True) for m, p, h, rule in r
        ]

    # -- sign-in -----------------------------------------------------------------------

    def _session(self, principal: Principal | None) -> dict[str, Any]:
        if self.front.guard.authenticator is None:
            return {"auth": False, "principal": None, "admin": True}
        return {
            "auth": True,
            "principal": principal.name if principal is not None else None,
            "admin": bool(principal is not None and principal.admin),
        }

    async def _signed_in(self, request: web.Request) -> Principal | None:
        """Who the request's credential (header or cookie) names; None for none or a bad
        one (the session route is public: it says who is signed in, it refuses nobody)."""
        authenticator = self.front.guard.authenticator
        bearer = bearer_of(request)
        if authenticator is None or bearer is None:
            return None
        try:
            return await authenticator.authenticate(bearer, None)
        except Unauthenticated:
            return None

    async def session_get(self, request: web.Request) -> web.StreamResponse:
        response = json_response(self._session(await self._signed_in(request)))
        response.headers["Cache-Control"] = "no-store"
        return response

    async def session_post(self, request: web.Request) -> web.StreamResponse:
        require_view_header(request)
        f = await Fields.of(request)
        token = f.text("token", required=True)
        authenticator = self.front.guard.authenticator
        if authenticator is None:
            return json_response(self._session(None))
        if len(token) > TOKEN_CHARS_MAX or any(c in token for c in '\r\n;\x00 \t,"\\'):
            raise Unauthenticated("the token is not valid")
        principal = await authenticator.authenticate(token, None)
        response = json_response(self._session(principal))
        response.headers["Cache-Control"] = "no-store"
        response.set_cookie(
            SESSION_COOKIE,
            token,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=_over_https(request),
        )
        return response

    async def session_delete(self, request: web.Request) -> web.StreamResponse:
        require_view_header(request)
        response = json_response(self._session(None))
        response.headers["Cache-Control"] = "no-store"
        response.del_cookie(
            SESSION_COOKIE, path="/", httponly=True, samesite="Strict", secure=_over_https(request)
        )
        return response

    # -- experiments, runs, logged models ------------------------------------------------

    async def experiments_search(self, request: web.Request) -> web.StreamResponse:
        q = query_message(request, epb.SearchExperimentsRequest)
        await self.front.check(request, _EXP + "SearchExperiments", q)
        rows, token = await self.experiments.search(
            q.filter, list(q.order_by), q.max_results, q.page_token, q.view_type
        )
        response = epb.SearchExperimentsResponse(
            experiments=[convert.experiment(r) for r in rows], next_page_token=token
        )
        sizes.fit_page(response, "experiments", rows, "SearchExperiments")
        return message_response(response)

    async def runs_search(self, request: web.Request) -> web.StreamResponse:
        q = await body_message(request, pb.SearchRunsRequest)
        await self.front.check(request, _RUN + "SearchRuns", q)
        views, token = await self.search.search(
            list(q.experiment_ids),
            q.filter,
            list(q.order_by),
            q.max_results,
            q.page_token,
            q.run_view_type,
            q.root_runs_only,
        )
        response = pb.SearchRunsResponse(runs=[_run(v) for v in views], next_page_token=token)
        sizes.fit_page(response, "runs", views, "SearchRuns")
        return message_response(response)

    async def run_get(self, request: web.Request) -> web.StreamResponse:
        q = pb.GetRunRequest(run_id=request.match_info["run_id"])
        await self.front.check(request, _RUN + "GetRun", q)
        return message_response(pb.GetRunResponse(run=_run(await self.runs.get(q.run_id))))

    async def run_children(self, request: web.Request) -> web.StreamResponse:
        q = query_message(request, pb.ListChildRunsRequest, run_id=request.match_info["run_id"])
        await self.front.check(request, _RUN + "ListChildRuns", q)
        views, token = await self.search.children(
            q.run_id, q.max_results, q.page_token, q.run_view_type
        )
        response = pb.ListChildRunsResponse(runs=[_run(v) for v in views], next_page_token=token)
        sizes.fit_page(response, "runs", views, "ListChildRuns")
        return message_response(response)

    async def models_search(self, request: web.Request) -> web.StreamResponse:
        q = await body_message(request, lpb.SearchLoggedModelsRequest)
        await self.front.check(request, _MODELS + "SearchLoggedModels", q)
        views, token = await self.models.search(
            list(q.experiment_ids),
            q.filter,
            [(d.dataset_name, d.dataset_digest) for d in q.datasets],
            list(q.order_by),
            q.max_results,
            q.page_token,
        )
        response = lpb.SearchLoggedModelsResponse(
            models=[convert.logged_model(v) for v in views], next_page_token=token
        )
        sizes.fit_page(response, "models", views, "SearchLoggedModels")
        return message_response(response)

    # -- metrics -----------------------------------------------------------------------

    async def envelopes_collect(self, request: web.Request) -> web.StreamResponse:
        q = await body_message(request, pb.StreamMetricEnvelopesRequest)
        await self.front.check(request, _RUN + "StreamMetricEnvelopes", q)
        out: list[dict[str, Any]] = []
        held = 0
        async with contextlib.aclosing(_generator(self.envelopes.stream(q))) as envelopes:
            async for envelope in envelopes:
                held += envelope.ByteSize()
                if held > ENVELOPES_BYTES_MAX:
                    raise ResourceExhausted(
                        f"the envelopes asked for exceed {ENVELOPES_BYTES_MAX:,} bytes "
                        "encoded, the limit of one answer; ask for fewer runs, keys or "
                        "buckets",
                        metadata={"limit": str(ENVELOPES_BYTES_MAX)},
                        reason="RESOURCE_EXHAUSTED",
                    )
                out.append(envelope_json(envelope))
        return json_response({"envelopes": out})

    async def watch(self, request: web.Request) -> web.StreamResponse:
        q = query_message(request, pb.WatchRunRequest)
        await self.front.check(request, _RUN + "WatchRun", q)
        if "text/event-stream" not in request.headers.get("Accept", ""):
            raise InvalidArgument(
                "a watch is an event stream: send `Accept: text/event-stream` (an "
                "EventSource does)",
                metadata={"header": "Accept"},
            )
        if not q.resume_position:
            q.resume_position = request.headers.get("Last-Event-ID", "").strip()
        queue: asyncio.Queue[pb.WatchRunResponse | BaseException | None] = asyncio.Queue(1)
        ready = asyncio.Event()

        async def read() -> None:
            try:
                async with contextlib.aclosing(_generator(self.watches.watch(q, ready))) as updates:
                    async for update in updates:
                        await queue.put(update)
                await queue.put(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - answered, or sent as a failure event
                await queue.put(exc)

        reader = asyncio.create_task(read(), name="trackd-view-watch")
        self.front.stream_opened()
        try:
            # The answer starts once the watch holds its start position (every write the
            # client makes after it sees the stream open is delivered); a refusal before
            # that is an error answer of its own.
            started = asyncio.create_task(ready.wait())
            await asyncio.wait({started, reader}, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            if not ready.is_set():
                failed = queue.get_nowait() if not queue.empty() else None
                if isinstance(failed, Exception):
                    raise failed
                raise Unavailable("the watch ended before it started; retry")
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream; charset=utf-8",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                }
            )
            await response.prepare(request)
            try:
                await response.write(f"retry: {RETRY_MS}\n\n".encode())
                await self._pump(request, response, queue)
            except ConnectionError:
                pass  # the client went away
            return response
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self.front.stream_closed()

    async def _pump(
        self,
        request: web.Request,
        response: web.StreamResponse,
        queue: asyncio.Queue[pb.WatchRunResponse | BaseException | None],
    ) -> None:
        """Sends the watch's updates until the client goes away, the server stops or the
        watch fails (sent as `event: failure`); then ends the response cleanly."""
        closing = asyncio.create_task(self.front.closing.wait())
        last_write = time.monotonic()
        try:
            while True:
                get = asyncio.create_task(queue.get())
                await asyncio.wait({get, closing}, timeout=POLL_S, return_when="FIRST_COMPLETED")
                if not get.done():
                    get.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await get
                if get.done() and not get.cancelled():
                    item = get.result()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        await response.write(_failure(item))
                        break
                    data = json_format_dumps(to_json(item))
                    await response.write(
                        f"id: {item.position}\nevent: update\ndata: {data}\n\n".encode()
                    )
                    last_write = time.monotonic()
                    continue
                if closing.done() or _gone(request):
                    break
                if time.monotonic() - last_write >= KEEPALIVE_S:
                    await response.write(b": keepalive\n\n")
                    last_write = time.monotonic()
            if not _gone(request):
                await response.write_eof()
        finally:
            closing.cancel()
            await asyncio.gather(closing, return_exceptions=True)

    # -- artifacts ---------------------------------------------------------------------

    async def _owner(self, kind: int, ident: str) -> Owner:
        if kind == artifact_store.RUN:
            return await self.artifacts.owner(kind, validation.run_id(ident))
        return await self.artifacts.owner(kind, validation.model_id(ident))

    async def _list(self, request: web.Request, kind: int, owner_field: str) -> web.Response:
        ident = request.match_info[owner_field]
        q = query_message(request, apb.ListArtifactsRequest, **{owner_field: ident})
        await self.front.check(request, _ART + "ListArtifacts", q)
        owner = await self._owner(kind, ident)
        page, token = await self.artifacts.list(
            owner, q.path.rstrip("/"), q.recursive, q.max_results, q.page_token
        )
        response = apb.ListArtifactsResponse(
            root_uri=owner.artifact_uri,
            files=[convert.file_info(f) for f in page],
            next_page_token=token,
        )
        sizes.fit_page(response, "files", page, "ListArtifacts")
        return message_response(response)

    async def run_artifacts(self, request: web.Request) -> web.StreamResponse:
        return await self._list(request, artifact_store.RUN, "run_id")

    async def model_artifacts(self, request: web.Request) -> web.StreamResponse:
        return await self._list(request, artifact_store.MODEL, "model_id")

    async def run_artifact(self, request: web.Request) -> web.StreamResponse:
        return await self._download(request, artifact_store.RUN, "run_id")

    async def model_artifact(self, request: web.Request) -> web.StreamResponse:
        return await self._download(request, artifact_store.MODEL, "model_id")

    async def _download(
        self, request: web.Request, kind: int, owner_field: str
    ) -> web.StreamResponse:
        ident = request.match_info[owner_field]
        path = request.match_info["path"]
        target = apb.DownloadArtifactRequest(path=path)
        setattr(target, owner_field, ident)
        await self.front.check(request, _ART + "DownloadArtifact", target)
        owner = await self._owner(kind, ident)
        try:
            file = await self.artifacts.stat(owner, path)
        except NotFound:
            if await self._is_directory(owner, path):
                raise InvalidArgument(
                    f"{path[:300]!r} is a directory, not a file; list it with "
                    f"{VIEW}/{'runs' if kind == artifact_store.RUN else 'models'}/{ident}"
                    "/artifacts?path=...",
                    metadata={"field": "path"},
                ) from None
            raise
        size: int = file["size"]
        wanted = parse_range(request.headers.get("Range", ""), size) if size else None
        offset, count = wanted if wanted is not None else (0, size)
        chunks = aiter(self.artifacts.read(file, offset, count))
        first = await anext(chunks, b"") if count else b""
        response = web.StreamResponse(status=206 if wanted is not None else 200)
        name = path.rsplit("/", 1)[-1]
        shown = None if request.query.get("download") == "1" else artifact_type(name, "")
        if shown is None:
            response.content_type = "application/octet-stream"
            response.headers["Content-Disposition"] = _disposition(name)
        else:
            response.headers["Content-Type"] = shown
            response.headers["Content-Disposition"] = _inline(name)
        response.content_length = count
        response.headers.update(ARTIFACT_HEADERS)
        response.headers["Accept-Ranges"] = "bytes"
        response.headers["ETag"] = f'"{file["sha256"]}"'
        response.headers["Cache-Control"] = "private, no-cache"
        response.headers["Referrer-Policy"] = "no-referrer"
        if wanted is not None:
            response.headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{size}"
        await response.prepare(request)
        try:
            if first:
                await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        except Exception as exc:  # noqa: BLE001 - the headers are sent: only a cut is left
            log.warning(
                "download of artifact %r of %s %s cut: %s", path[:200], owner.noun, ident, exc
            )
            if request.transport is not None:
                request.transport.close()
        return response

    async def _is_directory(self, owner: Owner, path: str) -> bool:
        try:
            page, _ = await self.artifacts.list(owner, path.rstrip("/"), False, 1, "")
        except InvalidArgument:
            return False
        return bool(list(page))


def json_format_dumps(body: Any) -> str:
    """One line of JSON (an event's data)."""
    return dumps(body).decode("utf-8")


def _failure(exc: BaseException) -> bytes:
    """The `event: failure` ending a stream that failed after it started."""
    err = classify(exc) if isinstance(exc, Exception) else None
    if err is None:
        log.error("watch stream failed", exc_info=exc)
        err = TrackdError("internal error")
    _, body = error_body(err, request_id.get())
    return f"event: failure\ndata: {json_format_dumps(body)}\n\n".encode()


def _run(view: RunView) -> Run:
    """A run's message with its inputs, outputs and source always present (empty ones
    included), so that a page reads them without checking."""
    run = convert.run(view)
    run.inputs.SetInParent()
    run.outputs.SetInParent()
    run.info.source.SetInParent()
    return run


def _generator(iterator: Any) -> AsyncGenerator[Any, None]:
    """A domain stream (an async generator typed as an iterator), to close it promptly."""
    return cast(AsyncGenerator[Any, None], iterator)


def _gone(request: web.Request) -> bool:
    """Whether the client closed its connection."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _over_https(request: web.Request) -> bool:
    """Whether the browser reached trackd over https: directly, or through a proxy that
    says so (X-Forwarded-Proto; trusting it only makes a cookie stricter)."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"
