"""A trackd process SIGKILLed in the middle of an artifact upload, on both byte stores: the
file never becomes visible, the staged bytes stay on disk, the upload resumes on a
restarted server from what it holds and completes byte-identical; and the sweep (`trackd
gc` when it exists, else the server's own sweep run in-process) removes the staged file of
an upload nobody resumes."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from procs import Proc, start, stop

from helpers import (
    ARTIFACT_CHUNK,
    STATS,
    download_artifact,
    error_info,
    new_experiment,
    new_run,
    sha256_hex,
)
from s3server import s3_endpoint, s3_environment
from trackd.v1 import artifact_service_pb2 as apb
from trackd.v1 import artifact_service_pb2_grpc, experiment_service_pb2_grpc, run_service_pb2_grpc

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The artifact settings of a server process: root, data dir, and where it stages."""
    if request.param == "local":
        root = tmp_path / "root"
        yield {
            "root": str(root),
            "data_dir": str(tmp_path / "data"),
            "staging": str(root / ".staging"),
        }
        return
    with s3_endpoint() as (endpoint, bucket), s3_environment(endpoint):
        yield {
            "root": f"s3://{bucket}/artifacts",
            "data_dir": str(tmp_path / "data"),
            "staging": str(tmp_path / "data" / "artifact-staging"),
        }


def flags(store: dict[str, str]) -> list[str]:
    return ["--artifact-root", store["root"], "--data-dir", store["data_dir"]]


def start_msg(**start: object) -> apb.UploadArtifactRequest:
    return apb.UploadArtifactRequest(start=apb.UploadStart(**start))  # type: ignore[arg-type]


