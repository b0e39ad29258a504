"""The HTTP front: an aiohttp application on the event loop of the gRPC server.

Every request goes through the same Guard as a gRPC call (request id, authentication,
per-client limits, metrics, one access-log line) and, for a route that acts on something,
through the same permission policy as the RPC it mirrors (domain/auth/policy.py). Errors
leave as MLflow's `{"error_code", "message"}` with MLflow's HTTP statuses; an unexpected
failure is logged with an incident id and answered INTERNAL_ERROR without a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import json
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web

from trackd.server.domain.auth import policy
from trackd.server.domain.auth.context import current_principal
from trackd.server.domain.auth.policy import Gate
from trackd.server.errors import TrackdError, Unauthenticated
from trackd.server.service.guard import Call, Guard
from trackd.server.service.rpc import classify

log = logging.getLogger(__name__)

# The HTTP status of each MLflow error code trackd answers with. MLflow's own table, but
# INVALID_STATE answers 400 (MLflow: 500): the mlflow client retries a 500 for minutes,
# and a request refused for the state of what it names does not succeed by retrying.
HTTP_STATUS = {
    "INVALID_PARAMETER_VALUE": 400,
    "BAD_REQUEST": 400,
    "MALFORMED_REQUEST": 400,
    "INVALID_STATE": 400,
    "RESOURCE_ALREADY_EXISTS": 400,
    "MAX_READ_SIZE_EXCEEDED": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "RESOURCE_DOES_NOT_EXIST": 404,
    "ENDPOINT_NOT_FOUND": 404,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 413,
    "REQUEST_LIMIT_EXCEEDED": 429,
    "INTERNAL_ERROR": 500,
    "NOT_IMPLEMENTED": 501,
    "TEMPORARILY_UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
# trackd reasons as the MLflow error code MLflow's server gives for the same refusal:
# MLflow refuses a changed param, a write to a deleted run and the like as
# INVALID_PARAMETER_VALUE; trackd-only reasons become the MLflow code a client knows.
_MLFLOW_CODE = {
    "INVALID_STATE": "INVALID_PARAMETER_VALUE",
    "MAX_ARTIFACT_SIZE_EXCEEDED": "RESOURCE_EXHAUSTED",
}

# The largest JSON body accepted (artifact bodies stream and are limited by the store).
JSON_BODY_MAX = 64 * 1024 * 1024

# What the request being served was checked against (for its audit record).
_checked: contextvars.ContextVar[Any] = contextvars.ContextVar("http_checked", default=None)

# The longest request line (method, URL with its query string, version) and header line
# accepted; a longer one is answered 400 by the HTTP parser, before any route.
URL_BYTES_MAX = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """One HTTP route: its method and path (under each of `prefixes`), the handler, and
    the permission it is checked against: the full name of the RPC whose rule it shares,
    or a key of policy.HTTP_POLICY for a route with no RPC. `rule` "" means public (the
    server's own health and version)."""

    method: str
    path: str
    handler: Handler
    rule: str
    prefixes: tuple[str, ...] = ("",)


class _Context:
    """What Guard reads of a gRPC context, from an HTTP request."""

    def __init__(self, request: web.Request) -> None:
        self.request = request

    def invocation_metadata(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        h = self.request.headers
        for name in ("x-request-id", "x-client-id"):
            if name in h:
                out.append((name, h[name]))
        for value in h.getall("authorization", ()):
            out.append(("authorization", _as_bearer(value)))
        return out

    def peer(self) -> str:
        return f"http:{self.request.remote or 'unknown'}"

    def set_trailing_metadata(self, items: Any) -> None:
        pass

    def auth_context(self) -> dict[str, Any]:
        return {}


def _as_bearer(value: str) -> str:
    """An `Authorization` header as Guard takes it: `Bearer TOKEN`. HTTP Basic (what the
    mlflow client sends for MLFLOW_TRACKING_USERNAME/PASSWORD) carries the token as its
    password; the user name is not used (the token names its principal)."""
    scheme, _, credential = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return value
    try:
        decoded = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "Basic"  # Guard refuses it: not `Bearer TOKEN`
    _, colon, password = decoded.partition(":")
    return f"Bearer {password}" if colon and password else "Basic"


def error_body(err: TrackdError, request_id: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of a domain error, in MLflow's shape."""
    code = _MLFLOW_CODE.get(err.reason, err.reason)
    status = HTTP_STATUS.get(code)
    if status is None:
        status = HTTP_STATUS.get(_BY_GRPC.get(err.code, "INTERNAL_ERROR"), 500)
    body: dict[str, Any] = {"error_code": code, "message": err.message}
    if request_id:
        body["request_id"] = request_id
    return status, body


_BY_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: "INVALID_PARAMETER_VALUE",
    grpc.StatusCode.NOT_FOUND: "RESOURCE_DOES_NOT_EXIST",
    grpc.StatusCode.ALREADY_EXISTS: "RESOURCE_ALREADY_EXISTS",
    grpc.StatusCode.FAILED_PRECONDITION: "INVALID_STATE",
    grpc.StatusCode.PERMISSION_DENIED: "PERMISSION_DENIED",
    grpc.StatusCode.UNAUTHENTICATED: "UNAUTHENTICATED",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "REQUEST_LIMIT_EXCEEDED",
    grpc.StatusCode.UNAVAILABLE: "TEMPORARILY_UNAVAILABLE",
}


def dumps(body: Any) -> bytes:
    """JSON bytes of a response body: compact, and (as protobuf's JSON) NaN and the
    infinities as the strings "NaN", "Infinity" and "-Infinity" by the converters."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(body), status=status, content_type="application/json")


class HttpFront:
    """The aiohttp application and its site; the Gate checks each route's permission."""

    def __init__(self, guard: Guard, gate: Gate, routes: list[Route]) -> None:
        self.guard = guard
        self.gate = gate
        self.routes = routes
        self.app = web.Application(client_max_size=JSON_BODY_MAX, middlewares=[])
        for route in routes:
            policy.http_rule(route.rule)  # KeyError: no route without a declared permission
            for prefix in route.prefixes:
                self.app.router.add_route(
                    route.method, prefix + route.path, self._wrap(route), name=None
                )
        self.app.router.add_route("*", "/{tail:.*}", self._not_found)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int, *, reuse_port: bool) -> int:
        """Listens on host:port (0 picks a free port); returns the bound port."""
        self.runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=5.0,
            # A GET's fields travel in its URL (bulk history names up to 100 runs).
            max_line_size=URL_BYTES_MAX,
            max_field_size=URL_BYTES_MAX,
        )
        await self.runner.setup()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host.strip("[]"), port))
        except OSError:
            sock.close()
            await self.runner.cleanup()
            raise
        site = web.SockSite(self.runner, sock)
        await site.start()
        self.port = int(sock.getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        return json_response(
            {
                "error_code": "ENDPOINT_NOT_FOUND",
                "message": f"trackd serves no {request.method} {request.path} (see README.md, "
                "'The MLflow REST API')",
            },
            404,
        )

    def _wrap(self, route: Route) -> Handler:
        name = route.rule or f"{route.method} {route.path}"
        public = route.rule == ""

        async def handle(request: web.Request) -> web.StreamResponse:
            context = _Context(request)
            call: Call = self.guard.start(f"REST {route.method} {route.path}", context)
            token = _checked.set(None)
            try:
                if not public:
                    await self.guard.admit(call, context)
                response = await route.handler(request)
                call.code = grpc.StatusCode.OK
                return response
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            except web.HTTPException:
                raise
            except Exception as exc:
                err = classify(exc)
                if err is None:
                    incident = uuid.uuid4().hex[:12]
                    log.error("internal error, incident %s", incident, exc_info=exc)
                    err = TrackdError(
                        f"internal error (incident {incident})", {"incident": incident}
                    )
                call.code = err.code
                status, body = error_body(err, call.request_id)
                response = json_response(body, status)
                if isinstance(err, Unauthenticated):
                    response.headers["WWW-Authenticate"] = 'Basic realm="trackd", Bearer'
                return response
            finally:
                target = _checked.get()
                _checked.reset(token)
                if not public and target is not None:
                    self.gate.after(name, target, call.code.name, call.request_id)
                self.guard.finish(call)

        return handle

    async def check(self, request: web.Request, rule: str, target: Any) -> None:
        """Checks the caller against `rule` for what `target` names (an object with the
        rule's field, as the RPC's request has it); remembered for the audit record."""
        _checked.set(target)
        await self.gate.authorizer.check(rule, target)


def principal_name() -> str:
    """The name of the caller being served."""
    return current_principal.get().name
