"""RunService.SearchRuns (and a little of ExperimentService.SearchExperiments): the filter
language, order_by, paging and errors, table-driven, through a real channel to a real
PostgreSQL.

One fixed data set is built once for the module in its own experiment (see `DATA`); each
case is a filter and the set of run names it must select, or a filter, an order_by and the
ordered list of run names it must return. In an expected order, a tuple of names stands for
runs that tie on every key including start_time, so the final tiebreak (run_id) orders them.
Tests that need runs of their own make them in further fresh experiments.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio

from helpers import error_info, new_experiment, new_run, unique, violations
from trackd.v1 import common_pb2 as cpb
from trackd.v1 import experiment_pb2 as xpb
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import metric_pb2, run_pb2
from trackd.v1 import run_service_pb2 as rpb

NAN = math.nan
INF = math.inf
T0 = 1_700_000_000_000  # start times are T0 + a few seconds

FINISHED = run_pb2.RUN_STATUS_FINISHED
FAILED = run_pb2.RUN_STATUS_FAILED
KILLED = run_pb2.RUN_STATUS_KILLED


@dataclass(frozen=True)
class Spec:
    """One run of the fixed data set."""

    name: str
    start: int  # seconds after T0
    user: str = "alice"
    status: int = 0  # 0: stays RUNNING
    end: int | None = None  # end_time, seconds after T0
    # (key, value, timestamp, step), logged in this order.
    metrics: tuple[tuple[str, float, int, int], ...] = ()
    params: tuple[tuple[str, str], ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    deleted: bool = False


# Latest `loss` (greatest (step, timestamp, value)):
#   alpha 0.5  beta NaN  gamma +Inf  delta -1.5  epsilon -  zeta 0.45  eta 0.35  theta 2.0
#   iota 0.5   (kappa 0.05, deleted)
# `acc`: alpha .8  beta .7  gamma .95  delta .6  epsilon .9  (kappa .99); the rest have none.
# `params.lr`: alpha 0.01  beta 0.001  gamma 0.1  delta 0.01  zeta 0.001  (kappa 0.01).
# `tags.stage`: alpha prod  beta dev  gamma Prod  delta staging  zeta prod-eu.
# start: alpha 1 < beta 2 < ... < eta 7 < theta 8 = iota 8 (tie: run_id decides), kappa 9.
DATA: tuple[Spec, ...] = (
    Spec(
        "alpha",
        1,
        status=FINISHED,
        end=100,
        metrics=(
            ("loss", 0.9, 1, 0),
            ("loss", 0.5, 2, 2),  # latest: highest step, though not logged last
            ("loss", 0.1, 3, 1),
            ("acc", 0.8, 1, 0),
            ("drift", 1.0, 1, 0),
        ),
        params=(("lr", "0.01"), ("opt", "adam"), ("model", "a_b")),
        tags=(("stage", "prod"), ("team name", "ML Ops"), ("note", "Привет мир")),
    ),
    Spec(
        "beta",
        2,
        metrics=(("loss", 0.3, 1, 0), ("loss", NAN, 2, 1), ("acc", 0.7, 1, 0)),
        params=(("lr", "0.001"), ("opt", "sgd"), ("model", "axb")),
        tags=(("stage", "dev"), ("note", "μ-test")),
    ),
    Spec(
        "gamma",
        3,
        user="carol",
        status=FAILED,
        end=200,
        metrics=(("loss", 0.2, 1, 0), ("loss", INF, 1, 1), ("acc", 0.95, 1, 0)),
        params=(("lr", "0.1"), ("opt", "Adam")),
        tags=(("stage", "Prod"),),
    ),
    Spec(
        "delta",
        4,
        metrics=(("loss", -1.5, 1, 0), ("acc", 0.6, 1, 0)),
        params=(("lr", "0.01"), ("model", "A_B")),
        tags=(("stage", "staging"), ("note", "ключ")),
    ),
    Spec(
        "epsilon",
        5,
        metrics=(("acc", 0.9, 1, 0), ("train.loss", 0.3, 1, 0)),
        params=(("opt", "adam"),),
        tags=(("note", "🚀 launch"), ("a.b", "dotted"), ("k:/-x", "odd")),
    ),
    Spec(
        "zeta",
        6,
        metrics=(
            ("loss", 0.4, 100, 5),
            ("loss", 0.45, 100, 5),  # same step and timestamp: the greater value wins
            ("loss", 0.99, 50, 5),
        ),
        params=(("lr", "0.001"),),
        tags=(("stage", "prod-eu"),),
    ),
    Spec(
        "eta",
        7,
        metrics=(
            ("loss", 0.7, 200, 3),
            ("loss", 0.35, 300, 3),  # same step: the later timestamp wins
            ("loss", 0.01, 999, 2),
            ("val loss", 0.25, 1, 0),
            ("val loss", 0.15, 2, 1),
        ),
        params=(("model", "a%b"),),
    ),
    Spec(
        "theta",
        8,
        user="bob",
        status=FINISHED,
        end=300,
        metrics=(("loss", 2.0, 1, 0), ("drift", -INF, 1, 0)),
        params=(("q", "x' OR '1'='1"), ("inj", "'); DROP TABLE runs; --")),
        tags=(
            ("sql", "a; DROP TABLE runs; --"),
            ("cmt", "/* c */ --"),
            ("bs", "back\\slash"),
            ("semi -- dash/x", "v"),
            ("quote", 'say "hi"'),
        ),
    ),
    Spec(
        "iota",
        8,
        user="bob",
        status=KILLED,
        metrics=(("loss", 0.5, 1, 7),),
        tags=(("bs", "backslash"),),
    ),
    Spec(
        "kappa",
        9,
        metrics=(("loss", 0.05, 1, 0), ("acc", 0.99, 1, 0)),
        params=(("lr", "0.01"),),
        tags=(("stage", "prod"),),
        deleted=True,
    ),
)

ACTIVE = frozenset(s.name for s in DATA if not s.deleted)
ALL = frozenset(s.name for s in DATA)


@dataclass(frozen=True)
class Fixture:
    """The built data set: its experiment and run ids by name."""

    experiment_id: str
    ids: dict[str, str]

    def names(self, run_ids: list[str]) -> list[str]:
        by_id = {v: k for k, v in self.ids.items()}
        return [by_id.get(r, r) for r in run_ids]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def data(experiments, runs) -> Fixture:  # type: ignore[no-untyped-def]
    eid = await new_experiment(experiments, unique("search"))
    ids: dict[str, str] = {}
    for spec in DATA:
        run = await new_run(
            runs, eid, run_name=spec.name, start_time=T0 + spec.start * 1000, user_id=spec.user
        )
        run_id = run.info.run_id
        ids[spec.name] = run_id
        await runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=run_id,
                metrics=[
                    metric_pb2.Metric(key=k, value=v, timestamp=t, step=s)
                    for k, v, t, s in spec.metrics
                ],
                params=[run_pb2.Param(key=k, value=v) for k, v in spec.params],
                tags=[run_pb2.RunTag(key=k, value=v) for k, v in spec.tags],
            )
        )
        if spec.status or spec.end is not None:
            await runs.UpdateRun(
                rpb.UpdateRunRequest(
                    run_id=run_id,
                    status=spec.status,
                    end_time=None if spec.end is None else T0 + spec.end * 1000,
                )
            )
        if spec.deleted:
            await runs.DeleteRun(rpb.DeleteRunRequest(run_id=run_id))
    return Fixture(eid, ids)


# -- helpers -----------------------------------------------------------------------------------


def fill(text: str, fx: Fixture) -> str:
    """Replaces `<id:name>` with the run id of `name` and `<id8:name>` with its first 8
    characters."""
    text = re.sub(r"<id:(\w+)>", lambda m: fx.ids[m.group(1)], text)
    return re.sub(r"<id8:(\w+)>", lambda m: fx.ids[m.group(1)][:8], text)


async def search(  # type: ignore[no-untyped-def]
    runs,
    experiment_ids: list[str],
    filter_: str = "",
    order_by: tuple[str, ...] | list[str] = (),
    max_results: int = 0,
    page_token: str = "",
    view: int = 0,
) -> rpb.SearchRunsResponse:
    return await runs.SearchRuns(
        rpb.SearchRunsRequest(
            experiment_ids=experiment_ids,
            filter=filter_,
            order_by=list(order_by),
            max_results=max_results,
            page_token=page_token,
            run_view_type=view,
        )
    )


async def search_all(  # type: ignore[no-untyped-def]
    runs,
    experiment_ids: list[str],
    filter_: str = "",
    order_by: tuple[str, ...] | list[str] = (),
    max_results: int = 0,
    view: int = 0,
) -> list[run_pb2.Run]:
    """Every page of a search, concatenated; each page but the last is full."""
    out: list[run_pb2.Run] = []
    token = ""
    for _ in range(1000):
        resp = await search(runs, experiment_ids, filter_, order_by, max_results, token, view)
        out.extend(resp.runs)
        token = resp.next_page_token
        if not token:
            return out
        if max_results:
            assert len(resp.runs) == max_results
    raise AssertionError("search never reached its last page")


def expand(expected: list[str | tuple[str, ...]], fx: Fixture) -> list[str]:
    """An expected order with tie groups (tuples) ordered by run_id."""
    out: list[str] = []
    for item in expected:
        if isinstance(item, tuple):
            out.extend(sorted(item, key=lambda n: fx.ids[n]))
        else:
            out.append(item)
    return out


async def fails(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    """The error of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    return exc.value


