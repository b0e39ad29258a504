"""Filters at the edges of their structure, for the three searches (SearchRuns,
SearchExperiments, SearchLoggedModels): parentheses and NOTs nested up to the limit work,
one level past it and far past it (10,000 characters of '(') are INVALID_ARGUMENT naming the
filter and the limit, and long AND/OR chains work, never INTERNAL."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio

from helpers import error_info, new_experiment, new_run, violations
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import logged_model_pb2 as lpb
from trackd.v1 import logged_model_service_pb2 as mpb
from trackd.v1 import logged_model_service_pb2_grpc, run_pb2
from trackd.v1 import run_service_pb2 as rpb

# The documented limits: how deep parentheses and NOTs nest, and a filter's length.
MAX_NESTING = 100
FILTER_MAX = 10_000
# Seconds a search may take: the longest filters plan in well under one (an AND of 700
# EXISTS once took minutes to plan).
TIMEOUT = 30
Search = Callable[[str], Awaitable[list[str]]]


class World:
    """One experiment, run and model, each tagged t = `value` (unique to the module), and
    a search function per RPC returning the ids it finds."""

    value: str
    ids: dict[str, str]
    searches: dict[str, Search]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(experiments, runs, channel) -> World:  # type: ignore[no-untyped-def]
    models = logged_model_service_pb2_grpc.LoggedModelServiceStub(channel)
    w = World()
    w.value = uuid.uuid4().hex
    eid = await new_experiment(experiments)
    await experiments.SetExperimentTag(
        epb.SetExperimentTagRequest(experiment_id=eid, key="t", value=w.value)
    )
    run = await new_run(runs, eid, tags=[run_pb2.RunTag(key="t", value=w.value)])
    model = (
        await models.CreateLoggedModel(
            mpb.CreateLoggedModelRequest(
                experiment_id=eid, tags=[lpb.LoggedModelTag(key="t", value=w.value)]
            )
        )
    ).model
    w.ids = {"runs": run.info.run_id, "experiments": eid, "models": model.info.model_id}

    async def search_runs(filter_: str) -> list[str]:
        resp = await runs.SearchRuns(
            rpb.SearchRunsRequest(experiment_ids=[eid], filter=filter_), timeout=TIMEOUT
        )
        return [r.info.run_id for r in resp.runs]

    async def search_experiments(filter_: str) -> list[str]:
        resp = await experiments.SearchExperiments(
            epb.SearchExperimentsRequest(filter=filter_), timeout=TIMEOUT
        )
        return [e.experiment_id for e in resp.experiments]

    async def search_models(filter_: str) -> list[str]:
        resp = await models.SearchLoggedModels(
            mpb.SearchLoggedModelsRequest(experiment_ids=[eid], filter=filter_), timeout=TIMEOUT
        )
        return [m.info.model_id for m in resp.models]

    w.searches = {
        "runs": search_runs,
        "experiments": search_experiments,
        "models": search_models,
    }
    return w


TARGETS = ("runs", "experiments", "models")


def cmp(w: World) -> str:
    return f"tags.t = '{w.value}'"


async def finds(w: World, target: str, filter_: str) -> bool:
    """Whether the search finds the module's entity (and nothing else of it)."""
    got = await w.searches[target](filter_)
    return w.ids[target] in got


