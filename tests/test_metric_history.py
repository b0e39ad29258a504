"""Metric history pages, metric summaries and concurrent logging, through a real channel."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import statistics
import struct

import grpc
import pytest

from helpers import error_info, new_run, violations
from trackd.v1 import metric_pb2, run_pb2
from trackd.v1 import run_service_pb2 as rpb

MISSING_RUN = "fedcba9876543210fedcba9876543210"
MAX_DOUBLE = 1.7976931348623157e308

Point = tuple[int, int, float]  # (step, timestamp, value)


# -- helpers -----------------------------------------------------------------------------------


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def order_key(p: Point) -> tuple[int, int, bool, float]:
    """(step, timestamp, value) order with NaN greatest, as the server orders points."""
    step, ts, value = p
    return step, ts, math.isnan(value), 0.0 if math.isnan(value) else value


def same_points(got: list[Point], want: list[Point]) -> bool:
    """Equality of point lists that treats NaN as equal to NaN (bit patterns compared)."""
    return [(s, t, bits(v)) for s, t, v in got] == [(s, t, bits(v)) for s, t, v in want]


async def fails(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    return exc.value


def assert_invalid(err: grpc.aio.AioRpcError, fields: set[str]) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert error_info(err).reason == "INVALID_PARAMETER_VALUE"
    assert set(violations(err)) == fields, violations(err)


async def run_id_of(runs) -> str:  # type: ignore[no-untyped-def]
    return (await new_run(runs)).info.run_id


async def get(runs, run_id: str) -> run_pb2.Run:  # type: ignore[no-untyped-def]
    return (await runs.GetRun(rpb.GetRunRequest(run_id=run_id))).run


def summary_of(run: run_pb2.Run, key: str) -> metric_pb2.MetricSummary:
    found = [s for s in run.data.metric_summaries if s.key == key]
    assert len(found) == 1, run.data.metric_summaries
    return found[0]


def latest_of(run: run_pb2.Run, key: str) -> Point:
    found = [m for m in run.data.metrics if m.key == key]
    assert len(found) == 1
    return found[0].step, found[0].timestamp, found[0].value


async def page(  # type: ignore[no-untyped-def]
    runs, run_id: str, key: str, max_results: int = 0, token: str = ""
) -> rpb.GetMetricHistoryResponse:
    return await runs.GetMetricHistory(
        rpb.GetMetricHistoryRequest(
            run_id=run_id, metric_key=key, max_results=max_results, page_token=token
        )
    )


async def all_pages(runs, run_id: str, key: str, size: int) -> list[list[Point]]:  # type: ignore[no-untyped-def]
    """Every page of a series, following tokens until the empty one."""
    pages: list[list[Point]] = []
    token = ""
    while True:
        resp = await page(runs, run_id, key, size, token)
        # The page names its key once; the points leave theirs empty.
        assert resp.metric_key == key and not any(m.key for m in resp.metrics)
        pages.append([(m.step, m.timestamp, m.value) for m in resp.metrics])
        token = resp.next_page_token
        if not token:
            return pages
        assert len(pages) < 1000, "paging does not end"


async def log(runs, run_id: str, key: str, points: list[Point], chunk: int = 1000) -> None:  # type: ignore[no-untyped-def]
    for i in range(0, len(points), chunk):
        await runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=run_id,
                metrics=[
                    metric_pb2.Metric(key=key, step=s, timestamp=t, value=v)
                    for s, t, v in points[i : i + chunk]
                ],
            )
        )


def many_points(n: int, seed: int) -> list[Point]:
    """n distinct points, several per step with different timestamps and values."""
    rng = random.Random(seed)
    points = {(i // 3, 1_000 + (i % 3) // 2, float(i % 2) + i / 7) for i in range(n)}
    assert len(points) == n
    shuffled = sorted(points)
    rng.shuffle(shuffled)
    return shuffled


# -- history -----------------------------------------------------------------------------------


async def test_history_is_ordered_by_step_timestamp_value(runs) -> None:
    rid = await run_id_of(runs)
    points: list[Point] = [
        (5, 10, 1.0),
        (-3, 50, 2.0),
        (5, 9, 7.0),
        (5, 10, -1.0),
        (0, 1, 3.0),
        (5, 10, math.inf),
        (5, 10, -math.inf),
        (5, 10, math.nan),
        (2**62, 1, 0.0),
    ]
    await log(runs, rid, "h", points[:4])
    await log(runs, rid, "h", points[4:])
    (got,) = await all_pages(runs, rid, "h", 0)
    assert same_points(got, sorted(points, key=order_key))


async def test_history_pages_cover_every_point_once_in_order(runs) -> None:
    rid = await run_id_of(runs)
    points = many_points(2500, seed=1)
    await log(runs, rid, "p", points, chunk=900)
    pages = await all_pages(runs, rid, "p", 1000)
    assert [len(p) for p in pages] == [1000, 1000, 500]
    assert [pt for p in pages for pt in p] == sorted(points)
    s = summary_of(await get(runs, rid), "p")
    assert s.count == 2500


async def test_history_ends_with_an_empty_token_when_points_fill_the_last_page(runs) -> None:
    rid = await run_id_of(runs)
    points = many_points(2000, seed=2)
    await log(runs, rid, "e", points)
    pages = await all_pages(runs, rid, "e", 1000)
    assert [len(p) for p in pages] == [1000, 1000]
    assert [pt for p in pages for pt in p] == sorted(points)
    resp = await page(runs, rid, "e", 2000)
    assert len(resp.metrics) == 2000
    assert resp.next_page_token == ""


async def test_history_pages_of_one_point_step_through_equal_steps_and_nan(runs) -> None:
    rid = await run_id_of(runs)
    values = [-math.inf, -1.0, -0.0, 1.0, math.inf, math.nan]
    points = [(0, 7, v) for v in values] + [(0, 8, 0.5), (1, 1, math.nan), (1, 1, 2.0)]
    await log(runs, rid, "one", list(reversed(points)))
    pages = await all_pages(runs, rid, "one", 1)
    assert [len(p) for p in pages] == [1] * len(points)
    assert same_points([p[0] for p in pages], sorted(points, key=order_key))


async def test_default_page_size_is_25000(runs) -> None:
    rid = await run_id_of(runs)
    points = [(i, 1, float(i)) for i in range(25_001)]
    await asyncio.gather(*(log(runs, rid, "big", points[i::5]) for i in range(5)))
    first = await page(runs, rid, "big")
    assert len(first.metrics) == 25_000
    assert first.next_page_token != ""
    assert [m.step for m in first.metrics] == list(range(25_000))
    rest = await page(runs, rid, "big", token=first.next_page_token)
    assert [(m.step, m.value) for m in rest.metrics] == [(25_000, 25_000.0)]
    assert rest.next_page_token == ""
    largest = await page(runs, rid, "big", 25_000)
    assert len(largest.metrics) == 25_000


@pytest.mark.parametrize("max_results", [25_001, 1_000_000, -1])
async def test_max_results_outside_1_to_25000_is_invalid(runs, max_results: int) -> None:
    rid = await run_id_of(runs)
    await log(runs, rid, "m", [(0, 1, 1.0)])
    err = await fails(page(runs, rid, "m", max_results))
    assert_invalid(err, {"max_results"})


async def test_page_token_used_for_another_key_is_invalid(runs) -> None:
    rid = await run_id_of(runs)
    await log(runs, rid, "a", [(i, 1, 1.0) for i in range(5)])
    await log(runs, rid, "b", [(i, 1, 1.0) for i in range(5)])
    token = (await page(runs, rid, "a", 2)).next_page_token
    assert token
    err = await fails(page(runs, rid, "b", 2, token))
    assert_invalid(err, {"page_token"})
    # The token still works for the key it was issued for.
    assert [m.step for m in (await page(runs, rid, "a", 2, token)).metrics] == [2, 3]


async def test_page_token_used_for_another_run_is_invalid(runs) -> None:
    rid, other = await run_id_of(runs), await run_id_of(runs)
    for r in (rid, other):
        await log(runs, r, "a", [(i, 1, 1.0) for i in range(5)])
    token = (await page(runs, rid, "a", 2)).next_page_token
    err = await fails(page(runs, other, "a", 2, token))
    assert_invalid(err, {"page_token"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!not base64!!!",
        "€uro",
        _b64(b"\xff\xfe\x00"),
        _b64(b"[1, 2, 3]"),
        _b64(b'"a string"'),
        _b64(json.dumps({"q": "0" * 16, "p": [1, 2, 3]}).encode()),
        _b64(json.dumps({"p": [1, 2, 3]}).encode()),
    ],
    ids=[
        "word",
        "punctuation",
        "non-ascii",
        "binary",
        "json-list",
        "json-string",
        "foreign",
        "no-q",
    ],
)
async def test_garbage_page_token_is_invalid(runs, token: str) -> None:
    rid = await run_id_of(runs)
    await log(runs, rid, "g", [(i, 1, 1.0) for i in range(3)])
    err = await fails(page(runs, rid, "g", 1, token))
    assert_invalid(err, {"page_token"})


async def test_tampered_page_token_is_invalid(runs) -> None:
    rid = await run_id_of(runs)
    await log(runs, rid, "t", [(i, 1, 1.0) for i in range(3)])
    token = (await page(runs, rid, "t", 1)).next_page_token
    data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for position in (["x", 1, 2], [1, 2], [2**70, 0, 0], [0, 0, 2**64], None):
        forged = _b64(json.dumps({**data, "p": position}).encode())
        err = await fails(page(runs, rid, "t", 1, forged))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (position, err.details())
        assert error_info(err).reason == "INVALID_PARAMETER_VALUE"


async def test_unknown_key_has_an_empty_history(runs) -> None:
    rid = await run_id_of(runs)
    await log(runs, rid, "known", [(0, 1, 1.0)])
    resp = await page(runs, rid, "unknown")
    assert list(resp.metrics) == []
    assert resp.next_page_token == ""


async def test_history_holds_only_the_points_of_its_own_run(runs) -> None:
    rid, other = await run_id_of(runs), await run_id_of(runs)
    await log(runs, rid, "shared", [(0, 1, 1.0), (1, 1, 2.0)])
    await log(runs, other, "shared", [(0, 1, 9.0)])
    (got,) = await all_pages(runs, rid, "shared", 0)
    assert got == [(0, 1, 1.0), (1, 1, 2.0)]
    (got,) = await all_pages(runs, other, "shared", 0)
    assert got == [(0, 1, 9.0)]


async def test_points_logged_between_pages_after_the_cursor_appear_later(runs) -> None:
    rid = await run_id_of(runs)
    await log(runs, rid, "live", [(0, 1, 0.0), (1, 1, 1.0), (2, 1, 2.0)])
    first = await page(runs, rid, "live", 2)
    assert [m.step for m in first.metrics] == [0, 1]
    await log(runs, rid, "live", [(0, 5, 5.0), (3, 1, 3.0)])  # one before, one after
    rest = await page(runs, rid, "live", 10, first.next_page_token)
    assert [(m.step, m.value) for m in rest.metrics] == [(2, 2.0), (3, 3.0)]


async def test_history_of_unknown_run_is_not_found(runs) -> None:
    err = await fails(page(runs, MISSING_RUN, "m"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err).reason == "RESOURCE_DOES_NOT_EXIST"


async def test_history_with_malformed_run_id_or_key_is_invalid(runs) -> None:
    assert_invalid(await fails(page(runs, "not-a-run", "m")), {"run_id"})
    rid = await run_id_of(runs)
    assert_invalid(await fails(page(runs, rid, "")), {"metric_key"})
    assert_invalid(await fails(page(runs, rid, "a..b")), {"metric_key"})


# -- summaries ---------------------------------------------------------------------------------


def expected_summary(points: list[Point]) -> dict[str, object]:
    """The summary of distinct points, computed independently of the server."""
    values = [v for _, _, v in points]
    numbers = [v for v in values if not math.isnan(v)]
    finite = [v for v in numbers if math.isfinite(v)]
    latest = max(points, key=order_key)
    return {
        "count": len(points),
        "nan_count": len(values) - len(numbers),
        "min": min(numbers),
        "max": max(numbers),
        "mean": statistics.fmean(finite),
        "stddev": statistics.pstdev(finite),
        "first_step": min(s for s, _, _ in points),
        "last_step": max(s for s, _, _ in points),
        "latest": latest,
    }


def assert_summary(
    s: metric_pb2.MetricSummary, want: dict[str, object], stddev_rel: float = 1e-9
) -> None:
    assert s.count == want["count"]
    assert s.nan_count == want["nan_count"]
    assert s.min == want["min"]
    assert s.max == want["max"]
    assert s.mean == pytest.approx(want["mean"], rel=1e-12, abs=1e-12)
    assert s.stddev == pytest.approx(want["stddev"], rel=stddev_rel, abs=1e-12)
    assert s.first_step == want["first_step"]
    assert s.last_step == want["last_step"]
    latest = (s.latest_step, s.latest_timestamp, s.latest_value)
    assert same_points([latest], [want["latest"]])  # type: ignore[list-item]


async def test_summary_is_exact_after_out_of_order_batches_with_duplicates_and_nan(runs) -> None:
    rid = await run_id_of(runs)
    rng = random.Random(7)
    distinct: set[Point] = set()
    while len(distinct) < 600:
        step = rng.randrange(-50, 200)
        value = math.nan if rng.random() < 0.05 else round(rng.gauss(3.0, 2.5), 6)
        distinct.add((step, 1_000 + rng.randrange(3), value))
    points = list(distinct)
    # Every point once, then a quarter of them again (exact duplicates), all shuffled.
    logged = points + rng.sample(points, 150)
    rng.shuffle(logged)
    for i in range(0, len(logged), 97):
        await log(runs, rid, "loss", logged[i : i + 97])
    nan_points = [p for p in points if math.isnan(p[2])]
    assert nan_points, "the sample should hold NaN points"
    # NaN never compares equal, so a set keeps each NaN point apart: count them by key.
    unique = {(s, t, bits(v)): (s, t, v) for s, t, v in points}
    want = expected_summary(list(unique.values()))
    run = await get(runs, rid)
    assert_summary(summary_of(run, "loss"), want)
    assert same_points([latest_of(run, "loss")], [want["latest"]])  # type: ignore[list-item]
    (history,) = await all_pages(runs, rid, "loss", 0)
    assert len(history) == want["count"]


async def test_summary_is_stable_whether_logged_at_once_or_point_by_point(runs) -> None:
    # A large offset defeats the naive sum-of-squares variance (it would be off by ~100).
    points = [(i % 7, i, 1e9 + (i * 37 % 11) / 3) for i in range(40)]
    at_once, by_point = await run_id_of(runs), await run_id_of(runs)
    await log(runs, at_once, "x", points)
    await log(runs, by_point, "x", list(reversed(points)), chunk=1)
    want = expected_summary(points)
    assert_summary(summary_of(await get(runs, at_once), "x"), want)
    # Point by point, the running mean carries rounding of an ulp of 1e9 (1.2e-7) per step.
    assert_summary(summary_of(await get(runs, by_point), "x"), want, stddev_rel=1e-6)


async def test_summary_of_a_single_point_has_zero_stddev(runs) -> None:
    rid = await run_id_of(runs)
    await log(runs, rid, "one", [(4, 2, -2.5)])
    s = summary_of(await get(runs, rid), "one")
    assert (s.count, s.nan_count, s.min, s.max, s.mean, s.stddev) == (1, 0, -2.5, -2.5, -2.5, 0.0)
    assert (s.first_step, s.last_step, s.latest_step, s.latest_timestamp) == (4, 4, 4, 2)


async def test_summary_with_positive_infinity_has_infinite_mean_and_nan_stddev(runs) -> None:
    rid = await run_id_of(runs)
    await log(runs, rid, "inf", [(0, 1, 1.0), (1, 1, math.nan), (2, 1, 3.0)])
    await log(runs, rid, "inf", [(3, 1, math.inf), (4, 1, 2.0)])
    s = summary_of(await get(runs, rid), "inf")
    assert (s.count, s.nan_count) == (5, 1)
    assert (s.min, s.max) == (1.0, math.inf)
    assert s.mean == math.inf
    assert math.isnan(s.stddev)
    assert (s.latest_step, s.latest_value) == (4, 2.0)


async def test_summary_with_negative_infinity_has_negative_infinite_mean(runs) -> None:
    rid = await run_id_of(runs)
    await log(runs, rid, "ninf", [(0, 1, -math.inf), (1, 1, 5.0)])
    s = summary_of(await get(runs, rid), "ninf")
    assert (s.min, s.max, s.mean) == (-math.inf, 5.0, -math.inf)
    assert math.isnan(s.stddev)


async def test_summary_with_both_infinities_has_nan_mean(runs) -> None:
    rid = await run_id_of(runs)
    await log(runs, rid, "both", [(0, 1, -math.inf), (1, 1, 5.0), (2, 1, math.inf)])
    s = summary_of(await get(runs, rid), "both")
    assert (s.min, s.max) == (-math.inf, math.inf)
    assert math.isnan(s.mean)
    assert math.isnan(s.stddev)


async def test_summary_of_only_nan_points_is_nan_but_counted(runs) -> None:
    rid = await run_id_of(runs)
    await log(runs, rid, "nan", [(0, 1, math.nan), (1, 1, math.nan)])
    await log(runs, rid, "nan", [(0, 1, math.nan)])  # an exact duplicate
    s = summary_of(await get(runs, rid), "nan")
    assert (s.count, s.nan_count) == (2, 2)
    for value in (s.min, s.max, s.mean, s.stddev, s.latest_value):
        assert math.isnan(value)
    assert (s.first_step, s.last_step, s.latest_step) == (0, 1, 1)


async def test_nan_is_excluded_from_the_summary_of_later_numbers(runs) -> None:
    rid = await run_id_of(runs)
    await log(runs, rid, "mix", [(0, 1, math.nan)])
    await log(runs, rid, "mix", [(1, 1, 2.0), (2, 1, 4.0)])
    s = summary_of(await get(runs, rid), "mix")
    assert (s.count, s.nan_count, s.min, s.max, s.mean, s.stddev) == (3, 1, 2.0, 4.0, 3.0, 1.0)


@pytest.mark.parametrize("chunk", [1, 2], ids=["apart", "together"])
async def test_summary_of_extreme_magnitudes_keeps_a_finite_mean(runs, chunk: int) -> None:
    rid = await run_id_of(runs)
    await log(runs, rid, "huge", [(0, 1, MAX_DOUBLE), (1, 1, -MAX_DOUBLE)], chunk=chunk)
    await log(runs, rid, "tiny", [(0, 1, 5e-324), (1, 1, 1.5e-323)], chunk=chunk)
    run = await get(runs, rid)
    huge = summary_of(run, "huge")
    assert (huge.min, huge.max, huge.mean) == (-MAX_DOUBLE, MAX_DOUBLE, 0.0)
    tiny = summary_of(run, "tiny")
    assert (tiny.min, tiny.max, tiny.mean) == (5e-324, 1.5e-323, 1e-323)
    assert tiny.stddev == pytest.approx(5e-324, abs=1e-323)


async def test_exact_duplicates_across_and_within_batches_are_counted_once(runs) -> None:
    rid = await run_id_of(runs)
    await log(runs, rid, "d", [(0, 1, 1.0), (0, 1, 1.0), (1, 1, 2.0)])
    before = summary_of(await get(runs, rid), "d")
    await log(runs, rid, "d", [(1, 1, 2.0), (0, 1, 1.0)])
    after = summary_of(await get(runs, rid), "d")
    assert before == after
    assert (after.count, after.mean) == (2, 1.5)


# -- concurrency -------------------------------------------------------------------------------


async def test_concurrent_batches_to_one_run_all_succeed_with_exact_summaries(runs) -> None:
    rid = await run_id_of(runs)
    batches: list[list[tuple[str, Point]]] = []
    for b in range(8):
        batch = [("shared", (s, 1, float(s % 10))) for s in range(300)]  # the same in all 8
        batch += [("mine", (s, 2 + b, b + s / 1000)) for s in range(100)]
        batch += [(f"half{b % 2}", (s + b, 3, float(b))) for s in range(200)]
        random.Random(b).shuffle(batch)
        batches.append(batch)

    async def send(batch: list[tuple[str, Point]]) -> None:
        await runs.LogBatch(
            rpb.LogBatchRequest(
                run_id=rid,
                metrics=[
                    metric_pb2.Metric(key=k, step=s, timestamp=t, value=v) for k, (s, t, v) in batch
                ],
                tags=[run_pb2.RunTag(key="writer", value="any")],
            )
        )

    results = await asyncio.gather(*(send(b) for b in batches), return_exceptions=True)
    assert [r for r in results if r is not None] == []

    expected: dict[str, set[Point]] = {}
    for batch in batches:
        for key, point in batch:
            expected.setdefault(key, set()).add(point)
    run = await get(runs, rid)
    assert sorted(s.key for s in run.data.metric_summaries) == sorted(expected)
    for key, points in expected.items():
        assert_summary(summary_of(run, key), expected_summary(list(points)))
        assert latest_of(run, key) == max(points)
        (history,) = await all_pages(runs, rid, key, 0)
        assert history == sorted(points)


async def test_concurrent_single_metric_calls_are_all_kept(runs) -> None:
    rid = await run_id_of(runs)
    await asyncio.gather(
        *(
            runs.LogMetric(
                rpb.LogMetricRequest(run_id=rid, key="c", value=float(i), step=i % 5, timestamp=1)
            )
            for i in range(60)
        )
    )
    want = expected_summary([(i % 5, 1, float(i)) for i in range(60)])
    assert_summary(summary_of(await get(runs, rid), "c"), want)


async def test_concurrent_params_with_different_values_let_exactly_one_win(runs) -> None:
    rid = await run_id_of(runs)
    values = [f"value-{i}" for i in range(8)]
    results = await asyncio.gather(
        *(runs.LogParam(rpb.LogParamRequest(run_id=rid, key="seed", value=v)) for v in values),
        return_exceptions=True,
    )
    winners = [v for v, r in zip(values, results, strict=True) if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1, results
    assert len(losers) == 7
    for err in losers:
        assert isinstance(err, grpc.aio.AioRpcError)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        assert error_info(err).reason == "INVALID_STATE"
    params = {p.key: p.value for p in (await get(runs, rid)).data.params}
    assert params == {"seed": winners[0]}


async def test_concurrent_params_with_the_same_value_all_succeed(runs) -> None:
    rid = await run_id_of(runs)
    await asyncio.gather(
        *(runs.LogParam(rpb.LogParamRequest(run_id=rid, key="lr", value="0.1")) for _ in range(8))
    )
    assert [(p.key, p.value) for p in (await get(runs, rid)).data.params] == [("lr", "0.1")]
