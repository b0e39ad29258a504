"""Plot-ready envelopes of metric series: exact buckets over an x range, read from the
pre-aggregated blocks (domain/tiers.py) rather than from every point.

A bucket grid of width W = 2**g or 3 * 2**g is aligned to multiples of 2**g, so that each
block of the level just below g lies in one bucket. The buckets are then the blocks of that
level that lie in the x range, grouped in SQL. Only at the edges of a zoomed range can a
block straddle the range: there the read descends to finer levels, and to the points only
within a block of the finest level. A range with few points (up to RAW_FACTOR times the
buckets) is read from the points, and one with no more points than buckets comes back
point for point.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trackd.server.domain import blocks, tiers, validation
from trackd.server.domain.validation import Violations
from trackd.server.errors import InvalidArgument, run_not_found
from trackd.server.store import blocks as block_store
from trackd.server.store import tiers as store
from trackd.server.store.pool import Connection, Database
from trackd.v1 import run_service_pb2 as pb

RUNS_MAX = 100
KEYS_MAX = 100
BUCKETS_DEFAULT = 1000
BUCKETS_MAX = 2000
# A range with at most this many points per bucket asked for is read from the points.
RAW_FACTOR = 16
# Series read per database round (and per snapshot).
SERIES_PER_ROUND = 100
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

AXIS_STEP = pb.METRIC_AXIS_STEP
AXIS_WALL = pb.METRIC_AXIS_WALL_TIME
AXIS_RELATIVE = pb.METRIC_AXIS_RELATIVE_TIME

# Columns of an envelope, in the order of a bucket's aggregate below.
COLUMNS = "x_first x_last first last min max count nan_count pos_inf_count neg_inf_count".split()
# A bucket's aggregate: [x_first, x_last, first, last, min, max, count, nan, +inf, -inf],
# min and max NaN without a finite value.
Agg = list[Any]


@dataclass
class Grid:
    """Bucket of x: ((x >> g) - base) // m."""

    g: int
    m: int
    base: int

    def of(self, x: int) -> int:
        """The bucket of x."""
        return ((x >> self.g) - self.base) // self.m


@dataclass
class Series:
    """One (run, key) asked for, and its envelope once read."""

    run_id: str
    key: str
    series_id: int
    count: int
    # Added to the x of the tiers to give the x of the answer (relative time).
    offset: int
    lo: int = 0
    hi: int = -1
    # Whether the asked range cuts the series below its first x, above its last.
    cut_lo: bool = False
    cut_hi: bool = False
    points: bool = True
    columns: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class Query:
    """A validated StreamMetricEnvelopesRequest."""

    run_ids: list[str]
    keys: list[str]
    axis: pb.MetricAxis.ValueType
    x_min: int | None
    x_max: int | None
    buckets: int


def parse(request: pb.StreamMetricEnvelopesRequest) -> Query:
    """Validates a request; InvalidArgument naming every bad field."""
    v = Violations()
    if not request.run_ids:
        v.add("run_ids", "must name at least one run")
    elif len(request.run_ids) > RUNS_MAX:
        v.add("run_ids", f"has {len(request.run_ids)} entries; the limit is {RUNS_MAX}")
    for i, rid in enumerate(request.run_ids[: RUNS_MAX + 1]):
        try:
            validation.run_id(rid, f"run_ids[{i}]")
        except InvalidArgument as err:
            v.items.extend(err.violations)
    if not request.metric_keys:
        v.add("metric_keys", "must name at least one key")
    elif len(request.metric_keys) > KEYS_MAX:
        v.add("metric_keys", f"has {len(request.metric_keys)} entries; the limit is {KEYS_MAX}")
    for i, key in enumerate(request.metric_keys[: KEYS_MAX + 1]):
        v.key(f"metric_keys[{i}]", key)
    axis = request.axis or AXIS_STEP
    if axis not in (AXIS_STEP, AXIS_WALL, AXIS_RELATIVE):
        v.add("axis", f"is {request.axis}, not a MetricAxis")
    buckets = request.buckets or BUCKETS_DEFAULT
    if not 1 <= buckets <= BUCKETS_MAX:
        v.add("buckets", f"is {request.buckets}; it must be between 1 and {BUCKETS_MAX}")
    x_min = request.x_min if request.HasField("x_min") else None
    x_max = request.x_max if request.HasField("x_max") else None
    if x_min is not None and x_max is not None and x_min > x_max:
        v.add("x_min", f"is {x_min}, above x_max ({x_max})")
    v.raise_if_any()
    return Query(
        list(dict.fromkeys(request.run_ids)),
        list(dict.fromkeys(request.metric_keys)),
        axis,
        x_min,
        x_max,
        buckets,
    )


