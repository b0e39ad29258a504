"""Typed params: the type a param was logged with beside MLflow's string form, literal
checks at every type's edge, the immutability rule across types, numeric comparisons and
ordering in search with mixed types, and search of logged models left untyped."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest

from helpers import error_info, new_experiment, new_run, violations
from trackd.v1 import logged_model_service_pb2 as lpb
from trackd.v1 import logged_model_service_pb2_grpc as lgrpc
from trackd.v1 import run_pb2
from trackd.v1 import run_service_pb2 as rpb

UNTYPED = run_pb2.PARAM_TYPE_UNSPECIFIED
STRING = run_pb2.PARAM_TYPE_STRING
INT = run_pb2.PARAM_TYPE_INT
DOUBLE = run_pb2.PARAM_TYPE_DOUBLE
BOOL = run_pb2.PARAM_TYPE_BOOL


async def fails(call: Awaitable[object], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    assert exc.value.code() == code, f"{exc.value.code()}: {exc.value.details()}"
    return exc.value


async def invalid(call: Awaitable[object], field: str) -> str:
    err = await fails(call, grpc.StatusCode.INVALID_ARGUMENT)
    assert error_info(err).reason == "INVALID_PARAMETER_VALUE"
    assert field in violations(err), violations(err)
    return violations(err)[field]


async def params_of(runs, run_id: str) -> dict[str, tuple[str, int]]:  # type: ignore[no-untyped-def]
    run = (await runs.GetRun(rpb.GetRunRequest(run_id=run_id))).run
    return {p.key: (p.value, p.type) for p in run.data.params}


def log(runs, run_id: str, key: str, value: str, type_: int = UNTYPED):  # type: ignore[no-untyped-def]
    return runs.LogParam(rpb.LogParamRequest(run_id=run_id, key=key, value=value, type=type_))


async def test_types_round_trip(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    await log(runs, rid, "lr", "0.001", DOUBLE)
    await log(runs, rid, "layers", "4", INT)
    await log(runs, rid, "shuffle", "True", BOOL)
    await log(runs, rid, "optimizer", "adam", STRING)
    await log(runs, rid, "legacy", "0.5")
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid,
            params=[
                run_pb2.Param(key="big", value="-9223372036854775808", type=INT),
                run_pb2.Param(key="tiny", value="5e-324", type=DOUBLE),
                run_pb2.Param(key="nan", value="nan", type=DOUBLE),
                run_pb2.Param(key="inf", value="-Infinity", type=DOUBLE),
            ],
        )
    )
    assert await params_of(runs, rid) == {
        "lr": ("0.001", DOUBLE),
        "layers": ("4", INT),
        "shuffle": ("True", BOOL),
        "optimizer": ("adam", STRING),
        "legacy": ("0.5", UNTYPED),
        "big": ("-9223372036854775808", INT),
        "tiny": ("5e-324", DOUBLE),
        "nan": ("nan", DOUBLE),
        "inf": ("-Infinity", DOUBLE),
    }


@pytest.mark.parametrize(
    ("value", "type_", "says"),
    [
        ("1.5", INT, "not an INT literal"),
        ("", INT, "not an INT literal"),
        (" 4", INT, "not an INT literal"),
        ("9223372036854775808", INT, "int64 range"),
        ("-9223372036854775809", INT, "int64 range"),
        ("abc", DOUBLE, "not a DOUBLE literal"),
        ("1_000.5", DOUBLE, "not a DOUBLE literal"),
        ("0x10", DOUBLE, "not a DOUBLE literal"),
        ("yes", BOOL, "not a BOOL literal"),
        ("1", BOOL, "not a BOOL literal"),
    ],
)
async def test_a_value_must_be_a_literal_of_its_type(
    runs, value: str, type_: int, says: str
) -> None:
    rid = (await new_run(runs)).info.run_id
    assert says in await invalid(log(runs, rid, "p", value, type_), "value")
    assert says in await invalid(
        runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid,
                params=[
                    run_pb2.Param(key="ok", value="1", type=INT),
                    run_pb2.Param(key="p", value=value, type=type_),
                ],
            )
        ),
        "params[1].value",
    )
    # Nothing of a refused batch was written.
    assert await params_of(runs, rid) == {}


async def test_unknown_type_and_edges_accepted(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    assert "not a ParamType" in await invalid(log(runs, rid, "p", "1", 9), "type")
    for i, (value, type_) in enumerate(
        [
            ("9223372036854775807", INT),
            ("+7", INT),
            ("1e400", DOUBLE),  # rounds to +inf, as a parser would
            (".5", DOUBLE),
            ("INF", DOUBLE),
            ("FALSE", BOOL),
            ("v" * 6000, STRING),
        ]
    ):
        await log(runs, rid, f"p{i}", value, type_)
    assert len(await params_of(runs, rid)) == 7


async def test_immutability_across_types(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    await log(runs, rid, "n", "1", INT)
    # 1 and 1.0 are different values (their string forms differ, as in MLflow), and so are
    # the same string form under two types.
    for value, type_ in [("1.0", DOUBLE), ("1", DOUBLE), ("1", STRING), ("2", INT)]:
        err = await fails(log(runs, rid, "n", value, type_), grpc.StatusCode.FAILED_PRECONDITION)
        assert "INT '1'" in err.details()
    # The same value again, or untyped with the same string form, is accepted; the type
    # logged first stays.
    await log(runs, rid, "n", "1", INT)
    await log(runs, rid, "n", "1")
    assert (await params_of(runs, rid))["n"] == ("1", INT)
    await log(runs, rid, "u", "3")
    await log(runs, rid, "u", "3", INT)
    assert (await params_of(runs, rid))["u"] == ("3", UNTYPED)
    # Within a batch: the same rule; a typed and an untyped twin keep the typed one.
    reason = await invalid(
        runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid,
                params=[
                    run_pb2.Param(key="b", value="1", type=INT),
                    run_pb2.Param(key="b", value="1", type=DOUBLE),
                ],
            )
        ),
        "params[1].value",
    )
    assert "INT '1'" in reason and "DOUBLE '1'" in reason
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid,
            params=[
                run_pb2.Param(key="c", value="0.5"),
                run_pb2.Param(key="c", value="0.5", type=DOUBLE),
            ],
        )
    )
    assert (await params_of(runs, rid))["c"] == ("0.5", DOUBLE)


async def test_numeric_comparisons_with_mixed_types(runs, experiments) -> None:
    eid = await new_experiment(experiments)
    specs = {
        "r1": [("lr", "0.001", DOUBLE), ("layers", "4", INT)],
        "r2": [("lr", "0.1", DOUBLE), ("layers", "4.0", DOUBLE)],
        "r3": [("lr", "0.001", STRING), ("layers", "8", STRING)],
        "r4": [("lr", "0.0001"), ("layers", "16")],
        "r5": [("lr", "nan", DOUBLE), ("layers", "9007199254740993", INT)],
        "r6": [("lr", "inf", DOUBLE), ("layers", "-3", INT)],
        "r7": [("flag", "True", BOOL)],
    }
    for name, params in specs.items():
        run = await new_run(runs, eid, run_name=name)
        await runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=run.info.run_id,
                params=[
                    run_pb2.Param(key=k, value=v, type=t[0] if t else 0) for k, v, *t in params
                ],
            )
        )

    async def names(filter_: str, order: list[str] | None = None) -> list[str]:
        resp = await runs.SearchRuns(
            rpb.SearchRunsRequest(
                experiment_ids=[eid], filter=filter_, order_by=order or ["attributes.run_name"]
            )
        )
        return [r.info.run_name for r in resp.runs]

    # Numbers compare with INT and DOUBLE params by value; strings, untyped params and
    # NaN match no numeric comparison.
    assert await names("params.lr < 0.01") == ["r1"]
    assert await names("params.lr > 0.01") == ["r2", "r6"]
    assert await names("params.lr >= 0.001") == ["r1", "r2", "r6"]
    assert await names("params.lr = 0.001") == ["r1"]
    assert await names("params.lr != 0.001") == ["r2", "r5", "r6"]
    assert await names("params.layers >= 4") == ["r1", "r2", "r5"]
    # 4 and 4.0 are equal in search (by value), though distinct values for immutability.
    assert await names("params.layers = 4") == ["r1", "r2"]
    assert await names("params.layers = 4.0") == ["r1", "r2"]
    # int64 values compare exactly, beyond a double's 53 bits.
    assert await names("params.layers = 9007199254740993") == ["r5"]
    assert await names("params.layers = 9007199254740992") == []
    assert await names("params.layers < 0") == ["r6"]
    # A quoted string compares MLflow's string form, whatever the type.
    assert await names("params.lr = '0.001'") == ["r1", "r3"]
    assert await names("params.layers LIKE '4%'") == ["r1", "r2"]
    assert await names("params.flag = 'True'") == ["r7"]
    assert await names("params.flag > 0") == []
    assert await names("params.lr < 0.01 OR params.layers = '16'") == ["r1", "r4"]
    assert await names("NOT params.lr < 0.01") == ["r2", "r3", "r4", "r5", "r6", "r7"]
    # Ordering: INT and DOUBLE values first by value (NaN after them), then the rest by
    # their string form, then runs without the param; in either direction.
    assert await names("", ["params.lr"]) == ["r1", "r2", "r6", "r5", "r4", "r3", "r7"]
    assert await names("", ["params.lr DESC"]) == ["r6", "r2", "r1", "r5", "r3", "r4", "r7"]
    assert await names("", ["params.layers"]) == ["r6", "r1", "r2", "r5", "r4", "r3", "r7"]
    # Paging through a typed order keeps each run once.
    seen: list[str] = []
    token = ""
    while True:
        resp = await runs.SearchRuns(
            rpb.SearchRunsRequest(
                experiment_ids=[eid], order_by=["params.lr"], max_results=2, page_token=token
            )
        )
        seen += [r.info.run_name for r in resp.runs]
        token = resp.next_page_token
        if not token:
            break
    assert seen == ["r1", "r2", "r6", "r5", "r4", "r3", "r7"]


async def test_logged_model_params_stay_untyped_in_search(channel, experiments) -> None:
    models = lgrpc.LoggedModelServiceStub(channel)
    eid = await new_experiment(experiments)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await models.SearchLoggedModels(
            lpb.SearchLoggedModelsRequest(experiment_ids=[eid], filter="params.lr < 0.01")
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a string" in exc.value.details()
