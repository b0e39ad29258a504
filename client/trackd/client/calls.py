"""What every group of client calls shares: the stubs and deadline of the client they
belong to, the error translation, and walking the pages of a search."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any, ParamSpec, TypeVar

import grpc

from trackd.client.errors import from_rpc_error
from trackd.v1 import (
    artifact_service_pb2_grpc,
    experiment_service_pb2_grpc,
    logged_model_service_pb2_grpc,
    run_service_pb2_grpc,
)

P = ParamSpec("P")
T = TypeVar("T")


class Calls:
    """The stubs and per-call deadline that AsyncClient's call groups use."""

    experiments: experiment_service_pb2_grpc.ExperimentServiceAsyncStub
    runs: run_service_pb2_grpc.RunServiceAsyncStub
    models: logged_model_service_pb2_grpc.LoggedModelServiceAsyncStub
    artifacts: artifact_service_pb2_grpc.ArtifactServiceAsyncStub
    timeout: float | None


def rpc(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turns a failed call's AioRpcError into the matching TrackdError."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None

    return wrapper


async def all_pages(
    fetch: Callable[[str], Awaitable[tuple[Iterable[T], str]]],
) -> AsyncIterator[T]:
    """Every item of a paged search: `fetch(token)` returns a page and the next token."""
    token = ""
    while True:
        items, token = await fetch(token)
        for item in items:
            yield item
        if not token:
            return


__all__ = ["Calls", "all_pages", "rpc"]
