"""ExperimentService: create/get, names, lifecycle, tags, limits and search paging.

The module's database is shared by every test here, so names are unique and search tests
only assert on the experiments they created (plus properties of the whole listing that hold
whatever else exists, such as order and the absence of duplicates).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable

import grpc
import pytest

from helpers import error_info, new_experiment, unique, violations
from trackd.v1 import common_pb2 as cpb
from trackd.v1 import experiment_pb2 as xpb
from trackd.v1 import experiment_service_pb2 as epb

ACTIVE = cpb.LIFECYCLE_STAGE_ACTIVE
DELETED = cpb.LIFECYCLE_STAGE_DELETED
ARTIFACT_ROOT = "file:///tmp/trackd-test-artifacts"  # tests/conftest.py:test_config


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


async def get(experiments, eid: str) -> xpb.Experiment:  # type: ignore[no-untyped-def]
    return (await experiments.GetExperiment(epb.GetExperimentRequest(experiment_id=eid))).experiment


async def by_name(experiments, name: str) -> xpb.Experiment:  # type: ignore[no-untyped-def]
    resp = await experiments.GetExperimentByName(
        epb.GetExperimentByNameRequest(experiment_name=name)
    )
    return resp.experiment


async def delete(experiments, eid: str) -> None:  # type: ignore[no-untyped-def]
    await experiments.DeleteExperiment(epb.DeleteExperimentRequest(experiment_id=eid))


async def restore(experiments, eid: str) -> None:  # type: ignore[no-untyped-def]
    await experiments.RestoreExperiment(epb.RestoreExperimentRequest(experiment_id=eid))


async def search_all(  # type: ignore[no-untyped-def]
    experiments, view_type: int = cpb.VIEW_TYPE_UNSPECIFIED, max_results: int = 0
) -> list[xpb.Experiment]:
    """Every page of a search, concatenated; checks each full page's size on the way."""
    out: list[xpb.Experiment] = []
    token = ""
    for _ in range(10_000):
        resp = await experiments.SearchExperiments(
            epb.SearchExperimentsRequest(
                view_type=view_type, max_results=max_results, page_token=token
            )
        )
        out.extend(resp.experiments)
        token = resp.next_page_token
        if not token:
            return out
        if max_results:
            assert len(resp.experiments) == max_results
    raise AssertionError("search never reached its last page")


def default_order_key(e: xpb.Experiment) -> tuple[int, int]:
    return (-e.creation_time, int(e.experiment_id))


# -- create and read ---------------------------------------------------------------------------


async def test_created_experiment_reads_back_by_id_and_by_name(experiments) -> None:
    name = unique()
    before = now_ms()
    resp = await experiments.CreateExperiment(
        epb.CreateExperimentRequest(
            name=name,
            tags=[
                xpb.ExperimentTag(key="team", value="vision"),
                xpb.ExperimentTag(key="a", value="1"),
            ],
        )
    )
    after = now_ms()
    eid = resp.experiment_id
    assert eid.isdigit() and eid != "0"

    exp = await get(experiments, eid)
    assert exp.experiment_id == eid
    assert exp.name == name
    assert exp.lifecycle_stage == ACTIVE
    assert before <= exp.creation_time <= after
    assert exp.last_update_time == exp.creation_time
    assert exp.artifact_location == f"{ARTIFACT_ROOT}/{eid}"
    assert [(t.key, t.value) for t in exp.tags] == [("a", "1"), ("team", "vision")]

    assert await by_name(experiments, name) == exp


async def test_created_experiments_get_distinct_ids(experiments) -> None:
    ids = [await new_experiment(experiments) for _ in range(3)]
    assert len(set(ids)) == 3


async def test_explicit_artifact_location_is_kept(experiments) -> None:
    name = unique()
    resp = await experiments.CreateExperiment(
        epb.CreateExperimentRequest(name=name, artifact_location="s3://bucket/some/where")
    )
    exp = await get(experiments, resp.experiment_id)
    assert exp.artifact_location == "s3://bucket/some/where"


async def test_repeated_initial_tag_key_keeps_last_value(experiments) -> None:
    resp = await experiments.CreateExperiment(
        epb.CreateExperimentRequest(
            name=unique(),
            tags=[
                xpb.ExperimentTag(key="k", value="first"),
                xpb.ExperimentTag(key="k", value="last"),
            ],
        )
    )
    exp = await get(experiments, resp.experiment_id)
    assert [(t.key, t.value) for t in exp.tags] == [("k", "last")]


