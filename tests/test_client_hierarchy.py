"""The Python client's runs in a hierarchy and with their provenance, and typed params:
parents and children (`parent_run_id`, `depth`, `has_children`, `list_child_runs`,
`search_runs(root_runs_only=True)`), a run's description, external URL, source, duration
and deletion time, and params sent with the type of their Python value and read back both
as MLflow's strings and decoded. The conversions are checked alone first, then everything
against a real server."""

from __future__ import annotations

import asyncio
import fractions
import math
from typing import Any

import numpy as np
import pytest

from helpers import run_python
from trackd.client import (
    AsyncClient,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Param,
    ParamType,
    Run,
    RunInfo,
    RunSource,
    RunSourceType,
    ViewType,
    checks,
    inputs,
)
from trackd.client.entities import RunData, typed_param_value
from trackd.server.app import Running
from trackd.v1 import run_pb2

P = run_pb2


def _target(server: Running) -> str:
    return f"127.0.0.1:{server.port}"


# -- conversions, without a server ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text", "kind"),
    [
        (True, "True", P.PARAM_TYPE_BOOL),
        (False, "False", P.PARAM_TYPE_BOOL),
        (np.bool_(True), "True", P.PARAM_TYPE_BOOL),
        (4, "4", P.PARAM_TYPE_INT),
        (-(2**63), str(-(2**63)), P.PARAM_TYPE_INT),
        (np.int64(7), "7", P.PARAM_TYPE_INT),
        (np.uint8(255), "255", P.PARAM_TYPE_INT),
        (2**63, str(2**63), P.PARAM_TYPE_UNSPECIFIED),  # beyond int64: its string only
        (0.001, "0.001", P.PARAM_TYPE_DOUBLE),
        (1e-05, "1e-05", P.PARAM_TYPE_DOUBLE),
        (1e300, "1e+300", P.PARAM_TYPE_DOUBLE),
        (float("nan"), "nan", P.PARAM_TYPE_DOUBLE),
        (float("-inf"), "-inf", P.PARAM_TYPE_DOUBLE),
        (np.float32(0.5), "0.5", P.PARAM_TYPE_DOUBLE),
        (np.float64(2.5), "2.5", P.PARAM_TYPE_DOUBLE),
        (fractions.Fraction(1, 3), "1/3", P.PARAM_TYPE_UNSPECIFIED),  # not a literal
        ("adam", "adam", P.PARAM_TYPE_STRING),
        ("0.001", "0.001", P.PARAM_TYPE_STRING),
        ([1, 2], "[1, 2]", P.PARAM_TYPE_UNSPECIFIED),
        ({"a": 1}, "{'a': 1}", P.PARAM_TYPE_UNSPECIFIED),
    ],
)
def test_a_param_is_typed_by_its_python_value_and_sent_as_mlflow_text(
    value: object, text: str, kind: int
) -> None:
    assert checks.typed_param_value(value) == (text, kind)
    (msg,) = inputs.params({"k": value})
    assert (msg.key, msg.value, msg.type) == ("k", text, kind)


def test_batch_params_keep_a_type_they_name_and_type_the_rest() -> None:
    msgs = inputs.params(
        [
            ("lr", 0.01),
            Param("optimizer", "adam"),
            Param("layers", "4", "INT"),
            Param("ratio", "0.5", ParamType.DOUBLE),
            P.Param(key="legacy", value="4"),  # a message: its (absent) type is kept
            P.Param(key="flag", value="true", type=P.PARAM_TYPE_BOOL),
        ]
    )
    assert [(m.key, m.value, m.type) for m in msgs] == [
        ("lr", "0.01", P.PARAM_TYPE_DOUBLE),
        ("optimizer", "adam", P.PARAM_TYPE_STRING),
        ("layers", "4", P.PARAM_TYPE_INT),
        ("ratio", "0.5", P.PARAM_TYPE_DOUBLE),
        ("legacy", "4", P.PARAM_TYPE_UNSPECIFIED),
        ("flag", "true", P.PARAM_TYPE_BOOL),
    ]
    with pytest.raises(TypeError, match="must not be None"):
        inputs.params({"k": None})
    with pytest.raises(ValueError, match=r"params\[0\].type"):
        inputs.params([Param("k", "v", "COMPLEX")])
    # A type given must fit the text, as the server requires.
    for bad in (Param("k", "4.0", "INT"), Param("k", "1/3", "DOUBLE"), Param("k", "yes", "BOOL")):
        with pytest.raises(InvalidArgumentError) as caught:
            inputs.params([bad])
        assert list(caught.value.violations) == ["params[0].value"]
    assert inputs.params([Param("k", "TRUE", "BOOL")])[0].type == P.PARAM_TYPE_BOOL


