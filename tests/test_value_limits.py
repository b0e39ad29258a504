"""Values at exactly each documented length limit, made of text that does not compress
(random base64, and random characters outside the BMP, four UTF-8 bytes each), through
every write RPC that takes them: each is accepted, read back whole, and found by equality,
IN and LIKE in SearchRuns, SearchExperiments and SearchLoggedModels. One character more is
INVALID_ARGUMENT naming the field.

Such values once failed with INTERNAL ("index row size exceeds btree version 4 maximum
2704"): the (key, value) search indexes could not hold them."""

from __future__ import annotations

import base64
import os
import random
import string

import grpc
import pytest

from helpers import error_info, new_experiment, new_run, unique, violations
from trackd.v1 import dataset_pb2, experiment_pb2, logged_model_service_pb2_grpc, run_pb2
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import logged_model_pb2 as lpb
from trackd.v1 import logged_model_service_pb2 as mpb
from trackd.v1 import run_service_pb2 as rpb

# The documented limits (README "Rules", "Datasets ...").
KEY_MAX = 250
PARAM_VALUE_MAX = 6000
TAG_VALUE_MAX = 8000
EXPERIMENT_NAME_MAX = 500
EXPERIMENT_TAG_VALUE_MAX = 5000
DATASET_NAME_MAX = 500
DATASET_DIGEST_MAX = 36
INPUT_TAG_VALUE_MAX = 500
MODEL_NAME_MAX = 500

_rng = random.Random(0xC0FFEE)
_KEY_CHARS = string.ascii_letters + string.digits + "_-. /:"


def b64(n: int) -> str:
    """n characters of random base64: one byte each, and no compression can shrink them."""
    return base64.b64encode(os.urandom(n)).decode()[:n]


def astral(n: int) -> str:
    """n random characters outside the BMP: four UTF-8 bytes each."""
    return "".join(chr(_rng.randrange(0x10000, 0x110000)) for _ in range(n))


def key(n: int = KEY_MAX) -> str:
    """A random valid key of n characters (no `..`, no leading `/`)."""
    while True:
        k = "k" + "".join(_rng.choice(_KEY_CHARS) for _ in range(n - 1))
        if ".." not in k:
            return k


KINDS = {"base64": b64, "astral": astral}


def q(text: str) -> str:
    """A filter string literal."""
    return "'" + text.replace("'", "''") + "'"


def qk(k: str) -> str:
    """A quoted filter key."""
    return '"' + k + '"'


def like_prefix(value: str, n: int) -> str:
    """A LIKE pattern matching `value` by its first n characters."""
    head = value[:n].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return head + "%"


def twin_of(value: str) -> str:
    """The value but for its last character: its search index entry is the same."""
    return value[:-1] + "~"


def value_filters(entity: str, k: str, value: str) -> list[tuple[str, bool]]:
    """Filters that each select the entity holding `k` = `value`, and whether they also
    select one holding `twin_of(value)` (a LIKE on a shorter prefix does)."""
    ident = f"{entity}.{qk(k)}"
    return [
        (f"{ident} = {q(value)}", False),
        (f"{ident} IN ({q('nothing')}, {q(value)})", False),
        (f"{ident} LIKE {q(like_prefix(value, 12))}", True),
        (f"{ident} LIKE {q(like_prefix(value, 600))}", True),  # longer than index prefixes
        (f"{ident} LIKE {q(like_prefix(value, len(value) - 1))}", True),
        (f"{ident} LIKE {q(like_prefix(value, len(value)))}", False),
        (f"{ident} LIKE {q('%' + value[-10:])}", False),  # no prefix at all
        (f"{ident} ILIKE {q(like_prefix(value, 20))}", True),
        (f"{ident} = {q(value)} AND {ident} LIKE {q(like_prefix(value, 3))}", False),
        (f"{ident} != {q(twin_of(value))}", False),
    ]


def near_misses(entity: str, k: str, value: str) -> list[str]:
    """Filters that must not select the entity: the value with one character changed at
    its start, just past any index prefix and at its end, and truncated."""
    ident = f"{entity}.{qk(k)}"
    out = []
    for i in (0, 499, 500, 501, len(value) - 1):
        if i < len(value):
            changed = value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]
            out.append(f"{ident} = {q(changed)}")
            out.append(f"{ident} LIKE {q(like_prefix(changed, i + 1))}")
    out.append(f"{ident} = {q(value[:-1])}")
    out.append(f"{ident} = {q(value + 'x')}")
    out.append(f"{ident} LIKE {q(like_prefix(value + 'x', len(value) + 1))}")
    return out


