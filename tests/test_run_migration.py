"""Migration 0011 (run hierarchy, typed params) over old data, seen through the public API.

A fresh database is brought to 0010 exactly as the previous release's migrate() left it,
filled with plain SQL the way that release stored runs (a parent set at creation, or only
an `mlflow.parentRunId` tag as MLflow's client nests runs; untyped params), then trackd
starts on it, migrates to the latest, and RunService must show the hierarchy: tag-linked
children with their parents, depths and paths; cross-experiment, garbage, unknown, self and
circular tags as roots; descriptions from `mlflow.note.content`; old params untyped, equal
to their string and invisible to numeric comparisons. A second start migrates nothing and
changes nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest_asyncio

from conftest import server_config
from helpers import settled
from old_db import old_database, run_service
from trackd.server import app
from trackd.server.store import migrate
from trackd.v1 import run_pb2, run_service_pb2_grpc
from trackd.v1 import run_service_pb2 as rpb

# The last migration of the previous release.
OLD_VERSION = 10
FINISHED = 3
START = 1_700_000_000_000
PARENT_TAG = "mlflow.parentRunId"
NAME_TAG = "mlflow.runName"
DESCRIPTION_TAG = "mlflow.note.content"


@dataclass
class Old:
    """The database left by the previous release, and what was put in it."""

    url: str
    # Experiment ids by name ("main", "other").
    experiments: dict[str, int]
    # Run ids (32 hex digits) by run name.
    ids: dict[str, str]


async def _experiment(conn: asyncpg.Connection, name: str) -> int:
    return await conn.fetchval(
        "INSERT INTO experiments (name, artifact_location, creation_time, last_update_time)"
        " VALUES ($1, $2, $3, $3) RETURNING experiment_id",
        name,
        f"file:///tmp/trackd-test-artifacts/{name}",
        START,
    )


async def _run(
    conn: asyncpg.Connection,
    experiment_id: int,
    name: str,
    n: int,
    *,
    parent_pk: int | None = None,
    tags: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    run_id: str | None = None,
) -> tuple[int, str]:
    """Inserts a FINISHED run as the previous release stored it (its name also in the
    `mlflow.runName` tag); returns (run_pk, run_id)."""
    rid = uuid.UUID(run_id) if run_id else uuid.uuid4()
    pk = await conn.fetchval(
        "INSERT INTO runs (run_id, experiment_id, run_name, user_id, status, start_time,"
        " end_time, artifact_uri, parent_run_pk)"
        " VALUES ($1, $2, $3, 'old-user', $4, $5, $6, $7, $8) RETURNING run_pk",
        rid,
        experiment_id,
        name,
        FINISHED,
        START + n * 1000,
        START + n * 1000 + 500,
        f"file:///tmp/trackd-test-artifacts/{experiment_id}/{rid.hex}/artifacts",
        parent_pk,
    )
    all_tags = {NAME_TAG: name, **(tags or {})}
    await conn.executemany(
        "INSERT INTO run_tags (run_pk, key, value) VALUES ($1, $2, $3)",
        [(pk, k, v) for k, v in all_tags.items()],
    )
    await conn.executemany(
        "INSERT INTO params (run_pk, key, value) VALUES ($1, $2, $3)",
        [(pk, k, v) for k, v in (params or {}).items()],
    )
    return pk, rid.hex


async def _fill(conn: asyncpg.Connection) -> tuple[dict[str, int], dict[str, str]]:
    """Old-shaped runs in two experiments; returns the experiment and run ids by name."""
    exps = {"main": await _experiment(conn, "main"), "other": await _experiment(conn, "other")}
    main, other = exps["main"], exps["other"]
    ids: dict[str, str] = {}
    pks: dict[str, int] = {}
    n = 0

    async def run(name: str, experiment_id: int = main, **kw: object) -> None:
        nonlocal n
        n += 1
        pks[name], ids[name] = await _run(conn, experiment_id, name, n, **kw)  # type: ignore[arg-type]

    # A root with a description, old params, and a child created with parent_run_id (the
    # previous release set parent_run_pk and the tag).
    await run(
        "parent",
        tags={DESCRIPTION_TAG: "the old description", "team": "vision"},
        params={"lr": "0.001", "epochs": "4"},
    )
    await run("created_child", parent_pk=pks["parent"], tags={PARENT_TAG: ids["parent"]})
    # MLflow's client nesting: the tag alone.
    await run("tag_child", tags={PARENT_TAG: ids["parent"]}, params={"lr": "0.1"})
    # A three-level chain from tags only, the leaf inserted before its parent.
    await run("chain_root")
    mid_id = uuid.uuid4().hex
    await run("chain_leaf", tags={PARENT_TAG: mid_id}, params={"lr": "0.005"})
    await run("chain_mid", tags={PARENT_TAG: ids["chain_root"]}, run_id=mid_id)
    # A run of another experiment, and a tag naming it: stays a root.
    await run("elsewhere", other)
    await run("cross", tags={PARENT_TAG: ids["elsewhere"]})
    # Tags that name no run: garbage (the cast must not fail), a well-formed id of no run,
    # an upper-case id, the run itself.
    await run("garbage", tags={PARENT_TAG: "not-a-run"})
    await run("unknown", tags={PARENT_TAG: uuid.uuid4().hex})
    await run("upper", tags={PARENT_TAG: ids["parent"].upper()})
    self_id = uuid.uuid4().hex
    await run("self", tags={PARENT_TAG: self_id}, run_id=self_id)
    # A circle of two tags: both become roots; a run tagged with one of them hangs below it.
    await run("circle_a")
    await run("circle_b", tags={PARENT_TAG: ids["circle_a"]})
    await conn.execute(
        "INSERT INTO run_tags (run_pk, key, value) VALUES ($1, $2, $3)",
        pks["circle_a"],
        PARENT_TAG,
        ids["circle_b"],
    )
    await run("below_circle", tags={PARENT_TAG: ids["circle_a"]})
    await run("below_below", tags={PARENT_TAG: ids["below_circle"]})
    # A circle of three.
    tri = {name: uuid.uuid4().hex for name in ("tri_a", "tri_b", "tri_c")}
    for name, parent in (("tri_a", "tri_c"), ("tri_b", "tri_a"), ("tri_c", "tri_b")):
        await run(name, tags={PARENT_TAG: tri[parent]}, run_id=tri[name])
    return exps, ids


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def old(pg_url: str) -> AsyncIterator[Old]:
    """A fresh database at migration 0010 holding old-shaped data; dropped afterwards."""
    async with old_database(pg_url, OLD_VERSION) as (url, conn):
        async with conn.transaction():
            exps, ids = await _fill(conn)
        yield Old(url, exps, ids)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runs(old: Old) -> AsyncIterator[run_service_pb2_grpc.RunServiceStub]:
    """RunService of a trackd started on the old database (which it migrates)."""
    async with run_service(old.url) as stub:
        yield stub


async def _get(runs: run_service_pb2_grpc.RunServiceStub, run_id: str) -> run_pb2.Run:
    return (await runs.GetRun(rpb.GetRunRequest(run_id=run_id))).run


async def _search(
    runs: run_service_pb2_grpc.RunServiceStub, old: Old, filter: str = "", roots: bool = False
) -> list[run_pb2.Run]:
    resp = await runs.SearchRuns(
        rpb.SearchRunsRequest(
            experiment_ids=[str(e) for e in old.experiments.values()],
            filter=filter,
            root_runs_only=roots,
        )
    )
    assert resp.next_page_token == ""
    return list(resp.runs)


def _names(found: list[run_pb2.Run]) -> set[str]:
    return {r.info.run_name for r in found}


def test_the_old_database_is_at_the_previous_release() -> None:
    versions = [v for v, _, _ in migrate.available()]
    assert versions[:OLD_VERSION] == list(range(1, OLD_VERSION + 1))
    assert 11 in versions


async def test_migration_records_every_version(old: Old, runs: object) -> None:
    conn = await asyncpg.connect(old.url)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [(r["version"], r["name"]) for r in rows] == [(v, n) for v, n, _ in migrate.available()]


# name -> (parent name or "", depth, has_children)
HIERARCHY = {
    "parent": ("", 0, True),
    "created_child": ("parent", 1, False),
    "tag_child": ("parent", 1, False),
    "chain_root": ("", 0, True),
    "chain_mid": ("chain_root", 1, True),
    "chain_leaf": ("chain_mid", 2, False),
    "elsewhere": ("", 0, False),
    "cross": ("", 0, False),
    "garbage": ("", 0, False),
    "unknown": ("", 0, False),
    "upper": ("", 0, False),
    "self": ("", 0, False),
    "circle_a": ("", 0, True),
    "circle_b": ("", 0, False),
    "below_circle": ("circle_a", 1, True),
    "below_below": ("below_circle", 2, False),
    "tri_a": ("", 0, False),
    "tri_b": ("", 0, False),
    "tri_c": ("", 0, False),
}


async def test_get_run_shows_the_migrated_hierarchy(
    old: Old, runs: run_service_pb2_grpc.RunServiceStub
) -> None:
    assert set(HIERARCHY) == set(old.ids)
    for name, (parent, depth, has_children) in HIERARCHY.items():
        info = (await _get(runs, old.ids[name])).info
        want_parent = old.ids[parent] if parent else ""
        got = (info.run_name, info.parent_run_id, info.depth, info.has_children)
        assert got == (name, want_parent, depth, has_children), name


async def test_the_description_comes_from_the_note_tag(
    old: Old, runs: run_service_pb2_grpc.RunServiceStub
) -> None:
    run = await _get(runs, old.ids["parent"])
    assert run.info.description == "the old description"
    assert {t.key: t.value for t in run.data.tags}[DESCRIPTION_TAG] == "the old description"
    assert (await _get(runs, old.ids["tag_child"])).info.description == ""


async def test_tags_naming_no_parent_are_kept(
    old: Old, runs: run_service_pb2_grpc.RunServiceStub
) -> None:
    # The roots keep the tags they had; nothing of the old data is dropped.
    tags = {t.key: t.value for t in (await _get(runs, old.ids["garbage"])).data.tags}
    assert tags == {NAME_TAG: "garbage", PARENT_TAG: "not-a-run"}
    tags = {t.key: t.value for t in (await _get(runs, old.ids["cross"])).data.tags}
    assert tags[PARENT_TAG] == old.ids["elsewhere"]


async def test_list_child_runs_lists_tag_linked_children(
    old: Old, runs: run_service_pb2_grpc.RunServiceStub
) -> None:
    async def children(name: str) -> set[str]:
        resp = await runs.ListChildRuns(rpb.ListChildRunsRequest(run_id=old.ids[name]))
        assert resp.next_page_token == ""
        for r in resp.runs:
            assert r.info.parent_run_id == old.ids[name]
        return _names(list(resp.runs))

    assert await children("parent") == {"created_child", "tag_child"}
    assert await children("chain_root") == {"chain_mid"}
    assert await children("chain_mid") == {"chain_leaf"}
    assert await children("circle_a") == {"below_circle"}
    assert await children("below_circle") == {"below_below"}
    for name in ("chain_leaf", "elsewhere", "garbage", "self", "circle_b", "tri_a", "tri_b"):
        assert await children(name) == set(), name


async def test_root_runs_only_finds_the_root_of_a_matching_grandchild(
    old: Old, runs: run_service_pb2_grpc.RunServiceStub
) -> None:
    roots = {n for n, (p, _, _) in HIERARCHY.items() if not p}
    assert _names(await _search(runs, old, roots=True)) == roots
    found = await _search(runs, old, "attributes.run_name = 'chain_leaf'", roots=True)
    assert [(r.info.run_name, r.descendant_match) for r in found] == [("chain_root", True)]
    found = await _search(runs, old, "tags.mlflow.runName = 'chain_leaf'", roots=True)
    assert [(r.info.run_name, r.descendant_match) for r in found] == [("chain_root", True)]
    # A root matching itself only.
    found = await _search(runs, old, "params.lr = '0.001'", roots=True)
    assert [(r.info.run_name, r.descendant_match) for r in found] == [("parent", False)]
    # Below a broken circle.
    found = await _search(runs, old, "attributes.run_name = 'below_below'", roots=True)
    assert [(r.info.run_name, r.descendant_match) for r in found] == [("circle_a", True)]


async def test_old_params_are_untyped_strings(
    old: Old, runs: run_service_pb2_grpc.RunServiceStub
) -> None:
    params = (await _get(runs, old.ids["parent"])).data.params
    assert [(p.key, p.value, p.type) for p in params] == [
        ("epochs", "4", run_pb2.PARAM_TYPE_UNSPECIFIED),
        ("lr", "0.001", run_pb2.PARAM_TYPE_UNSPECIFIED),
    ]
    assert _names(await _search(runs, old, "params.lr = '0.001'")) == {"parent"}
    assert _names(await _search(runs, old, "params.epochs = '4'")) == {"parent"}
    # Numeric comparisons see typed INT and DOUBLE params only.
    assert await _search(runs, old, "params.lr < 0.01") == []
    assert await _search(runs, old, "params.epochs > 3") == []


async def test_numeric_comparisons_see_params_typed_after_the_migration(
    old: Old, runs: run_service_pb2_grpc.RunServiceStub
) -> None:
    # A run created now beside the old ones: its typed param compares by value, the old
    # untyped ones still do not.
    created = await runs.CreateRun(
        rpb.CreateRunRequest(
            experiment_id=str(old.experiments["main"]),
            run_name="typed_now",
            parent_run_id=old.ids["chain_leaf"],
        )
    )
    new = created.run
    assert (new.info.parent_run_id, new.info.depth) == (old.ids["chain_leaf"], 3)
    await runs.LogParam(
        rpb.LogParamRequest(
            run_id=new.info.run_id, key="lr", value="0.002", type=run_pb2.PARAM_TYPE_DOUBLE
        )
    )
    assert _names(await _search(runs, old, "params.lr < 0.01")) == {"typed_now"}
    assert _names(await _search(runs, old, "params.lr = '0.001'")) == {"parent"}
    found = await _search(runs, old, "attributes.run_name = 'typed_now'", roots=True)
    assert [(r.info.run_name, r.descendant_match) for r in found] == [("chain_root", True)]
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=new.info.run_id))
    assert not (await _get(runs, old.ids["chain_leaf"])).info.has_children


async def _snapshot(url: str) -> tuple[list[tuple[object, ...]], ...]:
    conn = await asyncpg.connect(url)
    try:
        return (
            [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT version, name, applied_at FROM schema_migrations ORDER BY 1"
                )
            ],
            [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT run_pk, run_id, parent_run_pk, path, lifecycle_stage"
                    " FROM runs ORDER BY 1"
                )
            ],
            [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT run_pk, key, value, type, number FROM params ORDER BY 1, 2"
                )
            ],
            [
                tuple(r)
                for r in await conn.fetch("SELECT run_pk, key, value FROM run_tags ORDER BY 1, 2")
            ],
        )
    finally:
        await conn.close()


async def test_a_second_start_changes_nothing(
    old: Old, runs: run_service_pb2_grpc.RunServiceStub
) -> None:
    before = await _snapshot(old.url)
    first = {name: settled(await _get(runs, run_id)) for name, run_id in old.ids.items()}
    conn = await asyncpg.connect(old.url)
    try:
        assert await migrate.migrate(conn) == []
    finally:
        await conn.close()
    second = await app.start(server_config(), old.url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as ch:
            again = run_service_pb2_grpc.RunServiceStub(ch)
            for name, run_id in old.ids.items():
                assert settled(await _get(again, run_id)) == first[name], name
    finally:
        await second.stop(1.0)
    assert await _snapshot(old.url) == before