async def test_default_experiment_zero_named_default_exists(experiments) -> None:
    exp = await get(experiments, "0")
    assert exp.experiment_id == "0"
    assert exp.name == "Default"
    assert exp.lifecycle_stage == ACTIVE
    assert exp.artifact_location == f"{ARTIFACT_ROOT}/0"
    assert (await by_name(experiments, "Default")).experiment_id == "0"


async def test_default_experiment_name_cannot_be_taken(experiments) -> None:
    await fails(
        experiments.CreateExperiment(epb.CreateExperimentRequest(name="Default")),
        grpc.StatusCode.ALREADY_EXISTS,
        "RESOURCE_ALREADY_EXISTS",
    )


async def test_deleting_default_experiment_is_failed_precondition(experiments) -> None:
    await fails(
        experiments.DeleteExperiment(epb.DeleteExperimentRequest(experiment_id="0")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    assert (await get(experiments, "0")).lifecycle_stage == ACTIVE


# -- names -------------------------------------------------------------------------------------


async def test_name_held_by_active_experiment_is_already_exists(experiments) -> None:
    name = unique()
    eid = await new_experiment(experiments, name)
    await fails(
        experiments.CreateExperiment(epb.CreateExperimentRequest(name=name)),
        grpc.StatusCode.ALREADY_EXISTS,
        "RESOURCE_ALREADY_EXISTS",
    )
    assert (await by_name(experiments, name)).experiment_id == eid


async def test_names_are_case_sensitive(experiments) -> None:
    name = unique("Case")
    first = await new_experiment(experiments, name)
    second = await new_experiment(experiments, name.lower())
    assert first != second


async def test_deleted_experiment_name_can_be_reused(experiments) -> None:
    name = unique()
    old = await new_experiment(experiments, name)
    await delete(experiments, old)
    new = await new_experiment(experiments, name)
    assert new != old
    assert (await get(experiments, new)).lifecycle_stage == ACTIVE
    assert (await get(experiments, old)).lifecycle_stage == DELETED


async def test_restoring_while_name_is_taken_is_failed_precondition(experiments) -> None:
    name = unique()
    old = await new_experiment(experiments, name)
    await delete(experiments, old)
    new = await new_experiment(experiments, name)
    await fails(
        experiments.RestoreExperiment(epb.RestoreExperimentRequest(experiment_id=old)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    assert (await get(experiments, old)).lifecycle_stage == DELETED
    assert (await get(experiments, new)).lifecycle_stage == ACTIVE


async def test_restore_succeeds_once_the_name_is_freed_by_a_rename(experiments) -> None:
    name = unique()
    old = await new_experiment(experiments, name)
    await delete(experiments, old)
    new = await new_experiment(experiments, name)
    await experiments.UpdateExperiment(
        epb.UpdateExperimentRequest(experiment_id=new, new_name=unique())
    )
    await restore(experiments, old)
    assert (await by_name(experiments, name)).experiment_id == old


async def test_get_by_name_prefers_active_over_deleted_of_same_name(experiments) -> None:
    name = unique()
    first = await new_experiment(experiments, name)
    await delete(experiments, first)
    second = await new_experiment(experiments, name)
    got = await by_name(experiments, name)
    assert got.experiment_id == second
    assert got.lifecycle_stage == ACTIVE

    # The older experiment becomes the active one again: it is preferred though the
    # newer one was deleted more recently.
    await delete(experiments, second)
    await restore(experiments, first)
    got = await by_name(experiments, name)
    assert got.experiment_id == first
    assert got.lifecycle_stage == ACTIVE


async def test_get_by_name_prefers_an_older_active_experiment_over_a_newer_deleted_one(
    experiments,
) -> None:
    name = unique()
    older = await new_experiment(experiments)
    newer = await new_experiment(experiments, name)
    await delete(experiments, newer)
    await experiments.UpdateExperiment(
        epb.UpdateExperimentRequest(experiment_id=older, new_name=name)
    )
    got = await by_name(experiments, name)
    assert got.experiment_id == older
    assert got.lifecycle_stage == ACTIVE


async def test_concurrent_creates_of_one_name_make_exactly_one_experiment(experiments) -> None:
    name = unique()
    results = await asyncio.gather(
        *(experiments.CreateExperiment(epb.CreateExperimentRequest(name=name)) for _ in range(8)),
        return_exceptions=True,
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(made) == 1
    assert all(isinstance(e, grpc.aio.AioRpcError) for e in errors)
    assert {e.code() for e in errors} == {grpc.StatusCode.ALREADY_EXISTS}  # type: ignore[union-attr]
    assert (await by_name(experiments, name)).experiment_id == made[0].experiment_id


async def test_get_by_name_finds_a_deleted_experiment_when_no_active_one_has_it(
    experiments,
) -> None:
    name = unique()
    eid = await new_experiment(experiments, name)
    await delete(experiments, eid)
    got = await by_name(experiments, name)
    assert got.experiment_id == eid
    assert got.lifecycle_stage == DELETED


async def test_get_by_unknown_name_is_not_found(experiments) -> None:
    await fails(
        experiments.GetExperimentByName(epb.GetExperimentByNameRequest(experiment_name=unique())),
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_DOES_NOT_EXIST",
    )


async def test_get_by_empty_name_is_invalid_argument(experiments) -> None:
    await invalid(
        experiments.GetExperimentByName(epb.GetExperimentByNameRequest(experiment_name="")),
        "experiment_name",
    )


async def test_rename_changes_name_and_frees_the_old_one(experiments) -> None:
    old_name, new_name = unique(), unique()
    eid = await new_experiment(experiments, old_name)
    created = await get(experiments, eid)
    await asyncio.sleep(0.002)
    await experiments.UpdateExperiment(
        epb.UpdateExperimentRequest(experiment_id=eid, new_name=new_name)
    )
    exp = await get(experiments, eid)
    assert exp.name == new_name
    assert exp.creation_time == created.creation_time
    assert exp.last_update_time > created.last_update_time
    assert (await by_name(experiments, new_name)).experiment_id == eid
    await fails(
        experiments.GetExperimentByName(epb.GetExperimentByNameRequest(experiment_name=old_name)),
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_DOES_NOT_EXIST",
    )
    assert await new_experiment(experiments, old_name) != eid


async def test_rename_to_a_name_held_by_an_active_experiment_is_already_exists(
    experiments,
) -> None:
    taken = unique()
    await new_experiment(experiments, taken)
    name = unique()
    eid = await new_experiment(experiments, name)
    await fails(
        experiments.UpdateExperiment(
            epb.UpdateExperimentRequest(experiment_id=eid, new_name=taken)
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "RESOURCE_ALREADY_EXISTS",
    )
    assert (await get(experiments, eid)).name == name


async def test_rename_to_a_name_held_only_by_a_deleted_experiment_succeeds(experiments) -> None:
    name = unique()
    gone = await new_experiment(experiments, name)
    await delete(experiments, gone)
    eid = await new_experiment(experiments)
    await experiments.UpdateExperiment(
        epb.UpdateExperimentRequest(experiment_id=eid, new_name=name)
    )
    assert (await by_name(experiments, name)).experiment_id == eid


async def test_rename_to_its_own_name_is_accepted(experiments) -> None:
    name = unique()
    eid = await new_experiment(experiments, name)
    await experiments.UpdateExperiment(
        epb.UpdateExperimentRequest(experiment_id=eid, new_name=name)
    )
    assert (await get(experiments, eid)).name == name


async def test_renaming_a_deleted_experiment_is_failed_precondition(experiments) -> None:
    eid = await new_experiment(experiments)
    await delete(experiments, eid)
    await fails(
        experiments.UpdateExperiment(
            epb.UpdateExperimentRequest(experiment_id=eid, new_name=unique())
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )


async def test_rename_to_empty_name_is_invalid_argument(experiments) -> None:
    eid = await new_experiment(experiments)
    await invalid(
        experiments.UpdateExperiment(epb.UpdateExperimentRequest(experiment_id=eid, new_name="")),
        "new_name",
    )


async def test_rename_of_unknown_experiment_is_not_found(experiments) -> None:
    await fails(
        experiments.UpdateExperiment(
            epb.UpdateExperimentRequest(experiment_id="987654321", new_name=unique())
        ),
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_DOES_NOT_EXIST",
    )


# -- lifecycle ---------------------------------------------------------------------------------


async def test_delete_and_restore_move_the_lifecycle_stage(experiments) -> None:
    eid = await new_experiment(experiments)
    created = await get(experiments, eid)
    await asyncio.sleep(0.002)
    await delete(experiments, eid)
    deleted = await get(experiments, eid)
    assert deleted.lifecycle_stage == DELETED
    assert deleted.last_update_time > created.last_update_time
    await asyncio.sleep(0.002)
    await restore(experiments, eid)
    restored = await get(experiments, eid)
    assert restored.lifecycle_stage == ACTIVE
    assert restored.last_update_time > deleted.last_update_time
    assert restored.name == created.name
    assert restored.creation_time == created.creation_time


async def test_deleting_a_deleted_experiment_is_failed_precondition(experiments) -> None:
    eid = await new_experiment(experiments)
    await delete(experiments, eid)
    await fails(
        experiments.DeleteExperiment(epb.DeleteExperimentRequest(experiment_id=eid)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )


async def test_restoring_an_active_experiment_is_failed_precondition(experiments) -> None:
    eid = await new_experiment(experiments)
    await fails(
        experiments.RestoreExperiment(epb.RestoreExperimentRequest(experiment_id=eid)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )


@pytest.mark.parametrize("rpc", ["DeleteExperiment", "RestoreExperiment"])
async def test_lifecycle_change_of_unknown_experiment_is_not_found(experiments, rpc: str) -> None:
    request = getattr(epb, f"{rpc}Request")(experiment_id="987654321")
    await fails(
        getattr(experiments, rpc)(request), grpc.StatusCode.NOT_FOUND, "RESOURCE_DOES_NOT_EXIST"
    )


# -- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id", ["", "abc", "-1", "01", "1.5", " 1", "1 ", "0x10", "99999999999999999999"]
)
async def test_malformed_experiment_id_is_invalid_argument(experiments, bad_id: str) -> None:
    await invalid(
        experiments.GetExperiment(epb.GetExperimentRequest(experiment_id=bad_id)),
        "experiment_id",
    )


@pytest.mark.parametrize(
    ("rpc", "fields"),
    [
        ("UpdateExperiment", {"new_name": "x"}),
        ("DeleteExperiment", {}),
        ("RestoreExperiment", {}),
        ("SetExperimentTag", {"key": "k", "value": "v"}),
        ("DeleteExperimentTag", {"key": "k"}),
    ],
)
async def test_malformed_experiment_id_is_invalid_argument_on_every_write(
    experiments, rpc: str, fields: dict[str, str]
) -> None:
    request = getattr(epb, f"{rpc}Request")(experiment_id="not-an-id", **fields)
    await invalid(getattr(experiments, rpc)(request), "experiment_id")


@pytest.mark.parametrize("unknown_id", ["987654321", "9223372036854775807"])
async def test_unknown_experiment_id_is_not_found(experiments, unknown_id: str) -> None:
    err = await fails(
        experiments.GetExperiment(epb.GetExperimentRequest(experiment_id=unknown_id)),
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_DOES_NOT_EXIST",
    )
    assert error_info(err).metadata["experiment_id"] == unknown_id


# -- tags --------------------------------------------------------------------------------------


async def test_set_experiment_tag_creates_then_replaces(experiments) -> None:
    eid = await new_experiment(experiments)
    await experiments.SetExperimentTag(
        epb.SetExperimentTagRequest(experiment_id=eid, key="owner", value="ann")
    )
    await experiments.SetExperimentTag(
        epb.SetExperimentTagRequest(experiment_id=eid, key="b.key", value="x")
    )
    exp = await get(experiments, eid)
    assert [(t.key, t.value) for t in exp.tags] == [("b.key", "x"), ("owner", "ann")]

    await asyncio.sleep(0.002)
    await experiments.SetExperimentTag(
        epb.SetExperimentTagRequest(experiment_id=eid, key="owner", value="bob")
    )
    updated = await get(experiments, eid)
    assert [(t.key, t.value) for t in updated.tags] == [("b.key", "x"), ("owner", "bob")]
    assert updated.last_update_time > exp.last_update_time


async def test_experiment_tag_value_may_be_empty(experiments) -> None:
    eid = await new_experiment(experiments)
    await experiments.SetExperimentTag(
        epb.SetExperimentTagRequest(experiment_id=eid, key="empty", value="")
    )
    assert [(t.key, t.value) for t in (await get(experiments, eid)).tags] == [("empty", "")]


async def test_delete_experiment_tag_removes_only_that_tag(experiments) -> None:
    eid = await new_experiment(experiments)
    for key in ("keep", "drop"):
        await experiments.SetExperimentTag(
            epb.SetExperimentTagRequest(experiment_id=eid, key=key, value="v")
        )
    await experiments.DeleteExperimentTag(
        epb.DeleteExperimentTagRequest(experiment_id=eid, key="drop")
    )
    assert [t.key for t in (await get(experiments, eid)).tags] == ["keep"]


async def test_deleting_a_missing_experiment_tag_is_not_found(experiments) -> None:
    eid = await new_experiment(experiments)
    await fails(
        experiments.DeleteExperimentTag(
            epb.DeleteExperimentTagRequest(experiment_id=eid, key="never-set")
        ),
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_DOES_NOT_EXIST",
    )


async def test_deleting_an_experiment_tag_twice_is_not_found_the_second_time(experiments) -> None:
    eid = await new_experiment(experiments)
    await experiments.SetExperimentTag(
        epb.SetExperimentTagRequest(experiment_id=eid, key="k", value="v")
    )
    await experiments.DeleteExperimentTag(
        epb.DeleteExperimentTagRequest(experiment_id=eid, key="k")
    )
    await fails(
        experiments.DeleteExperimentTag(epb.DeleteExperimentTagRequest(experiment_id=eid, key="k")),
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_DOES_NOT_EXIST",
    )


async def test_tag_writes_to_a_deleted_experiment_are_failed_precondition(experiments) -> None:
    eid = await new_experiment(experiments)
    await experiments.SetExperimentTag(
        epb.SetExperimentTagRequest(experiment_id=eid, key="k", value="v")
    )
    await delete(experiments, eid)
    await fails(
        experiments.SetExperimentTag(
            epb.SetExperimentTagRequest(experiment_id=eid, key="k", value="other")
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    await fails(
        experiments.DeleteExperimentTag(epb.DeleteExperimentTagRequest(experiment_id=eid, key="k")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    assert [(t.key, t.value) for t in (await get(experiments, eid)).tags] == [("k", "v")]


async def test_tag_write_to_unknown_experiment_is_not_found(experiments) -> None:
    await fails(
        experiments.SetExperimentTag(
            epb.SetExperimentTagRequest(experiment_id="987654321", key="k", value="v")
        ),
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_DOES_NOT_EXIST",
    )


# -- limits ------------------------------------------------------------------------------------


async def test_name_of_500_characters_is_accepted(experiments) -> None:
    name = unique().ljust(500, "n")
    eid = await new_experiment(experiments, name)
    assert (await get(experiments, eid)).name == name


async def test_name_over_500_characters_is_invalid_argument(experiments) -> None:
    name = unique().ljust(501, "n")
    await invalid(experiments.CreateExperiment(epb.CreateExperimentRequest(name=name)), "name")
    eid = await new_experiment(experiments)
    await invalid(
        experiments.UpdateExperiment(epb.UpdateExperimentRequest(experiment_id=eid, new_name=name)),
        "new_name",
    )


async def test_empty_name_is_invalid_argument(experiments) -> None:
    await invalid(experiments.CreateExperiment(epb.CreateExperimentRequest(name="")), "name")


async def test_nul_in_name_is_invalid_argument(experiments) -> None:
    name = unique() + "\x00x"
    await invalid(experiments.CreateExperiment(epb.CreateExperimentRequest(name=name)), "name")
    eid = await new_experiment(experiments)
    await invalid(
        experiments.UpdateExperiment(epb.UpdateExperimentRequest(experiment_id=eid, new_name=name)),
        "new_name",
    )


async def test_artifact_location_over_2000_characters_is_invalid_argument(experiments) -> None:
    await invalid(
        experiments.CreateExperiment(
            epb.CreateExperimentRequest(name=unique(), artifact_location="s3://" + "a" * 2000)
        ),
        "artifact_location",
    )


async def test_tag_value_of_5000_characters_is_accepted(experiments) -> None:
    eid = await new_experiment(experiments)
    await experiments.SetExperimentTag(
        epb.SetExperimentTagRequest(experiment_id=eid, key="big", value="v" * 5000)
    )
    assert (await get(experiments, eid)).tags[0].value == "v" * 5000


async def test_tag_value_over_5000_characters_is_invalid_argument(experiments) -> None:
    eid = await new_experiment(experiments)
    await invalid(
        experiments.SetExperimentTag(
            epb.SetExperimentTagRequest(experiment_id=eid, key="big", value="v" * 5001)
        ),
        "value",
    )
    assert list((await get(experiments, eid)).tags) == []


async def test_tag_key_over_250_characters_is_invalid_argument(experiments) -> None:
    eid = await new_experiment(experiments)
    await invalid(
        experiments.SetExperimentTag(
            epb.SetExperimentTagRequest(experiment_id=eid, key="k" * 251, value="v")
        ),
        "key",
    )


@pytest.mark.parametrize("key", ["", "has\x00nul", "bad*char", "a..b", "/leading"])
async def test_bad_tag_key_is_invalid_argument(experiments, key: str) -> None:
    eid = await new_experiment(experiments)
    await invalid(
        experiments.SetExperimentTag(
            epb.SetExperimentTagRequest(experiment_id=eid, key=key, value="v")
        ),
        "key",
    )


async def test_nul_in_tag_value_is_invalid_argument(experiments) -> None:
    eid = await new_experiment(experiments)
    await invalid(
        experiments.SetExperimentTag(
            epb.SetExperimentTagRequest(experiment_id=eid, key="k", value="a\x00b")
        ),
        "value",
    )


async def test_bad_initial_tags_are_named_by_index_and_nothing_is_created(experiments) -> None:
    name = unique()
    err = await invalid(
        experiments.CreateExperiment(
            epb.CreateExperimentRequest(
                name=name,
                tags=[
                    xpb.ExperimentTag(key="ok", value="v"),
                    xpb.ExperimentTag(key="long", value="v" * 5001),
                    xpb.ExperimentTag(key="nul", value="\x00"),
                ],
            )
        ),
        "tags[1].value",
    )
    assert "tags[2].value" in violations(err)
    assert "tags[0].value" not in violations(err)
    await fails(
        experiments.GetExperimentByName(epb.GetExperimentByNameRequest(experiment_name=name)),
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_DOES_NOT_EXIST",
    )


async def test_more_than_100_initial_tags_is_invalid_argument(experiments) -> None:
    tags = [xpb.ExperimentTag(key=f"k{i}", value="v") for i in range(101)]
    await invalid(
        experiments.CreateExperiment(epb.CreateExperimentRequest(name=unique(), tags=tags)),
        "tags",
    )


async def test_every_bad_field_is_reported_at_once(experiments) -> None:
    err = await invalid(
        experiments.CreateExperiment(
            epb.CreateExperimentRequest(name="x" * 501, artifact_location="\x00")
        ),
        "name",
    )
    assert "artifact_location" in violations(err)


# -- search ------------------------------------------------------------------------------------


async def test_search_view_types_select_by_lifecycle_stage(experiments) -> None:
    live = await new_experiment(experiments)
    gone = await new_experiment(experiments)
    await delete(experiments, gone)

    def ids(found: list[xpb.Experiment]) -> list[str]:
        return [e.experiment_id for e in found]

    active = await search_all(experiments, cpb.VIEW_TYPE_ACTIVE_ONLY)
    assert live in ids(active) and gone not in ids(active) and "0" in ids(active)
    assert all(e.lifecycle_stage == ACTIVE for e in active)

    unspecified = await search_all(experiments, cpb.VIEW_TYPE_UNSPECIFIED)
    assert ids(unspecified) == ids(active)

    deleted = await search_all(experiments, cpb.VIEW_TYPE_DELETED_ONLY)
    assert gone in ids(deleted) and live not in ids(deleted) and "0" not in ids(deleted)
    assert all(e.lifecycle_stage == DELETED for e in deleted)

    everything = await search_all(experiments, cpb.VIEW_TYPE_ALL)
    assert ids(everything).count(live) == 1 and ids(everything).count(gone) == 1
    assert sorted(ids(everything)) == sorted(ids(active) + ids(deleted))


async def test_search_returns_tags_with_each_experiment(experiments) -> None:
    eid = await new_experiment(experiments)
    await experiments.SetExperimentTag(
        epb.SetExperimentTagRequest(experiment_id=eid, key="k", value="v")
    )
    found = {e.experiment_id: e for e in await search_all(experiments)}
    assert found[eid] == await get(experiments, eid)


@pytest.mark.parametrize("page_size", [1, 2, 3])
async def test_search_pages_through_every_experiment_once_in_default_order(
    experiments, page_size: int
) -> None:
    mine = [await new_experiment(experiments) for _ in range(7)]
    deleted = mine[2]
    await delete(experiments, deleted)

    for view in (cpb.VIEW_TYPE_ACTIVE_ONLY, cpb.VIEW_TYPE_ALL):
        paged = await search_all(experiments, view, max_results=page_size)
        whole = await search_all(experiments, view, max_results=50_000)
        paged_ids = [e.experiment_id for e in paged]
        assert paged_ids == [e.experiment_id for e in whole]
        assert len(paged_ids) == len(set(paged_ids)), "a page repeated an experiment"
        # Default order: creation_time DESC, then experiment id.
        assert paged == sorted(paged, key=default_order_key)
        expected = [e for e in mine if view == cpb.VIEW_TYPE_ALL or e != deleted]
        expected_order = sorted(
            [await get(experiments, e) for e in expected], key=default_order_key
        )
        assert [e for e in paged_ids if e in mine] == [e.experiment_id for e in expected_order]


async def test_search_orders_newest_first(experiments) -> None:
    older = await new_experiment(experiments)
    await asyncio.sleep(0.005)
    newer = await new_experiment(experiments)
    ids = [e.experiment_id for e in await search_all(experiments)]
    assert ids.index(newer) < ids.index(older)


async def test_search_default_page_size_returns_everything_when_small(experiments) -> None:
    await new_experiment(experiments)
    resp = await experiments.SearchExperiments(
        epb.SearchExperimentsRequest(view_type=cpb.VIEW_TYPE_ALL)
    )
    assert resp.next_page_token == ""
    assert len(resp.experiments) == len(await search_all(experiments, cpb.VIEW_TYPE_ALL, 1))


async def test_search_page_size_may_change_between_pages(experiments) -> None:
    for _ in range(4):
        await new_experiment(experiments)
    first = await experiments.SearchExperiments(epb.SearchExperimentsRequest(max_results=2))
    rest = await experiments.SearchExperiments(
        epb.SearchExperimentsRequest(max_results=50_000, page_token=first.next_page_token)
    )
    ids = [e.experiment_id for e in list(first.experiments) + list(rest.experiments)]
    assert ids == [e.experiment_id for e in await search_all(experiments)]


async def test_search_token_reused_with_another_view_type_is_invalid_argument(
    experiments,
) -> None:
    await new_experiment(experiments)
    first = await experiments.SearchExperiments(
        epb.SearchExperimentsRequest(max_results=1, view_type=cpb.VIEW_TYPE_ACTIVE_ONLY)
    )
    assert first.next_page_token
    for view in (cpb.VIEW_TYPE_ALL, cpb.VIEW_TYPE_DELETED_ONLY):
        await invalid(
            experiments.SearchExperiments(
                epb.SearchExperimentsRequest(
                    max_results=1, view_type=view, page_token=first.next_page_token
                )
            ),
            "page_token",
        )


def _forge(position: object, fingerprint: object) -> str:
    blob = json.dumps({"q": fingerprint, "p": position}).encode()
    return base64.urlsafe_b64encode(blob).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!not base64!!!",
        "é",
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'"just a string"').decode(),
        base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
        _forge([1, 2], "0000000000000000"),
    ],
)
async def test_search_garbage_token_is_invalid_argument(experiments, token: str) -> None:
    await invalid(
        experiments.SearchExperiments(epb.SearchExperimentsRequest(page_token=token)),
        "page_token",
    )


async def _real_fingerprint(experiments) -> str:  # type: ignore[no-untyped-def]
    await new_experiment(experiments)
    resp = await experiments.SearchExperiments(epb.SearchExperimentsRequest(max_results=1))
    token = resp.next_page_token
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return str(data["q"])


@pytest.mark.parametrize("position", [["a", "b"], [1], [1, 2, 3], [1.5, 2], None, {"x": 1}])
async def test_search_token_with_a_tampered_position_is_invalid_argument(
    experiments, position: object
) -> None:
    token = _forge(position, await _real_fingerprint(experiments))
    await invalid(
        experiments.SearchExperiments(
            epb.SearchExperimentsRequest(max_results=1, page_token=token)
        ),
        "page_token",
    )


async def test_search_token_with_out_of_range_position_is_invalid_argument(experiments) -> None:
    token = _forge([2**70, 1], await _real_fingerprint(experiments))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await experiments.SearchExperiments(
            epb.SearchExperimentsRequest(max_results=1, page_token=token)
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(exc.value).reason == "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize("size", [50_001, 2**31 - 1, -1])
async def test_search_max_results_out_of_range_is_invalid_argument(experiments, size: int) -> None:
    await invalid(
        experiments.SearchExperiments(epb.SearchExperimentsRequest(max_results=size)),
        "max_results",
    )


async def test_search_max_results_of_50000_is_accepted(experiments) -> None:
    resp = await experiments.SearchExperiments(epb.SearchExperimentsRequest(max_results=50_000))
    assert any(e.experiment_id == "0" for e in resp.experiments)


@pytest.mark.parametrize(
    "filter_", ["garbage", "name > 'x'", "metrics.a > 1", "params.a = 'x'", "name = "]
)
async def test_search_with_a_bad_filter_is_invalid_argument(experiments, filter_: str) -> None:
    await invalid(
        experiments.SearchExperiments(epb.SearchExperimentsRequest(filter=filter_)), "filter"
    )


async def _filtered(experiments, filter_: str, order_by=(), max_results: int = 0) -> list[str]:  # type: ignore[no-untyped-def]
    names: list[str] = []
    token = ""
    while True:
        resp = await experiments.SearchExperiments(
            epb.SearchExperimentsRequest(
                filter=filter_,
                order_by=list(order_by),
                max_results=max_results,
                page_token=token,
            )
        )
        names.extend(e.name for e in resp.experiments)
        token = resp.next_page_token
        if not token:
            return names


async def test_search_filters_by_name_tags_and_times(experiments) -> None:
    base = unique("flt")
    ids = {}
    for suffix, team in (("alpha", "vision"), ("beta", "nlp"), ("gamma", "vision")):
        ids[suffix] = (
            await experiments.CreateExperiment(
                epb.CreateExperimentRequest(
                    name=f"{base}-{suffix}", tags=[xpb.ExperimentTag(key="team", value=team)]
                )
            )
        ).experiment_id
    like = await _filtered(experiments, f"name LIKE '{base}-%'", ["name DESC"])
    assert like == [f"{base}-gamma", f"{base}-beta", f"{base}-alpha"]
    vision = await _filtered(experiments, f"name LIKE '{base}%' AND tags.team = 'vision'", ["name"])
    assert vision == [f"{base}-alpha", f"{base}-gamma"]
    either = await _filtered(
        experiments,
        f"name = '{base}-beta' OR (tags.team = 'vision' AND name ILIKE '{base.upper()}-G%')",
        ["name"],
    )
    assert either == [f"{base}-beta", f"{base}-gamma"]
    alpha = await get(experiments, ids["alpha"])
    later = await _filtered(
        experiments,
        f"name LIKE '{base}%' AND creation_time > {alpha.creation_time - 1}",
        ["creation_time", "name"],
    )
    assert set(later) == {f"{base}-alpha", f"{base}-beta", f"{base}-gamma"}
    untagged = await _filtered(experiments, f"name LIKE '{base}%' AND tags.team IS NULL")
    assert untagged == []


async def test_search_orders_and_pages_by_name(experiments) -> None:
    base = unique("ord")
    made = [f"{base}-{i:02d}" for i in range(9)]
    for name in reversed(made):
        await experiments.CreateExperiment(epb.CreateExperimentRequest(name=name))
    paged = await _filtered(experiments, f"name LIKE '{base}-%'", ["name ASC"], max_results=2)
    assert paged == made
    token_resp = await experiments.SearchExperiments(
        epb.SearchExperimentsRequest(
            filter=f"name LIKE '{base}-%'", order_by=["name"], max_results=2
        )
    )
    await invalid(
        experiments.SearchExperiments(
            epb.SearchExperimentsRequest(
                filter=f"name LIKE '{base}-%'",
                order_by=["name DESC"],
                max_results=2,
                page_token=token_resp.next_page_token,
            )
        ),
        "page_token",
    )


async def test_search_with_unknown_view_type_is_invalid_argument(experiments) -> None:
    await invalid(
        experiments.SearchExperiments(epb.SearchExperimentsRequest(view_type=7)),  # type: ignore[arg-type]
        "view_type",
    )
