"""ArtifactService through raw stubs over a real channel, against both byte stores: a local
directory and an S3-compatible server (moto, in its own process). Round trips of empty,
tiny and multi-chunk files; ranged downloads; FileInfo (media type, time, CSV and Parquet
row counts); uploads resumed after a cancelled call and after a dropped TCP connection;
SHA-256 and size checks; every path rule; owners missing, malformed or deleted; path
conflicts; racing uploads to one path; paged listings; deletion; logged model artifacts;
and `trackd gc` removing a replaced file's object."""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from conftest import server_config
from helpers import (
    ARTIFACT_CHUNK,
    download_artifact,
    error_info,
    new_experiment,
    new_run,
    sha256_hex,
    upload_artifact,
    upload_requests,
    violations,
)
from s3server import s3_endpoint, s3_environment
from trackd.client.transfer import retryable
from trackd.server import app
from trackd.server.domain.artifacts import ACK_BYTES, object_key
from trackd.v1 import artifact_pb2 as fpb
from trackd.v1 import artifact_service_pb2 as apb
from trackd.v1 import artifact_service_pb2_grpc, logged_model_service_pb2_grpc
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import logged_model_service_pb2 as mpb
from trackd.v1 import run_service_pb2 as rpb

MiB = 1024 * 1024
MISSING_RUN = "0123456789abcdef0123456789abcdef"
MISSING_MODEL = "m-0123456789abcdef0123456789abcdef"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED = grpc.StatusCode.FAILED_PRECONDITION


# -- servers over both stores ------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """Where a test server keeps artifact bytes."""

    name: str
    root: str  # --artifact-root
    data_dir: Path  # --data-dir (S3Store stages uploads under it)
    local_root: Path | None  # the directory of a LocalStore

    @property
    def staging(self) -> Path:
        if self.local_root is not None:
            return self.local_root / ".staging"
        return self.data_dir / "artifact-staging"


@pytest.fixture(scope="module", params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Backend]:  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp(f"artifacts-{request.param}")
    if request.param == "local":
        yield Backend("local", str(base / "root"), base / "data", base / "root")
        return
    with s3_endpoint() as (endpoint, bucket), s3_environment(endpoint):
        yield Backend("s3", f"s3://{bucket}/artifacts", base / "data", None)