class Envelopes:
    """Envelopes of series over an x range."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def stream(
        self, request: pb.StreamMetricEnvelopesRequest
    ) -> AsyncIterator[pb.StreamMetricEnvelopesResponse]:
        """One StreamMetricEnvelopesResponse per (run, key) asked for that has points, in
        the order of the request's runs, then keys. InvalidArgument for a bad request,
        NotFound for an unknown run."""
        q = parse(request)
        series = await self.db.read_lagging(lambda conn: _series(conn, q))
        for start in range(0, len(series), SERIES_PER_ROUND):
            part = series[start : start + SERIES_PER_ROUND]
            await self.db.read_lagging(lambda conn, part=part: _read(conn, q, part))  # type: ignore[misc]
            for s in part:
                yield pb.StreamMetricEnvelopesResponse(
                    run_id=s.run_id, metric_key=s.key, axis=q.axis, points=s.points, **s.columns
                )


async def _series(conn: Connection, q: Query) -> list[Series]:
    runs = await store.runs(conn, q.run_ids)
    for rid in q.run_ids:
        if rid not in runs:
            raise run_not_found(rid)
    rows = await store.series(conn, [r["run_pk"] for r in runs.values()], q.keys)
    found = {(r["run_pk"], r["key"]): r for r in rows}
    out = []
    for rid in q.run_ids:
        run = runs[rid]
        offset = -run["start_time"] if q.axis == AXIS_RELATIVE else 0
        for key in q.keys:
            row = found.get((run["run_pk"], key))
            if row is not None:
                out.append(Series(rid, key, row["series_id"], row["count"], offset))
    return out


def _clamp(x: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, x))


def grid(lo: int, hi: int, buckets: int, floor_bits: int) -> Grid:
    """The finest grid of widths 2**g and 3 * 2**g (g >= floor_bits) that covers [lo, hi]
    with at most `buckets` buckets."""
    ideal = max(1 << floor_bits, -(-(hi - lo + 1) // buckets))
    for width, g, m in _WIDTHS:
        if width < ideal or g < floor_bits:
            continue
        base = lo >> g
        if ((hi >> g) - base) // m + 1 <= buckets:
            return Grid(g, m, base)
    raise AssertionError("unreachable: the widest grid is one bucket")


# Bucket widths in increasing order: (width, g, m) with width = m * 2**g. The last, 2**64
# as two halves of 2**63, puts every int64 in one bucket.
_WIDTHS = sorted([(m << g, g, m) for g in range(64) for m in (1, 3)] + [(1 << 64, 63, 2)])


async def _read(conn: Connection, q: Query, series: list[Series]) -> None:
    """Reads the envelopes of `series` into them, in one snapshot."""
    axis = tiers.STEP if q.axis == AXIS_STEP else tiers.TIME
    floor = INT64_MIN if axis == tiers.STEP else 0
    # The x range of each series, in the tiers' x: the asked range within the series'.
    rows = await store.extents(conn, [s.series_id for s in series], axis, tiers.TOP[axis])
    cut: list[Series] = []
    for r in rows:
        s = series[r["i"]]
        if r["x_min"] is None:  # no blocks (points written by a server without tiers)
            continue
        s.lo, s.hi = r["x_min"], r["x_max"]
        if q.x_min is not None and q.x_min - s.offset > s.lo:
            s.lo = _clamp(q.x_min - s.offset, floor, INT64_MAX + 1)
            s.cut_lo = True
        if q.x_max is not None and q.x_max - s.offset < s.hi:
            s.hi = _clamp(q.x_max - s.offset, floor - 1, INT64_MAX)
            s.cut_hi = True
        if s.lo > s.hi:
            _answer_points(s, [], [], [], axis)
        elif s.cut_lo or s.cut_hi:
            cut.append(s)
    live = [s for s in series if s.lo <= s.hi]
    # How many points each cut range holds, at most.
    estimate: dict[int, int] = {}
    if cut:
        items = []
        for s in cut:
            level = next(
                (lv for lv in tiers.LEVELS[axis] if (s.hi >> lv) - (s.lo >> lv) <= 64),
                tiers.TOP[axis],
            )
            items.append((s.series_id, level, s.lo >> level, s.hi >> level, s.lo, s.hi))
        found = await store.estimates(conn, axis, items)
        estimate = {id(s): found[i] for i, s in enumerate(cut)}
    raw: list[Series] = []
    tiered: list[Series] = []
    for s in live:
        n = estimate.get(id(s), s.count)
        (raw if n <= RAW_FACTOR * q.buckets else tiered).append(s)
    for s in raw:
        await _read_raw(conn, s, axis, q.buckets)
    if tiered:
        await _read_tiers(conn, tiered, axis, q.buckets)


async def _intervals(conn: Connection, s: Series, axis: int) -> list[tuple[int, int]]:
    """Step intervals (disjoint, ascending) that hold every point of the series with x in
    [s.lo, s.hi]: the range itself on the step axis, else the step extents of the finest
    blocks that meet it."""
    if axis == tiers.STEP:
        return [(s.lo, s.hi)]
    finest = tiers.FINEST[axis]
    rows = await store.blocks(conn, axis, finest, [(s.series_id, s.lo >> finest, s.hi >> finest)])
    spans = sorted(
        (r["y_min"], r["y_max"]) for r in rows if r["x_max"] >= s.lo and r["x_min"] <= s.hi
    )
    return _merge_intervals(spans)


def _merge_intervals(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


async def _read_points(conn: Connection, s: Series, axis: int, limit: int) -> bool:
    """Answers the series point for point if its range holds at most `limit` points; says
    whether it did."""
    intervals = await _intervals(conn, s, axis)
    steps, stamps, values = await _points(conn, axis, s.series_id, intervals, s.lo, s.hi, limit + 1)
    if len(steps) > limit:
        return False
    _answer_points(s, steps, stamps, values, axis)
    return True


def _answer_points(
    s: Series, steps: list[int], stamps: list[int], values: list[float], axis: int
) -> None:
    xs = steps if axis == tiers.STEP else [t + s.offset for t in stamps]
    finite = [v if v - v == 0.0 else math.nan for v in values]
    s.points = True
    s.columns = {
        "x_first": xs,
        "x_last": xs,
        "first": values,
        "last": values,
        "min": finite,
        "max": finite,
        "count": [1] * len(xs),
        "nan_count": [1 if v != v else 0 for v in values],
        "pos_inf_count": [1 if v == math.inf else 0 for v in values],
        "neg_inf_count": [1 if v == -math.inf else 0 for v in values],
    }


def _answer_buckets(s: Series, aggs: Sequence[Agg]) -> None:
    s.points = False
    s.columns = {name: [a[i] for a in aggs] for i, name in enumerate(COLUMNS)}
    if s.offset:
        s.columns["x_first"] = [x + s.offset for x in s.columns["x_first"]]
        s.columns["x_last"] = [x + s.offset for x in s.columns["x_last"]]


async def _points(
    conn: Connection,
    axis: int,
    series_id: int,
    intervals: Sequence[tuple[int, int]],
    lo: int,
    hi: int,
    limit: int | None,
    found: Sequence[Any] | None = None,
) -> blocks.Columns:
    """Up to `limit` points (None: all) of a series with a step in one of `intervals` and x
    in [lo, hi], in (x, y, value) order, from its rows and its compacted blocks (`found`:
    the blocks of those steps when the caller has read them)."""
    if not intervals:
        return [], [], []
    rows = await store.points(conn, axis, series_id, intervals, lo, hi, limit)
    if found is None:
        found = await block_store.overlapping(conn, series_id, intervals)
    if not found:
        return rows
    in_steps = blocks.in_steps(intervals)

    def keep(steps: np.ndarray, stamps: np.ndarray, values: np.ndarray) -> np.ndarray:
        xs = steps if axis == tiers.STEP else stamps
        out: np.ndarray = in_steps(steps, stamps, values) & (xs >= lo) & (xs <= hi)
        return out

    order = "step" if axis == tiers.STEP else "ts"
    return blocks.lists(*blocks.merged(rows, found, keep=keep, order=order), limit)


async def _raw_buckets(
    conn: Connection,
    axis: int,
    series_id: int,
    intervals: Sequence[tuple[int, int]],
    lo: int,
    hi: int,
    g: Grid,
) -> dict[int, Agg]:
    """The buckets of the grid over the points of a series with a step in one of
    `intervals` and x in [lo, hi]: aggregated in SQL when every such point is a row, else
    from the points of its rows and blocks."""
    if not intervals:
        return {}
    found = await block_store.overlapping(conn, series_id, intervals)
    if not found:
        rows = await store.raw_buckets(conn, axis, series_id, intervals, lo, hi, (g.g, g.base, g.m))
        return {r["bucket"]: [r[c] for c in COLUMNS] for r in rows}
    steps, stamps, values = await _points(conn, axis, series_id, intervals, lo, hi, None, found)
    return _buckets_of(steps if axis == tiers.STEP else stamps, values, g)


def _buckets_of(xs: Sequence[int], values: Sequence[float], g: Grid) -> dict[int, Agg]:
    """Buckets of points sorted by (x, y, value), as the raw-bucket SQL aggregates them."""
    nan = math.nan
    out: dict[int, Agg] = {}
    for x, v in zip(xs, values, strict=True):
        finite = v if v - v == 0.0 else nan
        a = out.get(g.of(x))
        if a is None:
            a = out[g.of(x)] = [x, x, v, v, finite, finite, 0, 0, 0, 0]
        a[1], a[3] = x, v
        a[4], a[5] = _fmin(a[4], finite), _fmax(a[5], finite)
        a[6] += 1
        a[7] += v != v
        a[8] += v == math.inf
        a[9] += v == -math.inf
    return out


def _merge(a: Agg, b: Agg) -> Agg:
    """The aggregate of two disjoint x ranges' aggregates."""
    return [
        min(a[0], b[0]),
        max(a[1], b[1]),
        a[2] if a[0] < b[0] else b[2],
        a[3] if a[1] > b[1] else b[3],
        _fmin(a[4], b[4]),
        _fmax(a[5], b[5]),
        a[6] + b[6],
        a[7] + b[7],
        a[8] + b[8],
        a[9] + b[9],
    ]