def test_typed_params_decode_by_type() -> None:
    data = RunData.from_proto(
        P.RunData(
            params=[
                P.Param(key="i", value="-42", type=P.PARAM_TYPE_INT),
                P.Param(key="d", value="1e-05", type=P.PARAM_TYPE_DOUBLE),
                P.Param(key="n", value="nan", type=P.PARAM_TYPE_DOUBLE),
                P.Param(key="inf", value="-inf", type=P.PARAM_TYPE_DOUBLE),
                P.Param(key="b", value="True", type=P.PARAM_TYPE_BOOL),
                P.Param(key="f", value="FALSE", type=P.PARAM_TYPE_BOOL),
                P.Param(key="s", value="4", type=P.PARAM_TYPE_STRING),
                P.Param(key="u", value="4"),
            ]
        )
    )
    assert data.params == {
        "i": "-42",
        "d": "1e-05",
        "n": "nan",
        "inf": "-inf",
        "b": "True",
        "f": "FALSE",
        "s": "4",
        "u": "4",
    }
    typed = dict(data.typed_params)
    assert math.isnan(typed.pop("n"))  # type: ignore[arg-type]
    assert typed == {
        "i": -42,
        "d": 1e-05,
        "inf": -math.inf,
        "b": True,
        "f": False,
        "s": "4",
        "u": "4",
    }
    assert [type(typed[k]) for k in ("i", "d", "b", "s", "u")] == [int, float, bool, str, str]
    # A value that is not a literal of its type stays the string.
    assert typed_param_value("x", P.PARAM_TYPE_INT) == "x"


@pytest.mark.parametrize(
    "given",
    [
        ("job", "train-42"),
        ("JOB", "train-42"),
        ("RUN_SOURCE_TYPE_JOB", "train-42"),
        (RunSourceType.JOB, "train-42"),
        (P.RUN_SOURCE_TYPE_JOB, "train-42"),
        RunSource("JOB", "train-42"),
        RunSource("job", "train-42"),
        P.RunSource(type=P.RUN_SOURCE_TYPE_JOB, id="train-42"),
    ],
)
def test_a_source_is_a_run_source_or_a_type_and_id_pair(given: Any) -> None:
    assert inputs.run_source(given) == P.RunSource(type=P.RUN_SOURCE_TYPE_JOB, id="train-42")


def test_an_empty_source_clears_and_a_bad_one_is_refused_at_the_call() -> None:
    assert inputs.run_source("") == P.RunSource()
    assert inputs.run_source(RunSource("", "")) == P.RunSource()
    with pytest.raises(ValueError, match=r"source\.type"):
        inputs.run_source(("cron", "x"))
    with pytest.raises(TypeError):
        inputs.run_source("job")
    with pytest.raises(TypeError):
        inputs.run_source(("job", 42))
    with pytest.raises(TypeError):
        inputs.run_source(["job", "x"])  # type: ignore[arg-type]


def test_run_info_reads_hierarchy_and_provenance_none_when_unset() -> None:
    bare = RunInfo.from_proto(P.RunInfo(run_id="a" * 32, start_time=1000))
    assert (bare.parent_run_id, bare.description, bare.external_url) == (None, None, None)
    assert (bare.source, bare.duration, bare.deleted_time) == (None, None, None)
    assert (bare.depth, bare.has_children) == (0, False)
    full = P.RunInfo(
        run_id="b" * 32,
        parent_run_id="a" * 32,
        has_children=True,
        description="sweep",
        external_url="https://ci.example/jobs/1",
        source=P.RunSource(type=P.RUN_SOURCE_TYPE_CONTAINER, id="pod-7"),
        duration=0.0,
        deleted_time=5000,
        depth=3,
    )
    info = RunInfo.from_proto(full)
    assert (info.parent_run_id, info.has_children, info.depth) == ("a" * 32, True, 3)
    assert (info.description, info.external_url) == ("sweep", "https://ci.example/jobs/1")
    assert info.source == RunSource("CONTAINER", "pod-7")
    assert info.source.to_proto() == full.source
    assert (info.duration, info.deleted_time) == (0.0, 5000)  # 0 s is a duration, not None
    run = Run.from_proto(P.Run(info=full, descendant_match=True))
    assert run.descendant_match and run.info == info
    assert "has_children=True" in repr(info) and "descendant_match=True" in repr(run)


# -- against a server ----------------------------------------------------------------------


