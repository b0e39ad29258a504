"""Compact metric blocks: their encoding, and reading points from rows and blocks as one
series.

A block holds BLOCK_POINTS consecutive points of a series in (step, timestamp, value)
order, each column compressed on its own by pcodec (codec 1). pcodec was measured against
numcodecs (Delta + Blosc/zstd with shuffle), blosc2 and plain zstandard on six series
(bench/README.md, "codecs for compact metric blocks"): it is the smallest on every one and
decodes 3-4 times faster than the Blosc variants, and it is lossless for every float64
bit pattern (NaN payloads, -0.0, subnormals).

Points are ordered as PostgreSQL orders (step, ts, value): float8 with NaN greatest and
-0.0 equal to 0.0. numpy sorts float64 the same way (NaN last, a stable sort keeps equal
values in place), so merged columns come out in the order the rows alone would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pcodec
from pcodec import standalone

from trackd.server.domain import summaries
from trackd.server.store import blocks as store
from trackd.server.store import metrics as metric_store
from trackd.server.store.pool import Connection

# Points per block: large enough that a block's fixed costs (its row, key and TOAST
# pointers, about 100-150 bytes) stay under 0.15 byte a point, small enough that a read
# of a narrow range decodes little it does not return.
BLOCK_POINTS = 1024
PCODEC = 1
_CONFIG = pcodec.ChunkConfig(compression_level=4)

Columns = tuple[list[int], list[int], list[float]]
Key = tuple[int, int, float]


def encode(steps: np.ndarray, stamps: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    """A block of points already in order: its columns encoded and its summary."""
    finite = values[np.isfinite(values)]
    return {
        "first_step": int(steps[0]),
        "first_ts": int(stamps[0]),
        "first_value": float(values[0]),
        "last_step": int(steps[-1]),
        "last_ts": int(stamps[-1]),
        "last_value": float(values[-1]),
        "count": len(steps),
        "nan_count": int(np.count_nonzero(np.isnan(values))),
        "pos_inf_count": int(np.count_nonzero(values == np.inf)),
        "neg_inf_count": int(np.count_nonzero(values == -np.inf)),
        "min_value": float(finite.min()) if len(finite) else None,
        "max_value": float(finite.max()) if len(finite) else None,
        "ts_min": int(stamps.min()),
        "ts_max": int(stamps.max()),
        "codec": PCODEC,
        "steps": standalone.simple_compress(steps, _CONFIG),
        "timestamps": standalone.simple_compress(stamps, _CONFIG),
        "values": standalone.simple_compress(values, _CONFIG),
    }


def decode(block: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stored block's columns (steps, timestamps, values)."""
    if block["codec"] != PCODEC:
        raise ValueError(f"metric block of unknown codec {block['codec']}")
    return (
        standalone.simple_decompress(block["steps"]),
        standalone.simple_decompress(block["timestamps"]),
        standalone.simple_decompress(block["values"]),
    )


def _value_after(values: np.ndarray, v: float) -> np.ndarray:
    """values > v in float8 order (NaN greatest, every NaN equal)."""
    if v != v:
        return np.zeros(len(values), dtype=bool)
    out: np.ndarray = (values > v) | np.isnan(values)
    return out


def after_mask(steps: np.ndarray, stamps: np.ndarray, values: np.ndarray, key: Key) -> np.ndarray:
    """Which points come after `key` in (step, ts, value) order."""
    s, t, v = key
    same_step = steps == s
    later_value = same_step & (stamps == t) & _value_after(values, v)
    out: np.ndarray = (steps > s) | (same_step & (stamps > t)) | later_value
    return out


def _columns(
    steps: Sequence[int], stamps: Sequence[int], values: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.asarray(steps, dtype=np.int64),
        np.asarray(stamps, dtype=np.int64),
        np.asarray(values, dtype=np.float64),
    )


