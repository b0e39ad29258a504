"""What every call goes through: a request id, authentication (when auth is on), per-client
admission (rate and concurrency limits), Prometheus metrics and one structured access-log
line.

With auth on, the caller's credentials (`authorization: Bearer ...` metadata, or the
connection's verified client certificate) become the Principal in
`trackd.server.domain.auth.context.current_principal` for the whole call (a StreamMetrics
stream included), and the principal's name is the client the limits count against. No
credential is ever written to a log line or kept on the Call.

The request id comes from the caller's `x-request-id` metadata (or is generated), is sent
back in the response's trailing metadata, and is attached to every log record written while
the call runs (see RequestIdFilter).
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from trackd.server.domain.auth.context import current_principal
from trackd.server.domain.auth.principal import Principal
from trackd.server.errors import ResourceExhausted, Unauthenticated

if TYPE_CHECKING:  # not at run time: a light install (no asyncpg) imports this via logs
    from trackd.server.domain.auth.authn import Authenticator

log = logging.getLogger("trackd.access")

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class RequestIdFilter(logging.Filter):
    """Adds the current call's request id to every log record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


@dataclass
class Call:
    """One call in progress."""

    method: str
    request_id: str
    client: str
    started: float
    code: grpc.StatusCode = grpc.StatusCode.OK
    admitted: bool = False
    token: contextvars.Token[str] | None = None
    # The `authorization` metadata values (read in start when auth is on, dropped once
    # authenticated).
    authorization: list[str] | None = None
    principal_token: contextvars.Token[Principal] | None = None


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class Limits:
    """Per-client limits; 0 turns one off. A client is its `x-client-id` metadata, else its
    peer address without the port."""

    rate: float = 0.0
    concurrency: int = 0
    buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    in_flight: dict[str, int] = field(default_factory=dict)

    MAX_CLIENTS = 100_000

    def admit(self, client: str, now: float) -> None:
        """Counts a call against the client's limits; ResourceExhausted (with the delay
        after which a retry can succeed) when one is exceeded."""
        if self.concurrency and self.in_flight.get(client, 0) >= self.concurrency:
            raise ResourceExhausted(
                f"client {client!r} has {self.concurrency} calls in flight, the limit; "
                "retry when one finishes",
                metadata={"client": client, "limit": str(self.concurrency)},
                retry_after=0.05,
            )
        if self.rate:
            bucket = self.buckets.get(client)
            if bucket is None:
                bucket = self.buckets[client] = _Bucket(self.rate, now)
                while len(self.buckets) > self.MAX_CLIENTS:
                    self.buckets.popitem(last=False)
            self.buckets.move_to_end(client)
            bucket.tokens = min(self.rate, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) / self.rate
                raise ResourceExhausted(
                    f"client {client!r} exceeded {self.rate:g} calls per second; retry in "
                    f"{wait * 1000:.0f} ms",
                    metadata={"client": client, "limit": f"{self.rate:g}/s"},
                    retry_after=wait,
                )
            bucket.tokens -= 1.0
        if self.concurrency:
            self.in_flight[client] = self.in_flight.get(client, 0) + 1

    def release(self, client: str) -> None:
        """Ends a call admitted by admit()."""
        if self.concurrency:
            n = self.in_flight.get(client, 0) - 1
            if n > 0:
                self.in_flight[client] = n
            else:
                self.in_flight.pop(client, None)


class Guard:
    """Starts and finishes calls: request ids, limits, metrics, access log."""

    def __init__(
        self,
        limits: Limits | None = None,
        metrics: Any = None,
        access_log: bool = True,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.metrics = metrics
        self.access_log = access_log
        # None: auth is off, and every call is ANONYMOUS's (an admin).
        self.authenticator = authenticator
        # With a read replica: the primary's WAL position, answered after each write call
        # (x-trackd-lsn) so that the caller's later reads see the write. None: no replica.
        self.write_lsn: Callable[[], Awaitable[int]] | None = None

    def start(self, method: str, context: Any) -> Call:
        """Begins a call: takes or makes its request id and names its client."""
        rid = ""
        client = ""
        authorization: list[str] | None = None
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id" and isinstance(value, str) and _REQUEST_ID_RE.fullmatch(value):
                rid = value
            elif key == "x-client-id" and isinstance(value, str):
                client = value[:128]
            elif key == "authorization" and self.authenticator is not None:
                if authorization is None:
                    authorization = []
                authorization.append(value if isinstance(value, str) else "")
        if not client:
            peer = context.peer() or "unknown"
            client = peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer
        call = Call(method, rid or uuid.uuid4().hex, client, time.perf_counter())
        call.token = request_id.set(call.request_id)
        call.authorization = authorization
        return call

    async def admit(self, call: Call, context: Any) -> None:
        """Returns the request id in the response's trailing metadata (sent with the
        status, so it costs no extra write), authenticates the caller (when auth is on;
        Unauthenticated if it cannot be) and applies the client's limits."""
        context.set_trailing_metadata((("x-request-id", call.request_id),))
        if self.authenticator is not None:
            principal = await self._authenticate(call, context, self.authenticator)
            call.principal_token = current_principal.set(principal)
            # Limits count per principal: a caller cannot dodge them with x-client-id.
            call.client = principal.name
        self.limits.admit(call.client, time.monotonic())
        call.admitted = True

    @staticmethod
    async def _authenticate(call: Call, context: Any, authenticator: Authenticator) -> Principal:
        values, call.authorization = call.authorization, None
        bearer = None
        if values is not None:
            if len(values) != 1:
                raise Unauthenticated("send one authorization metadata value, not several")
            scheme, _, credential = values[0].strip().partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential:
                raise Unauthenticated("the authorization metadata must be `Bearer TOKEN`")
            bearer = credential
        cert = None
        if bearer is None and authenticator.mtls:
            pems = (context.auth_context() or {}).get("x509_pem_cert") or ()
            cert = pems[0] if pems else None
        return await authenticator.authenticate(bearer, cert)

    def finish(self, call: Call) -> None:
        """Ends a call: releases its limits, records its metrics and logs it."""
        elapsed = time.perf_counter() - call.started
        if call.admitted:
            self.limits.release(call.client)
        if self.metrics is not None:
            self.metrics.observe(call.method, call.code.name, elapsed)
        level = logging.INFO if call.code in _QUIET else logging.WARNING
        if (self.access_log or level > logging.INFO) and log.isEnabledFor(level):
            sink = access_sink
            if sink is not None and level == logging.INFO:
                # The hot path: a ready JSON line, without a LogRecord and the formatter.
                sink(call.request_id, call.method, call.code.name, elapsed, call.client)
                return self._reset(call)
            log.log(
                level,
                "%s %s %.2fms",
                call.method,
                call.code.name,
                elapsed * 1000,
                extra={
                    "method": call.method,
                    "code": call.code.name,
                    "duration_ms": round(elapsed * 1000, 3),
                    "client": call.client,
                },
            )
        self._reset(call)

    @staticmethod
    def _reset(call: Call) -> None:
        if call.principal_token is not None:
            try:
                current_principal.reset(call.principal_token)
            except ValueError:  # finished in another context (a generator closed by GC)
                pass
        if call.token is not None:
            request_id.reset(call.token)


# Set by trackd.server.logs when logs go out as JSON lines: writes one access-log line
# (request_id, method, code, seconds, client) straight to the log stream.
access_sink: Callable[[str, str, str, float, str], None] | None = None

_QUIET = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.CANCELLED,
    }
)
