"""Artifact benchmark: upload and download of one large file through trackd (local
backend) against a plain file copy on the same disk in the same run, and the server's
memory during the transfers.

The file (TRACKD_BENCH_ARTIFACT_MB, default 1024 MiB, of random bytes) and trackd's
artifact root are in one temporary directory (under TRACKD_BENCH_DIR if set), so both
sides read and write the same disk. The baselines are shutil.copyfile of the file then an
fsync of the copy (a durable copy, what an upload must be), and the copy without the
fsync; each is measured before and after the trackd transfers and the mean is the
reference. The upload streams the file from disk in 1 MiB `data` messages (read and
hashed in a worker thread, 8 MiB ahead of the stream) and ends with its SHA-256; the
download writes the streamed chunks to a file (in a worker thread, 8 MiB at a time, while
the next arrive), and is timed to its last byte and again after an fsync of the file. The
downloaded file is compared with the source by SHA-256. The server's resident memory
(VmRSS) is sampled every 50 ms during each transfer: its growth over the value just before
is what the transfer buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import grpc

from bench.common import ServerProcess, server_process
from trackd.v1 import artifact_service_pb2 as apb
from trackd.v1 import artifact_service_pb2_grpc, run_service_pb2_grpc
from trackd.v1 import run_service_pb2 as rpb

if TYPE_CHECKING:
    from trackd.v1.artifact_service_pb2_grpc import ArtifactServiceAsyncStub

CHUNK = 1024 * 1024
MB = 1e6


def _size_bytes() -> int:
    return int(os.environ.get("TRACKD_BENCH_ARTIFACT_MB", "1024")) * CHUNK


def _write_random(path: Path, size: int) -> str:
    """Writes `size` random bytes to `path`, fsync'd; returns their SHA-256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(CHUNK, left))
            h.update(block)
            f.write(block)
            left -= len(block)
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(src: Path, dst: Path, durable: bool) -> float:
    """Seconds to copy src to dst (and fsync the copy if `durable`); removes the copy."""
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    if durable:
        _fsync(dst)
    elapsed = time.perf_counter() - t0
    if not durable:
        _fsync(dst)  # so that its writeback does not slow what comes next
    dst.unlink()
    return elapsed


def _rss_mb(pid: int) -> float:
    """Current resident memory (VmRSS) of process `pid`, in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.asynccontextmanager
async def _rss_sampler(server: ServerProcess) -> AsyncIterator[dict[str, float]]:
    """Samples the server's VmRSS every 50 ms while the block runs; yields a dict that
    holds "before" at once and "peak" at the end."""
    pid = server.proc.pid
    figures = {"before": _rss_mb(pid), "peak": 0.0}
    figures["peak"] = figures["before"]

    async def sample() -> None:
        while True:
            figures["peak"] = max(figures["peak"], _rss_mb(pid))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(sample())
    try:
        yield figures
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        figures["peak"] = max(figures["peak"], _rss_mb(pid))


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# Chunks read (and hashed) or written per worker-thread call; the next batch is read, or
# the previous written, while this one is sent or received, so that disk work overlaps the
# gRPC stream as a real client's should.
BATCH = 8


def _read_batch(f: BinaryIO, h: Any) -> list[bytes]:
    blocks = []
    for _ in range(BATCH):
        block = f.read(CHUNK)
        if not block:
            break
        h.update(block)
        blocks.append(block)
    return blocks


def _write_batch(f: BinaryIO, blocks: list[bytes]) -> None:
    for block in blocks:
        f.write(block)


async def upload(
    stub: ArtifactServiceAsyncStub, run_id: str, src: Path, size: int
) -> tuple[float, apb.UploadArtifactResponse]:
    """Seconds to upload `src` as "model.bin" of `run_id`, and the last response (the
    stored FileInfo)."""
    h = hashlib.sha256()

    async def requests() -> AsyncIterator[apb.UploadArtifactRequest]:
        yield apb.UploadArtifactRequest(
            start=apb.UploadStart(run_id=run_id, path="model.bin", size=size)
        )
        with open(src, "rb") as f:  # noqa: ASYNC230 - opening is instant; reads are threaded
            ahead = asyncio.ensure_future(asyncio.to_thread(_read_batch, f, h))
            while blocks := await ahead:
                ahead = asyncio.ensure_future(asyncio.to_thread(_read_batch, f, h))
                for block in blocks:
                    yield apb.UploadArtifactRequest(data=block)
        yield apb.UploadArtifactRequest(finish=apb.UploadFinish(sha256=h.hexdigest()))

    t0 = time.perf_counter()
    last = apb.UploadArtifactResponse()
    async for resp in stub.UploadArtifact(requests()):
        last = resp
    return time.perf_counter() - t0, last


async def download(
    stub: ArtifactServiceAsyncStub, run_id: str, dst: Path
) -> tuple[float, float, int]:
    """Seconds to download "model.bin" of `run_id` into `dst` (to its last byte, and after
    an fsync of `dst`), and the bytes received."""
    received = 0
    t0 = time.perf_counter()
    with open(dst, "wb") as f:  # noqa: ASYNC230 - opening is instant; writes are threaded
        writing: asyncio.Future[None] | None = None
        batch: list[bytes] = []
        async for resp in stub.DownloadArtifact(
            apb.DownloadArtifactRequest(run_id=run_id, path="model.bin")
        ):
            if resp.WhichOneof("message") != "data":
                continue
            batch.append(resp.data)
            received += len(resp.data)
            if len(batch) == BATCH:
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(asyncio.to_thread(_write_batch, f, batch))
                batch = []
        if writing is not None:
            await writing
        await asyncio.to_thread(_write_batch, f, batch)
        await asyncio.to_thread(f.flush)
        last_byte = time.perf_counter() - t0
        await asyncio.to_thread(os.fsync, f.fileno())
    return last_byte, time.perf_counter() - t0, received


@contextlib.asynccontextmanager
async def _floor_server(size: int) -> AsyncIterator[str]:
    """bench.grpc_floor in its own process; its target. Stopped by its pid."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.grpc_floor", str(size), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        yield f"127.0.0.1:{int(line)}"
    finally:
        proc.kill()
        await proc.wait()