async def begin_and_kill(proc: Proc, run_id: str, path: str, data: bytes, sent: int) -> str:
    """Starts an upload on the process, sends `sent` bytes, SIGKILLs the process while the
    call is open; the upload id."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as ch:
        stub = artifact_service_pb2_grpc.ArtifactServiceStub(ch)
        call = stub.UploadArtifact()
        await call.write(start_msg(run_id=run_id, path=path, size=len(data)))
        upload_id = str((await asyncio.wait_for(call.read(), 10)).progress.upload_id)
        for i in range(0, sent, ARTIFACT_CHUNK):
            await call.write(apb.UploadArtifactRequest(data=data[i : i + ARTIFACT_CHUNK]))
        await asyncio.sleep(0.5)  # the server writes what it received
        proc.proc.send_signal(signal.SIGKILL)
        STATS["faults injected"] += 1
        await proc.wait(10)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await asyncio.wait_for(call.read(), 10)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE, exc.value
    return upload_id


async def check_invisible(stub, run_id: str, path: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.GetArtifact(apb.GetArtifactRequest(run_id=run_id, path=path))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(exc.value).reason == "RESOURCE_DOES_NOT_EXIST"
    for recursive in (False, True):
        listed = await stub.ListArtifacts(
            apb.ListArtifactsRequest(run_id=run_id, recursive=recursive)
        )
        assert list(listed.files) == []


async def resume(stub, run_id: str, path: str, upload_id: str, data: bytes) -> tuple[int, object]:  # type: ignore[no-untyped-def]
    """Resumes the upload: (bytes the server said it held, stored FileInfo)."""
    call = stub.UploadArtifact()
    await call.write(start_msg(run_id=run_id, path=path, upload_id=upload_id))
    first = await asyncio.wait_for(call.read(), 10)
    assert first.progress.upload_id == (upload_id or first.progress.upload_id)
    held = int(first.progress.persisted_bytes)
    for i in range(held, len(data), ARTIFACT_CHUNK):
        await call.write(apb.UploadArtifactRequest(data=data[i : i + ARTIFACT_CHUNK]))
    await call.write(apb.UploadArtifactRequest(finish=apb.UploadFinish(sha256=sha256_hex(data))))
    await call.done_writing()
    info = None
    while (resp := await asyncio.wait_for(call.read(), 30)) != grpc.aio.EOF:
        if resp.WhichOneof("message") == "artifact":
            info = resp.artifact
    assert info is not None
    return held, info


def gc_available() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "trackd.server", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return "gc" in out.stdout.split("{", 1)[-1].split("}", 1)[0].split(",")


async def sweep(database_url: str, store: dict[str, str]) -> str:
    """Removes abandoned uploads (untouched for 1 s) the way an operator would: `trackd gc`
    with the server's settings if the command exists, else the server's own sweep run
    in-process against the same database and store. What ran."""
    env = {
        **os.environ,
        "TRACKD_DATABASE_URL": database_url,
        "TRACKD_ARTIFACT_ROOT": store["root"],
        "TRACKD_DATA_DIR": store["data_dir"],
        "TRACKD_ARTIFACT_UPLOAD_TTL": "1",
    }
    if await asyncio.to_thread(gc_available):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "trackd.server",
            "gc",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, out.decode(errors="replace")
        return "trackd gc: " + out.decode(errors="replace")
    from trackd.server.domain.artifacts import Artifacts
    from trackd.server.store.blobs import open_store
    from trackd.server.store.pool import Database

    db = await Database.connect(database_url, min_size=1, max_size=2)
    blobs = open_store(store["root"], Path(store["data_dir"]))
    try:
        done = await Artifacts(db, blobs, max_bytes=1 << 40, upload_ttl_s=1.0).sweep()
        assert done["uploads"] >= 1, done
    finally:
        await blobs.close()
        await db.close()
    return "in-process sweep"


async def test_sigkill_mid_upload_leaves_nothing_visible_and_the_upload_resumes(
    database_url: str, store: dict[str, str]
) -> None:
    data = random.Random(1).randbytes(6 * MiB + 123)
    path = "model/weights.bin"
    proc = await start(database_url, 0, *flags(store))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as ch:
            experiments = experiment_service_pb2_grpc.ExperimentServiceStub(ch)
            runs = run_service_pb2_grpc.RunServiceStub(ch)
            run_id = (await new_run(runs, await new_experiment(experiments))).info.run_id
        upload_id = await begin_and_kill(proc, run_id, path, data, 4 * MiB)
    finally:
        await stop(proc)
    staged = Path(store["staging"]) / upload_id
    assert staged.is_file()
    staged_size = staged.stat().st_size
    assert 0 < staged_size <= 4 * MiB

    proc = await start(database_url, 0, *flags(store))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as ch:
            stub = artifact_service_pb2_grpc.ArtifactServiceStub(ch)
            await check_invisible(stub, run_id, path)
            held, info = await resume(stub, run_id, path, upload_id, data)
            assert held == staged_size
            assert (info.file_size, info.sha256) == (len(data), sha256_hex(data))  # type: ignore[attr-defined]
            got_info, got = await download_artifact(stub, run_id=run_id, path=path)
            assert got == data and got_info == info
            assert not staged.exists()
    finally:
        await stop(proc)


async def test_abandoned_upload_of_a_killed_server_is_swept(
    database_url: str, store: dict[str, str]
) -> None:
    data = random.Random(2).randbytes(3 * MiB)
    path = "abandoned.bin"
    proc = await start(database_url, 0, *flags(store))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as ch:
            experiments = experiment_service_pb2_grpc.ExperimentServiceStub(ch)
            runs = run_service_pb2_grpc.RunServiceStub(ch)
            run_id = (await new_run(runs, await new_experiment(experiments))).info.run_id
        upload_id = await begin_and_kill(proc, run_id, path, data, 2 * MiB)
    finally:
        await stop(proc)
    staged = Path(store["staging"]) / upload_id
    assert staged.is_file()
    await asyncio.sleep(1.2)  # past the 1 s upload TTL
    how = await sweep(database_url, store)
    assert not staged.exists(), how

    proc = await start(database_url, 0, *flags(store))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as ch:
            stub = artifact_service_pb2_grpc.ArtifactServiceStub(ch)
            await check_invisible(stub, run_id, path)
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await resume(stub, run_id, path, upload_id, data)
            assert exc.value.code() == grpc.StatusCode.NOT_FOUND, how
            # Started anew, it completes.
            held, info = await resume(stub, run_id, path, "", data)
            assert held == 0
            assert (await download_artifact(stub, run_id=run_id, path=path))[1] == data
            assert info.sha256 == sha256_hex(data)  # type: ignore[attr-defined]
    finally:
        await stop(proc)
