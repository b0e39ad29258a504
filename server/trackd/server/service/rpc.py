"""Registration of servicers and the one error path to `google.rpc.Status`.

Each method of a service descriptor is registered with a deserializer that turns a
message protobuf cannot parse (invalid UTF-8 in a string, truncated bytes) into
INVALID_ARGUMENT instead of gRPC's INTERNAL, and with a wrapper that maps domain errors,
database outages and unexpected failures to statuses with ErrorInfo details. The wrapper
also encodes every response message itself and refuses one larger than
sizes.MESSAGE_BYTES_MAX with RESOURCE_EXHAUSTED (MAX_READ_SIZE_EXCEEDED), so that no
answer is ever too large for a client with gRPC's default limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
from google.protobuf import any_pb2, duration_pb2, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from trackd.server.domain.auth import policy
from trackd.server.domain.auth.policy import Gate
from trackd.server.errors import (
    STATUS_MESSAGE_BYTES_MAX,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    TrackdError,
    Unavailable,
)
from trackd.server.service import sizes
from trackd.server.service.guard import Call, Guard
from trackd.server.store import pool
from trackd.server.store.pool import CONNECTION_ERRORS

log = logging.getLogger(__name__)

ERROR_DOMAIN = "trackd.v1"

Context = grpc.aio.ServicerContext[Any, Any]


class _Undecodable:
    """Stands in for a request whose bytes protobuf rejected."""

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name = type_name
        self.error = error


class _WithRequestId(grpc.Status):
    """A status whose trailing metadata also carries the call's request id (aborting
    replaces the trailing metadata set earlier)."""

    def __init__(self, status: grpc.Status, request_id: str) -> None:
        self.code = status.code
        self.details = status.details
        self.trailing_metadata = (*status.trailing_metadata, ("x-request-id", request_id))


# An error travels in trailing metadata: `grpc-message` (the message, percent-encoded, so
# up to 3 bytes a byte) and `grpc-status-details-bin` (the google.rpc.Status, base64).
# gRPC clients refuse metadata over 8 KiB by default (a soft limit, 16 KiB hard), so an
# error is kept within TRAILERS_BYTES_MAX whatever its text: the message is cut to
# STATUS_MESSAGE_BYTES_MAX bytes, metadata values and violations are cut, and violations
# that would not fit are left out (the message counts them all).
TRAILERS_BYTES_MAX = 7 * 1024
_METADATA_VALUE_BYTES_MAX = 256
_FIELD_BYTES_MAX = 256
_DESCRIPTION_BYTES_MAX = 512
# What else the trailers hold: grpc-status, x-request-id, names and HPACK overhead.
_TRAILERS_OVERHEAD = 400


def cut_utf8(text: str, limit: int) -> str:
    """`text` if its UTF-8 form has at most `limit` bytes, else its longest prefix that,
    with "...", does."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


