"""RunService lifecycle: CreateRun defaults, nesting, UpdateRun, delete/restore of runs and
with their experiment, bulk DeleteRuns/RestoreRuns, and run id checks."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable

import grpc
import pytest

from helpers import error_info, new_experiment, new_run, settled, violations
from trackd.v1 import common_pb2 as cpb
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import run_pb2
from trackd.v1 import run_service_pb2 as rpb

ACTIVE = cpb.LIFECYCLE_STAGE_ACTIVE
DELETED = cpb.LIFECYCLE_STAGE_DELETED
RUNNING = run_pb2.RUN_STATUS_RUNNING
FINISHED = run_pb2.RUN_STATUS_FINISHED
FAILED = run_pb2.RUN_STATUS_FAILED
RUN_NAME_TAG = "mlflow.runName"
PARENT_TAG = "mlflow.parentRunId"
UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def fails(
    call: Awaitable[object], code: grpc.StatusCode, reason: str
) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with `code` and ErrorInfo `reason`; returns the error."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    err = exc.value
    assert err.code() == code, f"{err.code()}: {err.details()}"
    assert error_info(err).reason == reason
    return err


async def invalid(call: Awaitable[object], field: str) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail INVALID_ARGUMENT with a BadRequest naming `field`."""
    err = await fails(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER_VALUE")
    assert field in violations(err), violations(err)
    return err


async def failed_precondition(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    return await fails(call, grpc.StatusCode.FAILED_PRECONDITION, "INVALID_STATE")


async def not_found(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    return await fails(call, grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST")


async def get_run(runs, run_id: str) -> run_pb2.Run:  # type: ignore[no-untyped-def]
    """The run as read, without a RUNNING run's growing duration (see helpers.settled)."""
    return settled((await runs.GetRun(rpb.GetRunRequest(run_id=run_id))).run)  # type: ignore[no-any-return]


async def stage(runs, run_id: str) -> int:  # type: ignore[no-untyped-def]
    return (await get_run(runs, run_id)).info.lifecycle_stage


def tags_of(run: run_pb2.Run) -> dict[str, str]:
    return {t.key: t.value for t in run.data.tags}


async def get_experiment(experiments, eid: str):  # type: ignore[no-untyped-def]
    resp = await experiments.GetExperiment(epb.GetExperimentRequest(experiment_id=eid))
    return resp.experiment


async def delete_experiment(experiments, eid: str) -> None:  # type: ignore[no-untyped-def]
    await experiments.DeleteExperiment(epb.DeleteExperimentRequest(experiment_id=eid))


async def restore_experiment(experiments, eid: str) -> None:  # type: ignore[no-untyped-def]
    await experiments.RestoreExperiment(epb.RestoreExperimentRequest(experiment_id=eid))


# -- CreateRun ---------------------------------------------------------------------------------


async def test_create_run_defaults(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    location = (await get_experiment(experiments, eid)).artifact_location
    before = now_ms()
    run = await new_run(runs, eid)
    after = now_ms()

    info = run.info
    assert re.fullmatch(r"[0-9a-f]{32}", info.run_id)
    assert info.experiment_id == eid
    assert info.status == RUNNING
    assert info.lifecycle_stage == ACTIVE
    assert before <= info.start_time <= after
    assert info.end_time == 0
    assert info.user_id == ""
    assert info.artifact_uri.startswith(f"{location}/")
    assert info.run_id in info.artifact_uri
    assert re.fullmatch(r"[a-z]+-[a-z]+-[0-9]{1,3}", info.run_name), info.run_name
    assert tags_of(run) == {RUN_NAME_TAG: info.run_name}
    assert PARENT_TAG not in tags_of(run)
    assert list(run.data.params) == [] and list(run.data.metrics) == []

    assert await get_run(runs, info.run_id) == settled(run)


async def test_created_runs_get_distinct_ids_and_artifact_uris(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    made = [await new_run(runs, eid) for _ in range(3)]
    assert len({r.info.run_id for r in made}) == 3
    assert len({r.info.artifact_uri for r in made}) == 3


async def test_artifact_uri_is_under_an_explicit_experiment_location(experiments, runs) -> None:
    resp = await experiments.CreateExperiment(
        epb.CreateExperimentRequest(
            name=f"loc-{uuid.uuid4().hex[:10]}", artifact_location="s3://bucket/exp"
        )
    )
    run = await new_run(runs, resp.experiment_id)
    assert run.info.artifact_uri.startswith("s3://bucket/exp/")
    assert run.info.run_id in run.info.artifact_uri


async def test_create_run_keeps_given_fields(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    run = await new_run(
        runs,
        eid,
        run_name="given-name",
        start_time=1_234_567,
        user_id="alice",
        tags=[run_pb2.RunTag(key="team", value="nlp")],
    )
    assert run.info.run_name == "given-name"
    assert run.info.start_time == 1_234_567
    assert run.info.user_id == "alice"
    assert tags_of(run) == {"team": "nlp", RUN_NAME_TAG: "given-name"}


async def test_generated_run_names_differ(runs) -> None:
    names = {(await new_run(runs)).info.run_name for _ in range(8)}
    assert len(names) > 1


async def test_run_name_tag_alone_names_the_run(runs) -> None:
    run = await new_run(runs, tags=[run_pb2.RunTag(key=RUN_NAME_TAG, value="from-tag")])
    assert run.info.run_name == "from-tag"
    assert tags_of(run)[RUN_NAME_TAG] == "from-tag"


async def test_run_name_equal_to_run_name_tag_is_accepted(runs) -> None:
    run = await new_run(
        runs, run_name="same", tags=[run_pb2.RunTag(key=RUN_NAME_TAG, value="same")]
    )
    assert run.info.run_name == "same"
    assert tags_of(run)[RUN_NAME_TAG] == "same"


async def test_run_name_conflicting_with_run_name_tag_is_invalid_argument(runs) -> None:
    await invalid(
        runs.CreateRun(
            rpb.CreateRunRequest(
                run_name="one", tags=[run_pb2.RunTag(key=RUN_NAME_TAG, value="other")]
            )
        ),
        "run_name",
    )


async def test_empty_experiment_id_means_default_experiment(runs) -> None:
    run = await new_run(runs, "")
    assert run.info.experiment_id == "0"
    assert (await get_run(runs, run.info.run_id)).info.experiment_id == "0"


async def test_create_run_in_unknown_experiment_is_not_found(runs) -> None:
    await not_found(runs.CreateRun(rpb.CreateRunRequest(experiment_id="987654321")))


@pytest.mark.parametrize("bad_id", ["abc", "-1", "01", "99999999999999999999"])
async def test_create_run_with_malformed_experiment_id_is_invalid_argument(
    runs, bad_id: str
) -> None:
    await invalid(runs.CreateRun(rpb.CreateRunRequest(experiment_id=bad_id)), "experiment_id")


async def test_creating_a_run_in_a_deleted_experiment_is_failed_precondition(
    experiments, runs
) -> None:
    eid = await new_experiment(experiments)
    await delete_experiment(experiments, eid)
    await failed_precondition(runs.CreateRun(rpb.CreateRunRequest(experiment_id=eid)))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"run_name": "n" * 251}, "run_name"),
        ({"run_name": "a\x00b"}, "run_name"),
        ({"user_id": "u" * 251}, "user_id"),
        ({"user_id": "\x00"}, "user_id"),
        ({"start_time": -1}, "start_time"),
        ({"tags": [run_pb2.RunTag(key="bad*key", value="v")]}, "tags[0].key"),
        ({"tags": [run_pb2.RunTag(key="k", value="v" * 8001)]}, "tags[0].value"),
    ],
)
async def test_create_run_with_bad_field_is_invalid_argument(
    experiments, runs, fields: dict[str, object], field: str
) -> None:
    eid = await new_experiment(experiments)
    await invalid(runs.CreateRun(rpb.CreateRunRequest(experiment_id=eid, **fields)), field)


async def test_run_name_of_250_characters_is_accepted(runs) -> None:
    run = await new_run(runs, run_name="n" * 250)
    assert run.info.run_name == "n" * 250


# -- nested runs -------------------------------------------------------------------------------


async def test_nested_run_records_its_parent_as_a_tag(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    parent = await new_run(runs, eid)
    child = await new_run(runs, eid, parent_run_id=parent.info.run_id)
    assert tags_of(child)[PARENT_TAG] == parent.info.run_id
    assert tags_of(await get_run(runs, child.info.run_id))[PARENT_TAG] == parent.info.run_id
    assert PARENT_TAG not in tags_of(await get_run(runs, parent.info.run_id))


async def test_unknown_parent_run_is_not_found(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    await not_found(
        runs.CreateRun(rpb.CreateRunRequest(experiment_id=eid, parent_run_id=UNKNOWN_RUN))
    )


async def test_malformed_parent_run_id_is_invalid_argument(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    await invalid(
        runs.CreateRun(rpb.CreateRunRequest(experiment_id=eid, parent_run_id="nope")),
        "parent_run_id",
    )


async def test_parent_in_another_experiment_is_invalid_argument(experiments, runs) -> None:
    parent = await new_run(runs, await new_experiment(experiments))
    eid = await new_experiment(experiments)
    await invalid(
        runs.CreateRun(rpb.CreateRunRequest(experiment_id=eid, parent_run_id=parent.info.run_id)),
        "parent_run_id",
    )


async def test_deleted_parent_run_is_failed_precondition(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    parent = await new_run(runs, eid)
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=parent.info.run_id))
    await failed_precondition(
        runs.CreateRun(rpb.CreateRunRequest(experiment_id=eid, parent_run_id=parent.info.run_id))
    )


# -- UpdateRun ---------------------------------------------------------------------------------


async def test_update_run_status_only_leaves_end_time_and_name(runs) -> None:
    run = await new_run(runs, run_name="keep-me")
    resp = await runs.UpdateRun(rpb.UpdateRunRequest(run_id=run.info.run_id, status=FAILED))
    assert resp.run_info.status == FAILED
    assert resp.run_info.end_time == 0
    assert resp.run_info.run_name == "keep-me"
    got = await get_run(runs, run.info.run_id)
    assert got.info == resp.run_info
    assert tags_of(got)[RUN_NAME_TAG] == "keep-me"


async def test_update_run_end_time_only_leaves_status_and_name(runs) -> None:
    run = await new_run(runs, run_name="keep-me")
    resp = await runs.UpdateRun(rpb.UpdateRunRequest(run_id=run.info.run_id, end_time=99_999))
    assert resp.run_info.end_time == 99_999
    assert resp.run_info.status == RUNNING
    assert resp.run_info.run_name == "keep-me"
    assert (await get_run(runs, run.info.run_id)).info == settled(resp.run_info)
    # With an end time, the duration is end minus start, even while RUNNING.
    assert resp.run_info.duration == (99_999 - run.info.start_time) / 1000


async def test_update_run_with_nothing_set_changes_nothing(runs) -> None:
    run = await new_run(runs, run_name="still")
    await runs.UpdateRun(
        rpb.UpdateRunRequest(run_id=run.info.run_id, status=FINISHED, end_time=5_000)
    )
    before = await get_run(runs, run.info.run_id)
    resp = await runs.UpdateRun(rpb.UpdateRunRequest(run_id=run.info.run_id))
    assert settled(resp.run_info) == before.info
    assert await get_run(runs, run.info.run_id) == before


async def test_update_run_end_time_zero_is_applied_not_ignored(runs) -> None:
    run = await new_run(runs)
    await runs.UpdateRun(rpb.UpdateRunRequest(run_id=run.info.run_id, end_time=5_000))
    resp = await runs.UpdateRun(rpb.UpdateRunRequest(run_id=run.info.run_id, end_time=0))
    assert resp.run_info.end_time == 0


async def test_update_run_name_also_updates_run_name_tag(runs) -> None:
    run = await new_run(runs, run_name="before")
    resp = await runs.UpdateRun(rpb.UpdateRunRequest(run_id=run.info.run_id, run_name="after"))
    assert resp.run_info.run_name == "after"
    assert resp.run_info.status == RUNNING
    got = await get_run(runs, run.info.run_id)
    assert got.info.run_name == "after"
    assert tags_of(got)[RUN_NAME_TAG] == "after"


async def test_setting_run_name_tag_renames_the_run(runs) -> None:
    run = await new_run(runs, run_name="before")
    await runs.SetTag(rpb.SetTagRequest(run_id=run.info.run_id, key=RUN_NAME_TAG, value="by-tag"))
    assert (await get_run(runs, run.info.run_id)).info.run_name == "by-tag"


async def test_update_run_all_fields_at_once(runs) -> None:
    run = await new_run(runs)
    resp = await runs.UpdateRun(
        rpb.UpdateRunRequest(
            run_id=run.info.run_id, status=FINISHED, end_time=run.info.start_time + 10, run_name="x"
        )
    )
    info = resp.run_info
    assert (info.status, info.end_time, info.run_name) == (
        FINISHED,
        run.info.start_time + 10,
        "x",
    )
    assert info.run_id == run.info.run_id
    assert info.start_time == run.info.start_time
    assert info.lifecycle_stage == ACTIVE


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"status": 9}, "status"),
        ({"end_time": -1}, "end_time"),
        ({"run_name": ""}, "run_name"),
        ({"run_name": "n" * 251}, "run_name"),
        ({"run_name": "a\x00"}, "run_name"),
    ],
)
async def test_update_run_with_bad_field_is_invalid_argument(
    runs, fields: dict[str, object], field: str
) -> None:
    run = await new_run(runs, run_name="unchanged")
    await invalid(runs.UpdateRun(rpb.UpdateRunRequest(run_id=run.info.run_id, **fields)), field)
    assert await get_run(runs, run.info.run_id) == settled(run)


# -- DeleteRun / RestoreRun --------------------------------------------------------------------


async def test_delete_and_restore_run_move_its_lifecycle_stage(runs) -> None:
    run = await new_run(runs)
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=run.info.run_id))
    deleted = await get_run(runs, run.info.run_id)
    assert deleted.info.lifecycle_stage == DELETED
    assert deleted.info.status == run.info.status
    await runs.RestoreRun(rpb.RestoreRunRequest(run_id=run.info.run_id))
    assert await get_run(runs, run.info.run_id) == settled(run)


