"""Codec benchmark for issue 15's compact metric blocks: which library compresses a block of
metric points (steps, timestamps and values as three columns) best, how fast, and which of
them keep every value bit for bit.

Series built in memory with numpy, 262,144 points each, cut into blocks of 1,024 and of
4,096 points; each column of a block is compressed on its own, as a block row would store
it (three bytea columns):

- typical: steps 1..N, timestamps (ms) every ~250 ms with jitter, values a noisy decaying
  loss;
- typical, float32 values: the same loss rounded to float32 (what `loss.item()` of a
  float32 tensor gives) and stored as float64;
- every 10: steps 10, 20, ..., irregular timestamps (gaps of 0.1-30 s), a noisy accuracy;
- normal: steps 1..N, regular timestamps, values standard normal doubles (a noisy metric
  with no structure, e.g. a gradient norm's noise);
- worst: steps and timestamps random (unsorted, 62 and 41 random bits), values random
  64-bit patterns (any double, NaNs of every payload included);
- specials: the typical series with 2% of its values replaced by NaNs with payloads (quiet,
  signalling, negative), +Inf, -Inf, -0.0 and subnormals.

Bytes per point = (the three compressed columns + ROW_OVERHEAD) / points per block, where
ROW_OVERHEAD estimates what PostgreSQL adds to one block row (see ROW_OVERHEAD). The
round trip compares steps and timestamps as int64 and values as `.view(np.uint64)`: a
codec that changes one bit of one value (a NaN payload, the sign of -0.0) is disqualified.
Throughput: points (step + timestamp + value) per second of one thread, best of 3 passes
over the series at each block size. Then the chosen codec's blocks are written to a real
table in the benchmark's database to measure what a block row costs on disk, TOAST and
indexes included, with the three columns as three bytea columns and end to end in one.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import numpy as np

N = 262_144
BLOCK_SIZES = (1024, 4096)
ROUNDS = 3
T0 = 1_700_000_000_000

# An estimate of what PostgreSQL adds to one block row, in bytes, beyond its three
# compressed columns: heap tuple header 24 (23, aligned) + line pointer 4; key columns
# series_id bigint 8, first_step bigint 8, last_step bigint 8, point count int4 4 (28,
# 32 aligned); three bytea varlena headers 3 x 4 = 12 (18-byte TOAST pointers instead when
# a column is moved out of line); the primary key's B-tree entry on (series_id,
# first_step): 8 header + 16 + 4 line pointer = 28. About 100 bytes; page fill and TOAST
# chunk headers come on top, which the table measurement below shows.
ROW_OVERHEAD = 100

# The choice (see bench/README.md): pcodec at level 4, whose blocks are also written to a
# table. Level 8 is pcodec's default, measured beside it.
CHOSEN_LEVEL = 4


@dataclass
class Codec:
    name: str
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes, np.dtype], np.ndarray]  # type: ignore[type-arg]


def _codecs() -> tuple[list[Codec], list[str]]:
    """The candidates, and the libraries that are not installed (blosc2 is not in the dev
    extra: it brings httpx, pydantic, rich and more; `pip install blosc2` to compare)."""
    out = [
        Codec("raw (no compression)", lambda a: a.tobytes(), lambda b, dt: np.frombuffer(b, dt)),
        Codec(
            "zlib 6 (raw bytes)",
            lambda a: zlib.compress(a.tobytes(), 6),
            lambda b, dt: np.frombuffer(zlib.decompress(b), dt),
        ),
    ]
    missing = []
    for library in (_zstandard, _pcodec, _numcodecs, _blosc2):
        try:
            out += library()
        except ImportError as e:
            missing.append(f"{e.name}: not installed")
    return out, missing


def _zstandard() -> list[Codec]:
    import zstandard

    zc = zstandard.ZstdCompressor(level=3)
    zd = zstandard.ZstdDecompressor()
    return [
        Codec(
            f"zstandard {zstandard.__version__} level 3 (raw bytes)",
            lambda a: zc.compress(a.tobytes()),
            lambda b, dt: np.frombuffer(zd.decompress(b), dt),
        )
    ]


def _pcodec() -> list[Codec]:
    import pcodec
    from pcodec import standalone

    def one(level: int) -> Codec:
        config = pcodec.ChunkConfig(compression_level=level)
        return Codec(
            f"pcodec {_version('pcodec')} level {level} (auto mode and delta)",
            lambda a: standalone.simple_compress(a, config),
            lambda b, dt: standalone.simple_decompress(b),
        )

    return [one(pcodec.DEFAULT_COMPRESSION_LEVEL), one(CHOSEN_LEVEL)]


def _numcodecs() -> list[Codec]:
    import numcodecs
    import numcodecs.blosc

    numcodecs.blosc.use_threads = False
    numcodecs.blosc.set_nthreads(1)
    out = []
    for shuffle, label in (
        (numcodecs.Blosc.SHUFFLE, "byte shuffle"),
        (numcodecs.Blosc.BITSHUFFLE, "bit shuffle"),
    ):
        blosc = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=shuffle)
        delta = numcodecs.Delta(dtype="<i8")

        def enc(a: np.ndarray, blosc: numcodecs.Blosc = blosc, delta=delta) -> bytes:  # type: ignore[no-untyped-def]
            if a.dtype.kind == "i":  # Delta for the integers; never for doubles (not exact)
                a = delta.encode(a)
            return bytes(blosc.encode(a))

        def dec(b: bytes, dt: np.dtype, blosc: numcodecs.Blosc = blosc, delta=delta):  # type: ignore[no-untyped-def,type-arg]
            a = np.frombuffer(blosc.decode(b), dt)
            return delta.decode(a) if dt.kind == "i" else a

        name = f"numcodecs {numcodecs.__version__} Delta (ints) + Blosc zstd 5 {label}"
        out.append(Codec(name, enc, dec))
    return out


def _blosc2() -> list[Codec]:
    import blosc2

    blosc2.set_nthreads(1)
    out = []
    for filters, label in (
        ([blosc2.Filter.SHUFFLE, blosc2.Filter.BYTEDELTA], "shuffle + bytedelta"),
        ([blosc2.Filter.SHUFFLE], "shuffle"),
    ):
        cparams = blosc2.CParams(
            codec=blosc2.Codec.ZSTD,
            clevel=5,
            typesize=8,
            nthreads=1,
            filters=filters,
            filters_meta=[0] * len(filters),
        )
        dparams = blosc2.DParams(nthreads=1)

        def enc(a: np.ndarray, cparams=cparams) -> bytes:  # type: ignore[no-untyped-def]
            return bytes(blosc2.compress2(a, cparams=cparams))

        def dec(b: bytes, dt: np.dtype, dparams=dparams) -> np.ndarray:  # type: ignore[no-untyped-def,type-arg]
            return np.frombuffer(blosc2.decompress2(b, dparams=dparams), dt)

        out.append(Codec(f"blosc2 {blosc2.__version__} {label} + zstd 5", enc, dec))
    return out


def _bare(name: str) -> str:
    """A codec's name without its library's version."""
    return " ".join(w for w in name.split() if not w[:1].isdigit() or "." not in w)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


Series = tuple[np.ndarray, np.ndarray, np.ndarray]  # steps int64, timestamps int64, values f8


def _series() -> dict[str, Series]:
    rng = np.random.default_rng(15)
    i = np.arange(N, dtype=np.int64)
    steps = i + 1
    regular_ts = T0 + i * 250 + rng.integers(0, 20, N)
    loss = 2.5 * np.exp(-i / 40_000) + 0.1 + 0.05 * rng.standard_normal(N) * np.exp(-i / 80_000)
    out: dict[str, Series] = {"typical": (steps, regular_ts, loss)}
    # The same loss computed in float32 (a PyTorch loss's .item()), kept as float64.
    out["typical, float32 values"] = (steps, regular_ts, loss.astype(np.float32).astype(np.float64))

    gaps = rng.integers(100, 30_000, N)
    acc = 1 - 0.9 * np.exp(-i / 30_000) + 0.01 * rng.standard_normal(N)
    out["every 10, irregular timestamps"] = ((i + 1) * 10, T0 + np.cumsum(gaps), acc)
    out["normal: random doubles, steps 1..N"] = (steps, regular_ts, rng.standard_normal(N))
    out["worst: random bits, random steps and timestamps"] = (
        rng.integers(0, 2**62, N, dtype=np.int64),
        T0 + rng.integers(0, 2**41, N, dtype=np.int64),
        rng.integers(0, 2**64, N, dtype=np.uint64).view(np.float64),
    )

    specials = np.array(
        [
            0x7FF8000000000000,  # the default quiet NaN
            0x7FF8000000000001,  # quiet NaN, payload 1
            0x7FF80000DEADBEEF,  # quiet NaN, another payload
            0xFFF8000000000000,  # negative quiet NaN
            0x7FF0000000000001,  # signalling NaN, payload 1
            0xFFF4000000001234,  # negative signalling NaN with a payload
            0x7FF0000000000000,  # +Inf
            0xFFF0000000000000,  # -Inf
            0x8000000000000000,  # -0.0
            0x0000000000000001,  # the smallest subnormal
            0x800FFFFFFFFFFFFF,  # a negative subnormal
        ],
        dtype=np.uint64,
    )
    bits = loss.copy().view(np.uint64)
    where = rng.choice(N, N // 50, replace=False)
    bits[where] = specials[rng.integers(0, len(specials), len(where))]
    out["specials: typical with NaN payloads, +-Inf, -0.0"] = (
        steps,
        regular_ts,
        bits.view(np.float64),
    )
    return out


def _blocks(series: Series, n: int) -> list[Series]:
    steps, ts, values = series
    return [(steps[k : k + n], ts[k : k + n], values[k : k + n]) for k in range(0, N, n)]


@dataclass
class Figures:
    payload: dict[int, int]  # block size -> compressed bytes of the whole series
    encode_pps: dict[int, float]  # block size -> points/s, best of ROUNDS
    decode_pps: dict[int, float]
    exact: bool
    error: str = ""


def _measure(codec: Codec, series: Series) -> Figures:
    figures = Figures({}, {}, {}, True)
    for size in BLOCK_SIZES:
        blocks = _blocks(series, size)
        encode_s = decode_s = float("inf")
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            encoded = [tuple(codec.encode(col) for col in block) for block in blocks]
            t1 = time.perf_counter()
            decoded = [
                (
                    codec.decode(s, np.dtype(np.int64)),
                    codec.decode(t, np.dtype(np.int64)),
                    codec.decode(v, np.dtype(np.float64)),
                )
                for s, t, v in encoded
            ]
            t2 = time.perf_counter()
            encode_s, decode_s = min(encode_s, t1 - t0), min(decode_s, t2 - t1)
        figures.payload[size] = sum(len(c) for block in encoded for c in block)
        figures.encode_pps[size] = N / encode_s
        figures.decode_pps[size] = N / decode_s
        for (s, t, v), (ds, dt, dv) in zip(blocks, decoded, strict=True):
            got = np.asarray(dv)
            if (
                np.array_equal(s, ds)
                and np.array_equal(t, dt)
                and got.dtype == np.float64
                and np.array_equal(v.view(np.uint64), got.view(np.uint64))
            ):
                continue
            figures.exact = False
            if got.dtype != np.float64 or got.shape != v.shape:
                figures.error = f"values came back as {got.dtype} {got.shape}"
            elif bad := np.flatnonzero(v.view(np.uint64) != got.view(np.uint64)).tolist():
                figures.error = (
                    f"{len(bad)} values of a block changed, e.g. {v.view(np.uint64)[bad[0]]:#018x}"
                    f" came back as {got.view(np.uint64)[bad[0]]:#018x}"
                )
            else:
                figures.error = "steps or timestamps changed"
            break
    return figures


def _bpp(payload: int, size: int) -> float:
    return (payload + ROW_OVERHEAD * (N // size)) / N


COPIES = 2  # each series' blocks written under this many series ids: 512 or 128 rows
LAYOUTS = {
    "3 bytea columns": (
        "steps bytea STORAGE EXTERNAL, ts bytea STORAGE EXTERNAL, vals bytea STORAGE EXTERNAL",
        ["steps", "ts", "vals"],
    ),
    "1 bytea (the 3 columns end to end)": (
        "steps_len int, ts_len int, data bytea STORAGE EXTERNAL",
        ["steps_len", "ts_len", "data"],
    ),
}


async def _on_disk(database_url: str, codec: Codec, series: dict[str, Series]) -> dict[str, str]:
    """Writes the codec's blocks of each series (COPIES times, under as many series ids)
    into a block table shaped like the one issue 15 would add, its bytea columns STORAGE
    EXTERNAL (already compressed: PostgreSQL should not try pglz on them), in each of
    LAYOUTS, and divides the table's whole size (heap, TOAST and its index, primary key) by
    the points."""
    conn = await asyncpg.connect(database_url)
    out: dict[str, str] = {}
    try:
        for size in BLOCK_SIZES:
            for name, s in series.items():
                blocks = [[codec.encode(col) for col in block] for block in _blocks(s, size)]
                column_bytes = [sum(len(b[c]) for b in blocks) for c in range(3)]
                payload = sum(column_bytes)
                figures = [
                    f"payload {payload / N:.2f} (steps {column_bytes[0] / N:.2f}, timestamps "
                    f"{column_bytes[1] / N:.2f}, values {column_bytes[2] / N:.2f})"
                ]
                for layout, (ddl, columns) in LAYOUTS.items():
                    await conn.execute(
                        f"""
                        DROP TABLE IF EXISTS bench_metric_blocks;
                        CREATE TABLE bench_metric_blocks (
                          series_id bigint, first_step bigint, last_step bigint, n int, {ddl},
                          PRIMARY KEY (series_id, first_step))"""
                    )
                    rows = [
                        (sid, k, k, size, *_layout(layout, cols))
                        for sid in range(COPIES)
                        for k, cols in enumerate(blocks)
                    ]
                    await conn.copy_records_to_table(
                        "bench_metric_blocks",
                        records=rows,
                        columns=["series_id", "first_step", "last_step", "n", *columns],
                    )
                    heap, toast, pkey = await conn.fetchrow(
                        """
                        SELECT pg_relation_size(oid), pg_total_relation_size(reltoastrelid),
                               pg_indexes_size(oid)
                        FROM pg_class WHERE oid = 'bench_metric_blocks'::regclass"""
                    )
                    points = N * COPIES
                    total = heap + toast + pkey
                    figures.append(
                        f"{layout}: {total / points:.2f} bytes/point on disk (heap "
                        f"{heap / points:.2f}, TOAST {toast / points:.2f}, primary key "
                        f"{pkey / points:.2f}; {(total - payload * COPIES) / len(rows):,.0f} "
                        "bytes a row beyond the payload)"
                    )
                out[f"{name}, {size:,} points a block"] = "; ".join(figures)
        await conn.execute("DROP TABLE bench_metric_blocks")
    finally:
        await conn.close()
    return out


def _layout(layout: str, cols: list[bytes]) -> tuple[object, ...]:
    if layout.startswith("3"):
        return tuple(cols)
    return (len(cols[0]), len(cols[1]), b"".join(cols))


async def run(database_url: str) -> dict[str, dict[str, str]]:
    codecs, missing = _codecs()
    series = _series()
    out: dict[str, dict[str, str]] = {}
    for name, s in series.items():
        section: dict[str, str] = {}
        for codec in codecs:
            f = _measure(codec, s)
            exact = "yes" if f.exact else f"NO, disqualified: {f.error}"
            a, b = BLOCK_SIZES
            section[codec.name] = (
                f"{_bpp(f.payload[a], a):.2f} / {_bpp(f.payload[b], b):.2f} bytes/point "
                f"({a:,} / {b:,} a block); encode {f.encode_pps[a] / 1e6:.1f} / "
                f"{f.encode_pps[b] / 1e6:.1f}, decode {f.decode_pps[a] / 1e6:.1f} / "
                f"{f.decode_pps[b] / 1e6:.1f} Mpoints/s; exact: {exact}"
            )
        out[f"{name} ({N:,} points, +{ROW_OVERHEAD} bytes a row)"] = section
    if missing:
        out["candidates left out"] = {str(i): m for i, m in enumerate(missing, start=1)}
    chosen = next(c for c in codecs if f"pcodec level {CHOSEN_LEVEL} " in _bare(c.name))
    out[f"{chosen.name}: block rows in a PostgreSQL table"] = await _on_disk(
        database_url, chosen, series
    )
    return out
