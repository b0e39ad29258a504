"""Run hierarchy: the parent as a field and as MLflow's tag, has_children and depth, the
nesting bound, ListChildRuns paging, deleted parents, and root-only search with
descendant_match at any depth."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest

from helpers import error_info, new_experiment, new_run, violations
from trackd.v1 import common_pb2 as cpb
from trackd.v1 import run_pb2
from trackd.v1 import run_service_pb2 as rpb

PARENT_TAG = "mlflow.parentRunId"
UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"
DEPTH_MAX = 100


async def fails(call: Awaitable[object], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    assert exc.value.code() == code, f"{exc.value.code()}: {exc.value.details()}"
    return exc.value


async def invalid(call: Awaitable[object], field: str) -> grpc.aio.AioRpcError:
    err = await fails(call, grpc.StatusCode.INVALID_ARGUMENT)
    assert error_info(err).reason == "INVALID_PARAMETER_VALUE"
    assert field in violations(err), violations(err)
    return err


async def get(runs, run_id: str) -> run_pb2.Run:  # type: ignore[no-untyped-def]
    return (await runs.GetRun(rpb.GetRunRequest(run_id=run_id))).run


def tags_of(run: run_pb2.Run) -> dict[str, str]:
    return {t.key: t.value for t in run.data.tags}


async def children(runs, run_id: str, page: int = 0, view=cpb.VIEW_TYPE_ACTIVE_ONLY):  # type: ignore[no-untyped-def]
    """Every child of a run through ListChildRuns, `page` a page; and the page count."""
    out: list[run_pb2.Run] = []
    token, pages = "", 0
    while True:
        resp = await runs.ListChildRuns(
            rpb.ListChildRunsRequest(
                run_id=run_id, max_results=page, page_token=token, run_view_type=view
            )
        )
        pages += 1
        assert page == 0 or len(resp.runs) <= page
        out += resp.runs
        token = resp.next_page_token
        if not token:
            return out, pages
        assert pages < 1000


async def roots(runs, eid: str, filter_: str = "", **kw) -> list[run_pb2.Run]:  # type: ignore[no-untyped-def]
    out: list[run_pb2.Run] = []
    token = ""
    while True:
        resp = await runs.SearchRuns(
            rpb.SearchRunsRequest(
                experiment_ids=[eid],
                filter=filter_,
                root_runs_only=True,
                page_token=token,
                **kw,
            )
        )
        out += resp.runs
        token = resp.next_page_token
        if not token:
            return out


# -- the parent -------------------------------------------------------------------------------


async def test_parent_is_a_field_and_mlflows_tag(runs, experiments) -> None:
    eid = await new_experiment(experiments)
    parent = await new_run(runs, eid, run_name="parent")
    assert parent.info.parent_run_id == ""
    assert parent.info.depth == 0 and not parent.info.has_children
    child = await new_run(runs, eid, parent_run_id=parent.info.run_id)
    assert child.info.parent_run_id == parent.info.run_id
    assert tags_of(child)[PARENT_TAG] == parent.info.run_id
    assert child.info.depth == 1
    assert (await get(runs, parent.info.run_id)).info.has_children
    # MLflow's client nests a run with the tag alone: the tag names the parent too.
    by_tag = await new_run(
        runs, eid, tags=[run_pb2.RunTag(key=PARENT_TAG, value=child.info.run_id)]
    )
    assert by_tag.info.parent_run_id == child.info.run_id
    assert by_tag.info.depth == 2
    # Both, agreeing, are accepted; disagreeing, refused.
    same = await new_run(
        runs,
        eid,
        parent_run_id=parent.info.run_id,
        tags=[run_pb2.RunTag(key=PARENT_TAG, value=parent.info.run_id)],
    )
    assert same.info.parent_run_id == parent.info.run_id
    await invalid(
        runs.CreateRun(
            rpb.CreateRunRequest(
                experiment_id=eid,
                parent_run_id=parent.info.run_id,
                tags=[run_pb2.RunTag(key=PARENT_TAG, value=child.info.run_id)],
            )
        ),
        "parent_run_id",
    )
    # A tag that is not a run id is refused like a bad parent_run_id.
    await invalid(
        runs.CreateRun(
            rpb.CreateRunRequest(
                experiment_id=eid, tags=[run_pb2.RunTag(key=PARENT_TAG, value="not-a-run")]
            )
        ),
        "tags",
    )
    await fails(
        runs.CreateRun(
            rpb.CreateRunRequest(
                experiment_id=eid, tags=[run_pb2.RunTag(key=PARENT_TAG, value=UNKNOWN_RUN)]
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_parent_cannot_change_so_cycles_are_impossible(runs, experiments) -> None:
    eid = await new_experiment(experiments)
    a = await new_run(runs, eid)
    b = await new_run(runs, eid, parent_run_id=a.info.run_id)
    a_id, b_id = a.info.run_id, b.info.run_id
    # a under its own child would close a cycle: the tag cannot set a parent after creation.
    await invalid(runs.SetTag(rpb.SetTagRequest(run_id=a_id, key=PARENT_TAG, value=b_id)), "value")
    await invalid(
        runs.LogBatch(
            rpb.LogBatchRequest(run_id=a_id, tags=[run_pb2.RunTag(key=PARENT_TAG, value=b_id)])
        ),
        "tags",
    )
    # Nor move a child, nor remove its parent.
    other = await new_run(runs, eid)
    await invalid(
        runs.SetTag(rpb.SetTagRequest(run_id=b_id, key=PARENT_TAG, value=other.info.run_id)),
        "value",
    )
    await invalid(runs.DeleteTag(rpb.DeleteTagRequest(run_id=b_id, key=PARENT_TAG)), "key")
    # Repeating the parent is a no-op, as MLflow clients do when they resume a nested run.
    await runs.SetTag(rpb.SetTagRequest(run_id=b_id, key=PARENT_TAG, value=a_id))
    assert (await get(runs, b_id)).info.parent_run_id == a_id
    assert (await get(runs, a_id)).info.parent_run_id == ""
    # A parent must be created before its child, so the only way to point at a descendant
    # is a run id that does not exist yet: there is none.


async def test_nesting_depth_is_bounded(runs, experiments) -> None:
    eid = await new_experiment(experiments)
    run = await new_run(runs, eid)
    for depth in range(1, DEPTH_MAX + 1):
        run = await new_run(runs, eid, parent_run_id=run.info.run_id)
        assert run.info.depth == depth
    err = await invalid(
        runs.CreateRun(rpb.CreateRunRequest(experiment_id=eid, parent_run_id=run.info.run_id)),
        "parent_run_id",
    )
    assert "nesting depth 100" in violations(err)["parent_run_id"]
    assert "at most 100" in violations(err)["parent_run_id"]
    # The deepest run is still found by a root-only search through its ancestors.
    found = await roots(runs, eid, f"attributes.run_id = '{run.info.run_id}'")
    assert len(found) == 1 and found[0].info.depth == 0 and found[0].descendant_match


async def test_parent_in_another_experiment_or_deleted(runs, experiments) -> None:
    eid, other = await new_experiment(experiments), await new_experiment(experiments)
    parent = await new_run(runs, other)
    await invalid(
        runs.CreateRun(rpb.CreateRunRequest(experiment_id=eid, parent_run_id=parent.info.run_id)),
        "parent_run_id",
    )
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=parent.info.run_id))
    await fails(
        runs.CreateRun(rpb.CreateRunRequest(experiment_id=other, parent_run_id=parent.info.run_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


# -- children ---------------------------------------------------------------------------------


async def test_list_child_runs_pages_newest_first(runs, experiments) -> None:
    eid = await new_experiment(experiments)
    parent = await new_run(runs, eid)
    pid = parent.info.run_id
    made = [
        await new_run(runs, eid, parent_run_id=pid, start_time=1_000_000 + i % 3 * 10)
        for i in range(7)
    ]
    grandchild = await new_run(runs, eid, parent_run_id=made[0].info.run_id)
    expected = sorted(made, key=lambda r: (-r.info.start_time, r.info.run_id))
    for page in (0, 1, 3, 7, 50):
        listed, pages = await children(runs, pid, page)
        assert [r.info.run_id for r in listed] == [r.info.run_id for r in expected]
        assert pages == (1 if page == 0 else -(-7 // page))
    # One level down only, each with its data and hierarchy fields.
    listed, _ = await children(runs, pid)
    assert grandchild.info.run_id not in {r.info.run_id for r in listed}
    first = next(r for r in listed if r.info.run_id == made[0].info.run_id)
    assert first.info.has_children and first.info.parent_run_id == pid
    assert (await children(runs, made[0].info.run_id))[0][0].info.depth == 2
    assert (await children(runs, grandchild.info.run_id))[0] == []
    # Deleted children are listed in the view that includes them, and no longer make a
    # parent have children.
    for r in made:
        await runs.DeleteRun(rpb.DeleteRunRequest(run_id=r.info.run_id))
    assert (await children(runs, pid))[0] == []
    assert not (await get(runs, pid)).info.has_children
    deleted, _ = await children(runs, pid, view=cpb.VIEW_TYPE_DELETED_ONLY)
    assert len(deleted) == 7 and all(r.info.deleted_time > 0 for r in deleted)


async def test_list_child_runs_errors(runs, experiments) -> None:
    await invalid(runs.ListChildRuns(rpb.ListChildRunsRequest(run_id="nope")), "run_id")
    await fails(
        runs.ListChildRuns(rpb.ListChildRunsRequest(run_id=UNKNOWN_RUN)),
        grpc.StatusCode.NOT_FOUND,
    )
    run = await new_run(runs, await new_experiment(experiments))
    await invalid(
        runs.ListChildRuns(rpb.ListChildRunsRequest(run_id=run.info.run_id, max_results=-1)),
        "max_results",
    )
    await invalid(
        runs.ListChildRuns(rpb.ListChildRunsRequest(run_id=run.info.run_id, run_view_type=9)),
        "run_view_type",
    )
    other = await new_run(runs, await new_experiment(experiments))
    parent = await new_run(runs, await new_experiment(experiments))
    for _ in range(2):
        await new_run(runs, parent.info.experiment_id, parent_run_id=parent.info.run_id)
    page = await runs.ListChildRuns(
        rpb.ListChildRunsRequest(run_id=parent.info.run_id, max_results=1)
    )
    assert page.next_page_token
    await invalid(
        runs.ListChildRuns(
            rpb.ListChildRunsRequest(run_id=other.info.run_id, page_token=page.next_page_token)
        ),
        "page_token",
    )


async def test_deleting_a_parent_leaves_its_children_reachable(runs, experiments) -> None:
    eid = await new_experiment(experiments)
    parent = await new_run(runs, eid)
    child = await new_run(runs, eid, parent_run_id=parent.info.run_id)
    grandchild = await new_run(runs, eid, parent_run_id=child.info.run_id)
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=parent.info.run_id))
    # The children stay active and readable, still naming their parent.
    got = await get(runs, child.info.run_id)
    assert got.info.lifecycle_stage == cpb.LIFECYCLE_STAGE_ACTIVE
    assert got.info.parent_run_id == parent.info.run_id
    assert [r.info.run_id for r in (await children(runs, parent.info.run_id))[0]] == [
        child.info.run_id
    ]
    # In the active view the child is a root (its parent is not in the view), as MLflow's
    # UI shows the children of a deleted run at the top.
    found = await roots(runs, eid)
    assert [r.info.run_id for r in found] == [child.info.run_id]
    assert not found[0].descendant_match
    flagged = await roots(runs, eid, f"attributes.run_id = '{grandchild.info.run_id}'")
    assert [(r.info.run_id, r.descendant_match) for r in flagged] == [(child.info.run_id, True)]
    # The deleted view has the parent as its root, alone.
    deleted = await roots(runs, eid, run_view_type=cpb.VIEW_TYPE_DELETED_ONLY)
    assert [r.info.run_id for r in deleted] == [parent.info.run_id]
    await runs.RestoreRun(rpb.RestoreRunRequest(run_id=parent.info.run_id))
    assert [r.info.run_id for r in await roots(runs, eid)] == [parent.info.run_id]


# -- root-only search -------------------------------------------------------------------------


async def test_root_only_search_flags_descendant_matches_three_levels_deep(
    runs, experiments
) -> None:
    eid = await new_experiment(experiments)

    async def run(name: str, parent: run_pb2.Run | None = None, **kw) -> run_pb2.Run:  # type: ignore[no-untyped-def]
        return await new_run(
            runs, eid, run_name=name, parent_run_id=parent.info.run_id if parent else "", **kw
        )

    a = await run("a", start_time=3000)
    a1 = await run("a1", a)
    a11 = await run("a11", a1)
    a111 = await run("a111", a11)
    b = await run("b", start_time=2000)
    b1 = await run("b1", b)
    c = await run("c", start_time=1000)
    await runs.SetTag(rpb.SetTagRequest(run_id=a111.info.run_id, key="hit", value="deep"))
    await runs.SetTag(rpb.SetTagRequest(run_id=b1.info.run_id, key="hit", value="child"))
    await runs.SetTag(rpb.SetTagRequest(run_id=c.info.run_id, key="hit", value="root"))
    await runs.SetTag(rpb.SetTagRequest(run_id=b.info.run_id, key="hit", value="root"))

    def shown(found: list[run_pb2.Run]) -> list[tuple[str, bool]]:
        return [(r.info.run_name, r.descendant_match) for r in found]

    # Without a filter: every root, newest first, none flagged.
    assert shown(await roots(runs, eid)) == [("a", False), ("b", False), ("c", False)]
    # A match three levels below the root returns the root, flagged.
    assert shown(await roots(runs, eid, "tags.hit = 'deep'")) == [("a", True)]
    # A root that matches itself and through a child is flagged too; one that matches
    # alone is not.
    assert shown(await roots(runs, eid, "tags.hit IS NOT NULL")) == [
        ("a", True),
        ("b", True),
        ("c", False),
    ]
    assert shown(await roots(runs, eid, "tags.hit = 'root'")) == [("b", False), ("c", False)]
    # Nothing matching returns nothing; an order applies to the roots.
    assert await roots(runs, eid, "tags.hit = 'none'") == []
    ordered = await roots(runs, eid, "tags.hit IS NOT NULL", order_by=["attributes.run_name DESC"])
    assert [r.info.run_name for r in ordered] == ["c", "b", "a"]
    # Paging keeps the flags; a token is tied to root_runs_only.
    first = await runs.SearchRuns(
        rpb.SearchRunsRequest(
            experiment_ids=[eid], filter="tags.hit IS NOT NULL", root_runs_only=True, max_results=1
        )
    )
    assert shown(list(first.runs)) == [("a", True)]
    second = await runs.SearchRuns(
        rpb.SearchRunsRequest(
            experiment_ids=[eid],
            filter="tags.hit IS NOT NULL",
            root_runs_only=True,
            max_results=1,
            page_token=first.next_page_token,
        )
    )
    assert shown(list(second.runs)) == [("b", True)]
    await invalid(
        runs.SearchRuns(
            rpb.SearchRunsRequest(
                experiment_ids=[eid],
                filter="tags.hit IS NOT NULL",
                max_results=1,
                page_token=first.next_page_token,
            )
        ),
        "page_token",
    )
    # Without root_runs_only every matching run comes back, unflagged.
    every = await runs.SearchRuns(
        rpb.SearchRunsRequest(experiment_ids=[eid], filter="tags.hit IS NOT NULL")
    )
    assert sorted((r.info.run_name, r.descendant_match) for r in every.runs) == [
        ("a111", False),
        ("b", False),
        ("b1", False),
        ("c", False),
    ]
    # Intermediate runs are not roots: a match among them returns the root, flagged.
    names = f"attributes.run_id IN ('{a1.info.run_id}', '{a11.info.run_id}')"
    assert shown(await roots(runs, eid, names)) == [("a", True)]
    # Deleting the deep match unflags its root.
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=a111.info.run_id))
    assert shown(await roots(runs, eid, "tags.hit = 'deep'")) == []


async def test_hierarchy_attributes_filter_and_order(runs, experiments) -> None:
    eid = await new_experiment(experiments)
    root = await new_run(runs, eid, run_name="root")
    kids = [
        await new_run(runs, eid, run_name=f"kid{i}", parent_run_id=root.info.run_id)
        for i in range(3)
    ]
    grand = await new_run(runs, eid, run_name="grand", parent_run_id=kids[0].info.run_id)

    async def names(filter_: str, order: list[str] | None = None) -> list[str]:
        resp = await runs.SearchRuns(
            rpb.SearchRunsRequest(experiment_ids=[eid], filter=filter_, order_by=order or [])
        )
        return [r.info.run_name for r in resp.runs]

    assert sorted(await names(f"attributes.parent_run_id = '{root.info.run_id}'")) == [
        "kid0",
        "kid1",
        "kid2",
    ]
    assert await names("attributes.parent_run_id IS NULL") == ["root"]
    assert await names("attributes.depth >= 2") == ["grand"]
    assert await names("attributes.depth = 1", ["attributes.run_name DESC"]) == [
        "kid2",
        "kid1",
        "kid0",
    ]
    assert (await names("", ["attributes.depth DESC", "attributes.run_name"]))[0] == "grand"
    assert grand.info.parent_run_id == kids[0].info.run_id