def assert_invalid(err: grpc.aio.AioRpcError, field: str | None = None) -> dict[str, str]:
    """An INVALID_ARGUMENT with reason INVALID_PARAMETER_VALUE (and a violation on `field`)."""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{err.code()}: {err.details()}"
    assert error_info(err).reason == "INVALID_PARAMETER_VALUE"
    found = violations(err)
    if field is not None:
        assert field in found, found
    return found


def token_json(token: str) -> dict:  # type: ignore[type-arg]
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def make_token(blob: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(blob).encode()).decode().rstrip("=")


# -- filters: which runs match -----------------------------------------------------------------

S = set[str]
FILTER_CASES: list[tuple[str, S]] = [
    # empty filter: every active run
    ("", set(ACTIVE)),
    ("   ", set(ACTIVE)),
    # metrics: the latest value, every comparator; NaN matches only !=, a missing one nothing
    ("metrics.loss = 0.5", {"alpha", "iota"}),
    ("metrics.loss = 0.1", set()),  # alpha's lowest, but not its latest
    ("metrics.loss = 0.45", {"zeta"}),  # same (step, ts): greatest value
    ("metrics.loss = 0.35", {"eta"}),  # same step: latest timestamp
    ("metrics.loss != 0.5", {"beta", "gamma", "delta", "zeta", "eta", "theta"}),
    ("metrics.loss < 0.5", {"delta", "zeta", "eta"}),
    ("metrics.loss <= 0.5", {"alpha", "iota", "delta", "zeta", "eta"}),
    ("metrics.loss > 0.5", {"gamma", "theta"}),
    ("metrics.loss >= 0.5", {"alpha", "iota", "gamma", "theta"}),
    ("metrics.loss > 1e308", {"gamma"}),  # +Inf
    ("metrics.loss >= 1e999", {"gamma"}),  # a literal overflowing to +Inf equals +Inf
    ("metrics.loss < 1e999", {"alpha", "iota", "delta", "zeta", "eta", "theta"}),
    ("metrics.loss < 0", {"delta"}),
    ("metrics.loss < -1.5", set()),
    ("metrics.loss <= -1.5", {"delta"}),
    ("metrics.loss = -1.5", {"delta"}),
    ("metrics.loss = -15e-1", {"delta"}),
    ("metrics.loss > -.5e1", {"alpha", "iota", "gamma", "delta", "zeta", "eta", "theta"}),
    ("metrics.loss <> 2", {"alpha", "iota", "beta", "gamma", "delta", "zeta", "eta"}),
    ("metrics.loss == 2", {"theta"}),
    ("metrics.loss != 2.0", {"alpha", "iota", "beta", "gamma", "delta", "zeta", "eta"}),
    ("metrics.drift < -1e308", {"theta"}),  # -Inf
    ("metrics.drift > -1e999", {"alpha"}),
    ("metrics.acc >= 0.9", {"gamma", "epsilon"}),
    ("metrics.acc != 0.8", {"beta", "gamma", "delta", "epsilon"}),  # runs without acc: no
    ("metrics.loss IS NULL", {"epsilon"}),
    ("metrics.loss IS NOT NULL", set(ACTIVE) - {"epsilon"}),
    ("metrics.missing IS NULL", set(ACTIVE)),
    ("metrics.missing != 0", set()),
    ("metrics.train.loss = 0.3", {"epsilon"}),  # a dotted key
    ('metrics."train.loss" < 1', {"epsilon"}),
    ("metrics.`val loss` < 0.2", {"eta"}),
    ('metrics."val loss" = 0.15', {"eta"}),  # latest of (0.25@0, 0.15@1)
    # metric summaries
    ("metrics.loss.min < 0.2", {"alpha", "delta", "eta"}),
    ("metrics.loss.min = 0.1", {"alpha"}),
    ("metrics.loss.max >= 0.9", {"alpha", "gamma", "zeta", "theta"}),
    ("metrics.loss.max > 1e308", {"gamma"}),
    ("metrics.loss.mean > 0.55", {"gamma", "zeta", "theta"}),
    ("metrics.loss.avg > 0.55", {"gamma", "zeta", "theta"}),
    ("metrics.loss.mean < 0", {"delta"}),
    ("metrics.loss.mean = 0.3", {"beta"}),  # NaN points stay out of the mean
    ("metrics.loss.count = 3", {"alpha", "zeta", "eta"}),
    ("metrics.loss.count = 1", {"delta", "theta", "iota"}),
    ("metrics.loss.count >= 1", set(ACTIVE) - {"epsilon"}),
    ("metrics.loss.nan_count = 1", {"beta"}),
    ("metrics.loss.last_step >= 5", {"zeta", "iota"}),
    ("metrics.loss.last_step = 2", {"alpha"}),
    ("metrics.loss.first_step = 2", {"eta"}),
    ("metrics.loss.latest = 0.5", {"alpha", "iota"}),
    ("metrics.loss.latest_step = 3", {"eta"}),
    ("metrics.loss.latest_timestamp = 300", {"eta"}),
    ("metrics.loss.MIN < 0.2", {"alpha", "delta", "eta"}),  # summary names ignore case
    ('metrics."val loss".min < 0.2', {"eta"}),
    ('metrics."val loss".max = 0.25', {"eta"}),
    ("metrics.`val loss`.count = 2", {"eta"}),
    ('metrics."loss".min = 0.1', {"alpha"}),
    ("metrics.loss.bogus > 0", set()),  # not a summary: the key "loss.bogus"
    ('metrics."loss.min" > 0', set()),  # a quoted key is never a summary
    # params: = != LIKE ILIKE IN NOT IN IS [NOT] NULL; a missing param matches no comparison
    ("params.lr = '0.01'", {"alpha", "delta"}),
    ('params.lr = "0.01"', {"alpha", "delta"}),
    ("params.lr != '0.01'", {"beta", "gamma", "zeta"}),
    ("params.lr IN ('0.1', '0.001')", {"beta", "gamma", "zeta"}),
    ("params.lr IN ('0.1')", {"gamma"}),
    ("params.lr NOT IN ('0.1', '0.001')", {"alpha", "delta"}),
    ("params.lr not in ('0.1', \"0.001\")", {"alpha", "delta"}),
    ("params.lr IS NULL", {"epsilon", "eta", "theta", "iota"}),
    ("params.lr IS NOT NULL", {"alpha", "beta", "gamma", "delta", "zeta"}),
    ("params.lr is not null", {"alpha", "beta", "gamma", "delta", "zeta"}),
    ("params.opt LIKE 'a%'", {"alpha", "epsilon"}),  # LIKE is case-sensitive
    ("params.opt LIKE 'A%'", {"gamma"}),
    ("params.opt ILIKE 'a%'", {"alpha", "gamma", "epsilon"}),  # ILIKE is not
    ("params.opt ILIKE 'ADAM'", {"alpha", "gamma", "epsilon"}),
    ("params.opt LIKE '_dam'", {"alpha", "gamma", "epsilon"}),
    ("params.opt LIKE 'ad_m'", {"alpha", "epsilon"}),
    ("params.opt LIKE 'adam_'", set()),
    ("params.opt LIKE '%'", {"alpha", "beta", "gamma", "epsilon"}),
    ("params.opt like 's%'", {"beta"}),
    ("params.opt = 'Adam'", {"gamma"}),
    ("params.opt = 'ADAM'", set()),
    ("params.model LIKE 'a_b'", {"alpha", "beta", "eta"}),  # _ is any one character
    ("params.model LIKE 'a\\_b'", {"alpha"}),  # \_ is a literal underscore
    ("params.model ILIKE 'a\\_b'", {"alpha", "delta"}),
    ("params.model LIKE 'a\\%b'", {"eta"}),  # \% is a literal percent sign
    ("params.model LIKE 'a%b'", {"alpha", "beta", "eta"}),
    ("params.model = 'a_b'", {"alpha"}),  # = takes no wildcards
    ("params.model = 'a%b'", {"eta"}),
    ("param.lr = '0.01'", {"alpha", "delta"}),
    ("parameters.lr = '0.01'", {"alpha", "delta"}),
    ("PARAMS.lr = '0.01'", {"alpha", "delta"}),
    ("params.LR = '0.01'", set()),  # keys are case-sensitive
    ("params.`lr` = '0.01'", {"alpha", "delta"}),
    ("params.\"lr\" = '0.01'", {"alpha", "delta"}),
    # tags: the same operators; quoted keys; unicode values
    ("tags.stage = 'prod'", {"alpha"}),
    ("tags.stage != 'prod'", {"beta", "gamma", "delta", "zeta"}),
    ("tags.stage LIKE 'prod%'", {"alpha", "zeta"}),
    ("tags.stage ILIKE 'prod%'", {"alpha", "gamma", "zeta"}),
    ("tags.stage ILIKE 'PROD'", {"alpha", "gamma"}),
    ("tags.stage IN ('dev', 'staging')", {"beta", "delta"}),
    ("tags.stage NOT IN ('dev', 'staging')", {"alpha", "gamma", "zeta"}),
    ("tags.stage IS NULL", {"epsilon", "eta", "theta", "iota"}),
    ("tags.stage IS NOT NULL", {"alpha", "beta", "gamma", "delta", "zeta"}),
    ("tag.stage = 'dev'", {"beta"}),
    ("tags.\"team name\" = 'ML Ops'", {"alpha"}),
    ("tags.`team name` = 'ML Ops'", {"alpha"}),
    ("tags.`team name` ILIKE 'ml ops'", {"alpha"}),
    ("tags.a.b = 'dotted'", {"epsilon"}),
    ("tags.`a.b` = 'dotted'", {"epsilon"}),
    ("tags.k:/-x = 'odd'", {"epsilon"}),
    ("tags.mlflow.runName = 'gamma'", {"gamma"}),  # the tag mirroring run_name
    ("tags.`mlflow.runName` IN ('alpha', 'kappa')", {"alpha"}),  # kappa is deleted
    ("tags.note = 'Привет мир'", {"alpha"}),
    ("tags.note LIKE 'При%'", {"alpha"}),
    ("tags.note LIKE '%мир'", {"alpha"}),
    ("tags.note = 'μ-test'", {"beta"}),
    ("tags.note LIKE '_-test'", {"beta"}),  # _ is one character, not one byte
    ('tags.note = "ключ"', {"delta"}),
    ("tags.note LIKE '%🚀%'", {"epsilon"}),
    ("tags.note LIKE '🚀 _aunch'", {"epsilon"}),
    ("tags.\"ключ\" = 'x'", set()),  # a key no run can have is no error
    ("tags.`μ` IS NULL", set(ACTIVE)),
    ("tags.quote = 'say \"hi\"'", {"theta"}),
    ('tags.quote = "say ""hi"""', {"theta"}),
    ('tags.quote = "say \\"hi\\""', {"theta"}),
    ("tags.quote LIKE '%\"hi\"'", {"theta"}),
    # backslashes: kept as written in values; LIKE's escape character
    ("tags.bs = 'back\\slash'", {"theta"}),
    ("tags.bs LIKE 'back\\\\slash'", {"theta"}),  # \\ is a literal backslash in LIKE
    ("tags.bs LIKE 'back\\slash'", {"iota"}),  # \s is a plain s in LIKE
    ("tags.bs LIKE 'back%slash'", {"theta", "iota"}),
    # string attributes
    ("run_name = 'alpha'", {"alpha"}),
    ("attributes.run_name = 'alpha'", {"alpha"}),
    ("attributes.run_name != 'alpha'", set(ACTIVE) - {"alpha"}),
    ("attributes.run_name LIKE '%eta'", {"beta", "zeta", "eta", "theta"}),
    ("attributes.run_name ILIKE 'ALPHA'", {"alpha"}),
    ("attributes.run_name LIKE 'ALPHA'", set()),
    ("run_name IN ('alpha', 'beta', 'kappa')", {"alpha", "beta"}),
    ("run_name NOT IN ('alpha', 'beta')", set(ACTIVE) - {"alpha", "beta"}),
    ("run_name = 'kappa'", set()),  # deleted
    ("status = 'FINISHED'", {"alpha", "theta"}),
    ("attributes.status = 'FAILED'", {"gamma"}),
    ("attributes.status != 'RUNNING'", {"alpha", "gamma", "theta", "iota"}),
    ("status IN ('FAILED', 'KILLED')", {"gamma", "iota"}),
    ("status LIKE 'F%'", {"alpha", "gamma", "theta"}),
    ("status ILIKE 'running'", {"beta", "delta", "epsilon", "zeta", "eta"}),
    ("user_id = 'bob'", {"theta", "iota"}),
    ("attributes.user_id != 'alice'", {"gamma", "theta", "iota"}),
    ("user_id LIKE 'c%'", {"gamma"}),
    ("attributes.run_id = '<id:alpha>'", {"alpha"}),
    ("run_id = '<id:beta>'", {"beta"}),
    ("attributes.run_id IN ('<id:alpha>', '<id:gamma>', '<id:kappa>')", {"alpha", "gamma"}),
    ("attributes.run_id NOT IN ('<id:alpha>', '<id:gamma>')", set(ACTIVE) - {"alpha", "gamma"}),
    ("attributes.run_id != '<id:alpha>'", set(ACTIVE) - {"alpha"}),
    ("attributes.run_id LIKE '<id8:delta>%'", {"delta"}),
    ("attributes.run_id = 'not-a-run-id'", set()),
    ("attributes.run_id IN ('nope', '<id:eta>')", {"eta"}),
    ("attributes.run_id != 'nope'", set(ACTIVE)),
    ("attributes.artifact_uri LIKE '%<id:zeta>%'", {"zeta"}),
    # numeric attributes
    (f"attributes.start_time = {T0 + 1000}", {"alpha"}),
    (f"start_time > {T0 + 7000}", {"theta", "iota"}),
    (f"start_time >= {T0 + 7000}", {"eta", "theta", "iota"}),
    (f"start_time < {T0 + 3000}", {"alpha", "beta"}),
    (f"start_time <= {T0 + 2000}", {"alpha", "beta"}),
    (f"start_time != {T0 + 8000}", set(ACTIVE) - {"theta", "iota"}),
    (f"start_time > {T0 + 7000}.5", {"theta", "iota"}),  # a fractional bound
    (f"start_time < {T0 + 1000}.5", {"alpha"}),
    (f"created = {T0 + 8000}", {"theta", "iota"}),
    (f"attributes.created < {T0 + 2000}", {"alpha"}),
    ("attributes.end_time IS NULL", {"beta", "delta", "epsilon", "zeta", "eta", "iota"}),
    ("end_time IS NOT NULL", {"alpha", "gamma", "theta"}),
    (f"end_time > {T0 + 150_000}", {"gamma", "theta"}),
    (f"end_time != {T0 + 100_000}", {"gamma", "theta"}),  # a NULL end_time matches nothing
    # prefix aliases and bare names
    ("metric.loss = 2", {"theta"}),
    ("attribute.status = 'KILLED'", {"iota"}),
    ("attr.status = 'KILLED'", {"iota"}),
    ("run.status = 'KILLED'", {"iota"}),
    ("ATTRIBUTES.STATUS = 'KILLED'", {"iota"}),
    ("Metrics.loss = 2", {"theta"}),
    # white space is optional around operators and free-form elsewhere
    ("params.lr='0.01'", {"alpha", "delta"}),
    ("metrics.loss>=0.5", {"alpha", "iota", "gamma", "theta"}),
    ("metrics.loss>-1", {"alpha", "iota", "gamma", "zeta", "eta", "theta"}),
    ("params.lr IN('0.1','0.001')", {"beta", "gamma", "zeta"}),
    ("(tags.stage='dev')OR(tags.stage='staging')", {"beta", "delta"}),
    ("\n\tparams.lr\n=\t'0.01'\r\nAND\ttags.stage = 'prod'  ", {"alpha"}),
    # keywords are case-insensitive
    ("params.lr = '0.01' and tags.stage = 'prod'", {"alpha"}),
    ("params.lr = '0.01' AND tags.stage = 'prod'", {"alpha"}),
    ("params.lr = '0.01' AnD tags.stage = 'prod'", {"alpha"}),
    ("tags.stage = 'dev' or tags.stage = 'staging'", {"beta", "delta"}),
    ("not tags.stage = 'dev' and tags.stage is not null", {"alpha", "gamma", "delta", "zeta"}),
    # datasets: no run of this data set consumed one, so every comparison is false (runs
    # with datasets are searched in test_datasets.py)
    ("datasets.name = 'x'", set()),
    ("dataset.digest IN ('x', 'y')", set()),
    ("datasets.context LIKE 'train%'", set()),
    ("NOT datasets.name = 'x'", set(ACTIVE)),
    # OR, NOT, parentheses and precedence (NOT > AND > OR)
    ("metrics.loss < 0.4 OR params.opt = 'sgd'", {"delta", "eta", "beta"}),
    ("params.lr = '0.01' OR params.lr = '0.1' AND tags.stage = 'dev'", {"alpha", "delta"}),
    ("(params.lr = '0.01' OR params.lr = '0.1') AND tags.stage = 'Prod'", {"gamma"}),
    (
        "params.lr = '0.1' AND tags.stage = 'Prod' OR params.lr = '0.01'",
        {"gamma", "alpha", "delta"},
    ),
    ("params.lr = '0.1' AND (tags.stage = 'dev' OR params.lr = '0.01')", set()),
    ("NOT params.lr = '0.01'", set(ACTIVE) - {"alpha", "delta"}),  # includes runs without lr
    ("NOT params.lr = '0.01' AND params.lr IS NOT NULL", {"beta", "gamma", "zeta"}),
    ("NOT (params.lr = '0.01' OR params.lr IS NULL)", {"beta", "gamma", "zeta"}),
    ("NOT params.lr = '0.01' OR params.lr IS NULL", set(ACTIVE) - {"alpha", "delta"}),
    ("NOT NOT tags.stage = 'dev'", {"beta"}),
    ("NOT metrics.loss > 0.5", set(ACTIVE) - {"gamma", "theta"}),  # NaN and missing included
    ("NOT metrics.loss != 0.5", {"alpha", "iota", "epsilon"}),
    ("((tags.stage = 'dev'))", {"beta"}),
    ("(tags.stage = 'dev') OR (tags.stage = 'prod' AND metrics.acc > 0.5)", {"alpha", "beta"}),
    (
        "metrics.acc > 0.65 AND (params.opt ILIKE 'adam' OR NOT tags.stage LIKE 'd%')",
        {"alpha", "gamma", "epsilon"},
    ),
    (
        "status = 'FINISHED' OR status = 'FAILED' OR status = 'KILLED'",
        {"alpha", "gamma", "theta", "iota"},
    ),
    (
        f"start_time >= {T0 + 8000} AND (user_id = 'bob' AND NOT status = 'KILLED')",
        {"theta"},
    ),
]


