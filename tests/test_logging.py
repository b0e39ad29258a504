"""Logging params, tags and metrics to runs: immutability, upserts, duplicates, bit-exact
values, atomic batches, limits and malformed input, all through a real channel."""

from __future__ import annotations

import math
import struct
import time

import grpc
import pytest

from helpers import error_info, new_run, violations
from trackd.v1 import metric_pb2, run_pb2
from trackd.v1 import run_service_pb2 as rpb

MISSING_RUN = "0123456789abcdef0123456789abcdef"
MAX_DOUBLE = 1.7976931348623157e308
MIN_SUBNORMAL = 5e-324
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


# -- helpers -----------------------------------------------------------------------------------


def bits(x: float) -> bytes:
    """The IEEE-754 bytes of a double, so that NaN and -0.0 compare exactly."""
    return struct.pack("<d", x)


async def fails(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    """The error of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    return exc.value


def assert_invalid(err: grpc.aio.AioRpcError, fields: set[str] | None = None) -> dict[str, str]:
    """Checks an INVALID_ARGUMENT / INVALID_PARAMETER_VALUE error and, if given, that its
    BadRequest names exactly `fields`; returns the violations."""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert error_info(err).reason == "INVALID_PARAMETER_VALUE"
    found = violations(err)
    if fields is not None:
        assert set(found) == fields, found
    return found


async def run_id_of(runs) -> str:  # type: ignore[no-untyped-def]
    return (await new_run(runs)).info.run_id


async def get(runs, run_id: str) -> run_pb2.Run:  # type: ignore[no-untyped-def]
    return (await runs.GetRun(rpb.GetRunRequest(run_id=run_id))).run


async def history(runs, run_id: str, key: str) -> list[metric_pb2.Metric]:  # type: ignore[no-untyped-def]
    resp = await runs.GetMetricHistory(rpb.GetMetricHistoryRequest(run_id=run_id, metric_key=key))
    assert resp.next_page_token == "" and resp.metric_key == key
    points = list(resp.metrics)
    for m in points:  # the page names its key once, as a client fills it in
        assert not m.key
        m.key = resp.metric_key
    return points


def params_of(run: run_pb2.Run) -> dict[str, str]:
    return {p.key: p.value for p in run.data.params}


def tags_of(run: run_pb2.Run) -> dict[str, str]:
    """User tags, without the `mlflow.runName` tag every run carries."""
    return {t.key: t.value for t in run.data.tags if t.key != "mlflow.runName"}


def latest_of(run: run_pb2.Run) -> dict[str, tuple[int, int, float]]:
    return {m.key: (m.step, m.timestamp, m.value) for m in run.data.metrics}


def summary_of(run: run_pb2.Run, key: str) -> metric_pb2.MetricSummary:
    found = [s for s in run.data.metric_summaries if s.key == key]
    assert len(found) == 1, run.data.metric_summaries
    return found[0]


def metric(key: str, value: float, step: int = 0, timestamp: int = 1_000) -> metric_pb2.Metric:
    return metric_pb2.Metric(key=key, value=value, step=step, timestamp=timestamp)


def param(key: str, value: str) -> run_pb2.Param:
    return run_pb2.Param(key=key, value=value)


def tag(key: str, value: str) -> run_pb2.RunTag:
    return run_pb2.RunTag(key=key, value=value)


async def assert_nothing_logged(runs, run_id: str, metric_keys: list[str]) -> None:  # type: ignore[no-untyped-def]
    run = await get(runs, run_id)
    assert params_of(run) == {}
    assert tags_of(run) == {}
    assert list(run.data.metrics) == []
    assert list(run.data.metric_summaries) == []
    for key in metric_keys:
        assert await history(runs, run_id, key) == []


# -- params ------------------------------------------------------------------------------------


async def test_log_param_is_returned_by_get_run(runs) -> None:
    rid = await run_id_of(runs)
    await runs.LogParam(rpb.LogParamRequest(run_id=rid, key="lr", value="0.01"))
    await runs.LogParam(rpb.LogParamRequest(run_id=rid, key="batch size", value="32"))
    assert params_of(await get(runs, rid)) == {"lr": "0.01", "batch size": "32"}
    assert [p.key for p in (await get(runs, rid)).data.params] == ["batch size", "lr"]


async def test_log_param_again_with_the_same_value_is_accepted(runs) -> None:
    rid = await run_id_of(runs)
    await runs.LogParam(rpb.LogParamRequest(run_id=rid, key="lr", value="0.01"))
    await runs.LogParam(rpb.LogParamRequest(run_id=rid, key="lr", value="0.01"))
    await runs.LogBatch(rpb.LogBatchRequest(run_id=rid, params=[param("lr", "0.01")]))
    assert params_of(await get(runs, rid)) == {"lr": "0.01"}


async def test_log_param_with_another_value_fails_naming_key_and_both_values(runs) -> None:
    rid = await run_id_of(runs)
    await runs.LogParam(rpb.LogParamRequest(run_id=rid, key="optimizer", value="adam-old"))
    err = await fails(
        runs.LogParam(rpb.LogParamRequest(run_id=rid, key="optimizer", value="sgd-new"))
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "INVALID_STATE"
    assert "optimizer" in err.details()
    assert "adam-old" in err.details()
    assert "sgd-new" in err.details()
    assert params_of(await get(runs, rid)) == {"optimizer": "adam-old"}


async def test_log_batch_param_with_another_value_than_stored_fails(runs) -> None:
    rid = await run_id_of(runs)
    await runs.LogParam(rpb.LogParamRequest(run_id=rid, key="epochs", value="10"))
    err = await fails(
        runs.LogBatch(rpb.LogBatchRequest(run_id=rid, params=[param("epochs", "20")]))
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "INVALID_STATE"
    assert params_of(await get(runs, rid)) == {"epochs": "10"}


async def test_log_batch_repeating_a_param_key_with_two_values_is_invalid(runs) -> None:
    rid = await run_id_of(runs)
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid, params=[param("a", "1"), param("lr", "0.1"), param("lr", "0.2")]
            )
        )
    )
    assert_invalid(err, {"params[2].value"})
    assert params_of(await get(runs, rid)) == {}


async def test_log_batch_repeating_a_param_key_with_one_value_is_accepted(runs) -> None:
    rid = await run_id_of(runs)
    await runs.LogBatch(
        rpb.LogBatchRequest(run_id=rid, params=[param("lr", "1"), param("lr", "1")])
    )
    assert params_of(await get(runs, rid)) == {"lr": "1"}


async def test_param_values_round_trip_exactly(runs) -> None:
    rid = await run_id_of(runs)
    values = {"empty": "", "unicode": "größe ✓ 学习率 🚀", "spaces": "  x  ", "newline": "a\nb"}
    await runs.LogBatch(
        rpb.LogBatchRequest(run_id=rid, params=[param(k, v) for k, v in values.items()])
    )
    assert params_of(await get(runs, rid)) == values


# -- tags --------------------------------------------------------------------------------------


async def test_set_tag_creates_then_replaces_the_value(runs) -> None:
    rid = await run_id_of(runs)
    await runs.SetTag(rpb.SetTagRequest(run_id=rid, key="stage", value="dev"))
    assert tags_of(await get(runs, rid)) == {"stage": "dev"}
    await runs.SetTag(rpb.SetTagRequest(run_id=rid, key="stage", value="prod"))
    await runs.LogBatch(rpb.LogBatchRequest(run_id=rid, tags=[tag("team", "vision")]))
    assert tags_of(await get(runs, rid)) == {"stage": "prod", "team": "vision"}


async def test_log_batch_repeated_tag_key_keeps_the_last_value(runs) -> None:
    rid = await run_id_of(runs)
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid,
            tags=[tag("t", "first"), tag("u", "x"), tag("t", "second"), tag("t", "last")],
        )
    )
    assert tags_of(await get(runs, rid)) == {"t": "last", "u": "x"}


async def test_delete_tag_removes_only_that_tag(runs) -> None:
    rid = await run_id_of(runs)
    await runs.LogBatch(rpb.LogBatchRequest(run_id=rid, tags=[tag("a", "1"), tag("b", "2")]))
    await runs.DeleteTag(rpb.DeleteTagRequest(run_id=rid, key="a"))
    assert tags_of(await get(runs, rid)) == {"b": "2"}


async def test_delete_missing_tag_is_not_found(runs) -> None:
    rid = await run_id_of(runs)
    await runs.SetTag(rpb.SetTagRequest(run_id=rid, key="a", value="1"))
    await runs.DeleteTag(rpb.DeleteTagRequest(run_id=rid, key="a"))
    err = await fails(runs.DeleteTag(rpb.DeleteTagRequest(run_id=rid, key="a")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err).reason == "RESOURCE_DOES_NOT_EXIST"
    err = await fails(runs.DeleteTag(rpb.DeleteTagRequest(run_id=rid, key="never-set")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err).reason == "RESOURCE_DOES_NOT_EXIST"


async def test_delete_tag_with_a_malformed_key_is_invalid(runs) -> None:
    rid = await run_id_of(runs)
    err = await fails(runs.DeleteTag(rpb.DeleteTagRequest(run_id=rid, key="a*b")))
    assert_invalid(err, {"key"})


async def test_set_tag_run_name_renames_the_run(runs) -> None:
    rid = (await new_run(runs, run_name="before")).info.run_id
    await runs.SetTag(rpb.SetTagRequest(run_id=rid, key="mlflow.runName", value="after"))
    run = await get(runs, rid)
    assert run.info.run_name == "after"
    assert {t.key: t.value for t in run.data.tags}["mlflow.runName"] == "after"


async def test_log_batch_run_name_tag_renames_the_run_with_the_last_value(runs) -> None:
    rid = (await new_run(runs, run_name="before")).info.run_id
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid, tags=[tag("mlflow.runName", "middle"), tag("mlflow.runName", "final")]
        )
    )
    run = await get(runs, rid)
    assert run.info.run_name == "final"
    assert {t.key: t.value for t in run.data.tags}["mlflow.runName"] == "final"


# -- metrics -----------------------------------------------------------------------------------


async def test_log_metric_appends_points_to_the_history(runs) -> None:
    rid = await run_id_of(runs)
    for step, value in enumerate([0.5, 0.25, 0.125]):
        await runs.LogMetric(
            rpb.LogMetricRequest(run_id=rid, key="loss", value=value, step=step, timestamp=100)
        )
    got = await history(runs, rid, "loss")
    assert [(m.key, m.step, m.timestamp, m.value) for m in got] == [
        ("loss", 0, 100, 0.5),
        ("loss", 1, 100, 0.25),
        ("loss", 2, 100, 0.125),
    ]
    assert summary_of(await get(runs, rid), "loss").count == 3


async def test_exact_duplicate_metric_is_a_no_op(runs) -> None:
    rid = await run_id_of(runs)
    req = rpb.LogMetricRequest(run_id=rid, key="acc", value=0.9, step=3, timestamp=777)
    await runs.LogMetric(req)
    await runs.LogMetric(req)
    await runs.LogBatch(rpb.LogBatchRequest(run_id=rid, metrics=[metric("acc", 0.9, 3, 777)] * 3))
    got = await history(runs, rid, "acc")
    assert [(m.step, m.timestamp, m.value) for m in got] == [(3, 777, 0.9)]
    s = summary_of(await get(runs, rid), "acc")
    assert s.count == 1
    assert s.mean == 0.9
    assert s.stddev == 0.0


async def test_points_differing_only_in_value_or_timestamp_are_distinct(runs) -> None:
    rid = await run_id_of(runs)
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid,
            metrics=[metric("m", 1.0, 0, 5), metric("m", 2.0, 0, 5), metric("m", 1.0, 0, 6)],
        )
    )
    got = await history(runs, rid, "m")
    assert [(m.step, m.timestamp, m.value) for m in got] == [(0, 5, 1.0), (0, 5, 2.0), (0, 6, 1.0)]
    assert summary_of(await get(runs, rid), "m").count == 3


POINTS = [(1, 10, 5.0), (2, 5, 1.0), (2, 9, 0.5), (2, 9, 3.0), (0, 99, 100.0), (2, 8, 9.0)]
LATEST = (2, 9, 3.0)


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4, 5], [3, 5, 4, 2, 1, 0], [5, 3, 0, 4, 1, 2]])
async def test_latest_metric_is_greatest_step_timestamp_value_whatever_the_order(
    runs, order: list[int]
) -> None:
    rid = await run_id_of(runs)
    for i in order:
        step, ts, value = POINTS[i]
        await runs.LogMetric(
            rpb.LogMetricRequest(run_id=rid, key="k", value=value, step=step, timestamp=ts)
        )
    run = await get(runs, rid)
    assert latest_of(run) == {"k": LATEST}
    s = summary_of(run, "k")
    assert (s.latest_step, s.latest_timestamp, s.latest_value) == LATEST


async def test_latest_metric_in_one_unordered_batch_is_greatest(runs) -> None:
    rid = await run_id_of(runs)
    batch = [metric("k", v, s, t) for s, t, v in reversed(POINTS)]
    await runs.LogBatch(rpb.LogBatchRequest(run_id=rid, metrics=batch))
    assert latest_of(await get(runs, rid)) == {"k": LATEST}
    # An older point logged afterwards does not replace the latest one.
    await runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="k", value=1e9, step=1, timestamp=1))
    assert latest_of(await get(runs, rid)) == {"k": LATEST}


async def test_get_run_returns_latest_metrics_ordered_by_key(runs) -> None:
    rid = await run_id_of(runs)
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid,
            metrics=[metric("zeta", 1.0), metric("alpha", 2.0), metric("mid", 3.0, step=4)],
        )
    )
    run = await get(runs, rid)
    assert [m.key for m in run.data.metrics] == ["alpha", "mid", "zeta"]
    assert [s.key for s in run.data.metric_summaries] == ["alpha", "mid", "zeta"]


async def test_zero_timestamp_means_the_servers_now(runs) -> None:
    rid = await run_id_of(runs)
    before = time.time_ns() // 1_000_000
    await runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="t", value=1.0, step=0, timestamp=0))
    await runs.LogBatch(rpb.LogBatchRequest(run_id=rid, metrics=[metric("t", 2.0, 1, 0)]))
    after = time.time_ns() // 1_000_000
    got = await history(runs, rid, "t")
    assert len(got) == 2
    for m in got:
        assert before <= m.timestamp <= after


async def test_negative_timestamp_is_invalid(runs) -> None:
    rid = await run_id_of(runs)
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid, metrics=[metric("ok", 1.0, 0, 5), metric("ok", 1.0, 1, -1)]
            )
        )
    )
    assert_invalid(err, {"metrics[1].timestamp"})
    err = await fails(
        runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="x", value=1.0, timestamp=-5))
    )
    assert_invalid(err, {"timestamp"})
    await assert_nothing_logged(runs, rid, ["ok", "x"])


SPECIAL_VALUES = [
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    0.0,
    MIN_SUBNORMAL,
    -MIN_SUBNORMAL,
    2.2250738585072014e-308,
    MAX_DOUBLE,
    -MAX_DOUBLE,
    1e-200,
    0.1,
    -1.5,
]


@pytest.mark.parametrize("value", SPECIAL_VALUES, ids=repr)
async def test_special_double_round_trips_bit_exactly_alone(runs, value: float) -> None:
    rid = await run_id_of(runs)
    await runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="v", value=value, timestamp=1))
    (point,) = await history(runs, rid, "v")
    assert bits(point.value) == bits(value)
    run = await get(runs, rid)
    assert bits(run.data.metrics[0].value) == bits(value)
    assert bits(summary_of(run, "v").latest_value) == bits(value)


async def test_special_doubles_in_one_batch_round_trip_bit_exactly(runs) -> None:
    rid = await run_id_of(runs)
    batch = [metric("v", value, step, 7) for step, value in enumerate(SPECIAL_VALUES)]
    await runs.LogBatch(rpb.LogBatchRequest(run_id=rid, metrics=batch))
    got = await history(runs, rid, "v")
    assert [m.step for m in got] == list(range(len(SPECIAL_VALUES)))
    assert [bits(m.value) for m in got] == [bits(v) for v in SPECIAL_VALUES]
    run = await get(runs, rid)
    assert bits(run.data.metrics[0].value) == bits(SPECIAL_VALUES[-1])
    assert summary_of(run, "v").count == len(SPECIAL_VALUES)


async def test_special_doubles_logged_one_by_one_round_trip_bit_exactly(runs) -> None:
    rid = await run_id_of(runs)
    for step, value in enumerate(SPECIAL_VALUES):
        await runs.LogMetric(
            rpb.LogMetricRequest(run_id=rid, key="v", value=value, step=step, timestamp=7)
        )
        run = await get(runs, rid)
        assert bits(run.data.metrics[0].value) == bits(value)
    got = await history(runs, rid, "v")
    assert [bits(m.value) for m in got] == [bits(v) for v in SPECIAL_VALUES]
    s = summary_of(await get(runs, rid), "v")
    assert s.count == len(SPECIAL_VALUES)
    assert s.nan_count == 1
    assert s.min == -math.inf
    assert s.max == math.inf


async def test_nan_with_a_payload_round_trips_bit_exactly(runs) -> None:
    rid = await run_id_of(runs)
    payload_nan = struct.unpack("<d", struct.pack("<Q", 0xFFF8_0000_DEAD_BEEF))[0]
    assert math.isnan(payload_nan)
    await runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="n", value=payload_nan, timestamp=1))
    (point,) = await history(runs, rid, "n")
    assert bits(point.value) == bits(payload_nan)
    assert bits((await get(runs, rid)).data.metrics[0].value) == bits(payload_nan)


async def test_negative_and_extreme_int64_steps_round_trip_in_order(runs) -> None:
    rid = await run_id_of(runs)
    steps = [INT64_MAX, -1, 0, INT64_MIN, 1, INT64_MIN + 1, INT64_MAX - 1]
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid, metrics=[metric("s", float(i), st, 3) for i, st in enumerate(steps)]
        )
    )
    got = await history(runs, rid, "s")
    assert [m.step for m in got] == sorted(steps)
    run = await get(runs, rid)
    assert latest_of(run) == {"s": (INT64_MAX, 3, 0.0)}
    s = summary_of(run, "s")
    assert (s.first_step, s.last_step) == (INT64_MIN, INT64_MAX)


async def test_extreme_timestamp_round_trips(runs) -> None:
    rid = await run_id_of(runs)
    await runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="t", value=1.0, timestamp=INT64_MAX))
    (point,) = await history(runs, rid, "t")
    assert point.timestamp == INT64_MAX


# -- atomic batches ----------------------------------------------------------------------------

GOOD_METRICS = [metric("good", 1.0, 0), metric("good", 2.0, 1)]
GOOD_PARAMS = [param("p", "v")]
GOOD_TAGS = [tag("t", "v")]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"metrics": [metric("bad*key", 1.0)]}, "metrics[2].key"),
        ({"metrics": [metric("late", 1.0, 0, -3)]}, "metrics[2].timestamp"),
        ({"params": [param("q", "x" * 6001)]}, "params[1].value"),
        ({"params": [param("p", "other")]}, "params[1].value"),
        ({"tags": [tag("/lead", "v")]}, "tags[1].key"),
        ({"tags": [tag("u", "\x00")]}, "tags[1].value"),
    ],
    ids=["metric-key", "metric-timestamp", "param-value", "param-twice", "tag-key", "tag-nul"],
)
async def test_log_batch_with_one_bad_item_writes_nothing(runs, bad: dict, field: str) -> None:
    rid = await run_id_of(runs)
    request = rpb.LogBatchRequest(
        run_id=rid,
        metrics=GOOD_METRICS + bad.get("metrics", []),
        params=GOOD_PARAMS + bad.get("params", []),
        tags=GOOD_TAGS + bad.get("tags", []),
    )
    err = await fails(runs.LogBatch(request))
    assert_invalid(err, {field})
    await assert_nothing_logged(runs, rid, ["good", "late"])


async def test_log_batch_whose_param_conflicts_with_a_stored_one_writes_nothing(runs) -> None:
    rid = await run_id_of(runs)
    await runs.LogParam(rpb.LogParamRequest(run_id=rid, key="frozen", value="1"))
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid,
                metrics=GOOD_METRICS,
                params=[param("fresh", "x"), param("frozen", "2")],
                tags=GOOD_TAGS,
            )
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "INVALID_STATE"
    run = await get(runs, rid)
    assert params_of(run) == {"frozen": "1"}
    assert tags_of(run) == {}
    assert list(run.data.metrics) == []
    assert await history(runs, rid, "good") == []


async def test_log_batch_writes_metrics_params_and_tags_together(runs) -> None:
    rid = await run_id_of(runs)
    await runs.LogBatch(
        rpb.LogBatchRequest(run_id=rid, metrics=GOOD_METRICS, params=GOOD_PARAMS, tags=GOOD_TAGS)
    )
    run = await get(runs, rid)
    assert params_of(run) == {"p": "v"}
    assert tags_of(run) == {"t": "v"}
    assert latest_of(run) == {"good": (1, 1_000, 2.0)}


async def test_empty_log_batch_is_accepted(runs) -> None:
    rid = await run_id_of(runs)
    await runs.LogBatch(rpb.LogBatchRequest(run_id=rid))
    await assert_nothing_logged(runs, rid, [])


# -- limits ------------------------------------------------------------------------------------


async def test_batch_of_more_than_1000_metrics_is_invalid_and_writes_nothing(runs) -> None:
    rid = await run_id_of(runs)
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(run_id=rid, metrics=[metric("m", 1.0, i) for i in range(1001)])
        )
    )
    assert "metrics" in assert_invalid(err)
    await assert_nothing_logged(runs, rid, ["m"])


async def test_batch_of_more_than_100_params_is_invalid(runs) -> None:
    rid = await run_id_of(runs)
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(run_id=rid, params=[param(f"p{i}", "v") for i in range(101)])
        )
    )
    assert "params" in assert_invalid(err)
    await assert_nothing_logged(runs, rid, [])


async def test_batch_of_more_than_100_tags_is_invalid(runs) -> None:
    rid = await run_id_of(runs)
    err = await fails(
        runs.LogBatch(rpb.LogBatchRequest(run_id=rid, tags=[tag(f"t{i}", "v") for i in range(101)]))
    )
    assert "tags" in assert_invalid(err)
    await assert_nothing_logged(runs, rid, [])


async def test_batch_of_more_than_1000_items_in_all_is_invalid(runs) -> None:
    rid = await run_id_of(runs)
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid,
                metrics=[metric("m", 1.0, i) for i in range(801)],
                params=[param(f"p{i}", "v") for i in range(100)],
                tags=[tag(f"t{i}", "v") for i in range(100)],
            )
        )
    )
    found = assert_invalid(err)
    assert len(found) == 1
    (description,) = found.values()
    assert "1001" in description and "1000" in description
    await assert_nothing_logged(runs, rid, ["m"])


async def test_batch_exactly_at_every_count_limit_is_accepted(runs) -> None:
    rid = await run_id_of(runs)
    await runs.LogBatch(
        rpb.LogBatchRequest(run_id=rid, metrics=[metric("m", float(i), i) for i in range(1000)])
    )
    assert summary_of(await get(runs, rid), "m").count == 1000
    rid = await run_id_of(runs)
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid,
            metrics=[metric("m", 1.0, i) for i in range(800)],
            params=[param(f"p{i}", "v") for i in range(100)],
            tags=[tag(f"t{i}", "v") for i in range(100)],
        )
    )
    run = await get(runs, rid)
    assert summary_of(run, "m").count == 800
    assert len(params_of(run)) == 100
    assert len(tags_of(run)) == 100


async def test_values_exactly_at_the_length_limits_are_accepted(runs) -> None:
    rid = await run_id_of(runs)
    key = "k" * 250
    pvalue = "é" * 6000  # characters, not bytes
    tvalue = "v" * 8000
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid,
            metrics=[metric(key, 1.0)],
            params=[param(key, pvalue)],
            tags=[tag(key, tvalue)],
        )
    )
    await runs.LogParam(rpb.LogParamRequest(run_id=rid, key="single", value="p" * 6000))
    await runs.SetTag(rpb.SetTagRequest(run_id=rid, key="single", value="t" * 8000))
    run = await get(runs, rid)
    assert params_of(run) == {key: pvalue, "single": "p" * 6000}
    assert tags_of(run) == {key: tvalue, "single": "t" * 8000}
    assert list(latest_of(run)) == [key]


async def test_key_longer_than_250_characters_is_invalid_everywhere(runs) -> None:
    rid = await run_id_of(runs)
    key = "k" * 251
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid,
                metrics=[
                    metric("ok", 1.0, 0),
                    metric("ok", 1.0, 1),
                    metric("ok", 1.0, 2),
                    metric(key, 1.0),
                ],
                params=[param(key, "v")],
                tags=[tag("fine", "v"), tag(key, "v")],
            )
        )
    )
    found = assert_invalid(err, {"metrics[3].key", "params[0].key", "tags[1].key"})
    assert all("250" in d for d in found.values())
    await assert_nothing_logged(runs, rid, ["ok"])


@pytest.mark.parametrize(
    "key", ["a*b", "a..b", "..", "/lead", "", "tab\tkey", "semi;colon", "quote'"], ids=repr
)
async def test_key_with_forbidden_characters_is_invalid(runs, key: str) -> None:
    rid = await run_id_of(runs)
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid,
                metrics=[metric("ok", 1.0), metric(key, 1.0)],
                params=[param("ok", "1"), param("ok2", "1"), param(key, "1")],
                tags=[tag(key, "1")],
            )
        )
    )
    assert_invalid(err, {"metrics[1].key", "params[2].key", "tags[0].key"})
    await assert_nothing_logged(runs, rid, ["ok"])


async def test_keys_with_every_allowed_character_are_accepted(runs) -> None:
    rid = await run_id_of(runs)
    keys = ["a-b_c.d e/f:g", "UPPER lower 0123", "x/y/z", "trailing/", ".hidden", "a.b.c"]
    await runs.LogBatch(
        rpb.LogBatchRequest(
            run_id=rid,
            metrics=[metric(k, 1.0) for k in keys],
            params=[param(k, "v") for k in keys],
            tags=[tag(k, "v") for k in keys],
        )
    )
    run = await get(runs, rid)
    assert set(latest_of(run)) == set(keys)
    assert set(params_of(run)) == set(keys)
    assert set(tags_of(run)) == set(keys)
    for k in keys:
        assert len(await history(runs, rid, k)) == 1


async def test_param_value_over_6000_and_tag_value_over_8000_are_invalid(runs) -> None:
    rid = await run_id_of(runs)
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid,
                params=[param("p", "x" * 6001)],
                tags=[tag("t0", "ok"), tag("t", "y" * 8001)],
            )
        )
    )
    found = assert_invalid(err, {"params[0].value", "tags[1].value"})
    assert "6000" in found["params[0].value"]
    assert "8000" in found["tags[1].value"]
    await assert_nothing_logged(runs, rid, [])


async def test_nul_character_in_keys_and_values_is_invalid(runs) -> None:
    rid = await run_id_of(runs)
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid,
                metrics=[metric("a\x00b", 1.0)],
                params=[param("p", "v\x00"), param("q\x00", "v")],
                tags=[tag("t", "\x00")],
            )
        )
    )
    assert_invalid(err, {"metrics[0].key", "params[0].value", "params[1].key", "tags[0].value"})
    await assert_nothing_logged(runs, rid, [])


async def test_every_bad_field_of_a_batch_is_reported_at_once(runs) -> None:
    rid = await run_id_of(runs)
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid,
                metrics=[metric("ok", 1.0), metric("b*d", 1.0), metric("ok", 1.0, 1, -1)],
                params=[param("p", "x" * 6001), param("ok", "1")],
                tags=[tag("ok", "1"), tag("ok", "2"), tag("..", "v")],
            )
        )
    )
    assert_invalid(
        err, {"metrics[1].key", "metrics[2].timestamp", "params[0].value", "tags[2].key"}
    )


async def test_single_item_rpcs_name_their_own_request_fields(runs) -> None:
    rid = await run_id_of(runs)
    err = await fails(runs.LogParam(rpb.LogParamRequest(run_id=rid, key="a*b", value="v")))
    assert_invalid(err, {"key"})
    err = await fails(runs.LogParam(rpb.LogParamRequest(run_id=rid, key="p", value="x" * 6001)))
    assert_invalid(err, {"value"})
    err = await fails(runs.SetTag(rpb.SetTagRequest(run_id=rid, key="/t", value="v")))
    assert_invalid(err, {"key"})
    err = await fails(runs.SetTag(rpb.SetTagRequest(run_id=rid, key="t", value="y" * 8001)))
    assert_invalid(err, {"value"})
    err = await fails(runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="", value=1.0)))
    assert_invalid(err, {"key"})
    await assert_nothing_logged(runs, rid, [])


@pytest.mark.parametrize("run_id", ["", "xyz", "0123456789ABCDEF0123456789ABCDEF", "0" * 33])
async def test_malformed_run_id_is_invalid_for_every_write(runs, run_id: str) -> None:
    calls = [
        runs.LogMetric(rpb.LogMetricRequest(run_id=run_id, key="m", value=1.0)),
        runs.LogParam(rpb.LogParamRequest(run_id=run_id, key="p", value="v")),
        runs.SetTag(rpb.SetTagRequest(run_id=run_id, key="t", value="v")),
        runs.DeleteTag(rpb.DeleteTagRequest(run_id=run_id, key="t")),
        runs.LogBatch(rpb.LogBatchRequest(run_id=run_id, metrics=[metric("m", 1.0)])),
    ]
    for call in calls:
        assert_invalid(await fails(call), {"run_id"})


async def test_unknown_run_is_not_found_for_every_write(runs) -> None:
    calls = [
        runs.LogMetric(rpb.LogMetricRequest(run_id=MISSING_RUN, key="m", value=1.0)),
        runs.LogParam(rpb.LogParamRequest(run_id=MISSING_RUN, key="p", value="v")),
        runs.SetTag(rpb.SetTagRequest(run_id=MISSING_RUN, key="t", value="v")),
        runs.DeleteTag(rpb.DeleteTagRequest(run_id=MISSING_RUN, key="t")),
        runs.LogBatch(rpb.LogBatchRequest(run_id=MISSING_RUN, metrics=[metric("m", 1.0)])),
        runs.LogBatch(rpb.LogBatchRequest(run_id=MISSING_RUN)),
    ]
    for call in calls:
        err = await fails(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
        assert error_info(err).reason == "RESOURCE_DOES_NOT_EXIST"


# -- undecodable requests ----------------------------------------------------------------------


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2); payloads here are < 128 bytes."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


async def _raw_call(channel, method: str, body: bytes) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    call = channel.unary_unary(
        f"/trackd.v1.RunService/{method}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    return await fails(call(body))


async def test_the_hand_encoding_matches_protobuf(runs) -> None:
    # Guards the raw-bytes tests below: with valid UTF-8 the same encoding parses.
    body = _field(1, b"r" * 32) + _field(2, b"key") + _field(3, b"val")
    assert rpb.LogParamRequest.FromString(body) == rpb.LogParamRequest(
        run_id="r" * 32, key="key", value="val"
    )


async def test_invalid_utf8_in_a_string_field_is_invalid_argument(runs, channel) -> None:
    rid = await run_id_of(runs)
    body = _field(1, rid.encode()) + _field(2, b"\xff\xfe") + _field(3, b"v")
    err = await _raw_call(channel, "LogParam", body)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert error_info(err).reason == "INVALID_PARAMETER_VALUE"
    body = _field(1, rid.encode()) + _field(2, b"k") + _field(3, b"ok \xc3\x28")
    err = await _raw_call(channel, "LogParam", body)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert error_info(err).reason == "INVALID_PARAMETER_VALUE"
    assert params_of(await get(runs, rid)) == {}


async def test_invalid_utf8_inside_a_batch_item_is_invalid_argument(runs, channel) -> None:
    rid = await run_id_of(runs)
    bad_metric = _field(1, b"\xed\xa0\x80")  # an encoded surrogate: not valid UTF-8
    body = _field(1, rid.encode()) + _field(2, bad_metric)
    err = await _raw_call(channel, "LogBatch", body)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert error_info(err).reason == "INVALID_PARAMETER_VALUE"
    await assert_nothing_logged(runs, rid, [])


async def test_truncated_request_bytes_are_invalid_argument(runs, channel) -> None:
    rid = await run_id_of(runs)
    body = _field(1, rid.encode()) + bytes([2 << 3 | 2, 50]) + b"short"
    err = await _raw_call(channel, "LogParam", body)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert error_info(err).reason == "INVALID_PARAMETER_VALUE"


async def test_run_name_tag_longer_than_the_run_name_limit_is_invalid(runs) -> None:
    rid = (await new_run(runs, run_name="kept")).info.run_id
    err = await fails(
        runs.SetTag(rpb.SetTagRequest(run_id=rid, key="mlflow.runName", value="n" * 251))
    )
    assert_invalid(err, {"value"})
    err = await fails(
        runs.LogBatch(
            rpb.LogBatchRequest(run_id=rid, tags=[tag("t", "v"), tag("mlflow.runName", "n" * 251)])
        )
    )
    assert_invalid(err, {"tags[1].value"})
    run = await get(runs, rid)
    assert run.info.run_name == "kept"
    assert tags_of(run) == {}
    await runs.SetTag(rpb.SetTagRequest(run_id=rid, key="mlflow.runName", value="n" * 250))
    assert (await get(runs, rid)).info.run_name == "n" * 250


async def test_writes_to_a_deleted_run_fail_with_failed_precondition(runs) -> None:
    rid = await run_id_of(runs)
    await runs.SetTag(rpb.SetTagRequest(run_id=rid, key="t", value="v"))
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=rid))
    calls = [
        runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="m", value=1.0)),
        runs.LogParam(rpb.LogParamRequest(run_id=rid, key="p", value="v")),
        runs.SetTag(rpb.SetTagRequest(run_id=rid, key="t", value="w")),
        runs.DeleteTag(rpb.DeleteTagRequest(run_id=rid, key="t")),
        runs.LogBatch(rpb.LogBatchRequest(run_id=rid, metrics=[metric("m", 1.0)])),
    ]
    for call in calls:
        err = await fails(call)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        assert error_info(err).reason == "INVALID_STATE"
    await runs.RestoreRun(rpb.RestoreRunRequest(run_id=rid))
    run = await get(runs, rid)
    assert tags_of(run) == {"t": "v"}
    assert params_of(run) == {}
    assert list(run.data.metrics) == []
