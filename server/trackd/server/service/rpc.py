"""Registration of servicers and the one error path to `google.rpc.Status`.

Each method of a service descriptor is registered with a deserializer that turns a
message protobuf cannot parse (invalid UTF-8 in a string, truncated bytes) into
INVALID_ARGUMENT instead of gRPC's INTERNAL, and with a wrapper that maps domain errors,
database outages and unexpected failures to statuses with ErrorInfo details.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
from google.protobuf import any_pb2, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from trackd.server.errors import (
    DeadlineExceeded,
    InvalidArgument,
    TrackdError,
    Unavailable,
)

log = logging.getLogger(__name__)

ERROR_DOMAIN = "trackd.v1"

# Failures that mean "the database cannot serve right now": the caller may retry.
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.OperatorInterventionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)

Context = grpc.aio.ServicerContext[Any, Any]


class _Undecodable:
    """Stands in for a request whose bytes protobuf rejected."""

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name = type_name
        self.error = error


def to_status(err: TrackdError) -> grpc.Status:
    """The gRPC status for a domain error, with ErrorInfo and, if any, BadRequest details."""
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN, metadata=err.metadata)
    )
    details = [info]
    violations = getattr(err, "violations", None)
    if violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in violations
                ]
            )
        )
        details.append(bad)
    status = status_pb2.Status(code=err.code.value[0], message=err.message, details=details)
    return rpc_status.to_status(status)


def classify(exc: BaseException) -> TrackdError | None:
    """Maps an exception to the TrackdError the caller should see; None for a bug."""
    if isinstance(exc, TrackdError):
        return exc
    if isinstance(exc, asyncpg.QueryCanceledError):
        return DeadlineExceeded("the database cancelled the statement (timeout)")
    if isinstance(exc, asyncpg.exceptions.CharacterNotInRepertoireError | asyncpg.DataError):
        return InvalidArgument(f"the database rejected a value: {exc}")
    if isinstance(exc, _UNAVAILABLE):
        return Unavailable(f"the database is unavailable: {type(exc).__name__}; retry the call")
    return None


async def abort(context: Context, exc: BaseException) -> None:
    """Aborts the call with the status for `exc`; an unexpected one is INTERNAL, logged with
    its traceback and an incident id, which alone reaches the caller."""
    err = classify(exc)
    if err is None:
        incident = uuid.uuid4().hex[:12]
        log.error("internal error, incident %s", incident, exc_info=exc)
        err = TrackdError(f"internal error (incident {incident})", {"incident": incident})
    await context.abort_with_status(to_status(err))  # type: ignore[attr-defined]


def _safe_deserializer(cls: type[Message]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError) as exc:
            return _Undecodable(cls.DESCRIPTOR.full_name, str(exc) or "undecodable bytes")

    return deserialize


async def _reject_undecodable(request: Any, context: Context) -> None:
    if isinstance(request, _Undecodable):
        await abort(
            context,
            InvalidArgument(
                f"{request.type_name} could not be parsed (a string field must be valid "
                f"UTF-8): {request.error}"
            ),
        )


def _wrap_unary(fn: Callable[[Any, Context], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: Context) -> Any:
        await _reject_undecodable(request, context)
        try:
            return await fn(request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure leaves through abort()
            await abort(context, exc)

    return handler


def _wrap_stream_out(
    fn: Callable[[Any, Context], AsyncIterator[Any]],
) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
        await _reject_undecodable(request, context)
        try:
            async for item in fn(request, context):
                yield item
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            await abort(context, exc)

    return handler


def _wrap_stream_in(
    fn: Callable[[AsyncIterator[Any], Context], AsyncIterator[Any]],
) -> Callable[..., AsyncIterator[Any]]:
    async def handler(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                await _reject_undecodable(request, context)
                yield request

        try:
            async for item in fn(checked(), context):
                yield item
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            await abort(context, exc)

    return handler


def add_service(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor) -> None:
    """Registers every method of `service` on `server`, implemented by the method of the
    same name on `servicer`."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        impl = getattr(servicer, method.name)
        kwargs: dict[str, Any] = {
            "request_deserializer": _safe_deserializer(request_cls),
            "response_serializer": response_cls.SerializeToString,
        }
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _wrap_stream_in(impl), **kwargs
            )
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _wrap_stream_out(impl), **kwargs
            )
        elif method.client_streaming:
            raise NotImplementedError(f"client-streaming method {method.full_name}")
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(_wrap_unary(impl), **kwargs)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