@pytest.mark.parametrize(("filter_", "expected"), FILTER_CASES)
async def test_filter(runs, data: Fixture, filter_: str, expected: S) -> None:
    resp = await search(runs, [data.experiment_id], fill(filter_, data))
    got = data.names([r.info.run_id for r in resp.runs])
    assert len(got) == len(set(got))
    assert set(got) == expected
    assert not resp.next_page_token


# -- run_view_type -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("view", "filter_", "expected"),
    [
        (cpb.VIEW_TYPE_UNSPECIFIED, "", set(ACTIVE)),
        (cpb.VIEW_TYPE_ACTIVE_ONLY, "", set(ACTIVE)),
        (cpb.VIEW_TYPE_DELETED_ONLY, "", {"kappa"}),
        (cpb.VIEW_TYPE_ALL, "", set(ALL)),
        (cpb.VIEW_TYPE_ALL, "params.lr = '0.01'", {"alpha", "delta", "kappa"}),
        (cpb.VIEW_TYPE_ALL, "metrics.loss < 0.1", {"delta", "kappa"}),
        (cpb.VIEW_TYPE_DELETED_ONLY, "metrics.acc > 0.5", {"kappa"}),
        (cpb.VIEW_TYPE_DELETED_ONLY, "tags.stage != 'prod'", set()),
    ],
)
async def test_view_type(runs, data: Fixture, view: int, filter_: str, expected: S) -> None:
    resp = await search(runs, [data.experiment_id], filter_, view=view)
    assert set(data.names([r.info.run_id for r in resp.runs])) == expected


