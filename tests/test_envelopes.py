"""StreamMetricEnvelopes through a real channel, every bucket checked against a brute-force
computation over every stored point (read back with StreamMetricHistory)."""

from __future__ import annotations

import itertools
import math
import random
import struct
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import STATS, error_info, new_run, violations
from trackd.v1 import run_service_pb2 as rpb

Point = tuple[int, int, float]  # (step, timestamp, value)
STEP = rpb.METRIC_AXIS_STEP
WALL = rpb.METRIC_AXIS_WALL_TIME
RELATIVE = rpb.METRIC_AXIS_RELATIVE_TIME
AXES = (STEP, WALL, RELATIVE)
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
T0 = 1_700_000_000_000
MISSING_RUN = "fedcba9876543210fedcba9876543210"
_sequence = itertools.count(1)


# -- logging and reading -----------------------------------------------------------------------


async def log(runs, run_id: str, key: str, points: Sequence[Point], chunk: int = 5000) -> None:  # type: ignore[no-untyped-def]
    """Streams points in chunks of `chunk`, in the order given."""
    stream_id = f"env-{next(_sequence)}-{run_id[:8]}"

    async def gen():  # type: ignore[no-untyped-def]
        yield rpb.StreamMetricsRequest(stream_id=stream_id, sequence=0)
        for seq, start in enumerate(range(0, len(points), chunk), 1):
            part = points[start : start + chunk]
            cols = rpb.MetricColumns(
                run_id=run_id,
                key=key,
                steps=[p[0] for p in part],
                timestamps=[p[1] for p in part],
                values=[p[2] for p in part],
            )
            yield rpb.StreamMetricsRequest(stream_id=stream_id, sequence=seq, series=[cols])

    acks = [ack async for ack in runs.StreamMetrics(gen())]
    assert not any(a.rejections for a in acks), acks


async def stored(runs, run_id: str, key: str) -> list[Point]:  # type: ignore[no-untyped-def]
    out: list[Point] = []
    async for c in runs.StreamMetricHistory(
        rpb.StreamMetricHistoryRequest(run_id=run_id, metric_key=key, chunk_size=200_000)
    ):
        out.extend(zip(c.steps, c.timestamps, c.values, strict=True))
    return out


async def envelopes(runs, run_ids: list[str], keys: list[str], **kw: Any) -> list[Any]:  # type: ignore[no-untyped-def]
    req = rpb.StreamMetricEnvelopesRequest(run_ids=run_ids, metric_keys=keys, **kw)
    return [r async for r in runs.StreamMetricEnvelopes(req)]