async def test_a_tree_of_runs_knows_its_parents_depths_and_children(server: Running) -> None:
    async with AsyncClient(_target(server)) as client:
        eid = await client.create_experiment("hierarchy-tree")
        root = await client.create_run(
            eid,
            run_name="sweep",
            description="a learning-rate sweep",
            external_url="https://ci.example/jobs/42",
            source=("job", "train-42"),
        )
        rid = root.info.run_id
        assert root.info.parent_run_id is None and root.info.depth == 0
        assert not root.info.has_children
        assert root.info.description == "a learning-rate sweep"
        assert root.data.tags["mlflow.note.content"] == "a learning-rate sweep"
        assert root.info.external_url == "https://ci.example/jobs/42"
        assert root.info.source == RunSource("JOB", "train-42")
        assert root.info.deleted_time is None

        child = await client.create_run(eid, run_name="trial", parent_run_id=rid)
        cid = child.info.run_id
        assert (child.info.parent_run_id, child.info.depth) == (rid, 1)
        assert child.data.tags["mlflow.parentRunId"] == rid
        # The mlflow.parentRunId tag names the parent as well as the field does.
        tagged = await client.create_run(eid, tags={"mlflow.parentRunId": cid})
        assert (tagged.info.parent_run_id, tagged.info.depth) == (cid, 2)

        assert (await client.get_run(rid)).info.has_children
        assert (await client.get_run(cid)).info.has_children
        assert not (await client.get_run(tagged.info.run_id)).info.has_children
        parent = await client.get_parent_run(tagged.info.run_id)
        assert parent is not None and parent.info.run_id == cid
        assert await client.get_parent_run(rid) is None

        # A parent in another experiment, or an unknown one, is refused.
        other = await client.create_experiment("hierarchy-tree-other")
        with pytest.raises(InvalidArgumentError):
            await client.create_run(other, parent_run_id=rid)
        with pytest.raises(NotFoundError):
            await client.create_run(eid, parent_run_id="f" * 32)


async def test_nested_run_contexts_record_parent_and_source(server: Running) -> None:
    def scenario() -> tuple[Run, Run, list[Run]]:
        with Client(_target(server)) as client:
            eid = client.create_experiment("hierarchy-contexts")
            with client.start_run(
                eid,
                "parent",
                description="contexts",
                external_url="https://dash.example/p",
                source=(RunSourceType.NOTEBOOK, "/Users/ana/train.ipynb"),
            ) as parent:
                with parent.start_run("child", source=RunSource("CONTAINER", "pod-1")) as child:
                    child.log_param("fold", 1)
            children = list(client.iter_child_runs(parent.run_id))
            return client.get_run(parent.run_id), client.get_run(child.run_id), children

    parent, child, children = await asyncio.to_thread(scenario)
    assert parent.info.source == RunSource("NOTEBOOK", "/Users/ana/train.ipynb")
    assert (parent.info.description, parent.info.external_url) == (
        "contexts",
        "https://dash.example/p",
    )
    assert parent.info.has_children
    assert (child.info.parent_run_id, child.info.depth) == (parent.info.run_id, 1)
    assert child.info.source == RunSource("CONTAINER", "pod-1")
    assert [r.info.run_id for r in children] == [child.info.run_id]
    assert children[0].data.typed_params == {"fold": 1}


async def test_update_run_sets_and_clears_description_url_and_source(server: Running) -> None:
    async with AsyncClient(_target(server)) as client:
        run = await client.create_run("0", run_name="described")
        rid = run.info.run_id
        assert run.info.source is None and run.info.description is None

        info = await client.update_run(
            rid,
            description="first try",
            external_url="https://ci.example/1",
            source=("LOCAL", "/home/ana/train.py"),
        )
        assert (info.description, info.external_url) == ("first try", "https://ci.example/1")
        assert info.source == RunSource("LOCAL", "/home/ana/train.py")
        assert info.status == "RUNNING" and info.run_name == "described"  # left as they were
        got = await client.get_run(rid)
        assert got.data.tags["mlflow.note.content"] == "first try"

        # None leaves each as it is.
        info = await client.update_run(rid, name="renamed")
        assert (info.run_name, info.description, info.external_url) == (
            "renamed",
            "first try",
            "https://ci.example/1",
        )
        assert info.source == RunSource("LOCAL", "/home/ana/train.py")

        # Setting the description's tag sets the description.
        await client.set_tag(rid, "mlflow.note.content", "from the tag")
        assert (await client.get_run(rid)).info.description == "from the tag"

        # "" clears each.
        info = await client.update_run(rid, description="", external_url="", source="")
        assert (info.description, info.external_url, info.source) == (None, None, None)
        got = await client.get_run(rid)
        assert "mlflow.note.content" not in got.data.tags

        with pytest.raises(InvalidArgumentError):
            await client.update_run(rid, external_url="ftp://example.com/x")
        with pytest.raises(ValueError, match="source"):
            await client.update_run(rid, source=("cron", "x"))