# -- order_by ----------------------------------------------------------------------------------

# Runs that tie on start_time come by run_id; the default order is start_time DESC.
BY_START_DESC: list[str | tuple[str, ...]] = [
    ("theta", "iota"),
    "eta",
    "zeta",
    "epsilon",
    "delta",
    "gamma",
    "beta",
    "alpha",
]
ORDER_CASES: list[tuple[str, tuple[str, ...], list[str | tuple[str, ...]]]] = [
    ("", (), BY_START_DESC),
    ("", ("",), BY_START_DESC),  # an empty clause is skipped
    ("", ("attributes.start_time DESC",), BY_START_DESC),
    (
        "",
        ("start_time ASC",),
        ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", ("theta", "iota")],
    ),
    (
        "",
        ("attributes.created asc",),
        ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", ("theta", "iota")],
    ),
    # metrics: missing values last in both directions
    (
        "",
        ("metrics.acc DESC",),
        ["gamma", "epsilon", "alpha", "beta", "delta", ("theta", "iota"), "eta", "zeta"],
    ),
    (
        "",
        ("metrics.acc",),
        ["delta", "beta", "alpha", "epsilon", "gamma", ("theta", "iota"), "eta", "zeta"],
    ),
    (
        "",
        ("metrics.acc ASC",),
        ["delta", "beta", "alpha", "epsilon", "gamma", ("theta", "iota"), "eta", "zeta"],
    ),
    # NaN after every number and before the missing values, in both directions (MLflow);
    # alpha and iota tie on 0.5: start_time DESC
    (
        "",
        ("metrics.loss ASC",),
        ["delta", "eta", "zeta", "iota", "alpha", "theta", "gamma", "beta", "epsilon"],
    ),
    (
        "",
        ("metrics.loss DESC",),
        ["gamma", "theta", "iota", "alpha", "zeta", "eta", "delta", "beta", "epsilon"],
    ),
    (
        "",
        ("metrics.loss.min",),
        ["delta", "eta", "alpha", "gamma", "beta", "zeta", "iota", "theta", "epsilon"],
    ),
    (
        "",
        ("metrics.loss.count DESC", "metrics.loss.min"),
        ["eta", "alpha", "zeta", "gamma", "beta", "delta", "iota", "theta", "epsilon"],
    ),
    (
        "",
        ('metrics."val loss".min DESC',),
        ["eta", ("theta", "iota"), "zeta", "epsilon", "delta", "gamma", "beta", "alpha"],
    ),
    ("params.lr IS NOT NULL", ("metrics.loss DESC",), ["gamma", "alpha", "zeta", "delta", "beta"]),
    # params and tags: strings; missing last
    (
        "",
        ("params.lr",),
        ["zeta", "beta", "delta", "alpha", "gamma", ("theta", "iota"), "eta", "epsilon"],
    ),
    (
        "",
        ("params.lr DESC",),
        ["gamma", "delta", "alpha", "zeta", "beta", ("theta", "iota"), "eta", "epsilon"],
    ),
    (
        "",
        ("param.lr DESC", "metrics.acc DESC"),
        ["gamma", "alpha", "delta", "beta", "zeta", "epsilon", ("theta", "iota"), "eta"],
    ),
    (
        "",
        ("tags.mlflow.runName",),
        ["alpha", "beta", "delta", "epsilon", "eta", "gamma", "iota", "theta", "zeta"],
    ),
    ("tags.stage IS NOT NULL", ("tags.`stage` DESC", "run_name"), None),  # see test_order_by
    # attributes
    (
        "",
        ("attributes.run_name DESC",),
        ["zeta", "theta", "iota", "gamma", "eta", "epsilon", "delta", "beta", "alpha"],
    ),
    (
        "",
        ("attr.end_time DESC",),
        ["theta", "gamma", "alpha", "iota", "eta", "zeta", "epsilon", "delta", "beta"],
    ),
    (
        "",
        ("end_time",),
        ["alpha", "gamma", "theta", "iota", "eta", "zeta", "epsilon", "delta", "beta"],
    ),
    (
        "",
        ("status", "start_time ASC"),
        ["gamma", "alpha", "theta", "iota", "beta", "delta", "epsilon", "zeta", "eta"],
    ),
    (
        "",
        ("user_id DESC", "run_name"),
        ["gamma", "iota", "theta", "alpha", "beta", "delta", "epsilon", "eta", "zeta"],
    ),
    ("", ("attributes.run_id",), None),  # see test_order_by
    ("user_id = 'bob'", ("run_name",), ["iota", "theta"]),
    ("user_id = 'bob'", ("metrics.acc",), [("theta", "iota")]),
]


