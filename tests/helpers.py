"""Helpers shared by the tests: creating entities through the stubs and reading error
details off a failed call."""

from __future__ import annotations

import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import run_service_pb2 as rpb

# Counts the fault and property suites add to; printed at the end of the run.
STATS: dict[str, int] = {"faults injected": 0, "generated inputs tried": 0}


def unique(prefix: str = "exp") -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def new_experiment(experiments, name: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """Creates an experiment with a unique name; returns its id."""
    resp = await experiments.CreateExperiment(epb.CreateExperimentRequest(name=name or unique()))
    return str(resp.experiment_id)


async def new_run(runs, experiment_id: str = "0", **fields):  # type: ignore[no-untyped-def]
    """Creates a run; returns its Run message."""
    resp = await runs.CreateRun(rpb.CreateRunRequest(experiment_id=experiment_id, **fields))
    return resp.run


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo detail of a failed call (fails the test if there is none)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {err.code()}: {err.details()}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo on {err.code()}: {err.details()}")


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of a failed call, field -> description."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    return {}