async def test_deleting_a_deleted_run_is_failed_precondition(runs) -> None:
    run = await new_run(runs)
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=run.info.run_id))
    await failed_precondition(runs.DeleteRun(rpb.DeleteRunRequest(run_id=run.info.run_id)))
    assert await stage(runs, run.info.run_id) == DELETED


async def test_restoring_an_active_run_is_failed_precondition(runs) -> None:
    run = await new_run(runs)
    await failed_precondition(runs.RestoreRun(rpb.RestoreRunRequest(run_id=run.info.run_id)))


def _writes(run_id: str) -> dict[str, tuple[str, object]]:
    return {
        "LogParam": ("LogParam", rpb.LogParamRequest(run_id=run_id, key="p", value="v")),
        "SetTag": ("SetTag", rpb.SetTagRequest(run_id=run_id, key="t", value="v")),
        "DeleteTag": ("DeleteTag", rpb.DeleteTagRequest(run_id=run_id, key="kept")),
        "LogMetric": (
            "LogMetric",
            rpb.LogMetricRequest(run_id=run_id, key="m", value=1.0, timestamp=1, step=0),
        ),
        "LogBatch": (
            "LogBatch",
            rpb.LogBatchRequest(run_id=run_id, params=[run_pb2.Param(key="b", value="v")]),
        ),
        "UpdateRun": ("UpdateRun", rpb.UpdateRunRequest(run_id=run_id, status=FINISHED)),
        "UpdateRun.run_name": ("UpdateRun", rpb.UpdateRunRequest(run_id=run_id, run_name="new")),
    }