async def rejected(w: World, target: str, filter_: str) -> str:
    """The description of the filter's violation; the call must be INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await w.searches[target](filter_)
    err: Any = exc.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert error_info(err).reason == "INVALID_PARAMETER_VALUE"
    found = violations(err)
    assert set(found) == {"filter"}, found
    return found["filter"]


def parens(n: int, inner: str) -> str:
    return "(" * n + inner + ")" * n


def nots(n: int, inner: str) -> str:
    return "NOT " * n + inner


def mixed(n: int, inner: str) -> str:
    """n levels alternating '(' and 'NOT ' (n even: n/2 of each)."""
    return "(NOT " * (n // 2) + inner + ")" * (n // 2)


@pytest.mark.parametrize("target", TARGETS)
async def test_nesting_up_to_the_limit_works(world: World, target: str) -> None:
    c = cmp(world)
    assert await finds(world, target, parens(MAX_NESTING, c))
    assert await finds(world, target, nots(MAX_NESTING, c))  # an even number of NOTs
    assert not await finds(world, target, nots(MAX_NESTING - 1, c))
    assert await finds(world, target, mixed(MAX_NESTING, c))
    assert await finds(world, target, parens(MAX_NESTING - 1, "NOT " + c) + " OR " + c)
    # Nesting counts depth, not the number of parentheses: siblings do not add up.
    assert await finds(world, target, " AND ".join([parens(MAX_NESTING, c)] * 20))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    "build",
    [
        lambda c: parens(MAX_NESTING + 1, c),
        lambda c: nots(MAX_NESTING + 1, c),
        lambda c: mixed(MAX_NESTING + 2, c),
        lambda c: parens(MAX_NESTING, "NOT " + c),
        lambda c: c + " AND " + parens(MAX_NESTING + 1, c),
        lambda c: parens(300, c),  # the example: RecursionError before
        lambda c: nots(1000, c),
        lambda c: "(" * FILTER_MAX,  # far past the limit, and unbalanced
        lambda c: ("NOT " * FILTER_MAX)[: FILTER_MAX - len(c)] + c,
        lambda c: "((" * (FILTER_MAX // 4) + ")" * (FILTER_MAX // 2),
    ],
    ids=[
        "parens+1",
        "nots+1",
        "mixed+2",
        "parens-then-not",
        "second-branch",
        "parens300",
        "nots1000",
        "open10000",
        "nots-to-the-length-limit",
        "open-and-close",
    ],
)
async def test_nesting_past_the_limit_is_invalid_argument_naming_it(
    world: World, target: str, build: Callable[[str], str]
) -> None:
    filter_ = build(cmp(world))
    assert len(filter_) <= FILTER_MAX
    description = await rejected(world, target, filter_)
    assert f"more than {MAX_NESTING} levels deep" in description, description
    assert f"the limit is {MAX_NESTING}" in description


def chain(w: World, op: str, limit: int = FILTER_MAX) -> str:
    """`cmp op cmp op ...` as long as fits in `limit` characters."""
    c = cmp(w)
    n = (limit + len(op) + 2) // (len(c) + len(op) + 2)
    filter_ = f" {op} ".join([c] * n)
    assert len(filter_) <= limit
    return filter_


def short_chain(op: str, limit: int = FILTER_MAX) -> str:
    """The most comparisons of one search's vocabulary that fit: `tags.a='b'OR tags.a=...`."""
    term = "tags.a='b'"
    n = (limit + len(op) + 1) // (len(term) + len(op) + 1)
    filter_ = f"{op} ".join([term] * n)
    assert len(filter_) <= limit
    return filter_


@pytest.mark.parametrize("target", TARGETS)
async def test_long_and_or_chains_work(world: World, target: str) -> None:
    c = cmp(world)
    assert await finds(world, target, chain(world, "AND"))
    assert await finds(world, target, chain(world, "OR"))
    # As many comparisons as 10,000 characters hold (over 700), on a key nothing has.
    assert not await finds(world, target, short_chain("OR"))
    assert not await finds(world, target, short_chain("AND"))
    assert await finds(world, target, short_chain("OR", FILTER_MAX - len(c) - 4) + " OR " + c)
    mixed_ops = " OR ".join(
        f"(tags.a = 'b{i}' AND NOT tags.t = 'x')" for i in range(FILTER_MAX // 40)
    )
    assert not await finds(world, target, mixed_ops[:FILTER_MAX].rsplit(" OR ", 1)[0])


@pytest.mark.parametrize("target", TARGETS)
async def test_a_chain_of_2000_terms_is_rejected_for_its_length(world: World, target: str) -> None:
    filter_ = " AND ".join([cmp(world)] * 2000)
    assert len(filter_) > FILTER_MAX
    description = await rejected(world, target, filter_)
    assert f"the limit is {FILTER_MAX}" in description, description


async def test_the_comparison_finds_exactly_the_module_entity(world: World) -> None:
    for target in TARGETS:
        assert await world.searches[target](cmp(world)) == [world.ids[target]]
