"""The summary of a batch of new points of a metric series: counts, extremes, finite mean
and sum of squared deviations, step range and latest point. The database folds it into the
series' stored summary (trackd_fold_group, migration 0014).

A batch's own arithmetic runs in Python, not SQL: PostgreSQL raises on float8 overflow and
underflow (a square of 1e-200, a sum of two 1e308), which would reject legitimate doubles,
while Python's floats saturate to +-Inf or 0; math.fsum sums exactly. The fold combines
two summaries in numeric, which cannot overflow, and rounds back to doubles the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def order_key(step: int, ts: int, value: float) -> tuple[int, int, bool, float]:
    """(step, ts, value) in PostgreSQL's float8 order, where NaN is the greatest value; as
    metric_points' primary key compares points, every NaN is equal and -0.0 equals 0.0
    (also as a set or dict key)."""
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
        return max(idx, key=lambda i: order_key(0, 0, values[i]))
    return idx[0]


# A batch's summary, in the order trackd_fold_group (migration 0014) takes it: count, NaN,
# +Inf and -Inf counts, finite min and max (None without a number), count, mean and sum of
# squared deviations of the finite values (mean None without one), first and last step,
# and the latest point's step, timestamp and value.
Partial = tuple[
    int, int, int, int, float | None, float | None, int, float | None, float,
    int, int, int, int, float,
]  # fmt: skip


def partial(steps: Sequence[int], timestamps: Sequence[int], values: Sequence[float]) -> Partial:
    """The summary of a batch of points (at least one), which the database folds into the
    stored one under the series lock (trackd_fold_group): counts, extremes and the step
    range add up; the batch's mean and squared deviations combine with the stored ones by
    Chan et al.'s pairwise update, so the result does not depend on how points were split
    into batches."""
    numbers = [v for v in values if v == v]
    finite = [v for v in numbers if -math.inf < v < math.inf]
    n_pinf = sum(1 for v in numbers if v == math.inf)
    mean: float | None = None
    m2 = 0.0
    if finite:
        n = len(finite)
        try:
            mean = math.fsum(finite) / n
        except OverflowError:  # the sum leaves the double range; the mean cannot
            mean = math.fsum(v / n for v in finite)
        try:
            m2 = math.fsum((v - mean) * (v - mean) for v in finite)
        except OverflowError:
            m2 = math.inf
    i = latest_index(steps, timestamps, values)
    return (
        len(values),
        len(values) - len(numbers),
        n_pinf,
        len(numbers) - len(finite) - n_pinf,
        min(numbers) if numbers else None,
        max(numbers) if numbers else None,
        len(finite),
        mean,
        m2,
        min(steps),
        max(steps),
        steps[i],
        timestamps[i],
        values[i],
    )