WRITES = list(_writes(UNKNOWN_RUN))


@pytest.mark.parametrize("write", WRITES)
async def test_writes_to_a_deleted_run_are_failed_precondition(runs, write: str) -> None:
    run = await new_run(runs)
    await runs.SetTag(rpb.SetTagRequest(run_id=run.info.run_id, key="kept", value="v"))
    before = await get_run(runs, run.info.run_id)
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=run.info.run_id))
    rpc, request = _writes(run.info.run_id)[write]
    await failed_precondition(getattr(runs, rpc)(request))
    await runs.RestoreRun(rpb.RestoreRunRequest(run_id=run.info.run_id))
    assert await get_run(runs, run.info.run_id) == before


@pytest.mark.parametrize("write", WRITES)
async def test_writes_to_a_run_of_a_deleted_experiment_are_failed_precondition(
    experiments, runs, write: str
) -> None:
    eid = await new_experiment(experiments)
    run = await new_run(runs, eid)
    await runs.SetTag(rpb.SetTagRequest(run_id=run.info.run_id, key="kept", value="v"))
    before = await get_run(runs, run.info.run_id)
    await delete_experiment(experiments, eid)
    rpc, request = _writes(run.info.run_id)[write]
    await failed_precondition(getattr(runs, rpc)(request))
    await restore_experiment(experiments, eid)
    assert await get_run(runs, run.info.run_id) == before


