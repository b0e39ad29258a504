"""Client-side errors: a failed call as a Python exception with trackd's error details."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class TrackdError(Exception):
    """A call trackd answered with an error.

    Attributes: `code` (grpc.StatusCode), `reason` (the MLflow-style code from ErrorInfo,
    such as RESOURCE_DOES_NOT_EXIST), `metadata` (ErrorInfo metadata) and `violations`
    (BadRequest field -> description)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        violations: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}
        self.violations = violations or {}


class NotFoundError(TrackdError):
    """NOT_FOUND: the experiment, run or tag does not exist."""


class AlreadyExistsError(TrackdError):
    """ALREADY_EXISTS: the name is taken."""


class InvalidArgumentError(TrackdError):
    """INVALID_ARGUMENT: a field breaks a rule or a limit; see `violations`."""


class FailedPreconditionError(TrackdError):
    """FAILED_PRECONDITION: the state forbids the call (deleted run, immutable param)."""


class PermissionDeniedError(TrackdError):
    """PERMISSION_DENIED: the caller sees the resource but lacks the level the call needs
    (named in the message and in `metadata["level_needed"]`)."""


class UnauthenticatedError(TrackdError):
    """UNAUTHENTICATED: the server has auth on and the call's credential is missing,
    malformed, expired, revoked or not valid (pass `token=` or set TRACKD_TOKEN)."""


class ResourceExhaustedError(TrackdError):
    """RESOURCE_EXHAUSTED: a limit of the server was reached: an artifact larger than its
    maximum artifact size (reason MAX_ARTIFACT_SIZE_EXCEEDED, the limit in the message), an
    answer too large to send (MAX_READ_SIZE_EXCEEDED), or the caller's rate or concurrency
    limit (REQUEST_LIMIT_EXCEEDED)."""


_BY_CODE: dict[grpc.StatusCode, type[TrackdError]] = {
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
}


def from_rpc_error(err: grpc.aio.AioRpcError) -> TrackdError:
    """The TrackdError for a failed call, with the details of its google.rpc.Status."""
    reason, metadata, violations = "", {}, {}
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = {v.field: v.description for v in bad.field_violations}
    cls = _BY_CODE.get(err.code(), TrackdError)
    return cls(err.code(), err.details() or "", reason, metadata, violations)
