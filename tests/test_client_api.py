"""The Python clients cover the contract: every RPC of every service has a method in both
`Client` and `AsyncClient` (derived from the service descriptors, so a new RPC cannot be
forgotten), and the blocking client mirrors the async one argument for argument. That each
method really reaches its RPC is proven in test_client_tour.py, through the server's
metrics."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import trackd.v1
from trackd.client import AsyncClient, Client
from trackd.client.aio import RPC_METHOD_NAMES, rpc_method_name

# Every generated module of the contract, so that a new service file is covered too.
FILES = [
    importlib.import_module(f"trackd.v1.{m.name}")
    for m in pkgutil.iter_modules(trackd.v1.__path__)
    if m.name.endswith("_pb2")
]
RPCS = [
    method.full_name
    for f in FILES
    for service in f.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]


def test_the_contract_has_the_services_the_clients_cover() -> None:
    services = {name for f in FILES for name in f.DESCRIPTOR.services_by_name}
    assert services == {
        "ExperimentService",
        "RunService",
        "LoggedModelService",
        "ArtifactService",
    }
    assert len(RPCS) >= 36
    # Every renamed RPC still exists: a renamed or dropped RPC must update the table.
    assert set(RPC_METHOD_NAMES) <= set(RPCS)


@pytest.mark.parametrize("rpc", RPCS)
def test_every_rpc_has_a_method_in_both_clients(rpc: str) -> None:
    name = rpc_method_name(rpc)
    for cls in (AsyncClient, Client):
        method = getattr(cls, name, None)
        assert callable(method), f"{cls.__name__} has no method {name!r} for {rpc}"
        assert (method.__doc__ or "").strip(), f"{cls.__name__}.{name} has no docstring"


def _public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}


def test_the_blocking_client_has_every_async_method_with_the_same_arguments() -> None:
    assert _public(AsyncClient) - _public(Client) == set()
    for name in sorted(_public(AsyncClient)):
        a = inspect.signature(getattr(AsyncClient, name))
        s = inspect.signature(getattr(Client, name))
        if name in {"logger", "start_run"}:
            # Same arguments; the blocking one takes and makes the thread-side types.
            assert list(a.parameters) == list(s.parameters), name
            continue
        assert list(a.parameters) == list(s.parameters), name
        assert [p.default for p in a.parameters.values()] == [
            p.default for p in s.parameters.values()
        ], name