async def test_deleted_run_can_be_written_again_after_restore(runs) -> None:
    run = await new_run(runs)
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=run.info.run_id))
    await runs.RestoreRun(rpb.RestoreRunRequest(run_id=run.info.run_id))
    await runs.LogParam(rpb.LogParamRequest(run_id=run.info.run_id, key="p", value="v"))
    assert [(p.key, p.value) for p in (await get_run(runs, run.info.run_id)).data.params] == [
        ("p", "v")
    ]


async def test_concurrent_deletes_of_one_run_succeed_exactly_once(runs) -> None:
    run = await new_run(runs)
    results = await asyncio.gather(
        *(runs.DeleteRun(rpb.DeleteRunRequest(run_id=run.info.run_id)) for _ in range(6)),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == len(results) - 1
    assert {e.code() for e in errors} == {grpc.StatusCode.FAILED_PRECONDITION}  # type: ignore[union-attr]
    assert await stage(runs, run.info.run_id) == DELETED


# -- runs follow their experiment --------------------------------------------------------------


async def test_deleting_an_experiment_deletes_its_runs_and_restoring_restores_exactly_those(
    experiments, runs
) -> None:
    eid = await new_experiment(experiments)
    kept = [await new_run(runs, eid) for _ in range(3)]
    alone = await new_run(runs, eid)
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=alone.info.run_id))
    other = await new_run(runs, await new_experiment(experiments))

    await delete_experiment(experiments, eid)
    for r in [*kept, alone]:
        assert await stage(runs, r.info.run_id) == DELETED
    assert await stage(runs, other.info.run_id) == ACTIVE

    await restore_experiment(experiments, eid)
    for r in kept:
        assert await stage(runs, r.info.run_id) == ACTIVE
    assert await stage(runs, alone.info.run_id) == DELETED
    assert await stage(runs, other.info.run_id) == ACTIVE