def _percent_encoded_size(text: str) -> int:
    """Bytes of `text` in grpc-message: printable ASCII other than '%' as is, else %XX."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in text.encode("utf-8"))


def to_status(err: TrackdError) -> grpc.Status:
    """The gRPC status for a domain error, with ErrorInfo and, if any, BadRequest and
    RetryInfo details; within TRAILERS_BYTES_MAX in all, so that a client with gRPC's
    default metadata limit receives it."""
    message = cut_utf8(err.message, STATUS_MESSAGE_BYTES_MAX)
    metadata = {
        cut_utf8(k, _METADATA_VALUE_BYTES_MAX): cut_utf8(v, _METADATA_VALUE_BYTES_MAX)
        for k, v in err.metadata.items()
    }
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN, metadata=metadata)
    )
    status = status_pb2.Status(code=err.code.value[0], message=message, details=[info])
    if isinstance(err, ResourceExhausted) and err.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(err.retry_after * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    violations = getattr(err, "violations", None)
    if violations:
        budget = (TRAILERS_BYTES_MAX - _TRAILERS_OVERHEAD - _percent_encoded_size(message)) * 3 // 4
        bad = error_details_pb2.BadRequest()
        room = budget - status.ByteSize() - 16  # the Any's type URL is counted below
        for v in violations:
            item = error_details_pb2.BadRequest.FieldViolation(
                field=cut_utf8(v.field, _FIELD_BYTES_MAX),
                description=cut_utf8(v.description, _DESCRIPTION_BYTES_MAX),
            )
            bad.field_violations.append(item)
            packed = any_pb2.Any()
            packed.Pack(bad)
            if packed.ByteSize() + 4 > room:
                del bad.field_violations[-1]
                break
        if bad.field_violations:
            status.details.add().Pack(bad)
    return rpc_status.to_status(status)


def classify(exc: BaseException) -> TrackdError | None:
    """Maps an exception to the TrackdError the caller should see; None for a bug."""
    if isinstance(exc, TrackdError):
        return exc
    if isinstance(exc, asyncpg.QueryCanceledError):
        return DeadlineExceeded("the database cancelled the statement (timeout)")
    if isinstance(exc, asyncpg.exceptions.CharacterNotInRepertoireError | asyncpg.DataError):
        return InvalidArgument(f"the database rejected a value: {exc}")
    if isinstance(exc, (*CONNECTION_ERRORS, TimeoutError)):
        return Unavailable(f"the database is unavailable: {type(exc).__name__}; retry the call")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        # A staged upload or an artifact object that does not fit on the server's disk.
        return ResourceExhausted("the server's disk is full; retry later or ask its operator")
    return None


def _safe_deserializer(cls: type[Message]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError) as exc:
            return _Undecodable(cls.DESCRIPTOR.full_name, str(exc) or "undecodable bytes")

    return deserialize


def _undecodable(request: Any) -> InvalidArgument | None:
    if isinstance(request, _Undecodable):
        return InvalidArgument(
            f"{request.type_name} could not be parsed (a string field must be valid "
            f"UTF-8): {request.error}"
        )
    return None


async def _fail(call: Call, context: Context, exc: Exception) -> None:
    """Records the status of a failed call and aborts it with that status."""
    err = classify(exc)
    if err is None:
        incident = uuid.uuid4().hex[:12]
        log.error("internal error, incident %s", incident, exc_info=exc)
        err = TrackdError(f"internal error (incident {incident})", {"incident": incident})
    call.code = err.code
    await context.abort_with_status(  # type: ignore[attr-defined]
        _WithRequestId(to_status(err), call.request_id)
    )


# Read-your-writes (README, "Read replicas"): a caller sends the highest WAL position it
# has seen, and each call answers the position its writes or reads reflect.
LSN_METADATA = "x-trackd-lsn"
_LSN_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, TimeoutError)


def _track_lsn(context: Context) -> list[int]:
    """Takes the call's x-trackd-lsn (a malformed one is ignored) as its required_lsn and
    starts its observed_lsn."""
    for key, value in context.invocation_metadata() or ():
        if key == LSN_METADATA and isinstance(value, str):
            with contextlib.suppress(ValueError):
                pool.required_lsn.set(pool.parse_lsn(value))
    held = [0]
    pool.observed_lsn.set(held)
    return held


async def _answer_lsn(context: Context, guard: Guard, held: list[int], writes: bool) -> None:
    """Puts the call's observed LSN (after a write: the primary's position now, at or after
    its commit) in its trailing metadata. A write whose position cannot be asked (the
    primary gone right after the commit) still succeeds, answering no position."""
    if writes and guard.write_lsn is not None:
        try:
            held[0] = max(held[0], await guard.write_lsn())
        except _LSN_ERRORS as exc:
            log.warning("the write committed but its WAL position is unknown: %s", exc)
    if held[0]:
        context.set_trailing_metadata(((LSN_METADATA, pool.format_lsn(held[0])),))


@contextlib.asynccontextmanager
async def _guarded(
    name: str, context: Context, guard: Guard, gate: Gate | None = None, request: Any = None
) -> AsyncIterator[None]:
    """One call's life for every kind of handler: start and admit it, check it against the
    policy (when the servicer has a gate), turn any failure of the body into the call's
    status (through _fail), audit it, and finish it."""
    call = guard.start(name, context)
    full_name = f"{gate.service}.{name}" if gate is not None else name
    if isinstance(request, _Undecodable):
        request = None
    try:
        await guard.admit(call, context)
        if gate is not None:
            await gate.before(full_name, request)
        yield
    except asyncio.CancelledError:
        call.code = grpc.StatusCode.CANCELLED
        raise
    except Exception as exc:  # noqa: BLE001 - every failure leaves through _fail()
        await _fail(call, context, exc)
    finally:
        if gate is not None:
            gate.after(full_name, request, call.code.name, call.request_id)
        guard.finish(call)


def _checked(request: Any) -> Any:
    """The request, or InvalidArgument if protobuf could not parse it."""
    bad = _undecodable(request)
    if bad is not None:
        raise bad
    return request


def _wrap_unary(
    name: str,
    fn: Callable[[Any, Context], Awaitable[Any]],
    guard: Guard,
    gate: Gate | None,
    writes: bool = False,
) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: Context) -> Any:
        held = _track_lsn(context)
        async with _guarded(name, context, guard, gate, request):
            answer = sizes.encode(name, await fn(_checked(request), context))
            await _answer_lsn(context, guard, held, writes)
            return answer

    return handler


def _wrap_stream_out(
    name: str, fn: Callable[[Any, Context], AsyncIterator[Any]], guard: Guard, gate: Gate | None
) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
        held = _track_lsn(context)
        async with _guarded(name, context, guard, gate, request):
            async for item in fn(_checked(request), context):
                yield sizes.encode(name, item)
            await _answer_lsn(context, guard, held, False)

    return handler


def _wrap_stream_in(
    name: str,
    fn: Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]],
    guard: Guard,
    gate: Gate | None,
) -> Callable[..., AsyncIterator[Any]]:
    async def handler(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                yield _checked(request)

        async with _guarded(name, context, guard, gate):
            async for item in fn(checked(), context):
                yield sizes.encode(name, item)

    return handler


def _encoded(data: bytes) -> bytes:
    """The response serializer: the wrappers hand over messages encoded already."""
    return data


def method_handlers(
    servicer: object, service: ServiceDescriptor, guard: Guard
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The handler of every method of `service`, implemented by the method of the same
    name on `servicer`, each call going through `guard`, the servicer's `gate` (the
    permission policy, if it has one) and the size check. KeyError for a method whose
    permission the policy does not declare."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    # The servicer's own attribute only (a servicer may answer every name it is asked).
    gate: Gate | None = vars(servicer).get("gate") if hasattr(servicer, "__dict__") else None
    if gate is not None:
        gate.service = service.full_name
    for method in service.methods:
        writes = policy.rule(method.full_name).writes
        request_cls = message_factory.GetMessageClass(method.input_type)
        impl = getattr(servicer, method.name)
        kwargs: dict[str, Any] = {
            "request_deserializer": _safe_deserializer(request_cls),
            "response_serializer": _encoded,
        }
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _wrap_stream_in(method.name, impl, guard, gate), **kwargs
            )
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _wrap_stream_out(method.name, impl, guard, gate), **kwargs
            )
        elif method.client_streaming:
            raise NotImplementedError(f"client-streaming method {method.full_name}")
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method.name, impl, guard, gate, writes), **kwargs
            )
    return handlers


def add_service(
    server: grpc.aio.Server, servicer: object, service: ServiceDescriptor, guard: Guard
) -> None:
    """Registers every method of `service` on `server` (see method_handlers)."""
    handlers = method_handlers(servicer, service, guard)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
