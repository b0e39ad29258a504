"""The HTTP front: an aiohttp application on the event loop of the gRPC server.

Every request goes through the same Guard as a gRPC call (request id, authentication,
per-client limits, metrics, one access-log line) and, for a route that acts on something,
through the same permission policy as the RPC it mirrors (domain/auth/policy.py). Errors
leave as MLflow's `{"error_code", "message"}` with MLflow's HTTP statuses; an unexpected
failure is logged with an incident id and answered INTERNAL_ERROR without a traceback.

A browser signed in to the web view (http/view_api.py) carries its token in the HttpOnly
cookie `trackd_session`; the front takes it as the credential of any request without an
`Authorization` header. A request other than GET or HEAD whose credential is that cookie
must carry `X-Trackd-View: 1` (a cross-site page cannot set a custom header without CORS,
which the front never grants), or it is refused PERMISSION_DENIED. The cookie's value, as
every credential, is never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import ipaddress
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
from trackd.server.domain.auth.policy import Gate
from trackd.server.errors import PermissionDenied, TrackdError, Unauthenticated
from trackd.server.service.guard import Call, Guard
from trackd.server.service.rpc import classify
from trackd.server.store.pool import primary_reads

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

# How long stop() waits for the open event streams to end (each notices at once).
STREAMS_GRACE_S = 2.0

# The longest request line (method, URL with its query string, version) and header line
# accepted; a longer one is answered 400 by the HTTP parser, before any route.
URL_BYTES_MAX = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The web view's sign-in cookie (its value is the caller's token) and the header that a
# request authenticated by it must carry unless it is a GET or HEAD (the CSRF guard).
SESSION_COOKIE = "trackd_session"
VIEW_HEADER = "X-Trackd-View"
_SAFE_METHODS = frozenset({"GET", "HEAD"})


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
    # Whether a 401 carries `WWW-Authenticate` (asks for Basic credentials): not for the
    # web view's routes, where a browser would pop its own sign-in dialog.
    challenge: bool = True
    # Whether lag-tolerant reads may use the read replica (the web view's, which refresh
    # anyway); else they read the primary, as REST clients carry no LSN to wait for.
    replica_reads: bool = False


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
        values = h.getall("authorization", ())
        for value in values:
            out.append(("authorization", _as_bearer(value)))
        if not values:
            cookie = session_cookie(self.request)
            if cookie is not None:
                out.append(("authorization", f"Bearer {cookie}"))
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


def session_cookie(request: web.Request) -> str | None:
    """The web view's sign-in cookie, when the request has no `Authorization` header
    (which wins) and carries one."""
    if "authorization" in request.headers:
        return None
    return request.cookies.get(SESSION_COOKIE) or None


def bearer_of(request: web.Request) -> str | None:
    """The token a request carries: its `Authorization` header's (Bearer, or HTTP Basic's
    password), else its sign-in cookie's; None for none (or a header of another form)."""
    values = request.headers.getall("authorization", ())
    if not values:
        return session_cookie(request)
    scheme, _, credential = _as_bearer(values[0]).strip().partition(" ")
    credential = credential.strip()
    return credential if scheme.lower() == "bearer" and credential else None


def require_view_header(request: web.Request) -> None:
    """PermissionDenied unless the request carries `X-Trackd-View: 1` (which a cross-site
    form or link cannot send)."""
    if request.headers.get(VIEW_HEADER) != "1":
        raise PermissionDenied(
            f"a {request.method} request signed in by the session cookie must carry the "
            f"header {VIEW_HEADER}: 1",
            metadata={"header": VIEW_HEADER},
        )


def refuse_cross_origin(request: web.Request) -> None:
    """PermissionDenied for a write sent by a page of another origin: a browser names the
    page's origin in `Origin`, which must then be this server's own (scheme aside). Programs
    (the mlflow client, curl) send no `Origin` and pass."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    host = origin.partition("://")[2]
    if origin == "null" or host.lower() != request.host.lower():
        raise PermissionDenied(
            f"a {request.method} request from a page of another origin ({origin[:100]}) is "
            "refused: trackd's HTTP front allows no cross-origin writes",
            metadata={"header": "Origin"},
        )


# The host names a request may name in `Host` when auth is off (the server then listens
# on loopback only, or was told --allow-unauthenticated).
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


def refuse_foreign_host(request: web.Request) -> None:
    """PermissionDenied for a request whose `Host` is not a loopback name (called with auth
    off on a loopback address): a page of another site that rebinds its own name to
    127.0.0.1 (DNS rebinding) would otherwise read and write everything as the anonymous
    admin."""
    host = request.host.lower()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if name not in _LOOPBACK_HOSTS:
        raise PermissionDenied(
            f"Host {request.host[:100]!r} is not a loopback name; with auth off trackd "
            "answers only requests to localhost, 127.0.0.1 or [::1]",
            metadata={"header": "Host"},
        )


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
        self.check_host = False
        # Set when the front stops: long-lived responses (the web view's event streams)
        # end cleanly on it; `streams` counts the ones open.
        self.closing = asyncio.Event()
        self.streams = 0
        self._no_streams = asyncio.Event()
        self._no_streams.set()

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
        # With auth off on loopback, requests must name a loopback host (refuse_foreign_host);
        # --allow-unauthenticated on a reachable address is the operator's choice.
        self.check_host = (
            self.guard.authenticator is None
            and ipaddress.ip_address(sock.getsockname()[0]).is_loopback
        )
        return self.port

    async def stop(self) -> None:
        """Ends the open event streams (each within its next wake-up), then stops
        serving: in-flight requests get up to 5 s."""
        self.closing.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_streams.wait(), STREAMS_GRACE_S)
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def stream_opened(self) -> None:
        """Counts an event stream in (stop() waits for it to end)."""
        self.streams += 1
        self._no_streams.clear()

    def stream_closed(self) -> None:
        self.streams -= 1
        if self.streams == 0:
            self._no_streams.set()

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
            reads = primary_reads.set(not route.replica_reads)
            try:
                if request.method not in _SAFE_METHODS:
                    refuse_cross_origin(request)
                    if self.guard.authenticator is not None and session_cookie(request):
                        require_view_header(request)
                if self.check_host:
                    refuse_foreign_host(request)
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
                if isinstance(err, Unauthenticated) and route.challenge:
                    response.headers["WWW-Authenticate"] = 'Basic realm="trackd", Bearer'
                return response
            finally:
                primary_reads.reset(reads)
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