async def test_second_delete_restore_cycle_restores_the_same_runs(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    run = await new_run(runs, eid)
    alone = await new_run(runs, eid)
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=alone.info.run_id))
    for _ in range(2):
        await delete_experiment(experiments, eid)
        await restore_experiment(experiments, eid)
        assert await stage(runs, run.info.run_id) == ACTIVE
        assert await stage(runs, alone.info.run_id) == DELETED


async def test_run_restored_individually_is_not_deleted_again_by_experiment_restore(
    experiments, runs
) -> None:
    eid = await new_experiment(experiments)
    run = await new_run(runs, eid)
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=run.info.run_id))
    await runs.RestoreRun(rpb.RestoreRunRequest(run_id=run.info.run_id))
    await delete_experiment(experiments, eid)
    await restore_experiment(experiments, eid)
    assert await stage(runs, run.info.run_id) == ACTIVE


async def test_failed_experiment_restore_leaves_its_runs_deleted(experiments, runs) -> None:
    name = f"exp-{uuid.uuid4().hex[:10]}"
    eid = await new_experiment(experiments, name)
    run = await new_run(runs, eid)
    await delete_experiment(experiments, eid)
    await new_experiment(experiments, name)  # takes the name: the restore must fail
    await failed_precondition(
        experiments.RestoreExperiment(epb.RestoreExperimentRequest(experiment_id=eid))
    )
    assert await stage(runs, run.info.run_id) == DELETED