async def test_duration_runs_while_running_and_is_fixed_at_the_end(server: Running) -> None:
    async with AsyncClient(_target(server)) as client:
        run = await client.create_run("0", start_time=1_000_000)
        rid = run.info.run_id
        running = (await client.get_run(rid)).info.duration
        assert running is not None and running > 1_000  # now minus a start long ago
        await client.set_terminated(rid, end_time=1_002_500)
        ended = await client.get_run(rid)
        assert ended.info.duration == pytest.approx(2.5)


async def test_list_child_runs_newest_first_by_page_and_by_view(server: Running) -> None:
    async with AsyncClient(_target(server)) as client:
        eid = await client.create_experiment("hierarchy-children")
        root = (await client.create_run(eid, run_name="root")).info.run_id
        starts = [5000, 3000, 4000, 4000, 1000]
        made = [
            await client.create_run(eid, start, run_name=f"c{i}", parent_run_id=root)
            for i, start in enumerate(starts)
        ]
        grandchild = await client.create_run(eid, parent_run_id=made[0].info.run_id)
        ties = sorted(r.info.run_id for r in made[2:4])
        want = [made[0].info.run_id, *ties, made[1].info.run_id, made[4].info.run_id]

        first = await client.list_child_runs(root, max_results=2)
        assert [r.info.run_id for r in first] == want[:2] and first.token
        rest = await client.list_child_runs(root, 10, first.token)
        assert [r.info.run_id for r in rest] == want[2:] and rest.token is None
        assert [r.info.run_id async for r in client.iter_child_runs(root, page_size=2)] == want
        # One level down only; a child carries its data and hierarchy.
        assert grandchild.info.run_id not in want
        assert first[0].info.has_children and first[0].info.depth == 1
        assert first[0].data.tags["mlflow.runName"] == "c0"

        # A deleted child: listed with ALL or DELETED_ONLY, with its deletion time.
        await client.delete_run(made[1].info.run_id)
        active = [r.info.run_id async for r in client.iter_child_runs(root)]
        assert made[1].info.run_id not in active and len(active) == 4
        deleted = await client.list_child_runs(root, run_view_type=ViewType.DELETED_ONLY)
        assert [r.info.run_id for r in deleted] == [made[1].info.run_id]
        assert deleted[0].info.deleted_time is not None and deleted[0].info.deleted_time > 0
        every = await client.list_child_runs(root, run_view_type="ALL")
        assert [r.info.run_id for r in every] == want

        # has_children counts active children only.
        await client.delete_run(grandchild.info.run_id)
        assert not (await client.get_run(made[0].info.run_id)).info.has_children

        # A deleted parent's children are still listed.
        await client.delete_run(root)
        assert len(await client.list_child_runs(root)) == 4
        assert await client.list_child_runs(grandchild.info.run_id) == []

        with pytest.raises(NotFoundError):
            await client.list_child_runs("e" * 32)
        with pytest.raises(InvalidArgumentError):
            await client.list_child_runs("not-a-run-id")
        with pytest.raises(InvalidArgumentError):
            await client.list_child_runs(made[0].info.run_id, page_token=first.token)


async def test_search_root_runs_only_finds_roots_by_their_descendants(server: Running) -> None:
    async with AsyncClient(_target(server)) as client:
        eid = await client.create_experiment("hierarchy-roots")
        a = (await client.create_run(eid, run_name="a")).info.run_id
        b = (await client.create_run(eid, run_name="b")).info.run_id
        a1 = (await client.create_run(eid, run_name="a1", parent_run_id=a)).info.run_id
        a11 = await client.create_run(eid, run_name="a11", parent_run_id=a1)
        await client.log_metric(a11.info.run_id, "acc", 0.99)
        await client.log_metric(b, "acc", 0.5)

        roots = await client.search_runs(eid, root_runs_only=True, order_by=["attributes.run_name"])
        assert [r.info.run_name for r in roots] == ["a", "b"]
        assert not any(r.descendant_match for r in roots)
        everything = await client.search_runs(eid)
        assert len(everything) == 4 and not any(r.descendant_match for r in everything)

        good = await client.search_runs(eid, "metrics.acc > 0.9", root_runs_only=True)
        assert [(r.info.run_id, r.descendant_match) for r in good] == [(a, True)]
        mid = await client.search_runs(eid, "metrics.acc < 0.9", root_runs_only=True)
        assert [(r.info.run_id, r.descendant_match) for r in mid] == [(b, False)]
        walked = [
            r.info.run_name
            async for r in client.iter_runs(
                eid, "metrics.acc >= 0", order_by=["attributes.run_name"], root_runs_only=True
            )
        ]
        assert walked == ["a", "b"]


