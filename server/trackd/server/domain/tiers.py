"""Pre-aggregated blocks of metric series (the tiers): their levels, and the blocks of a
batch of inserted points, folded into the stored ones in the transaction of the points.

A block of level k on an axis holds the points whose x lies in [b << k, (b + 1) << k):
their counts, finite min and max, actual x extent, the extent of the other coordinate (y:
the timestamp on the step axis, the step on the timestamp axis) and the first and last
point in (x, y, value) order, PostgreSQL's float8 order (NaN greatest). Blocks merge
commutatively, so points may arrive in any order and in any batches.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any

STEP = 1
TIME = 2
# The finest level of each axis: 256 steps; 1,024 ms (timestamps are sparser than steps:
# a block of 256 ms would often hold a single point).
FINEST = {STEP: 8, TIME: 10}
FAN_BITS = 4
# The levels of each axis, finest first, each 16 times coarser than the one before.
LEVELS = {axis: tuple(range(f, f + 5 * FAN_BITS + 1, FAN_BITS)) for axis, f in FINEST.items()}
TOP = {axis: levels[-1] for axis, levels in LEVELS.items()}

# A block as a list, in the order of store.TIER_COLUMNS after (series_id, axis, level):
# [block, count, nan, pos_inf, neg_inf, x_min, x_max, y_min, y_max, first_y, last_y, min,
# max, first_value, last_value]; min and max are None without a finite value, y_min and
# y_max None on the step axis (where nothing reads them).
Block = list[Any]


def level_at_most(axis: int, bits: int) -> int:
    """The coarsest level of the axis whose blocks are no wider than 2**bits (bits at least
    the axis' finest level)."""
    if bits >= TOP[axis]:
        return TOP[axis]
    return bits - (bits - FINEST[axis]) % FAN_BITS


def _vmin(values: Sequence[float]) -> float:
    """The least value in float8 order (NaN greatest)."""
    numbers = [v for v in values if v == v]
    return min(numbers) if numbers else math.nan


def _vmax(values: Sequence[float]) -> float:
    """The greatest value in float8 order (NaN greatest)."""
    for v in values:
        if v != v:
            return v
    return max(values)


def _vkey(v: float) -> tuple[bool, float]:
    return (True, 0.0) if v != v else (False, v)


def _least(ys: list[int], vs: list[float], i: int, r: int) -> tuple[int, float]:
    """(y, value) of the least (y, value) among indexes [i, r)."""
    if r - i == 1:
        return ys[i], vs[i]
    seg = ys[i:r]
    if seg == sorted(seg):
        e = bisect_right(ys, ys[i], i, r)
        return ys[i], _vmin(vs[i:e])
    k = min(range(i, r), key=lambda k: (ys[k], _vkey(vs[k])))
    return ys[k], vs[k]


def _greatest(ys: list[int], vs: list[float], i: int, r: int) -> tuple[int, float]:
    """(y, value) of the greatest (y, value) among indexes [i, r)."""
    if r - i == 1:
        return ys[i], vs[i]
    seg = ys[i:r]
    if seg == sorted(seg):
        s = bisect_left(ys, ys[r - 1], i, r)
        return ys[r - 1], _vmax(vs[s:r])
    k = max(range(i, r), key=lambda k: (ys[k], _vkey(vs[k])))
    return ys[k], vs[k]


Stats = tuple[int, int, int, float | None, float | None]  # nan, +inf, -inf, min, max


def _stats(vs: list[float], i: int, j: int) -> Stats:
    """Counts of NaN, +Inf and -Inf and the finite min and max of vs[i:j]."""
    vals = vs[i:j]
    total = sum(vals)
    if total - total == 0.0:  # every value finite (else the sum is NaN or infinite)
        return 0, 0, 0, min(vals), max(vals)
    finite = [v for v in vals if v - v == 0.0]
    return (
        sum(1 for v in vals if v != v),
        sum(1 for v in vals if v == math.inf),
        sum(1 for v in vals if v == -math.inf),
        min(finite) if finite else None,
        max(finite) if finite else None,
    )


def _combine(parts: Sequence[Stats]) -> Stats:
    if len(parts) == 1:
        return parts[0]
    lows = [p[3] for p in parts if p[3] is not None]
    highs = [p[4] for p in parts if p[4] is not None]
    return (
        sum(p[0] for p in parts),
        sum(p[1] for p in parts),
        sum(p[2] for p in parts),
        min(lows) if lows else None,
        max(highs) if highs else None,
    )


def _bounds(xs: list[int], finest: int) -> list[int]:
    """Where the blocks of level `finest` of sorted xs start, and len(xs)."""
    out = [0]
    i, n = 0, len(xs)
    while i < n:
        i = bisect_left(xs, ((xs[i] >> finest) + 1) << finest, i)
        out.append(i)
    return out


def _blocks(
    xs: list[int],
    ys: list[int],
    vs: list[float],
    bounds: list[int],
    stats: dict[int, Stats] | None,
    *,
    finest: int,
    spans: bool,
    ys_sorted: bool,
) -> list[Block]:
    """The finest blocks of points sorted by x that start at `bounds`; `stats` maps the
    start of each piece of a finer partition to the piece's stats (None: compute them)."""
    out: list[Block] = []
    starts = sorted(stats) if stats is not None else []
    where = {a: k for k, a in enumerate(starts)}
    where[len(xs)] = len(starts)
    for i, j in itertools.pairwise(bounds):
        if stats is None:
            st = _stats(vs, i, j)
        else:
            st = _combine([stats[a] for a in starts[where[i] : where[j]]])
        x0, x1 = xs[i], xs[j - 1]
        fy, fv = _least(ys, vs, i, bisect_right(xs, x0, i, j))
        ly, lv = _greatest(ys, vs, bisect_left(xs, x1, i, j), j)
        y_min: int | None = None
        y_max: int | None = None
        if spans:
            if ys_sorted:
                y_min, y_max = ys[i], ys[j - 1]
            else:
                yv = ys[i:j]
                y_min, y_max = min(yv), max(yv)
        nan, pos_inf, neg_inf, lo, hi = st
        head = [x0 >> finest, j - i, nan, pos_inf, neg_inf, x0, x1, y_min, y_max]
        out.append([*head, fy, ly, lo, hi, fv, lv])
    return out


def finest_blocks(
    steps: list[int], stamps: list[int], values: list[float]
) -> tuple[list[Block], list[Block]]:
    """The finest blocks of points on the step axis and on the timestamp axis, in block
    order. Points sorted by step and by timestamp (the usual chunk) are read a block at a
    time with C-level slices, the values once for both axes; other input is sorted first."""
    steps_sorted = steps == sorted(steps)
    if steps_sorted and stamps == sorted(stamps):
        sb, tb = _bounds(steps, FINEST[STEP]), _bounds(stamps, FINEST[TIME])
        cuts = sorted(set(sb) | set(tb))
        stats = {a: _stats(values, a, c) for a, c in itertools.pairwise(cuts)}
        return (
            _blocks(
                steps, stamps, values, sb, stats, finest=FINEST[STEP], spans=False, ys_sorted=True
            ),
            _blocks(
                stamps, steps, values, tb, stats, finest=FINEST[TIME], spans=True, ys_sorted=True
            ),
        )
    out = []
    for xs, ys, known_sorted, axis in (
        (steps, stamps, steps_sorted, STEP),
        (stamps, steps, False, TIME),
    ):
        vs = values
        if not known_sorted and xs != sorted(xs):
            order = sorted(range(len(xs)), key=xs.__getitem__)
            xs = [xs[k] for k in order]
            ys = [ys[k] for k in order]
            vs = [vs[k] for k in order]
        f = FINEST[axis]
        bounds = _bounds(xs, f)
        out.append(_blocks(xs, ys, vs, bounds, None, finest=f, spans=axis == TIME, ys_sorted=False))
    return out[0], out[1]


def _merge_after(a: Block, b: Block) -> None:
    """Folds block `b` into `a`, where every x of `b` is above every x of `a`."""
    a[1] += b[1]
    if b[2] or b[3] or b[4]:
        a[2] += b[2]
        a[3] += b[3]
        a[4] += b[4]
    if b[11] is not None:
        a[11] = b[11] if a[11] is None else min(a[11], b[11])
        a[12] = b[12] if a[12] is None else max(a[12], b[12])
    a[6] = b[6]
    if a[7] is not None:
        a[7] = min(a[7], b[7])
        a[8] = max(a[8], b[8])
    a[10] = b[10]
    a[14] = b[14]


def coarser(blocks: list[Block], bits: int) -> list[Block]:
    """The blocks `bits` levels coarser than `blocks` (in block order), in block order."""
    out: list[Block] = []
    last = None
    for blk in blocks:
        parent = blk[0] >> bits
        if parent == last:
            _merge_after(out[-1], blk)
        else:
            out.append([parent, *blk[1:]])
            last = parent
    return out


def batch_rows(
    by_series: dict[int, tuple[list[int], list[int], list[float]]],
) -> list[tuple[object, ...]]:
    """Rows (series_id, axis, level, *block) of the blocks of a batch of points, every
    level, sorted by key."""
    rows: list[tuple[object, ...]] = []
    for sid in sorted(by_series):
        steps, stamps, values = by_series[sid]
        if not steps:
            continue
        for axis, blocks in zip((STEP, TIME), finest_blocks(steps, stamps, values), strict=True):
            for level in LEVELS[axis]:
                if level != FINEST[axis]:
                    blocks = coarser(blocks, FAN_BITS)
                rows.extend((sid, axis, level, *blk) for blk in blocks)
    return rows
