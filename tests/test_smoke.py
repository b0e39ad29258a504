"""A first end-to-end call through a real channel."""

import grpc
import pytest

from helpers import error_info, new_experiment, new_run
from trackd.v1 import run_service_pb2 as rpb


async def test_create_run_and_read_it_back(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    run = await new_run(runs, eid, run_name="first")
    got = (await runs.GetRun(rpb.GetRunRequest(run_id=run.info.run_id))).run
    assert got.info.run_name == "first"
    assert got.info.experiment_id == eid


async def test_unknown_run_is_not_found(runs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await runs.GetRun(rpb.GetRunRequest(run_id="0" * 32))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(exc.value).reason == "RESOURCE_DOES_NOT_EXIST"