async def test_restore_run_while_its_experiment_is_deleted_is_failed_precondition(
    experiments, runs
) -> None:
    eid = await new_experiment(experiments)
    run = await new_run(runs, eid)
    await delete_experiment(experiments, eid)
    await failed_precondition(runs.RestoreRun(rpb.RestoreRunRequest(run_id=run.info.run_id)))
    assert await stage(runs, run.info.run_id) == DELETED


async def test_individually_deleted_run_stays_unrestorable_while_experiment_is_deleted(
    experiments, runs
) -> None:
    eid = await new_experiment(experiments)
    run = await new_run(runs, eid)
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=run.info.run_id))
    await delete_experiment(experiments, eid)
    await failed_precondition(runs.RestoreRun(rpb.RestoreRunRequest(run_id=run.info.run_id)))
    await restore_experiment(experiments, eid)
    await runs.RestoreRun(rpb.RestoreRunRequest(run_id=run.info.run_id))
    assert await stage(runs, run.info.run_id) == ACTIVE


async def test_delete_run_of_a_deleted_experiment_is_failed_precondition(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    run = await new_run(runs, eid)
    await delete_experiment(experiments, eid)
    await failed_precondition(runs.DeleteRun(rpb.DeleteRunRequest(run_id=run.info.run_id)))


async def test_deleted_run_is_still_readable(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    run = await new_run(runs, eid)
    await delete_experiment(experiments, eid)
    got = await get_run(runs, run.info.run_id)
    assert got.info.run_id == run.info.run_id
    assert got.info.lifecycle_stage == DELETED


# -- DeleteRuns / RestoreRuns ------------------------------------------------------------------


async def _runs_started_at(runs, eid: str, times: list[int]) -> list[str]:  # type: ignore[no-untyped-def]
    return [(await new_run(runs, eid, start_time=t)).info.run_id for t in times]


async def test_delete_runs_deletes_runs_started_at_or_before_the_time(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    early1, early2, boundary, late = await _runs_started_at(runs, eid, [1_000, 1_500, 2_000, 2_001])
    other = (await new_run(runs, await new_experiment(experiments), start_time=1_000)).info.run_id

    resp = await runs.DeleteRuns(
        rpb.DeleteRunsRequest(experiment_id=eid, max_timestamp_millis=2_000)
    )
    assert resp.runs_deleted == 3
    for rid in (early1, early2, boundary):
        assert await stage(runs, rid) == DELETED
    assert await stage(runs, late) == ACTIVE
    assert await stage(runs, other) == ACTIVE


async def test_delete_runs_does_not_count_runs_already_deleted(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    first, second = await _runs_started_at(runs, eid, [1_000, 2_000])
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=first))
    resp = await runs.DeleteRuns(
        rpb.DeleteRunsRequest(experiment_id=eid, max_timestamp_millis=5_000)
    )
    assert resp.runs_deleted == 1
    resp = await runs.DeleteRuns(
        rpb.DeleteRunsRequest(experiment_id=eid, max_timestamp_millis=5_000)
    )
    assert resp.runs_deleted == 0
    assert await stage(runs, second) == DELETED


async def test_delete_runs_respects_max_runs_oldest_first(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    ids = await _runs_started_at(runs, eid, [4_000, 1_000, 3_000, 2_000])
    by_age = [ids[1], ids[3], ids[2], ids[0]]

    resp = await runs.DeleteRuns(
        rpb.DeleteRunsRequest(experiment_id=eid, max_timestamp_millis=10_000, max_runs=2)
    )
    assert resp.runs_deleted == 2
    assert [await stage(runs, r) for r in by_age] == [DELETED, DELETED, ACTIVE, ACTIVE]

    resp = await runs.DeleteRuns(
        rpb.DeleteRunsRequest(experiment_id=eid, max_timestamp_millis=10_000, max_runs=10_000)
    )
    assert resp.runs_deleted == 2
    assert [await stage(runs, r) for r in by_age] == [DELETED] * 4


async def test_delete_runs_before_any_start_deletes_nothing(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    (rid,) = await _runs_started_at(runs, eid, [5_000])
    resp = await runs.DeleteRuns(
        rpb.DeleteRunsRequest(experiment_id=eid, max_timestamp_millis=4_999)
    )
    assert resp.runs_deleted == 0
    assert await stage(runs, rid) == ACTIVE


async def test_restore_runs_restores_runs_deleted_at_or_after_the_time(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    early, late1, late2 = await _runs_started_at(runs, eid, [1_000, 2_000, 3_000])
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=early))
    await asyncio.sleep(0.02)
    cutoff = now_ms()
    await asyncio.sleep(0.02)
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=late1))
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=late2))

    resp = await runs.RestoreRuns(
        rpb.RestoreRunsRequest(experiment_id=eid, min_timestamp_millis=cutoff)
    )
    assert resp.runs_restored == 2
    assert await stage(runs, late1) == ACTIVE
    assert await stage(runs, late2) == ACTIVE
    assert await stage(runs, early) == DELETED

    resp = await runs.RestoreRuns(rpb.RestoreRunsRequest(experiment_id=eid, min_timestamp_millis=0))
    assert resp.runs_restored == 1
    assert await stage(runs, early) == ACTIVE