def config_for(backend: Backend, **overrides: object):  # type: ignore[no-untyped-def]
    return server_config(artifact_root=backend.root, data_dir=str(backend.data_dir), **overrides)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(backend: Backend, database_url: str) -> AsyncIterator[app.Running]:
    """trackd over the backend's store (overrides conftest's `server`)."""
    running = await app.start(config_for(backend), database_url)
    yield running
    await running.stop(1.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def small(backend: Backend, database_url: str) -> AsyncIterator[app.Running]:
    """A second server on the same database and store that accepts files of 1000 bytes."""
    running = await app.start(config_for(backend, artifact_max_bytes=1000), database_url)
    yield running
    await running.stop(1.0)


@pytest.fixture(scope="module")
def artifacts(channel: grpc.aio.Channel) -> artifact_service_pb2_grpc.ArtifactServiceStub:
    return artifact_service_pb2_grpc.ArtifactServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel: grpc.aio.Channel) -> logged_model_service_pb2_grpc.LoggedModelServiceStub:
    return logged_model_service_pb2_grpc.LoggedModelServiceStub(channel)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def small_artifacts(
    small: app.Running,
) -> AsyncIterator[artifact_service_pb2_grpc.ArtifactServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{small.port}") as ch:
        yield artifact_service_pb2_grpc.ArtifactServiceStub(ch)


@pytest_asyncio.fixture(loop_scope="module")
async def rid(experiments, runs) -> str:  # type: ignore[no-untyped-def]
    """A fresh run in a fresh experiment."""
    return str((await new_run(runs, await new_experiment(experiments))).info.run_id)


# -- helpers -----------------------------------------------------------------------------------


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


async def fails(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    """The error of a unary call (or a coroutine) that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    return exc.value


def check(err: grpc.aio.AioRpcError, code: grpc.StatusCode, reason: str | None = None) -> None:
    assert err.code() == code, (err.code(), err.details())
    expected = (
        reason
        or {
            INVALID: "INVALID_PARAMETER_VALUE",
            NOT_FOUND: "RESOURCE_DOES_NOT_EXIST",
            FAILED: "INVALID_STATE",
        }[code]
    )
    info = error_info(err)
    assert (info.domain, info.reason) == ("trackd.v1", expected), info


def check_invalid(err: grpc.aio.AioRpcError, field: str, fragment: str = "") -> str:
    """INVALID_ARGUMENT naming `field` (whose description holds `fragment`); the
    description."""
    check(err, INVALID)
    found = violations(err)
    assert field in found, (found, err.details())
    assert fragment in found[field], (fragment, found[field])
    return found[field]


async def run_upload(stub, msgs: list) -> tuple[list, grpc.aio.AioRpcError | None]:  # type: ignore[no-untyped-def,type-arg]
    """The responses of an upload call and its error (None when it ended OK).

    When trackd ends an upload early (a refused start, a chunk over the size limit) while
    the client is still writing, the client's gRPC core may fail that write and report
    INTERNAL "Internal error from Core" instead of the status trackd sent (it carries no
    error details). trackd's client retries such an upload (transfer.retryable); so does
    this helper, a few times, so that a test sees trackd's answer."""
    for attempt in range(5):
        out: list = []  # type: ignore[type-arg]
        try:
            async for resp in stub.UploadArtifact(iter(msgs)):
                out.append(resp)
        except grpc.aio.AioRpcError as err:
            if attempt < 4 and err.code() == grpc.StatusCode.INTERNAL and retryable(err):
                continue
            return out, err
        return out, None
    raise AssertionError("unreachable")


async def upload_fails(stub, msgs: list) -> tuple[list, grpc.aio.AioRpcError]:  # type: ignore[no-untyped-def,type-arg]
    out, err = await run_upload(stub, msgs)
    assert err is not None, f"the upload succeeded: {out}"
    return out, err


async def get(stub, path: str, **owner: str) -> fpb.FileInfo:  # type: ignore[no-untyped-def]
    resp = await stub.GetArtifact(apb.GetArtifactRequest(path=path, **owner))
    return resp.artifact


async def list_page(stub, path: str = "", **kw):  # type: ignore[no-untyped-def]
    return await stub.ListArtifacts(apb.ListArtifactsRequest(path=path, **kw))


async def list_all(stub, path: str = "", recursive: bool = False, page: int = 0, **owner):  # type: ignore[no-untyped-def]
    """Every entry of a listing, paging with `page` results a page; also the page count."""
    entries: list[fpb.FileInfo] = []
    token = ""
    pages = 0
    while True:
        resp = await list_page(
            stub, path, recursive=recursive, max_results=page, page_token=token, **owner
        )
        pages += 1
        assert page == 0 or len(resp.files) <= page
        entries += resp.files
        token = resp.next_page_token
        if not token:
            return entries, pages
        assert pages < 1000


async def not_visible(stub, path: str, **owner: str) -> None:
    check(await fails(get(stub, path, **owner)), NOT_FOUND)
    check(await fails(download_artifact(stub, path=path, **owner)), NOT_FOUND)
    listed, _ = await list_all(stub, "", recursive=True, **owner)
    assert path not in [f.path for f in listed]


def start_msg(**start: object) -> apb.UploadArtifactRequest:
    return apb.UploadArtifactRequest(start=apb.UploadStart(**start))  # type: ignore[arg-type]


def data_msg(data: bytes) -> apb.UploadArtifactRequest:
    return apb.UploadArtifactRequest(data=data)


def finish_msg(sha: str = "") -> apb.UploadArtifactRequest:
    return apb.UploadArtifactRequest(finish=apb.UploadFinish(sha256=sha))


async def finish_resumed(call, data: bytes, held: int) -> fpb.FileInfo:  # type: ignore[no-untyped-def]
    """Sends data[held:] and the finish on an open upload call; the stored FileInfo."""
    for i in range(held, len(data), ARTIFACT_CHUNK):
        await call.write(data_msg(data[i : i + ARTIFACT_CHUNK]))
    await call.write(finish_msg(sha256_hex(data)))
    await call.done_writing()
    info = None
    while (resp := await call.read()) != grpc.aio.EOF:
        if resp.WhichOneof("message") == "artifact":
            info = resp.artifact
    assert info is not None
    return info


def csv_bytes(rows: int, trailing_newline: bool = True) -> bytes:
    lines = ["step,loss,name"] + [f"{i},{1 / (i + 1):.6f},row-{i:08d}" for i in range(rows)]
    text = "\n".join(lines)
    return (text + "\n" if trailing_newline else text).encode()


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 5 * MiB // 2], ids=["empty", "1-byte", "2.5MiB"])
async def test_round_trip(artifacts, rid: str, size: int) -> None:
    data = payload(size, seed=size)
    path = f"dir/file-{size}.bin"
    before = int(time.time() * 1000)
    upload_id, info, progress = await upload_artifact(artifacts, data, run_id=rid, path=path)
    after = int(time.time() * 1000)
    assert re.fullmatch(r"[0-9a-f]{32}", upload_id)
    assert progress[0].persisted_bytes == 0
    assert all(p.upload_id == upload_id for p in progress)
    assert (info.path, info.is_dir, info.file_size) == (path, False, size)
    assert info.sha256 == sha256_hex(data)
    assert info.content_type == "application/octet-stream"
    assert before <= info.modification_time <= after
    assert not info.HasField("row_count")
    assert await get(artifacts, path, run_id=rid) == info
    got_info, got = await download_artifact(artifacts, run_id=rid, path=path)
    assert got_info == info
    assert got == data
    listed = (await list_page(artifacts, "dir", run_id=rid)).files
    assert list(listed) == [info]


async def test_upload_with_size_and_sha256_declared_in_the_start(artifacts, rid: str) -> None:
    data = payload(3 * MiB + 17, seed=3)
    sha = sha256_hex(data)
    _, info, _ = await upload_artifact(
        artifacts,
        data,
        finish_sha256="",
        run_id=rid,
        path="declared.bin",
        size=len(data),
        sha256=sha.upper(),
    )
    assert (info.file_size, info.sha256) == (len(data), sha)
    assert (await download_artifact(artifacts, run_id=rid, path="declared.bin"))[1] == data


async def test_upload_without_any_sha256_is_stored_with_the_computed_one(
    artifacts, rid: str
) -> None:
    data = payload(1000, seed=4)
    _, info, _ = await upload_artifact(
        artifacts, data, finish_sha256="", run_id=rid, path="nohash.bin"
    )
    assert info.sha256 == sha256_hex(data)


async def test_ranged_downloads(artifacts, rid: str) -> None:
    data = payload(5 * MiB // 2, seed=7)
    size = len(data)
    await upload_artifact(artifacts, data, run_id=rid, path="r.bin")
    cases = [
        (0, 0),
        (0, 1),
        (10, 100),
        (MiB - 3, 6),  # across a chunk boundary
        (MiB, MiB + 5),
        (size - 5, 100),  # cut at the end
        (size - 1, 0),
        (size, 0),
        (size, 10),
        (size + 1000, 0),
        (0, size + 1),
        (7, 0),
    ]
    for offset, length in cases:
        info, got = await download_artifact(
            artifacts, offset=offset, length=length, run_id=rid, path="r.bin"
        )
        want = data[offset:] if length == 0 else data[offset : offset + length]
        assert got == want, (offset, length, len(got))
        assert info.file_size == size and info.sha256 == sha256_hex(data)
    err = await fails(download_artifact(artifacts, offset=-1, run_id=rid, path="r.bin"))
    check_invalid(err, "offset")
    err = await fails(download_artifact(artifacts, length=-1, run_id=rid, path="r.bin"))
    check_invalid(err, "length")


# -- FileInfo ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "rows"),
    [
        ("t.csv", csv_bytes(5), 5),
        ("t.csv", csv_bytes(5, trailing_newline=False), 5),
        ("t.csv", b"a,b\r\n1,2\r\n3,4\r\n", 2),
        ("t.csv", b"only,a,header\n", 0),
        ("t.csv", b"only,a,header", 0),
        ("t.csv", b"", None),
        ("big.csv", csv_bytes(100_000), 100_000),  # several chunks
        ("t.bin", b"a\nb\n", None),
    ],
    ids=[
        "trailing-newline",
        "no-trailing-newline",
        "crlf",
        "header-only",
        "header-only-no-newline",
        "empty",
        "multi-chunk",
        "not-a-table",
    ],
)
async def test_csv_row_count(artifacts, rid: str, name: str, data: bytes, rows: int | None) -> None:
    _, info, _ = await upload_artifact(artifacts, data, run_id=rid, path=f"tables/{name}")
    if rows is None:
        assert not info.HasField("row_count")
    else:
        assert info.HasField("row_count") and info.row_count == rows
    assert await get(artifacts, f"tables/{name}", run_id=rid) == info


async def test_parquet_row_count_and_media_types(artifacts, rid: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"step": list(range(137)), "loss": [1.0 / (i + 1) for i in range(137)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=50)
    _, info, _ = await upload_artifact(
        artifacts, sink.getvalue(), run_id=rid, path="data/train.parquet"
    )
    assert info.content_type == "application/vnd.apache.parquet"
    assert info.HasField("row_count") and info.row_count == 137
    _, junk, _ = await upload_artifact(
        artifacts, b"not parquet at all", run_id=rid, path="data/junk.parquet"
    )
    assert not junk.HasField("row_count")
    types = {
        "a.csv": "text/csv",
        "a.json": "application/json",
        "a.txt": "text/plain",
        "a.png": "image/png",
        "a.yaml": "application/yaml",
        "a.md": "text/markdown",
        "noext": "application/octet-stream",
        "a.weights": "application/octet-stream",
    }
    for name, media in types.items():
        _, info, _ = await upload_artifact(artifacts, b"x", run_id=rid, path=f"types/{name}")
        assert info.content_type == media, name
    listed = {
        f.path: f.content_type for f in (await list_page(artifacts, "types", run_id=rid)).files
    }
    assert listed == {f"types/{k}": v for k, v in types.items()}


# -- resuming ---------------------------------------------------------------------------------


async def test_resume_after_a_cancelled_call(artifacts, rid: str) -> None:
    data = csv_bytes(160_000)  # ~4.5 MiB of CSV: the row count survives the rehash
    assert len(data) > 4 * MiB
    path = "resumed/metrics.csv"
    call = artifacts.UploadArtifact()
    await call.write(start_msg(run_id=rid, path=path))
    first = await call.read()
    upload_id = first.progress.upload_id
    assert first.progress.persisted_bytes == 0
    sent = 3 * MiB
    for i in range(0, sent, ARTIFACT_CHUNK):
        await call.write(data_msg(data[i : i + ARTIFACT_CHUNK]))
    await asyncio.sleep(0.5)  # let the server write what it received
    call.cancel()
    await not_visible(artifacts, path, run_id=rid)

    call = artifacts.UploadArtifact()
    await call.write(start_msg(run_id=rid, path=path, upload_id=upload_id))
    resumed = await call.read()
    held = resumed.progress.persisted_bytes
    assert resumed.progress.upload_id == upload_id
    assert 0 < held <= sent and held % ARTIFACT_CHUNK == 0, held
    info = await finish_resumed(call, data, held)
    assert (info.file_size, info.sha256) == (len(data), sha256_hex(data))
    assert info.row_count == 160_000
    assert (await download_artifact(artifacts, run_id=rid, path=path))[1] == data
    # The finished upload cannot be resumed again.
    _, err = await upload_fails(artifacts, [start_msg(run_id=rid, path=path, upload_id=upload_id)])
    check(err, NOT_FOUND)


async def test_resume_of_a_stream_that_ended_without_finish(artifacts, rid: str) -> None:
    data = payload(2 * MiB + 5, seed=11)
    msgs = upload_requests(data, run_id=rid, path="nofinish.bin")[:-1]  # no finish
    out, err = await upload_fails(artifacts, msgs)
    check_invalid(err, "finish", "resumable")
    upload_id = out[0].progress.upload_id
    assert upload_id in err.details()
    await not_visible(artifacts, "nofinish.bin", run_id=rid)
    call = artifacts.UploadArtifact()
    await call.write(start_msg(run_id=rid, path="nofinish.bin", upload_id=upload_id))
    resumed = await call.read()
    assert resumed.progress.persisted_bytes == len(data)
    info = await finish_resumed(call, data, len(data))
    assert info.sha256 == sha256_hex(data)


async def test_resume_checks_the_upload_id(artifacts, rid: str, runs) -> None:
    out, err = await upload_fails(
        artifacts, [start_msg(run_id=rid, path="p.bin", size=10), data_msg(b"12345")]
    )
    upload_id = out[0].progress.upload_id
    other = str((await new_run(runs, "0")).info.run_id)
    cases = [
        (start_msg(run_id=rid, path="q.bin", upload_id=upload_id), FAILED),
        (start_msg(run_id=other, path="p.bin", upload_id=upload_id), FAILED),
        (start_msg(run_id=rid, path="p.bin", upload_id=upload_id, size=11), FAILED),
        (start_msg(run_id=rid, path="p.bin", upload_id="not-an-id"), INVALID),
        (start_msg(run_id=rid, path="p.bin", upload_id="ab" * 16), NOT_FOUND),
    ]
    for msg, code in cases:
        _, err = await upload_fails(artifacts, [msg])
        check(err, code)
        if code == INVALID:
            check_invalid(err, "start.upload_id")
    # The upload is still whole after the refused attempts.
    call = artifacts.UploadArtifact()
    await call.write(start_msg(run_id=rid, path="p.bin", upload_id=upload_id))
    assert (await call.read()).progress.persisted_bytes == 5
    info = await finish_resumed(call, b"1234567890", 5)
    assert info.file_size == 10


async def test_resume_takes_over_a_call_still_open(artifacts, rid: str) -> None:
    data = payload(3 * MiB + 1, seed=41)
    old = artifacts.UploadArtifact()
    await old.write(start_msg(run_id=rid, path="t.bin"))
    upload_id = (await old.read()).progress.upload_id
    for i in range(0, 2 * MiB, ARTIFACT_CHUNK):
        await old.write(data_msg(data[i : i + ARTIFACT_CHUNK]))
    await asyncio.sleep(0.3)
    new = artifacts.UploadArtifact()
    await new.write(start_msg(run_id=rid, path="t.bin", upload_id=upload_id))
    held = (await asyncio.wait_for(new.read(), 15)).progress.persisted_bytes
    assert 0 < held <= 2 * MiB and held % ARTIFACT_CHUNK == 0, held
    info = await finish_resumed(new, data, held)
    assert (info.file_size, info.sha256) == (len(data), sha256_hex(data))
    assert (await download_artifact(artifacts, run_id=rid, path="t.bin"))[1] == data
    old.cancel()


async def test_a_call_taken_over_by_a_resume_is_ended(artifacts, rid: str) -> None:
    old = artifacts.UploadArtifact()
    await old.write(start_msg(run_id=rid, path="t2.bin"))
    upload_id = (await old.read()).progress.upload_id
    await old.write(data_msg(b"12345"))
    await asyncio.sleep(0.2)
    new = artifacts.UploadArtifact()
    await new.write(start_msg(run_id=rid, path="t2.bin", upload_id=upload_id))
    assert (await asyncio.wait_for(new.read(), 15)).progress.persisted_bytes == 5
    try:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await asyncio.wait_for(old.read(), 3)
        check(exc.value, grpc.StatusCode.ABORTED, "ABORTED")
        assert upload_id in (exc.value.details() or "")
    finally:
        old.cancel()
        new.cancel()


class Proxy:
    """A TCP proxy on 127.0.0.1 to a port, whose connections `drop` aborts (RST)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.transports: list[asyncio.BaseTransport] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.transports += [writer.transport, up_writer.transport]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.transport.abort()

        self.tasks += [
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ]

    async def drop(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in self.transports:
            t.abort()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_resume_after_a_dropped_tcp_connection(artifacts, server, rid: str) -> None:
    data = payload(5 * MiB + 3, seed=21)
    path = "dropped/blob.bin"
    proxy = Proxy(server.port)
    await proxy.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as ch:
            stub = artifact_service_pb2_grpc.ArtifactServiceStub(ch)
            call = stub.UploadArtifact()
            await call.write(start_msg(run_id=rid, path=path, size=len(data)))
            upload_id = (await call.read()).progress.upload_id
            for i in range(0, 3 * MiB, ARTIFACT_CHUNK):
                await call.write(data_msg(data[i : i + ARTIFACT_CHUNK]))
            await asyncio.sleep(0.5)
            await proxy.drop()
            with pytest.raises((grpc.aio.AioRpcError, asyncio.InvalidStateError)):
                await asyncio.wait_for(call.read(), 10)
                await asyncio.wait_for(call.read(), 10)
            assert call.done()
            assert await call.code() != grpc.StatusCode.OK
    finally:
        await proxy.drop()
    await not_visible(artifacts, path, run_id=rid)
    call = artifacts.UploadArtifact()
    await call.write(start_msg(run_id=rid, path=path, upload_id=upload_id))
    held = (await call.read()).progress.persisted_bytes
    assert 0 < held <= 3 * MiB and held % ARTIFACT_CHUNK == 0, held
    info = await finish_resumed(call, data, held)
    assert (info.file_size, info.sha256) == (len(data), sha256_hex(data))
    assert (await download_artifact(artifacts, run_id=rid, path=path))[1] == data


def test_ack_bytes_is_what_the_resume_tests_assume() -> None:
    # The resume tests see persisted bytes without an acknowledgement: they send far less.
    assert ACK_BYTES >= 4 * MiB


# -- SHA-256 and message order ------------------------------------------------------------------


async def test_sha256_mismatch_discards_the_upload(artifacts, rid: str) -> None:
    data = payload(3 * MiB // 2, seed=5)
    out, err = await upload_fails(
        artifacts, upload_requests(data, finish_sha256="0" * 64, run_id=rid, path="bad.bin")
    )
    description = check_invalid(err, "sha256")
    assert sha256_hex(data) in description
    await not_visible(artifacts, "bad.bin", run_id=rid)
    upload_id = out[0].progress.upload_id
    _, err = await upload_fails(
        artifacts, [start_msg(run_id=rid, path="bad.bin", upload_id=upload_id)]
    )
    check(err, NOT_FOUND)
    # A wrong SHA-256 in the start is checked the same way.
    _, err = await upload_fails(
        artifacts,
        upload_requests(
            data, finish_sha256=sha256_hex(data), run_id=rid, path="bad.bin", sha256="1" * 64
        ),
    )
    check_invalid(err, "finish.sha256", "differs")
    _, err = await upload_fails(
        artifacts,
        upload_requests(data, finish_sha256="", run_id=rid, path="bad.bin", sha256="1" * 64),
    )
    check_invalid(err, "sha256")
    for bad in ["xyz", "0" * 63, "g" * 64]:
        _, err = await upload_fails(artifacts, [start_msg(run_id=rid, path="b", sha256=bad)])
        check_invalid(err, "start.sha256")
        _, err = await upload_fails(
            artifacts, upload_requests(b"1", finish_sha256=bad, run_id=rid, path="b")
        )
        check_invalid(err, "finish.sha256")
    await not_visible(artifacts, "bad.bin", run_id=rid)
    await not_visible(artifacts, "b", run_id=rid)


async def test_messages_out_of_order(artifacts, rid: str) -> None:
    _, err = await upload_fails(artifacts, [])
    check_invalid(err, "start")
    _, err = await upload_fails(artifacts, [data_msg(b"abc")])
    check_invalid(err, "start")
    _, err = await upload_fails(artifacts, [finish_msg()])
    check_invalid(err, "start")
    _, err = await upload_fails(
        artifacts,
        [start_msg(run_id=rid, path="o.bin"), data_msg(b"a"), start_msg(run_id=rid, path="o.bin")],
    )
    check_invalid(err, "start")
    _, err = await upload_fails(artifacts, [start_msg(path="o.bin")])
    check_invalid(err, "start.owner")
    await not_visible(artifacts, "o.bin", run_id=rid)


async def test_chunk_over_1_mib_and_declared_size_mismatch(artifacts, rid: str) -> None:
    _, err = await upload_fails(
        artifacts, upload_requests(b"x" * (MiB + 1), chunk=MiB + 1, run_id=rid, path="c.bin")
    )
    check_invalid(err, "data", "at most")
    _, err = await upload_fails(
        artifacts, upload_requests(b"x" * 5, run_id=rid, path="c.bin", size=10)
    )
    check_invalid(err, "finish", "declared")
    _, err = await upload_fails(
        artifacts, upload_requests(b"x" * 11, run_id=rid, path="c.bin", size=10)
    )
    check_invalid(err, "data", "declared size")
    _, err = await upload_fails(artifacts, [start_msg(run_id=rid, path="c.bin", size=-1)])
    check_invalid(err, "start.size")
    await not_visible(artifacts, "c.bin", run_id=rid)
    # A chunk of exactly 1 MiB, and a declared size of 0, are fine.
    _, info, _ = await upload_artifact(artifacts, b"y" * MiB, run_id=rid, path="c.bin", size=MiB)
    assert info.file_size == MiB
    _, info, _ = await upload_artifact(artifacts, b"", run_id=rid, path="zero.bin", size=0)
    assert info.file_size == 0


# -- size limit ---------------------------------------------------------------------------------


def check_too_large(err: grpc.aio.AioRpcError) -> None:
    check(err, grpc.StatusCode.RESOURCE_EXHAUSTED, "MAX_ARTIFACT_SIZE_EXCEEDED")
    assert error_info(err).metadata["max_bytes"] == "1000"


async def test_size_limit(small_artifacts, rid: str) -> None:
    stub = small_artifacts
    out, err = await upload_fails(stub, [start_msg(run_id=rid, path="big.bin", size=1001)])
    check_too_large(err)
    assert out == []  # refused before any byte
    _, err = await upload_fails(stub, upload_requests(b"x" * 1001, run_id=rid, path="big.bin"))
    check_too_large(err)
    _, err = await upload_fails(
        stub, upload_requests(b"x" * 1200, chunk=600, run_id=rid, path="big.bin")
    )
    check_too_large(err)
    await not_visible(stub, "big.bin", run_id=rid)
    _, info, _ = await upload_artifact(stub, b"x" * 1000, chunk=300, run_id=rid, path="big.bin")
    assert info.file_size == 1000
    _, info, _ = await upload_artifact(stub, b"y" * 1000, run_id=rid, path="d.bin", size=1000)
    assert info.file_size == 1000


# -- paths --------------------------------------------------------------------------------------

BAD_PATHS = {
    "empty": ("", "is empty"),
    "dotdot": ("a/../b", "'..' segment"),
    "dotdot-alone": ("..", "'..' segment"),
    "dot": ("a/./b", "'.' segment"),
    "absolute": ("/etc/passwd", "is absolute"),
    "double-slash": ("a//b", "empty segment"),
    "trailing-slash": ("a/b/", "empty segment"),
    "backslash": ("a\\b", "backslash"),
    "nul": ("a\x00b", "NUL"),
    "control": ("a\x01b", "control character"),
    "newline": ("a\nb", "control character"),
    "del": ("a\x7fb", "control character"),
    "too-long": ("/".join(["p" * 200] * 6), "at most 1024 bytes"),
    "too-long-utf8": ("/".join(["€" * 80] * 5), "at most 1024 bytes"),
    "segment-too-long": ("a/" + "s" * 256, "segment over 255 bytes"),
    "segment-too-long-utf8": ("é" * 128, "segment over 255 bytes"),
}


@pytest.mark.parametrize("case", list(BAD_PATHS), ids=list(BAD_PATHS))
async def test_bad_path_is_invalid_everywhere(artifacts, rid: str, case: str) -> None:
    path, rule = BAD_PATHS[case]
    _, err = await upload_fails(artifacts, upload_requests(b"abc", run_id=rid, path=path))
    check_invalid(err, "start.path", rule)
    assert rule in err.details()
    calls = {
        "get": get(artifacts, path, run_id=rid),
        "download": download_artifact(artifacts, run_id=rid, path=path),
        "delete": artifacts.DeleteArtifact(apb.DeleteArtifactRequest(run_id=rid, path=path)),
    }
    if path:  # the empty path lists the root
        calls["list"] = list_page(artifacts, path, run_id=rid)
        calls["list-recursive"] = list_page(artifacts, path, run_id=rid, recursive=True)
    for name, call in calls.items():
        err = await fails(call)
        assert err.code() == INVALID, (name, err.details())
        check_invalid(err, "path", rule)


def path_of_bytes(n: int, segment: str) -> str:
    """A path of exactly `n` UTF-8 bytes: segments of `segment` repeated up to 254 bytes,
    and a last ASCII segment (1 to 255 bytes) to make up the count."""
    full = segment * (254 // len(segment.encode()))
    parts: list[str] = []
    while True:
        used = len("/".join([*parts, ""]).encode()) if parts else 0
        rest = n - used
        if rest <= 255:
            parts.append("z" * rest)
            break
        parts.append(full)
    path = "/".join(parts)
    assert len(path.encode()) == n and all(parts), path
    return path


async def test_paths_at_the_limits_are_accepted(artifacts, rid: str) -> None:
    paths = [
        path_of_bytes(1024, "a"),
        path_of_bytes(1024, "€"),  # 3-byte characters
        path_of_bytes(1024, "😀"),  # 4-byte characters
        "s" * 255,
        "€" * 85,  # 255 bytes
        "é" * 127 + "x",  # 255 bytes
        "résumé/データ/表.csv",
        "with space/and-dash_under.score/.hidden/...three/~tilde",
    ]
    for i, path in enumerate(paths):
        data = f"{i}\n".encode()
        _, info, _ = await upload_artifact(artifacts, data, run_id=rid, path=path)
        assert info.path == path
        assert await get(artifacts, path, run_id=rid) == info
        assert (await download_artifact(artifacts, run_id=rid, path=path))[1] == data
        parent = path.rpartition("/")[0]
        listed = (await list_page(artifacts, parent, run_id=rid)).files
        assert info in listed
    everything, _ = await list_all(artifacts, recursive=True, page=2, run_id=rid)
    assert sorted(f.path for f in everything) == sorted(paths)
    for path in paths:
        resp = await artifacts.DeleteArtifact(apb.DeleteArtifactRequest(run_id=rid, path=path))
        assert resp.deleted_count == 1
    assert list((await list_page(artifacts, run_id=rid, recursive=True)).files) == []
    # One byte more is refused.
    _, err = await upload_fails(
        artifacts, upload_requests(b"x", run_id=rid, path=path_of_bytes(1024, "a") + "z")
    )
    check_invalid(err, "start.path", "1024")


async def test_path_starting_with_the_last_code_point_is_listed(artifacts, rid: str) -> None:
    path = "\U0010ffff.bin"
    await upload_artifact(artifacts, b"x", run_id=rid, path=path)
    assert (await get(artifacts, path, run_id=rid)).path == path
    listed = (await list_page(artifacts, run_id=rid, recursive=True)).files
    assert [f.path for f in listed] == [path]


async def test_path_conflicts(artifacts, rid: str) -> None:
    await upload_artifact(artifacts, b"file", run_id=rid, path="a")
    _, err = await upload_fails(artifacts, upload_requests(b"x", run_id=rid, path="a/b"))
    check(err, FAILED)
    _, err = await upload_fails(artifacts, upload_requests(b"x", run_id=rid, path="a/b/c"))
    check(err, FAILED)
    await upload_artifact(artifacts, b"nested", run_id=rid, path="d/e/f")
    for path in ["d", "d/e"]:
        _, err = await upload_fails(artifacts, upload_requests(b"x", run_id=rid, path=path))
        check(err, FAILED)
        assert "conflict" in err.details()
    # Siblings sharing a prefix are no conflict.
    for path in ["a-b", "a.c", "ab", "a0", "d-e", "d/e-f", "d/ef"]:
        await upload_artifact(artifacts, b"ok", run_id=rid, path=path)
    listed, _ = await list_all(artifacts, recursive=True, run_id=rid)
    assert [f.path for f in listed] == sorted(
        ["a", "a-b", "a.c", "ab", "a0", "d-e", "d/e/f", "d/e-f", "d/ef"]
    )
    # A directory is not a file.
    check(await fails(get(artifacts, "d", run_id=rid)), NOT_FOUND)
    check(await fails(download_artifact(artifacts, run_id=rid, path="d/e")), NOT_FOUND)


async def test_conflict_raced_in_during_an_upload_is_refused_at_finish(artifacts, rid: str) -> None:
    call = artifacts.UploadArtifact()
    await call.write(start_msg(run_id=rid, path="x/y"))
    await call.read()
    await call.write(data_msg(b"under x"))
    await upload_artifact(artifacts, b"x is a file", run_id=rid, path="x")
    await call.write(finish_msg())
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        while await call.read() != grpc.aio.EOF:
            pass
    check(exc.value, FAILED)
    await not_visible(artifacts, "x/y", run_id=rid)
    assert (await download_artifact(artifacts, run_id=rid, path="x"))[1] == b"x is a file"


# -- owners ---------------------------------------------------------------------------------------


def owner_calls(stub, **owner: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return {
        "upload": upload_fails(stub, upload_requests(b"x", path="f.bin", **owner)),
        "get": get(stub, "f.bin", **owner),
        "download": download_artifact(stub, path="f.bin", **owner),
        "list": list_page(stub, "", **owner),
        "delete": stub.DeleteArtifact(apb.DeleteArtifactRequest(path="f.bin", **owner)),
    }


async def error_of(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    try:
        result = await call
    except grpc.aio.AioRpcError as err:
        return err
    if isinstance(result, tuple):  # upload_fails
        return result[1]  # type: ignore[no-any-return]
    raise AssertionError(f"succeeded: {result}")


@pytest.mark.parametrize(
    ("owner", "code", "field"),
    [
        ({"run_id": MISSING_RUN}, NOT_FOUND, None),
        ({"model_id": MISSING_MODEL}, NOT_FOUND, None),
        ({"run_id": "not-a-run"}, INVALID, "run_id"),
        ({"run_id": MISSING_RUN.upper()}, INVALID, "run_id"),
        ({"model_id": "m-123"}, INVALID, "model_id"),
        ({"model_id": MISSING_RUN}, INVALID, "model_id"),
        ({}, INVALID, "owner"),
    ],
    ids=[
        "unknown-run",
        "unknown-model",
        "bad-run",
        "upper-run",
        "bad-model",
        "run-id-as-model",
        "none",
    ],
)
async def test_unknown_or_malformed_owner(artifacts, owner, code, field) -> None:  # type: ignore[no-untyped-def]
    for name, call in owner_calls(artifacts, **owner).items():
        err = await error_of(call)
        assert err.code() == code, (name, err.details())
        check(err, code)
        if field is not None:
            check_invalid(err, f"start.{field}" if name == "upload" else field)


async def test_deleted_run_reads_but_refuses_writes(artifacts, runs, rid: str) -> None:
    data = payload(MiB + 1, seed=9)
    _, info, _ = await upload_artifact(artifacts, data, run_id=rid, path="kept.bin")
    # An upload under way when the run is deleted is refused at its finish.
    call = artifacts.UploadArtifact()
    await call.write(start_msg(run_id=rid, path="late.bin"))
    await call.read()
    await call.write(data_msg(b"late"))
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=rid))
    await call.write(finish_msg())
    await call.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        while await call.read() != grpc.aio.EOF:
            pass
    check(exc.value, FAILED)

    _, err = await upload_fails(artifacts, upload_requests(b"x", run_id=rid, path="new.bin"))
    check(err, FAILED)
    err = await fails(
        artifacts.DeleteArtifact(apb.DeleteArtifactRequest(run_id=rid, path="kept.bin"))
    )
    check(err, FAILED)
    assert await get(artifacts, "kept.bin", run_id=rid) == info
    assert (await download_artifact(artifacts, run_id=rid, path="kept.bin"))[1] == data
    assert [f.path for f in (await list_page(artifacts, run_id=rid)).files] == ["kept.bin"]
    # Restored, it takes uploads again.
    await runs.RestoreRun(rpb.RestoreRunRequest(run_id=rid))
    await upload_artifact(artifacts, b"x", run_id=rid, path="new.bin")


async def test_run_of_a_deleted_experiment_refuses_uploads(artifacts, experiments, runs) -> None:
    eid = await new_experiment(experiments)
    run_id = (await new_run(runs, eid)).info.run_id
    await upload_artifact(artifacts, b"before", run_id=run_id, path="f")
    await experiments.DeleteExperiment(epb.DeleteExperimentRequest(experiment_id=eid))
    _, err = await upload_fails(artifacts, upload_requests(b"x", run_id=run_id, path="g"))
    check(err, FAILED)
    assert (await download_artifact(artifacts, run_id=run_id, path="f"))[1] == b"before"


async def test_logged_model_artifacts(artifacts, models, experiments) -> None:
    eid = await new_experiment(experiments)
    model = (
        await models.CreateLoggedModel(mpb.CreateLoggedModelRequest(experiment_id=eid, name="m"))
    ).model
    mid = model.info.model_id
    weights = payload(2 * MiB + 1, seed=13)
    _, info, _ = await upload_artifact(artifacts, weights, model_id=mid, path="model/weights.bin")
    await upload_artifact(artifacts, b"name: m\n", model_id=mid, path="MLmodel")
    resp = await list_page(artifacts, model_id=mid)
    assert resp.root_uri == model.info.artifact_uri
    assert [(f.path, f.is_dir) for f in resp.files] == [("MLmodel", False), ("model", True)]
    assert await get(artifacts, "model/weights.bin", model_id=mid) == info
    assert (await download_artifact(artifacts, model_id=mid, path="model/weights.bin"))[
        1
    ] == weights
    # A run's files and a model's are apart.
    check(await fails(get(artifacts, "MLmodel", run_id=MISSING_RUN)), NOT_FOUND)
    resp = await artifacts.DeleteArtifact(apb.DeleteArtifactRequest(model_id=mid, path="MLmodel"))
    assert resp.deleted_count == 1
    # A deleted logged model is missing.
    await models.DeleteLoggedModel(mpb.DeleteLoggedModelRequest(model_id=mid))
    for name, call in owner_calls(artifacts, model_id=mid).items():
        err = await error_of(call)
        check(err, NOT_FOUND)
        assert mid in err.details(), name


async def test_list_root_uri_is_the_runs_artifact_uri(artifacts, runs, experiments) -> None:
    run = await new_run(runs, await new_experiment(experiments))
    resp = await list_page(artifacts, run_id=run.info.run_id)
    assert resp.root_uri == run.info.artifact_uri
    assert list(resp.files) == [] and resp.next_page_token == ""


# -- racing uploads -------------------------------------------------------------------------------


async def test_concurrent_uploads_to_one_path_leave_one_whole_content(artifacts, rid: str) -> None:
    contents = [payload(2 * MiB + i, seed=100 + i) for i in range(4)]

    async def one(data: bytes) -> fpb.FileInfo | grpc.aio.AioRpcError:
        try:
            return (
                await upload_artifact(
                    artifacts, data, chunk=256 * 1024, run_id=rid, path="race.bin"
                )
            )[1]
        except grpc.aio.AioRpcError as err:
            return err

    results = await asyncio.wait_for(asyncio.gather(*(one(d) for d in contents)), 60)
    stored = [r for r in results if isinstance(r, fpb.FileInfo)]
    for r in results:
        if isinstance(r, grpc.aio.AioRpcError):
            assert r.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE), r
    assert stored, results
    info, got = await download_artifact(artifacts, run_id=rid, path="race.bin")
    assert got in contents
    assert info.sha256 == sha256_hex(got) and info.file_size == len(got)
    assert info in stored
    listed = (await list_page(artifacts, run_id=rid)).files
    assert [(f.path, f.sha256) for f in listed] == [("race.bin", sha256_hex(got))]


async def test_downloads_racing_a_replacement_see_one_whole_content(artifacts, rid: str) -> None:
    old, new = payload(3 * MiB, seed=31), payload(3 * MiB, seed=32)
    await upload_artifact(artifacts, old, run_id=rid, path="swap.bin")

    async def reader() -> list[bytes]:
        seen = []
        for _ in range(4):
            info, got = await download_artifact(artifacts, run_id=rid, path="swap.bin")
            assert sha256_hex(got) == info.sha256
            seen.append(got)
        return seen

    seen, _ = await asyncio.gather(
        reader(), upload_artifact(artifacts, new, run_id=rid, path="swap.bin")
    )
    assert all(s in (old, new) for s in seen)


# -- listing ----------------------------------------------------------------------------------

TREE = (
    [f"f{i:02d}.txt" for i in range(5)]
    + [f"d1/a{i}.bin" for i in range(5)]
    + [f"d1/sub/b{i}.bin" for i in range(5)]
    + [f"d2/c{i}.csv" for i in range(4)]
    + ["d2/deep/er/x.bin"]
    + [f"z/y/x/w{i}" for i in range(3)]
    + ["a-b", "a/x"]
)


async def test_listing_pages(artifacts, rid: str) -> None:
    assert len(TREE) == 25
    for i, path in enumerate(TREE):
        await upload_artifact(artifacts, f"{i}".encode() * (i + 1), run_id=rid, path=path)
    by_path = {path: f"{i}".encode() * (i + 1) for i, path in enumerate(TREE)}

    everything, pages = await list_all(artifacts, recursive=True, page=3, run_id=rid)
    assert pages == 9
    assert [f.path for f in everything] == sorted(TREE)
    for f in everything:
        assert not f.is_dir
        assert f.file_size == len(by_path[f.path]) and f.sha256 == sha256_hex(by_path[f.path])
    whole, _ = await list_all(artifacts, recursive=True, run_id=rid)
    assert whole == everything

    for directory, files, dirs in [
        ("", [f"f{i:02d}.txt" for i in range(5)] + ["a-b"], ["a", "d1", "d2", "z"]),
        ("d1", [f"d1/a{i}.bin" for i in range(5)], ["d1/sub"]),
        ("d2", [f"d2/c{i}.csv" for i in range(4)], ["d2/deep"]),
        ("d2/deep", [], ["d2/deep/er"]),
        ("z/y/x", [f"z/y/x/w{i}" for i in range(3)], []),
    ]:
        full, _ = await list_all(artifacts, directory, run_id=rid)
        for size in (1, 2, 3, 4):
            paged, _ = await list_all(artifacts, directory, page=size, run_id=rid)
            assert paged == full, (directory, size)
        assert sorted(f.path for f in full if not f.is_dir) == sorted(files)
        assert [f.path for f in full if f.is_dir] == sorted(dirs)  # each directory once
        for f in full:
            if f.is_dir:
                assert (f.file_size, f.sha256, f.content_type, f.modification_time) == (
                    0,
                    "",
                    "",
                    0,
                )
                assert not f.HasField("row_count")
        # Entries come in path order (a directory sorted as its name followed by '/').
        keys = [f.path + "/" if f.is_dir else f.path for f in full]
        assert keys == sorted(keys), keys
        recursive, _ = await list_all(artifacts, directory, recursive=True, page=2, run_id=rid)
        prefix = directory + "/" if directory else ""
        assert [f.path for f in recursive] == sorted(p for p in TREE if p.startswith(prefix))

    for empty in ["nothing", "d1/nothing/here", "f00.txt", "d"]:
        resp = await list_page(artifacts, empty, run_id=rid)
        assert list(resp.files) == [] and resp.next_page_token == "", empty
        resp = await list_page(artifacts, empty, run_id=rid, recursive=True)
        assert list(resp.files) == [] and resp.next_page_token == "", empty


async def test_direct_children_are_ordered_as_s3_orders_prefixes(artifacts, rid: str) -> None:
    # A directory sorts as its path and '/': '-' (0x2D) comes before '/' (0x2F), '0' after.
    for path in ["a0", "a/x", "a-b"]:
        await upload_artifact(artifacts, b"x", run_id=rid, path=path)
    listed = (await list_page(artifacts, run_id=rid)).files
    assert [(f.path, f.is_dir) for f in listed] == [("a-b", False), ("a", True), ("a0", False)]


async def test_page_tokens_belong_to_their_listing(artifacts, runs, rid: str) -> None:
    for path in ["d/a", "d/b", "d/c", "e/a", "e/b"]:
        await upload_artifact(artifacts, b"x", run_id=rid, path=path)
    first = await list_page(artifacts, "d", run_id=rid, max_results=1)
    token = first.next_page_token
    assert token
    other_run = str((await new_run(runs, "0")).info.run_id)
    for kw in [
        {"path": "e", "run_id": rid},
        {"path": "", "run_id": rid},
        {"path": "d", "run_id": rid, "recursive": True},
        {"path": "d", "run_id": other_run},
    ]:
        path = str(kw.pop("path"))
        err = await fails(list_page(artifacts, path, page_token=token, max_results=1, **kw))
        check_invalid(err, "page_token")
    for bad in ["garbage", token[:-2], "x" * 200]:
        err = await fails(list_page(artifacts, "d", page_token=bad, run_id=rid))
        check_invalid(err, "page_token")
    second = await list_page(artifacts, "d", run_id=rid, max_results=1, page_token=token)
    assert [f.path for f in second.files] == ["d/b"]
    for bad_size in (-1, 10_001):
        err = await fails(list_page(artifacts, "d", run_id=rid, max_results=bad_size))
        check_invalid(err, "max_results")
    assert len((await list_page(artifacts, "d", run_id=rid, max_results=10_000)).files) == 3


# -- deletion -------------------------------------------------------------------------------------


async def test_delete_file_and_directory(artifacts, rid: str) -> None:
    for path in ["keep.txt", "dir/a", "dir/b", "dir/sub/c", "dir-x", "dirx/y"]:
        await upload_artifact(artifacts, path.encode(), run_id=rid, path=path)

    async def delete(path: str) -> int:
        resp = await artifacts.DeleteArtifact(apb.DeleteArtifactRequest(run_id=rid, path=path))
        return int(resp.deleted_count)

    assert await delete("dir/a") == 1
    await not_visible(artifacts, "dir/a", run_id=rid)
    assert await delete("dir") == 2
    for path in ["dir/b", "dir/sub/c"]:
        await not_visible(artifacts, path, run_id=rid)
    for gone in ["dir", "dir/a", "nothing", "dir/sub"]:
        err = await fails(
            artifacts.DeleteArtifact(apb.DeleteArtifactRequest(run_id=rid, path=gone))
        )
        check(err, NOT_FOUND)
    listed, _ = await list_all(artifacts, recursive=True, run_id=rid)
    assert [f.path for f in listed] == ["dir-x", "dirx/y", "keep.txt"]  # siblings stay
    # The path is free again, as a file or as a directory.
    await upload_artifact(artifacts, b"now a file", run_id=rid, path="dir")
    assert (await download_artifact(artifacts, run_id=rid, path="dir"))[1] == b"now a file"


async def trackd_gc(database_url: str, backend: Backend, *args: str) -> str:
    """Runs `trackd gc` with the server's settings as its own process; its output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "trackd.server",
        "gc",
        "--database-url",
        database_url,
        "--artifact-root",
        backend.root,
        "--data-dir",
        str(backend.data_dir),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


async def test_replaced_file_object_is_removed_by_gc(
    artifacts, server, backend: Backend, database_url: str, rid: str
) -> None:
    first, info1, _ = await upload_artifact(artifacts, b"first" * 1000, run_id=rid, path="r.bin")
    second, info2, _ = await upload_artifact(artifacts, b"second", run_id=rid, path="r.bin")
    assert first != second
    assert info2.modification_time >= info1.modification_time
    info, got = await download_artifact(artifacts, run_id=rid, path="r.bin")
    assert (got, info) == (b"second", info2)
    blobs = server.artifacts.blobs

    async def keys() -> set[str]:
        return {k async for k in blobs.list_keys("objects/")}

    assert {object_key(first), object_key(second)} <= await keys()
    if backend.local_root is not None:
        assert (backend.local_root / object_key(first)).is_file()
    # Within the grace period the replaced object stays (a download may still read it).
    await trackd_gc(database_url, backend)
    assert object_key(first) in await keys()
    out = await trackd_gc(database_url, backend, "--grace", "0")
    left = await keys()
    assert object_key(first) not in left, out
    assert object_key(second) in left
    if backend.local_root is not None:
        assert not (backend.local_root / object_key(first)).exists()
        assert (backend.local_root / object_key(second)).is_file()
    assert (await download_artifact(artifacts, run_id=rid, path="r.bin"))[1] == b"second"