def merged(
    rows: Columns,
    blocks: Sequence[Any],
    *,
    after: Key | None = None,
    keep: Any = None,
    order: str = "step",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points of rows (columns, in order) and blocks (in order) together, sorted by
    (step, ts, value) or, with order="ts", by (ts, step, value); only those after `after`
    (in step order), and only those for which keep(steps, stamps, values) is true."""
    decoded = [decode(b) for b in blocks]
    if after is not None and decoded:
        # Only the first block can hold points at or before `after` (it may straddle it);
        # the rows were read after it.
        first = decoded[0]
        mask = after_mask(*first, after)
        decoded[0] = (first[0][mask], first[1][mask], first[2][mask])
    row_cols = _columns(*rows)
    # Blocks are disjoint and in step order: with rows that all come after them (the common
    # case: the recent points), the concatenation is already in step order.
    in_order = order == "step" and (
        not rows[0] or not blocks or _key_after((rows[0][0], rows[1][0], rows[2][0]), blocks[-1])
    )
    parts = [*decoded, row_cols]
    steps = np.concatenate([p[0] for p in parts])
    stamps = np.concatenate([p[1] for p in parts])
    values = np.concatenate([p[2] for p in parts])
    if keep is not None:
        mask = keep(steps, stamps, values)
        steps, stamps, values = steps[mask], stamps[mask], values[mask]
    if not in_order:
        x, y = (steps, stamps) if order == "step" else (stamps, steps)
        idx = np.lexsort((values, y, x))
        steps, stamps, values = steps[idx], stamps[idx], values[idx]
    return steps, stamps, values


def _key_after(key: Key, block: Any) -> bool:
    """Whether a point comes after every point of a block."""
    last = (block["last_step"], block["last_ts"], block["last_value"])
    return summaries.order_key(*key) > summaries.order_key(*last)


def lists(
    steps: np.ndarray, stamps: np.ndarray, values: np.ndarray, limit: int | None = None
) -> Columns:
    """Columns as Python lists (every float's bits kept), at most `limit` points."""
    if limit is not None:
        steps, stamps, values = steps[:limit], stamps[:limit], values[:limit]
    return steps.tolist(), stamps.tolist(), values.tolist()


def in_steps(intervals: Sequence[tuple[int, int]]) -> Any:
    """A keep() for `merged`: steps within one of the intervals."""

    def keep(steps: np.ndarray, _stamps: np.ndarray, _values: np.ndarray) -> np.ndarray:
        mask = np.zeros(len(steps), dtype=bool)
        for a, b in intervals:
            mask |= (steps >= a) & (steps <= b)
        return mask

    return keep


def drop_compacted(
    steps: list[int], stamps: list[int], values: list[float], blocks: Sequence[Any]
) -> list[int]:
    """Indexes of the points that are not a point of the blocks (exact duplicates of a
    compacted point are skipped, as the primary key skips duplicates of a row)."""
    stored: set[tuple[int, int, bool, float]] = set()
    for b in blocks:
        s, t, v = decode(b)
        stored.update(map(summaries.order_key, s.tolist(), t.tolist(), v.tolist()))
    keys = map(summaries.order_key, steps, stamps, values)
    return [i for i, key in enumerate(keys) if key not in stored]


async def history(conn: Connection, series_id: int, after: Key | None, limit: int) -> Columns:
    """Up to `limit` points of a series after `after` (None: from its first), in order, from
    its rows and its blocks (in the caller's snapshot: a point moved into a block by a
    compaction that commits between two reads is found once, in one or the other)."""
    rows = await metric_store.history_chunk(conn, series_id, after, limit)
    # The first `limit` points of the blocks lie in the block that may straddle `after` and
    # the ceil(limit / BLOCK_POINTS) after it (every block is full).
    found = await store.blocks_after(conn, series_id, after, -(-limit // BLOCK_POINTS))
    if not found:
        return rows
    return lists(*merged(rows, found, after=after), limit)