def _fmin(a: float, b: float) -> float:
    if a != a:
        return b
    if b != b:
        return a
    return min(a, b)


def _fmax(a: float, b: float) -> float:
    if a != a:
        return b
    if b != b:
        return a
    return max(a, b)


async def _read_raw(conn: Connection, s: Series, axis: int, buckets: int) -> None:
    """A range with few points: point for point, or buckets aggregated from the points."""
    if await _read_points(conn, s, axis, buckets):
        return
    g = grid(s.lo, s.hi, buckets, 0)
    intervals = await _intervals(conn, s, axis)
    aggs = await _raw_buckets(conn, axis, s.series_id, intervals, s.lo, s.hi, g)
    _answer_buckets(s, [aggs[b] for b in sorted(aggs)])


async def _read_tiers(conn: Connection, series: list[Series], axis: int, buckets: int) -> None:
    """Buckets from the blocks, for many series in one query, then the edges of zoomed
    ranges."""
    grids = [grid(s.lo, s.hi, buckets, tiers.FINEST[axis]) for s in series]
    levels = [tiers.level_at_most(axis, g.g) for g in grids]
    items = [
        (s.series_id, lv, s.lo >> lv, s.hi >> lv, s.lo, s.hi, g.g - lv, g.base, g.m)
        for s, g, lv in zip(series, grids, levels, strict=True)
    ]
    rows = {r["i"]: r for r in await store.buckets(conn, axis, items)}
    extra = await _edges(conn, series, grids, levels, axis)
    for i, s in enumerate(series):
        r = rows.get(i)
        cols = {c: (r[c] or []) if r is not None else [] for c in ("bucket", *COLUMNS)}
        if i in extra:
            aggs = {b: [cols[c][k] for c in COLUMNS] for k, b in enumerate(cols["bucket"])}
            for b, agg in extra[i].items():
                aggs[b] = _merge(aggs[b], agg) if b in aggs else agg
            ordered = [aggs[b] for b in sorted(aggs)]
            total = sum(a[6] for a in ordered)
        else:
            ordered = []
            total = sum(cols["count"])
        if total <= buckets:
            await _read_points(conn, s, axis, buckets)
        elif i in extra:
            _answer_buckets(s, ordered)
        else:
            s.points = False
            s.columns = {c: cols[c] for c in COLUMNS}
            if s.offset:
                s.columns["x_first"] = [x + s.offset for x in cols["x_first"]]
                s.columns["x_last"] = [x + s.offset for x in cols["x_last"]]