async def fails(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for _ in call:
            pass
    return exc.value


# -- the brute force ---------------------------------------------------------------------------


def bits(v: float) -> bytes:
    return struct.pack("<d", v)


def vkey(v: float) -> tuple[bool, float]:
    """A value's place in PostgreSQL's float8 order (NaN greatest)."""
    return (True, 0.0) if math.isnan(v) else (False, v)


def same_value(a: float, b: float) -> bool:
    """Equal as numbers (-0.0 == 0.0), or both NaN."""
    return (math.isnan(a) and math.isnan(b)) or a == b


def check(
    resp: Any,
    points: Sequence[Point],
    axis: int,
    buckets: int,
    start: int = 0,
    x_min: int | None = None,
    x_max: int | None = None,
) -> None:
    """Asserts that an envelope is exact over `points` (every point of the series)."""
    STATS["generated inputs tried"] += 1
    if axis == STEP:
        keyed = [((p[0], p[1], *vkey(p[2])), p[0], p) for p in points]
    else:
        off = start if axis == RELATIVE else 0
        keyed = [((p[1], p[0], *vkey(p[2])), p[1] - off, p) for p in points]
    inside = sorted(
        (k, x, p)
        for k, x, p in keyed
        if (x_min is None or x >= x_min) and (x_max is None or x <= x_max)
    )
    n = len(resp.count)
    cols = [
        resp.x_first,
        resp.x_last,
        resp.first,
        resp.last,
        resp.min,
        resp.max,
        resp.nan_count,
        resp.pos_inf_count,
        resp.neg_inf_count,
    ]
    assert all(len(c) == n for c in cols)
    assert resp.points == (len(inside) <= buckets)
    if resp.points:
        assert n == len(inside)
        for i, (_, x, p) in enumerate(inside):
            v = p[2]
            assert (resp.x_first[i], resp.x_last[i]) == (x, x)
            assert bits(resp.first[i]) == bits(v) == bits(resp.last[i])
            finite = v if math.isfinite(v) else math.nan
            assert same_value(resp.min[i], finite) and same_value(resp.max[i], finite)
            assert resp.count[i] == 1
            assert resp.nan_count[i] == int(math.isnan(v))
            assert resp.pos_inf_count[i] == int(v == math.inf)
            assert resp.neg_inf_count[i] == int(v == -math.inf)
        return
    assert 0 < n <= buckets
    assert sum(resp.count) == len(inside)
    k = 0  # the next point of `inside`
    for b in range(n):
        lo, hi = resp.x_first[b], resp.x_last[b]
        assert lo <= hi
        if b:
            assert resp.x_last[b - 1] < lo, "buckets overlap or are out of order"
        # No point in range between the previous bucket and this one.
        assert inside[k][1] >= lo, f"a point at x={inside[k][1]} is in no bucket"
        j = k
        while j < len(inside) and inside[j][1] <= hi:
            j += 1
        mine = [p for _, _, p in inside[k:j]]
        xs = [x for _, x, _ in inside[k:j]]
        values = [p[2] for p in mine]
        finite = [v for v in values if math.isfinite(v)]
        assert mine, f"bucket {b} is empty"
        assert (resp.x_first[b], resp.x_last[b]) == (xs[0], xs[-1])
        assert resp.count[b] == len(mine)
        assert resp.nan_count[b] == sum(1 for v in values if math.isnan(v))
        assert resp.pos_inf_count[b] == sum(1 for v in values if v == math.inf)
        assert resp.neg_inf_count[b] == sum(1 for v in values if v == -math.inf)
        assert same_value(resp.min[b], min(finite) if finite else math.nan), b
        assert same_value(resp.max[b], max(finite) if finite else math.nan), b
        assert bits(resp.first[b]) == bits(values[0]), (b, resp.first[b], values[0])
        assert bits(resp.last[b]) == bits(values[-1]), (b, resp.last[b], values[-1])
        k = j
    assert k == len(inside), f"a point at x={inside[k][1]} is in no bucket"


async def check_all(  # type: ignore[no-untyped-def]
    runs,
    run_id: str,
    key: str,
    points: Sequence[Point],
    start: int,
    buckets: int,
    x_min: int | None = None,
    x_max: int | None = None,
    axes: Sequence[int] = AXES,
) -> None:
    for axis in axes:
        kw: dict[str, Any] = {"axis": axis, "buckets": buckets}
        if x_min is not None:
            kw["x_min"] = x_min
        if x_max is not None:
            kw["x_max"] = x_max
        got = await envelopes(runs, [run_id], [key], **kw)
        assert len(got) == 1
        assert (got[0].run_id, got[0].metric_key, got[0].axis) == (run_id, key, axis)
        check(got[0], points, axis, buckets, start, x_min, x_max)


async def series_run(runs, points: Sequence[Point], key: str = "m", chunk: int = 5000):  # type: ignore[no-untyped-def]
    """A run with `points` logged; (run id, its start time, the stored points)."""
    run = await new_run(runs, start_time=T0 - 12_345)
    await log(runs, run.info.run_id, key, points, chunk)
    return run.info.run_id, run.info.start_time, await stored(runs, run.info.run_id, key)


# -- series ------------------------------------------------------------------------------------


def adversarial(n: int, seed: int) -> list[Point]:
    """A series with spikes, NaN, +-Inf, -0.0, duplicate steps with other timestamps and
    values, and timestamps out of step order."""
    rng = random.Random(seed)
    out: list[Point] = []
    for i in range(n):
        step = i // 3 if i % 7 else i // 3 + rng.randrange(-50, 50)
        ts = T0 + i * 3 + rng.randrange(-400, 400)
        r = rng.random()
        if r < 0.01:
            v = rng.choice([math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -1e308, 5e-324])
        else:
            v = math.sin(i / 50) + (rng.choice([1e6, -1e6]) if r > 0.997 else 0.0)
        out.append((step, ts, v))
    return out


async def test_adversarial_series_every_axis_and_bucket_count(runs) -> None:  # type: ignore[no-untyped-def]
    points = adversarial(60_000, 1)
    random.Random(2).shuffle(points)  # out of order, across many batches
    run_id, start, stored_points = await series_run(runs, points, chunk=997)
    assert len(stored_points) == len(points)
    for buckets in (1, 2, 7, 100, 1000, 2000):
        await check_all(runs, run_id, "m", stored_points, start, buckets)


async def test_zoomed_ranges_cut_blocks_exactly(runs) -> None:  # type: ignore[no-untyped-def]
    points = adversarial(40_000, 3)
    run_id, start, pts = await series_run(runs, points, chunk=3000)
    rng = random.Random(4)
    steps = sorted({p[0] for p in pts})
    stamps = sorted({p[1] for p in pts})
    for _ in range(12):
        buckets = rng.choice([3, 50, 500])
        a, b = sorted(rng.sample(steps, 2))
        await check_all(runs, run_id, "m", pts, start, buckets, a + 1, b - 1, axes=[STEP])
        a, b = sorted(rng.sample(stamps, 2))
        await check_all(runs, run_id, "m", pts, start, buckets, a, b, axes=[WALL])
        await check_all(
            runs, run_id, "m", pts, start, buckets, a - start - 3, b - start, axes=[RELATIVE]
        )
    for axis, xs, off in ((STEP, steps, 0), (WALL, stamps, 0), (RELATIVE, stamps, start)):
        x = xs[len(xs) // 2] - off
        # One x; a range with no point; open on one side; wider than the series.
        await check_all(runs, run_id, "m", pts, start, 10, x, x, axes=[axis])
        await check_all(runs, run_id, "m", pts, start, 10, x_min=xs[-1] - off + 1, axes=[axis])
        await check_all(runs, run_id, "m", pts, start, 10, x_min=x, axes=[axis])
        await check_all(runs, run_id, "m", pts, start, 10, x_max=x, axes=[axis])
        await check_all(runs, run_id, "m", pts, start, 10, INT64_MIN, INT64_MAX, axes=[axis])


async def test_everything_at_step_0_is_one_bucket_without_reading_every_point(runs) -> None:  # type: ignore[no-untyped-def]
    points = [(0, T0 + i // 2, float(i % 101) - 50.0) for i in range(30_000)]
    points[12_345] = (0, T0 + 6172, math.nan)
    run_id, start, pts = await series_run(runs, points)
    await check_all(runs, run_id, "m", pts, start, 100)
    await check_all(runs, run_id, "m", pts, start, 100, -5, 0)
    await check_all(runs, run_id, "m", pts, start, 3, 0, 0, axes=[STEP])
    got = await envelopes(runs, [run_id], ["m"], buckets=1000)
    assert list(got[0].count) == [30_000] and not got[0].points


async def test_sparse_steps_and_int64_extremes(runs) -> None:  # type: ignore[no-untyped-def]
    steps = [0, 10**12, -(10**12), INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1, 1, -1]
    points = [(s, T0 + i, float(i)) for i, s in enumerate(steps)]
    points += [(s, 2**62 + i, -float(i)) for i, s in enumerate(steps)]  # far timestamps
    points += [(10**12 + i, T0 + 5 * i, math.cos(i)) for i in range(3000)]
    run_id, start, pts = await series_run(runs, points, chunk=211)
    for buckets in (1, 2, 5, 40, 2000):
        await check_all(runs, run_id, "m", pts, start, buckets)
    for a, b in [(INT64_MIN, -1), (0, INT64_MAX), (-1, 1), (10**12 + 5, 10**12 + 2000)]:
        await check_all(runs, run_id, "m", pts, start, 7, a, b, axes=[STEP])


async def test_a_series_shorter_than_the_buckets_comes_back_point_for_point(runs) -> None:  # type: ignore[no-untyped-def]
    points = [(5, T0 + 3, 1.0), (5, T0 + 1, -0.0), (2, T0 + 9, math.nan), (9, T0, math.inf)]
    run_id, start, pts = await series_run(runs, points)
    for axis in AXES:
        got = await envelopes(runs, [run_id], ["m"], axis=axis, buckets=4)
        assert got[0].points and list(got[0].count) == [1, 1, 1, 1]
        check(got[0], pts, axis, 4, start)
    got = await envelopes(runs, [run_id], ["m"], buckets=4)
    assert list(got[0].x_first) == [2, 5, 5, 9]
    assert [bits(v) for v in got[0].first[1:3]] == [bits(-0.0), bits(1.0)]
    await check_all(runs, run_id, "m", pts, start, 3)


async def test_many_runs_and_keys_in_one_call_in_request_order(runs) -> None:  # type: ignore[no-untyped-def]
    ids = []
    logged = {}
    for r in range(3):
        run = await new_run(runs, start_time=T0 + r)
        ids.append(run.info.run_id)
        for key in ("a", "b"):
            if (r, key) == (1, "b"):
                continue  # a run without the key has no response for it
            pts = [(i, T0 + 10 * i + r, float(i * (r + 1))) for i in range(5000 + 100 * r)]
            await log(runs, run.info.run_id, key, pts)
            logged[(run.info.run_id, key)] = (run.info.start_time, pts)
    got = await envelopes(runs, ids, ["b", "a", "zzz"], buckets=20, axis=RELATIVE)
    assert [(g.run_id, g.metric_key) for g in got] == [
        (ids[0], "b"),
        (ids[0], "a"),
        (ids[1], "a"),
        (ids[2], "b"),
        (ids[2], "a"),
    ]
    for g in got:
        start, pts = logged[(g.run_id, g.metric_key)]
        check(g, pts, RELATIVE, 20, start)


async def test_bad_requests_name_the_field(runs) -> None:  # type: ignore[no-untyped-def]
    run_id = (await new_run(runs)).info.run_id
    cases = [
        ({"metric_keys": ["m"]}, {"run_ids"}),
        ({"run_ids": [run_id]}, {"metric_keys"}),
        ({"run_ids": [run_id] * 101, "metric_keys": ["m"]}, {"run_ids"}),
        ({"run_ids": [run_id], "metric_keys": [f"k{i}" for i in range(101)]}, {"metric_keys"}),
        ({"run_ids": ["nope"], "metric_keys": ["m"]}, {"run_ids[0]"}),
        ({"run_ids": [run_id], "metric_keys": ["a..b"]}, {"metric_keys[0]"}),
        ({"run_ids": [run_id], "metric_keys": ["m"], "buckets": 2001}, {"buckets"}),
        ({"run_ids": [run_id], "metric_keys": ["m"], "buckets": -1}, {"buckets"}),
        ({"run_ids": [run_id], "metric_keys": ["m"], "x_min": 5, "x_max": 4}, {"x_min"}),
        ({"run_ids": [run_id], "metric_keys": ["m"], "axis": 9}, {"axis"}),
    ]
    for kw, fields in cases:
        err = await fails(runs.StreamMetricEnvelopes(rpb.StreamMetricEnvelopesRequest(**kw)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, kw
        assert error_info(err).reason == "INVALID_PARAMETER_VALUE"
        assert set(violations(err)) == fields, (kw, violations(err))
    err = await fails(
        runs.StreamMetricEnvelopes(
            rpb.StreamMetricEnvelopesRequest(run_ids=[run_id, MISSING_RUN], metric_keys=["m"])
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(err).reason == "RESOURCE_DOES_NOT_EXIST"
    assert await envelopes(runs, [run_id], ["m"]) == []


# -- generated series --------------------------------------------------------------------------

STEPS = st.one_of(
    st.integers(-3, 3),
    st.integers(0, 5000),
    st.sampled_from([INT64_MIN, INT64_MAX, 10**12, -(10**12), 2**30, 2**30 - 1]),
)
STAMPS = st.one_of(st.integers(T0, T0 + 100), st.integers(T0, T0 + 10**7), st.just(2**62))
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, math.nan]),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(
    points=st.lists(st.tuples(STEPS, STAMPS, VALUES), min_size=1, max_size=120),
    repeat=st.integers(1, 40),
    chunk=st.integers(1, 50),
    buckets=st.integers(1, 6),
    bounds=st.tuples(st.none() | STEPS, st.none() | STEPS),
)
async def test_generated_series_are_exact_in_every_bucket(  # type: ignore[no-untyped-def]
    runs, points, repeat, chunk, buckets, bounds
) -> None:
    # Repeats of the points at other steps make blocks of many points.
    many = [
        (s + r * 64 if abs(s) < 2**40 else s, t, v) for r in range(repeat) for s, t, v in points
    ]
    run_id, start, pts = await series_run(runs, many, chunk=chunk)
    x_min, x_max = bounds
    if x_min is not None and x_max is not None and x_min > x_max:
        x_min, x_max = x_max, x_min
    await check_all(runs, run_id, "m", pts, start, buckets, x_min, x_max, axes=[STEP])
    await check_all(runs, run_id, "m", pts, start, buckets)