async def run_search(runs, experiment_id: str, filter_: str) -> list[str]:  # type: ignore[no-untyped-def]
    resp = await runs.SearchRuns(
        rpb.SearchRunsRequest(experiment_ids=[experiment_id], filter=filter_)
    )
    return [r.info.run_id for r in resp.runs]


async def check_values(search, found: str, twin: str | None, entity: str, k: str, v: str):  # type: ignore[no-untyped-def]
    """`search(filter)` returns the ids it finds: `found` holds `k` = `v`, and `twin`, if
    given, holds `k` = `twin_of(v)`."""
    for f, also_twin in value_filters(entity, k, v):
        expected = {found, twin} if also_twin and twin else {found}
        assert set(await search(f)) == expected, f[:100]
    for f in near_misses(entity, k, v):
        assert await search(f) == [], f[:100]


def run_values(run: run_pb2.Run) -> tuple[dict[str, str], dict[str, str]]:
    return (
        {p.key: p.value for p in run.data.params},
        {t.key: t.value for t in run.data.tags},
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_run_params_and_tags_at_their_limits(experiments, runs, kind: str) -> None:
    make = KINDS[kind]
    eid = await new_experiment(experiments)
    created_tag = (key(), make(TAG_VALUE_MAX))
    run = await new_run(runs, eid, tags=[run_pb2.RunTag(key=created_tag[0], value=created_tag[1])])
    rid = run.info.run_id
    logged = (key(), make(PARAM_VALUE_MAX))
    await runs.LogParam(rpb.LogParamRequest(run_id=rid, key=logged[0], value=logged[1]))
    set_tag = (key(), make(TAG_VALUE_MAX))
    await runs.SetTag(rpb.SetTagRequest(run_id=rid, key=set_tag[0], value=set_tag[1]))
    batch_params = [(key(), make(PARAM_VALUE_MAX)) for _ in range(10)]
    batch_tags = [(key(), make(TAG_VALUE_MAX)) for _ in range(10)]
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid,
            params=[run_pb2.Param(key=k, value=v) for k, v in batch_params],
            tags=[run_pb2.RunTag(key=k, value=v) for k, v in batch_tags],
        )
    )
    # The same param again, whole, is accepted (params are immutable, not unrepeatable).
    await runs.LogParam(rpb.LogParamRequest(run_id=rid, key=logged[0], value=logged[1]))
    got = (await runs.GetRun(rpb.GetRunRequest(run_id=rid))).run
    params, tags = run_values(got)
    assert params == dict([logged, *batch_params])
    for k, v in [created_tag, set_tag, *batch_tags]:
        assert tags[k] == v
    # Another run holds the same values but for the last character.
    twin = (await new_run(runs, eid)).info.run_id
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=twin,
            params=[run_pb2.Param(key=logged[0], value=twin_of(logged[1]))],
            tags=[run_pb2.RunTag(key=set_tag[0], value=twin_of(set_tag[1]))],
        )
    )

    async def search(filter_: str) -> list[str]:
        return await run_search(runs, eid, filter_)

    await check_values(search, rid, twin, "params", *logged)
    await check_values(search, rid, None, "params", *batch_params[3])
    await check_values(search, rid, twin, "tags", *set_tag)
    await check_values(search, rid, None, "tags", *created_tag)
    await check_values(search, rid, None, "tags", *batch_tags[7])
    # One character more is INVALID_ARGUMENT naming the field.
    for call, field in [
        (runs.LogParam(rpb.LogParamRequest(run_id=rid, key="x", value=make(6001))), "value"),
        (runs.SetTag(rpb.SetTagRequest(run_id=rid, key="x", value=make(8001))), "value"),
        (runs.SetTag(rpb.SetTagRequest(run_id=rid, key=key(251), value="v")), "key"),
        (
            runs.LogBatch(
                rpb.LogBatchRequest(
                    run_id=rid, params=[run_pb2.Param(key="y", value=make(PARAM_VALUE_MAX + 1))]
                )
            ),
            "params[0].value",
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violations(exc.value), violations(exc.value)


@pytest.mark.parametrize("kind", KINDS)
async def test_experiment_names_and_tags_at_their_limits(experiments, kind: str) -> None:
    make = KINDS[kind]
    name = make(EXPERIMENT_NAME_MAX)
    created = (key(), make(EXPERIMENT_TAG_VALUE_MAX))
    eid = (
        await experiments.CreateExperiment(
            epb.CreateExperimentRequest(
                name=name, tags=[experiment_pb2.ExperimentTag(key=created[0], value=created[1])]
            )
        )
    ).experiment_id
    set_ = (key(), make(EXPERIMENT_TAG_VALUE_MAX))
    await experiments.SetExperimentTag(
        epb.SetExperimentTagRequest(experiment_id=eid, key=set_[0], value=set_[1])
    )
    got = (await experiments.GetExperiment(epb.GetExperimentRequest(experiment_id=eid))).experiment
    assert got.name == name
    assert {t.key: t.value for t in got.tags} == dict([created, set_])
    by_name = await experiments.GetExperimentByName(
        epb.GetExperimentByNameRequest(experiment_name=name)
    )
    assert by_name.experiment.experiment_id == eid
    # A twin whose tag differs in the last character only.
    twin = (
        await experiments.CreateExperiment(
            epb.CreateExperimentRequest(
                name=unique(),
                tags=[experiment_pb2.ExperimentTag(key=set_[0], value=twin_of(set_[1]))],
            )
        )
    ).experiment_id

    async def search(filter_: str) -> list[str]:
        resp = await experiments.SearchExperiments(epb.SearchExperimentsRequest(filter=filter_))
        return [e.experiment_id for e in resp.experiments]

    await check_values(search, eid, None, "tags", *created)
    await check_values(search, eid, twin, "tags", *set_)
    assert await search(f"name = {q(name)}") == [eid]
    assert await search(f"name LIKE {q(like_prefix(name, 100))}") == [eid]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await experiments.SetExperimentTag(
            epb.SetExperimentTagRequest(experiment_id=eid, key="x", value=make(5001))
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await experiments.CreateExperiment(epb.CreateExperimentRequest(name=make(501)))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(exc.value)) == {"name"}


@pytest.mark.parametrize("kind", KINDS)
async def test_logged_model_params_and_tags_at_their_limits(
    experiments, channel, kind: str
) -> None:
    make = KINDS[kind]
    models = logged_model_service_pb2_grpc.LoggedModelServiceStub(channel)
    eid = await new_experiment(experiments)
    c_param = (key(), make(PARAM_VALUE_MAX))
    c_tag = (key(), make(TAG_VALUE_MAX))
    model = (
        await models.CreateLoggedModel(
            mpb.CreateLoggedModelRequest(
                experiment_id=eid,
                name=make(MODEL_NAME_MAX),
                model_type=make(MODEL_NAME_MAX),
                params=[lpb.LoggedModelParameter(key=c_param[0], value=c_param[1])],
                tags=[lpb.LoggedModelTag(key=c_tag[0], value=c_tag[1])],
            )
        )
    ).model
    mid = model.info.model_id
    s_tags = [(key(), make(TAG_VALUE_MAX)) for _ in range(5)]
    await models.SetLoggedModelTags(
        mpb.SetLoggedModelTagsRequest(
            model_id=mid, tags=[lpb.LoggedModelTag(key=k, value=v) for k, v in s_tags]
        )
    )
    l_params = [(key(), make(PARAM_VALUE_MAX)) for _ in range(5)]
    await models.LogLoggedModelParams(
        mpb.LogLoggedModelParamsRequest(
            model_id=mid, params=[lpb.LoggedModelParameter(key=k, value=v) for k, v in l_params]
        )
    )
    got = (await models.GetLoggedModel(mpb.GetLoggedModelRequest(model_id=mid))).model
    assert {p.key: p.value for p in got.data.params} == dict([c_param, *l_params])
    assert {t.key: t.value for t in got.info.tags} == dict([c_tag, *s_tags])
    twin = (
        await models.CreateLoggedModel(
            mpb.CreateLoggedModelRequest(
                experiment_id=eid,
                params=[lpb.LoggedModelParameter(key=c_param[0], value=twin_of(c_param[1]))],
            )
        )
    ).model.info.model_id

    async def search(filter_: str) -> list[str]:
        resp = await models.SearchLoggedModels(
            mpb.SearchLoggedModelsRequest(experiment_ids=[eid], filter=filter_)
        )
        return [m.info.model_id for m in resp.models]

    await check_values(search, mid, twin, "params", *c_param)
    await check_values(search, mid, None, "params", *l_params[2])
    await check_values(search, mid, None, "tags", *c_tag)
    await check_values(search, mid, None, "tags", *s_tags[4])
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await models.LogLoggedModelParams(
            mpb.LogLoggedModelParamsRequest(
                model_id=mid, params=[lpb.LoggedModelParameter(key="z", value=make(6001))]
            )
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(exc.value).reason == "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize("kind", KINDS)
async def test_dataset_inputs_at_their_limits(experiments, runs, kind: str) -> None:
    make = KINDS[kind]
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    name, digest = make(DATASET_NAME_MAX), make(DATASET_DIGEST_MAX)
    context = make(INPUT_TAG_VALUE_MAX)
    tags = [dataset_pb2.InputTag(key="mlflow.data.context", value=context)] + [
        dataset_pb2.InputTag(key=key(), value=make(INPUT_TAG_VALUE_MAX)) for _ in range(5)
    ]
    await runs.LogInputs(
        rpb.LogInputsRequest(
            run_id=rid,
            datasets=[
                dataset_pb2.DatasetInput(
                    dataset=dataset_pb2.Dataset(
                        name=name, digest=digest, source_type="local", source=make(1000)
                    ),
                    tags=tags,
                )
            ],
        )
    )
    got = (await runs.GetRun(rpb.GetRunRequest(run_id=rid))).run
    (inp,) = got.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == (name, digest)
    assert sorted((t.key, t.value) for t in inp.tags) == sorted((t.key, t.value) for t in tags)
    for f in [
        f"datasets.name = {q(name)}",
        f"datasets.digest = {q(digest)}",
        f"datasets.context = {q(context)}",
        f"datasets.context LIKE {q(like_prefix(context, 30))}",
        f"datasets.name LIKE {q(like_prefix(name, 499))}",
    ]:
        assert await run_search(runs, eid, f) == [rid], f[:80]
    assert await run_search(runs, eid, f"datasets.context = {q(context[:-1])}") == []


# Values whose length is around 500 characters, the prefix the search indexes hold: each a
# prefix of the next, so a search by any of them must tell them apart.
BOUNDARY_LENGTHS = (1, 2, 498, 499, 500, 501, 502, 999, 1000)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("entity", ["params", "tags"])
async def test_values_around_the_index_prefix_are_told_apart(
    experiments, runs, kind: str, entity: str
) -> None:
    base = KINDS[kind](max(BOUNDARY_LENGTHS))
    eid = await new_experiment(experiments)
    k = key(40)
    ids: dict[int, str] = {}
    for n in BOUNDARY_LENGTHS:
        rid = (await new_run(runs, eid)).info.run_id
        ids[n] = rid
        item = (
            {"params": [run_pb2.Param(key=k, value=base[:n])]}
            if entity == "params"
            else {"tags": [run_pb2.RunTag(key=k, value=base[:n])]}
        )
        await runs.LogBatch(rpb.LogBatchRequest(run_id=rid, **item))  # type: ignore[arg-type]
    ident = f"{entity}.{qk(k)}"

    async def found(filter_: str) -> set[int]:
        got = set(await run_search(runs, eid, filter_))
        return {n for n, rid in ids.items() if rid in got}

    every = set(BOUNDARY_LENGTHS)
    for n in BOUNDARY_LENGTHS:
        v = base[:n]
        assert await found(f"{ident} = {q(v)}") == {n}, n
        assert await found(f"{ident} != {q(v)}") == every - {n}, n
        longer = {m for m in every if m >= n}
        assert await found(f"{ident} LIKE {q(like_prefix(v, n))}") == longer, n
        assert await found(f"{ident} LIKE {q(like_prefix(v, n)[:-1] + '_%')}") == longer - {n}
        assert await found(f"{ident} LIKE {q(like_prefix(v, n)[:-1] + '_')}") == longer & {n + 1}
        assert await found(f"{ident} LIKE {q(like_prefix(v, n) + '%')}") == longer
        for m in BOUNDARY_LENGTHS:
            assert await found(f"{ident} IN ({q(v)}, {q(base[:m])})") == {n, m}, (n, m)
    # Other values of the same length as a stored one, differing only at the end.
    for n in (499, 500, 501):
        other = base[: n - 1] + ("A" if base[n - 1] != "A" else "B")
        assert await found(f"{ident} = {q(other)}") == set(), n
        assert await found(f"{ident} IN ({q(other)})") == set(), n
        assert await found(f"{ident} LIKE {q(like_prefix(other, n))}") == set(), n
