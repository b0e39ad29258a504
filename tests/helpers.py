"""Helpers shared by the tests: creating entities through the stubs and reading error
details off a failed call."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from trackd.server.domain import blocks
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import run_service_pb2 as rpb

# Counts the fault and property suites add to; printed at the end of the run.
STATS: dict[str, int] = {"faults injected": 0, "generated inputs tried": 0}

_STORED_ROWS = """
SELECT r.run_id, s.key, p.step, p.ts, p.value
FROM metric_points p JOIN metric_series s USING (series_id) JOIN runs r USING (run_pk)
WHERE r.run_id = ANY($1::uuid[])"""
_STORED_BLOCKS = """
SELECT r.run_id, s.key, b.*
FROM metric_blocks b JOIN metric_series s USING (series_id) JOIN runs r USING (run_pk)
WHERE r.run_id = ANY($1::uuid[])"""


async def stored_points(
    database_url: str, run_ids: list[str]
) -> dict[tuple[str, str], list[tuple[int, int, float]]]:
    """Every point stored for the runs, as rows or in compacted blocks, by (run id, key):
    what durability checks count, whatever the compaction did. One snapshot."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(_STORED_ROWS, run_ids)
            found = await conn.fetch(_STORED_BLOCKS, run_ids)
    finally:
        await conn.close()
    out: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
    for r in rows:
        out.setdefault((r["run_id"].hex, r["key"]), []).append((r["step"], r["ts"], r["value"]))
    for b in found:
        steps, stamps, values = blocks.decode(b)
        out.setdefault((b["run_id"].hex, b["key"]), []).extend(
            zip(steps.tolist(), stamps.tolist(), values.tolist(), strict=True)
        )
    return out


async def run_python(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Runs `script` in a fresh Python process (with `args`, and `env` on top of this
    process' environment), waits up to 60 s, checks it exited 0 (failing with its stderr)
    and returns what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def unique(prefix: str = "exp") -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def new_experiment(experiments, name: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """Creates an experiment with a unique name; returns its id."""
    resp = await experiments.CreateExperiment(epb.CreateExperimentRequest(name=name or unique()))
    return str(resp.experiment_id)


async def new_run(runs, experiment_id: str = "0", **fields):  # type: ignore[no-untyped-def]
    """Creates a run; returns its Run message."""
    resp = await runs.CreateRun(rpb.CreateRunRequest(experiment_id=experiment_id, **fields))
    return resp.run


def settled(run):  # type: ignore[no-untyped-def]
    """A copy of a Run (or RunInfo) without the duration of a RUNNING run, which grows with
    the server's clock between two reads; for comparing reads that should be the same."""
    copy = type(run)()
    copy.CopyFrom(run)
    info = copy.info if hasattr(copy, "info") else copy
    if info.status == 1:
        info.ClearField("duration")
    return copy


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo detail of a failed call (fails the test if there is none)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no rich status on {err.code()}: {err.details()}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo on {err.code()}: {err.details()}")


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of a failed call, field -> description."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    return {}


# -- artifacts -----------------------------------------------------------------------------

# The largest chunk of an upload (ARTIFACT_CHUNK_BYTES_MAX).
ARTIFACT_CHUNK = 1024 * 1024


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of `data`, 64 lowercase hex digits."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def upload_requests(  # type: ignore[no-untyped-def]
    data: bytes,
    chunk: int = ARTIFACT_CHUNK,
    finish_sha256: str = "",
    **start,
) -> list:
    """The messages of a whole upload: UploadStart(**start), `data` in chunks, UploadFinish."""
    from trackd.v1 import artifact_service_pb2 as apb

    msgs = [apb.UploadArtifactRequest(start=apb.UploadStart(**start))]
    msgs += [
        apb.UploadArtifactRequest(data=data[i : i + chunk]) for i in range(0, len(data), chunk)
    ]
    msgs.append(apb.UploadArtifactRequest(finish=apb.UploadFinish(sha256=finish_sha256)))
    return msgs


async def upload_artifact(  # type: ignore[no-untyped-def]
    stub, data: bytes, chunk: int = ARTIFACT_CHUNK, finish_sha256: str | None = None, **start
):
    """Uploads `data` in one call (finish names its SHA-256 unless `finish_sha256` is
    given); returns (upload id, stored FileInfo, progress messages)."""
    sha = sha256_hex(data) if finish_sha256 is None else finish_sha256
    progress = []
    info = None
    async for resp in stub.UploadArtifact(iter(upload_requests(data, chunk, sha, **start))):
        if resp.WhichOneof("message") == "progress":
            progress.append(resp.progress)
        else:
            assert info is None, "a second FileInfo"
            info = resp.artifact
    assert info is not None, "the upload ended without a FileInfo"
    return progress[0].upload_id, info, progress


async def download_artifact(stub, offset: int = 0, length: int = 0, **request):  # type: ignore[no-untyped-def]
    """Downloads a file (or a range); returns (FileInfo, bytes), checking that the FileInfo
    comes first and only once and that no chunk is over 1 MiB."""
    from trackd.v1 import artifact_service_pb2 as apb

    info = None
    parts: list[bytes] = []
    call = stub.DownloadArtifact(
        apb.DownloadArtifactRequest(offset=offset, length=length, **request)
    )
    async for resp in call:
        if resp.WhichOneof("message") == "artifact":
            assert info is None and not parts, "FileInfo not first or twice"
            info = resp.artifact
        else:
            assert info is not None, "bytes before the FileInfo"
            assert len(resp.data) <= ARTIFACT_CHUNK
            parts.append(resp.data)
    assert info is not None
    return info, b"".join(parts)
