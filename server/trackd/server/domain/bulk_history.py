"""MLflow's GetMetricHistoryBulkInterval: one metric of up to 100 runs, sampled to at most
`max_results` steps within [start_step, end_step] (MLflow's chart query).

The steps are chosen from the union of the runs' steps, evenly spaced, with the range's last
step and every run's first and last step within the range always among them; each run then
answers the points it logged at those steps, in (step, timestamp) order, at most
max(max_results, chosen steps) of them, evenly spaced over its ordered points. This is
MLflow's own algorithm, so a chart drawn from trackd matches one drawn from MLflow."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from trackd.server.domain.runs import Runs
from trackd.server.errors import InvalidArgument

RUN_IDS_MAX = 100
MAX_RESULTS_MAX = 2500


@dataclass(frozen=True)
class Point:
    run_id: str
    step: int
    timestamp: int
    value: float


def evenly_spaced(total: int, n: int) -> list[int]:
    """At most n evenly spaced indices into `total` items, the first and last included."""
    if total <= 0:
        return []
    if total <= n:
        return list(range(total))
    if n == 1:
        return [total - 1]
    step = (total - 1) / (n - 1)
    return sorted({round(i * step) for i in range(n)})


def check(run_ids: Sequence[str], max_results: int, start: int | None, end: int | None) -> None:
    """InvalidArgument, with MLflow's messages, for a request MLflow refuses."""
    if not run_ids:
        raise InvalidArgument(
            "GetMetricHistoryBulkInterval request must specify at least one run_id.",
            metadata={"field": "run_ids"},
        )
    if len(run_ids) > RUN_IDS_MAX:
        raise InvalidArgument(
            f"GetMetricHistoryBulkInterval request must specify at most {RUN_IDS_MAX} "
            f"run_ids. Received {len(run_ids)} run_ids.",
            metadata={"field": "run_ids", "limit": str(RUN_IDS_MAX)},
        )
    if not 1 <= max_results <= MAX_RESULTS_MAX:
        raise InvalidArgument(
            f"max_results must be between 1 and {MAX_RESULTS_MAX}.",
            metadata={"field": "max_results", "limit": str(MAX_RESULTS_MAX)},
        )
    if (start is None) != (end is None):
        raise InvalidArgument(
            "If either start step or end step are specified, both must be specified.",
            metadata={"field": "start_step"},
        )
    if start is not None and end is not None and start > end:
        raise InvalidArgument(
            "end_step must be greater than start_step. "
            f"Found start_step={start} and end_step={end}.",
            metadata={"field": "end_step"},
        )


async def sample(
    runs: Runs,
    run_ids: Sequence[str],
    key: str,
    max_results: int,
    start: int | None,
    end: int | None,
) -> list[Point]:
    """The sampled points of `key` in each run (runs in the order given)."""
    check(run_ids, max_results, start, end)
    histories: list[tuple[list[int], list[int], list[float]]] = []
    for run_id in run_ids:
        steps: list[int] = []
        stamps: list[int] = []
        values: list[float] = []
        async for s, t, v in runs.stream_history(run_id, key, 0):
            steps.extend(s)
            stamps.extend(t)
            values.extend(v)
        histories.append((steps, stamps, values))
    all_steps = sorted({s for steps, _, _ in histories for s in steps})
    if start is None or end is None:
        start, end = 0, (all_steps[-1] if all_steps else 0)
    edges = {
        s
        for steps, _, _ in histories
        if steps
        for s in (steps[0], steps[-1])  # histories come in step order
        if start <= s <= end
    }
    lo = bisect.bisect_left(all_steps, start)
    hi = bisect.bisect_right(all_steps, end)
    if hi - lo <= max_results:
        chosen = set(all_steps[lo:hi])
    else:
        interval = (hi - lo) / max_results
        chosen = {all_steps[lo + int(i * interval)] for i in range(max_results)}
        chosen.add(all_steps[hi - 1])
    chosen |= edges
    per_run = max(max_results, len(chosen))
    out: list[Point] = []
    for run_id, (steps, stamps, values) in zip(run_ids, histories, strict=True):
        # Already in (step, timestamp, value) order.
        picked = [i for i, s in enumerate(steps) if s in chosen]
        for j in evenly_spaced(len(picked), per_run):
            i = picked[j]
            out.append(Point(run_id, steps[i], stamps[i], values[i]))
    return out
