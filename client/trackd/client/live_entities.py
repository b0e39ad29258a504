"""Plain results of the live calls: a metric series' envelope (plot-ready buckets, as
columns) and the updates a watched run pushes."""

from __future__ import annotations

import enum
import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trackd.client.entities import _word
from trackd.v1 import run_pb2, run_service_pb2


class MetricAxis(enum.StrEnum):
    """The x axis of an envelope: the points' steps, their timestamps (milliseconds since
    the Unix epoch), or their timestamps minus the run's start time (milliseconds)."""

    STEP = "step"
    WALL_TIME = "wall_time"
    RELATIVE_TIME = "relative_time"


def axis_number(axis: object) -> run_service_pb2.MetricAxis.ValueType:
    """MetricAxis as its protobuf number, from "step", "wall_time", "relative_time" (any
    case, METRIC_AXIS_ prefix allowed), a MetricAxis or the number.

    Raises:
        ValueError: an unknown word. TypeError: neither a word nor a number.
    """
    if isinstance(axis, bool) or not isinstance(axis, int | str):
        raise TypeError(f"axis must be one of {_AXES}, not {type(axis).__name__}")
    if isinstance(axis, int):
        return axis  # type: ignore[return-value]
    name = axis.strip().upper().removeprefix("METRIC_AXIS_")
    if name not in MetricAxis.__members__:
        raise ValueError(f"axis must be one of {_AXES}, not {axis!r}")
    return run_service_pb2.MetricAxis.Value(f"METRIC_AXIS_{name}")


_AXES = ", ".join(repr(a.value) for a in MetricAxis)


def _axis_word(number: int) -> str:
    return _word(number, run_service_pb2.MetricAxis, "METRIC_AXIS_").lower() or "step"


_numpy: Any = None


def numpy_module() -> Any:
    """numpy if it is installed, else None (imported on first use only)."""
    global _numpy
    if _numpy is None:
        try:
            _numpy = importlib.import_module("numpy")
        except ImportError:
            _numpy = False
    return _numpy or None


@dataclass(frozen=True)
class MetricEnvelope:
    """The envelope of one metric series over an x range: one entry per bucket in each
    column, buckets in x order. Each bucket is exact over every point in it: `min` and
    `max` are over its finite values (NaN when it has none), so every spike survives;
    `count` counts every point, NaN and infinities included, and `nan_count`,
    `pos_inf_count`, `neg_inf_count` count those apart. `points` says that every bucket
    is one point (the series had no more points in the range than buckets asked for).

    The columns are numpy arrays (int64 and float64) when numpy is installed and the call
    did not ask for lists (`as_numpy=False`), else plain lists.

    Attributes:
        run_id, key: the series.
        axis: "step", "wall_time" or "relative_time" (x in steps or milliseconds).
        points: whether each bucket is a single point.
        x_first, x_last: the x of each bucket's first and last point.
        first, last: the value of each bucket's first and last point.
        min, max: the least and greatest finite value of each bucket.
        count, nan_count, pos_inf_count, neg_inf_count: points per bucket.
    """

    run_id: str
    key: str
    axis: str
    points: bool
    x_first: Sequence[int]
    x_last: Sequence[int]
    first: Sequence[float]
    last: Sequence[float]
    min: Sequence[float]
    max: Sequence[float]
    count: Sequence[int]
    nan_count: Sequence[int]
    pos_inf_count: Sequence[int]
    neg_inf_count: Sequence[int]
    proto: run_service_pb2.StreamMetricEnvelopesResponse | None = field(
        default=None, repr=False, compare=False
    )

    def __len__(self) -> int:
        """The number of buckets."""
        return len(self.x_first)

    @classmethod
    def from_proto(
        cls, e: run_service_pb2.StreamMetricEnvelopesResponse, as_numpy: bool | None = None
    ) -> MetricEnvelope:
        """The envelope of a response; numpy columns if `as_numpy` (None: when numpy is
        installed).

        Raises:
            ImportError: as_numpy is True and numpy is not installed.
        """
        np = numpy_module() if as_numpy is not False else None
        if as_numpy and np is None:
            raise ImportError("as_numpy=True needs numpy: pip install numpy")
        if np is not None:
            ints: Any = lambda c: np.array(c, dtype=np.int64)  # noqa: E731
            floats: Any = lambda c: np.array(c, dtype=np.float64)  # noqa: E731
        else:
            ints = floats = list
        return cls(
            e.run_id,
            e.metric_key,
            _axis_word(e.axis),
            e.points,
            ints(e.x_first),
            ints(e.x_last),
            floats(e.first),
            floats(e.last),
            floats(e.min),
            floats(e.max),
            ints(e.count),
            ints(e.nan_count),
            ints(e.pos_inf_count),
            ints(e.neg_inf_count),
            e,
        )


class UpdateKind(enum.StrEnum):
    """What a watched run's update says: new points of one series, a new status, new
    params and tags, or a heartbeat (nothing happened for a while)."""

    POINTS = "points"
    STATUS = "status"
    DATA = "data"
    HEARTBEAT = "heartbeat"


@dataclass(frozen=True)
class RunUpdate:
    """One update pushed by `watch_run`, as it committed at the server.

    Attributes:
        position: pass it as `resume_position` to receive what follows this update.
        coalesced: the update merges updates that piled up while the watcher read
            slowly (points of several commits, the latest status only).
        kind: an UpdateKind word: "points", "status", "data" or "heartbeat".
        run_id: the run it is about ("" for a heartbeat).
        key: the series of new points ("" otherwise).
        steps, timestamps, values: new points as columns (timestamps in milliseconds
            since the Unix epoch); empty unless kind is "points".
        status: the run's new status word (RUNNING, FINISHED, ...); "" unless kind is
            "status".
        end_time: the run's end time when kind is "status" and the run ended, else None.
        params, tags: new params and new or changed tags; empty unless kind is "data".
        heartbeat_time: the server's time of a heartbeat (ms), else None.
    """

    position: str
    coalesced: bool
    kind: str
    run_id: str = ""
    key: str = ""
    steps: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    status: str = ""
    end_time: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    heartbeat_time: int | None = None
    proto: run_service_pb2.WatchRunResponse | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_proto(cls, r: run_service_pb2.WatchRunResponse) -> RunUpdate:
        """The update of a WatchRunResponse (kind "" for an event this client does not
        know)."""
        event = r.WhichOneof("event")
        base: dict[str, Any] = {"position": r.position, "coalesced": r.coalesced, "proto": r}
        if event == "points":
            p = r.points
            return cls(
                kind=UpdateKind.POINTS,
                run_id=p.run_id,
                key=p.key,
                steps=list(p.steps),
                timestamps=list(p.timestamps),
                values=list(p.values),
                **base,
            )
        if event == "status":
            s = r.status
            return cls(
                kind=UpdateKind.STATUS,
                run_id=s.run_id,
                status=_word(s.status, run_pb2.RunStatus, "RUN_STATUS_"),
                end_time=s.end_time or None,
                **base,
            )
        if event == "data":
            d = r.data
            return cls(
                kind=UpdateKind.DATA,
                run_id=d.run_id,
                params={p.key: p.value for p in d.params},
                tags={t.key: t.value for t in d.tags},
                **base,
            )
        if event == "heartbeat_time":
            return cls(kind=UpdateKind.HEARTBEAT, heartbeat_time=r.heartbeat_time, **base)
        return cls(kind="", **base)


__all__ = [
    "MetricAxis",
    "MetricEnvelope",
    "RunUpdate",
    "UpdateKind",
    "axis_number",
    "numpy_module",
]