async def _floor(size: int, src: Path, dst: Path) -> tuple[float, float]:
    """Seconds of the same upload and download (to the last byte) against bench.grpc_floor."""
    async with _floor_server(size) as target, grpc.aio.insecure_channel(target) as ch:
        stub = artifact_service_pb2_grpc.ArtifactServiceStub(ch)
        up_s, _ = await upload(stub, "f" * 32, src, size)
        down_s, _, _ = await download(stub, "f" * 32, dst)
    await asyncio.to_thread(dst.unlink)
    return up_s, down_s


def _rate(size: int, seconds: float) -> str:
    return f"{size / MB / seconds:,.0f} MB/s ({seconds:.2f} s)"


async def run(database_url: str) -> dict[str, dict[str, str]]:
    size = _size_bytes()
    out: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(
        prefix="trackd-bench-artifacts-", dir=os.environ.get("TRACKD_BENCH_DIR")
    ) as tmp:
        work = Path(tmp)
        src = work / "source.bin"
        source_sha = await asyncio.to_thread(_write_random, src, size)
        copy_durable = [await asyncio.to_thread(_copy, src, work / "copy.bin", True)]
        copy_plain = [await asyncio.to_thread(_copy, src, work / "copy.bin", False)]
        env = {
            "TRACKD_ARTIFACT_ROOT": str(work / "artifacts"),
            "TRACKD_ARTIFACT_MAX_BYTES": str(max(size, 10 * 1024**3)),
        }
        with _environ(**env):
            async with server_process(database_url) as server:
                async with grpc.aio.insecure_channel(server.target) as ch:
                    runs = run_service_pb2_grpc.RunServiceStub(ch)
                    stub = artifact_service_pb2_grpc.ArtifactServiceStub(ch)
                    run_id = (
                        await runs.CreateRun(rpb.CreateRunRequest(run_name="bench-artifacts"))
                    ).run.info.run_id
                    async with _rss_sampler(server) as up_rss:
                        up_s, last = await upload(stub, run_id, src, size)
                    stored = last.artifact
                    assert stored.file_size == size, stored
                    assert stored.sha256 == source_sha, stored
                    dst = work / "downloaded.bin"
                    async with _rss_sampler(server) as down_rss:
                        down_s, down_durable_s, received = await download(stub, run_id, dst)
                    assert received == size, (received, size)
                    hwm = server.rss_mb()
        identical = await asyncio.to_thread(_sha256, dst) == source_sha
        dst.unlink()
        copy_durable.append(await asyncio.to_thread(_copy, src, work / "copy.bin", True))
        copy_plain.append(await asyncio.to_thread(_copy, src, work / "copy.bin", False))
        floor_up_s, floor_down_s = await _floor(size, src, work / "floor.bin")

    durable = sum(copy_durable) / 2
    plain = sum(copy_plain) / 2
    mib = size // CHUNK
    out[f"baseline: shutil.copyfile of {mib} MiB on the same disk"] = {
        "with fsync of the copy": f"{_rate(size, durable)}; before {copy_durable[0]:.2f} s, "
        f"after {copy_durable[1]:.2f} s",
        "without fsync": f"{_rate(size, plain)}; before {copy_plain[0]:.2f} s, "
        f"after {copy_plain[1]:.2f} s",
    }
    out[f"baseline: the same client against a gRPC server that only moves bytes ({mib} MiB)"] = {
        "upload": _rate(size, floor_up_s),
        "download to the last byte": _rate(size, floor_down_s),
    }
    out[f"UploadArtifact of {mib} MiB, 1 MiB messages, durable when answered"] = {
        "speed": _rate(size, up_s),
        "of plain gRPC": f"{floor_up_s / up_s:.0%}",
        "of a durable copy": f"{durable / up_s:.0%}",
        "of a copy without fsync": f"{plain / up_s:.0%}",
        "server RSS": f"{up_rss['before']:.0f} MB before, peak {up_rss['peak']:.0f} MB "
        f"(+{up_rss['peak'] - up_rss['before']:.0f} MB)",
    }
    out[f"DownloadArtifact of {mib} MiB into a file"] = {
        "to the last byte": f"{_rate(size, down_s)}, {plain / down_s:.0%} of a copy without fsync, "
        f"{floor_down_s / down_s:.0%} of plain gRPC",
        "and fsync'd": f"{_rate(size, down_durable_s)}, {durable / down_durable_s:.0%} of a "
        "durable copy",
        "server RSS": f"{down_rss['before']:.0f} MB before, peak {down_rss['peak']:.0f} MB "
        f"(+{down_rss['peak'] - down_rss['before']:.0f} MB)",
        "byte-identical (sha256)": "yes" if identical else "NO",
    }
    out["server"] = {"peak RSS (VmHWM)": f"{hwm:.0f} MB"}
    return out