@pytest.mark.parametrize(("filter_", "order_by", "expected"), ORDER_CASES)
async def test_order_by(
    runs,
    data: Fixture,
    filter_: str,
    order_by: tuple[str, ...],
    expected: list[str | tuple[str, ...]] | None,
) -> None:
    resp = await search(runs, [data.experiment_id], filter_, order_by)
    got = data.names([r.info.run_id for r in resp.runs])
    if expected is None:
        if order_by == ("attributes.run_id",):
            want = sorted(ACTIVE, key=lambda n: data.ids[n])
        else:  # tags.stage DESC in the database's collation: check the shape only
            stages = {
                "alpha": "prod",
                "beta": "dev",
                "gamma": "Prod",
                "delta": "staging",
                "zeta": "prod-eu",
            }
            assert set(got) == set(stages)
            values = [stages[n] for n in got]
            assert len(set(values)) == len(values)
            return
        assert got == want
        return
    assert got == expand(expected, data)


# -- paging ------------------------------------------------------------------------------------

PAGING_CASES: list[tuple[str, tuple[str, ...]]] = [
    ("", ()),
    ("", ("metrics.loss DESC",)),
    ("", ("metrics.loss ASC",)),
    ("", ("metrics.acc DESC",)),
    ("", ("metrics.loss.mean",)),
    ("", ("params.lr", "metrics.acc DESC")),
    ("", ("tags.stage DESC",)),
    ("", ("end_time DESC",)),
    ("", ("status", "user_id DESC")),
    ("", ("run_name",)),
    ("", ("attributes.run_id DESC",)),
    ("metrics.loss IS NOT NULL", ("metrics.loss DESC", "params.lr")),
    ("tags.stage IS NULL OR metrics.acc > 0.65", ("metrics.acc",)),
]


@pytest.mark.parametrize(("filter_", "order_by"), PAGING_CASES)
@pytest.mark.parametrize("size", [1, 2, 4])
async def test_paging_matches_one_page(
    runs, data: Fixture, filter_: str, order_by: tuple[str, ...], size: int
) -> None:
    whole = await search(runs, [data.experiment_id], filter_, order_by, max_results=1000)
    assert not whole.next_page_token
    paged = await search_all(runs, [data.experiment_id], filter_, order_by, max_results=size)
    assert [r.info.run_id for r in paged] == [r.info.run_id for r in whole.runs]


async def test_paging_across_view_all(runs, data: Fixture) -> None:
    whole = await search(runs, [data.experiment_id], "", ("metrics.loss",), view=cpb.VIEW_TYPE_ALL)
    paged = await search_all(
        runs, [data.experiment_id], "", ("metrics.loss",), 3, view=cpb.VIEW_TYPE_ALL
    )
    assert [r.info.run_id for r in paged] == [r.info.run_id for r in whole.runs]
    assert set(data.names([r.info.run_id for r in paged])) == set(ALL)


async def test_exact_page_boundary_has_no_empty_page(runs, data: Fixture) -> None:
    first = await search(runs, [data.experiment_id], "", (), max_results=len(ACTIVE))
    assert len(first.runs) == len(ACTIVE)
    assert not first.next_page_token
    first = await search(runs, [data.experiment_id], "", (), max_results=len(ACTIVE) - 1)
    assert first.next_page_token
    last = await search(
        runs,
        [data.experiment_id],
        "",
        (),
        max_results=len(ACTIVE) - 1,
        page_token=first.next_page_token,
    )
    assert len(last.runs) == 1
    assert not last.next_page_token