async def test_restore_runs_with_a_future_time_restores_nothing(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    (rid,) = await _runs_started_at(runs, eid, [1_000])
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=rid))
    resp = await runs.RestoreRuns(
        rpb.RestoreRunsRequest(experiment_id=eid, min_timestamp_millis=now_ms() + 60_000)
    )
    assert resp.runs_restored == 0
    assert await stage(runs, rid) == DELETED


async def test_restore_runs_respects_max_runs_earliest_deleted_first(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    ids = await _runs_started_at(runs, eid, [1_000, 2_000, 3_000])
    for rid in reversed(ids):  # deleted in the order ids[2], ids[1], ids[0]
        await runs.DeleteRun(rpb.DeleteRunRequest(run_id=rid))
        await asyncio.sleep(0.005)
    resp = await runs.RestoreRuns(
        rpb.RestoreRunsRequest(experiment_id=eid, min_timestamp_millis=0, max_runs=2)
    )
    assert resp.runs_restored == 2
    assert [await stage(runs, r) for r in ids] == [DELETED, ACTIVE, ACTIVE]


async def test_bulk_delete_then_restore_round_trips(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    ids = await _runs_started_at(runs, eid, [1_000, 2_000, 3_000])
    cutoff = now_ms()
    deleted = await runs.DeleteRuns(
        rpb.DeleteRunsRequest(experiment_id=eid, max_timestamp_millis=2_500)
    )
    assert deleted.runs_deleted == 2
    restored = await runs.RestoreRuns(
        rpb.RestoreRunsRequest(experiment_id=eid, min_timestamp_millis=cutoff)
    )
    assert restored.runs_restored == 2
    assert [await stage(runs, r) for r in ids] == [ACTIVE] * 3


@pytest.mark.parametrize("rpc", ["DeleteRuns", "RestoreRuns"])
@pytest.mark.parametrize("max_runs", [10_001, -1])
async def test_bulk_max_runs_out_of_range_is_invalid_argument(
    experiments, runs, rpc: str, max_runs: int
) -> None:
    eid = await new_experiment(experiments)
    (rid,) = await _runs_started_at(runs, eid, [1_000])
    request = getattr(rpb, f"{rpc}Request")(experiment_id=eid, max_runs=max_runs)
    await invalid(getattr(runs, rpc)(request), "max_runs")
    assert await stage(runs, rid) == ACTIVE


@pytest.mark.parametrize("rpc", ["DeleteRuns", "RestoreRuns"])
async def test_bulk_on_a_deleted_experiment_is_failed_precondition(
    experiments, runs, rpc: str
) -> None:
    eid = await new_experiment(experiments)
    await _runs_started_at(runs, eid, [1_000])
    await delete_experiment(experiments, eid)
    request = getattr(rpb, f"{rpc}Request")(experiment_id=eid)
    await failed_precondition(getattr(runs, rpc)(request))


@pytest.mark.parametrize("rpc", ["DeleteRuns", "RestoreRuns"])
async def test_bulk_on_unknown_experiment_is_not_found(runs, rpc: str) -> None:
    request = getattr(rpb, f"{rpc}Request")(experiment_id="987654321")
    await not_found(getattr(runs, rpc)(request))


@pytest.mark.parametrize("rpc", ["DeleteRuns", "RestoreRuns"])
async def test_bulk_with_malformed_experiment_id_is_invalid_argument(runs, rpc: str) -> None:
    request = getattr(rpb, f"{rpc}Request")(experiment_id="x1")
    await invalid(getattr(runs, rpc)(request), "experiment_id")


# -- run ids -----------------------------------------------------------------------------------

MALFORMED_RUN_IDS = [
    "",
    "abc",
    "0123456789ABCDEF0123456789ABCDEF",
    "0123456789abcdef0123456789abcde",
    "0123456789abcdef0123456789abcdef0",
    "01234567-89ab-cdef-0123-456789abcdef",
    "g123456789abcdef0123456789abcdef",
]

RUN_ID_RPCS = {
    "GetRun": lambda rid: rpb.GetRunRequest(run_id=rid),
    "UpdateRun": lambda rid: rpb.UpdateRunRequest(run_id=rid, status=FINISHED),
    "DeleteRun": lambda rid: rpb.DeleteRunRequest(run_id=rid),
    "RestoreRun": lambda rid: rpb.RestoreRunRequest(run_id=rid),
}


@pytest.mark.parametrize("rpc", list(RUN_ID_RPCS))
@pytest.mark.parametrize("bad_id", MALFORMED_RUN_IDS)
async def test_malformed_run_id_is_invalid_argument(runs, rpc: str, bad_id: str) -> None:
    await invalid(getattr(runs, rpc)(RUN_ID_RPCS[rpc](bad_id)), "run_id")


@pytest.mark.parametrize("rpc", list(RUN_ID_RPCS))
async def test_unknown_run_id_is_not_found(runs, rpc: str) -> None:
    err = await not_found(getattr(runs, rpc)(RUN_ID_RPCS[rpc](UNKNOWN_RUN)))
    assert error_info(err).metadata["run_id"] == UNKNOWN_RUN
