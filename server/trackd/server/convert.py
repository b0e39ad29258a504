"""Conversion between database rows and trackd.v1 messages, and from request messages to
the domain's column-wise inputs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import asyncpg

from trackd.server.domain.runs import MetricColumns, RunView
from trackd.v1 import experiment_pb2, metric_pb2, run_pb2


def experiment(row: asyncpg.Record) -> experiment_pb2.Experiment:
    """An Experiment from a row of store.experiments (with tag_keys/tag_values arrays)."""
    return experiment_pb2.Experiment(
        experiment_id=str(row["experiment_id"]),
        name=row["name"],
        artifact_location=row["artifact_location"],
        lifecycle_stage=row["lifecycle_stage"],
        creation_time=row["creation_time"],
        last_update_time=row["last_update_time"],
        tags=[
            experiment_pb2.ExperimentTag(key=k, value=v)
            for k, v in zip(row["tag_keys"], row["tag_values"], strict=True)
        ],
    )


def run_info(row: asyncpg.Record) -> run_pb2.RunInfo:
    """A RunInfo from a row of store.runs' info columns."""
    return run_pb2.RunInfo(
        run_id=row["run_id"].hex,
        run_name=row["run_name"],
        experiment_id=str(row["experiment_id"]),
        user_id=row["user_id"],
        status=row["status"],
        start_time=row["start_time"],
        end_time=row["end_time"] or 0,
        artifact_uri=row["artifact_uri"],
        lifecycle_stage=row["lifecycle_stage"],
    )


def run(view: RunView) -> run_pb2.Run:
    """A Run with its latest metrics, summaries, params and tags."""
    data = run_pb2.RunData(
        params=[run_pb2.Param(key=r["key"], value=r["value"]) for r in view.params],
        tags=[run_pb2.RunTag(key=r["key"], value=r["value"]) for r in view.tags],
    )
    for s in view.series:
        data.metrics.append(
            metric_pb2.Metric(
                key=s["key"],
                value=s["latest_value"],
                timestamp=s["latest_ts"],
                step=s["latest_step"],
            )
        )
        data.metric_summaries.append(metric_summary(s))
    return run_pb2.Run(info=run_info(view.info), data=data)


def metric_summary(s: asyncpg.Record) -> metric_pb2.MetricSummary:
    """The summary of one series row: counts, extremes, mean and population stddev."""
    n_fin = s["count"] - s["nan_count"] - s["pos_inf_count"] - s["neg_inf_count"]
    has_pinf, has_ninf = s["pos_inf_count"] > 0, s["neg_inf_count"] > 0
    if has_pinf and has_ninf:
        mean = math.nan
    elif has_pinf:
        mean = math.inf
    elif has_ninf:
        mean = -math.inf
    elif n_fin == 0:
        mean = math.nan
    else:
        mean = s["finite_mean"]
    if has_pinf or has_ninf or n_fin == 0:
        stddev = math.nan
    else:
        stddev = math.sqrt(max(s["finite_m2"], 0.0) / n_fin)
    return metric_pb2.MetricSummary(
        key=s["key"],
        count=s["count"],
        nan_count=s["nan_count"],
        min=math.nan if s["min_value"] is None else s["min_value"],
        max=math.nan if s["max_value"] is None else s["max_value"],
        mean=mean,
        stddev=stddev,
        first_step=s["first_step"],
        last_step=s["last_step"],
        latest_value=s["latest_value"],
        latest_step=s["latest_step"],
        latest_timestamp=s["latest_ts"],
    )


def history(key: str, rows: Iterable[asyncpg.Record]) -> list[metric_pb2.Metric]:
    """Metric messages for history rows (step, ts, value)."""
    return [metric_pb2.Metric(key=key, value=v, timestamp=t, step=s) for s, t, v in rows]


def metric_columns(metrics: Sequence[metric_pb2.Metric]) -> MetricColumns:
    """Column-wise points from repeated Metric messages."""
    return MetricColumns(
        keys=[m.key for m in metrics],
        values=[m.value for m in metrics],
        timestamps=[m.timestamp for m in metrics],
        steps=[m.step for m in metrics],
    )


def pairs(
    items: Iterable[run_pb2.Param | run_pb2.RunTag | experiment_pb2.ExperimentTag],
) -> list[tuple[str, str]]:
    """(key, value) pairs from params or tags."""
    return [(i.key, i.value) for i in items]