@pytest.mark.parametrize(
    "order_by",
    [(), ("metrics.m DESC",), ("metrics.m",), ("params.p",), ("start_time ASC",)],
)
async def test_paging_while_runs_are_created(experiments, runs, order_by: tuple[str, ...]) -> None:
    """New runs created between pages, before, at and after the page position: no run is
    returned twice and none of the runs that existed at the start is missed."""
    eid = await new_experiment(experiments)
    base = T0 + 10_000_000

    async def make(i: int, start: int) -> str:
        run = await new_run(runs, eid, run_name=f"r{i}", start_time=start)
        await runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=run.info.run_id,
                metrics=[metric_pb2.Metric(key="m", value=float(i % 7), timestamp=1)],
                params=[run_pb2.Param(key="p", value=f"v{i % 5}")],
            )
        )
        return str(run.info.run_id)

    existing = {await make(i, base + (i // 2) * 1000) for i in range(12)}
    seen: list[str] = []
    token = ""
    extra = 100
    for _ in range(100):
        resp = await search(runs, [eid], "", order_by, max_results=3, page_token=token)
        seen.extend(r.info.run_id for r in resp.runs)
        token = resp.next_page_token
        if not token:
            break
        last = resp.runs[-1].info.start_time
        # One run sorting before everything, one tying the page's last start time, one after.
        for start in (base + 100_000, last, base - 100_000):
            await make(extra, start)
            extra += 1
    else:
        raise AssertionError("paging never ended")
    assert len(seen) == len(set(seen))
    assert existing <= set(seen)


async def test_token_bound_to_query(runs, data: Fixture) -> None:
    eid = data.experiment_id
    first = await search(runs, [eid], "metrics.loss > 0", ("metrics.loss DESC",), max_results=2)
    token = first.next_page_token
    assert token
    ok = await search(runs, [eid], "metrics.loss > 0", ("metrics.loss DESC",), 2, token)
    assert ok.runs
    for filter_, order_by, eids, view in [
        ("metrics.loss > 1", ("metrics.loss DESC",), [eid], 0),
        ("", ("metrics.loss DESC",), [eid], 0),
        ("metrics.loss > 0", ("metrics.loss ASC",), [eid], 0),
        ("metrics.loss > 0", ("metrics.acc DESC",), [eid], 0),
        ("metrics.loss > 0", (), [eid], 0),
        ("metrics.loss > 0", ("metrics.loss DESC",), [eid, "0"], 0),
        ("metrics.loss > 0", ("metrics.loss DESC",), [eid], cpb.VIEW_TYPE_ALL),
    ]:
        err = await fails(search(runs, eids, filter_, order_by, 2, token, view))
        assert_invalid(err, "page_token")
    # A different page size is fine.
    again = await search(runs, [eid], "metrics.loss > 0", ("metrics.loss DESC",), 1, token)
    assert again.runs[0].info.run_id == ok.runs[0].info.run_id


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!!",
        "e30",  # {}
        make_token({"q": "0123456789abcdef", "p": []}),
        make_token([1, 2]),
        "a" * 5000,
    ],
)
async def test_garbage_token(runs, data: Fixture, token: str) -> None:
    err = await fails(search(runs, [data.experiment_id], "", (), 2, token))
    assert_invalid(err, "page_token")


@pytest.mark.parametrize(
    "position",
    [
        [],  # too short
        [["s", "x"], ["s", "y"], ["s", "z"], ["s", "w"]],  # too long
        [["s", "not a number"], ["s", "nope"]],  # wrong types for (start_time, run_id)
        [["i", 1], ["i", 2]],  # an int for a run id
        [["f", 0], ["s", "0123456789abcdef0123456789abcdef"]],  # a float for a bigint
        [["i", 2**70], ["u", "0123456789abcdef0123456789abcdef"]],  # out of range
        [["x", 1], ["n"]],  # unknown tag
        [["i"], ["n"]],
        "not a list",
    ],
)
async def test_forged_token_position(runs, data: Fixture, position: object) -> None:
    """A token with the right query digest but a position that is not one the server made:
    INVALID_ARGUMENT on page_token, never INTERNAL."""
    first = await search(runs, [data.experiment_id], "", (), 2)
    blob = token_json(first.next_page_token)
    blob["p"] = position
    err = await fails(search(runs, [data.experiment_id], "", (), 2, make_token(blob)))
    assert_invalid(err, "page_token")


async def test_forged_token_with_valid_values_is_a_position(runs, data: Fixture) -> None:
    """A hand-written position of the right types simply pages from there."""
    first = await search(runs, [data.experiment_id], "", ("run_name",), 2)
    blob = token_json(first.next_page_token)
    blob["p"] = [["s", "eta"], ["i", T0 + 7000], ["u", data.ids["eta"]]]
    rest = await search(runs, [data.experiment_id], "", ("run_name",), 100, make_token(blob))
    assert data.names([r.info.run_id for r in rest.runs]) == ["gamma", "iota", "theta", "zeta"]


async def test_max_results(experiments, runs, data: Fixture) -> None:
    eid = data.experiment_id
    assert len((await search(runs, [eid], max_results=0)).runs) == len(ACTIVE)
    assert len((await search(runs, [eid], max_results=50_000)).runs) == len(ACTIVE)
    for bad in (50_001, -1, 2**31 - 1, -(2**31)):
        assert_invalid(await fails(search(runs, [eid], max_results=bad)), "max_results")


async def test_default_page_size_is_1000(experiments, runs) -> None:
    eid = await new_experiment(experiments)
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with sem:
            await new_run(runs, eid, run_name=f"n{i}", start_time=T0 + i)

    await asyncio.gather(*(one(i) for i in range(1001)))
    first = await search(runs, [eid])
    assert len(first.runs) == 1000
    assert first.next_page_token
    rest = await search(runs, [eid], page_token=first.next_page_token)
    assert len(rest.runs) == 1
    assert not rest.next_page_token
    names = [r.info.run_name for r in [*first.runs, *rest.runs]]
    assert names == [f"n{i}" for i in reversed(range(1001))]


@pytest.mark.parametrize(
    ("experiment_ids", "field"),
    [
        ([], "experiment_ids"),
        (["abc"], "experiment_ids[0]"),
        (["1", "-1"], "experiment_ids[1]"),
        (["1"] * 101, "experiment_ids"),
    ],
)
async def test_bad_experiment_ids(runs, experiment_ids: list[str], field: str) -> None:
    assert_invalid(await fails(search(runs, experiment_ids)), field)


async def test_several_and_unknown_experiments(experiments, runs, data: Fixture) -> None:
    other = await new_experiment(experiments)
    run = await new_run(runs, other, run_name="other", start_time=T0 + 20_000)
    resp = await search(runs, [data.experiment_id, other, "987654321"], "", ("start_time DESC",))
    assert resp.runs[0].info.run_id == run.info.run_id
    assert len(resp.runs) == len(ACTIVE) + 1
    assert not (await search(runs, ["987654321"])).runs
    # The same experiment twice is the same search.
    twice = await search(runs, [data.experiment_id, data.experiment_id])
    assert len(twice.runs) == len(ACTIVE)


# -- the data of each run ----------------------------------------------------------------------


def canonical(run: run_pb2.Run) -> bytes:
    """A Run's bytes with its repeated data in key order (NaN-safe equality)."""
    copy = run_pb2.Run()
    copy.CopyFrom(run)
    if copy.info.status == run_pb2.RUN_STATUS_RUNNING:
        copy.info.ClearField("duration")  # grows with the server's clock between reads
    for field in ("metrics", "params", "tags", "metric_summaries"):
        items = sorted(getattr(copy.data, field), key=lambda x: x.key)
        del getattr(copy.data, field)[:]
        getattr(copy.data, field).extend(items)
    return copy.SerializeToString(deterministic=True)


async def test_search_returns_run_data(runs, data: Fixture) -> None:
    resp = await search(runs, [data.experiment_id], view=cpb.VIEW_TYPE_ALL)
    assert len(resp.runs) == len(ALL)
    for run in resp.runs:
        got = (await runs.GetRun(rpb.GetRunRequest(run_id=run.info.run_id))).run
        assert canonical(run) == canonical(got), run.info.run_name
    by_name = {r.info.run_name: r for r in resp.runs}
    specs = {s.name: s for s in DATA}
    for name, run in by_name.items():
        spec = specs[name]
        assert dict((p.key, p.value) for p in run.data.params) == dict(spec.params)
        tags = {t.key: t.value for t in run.data.tags}
        assert {k: tags.get(k) for k, _ in spec.tags} == dict(spec.tags)
        assert tags.get("mlflow.runName") == name
        assert {m.key for m in run.data.metrics} == {k for k, *_ in spec.metrics}
        assert {m.key for m in run.data.metric_summaries} == {k for k, *_ in spec.metrics}
        assert run.info.start_time == T0 + spec.start * 1000
        assert run.info.user_id == spec.user
        assert run.info.experiment_id == data.experiment_id
    alpha = by_name["alpha"]
    assert alpha.info.status == FINISHED
    assert alpha.info.end_time == T0 + 100_000
    loss = next(m for m in alpha.data.metrics if m.key == "loss")
    assert (loss.value, loss.step, loss.timestamp) == (0.5, 2, 2)
    s = next(m for m in alpha.data.metric_summaries if m.key == "loss")
    assert (s.count, s.nan_count, s.min, s.max, s.first_step, s.last_step) == (3, 0, 0.1, 0.9, 0, 2)
    assert s.mean == pytest.approx(0.5)
    assert (s.latest_value, s.latest_step, s.latest_timestamp) == (0.5, 2, 2)
    beta_loss = next(m for m in by_name["beta"].data.metrics if m.key == "loss")
    assert math.isnan(beta_loss.value)
    gamma_loss = next(m for m in by_name["gamma"].data.metric_summaries if m.key == "loss")
    assert gamma_loss.max == INF and gamma_loss.mean == INF and gamma_loss.latest_value == INF
    zeta_loss = next(m for m in by_name["zeta"].data.metrics if m.key == "loss")
    assert (zeta_loss.value, zeta_loss.timestamp, zeta_loss.step) == (0.45, 100, 5)
    eta_loss = next(m for m in by_name["eta"].data.metrics if m.key == "loss")
    assert (eta_loss.value, eta_loss.timestamp, eta_loss.step) == (0.35, 300, 3)
    assert by_name["kappa"].info.lifecycle_stage == cpb.LIFECYCLE_STAGE_DELETED
    assert {t.key: t.value for t in by_name["theta"].data.tags}["bs"] == "back\\slash"


# -- errors ------------------------------------------------------------------------------------

# (filter, exact description of the `filter` violation, or a fragment of it prefixed "~")
ERROR_CASES: list[tuple[str, str]] = [
    ("metrics.acc", "expected a comparator after 'metrics.acc' at the end of the filter"),
    ("metrics.acc >", "expected a number after 'metrics.acc >' at the end of the filter"),
    ("metrics.acc > 'x'", "expected a number after 'metrics.acc >' at column 15, found \"'x'\""),
    ("metrics.acc ~ 1", "unexpected character '~' at column 13"),
    ("metrics.acc LIKE 'x'", "LIKE applies to strings; metrics.acc is numeric (column 13)"),
    ("metrics.acc ILIKE 'x'", "~ILIKE applies to strings"),
    ("metrics.acc IN ('1')", "IN applies to strings; metrics.acc is numeric (column 13)"),
    ("start_time LIKE '1%'", "~LIKE applies to strings; start_time is numeric"),
    ("start_time = '1'", "~expected a number after 'start_time ='"),
    ("start_time IS NULL", "~start_time cannot be NULL"),
    ("run_name IS NOT NULL", "~run_name cannot be NULL"),
    ("datasets.name IS NULL", "~datasets.name cannot be NULL"),
    (
        "params.lr LIKE 0.01",
        "expected a quoted string after 'params.lr LIKE' at column 16, found '0.01'",
    ),
    (
        "params.lr < '0.01'",
        "< does not apply to params.lr, a string; use =, !=, LIKE, ILIKE or IN (column 11); "
        "an INT or DOUBLE param compares by value with an unquoted number, as in "
        "params.lr < 0.01",
    ),
    ("params.lr < '1'", "~< does not apply to params.lr, a string"),
    ("tags.x >= 'a'", "~>= does not apply to tags.x, a string"),
    ("status > 'A'", "~> does not apply to status, a string"),
    ("params.lr IN '0.1'", "~expected '(' to open the IN list"),
    ("params.lr IN ()", "~expected a quoted string after '('"),
    ("params.lr IN ('a',)", "~expected a quoted string after ','"),
    ("params.lr IN ('a' 'b')", "~expected ',' or ')' in the IN list"),
    ("params.lr IN ('a'", "~expected ',' or ')' in the IN list at the end of the filter"),
    ("params.lr IS 'x'", "~expected NULL after 'params.lr IS'"),
    ("params.lr IS NOT", "~expected NULL after 'params.lr IS NOT'"),
    ("params.lr LIKE", "~expected a quoted string after 'params.lr LIKE'"),
    ("foo = 1", "~unknown attribute 'foo' at column 1"),
    ("bogus.x = 1", "~unknown prefix 'bogus.' at column 1"),
    ("metrics.x > 1 AND bogus.x = 1", "~unknown prefix 'bogus.' at column 19"),
    ("datasets.bogus = 'x'", "~unknown dataset field 'bogus'"),
    ('metrics."val loss".bogus > 1', "~unknown metric summary 'bogus' at column 19"),
    ("tags.`a`.min = 'x'", "~only metrics have summaries"),
    ("tags. `a` = 'x'", "~expected a key after 'tags.'"),
    ("tags. = 'x'", "~expected a key after 'tags.'"),
    ('"tags".x = 1', "~a quoted key needs a prefix"),
    ("'x' = 'x'", "~expected an identifier"),
    ("1 = 1", "~expected an identifier"),
    ("AND = 1", "~found the keyword 'AND'"),
    ("metrics.x > 1 AND", "expected a comparison at the end of the filter"),
    ("metrics.x > 1 OR", "expected a comparison at the end of the filter"),
    ("NOT", "expected a comparison at the end of the filter"),
    ("(metrics.acc > 1", "~expected ')' at the end of the filter"),
    ("()", "~expected an identifier"),
    ("metrics.acc > 1)", "expected AND, OR or the end of the filter at column 16, found ')'"),
    ("metrics.acc > 1 metrics.acc < 2", "~expected AND, OR or the end of the filter at column 17"),
    ("metrics.acc > 1 && metrics.acc < 2", "~unexpected character '&' at column 17"),
    ("tags.x = 'abc", "unterminated quote ' starting at column 10"),
    ('tags.x = "abc', '~unterminated quote " starting at column 10'),
    ("tags.`x = 'a'", "~unterminated quote ` starting at column 6"),
    ("tags.x = 'abc\\'", "~unterminated quote ' starting at column 10"),
    ("tags.ключ = 'x'", "~unexpected character 'к' at column 6"),
    ("metrics.acc > 1 ; DROP TABLE runs", "~unexpected character ';' at column 17"),
    ("tags.x = 'a' /* c */", "~unexpected character '/' at column 14"),
    ("metrics.acc > 1 -- c", "~at column 17"),
    ("metrics.loss < 1 OR 1=1", "~expected an identifier"),
    ("metrics.acc > 1 AND ", "expected a comparison at the end of the filter"),
    ("metrics.acc >= 1e", "~"),
    ("x" * 10_001, "is 10001 characters long; the limit is 10000"),
]


@pytest.mark.parametrize(("filter_", "expected"), ERROR_CASES)
async def test_malformed_filter(runs, data: Fixture, filter_: str, expected: str) -> None:
    err = await fails(search(runs, [data.experiment_id], filter_))
    found = assert_invalid(err, "filter")
    if expected.startswith("~"):
        assert expected[1:] in found["filter"], found["filter"]
    else:
        assert found["filter"] == expected
    if "column" in found["filter"]:
        col = int(re.search(r"column (\d+)", found["filter"]).group(1))  # type: ignore[union-attr]
        assert 1 <= col <= len(filter_)


@pytest.mark.parametrize(
    ("order_by", "field", "expected"),
    [
        (("metrics.acc SIDEWAYS",), "order_by[0]", "~expected ASC, DESC or the end of the clause"),
        (("run_name", "metrics.acc ASC DESC"), "order_by[1]", "~ASC, DESC or the end"),
        (("datasets.name",), "order_by[0]", "runs cannot be ordered by datasets"),
        (("bogus",), "order_by[0]", "~unknown attribute 'bogus'"),
        (("metrics.",), "order_by[0]", "~expected a key after 'metrics.'"),
        (("'metrics.acc'",), "order_by[0]", "~expected an identifier"),
        (("metrics.acc > 1",), "order_by[0]", "~expected ASC, DESC"),
        (("metrics.acc; DROP TABLE runs",), "order_by[0]", "~unexpected character ';'"),
        (tuple(["run_name"] * 11), "order_by", "has 11 clauses; the limit is 10"),
    ],
)
async def test_malformed_order_by(
    runs, data: Fixture, order_by: tuple[str, ...], field: str, expected: str
) -> None:
    err = await fails(search(runs, [data.experiment_id], "", order_by))
    found = assert_invalid(err, field)
    if expected.startswith("~"):
        assert expected[1:] in found[field], found[field]
    else:
        assert found[field] == expected


async def test_bad_view_type(runs, data: Fixture) -> None:
    err = await fails(search(runs, [data.experiment_id], view=42))
    assert_invalid(err, "run_view_type")


# -- injection ---------------------------------------------------------------------------------

INVALID = None
INJECTION_CASES: list[tuple[str, S | None]] = [
    ("params.\"x'; DROP TABLE runs; --\" = 'a'", set()),
    ("params.`x'; DROP TABLE runs; --` = 'a'", set()),
    ('tags."x"" OR 1=1 --" = \'a\'', set()),
    ("tags.`it's` = 'a'", set()),
    ("tags.`a``b` = 'a'", set()),
    ('tags."a\\"b" IS NOT NULL', set()),
    ('tags."/* c */" IS NULL', set(ACTIVE)),
    ('metrics."loss\'); DELETE FROM runs; --" > 0', set()),
    ("metrics.`x$1` < 1", set()),
    ("params.a = 'x'' OR ''1''=''1'", set()),
    ("params.q = 'x'' OR ''1''=''1'", {"theta"}),
    ("params.q = 'x\\' OR \\'1\\'=\\'1'", {"theta"}),
    ("params.q = \"x' OR '1'='1\"", {"theta"}),
    ("params.q = 'x' OR '1'='1'", INVALID),
    ("params.inj = '''); DROP TABLE runs; --'", {"theta"}),
    ("params.inj LIKE '%DROP TABLE%'", {"theta"}),
    ("tags.sql = 'a; DROP TABLE runs; --'", {"theta"}),
    ("tags.cmt = '/* c */ --'", {"theta"}),
    ("tags.`semi -- dash/x` = 'v'", {"theta"}),
    ("tags.\"semi -- dash/x\" IN ('v', 'w')", {"theta"}),
    ("tags.semi -- dash/x = 'v'", INVALID),
    ("tags.x = '$1'", set()),
    ("tags.x = '$1::text OR TRUE'", set()),
    ("tags.sql = '%'", set()),
    ("run_name = 'alpha'; DELETE FROM runs", INVALID),
    ("run_name = 'alpha' OR 1=1", INVALID),
    ("run_name = 'alpha' --", INVALID),
    ("run_name = 'al' || 'pha'", INVALID),
    ("run_name = 'alpha\\'; DROP TABLE runs; --'", set()),
    ("attributes.run_id = '1'' OR ''1''=''1'", set()),
    ("attributes.run_id LIKE '%'' OR ''1''=''1'", set()),
    ("status = 'FINISHED'' OR ''1''=''1'", set()),
    ("start_time > 0 OR start_time < 0); DROP TABLE runs; --", INVALID),
    ("tags.x = '\\'", INVALID),
    ("tags.x = '\\\\'", set()),
    ("tags.x = 'a\x00b'", INVALID),
    ("tags.\"a\x00b\" = 'x'", INVALID),
    # integers beyond int64 compare as doubles, a huge one as +-Infinity
    (f"start_time > {2**70}", set()),
    (f"start_time < {2**70}", set(ACTIVE)),
    (f"start_time > -{2**70}", set(ACTIVE)),
    (f"start_time = {2**63}", set()),
    (f"start_time > {2**63 - 1}", set()),
    (f"attributes.end_time < -{2**63}", set()),
    (f"metrics.loss > 1{'0' * 400}", set()),
    (f"metrics.loss >= 1{'0' * 400}", {"gamma"}),
    (f"metrics.loss < 1{'0' * 5000}", {"alpha", "iota", "delta", "zeta", "eta", "theta"}),
    (f"metrics.loss > 0.{'0' * 5000}1", {"alpha", "iota", "gamma", "zeta", "eta", "theta"}),
    (f"metrics.loss.count = {2**64}", set()),
]


@pytest.mark.parametrize(("filter_", "expected"), INJECTION_CASES)
async def test_injection(runs, data: Fixture, filter_: str, expected: S | None) -> None:
    call = search(runs, [data.experiment_id], filter_)
    if expected is INVALID:
        err = await fails(call)
        assert_invalid(err, "filter")
    else:
        resp = await call
        assert set(data.names([r.info.run_id for r in resp.runs])) == expected
    # The runs table is intact.
    after = await search(runs, [data.experiment_id])
    assert len(after.runs) == len(ACTIVE)


@pytest.mark.parametrize(
    "order_by",
    [
        'params."x\'; DROP TABLE runs; --"',
        "tags.`/* c */` DESC",
        'metrics."a\'); DELETE FROM runs; --".max',
        "tags.sql",
    ],
)
async def test_injection_in_order_by(runs, data: Fixture, order_by: str) -> None:
    resp = await search(runs, [data.experiment_id], "", (order_by,))
    assert len(resp.runs) == len(ACTIVE)


async def test_store_still_works_after_injection(experiments, runs, data: Fixture) -> None:
    """After every injection attempt: runs can still be created, found and logged to."""
    resp = await search(runs, [data.experiment_id], view=cpb.VIEW_TYPE_ALL)
    assert len(resp.runs) == len(ALL)
    eid = await new_experiment(experiments)
    run = await new_run(runs, eid, run_name="after")
    await runs.SetTag(rpb.SetTagRequest(run_id=run.info.run_id, key="k", value="'; --"))
    found = await search(runs, [eid], "tags.k = '''; --'")
    assert [r.info.run_id for r in found.runs] == [run.info.run_id]


# -- SearchExperiments filters -----------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def exps(experiments) -> tuple[str, dict[str, xpb.Experiment]]:  # type: ignore[no-untyped-def]
    prefix = unique("sx")
    out: dict[str, xpb.Experiment] = {}
    for name, tags in [
        ("one", {"team": "red", "tier": "gold"}),
        ("two", {"team": "blue"}),
        ("three", {}),
    ]:
        resp = await experiments.CreateExperiment(
            epb.CreateExperimentRequest(
                name=f"{prefix}-{name}",
                tags=[xpb.ExperimentTag(key=k, value=v) for k, v in tags.items()],
            )
        )
        got = await experiments.GetExperiment(
            epb.GetExperimentRequest(experiment_id=resp.experiment_id)
        )
        out[name] = got.experiment
    return prefix, out


@pytest.mark.parametrize(
    ("filter_", "order_by", "expected"),
    [
        ("name LIKE '<p>-%'", ("name",), ["one", "three", "two"]),
        ("name LIKE '<p>-t%'", ("name DESC",), ["two", "three"]),
        ("attributes.name ILIKE '<P>-ONE'", (), ["one"]),
        ("name = '<p>-two'", (), ["two"]),
        ("name IN ('<p>-one', '<p>-two')", ("name",), ["one", "two"]),
        ("name LIKE '<p>-%' AND tags.team = 'blue'", (), ["two"]),
        ("name LIKE '<p>-%' AND tags.team != 'red'", (), ["two"]),  # three has no team
        ("name LIKE '<p>-%' AND tags.team IS NULL", (), ["three"]),
        (
            "name LIKE '<p>-%' AND (tags.team = 'red' OR tags.tier IS NULL)",
            ("name",),
            ["one", "three", "two"],
        ),
        ("name LIKE '<p>-%' AND NOT tags.team LIKE 'r%'", ("name",), ["three", "two"]),
        ("name LIKE '<p>-%' AND creation_time >= <t0>", ("name",), ["one", "three", "two"]),
        ("name LIKE '<p>-%' AND creation_time < <t0>", (), []),
        ("name LIKE '<p>-%' AND last_update_time > 0", ("tags.team",), ["two", "one", "three"]),
        ("name LIKE '<p>-%'", ("creation_time ASC", "name"), None),
    ],
)
async def test_search_experiments(
    experiments,
    exps: tuple[str, dict[str, xpb.Experiment]],
    filter_: str,
    order_by: tuple[str, ...],
    expected: list[str] | None,
) -> None:
    prefix, made = exps
    t0 = min(e.creation_time for e in made.values())
    text = filter_.replace("<p>", prefix).replace("<P>", prefix.upper()).replace("<t0>", str(t0))
    resp = await experiments.SearchExperiments(
        epb.SearchExperimentsRequest(filter=text, order_by=list(order_by))
    )
    got = [e.name.removeprefix(prefix + "-") for e in resp.experiments]
    if expected is None:
        expected = [n for _, n in sorted((made[n].creation_time, n) for n in made)]
    assert got == expected


@pytest.mark.parametrize(
    ("filter_", "fragment"),
    [
        ("metrics.x > 1", "unknown prefix 'metrics.'"),
        ("params.x = 'a'", "unknown prefix 'params.'"),
        ("run_name = 'x'", "unknown attribute 'run_name'"),
        ("name > 'a'", "> does not apply to name"),
        ("name = ", "expected a quoted string"),
    ],
)
async def test_search_experiments_bad_filter(experiments, filter_: str, fragment: str) -> None:
    err = await fails(experiments.SearchExperiments(epb.SearchExperimentsRequest(filter=filter_)))
    found = assert_invalid(err, "filter")
    assert fragment in found["filter"]


# -- the description and root runs (issue 14) ----------------------------------------------

DESCRIPTIONS = {"d_none": "", "d_abc": "abc", "d_Abd": "Abd", "d_pct": "50% off"}


@pytest.mark.parametrize(
    ("filter_", "expected"),
    [
        ("attributes.description = ''", {"d_none"}),
        ("attributes.description != ''", {"d_abc", "d_Abd", "d_pct"}),
        ("attributes.description = 'abc'", {"d_abc"}),
        ("attributes.description != 'abc'", {"d_none", "d_Abd", "d_pct"}),
        ("attributes.description LIKE 'a%'", {"d_abc"}),
        ("attributes.description ILIKE 'a%'", {"d_abc", "d_Abd"}),
        ("attributes.description LIKE '%b%'", {"d_abc", "d_Abd"}),
        ("attributes.description LIKE '%'", set(DESCRIPTIONS)),
        ("attributes.description LIKE '%%'", set(DESCRIPTIONS)),
        ("attributes.description LIKE '_%'", {"d_abc", "d_Abd", "d_pct"}),
        ("attributes.description LIKE '50\\%%'", {"d_pct"}),
        ("attributes.description LIKE '%\\%%'", {"d_pct"}),
        ("attributes.description IN ('abc', '')", {"d_none", "d_abc"}),
        ("attributes.description NOT IN ('abc')", {"d_none", "d_Abd", "d_pct"}),
        ("attributes.description NOT IN ('', 'Abd')", {"d_abc", "d_pct"}),
        ("NOT attributes.description LIKE 'a%'", {"d_none", "d_Abd", "d_pct"}),
        ("NOT attributes.description = ''", {"d_abc", "d_Abd", "d_pct"}),
        ("attributes.description = '' OR attributes.description = 'abc'", {"d_none", "d_abc"}),
    ],
)
async def test_description_filter(experiments, runs, filter_: str, expected: set[str]) -> None:
    """A comparison on the description compares '' for a run without one, whichever way
    the query looks the description up."""
    eid = await new_experiment(experiments)
    for name, description in DESCRIPTIONS.items():
        await new_run(runs, eid, run_name=name, description=description)
    resp = await search(runs, [eid], filter_)
    assert {r.info.run_name for r in resp.runs} == expected


async def test_root_runs_only(experiments, runs) -> None:
    """root_runs_only: the roots that match or have a matching descendant (a child's
    deleted parent makes it a root of the active view), with descendant_match, and
    has_children read with every run."""
    eid = await new_experiment(experiments)
    made: dict[str, str] = {}

    async def make(name: str, parent: str = "", k: str = "") -> None:
        run = await new_run(
            runs, eid, run_name=name, parent_run_id=made.get(parent, ""), start_time=T0
        )
        made[name] = run.info.run_id
        if k:
            await runs.SetTag(rpb.SetTagRequest(run_id=run.info.run_id, key="k", value=k))

    await make("a", k="x")
    await make("a1", "a", k="y")
    await make("a11", "a1", k="z")
    await make("b", k="y")
    await make("c")
    await make("c1", "c", k="w")
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=made["c"]))

    async def roots(filter_: str) -> dict[str, bool]:
        resp = await runs.SearchRuns(
            rpb.SearchRunsRequest(experiment_ids=[eid], filter=filter_, root_runs_only=True)
        )
        return {r.info.run_name: r.descendant_match for r in resp.runs}

    assert await roots("tags.k = 'z'") == {"a": True}
    assert await roots("tags.k = 'y'") == {"a": True, "b": False}
    assert await roots("tags.k = 'x'") == {"a": False}
    assert await roots("tags.k IN ('x', 'z')") == {"a": True}
    assert await roots("tags.k = 'w'") == {"c1": False}
    assert await roots("tags.k = 'none'") == {}
    assert await roots("") == {"a": False, "b": False, "c1": False}
    resp = await search(runs, [eid])
    assert {r.info.run_name: r.info.has_children for r in resp.runs} == {
        "a": True,
        "a1": True,
        "a11": False,
        "b": False,
        "c1": False,
    }
