"""Folding new points into a metric series' summary: counts, extremes, finite mean and sum
of squared deviations, step range and latest point.

The arithmetic runs in Python, not SQL: PostgreSQL raises on float8 overflow and underflow
(a square of 1e-200, a sum of two 1e308), which would reject legitimate doubles, while
Python's floats saturate to +-Inf or 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _order_key(step: int, ts: int, value: float) -> tuple[int, int, bool, float]:
    """(step, ts, value) in PostgreSQL's float8 order, where NaN is the greatest value."""
    nan = value != value
    return step, ts, nan, 0.0 if nan else value


def latest_index(steps: Sequence[int], timestamps: Sequence[int], values: Sequence[float]) -> int:
    """Index of the point with the greatest (step, timestamp, value)."""
    top = max(steps)
    idx = [i for i, s in enumerate(steps) if s == top]
    if len(idx) > 1:
        top_ts = max(timestamps[i] for i in idx)
        idx = [i for i in idx if timestamps[i] == top_ts]
    if len(idx) > 1:
        return max(idx, key=lambda i: _order_key(0, 0, values[i]))
    return idx[0]


def fold(
    s: dict[str, Any],
    steps: Sequence[int],
    timestamps: Sequence[int],
    values: Sequence[float],
) -> dict[str, Any]:
    """Summary `s` (a series row as a dict) with the given points folded in; the points'
    mean and squared deviations are combined with the stored ones by Chan et al.'s pairwise
    update, so the result does not depend on how points were split into batches."""
    if not values:
        return s
    n_old = s["count"] - s["nan_count"] - s["pos_inf_count"] - s["neg_inf_count"]
    numbers = [v for v in values if v == v]
    finite = [v for v in numbers if -math.inf < v < math.inf]
    n_pinf = sum(1 for v in numbers if v == math.inf)
    s["count"] += len(values)
    s["nan_count"] += len(values) - len(numbers)
    s["pos_inf_count"] += n_pinf
    s["neg_inf_count"] += len(numbers) - len(finite) - n_pinf
    if numbers:
        low, high = min(numbers), max(numbers)
        s["min_value"] = low if s["min_value"] is None else min(s["min_value"], low)
        s["max_value"] = high if s["max_value"] is None else max(s["max_value"], high)
    if finite:
        n_new = len(finite)
        try:
            mean_new = math.fsum(finite) / n_new
        except OverflowError:  # the sum leaves the double range; the mean cannot
            mean_new = math.fsum(v / n_new for v in finite)
        try:
            m2_new = math.fsum((v - mean_new) * (v - mean_new) for v in finite)
        except OverflowError:
            m2_new = math.inf
        if n_old == 0:
            s["finite_mean"], s["finite_m2"] = mean_new, m2_new
        else:
            n = n_old + n_new
            mean_old = s["finite_mean"]
            delta = mean_new - mean_old  # +-Inf when the means are far apart
            if math.isfinite(delta):
                s["finite_mean"] = mean_old + delta * (n_new / n)
            else:
                s["finite_mean"] = mean_old * (n_old / n) + mean_new * (n_new / n)
            s["finite_m2"] = s["finite_m2"] + m2_new + delta * delta * (n_old * n_new / n)
    first, last = min(steps), max(steps)
    s["first_step"] = first if s["first_step"] is None else min(s["first_step"], first)
    s["last_step"] = last if s["last_step"] is None else max(s["last_step"], last)
    i = latest_index(steps, timestamps, values)
    if s["latest_step"] is None or _order_key(steps[i], timestamps[i], values[i]) > _order_key(
        s["latest_step"], s["latest_ts"], s["latest_value"]
    ):
        s["latest_step"], s["latest_ts"], s["latest_value"] = steps[i], timestamps[i], values[i]
    return s