async def test_typed_params_round_trip_and_compare_by_value(server: Running) -> None:
    async with AsyncClient(_target(server)) as client:
        eid = await client.create_experiment("hierarchy-params")
        run = await client.create_run(eid, run_name="typed")
        rid = run.info.run_id
        assert await client.log_param(rid, "lr", 0.001) == 0.001
        await client.log_param(rid, "layers", np.int64(4))
        await client.log_param(rid, "amp", True)
        await client.log_batch(
            rid,
            params={"optimizer": "adam", "eps": 1e-08, "dims": [64, 32], "wd": float("inf")},
        )
        async with client.start_run(eid, "context") as ctx:
            await ctx.log_param("lr", 0.1)
            await ctx.log_params({"layers": 2, "tag": "0.001"})

        got = await client.get_run(rid)
        assert got.data.params == {
            "lr": "0.001",
            "layers": "4",
            "amp": "True",
            "optimizer": "adam",
            "eps": "1e-08",
            "dims": "[64, 32]",
            "wd": "inf",
        }
        assert got.data.typed_params == {
            "lr": 0.001,
            "layers": 4,
            "amp": True,
            "optimizer": "adam",
            "eps": 1e-08,
            "dims": "[64, 32]",
            "wd": math.inf,
        }
        assert type(got.data.typed_params["layers"]) is int
        types = {p.key: p.type for p in got.data.proto.params}  # type: ignore[union-attr]
        assert types["amp"] == P.PARAM_TYPE_BOOL and types["dims"] == P.PARAM_TYPE_UNSPECIFIED

        # The same value again is accepted; another type of the same text is not.
        await client.log_param(rid, "layers", 4)
        with pytest.raises(FailedPreconditionError):
            await client.log_param(rid, "layers", "4")
        with pytest.raises(FailedPreconditionError):
            await client.log_param(rid, "layers", 4.0)
        # An untyped "4" (MLflow's way) matches the INT 4.
        await client.log_batch(rid, params=[P.Param(key="layers", value="4")])

        # Numeric comparisons apply to INT and DOUBLE params.
        small = await client.search_runs(eid, "params.lr < 0.01")
        assert [r.info.run_id for r in small] == [rid]
        wide = await client.search_runs(eid, "params.layers >= 2")
        assert {r.info.run_name for r in wide} == {"typed", "context"}
        # A STRING param holding a number does not compare as a number.
        assert await client.search_runs(eid, "params.tag < 1") == []
        assert [r.info.run_name for r in await client.search_runs(eid, "params.tag = '0.001'")] == [
            "context"
        ]


FLUENT_SCRIPT = """
import trackd.client as trackd

trackd.set_experiment("hierarchy-fluent")
with trackd.start_run(
    run_name="job", source=("container", "pod-9"), external_url="https://k8s.example/pod-9"
) as outer:
    trackd.log_params({"lr": 0.01, "amp": False, "name": "resnet"})
    with trackd.start_run(run_name="fold", nested=True, description="fold 0") as inner:
        trackd.log_param("fold", 0)
print(outer.run_id, inner.run_id)
"""


async def test_fluent_runs_take_source_and_url_and_log_typed_params(server: Running) -> None:
    out = await run_python(FLUENT_SCRIPT, env={"TRACKD_TRACKING_URI": _target(server)})
    outer_id, inner_id = out.split()
    async with AsyncClient(_target(server)) as client:
        outer = await client.get_run(outer_id)
        inner = await client.get_run(inner_id)
        children = await client.list_child_runs(outer_id)
    assert outer.info.source == RunSource("CONTAINER", "pod-9")
    assert outer.info.external_url == "https://k8s.example/pod-9"
    assert outer.data.params == {"lr": "0.01", "amp": "False", "name": "resnet"}
    assert outer.data.typed_params == {"lr": 0.01, "amp": False, "name": "resnet"}
    assert (inner.info.parent_run_id, inner.info.description) == (outer_id, "fold 0")
    assert inner.data.typed_params == {"fold": 0}
    assert [r.info.run_id for r in children] == [inner_id]