async def _edges(
    conn: Connection, series: list[Series], grids: list[Grid], levels: list[int], axis: int
) -> dict[int, dict[int, Agg]]:
    """What the blocks that straddle an edge of a zoomed range hold inside it, by series
    index and bucket: finer blocks inside the range, and the points within a finest block
    that still straddles."""
    out: dict[int, dict[int, Agg]] = {}

    def add(i: int, agg: Agg) -> None:
        b = grids[i].of(agg[0])
        got = out.setdefault(i, {})
        got[b] = _merge(got[b], agg) if b in got else agg

    # (series index, level, first block, last block, whether blocks inside are counted)
    pending: list[tuple[int, int, int, int, bool]] = []
    for i, (s, lv) in enumerate(zip(series, levels, strict=True)):
        edges = {s.lo >> lv} if s.cut_lo else set()
        if s.cut_hi:
            edges.add(s.hi >> lv)
        for edge in sorted(edges):
            pending.append((i, lv, edge, edge, True))
    raws: list[tuple[int, int, int, int, int]] = []
    while pending:
        by_level: dict[int, list[tuple[int, int, int, int, bool]]] = {}
        for p in pending:
            by_level.setdefault(p[1], []).append(p)
        pending = []
        for level, group in sorted(by_level.items()):
            rows = await store.blocks(
                conn, axis, level, [(series[p[0]].series_id, p[2], p[3]) for p in group]
            )
            for r in rows:
                i, _, _, _, counted = group[r["i"]]
                s = series[i]
                if r["x_max"] < s.lo or r["x_min"] > s.hi:
                    continue
                if s.lo <= r["x_min"] and r["x_max"] <= s.hi:
                    if not counted:
                        add(i, _block_agg(r))
                    continue
                if level == tiers.FINEST[axis]:
                    raws.append(
                        (i, max(s.lo, r["x_min"]), min(s.hi, r["x_max"]), r["y_min"], r["y_max"])
                    )
                    continue
                finer = level - tiers.FAN_BITS
                first = max(r["block"] << tiers.FAN_BITS, s.lo >> finer)
                last = min(
                    (r["block"] << tiers.FAN_BITS) + (1 << tiers.FAN_BITS) - 1, s.hi >> finer
                )
                pending.append((i, finer, first, last, False))
    for i, a, b, y_min, y_max in raws:
        s = series[i]
        intervals = [(a, b)] if axis == tiers.STEP else [(y_min, y_max)]
        found = await _raw_buckets(conn, axis, s.series_id, intervals, a, b, grids[i])
        for agg in found.values():
            add(i, agg)
    return out


def _block_agg(r: Any) -> Agg:
    nan = math.nan
    return [
        r["x_min"],
        r["x_max"],
        r["first_value"],
        r["last_value"],
        nan if r["min_value"] is None else r["min_value"],
        nan if r["max_value"] is None else r["max_value"],
        r["count"],
        r["nan_count"],
        r["pos_inf_count"],
        r["neg_inf_count"],
    ]
