"""Typed errors of trackd's domain; each carries its gRPC code and MLflow-style reason (a
name of the contract's trackd.v1.ErrorReason without its prefix).

The service layer turns them into a `google.rpc.Status` in one place (service/rpc.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

# The longest error message sent (UTF-8 bytes): an error travels in trailing metadata,
# which gRPC clients limit to 8 KiB by default (see service/rpc.py).
STATUS_MESSAGE_BYTES_MAX = 1000


@dataclass(frozen=True)
class FieldViolation:
    """One offending request field: its path (``metrics[3].key``) and what is wrong."""

    field: str
    description: str


@dataclass
class TrackdError(Exception):
    """Base of every error trackd reports to a caller."""

    message: str
    metadata: dict[str, str] = field(default_factory=dict)

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL_ERROR"

    def __str__(self) -> str:
        return self.message


@dataclass
class InvalidArgument(TrackdError):
    """A request field breaks a rule or a limit."""

    violations: list[FieldViolation] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    reason: str = "INVALID_PARAMETER_VALUE"

    @classmethod
    def of(cls, violations: list[FieldViolation]) -> InvalidArgument:
        """One error for all violations; the message lists the first ones (at most 10, and
        as many as fit in STATUS_MESSAGE_BYTES_MAX) and counts the others."""
        shown: list[str] = []
        used = 0
        for v in violations[:10]:
            part = f"{v.field}: {v.description}"
            used += len(part.encode("utf-8", "surrogatepass")) + 2
            if shown and used > STATUS_MESSAGE_BYTES_MAX - 32:
                break
            shown.append(part)
        rest = len(violations) - len(shown)
        more = f"; and {rest} more" if rest else ""
        return cls("; ".join(shown) + more, violations=list(violations))

    @classmethod
    def for_field(cls, name: str, description: str) -> InvalidArgument:
        """An error for a single field."""
        return cls.of([FieldViolation(name, description)])


@dataclass
class NotFound(TrackdError):
    """A named resource does not exist."""

    code: grpc.StatusCode = grpc.StatusCode.NOT_FOUND
    reason: str = "RESOURCE_DOES_NOT_EXIST"


@dataclass
class AlreadyExists(TrackdError):
    """A resource with the same unique name exists."""

    code: grpc.StatusCode = grpc.StatusCode.ALREADY_EXISTS
    reason: str = "RESOURCE_ALREADY_EXISTS"


@dataclass
class FailedPrecondition(TrackdError):
    """The resource's state forbids the call (deleted run, immutable param, ...)."""

    code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
    reason: str = "INVALID_STATE"


@dataclass
class ResourceExhausted(TrackdError):
    """A size or rate limit was hit; `retry_after` (seconds) says when a retry can pass."""

    code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason: str = "REQUEST_LIMIT_EXCEEDED"
    retry_after: float | None = None


@dataclass
class ArtifactTooLarge(ResourceExhausted):
    """An artifact is larger than the server stores (`--artifact-max-bytes`)."""

    reason: str = "MAX_ARTIFACT_SIZE_EXCEEDED"


@dataclass
class Unavailable(TrackdError):
    """The database cannot be reached right now; the call may be retried."""

    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    reason: str = "TEMPORARILY_UNAVAILABLE"


@dataclass
class Aborted(TrackdError):
    """A transaction conflicted with another one repeatedly; the call may be retried."""

    code: grpc.StatusCode = grpc.StatusCode.ABORTED
    reason: str = "ABORTED"


@dataclass
class DeadlineExceeded(TrackdError):
    """The caller's deadline passed before the work finished; nothing was committed."""

    code: grpc.StatusCode = grpc.StatusCode.DEADLINE_EXCEEDED
    reason: str = "DEADLINE_EXCEEDED"


@dataclass
class ResponseTooLarge(TrackdError):
    """One item of an answer (a run, an experiment, a logged model) encodes to more bytes
    than a response may hold; pages are cut before this, so only an item alone raises it.
    Retrying cannot help; the call's writes, if any, are committed."""

    code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason: str = "MAX_READ_SIZE_EXCEEDED"


@dataclass
class Unauthenticated(TrackdError):
    """The call carries no credential, or one that is malformed, expired, revoked or not
    signed by a trusted key. The message says which, never the credential itself."""

    code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED
    reason: str = "UNAUTHENTICATED"


@dataclass
class PermissionDenied(TrackdError):
    """The caller may see the resource but lacks the level the call needs (the message
    names it)."""

    code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED
    reason: str = "PERMISSION_DENIED"


def run_not_found(run_id: str) -> NotFound:
    """The NOT_FOUND of a run id that names no run (or one the caller may not see)."""
    return NotFound(f"no run has id {run_id}", metadata={"run_id": run_id})


def model_not_found(model_id: str, deleted: bool = False) -> NotFound:
    """The NOT_FOUND of a logged model id that names no live model."""
    what = "was deleted" if deleted else "does not exist"
    return NotFound(f"logged model {model_id} {what}", metadata={"model_id": model_id})


def experiment_not_found(experiment_id: object) -> NotFound:
    """The NOT_FOUND of an experiment id that names no experiment."""
    ident = str(experiment_id)
    return NotFound(f"no experiment has id {ident}", metadata={"experiment_id": ident})
