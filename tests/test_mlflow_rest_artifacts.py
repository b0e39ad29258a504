"""MLflow's artifact endpoints through the official mlflow client (and raw HTTP for what the
client cannot send) against a real trackd with its HTTP front: the fluent log_artifact(s),
log_text and log_dict, download_artifacts (bytes identical, a few MiB of random bytes
included), list_artifacts at the root and in a directory, deletion, a logged model's
artifacts, `artifacts/list` and ListLoggedModelArtifacts, ranged downloads, multipart
refused as MLflow's server refuses it (the client then uploads with one PUT), the errors of
bad paths, unknown owners and owners of another experiment, and files uploaded through REST
read through trackd's gRPC ArtifactService."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import random
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import mlflow
import pytest
import pytest_asyncio
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

from conftest import server_config
from helpers import download_artifact, unique, upload_artifact
from trackd.server import app
from trackd.server.http.mlflow_json import model_artifact_uri
from trackd.v1 import artifact_service_pb2_grpc, logged_model_service_pb2_grpc
from trackd.v1 import logged_model_service_pb2 as mpb

MiB = 1024 * 1024
MISSING_RUN = "0123456789abcdef0123456789abcdef"
PROXY = "/api/2.0/mlflow-artifacts/artifacts"


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def grpc_channel(http_server: app.Running) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{http_server.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def client(tracking_uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri)


def new_run(client: MlflowClient) -> Any:
    eid = client.create_experiment(unique("rest-art"))
    return client.create_run(eid)


def read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def error_of(call: Any) -> MlflowException:
    with pytest.raises(MlflowException) as caught:
        call()
    return caught.value


def _raw(
    tracking_uri: str, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """An HTTP request with the path sent exactly as given (no normalisation of dot
    segments, as requests does): (status, headers, body)."""
    host, port = tracking_uri.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


async def raw(
    tracking_uri: str, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(_raw, tracking_uri, method, path, body, **headers)


def http_error_of(call: Any) -> tuple[int, str, str]:
    """(status, error_code, message) of an artifact repository call that fails (the
    repositories raise requests' HTTPError with trackd's JSON answer)."""
    with pytest.raises(requests.HTTPError) as caught:
        call()
    resp = caught.value.response
    assert resp is not None
    doc = resp.json()
    return resp.status_code, doc["error_code"], doc["message"]


def error_json(status_body: tuple[int, dict[str, str], bytes]) -> tuple[int, str, str]:
    status, _, body = status_body
    doc = json.loads(body)
    return status, doc["error_code"], doc["message"]


def proxy_path(run: Any, rel: str = "") -> str:
    base = f"{PROXY}/{run.info.experiment_id}/{run.info.run_id}/artifacts"
    return f"{base}/{rel}" if rel else base


# -- the fluent API and the client ------------------------------------------------------------


async def test_fluent_logging_download_and_listing(client, tracking_uri, tmp_path) -> None:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.json").write_text('{"b": 1}')
    (src / "sub" / "deeper" / "c.bin").write_bytes(payload(70_000, seed=1))
    single = tmp_path / "notes.md"
    single.write_text("# notes\n")
    big = tmp_path / "big.bin"
    big_bytes = payload(3 * MiB + 12345, seed=2)
    big.write_bytes(big_bytes)

    def log() -> str:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(unique("fluent-art"))
        with mlflow.start_run() as run:
            mlflow.log_artifact(str(single))
            mlflow.log_artifact(str(big), artifact_path="blobs")
            mlflow.log_artifacts(str(src), artifact_path="tree")
            mlflow.log_text("héllo wörld", "texts/greeting.txt")
            mlflow.log_dict({"k": [1, 2, 3], "n": None}, "conf/params.json")
            mlflow.log_dict({"k": "v"}, "conf/params.yaml")
            return str(run.info.run_id)

    run_id = await asyncio.to_thread(log)
    run = await asyncio.to_thread(client.get_run, run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")

    root = await asyncio.to_thread(client.list_artifacts, run_id)
    assert [(f.path, f.is_dir) for f in root] == [
        ("blobs", True),
        ("conf", True),
        ("notes.md", False),
        ("texts", True),
        ("tree", True),
    ]
    assert [f.file_size for f in root if not f.is_dir] == [len("# notes\n")]
    # Below the root, MlflowClient.list_artifacts goes through runs:/, which also looks for
    # logged models of the run (test_client_listing_below_the_root); the run's own
    # repository lists the same.
    repo = MlflowArtifactsRepository(run.info.artifact_uri, tracking_uri=tracking_uri)
    tree = await asyncio.to_thread(repo.list_artifacts, "tree")
    assert [(f.path, f.is_dir, f.file_size) for f in tree] == [
        ("tree/a.txt", False, 6),
        ("tree/sub", True, None),
    ]
    deeper = await asyncio.to_thread(repo.list_artifacts, "tree/sub/deeper")
    assert [(f.path, f.file_size) for f in deeper] == [("tree/sub/deeper/c.bin", 70_000)]
    # Listing a file lists nothing, as MLflow's client expects.
    assert await asyncio.to_thread(repo.list_artifacts, "notes.md") == []
    assert await asyncio.to_thread(repo.list_artifacts, "no/such/dir") == []

    dst = tmp_path / "dst"
    dst.mkdir()
    local = await asyncio.to_thread(
        mlflow.artifacts.download_artifacts, run_id=run_id, dst_path=str(dst)
    )
    got = Path(local)
    assert (got / "blobs" / "big.bin").read_bytes() == big_bytes
    assert (got / "notes.md").read_text() == "# notes\n"
    assert (got / "tree" / "sub" / "deeper" / "c.bin").read_bytes() == payload(70_000, seed=1)
    assert (got / "tree" / "sub" / "b.json").read_text() == '{"b": 1}'
    assert (got / "texts" / "greeting.txt").read_text(encoding="utf-8") == "héllo wörld"
    assert json.loads((got / "conf" / "params.json").read_text()) == {"k": [1, 2, 3], "n": None}

    # One file, by the run's artifact URI and by runs:/.
    one = await asyncio.to_thread(
        mlflow.artifacts.download_artifacts,
        artifact_uri=f"runs:/{run_id}/conf/params.yaml",
        dst_path=str(tmp_path / "one"),
    )
    assert read(one) == b"k: v\n"
    assert await asyncio.to_thread(
        mlflow.artifacts.load_text, f"{run.info.artifact_uri}/texts/greeting.txt"
    ) == ("héllo wörld")
    assert await asyncio.to_thread(
        mlflow.artifacts.load_dict, f"runs:/{run_id}/conf/params.json"
    ) == {"k": [1, 2, 3], "n": None}


async def test_client_listing_below_the_root(client, tracking_uri) -> None:
    run = await asyncio.to_thread(new_run, client)
    rid = run.info.run_id
    for name in ("top.txt", "tree/a.txt", "tree/sub/b.txt"):
        await asyncio.to_thread(client.log_text, rid, name, name)
    tree = await asyncio.to_thread(client.list_artifacts, rid, "tree")
    assert [(f.path, f.is_dir, f.file_size) for f in tree] == [
        ("tree/a.txt", False, len("tree/a.txt")),
        ("tree/sub", True, None),
    ]
    sub = await asyncio.to_thread(
        mlflow.artifacts.list_artifacts, run_id=rid, artifact_path="tree/sub"
    )
    assert [f.path for f in sub] == ["tree/sub/b.txt"]


async def test_replacing_a_file_and_an_empty_file(client, tmp_path) -> None:
    run = await asyncio.to_thread(new_run, client)
    rid = run.info.run_id
    f = tmp_path / "f.txt"
    f.write_text("first")
    await asyncio.to_thread(client.log_artifact, rid, str(f))
    f.write_text("second, longer")
    await asyncio.to_thread(client.log_artifact, rid, str(f))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    await asyncio.to_thread(client.log_artifact, rid, str(empty))
    out = await asyncio.to_thread(client.download_artifacts, rid, "", str(tmp_path))
    assert (Path(out) / "f.txt").read_text() == "second, longer"
    assert (Path(out) / "empty.txt").read_bytes() == b""
    listed = {f.path: f.file_size for f in await asyncio.to_thread(client.list_artifacts, rid)}
    assert listed == {"empty.txt": 0, "f.txt": len("second, longer")}


async def test_delete_artifacts(client, tracking_uri, tmp_path) -> None:
    run = await asyncio.to_thread(new_run, client)
    rid = run.info.run_id
    for name in ("keep.txt", "d/one.txt", "d/two.txt", "e/three.txt"):
        await asyncio.to_thread(client.log_text, rid, name, name)
    repo = MlflowArtifactsRepository(run.info.artifact_uri, tracking_uri=tracking_uri)
    await asyncio.to_thread(repo.delete_artifacts, "d")
    await asyncio.to_thread(repo.delete_artifacts, "e/three.txt")
    # What is not there deletes as nothing, as MLflow's server does.
    await asyncio.to_thread(repo.delete_artifacts, "never/was")
    names = [f.path for f in await asyncio.to_thread(client.list_artifacts, rid)]
    assert names == ["keep.txt"]
    await asyncio.to_thread(repo.delete_artifacts)  # the whole root
    assert await asyncio.to_thread(client.list_artifacts, rid) == []


async def test_multipart_is_refused_and_the_client_falls_back(
    client, tracking_uri, tmp_path, monkeypatch
) -> None:
    run = await asyncio.to_thread(new_run, client)
    status, code, message = error_json(
        await raw(
            tracking_uri,
            "POST",
            f"/api/2.0/mlflow-artifacts/mpu/create/{run.info.experiment_id}/"
            f"{run.info.run_id}/artifacts",
            json.dumps({"path": "x.bin", "num_parts": 2}).encode(),
            **{"Content-Type": "application/json"},
        )
    )
    assert (status, code) == (501, "NOT_IMPLEMENTED")
    assert message.startswith("Multipart upload is not supported")
    # A client told to use multipart uploads (and not asking server-info) gets the same
    # answer and uploads with one PUT.
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", "1024")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", "1024")
    data = payload(5000, seed=4)
    f = tmp_path / "parts.bin"
    f.write_bytes(data)
    repo = MlflowArtifactsRepository(run.info.artifact_uri, tracking_uri=tracking_uri)
    await asyncio.to_thread(repo.log_artifact, str(f), "m")
    out = await asyncio.to_thread(repo.download_artifacts, "m/parts.bin", str(tmp_path))
    assert read(out) == data
    # Presigned downloads are refused as well (the client then downloads through the proxy).
    status, code, message = error_json(
        await raw(
            tracking_uri,
            "GET",
            proxy_path(run, "m/parts.bin").replace("/artifacts/", "/presigned/", 1),
        )
    )
    assert (status, code) == (501, "NOT_IMPLEMENTED")
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "true")
    (tmp_path / "again").mkdir()
    out = await asyncio.to_thread(repo.download_artifacts, "m/parts.bin", str(tmp_path / "again"))
    assert read(out) == data


# -- raw HTTP: headers, ranges, listings ----------------------------------------------------


async def test_download_headers_and_ranges(client, tracking_uri) -> None:
    run = await asyncio.to_thread(new_run, client)
    data = payload(3 * MiB + 5, seed=5)
    await asyncio.to_thread(
        requests.put, tracking_uri + proxy_path(run, "w/weights.bin"), data=data, timeout=60
    )
    await asyncio.to_thread(client.log_text, run.info.run_id, "hello", "readme.txt")
    url = tracking_uri + proxy_path(run, "w/weights.bin")
    resp = await asyncio.to_thread(requests.get, url, timeout=60)
    assert resp.status_code == 200 and resp.content == data
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["Content-Disposition"] == 'attachment; filename="weights.bin"'
    assert resp.headers["Accept-Ranges"] == "bytes"
    text = await asyncio.to_thread(
        requests.get, tracking_uri + proxy_path(run, "readme.txt"), timeout=60
    )
    assert text.headers["Content-Type"].startswith("text/plain") and text.text == "hello"
    for header, want, span in (
        ("bytes=10-19", data[10:20], f"bytes 10-19/{len(data)}"),
        ("bytes=-7", data[-7:], f"bytes {len(data) - 7}-{len(data) - 1}/{len(data)}"),
        (f"bytes={MiB}-", data[MiB:], f"bytes {MiB}-{len(data) - 1}/{len(data)}"),
        ("bytes=5-999999999", data[5:], f"bytes 5-{len(data) - 1}/{len(data)}"),
    ):
        part = await asyncio.to_thread(requests.get, url, headers={"Range": header}, timeout=60)
        assert part.status_code == 206, header
        assert part.content == want, header
        assert part.headers["Content-Range"] == span
    past = await asyncio.to_thread(
        requests.get, url, headers={"Range": f"bytes={len(data)}-"}, timeout=60
    )
    assert past.status_code == 416
    assert past.headers["Content-Range"] == f"bytes */{len(data)}"


async def test_proxy_listing_and_artifacts_list(client, tracking_uri) -> None:
    run = await asyncio.to_thread(new_run, client)
    rid = run.info.run_id
    for name in ("a.txt", "dir/b.txt", "dir/sub/c.txt"):
        await asyncio.to_thread(client.log_text, rid, "x" * len(name), name)
    listing = (
        await asyncio.to_thread(
            requests.get,
            tracking_uri + PROXY,
            params={"path": f"{run.info.experiment_id}/{rid}/artifacts/dir"},
            timeout=30,
        )
    ).json()
    assert listing == {
        "files": [
            {"path": "b.txt", "is_dir": False, "file_size": 9},
            {"path": "sub", "is_dir": True},
        ]
    }
    for prefix in ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow"):
        for id_field in ("run_id", "run_uuid"):
            body = (
                await asyncio.to_thread(
                    requests.get,
                    f"{tracking_uri}{prefix}/artifacts/list",
                    params={id_field: rid, "path": "dir"},
                    timeout=30,
                )
            ).json()
            assert body == {
                "root_uri": run.info.artifact_uri,
                "files": [
                    {"path": "dir/b.txt", "is_dir": False, "file_size": 9},
                    {"path": "dir/sub", "is_dir": True},
                ],
            }
    root = (
        await asyncio.to_thread(
            requests.get, f"{tracking_uri}/api/2.0/mlflow/artifacts/list?run_id={rid}", timeout=30
        )
    ).json()
    assert [f["path"] for f in root["files"]] == ["a.txt", "dir"]
    status, code, _ = error_json(await raw(tracking_uri, "GET", "/api/2.0/mlflow/artifacts/list"))
    assert (status, code) == (400, "INVALID_PARAMETER_VALUE")
    status, code, _ = error_json(
        await raw(tracking_uri, "GET", f"/api/2.0/mlflow/artifacts/list?run_id={MISSING_RUN}")
    )
    assert (status, code) == (404, "RESOURCE_DOES_NOT_EXIST")
    status, code, _ = error_json(
        await raw(tracking_uri, "GET", f"/api/2.0/mlflow/artifacts/list?run_id={rid}&path=../x")
    )
    assert (status, code) == (400, "INVALID_PARAMETER_VALUE")


# -- logged models ---------------------------------------------------------------------------


async def test_logged_model_artifacts(client, tracking_uri, grpc_channel, tmp_path) -> None:
    eid = await asyncio.to_thread(client.create_experiment, unique("model-art"))
    models = logged_model_service_pb2_grpc.LoggedModelServiceStub(grpc_channel)
    model = (
        await models.CreateLoggedModel(mpb.CreateLoggedModelRequest(experiment_id=eid, name="m"))
    ).model
    mid = model.info.model_id
    uri = model_artifact_uri(eid, mid)
    assert uri == f"mlflow-artifacts:/{eid}/models/{mid}/artifacts"
    src = tmp_path / "model"
    src.mkdir()
    (src / "MLmodel").write_text("artifact_path: model\n")
    weights = payload(2 * MiB + 3, seed=6)
    (src / "weights.bin").write_bytes(weights)
    repo = MlflowArtifactsRepository(uri, tracking_uri=tracking_uri)
    await asyncio.to_thread(repo.log_artifacts, str(src))
    listed = await asyncio.to_thread(repo.list_artifacts)
    assert [(f.path, f.file_size) for f in listed] == [
        ("MLmodel", len("artifact_path: model\n")),
        ("weights.bin", len(weights)),
    ]
    out = await asyncio.to_thread(
        mlflow.artifacts.download_artifacts, artifact_uri=uri, dst_path=str(tmp_path / "o")
    )
    assert (Path(out) / "weights.bin").read_bytes() == weights
    # ListLoggedModelArtifacts.
    body = (
        await asyncio.to_thread(
            requests.get,
            f"{tracking_uri}/api/2.0/mlflow/logged-models/{mid}/artifacts/directories",
            timeout=30,
        )
    ).json()
    assert body["root_uri"] == uri
    assert [f["path"] for f in body["files"]] == ["MLmodel", "weights.bin"]
    status, code, _ = error_json(
        await raw(
            tracking_uri,
            "GET",
            "/api/2.0/mlflow/logged-models/m-0123456789abcdef0123456789abcdef"
            "/artifacts/directories",
        )
    )
    assert (status, code) == (404, "RESOURCE_DOES_NOT_EXIST")
    # The same files through gRPC.
    stub = artifact_service_pb2_grpc.ArtifactServiceStub(grpc_channel)
    assert (await download_artifact(stub, model_id=mid, path="weights.bin"))[1] == weights


# -- one store for REST and gRPC -------------------------------------------------------------


async def test_rest_and_grpc_share_the_store(client, tracking_uri, grpc_channel) -> None:
    run = await asyncio.to_thread(new_run, client)
    rid = run.info.run_id
    data = payload(MiB + 17, seed=7)
    await asyncio.to_thread(client.log_dict, rid, {"a": 1}, "cfg.json")
    resp = await asyncio.to_thread(
        requests.put, tracking_uri + proxy_path(run, "data/blob.bin"), data=data, timeout=60
    )
    assert resp.status_code == 200 and resp.json() == {}
    stub = artifact_service_pb2_grpc.ArtifactServiceStub(grpc_channel)
    info, got = await download_artifact(stub, run_id=rid, path="data/blob.bin")
    assert got == data and info.file_size == len(data)
    _, cfg = await download_artifact(stub, run_id=rid, path="cfg.json")
    assert json.loads(cfg) == {"a": 1}
    # And the other way.
    await upload_artifact(stub, b"from grpc", run_id=rid, path="grpc.txt")
    text = await asyncio.to_thread(mlflow.artifacts.load_text, f"runs:/{rid}/grpc.txt")
    assert text == "from grpc"


# -- errors ----------------------------------------------------------------------------------


async def test_unknown_run_errors(client, tracking_uri, tmp_path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("x")
    err = await asyncio.to_thread(error_of, lambda: client.log_artifact(MISSING_RUN, str(f)))
    assert err.error_code == "RESOURCE_DOES_NOT_EXIST"
    err = await asyncio.to_thread(error_of, lambda: client.list_artifacts(MISSING_RUN))
    assert err.error_code == "RESOURCE_DOES_NOT_EXIST"
    # Straight to the proxy: a well-formed path naming no run.
    for method in ("PUT", "GET", "DELETE"):
        status, code, message = error_json(
            await raw(tracking_uri, method, f"{PROXY}/0/{MISSING_RUN}/artifacts/f.txt", b"x")
        )
        assert (status, code) == (404, "RESOURCE_DOES_NOT_EXIST"), method
        assert MISSING_RUN in message
    repo = MlflowArtifactsRepository(
        f"mlflow-artifacts:/0/{MISSING_RUN}/artifacts", tracking_uri=tracking_uri
    )
    status, code, _ = await asyncio.to_thread(http_error_of, lambda: repo.log_artifact(str(f)))
    assert (status, code) == (404, "RESOURCE_DOES_NOT_EXIST")


async def test_bad_paths(client, tracking_uri) -> None:
    run = await asyncio.to_thread(new_run, client)
    eid, rid = run.info.experiment_id, run.info.run_id
    await asyncio.to_thread(client.log_text, rid, "secret", "dir/in.txt")
    bad = [
        f"{PROXY}/{eid}/{rid}/artifacts/../../{eid}/{rid}/artifacts/x",
        f"{PROXY}/{eid}/{rid}/artifacts/%2E%2E/x",
        f"{PROXY}/{eid}/{rid}/artifacts/a/./b",
        f"{PROXY}/{eid}/{rid}",  # not under the run's artifacts
        f"{PROXY}/{eid}",
        f"{PROXY}/notanid/{rid}/artifacts/x",
        f"{PROXY}/{eid}/not-a-run/artifacts/x",
        f"{PROXY}/{eid}/models/not-a-model/artifacts/x",
        f"{PROXY}/{eid}/{rid}/artifacts/a//b",
    ]
    for path in bad:
        for method in ("GET", "PUT", "DELETE"):
            status, code, message = error_json(await raw(tracking_uri, method, path, b"x"))
            assert (status, code) == (400, "INVALID_PARAMETER_VALUE"), (method, path, message)
    for query in ("", "?path=", f"?path={eid}/{rid}/artifacts/../x", f"?path={eid}/{rid}"):
        status, code, _ = error_json(await raw(tracking_uri, "GET", PROXY + query))
        assert (status, code) == (400, "INVALID_PARAMETER_VALUE"), query
    # A file upload with no file name.
    status, code, _ = error_json(await raw(tracking_uri, "PUT", proxy_path(run) + "/", b"x"))
    assert (status, code) == (400, "INVALID_PARAMETER_VALUE")
    # The mlflow client refuses '..' itself.
    repo = MlflowArtifactsRepository(run.info.artifact_uri, tracking_uri=tracking_uri)
    with pytest.raises(MlflowException):
        await asyncio.to_thread(repo.log_artifact, __file__, "../escape")
    # A run under another experiment than its own is not there.
    other = await asyncio.to_thread(client.create_experiment, unique("other"))
    for method in ("GET", "PUT", "DELETE"):
        status, code, message = error_json(
            await raw(tracking_uri, method, f"{PROXY}/{other}/{rid}/artifacts/dir/in.txt", b"x")
        )
        assert (status, code) == (404, "RESOURCE_DOES_NOT_EXIST"), method
        assert f"not in experiment {other}" in message
    # A directory is not a file; a missing file is missing.
    status, code, message = error_json(await raw(tracking_uri, "GET", proxy_path(run, "dir")))
    assert (status, code) == (400, "INVALID_PARAMETER_VALUE") and "directory" in message
    status, code, _ = error_json(await raw(tracking_uri, "GET", proxy_path(run, "nope.txt")))
    assert (status, code) == (404, "RESOURCE_DOES_NOT_EXIST")
    # A file cannot be put where a directory is.
    status, code, message = error_json(await raw(tracking_uri, "PUT", proxy_path(run, "dir"), b"x"))
    assert (status, code) == (400, "INVALID_PARAMETER_VALUE") and "directory" in message
    # The files are untouched.
    got = await asyncio.to_thread(mlflow.artifacts.load_text, f"runs:/{rid}/dir/in.txt")
    assert got == "secret"


async def test_deleted_run_reads_but_refuses_writes(client, tracking_uri, tmp_path) -> None:
    run = await asyncio.to_thread(new_run, client)
    rid = run.info.run_id
    await asyncio.to_thread(client.log_text, rid, "kept", "kept.txt")
    await asyncio.to_thread(client.delete_run, rid)
    repo = MlflowArtifactsRepository(run.info.artifact_uri, tracking_uri=tracking_uri)
    status, code, message = await asyncio.to_thread(
        http_error_of, lambda: repo.log_artifact(__file__)
    )
    assert (status, code) == (400, "INVALID_PARAMETER_VALUE")
    assert "deleted" in message
    got = await asyncio.to_thread(mlflow.artifacts.load_text, f"{run.info.artifact_uri}/kept.txt")
    assert got == "kept"


async def test_a_body_cut_short_stores_nothing(client, tracking_uri) -> None:
    run = await asyncio.to_thread(new_run, client)
    host, port = tracking_uri.removeprefix("http://").split(":")

    def send_part() -> None:
        with socket.create_connection((host, int(port))) as s:
            s.sendall(
                f"PUT {proxy_path(run, 'cut.bin')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Length: 5000000\r\n\r\n".encode()
                + b"a" * 300_000
            )

    await asyncio.to_thread(send_part)
    await asyncio.sleep(0.5)
    listed = await asyncio.to_thread(client.list_artifacts, run.info.run_id)
    assert listed == []


# -- permissions -----------------------------------------------------------------------------


def _token(database_url: str, principal: str, *args: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "trackd.server",
            "token",
            "create",
            "--principal",
            principal,
            *args,
            "--database-url",
            database_url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    assert out.startswith("tkd_")
    return out


async def test_permissions_follow_the_artifact_rpcs(database_url: str, tmp_path) -> None:
    """With auth on, each route is checked as the ArtifactService RPC it mirrors: a reader
    reads and lists but may not write; a caller who may not see the experiment gets
    RESOURCE_DOES_NOT_EXIST, as for a missing run."""
    tokens = {
        who: await asyncio.to_thread(_token, database_url, who, *args)
        for who, args in (
            ("root", ("--admin",)),
            ("reader", ("--role", "default=READ")),
            ("editor", ("--role", "default=EDIT")),
        )
    }
    await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "trackd.server",
            "workspace",
            "create",
            "elsewhere",
            "--database-url",
            database_url,
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    tokens["outsider"] = await asyncio.to_thread(
        _token, database_url, "outsider", "--role", "elsewhere=MANAGE"
    )
    running = await app.start(server_config(auth="on", http_listen="127.0.0.1:0"), database_url)
    try:
        uri = f"http://127.0.0.1:{running.http_port}"

        def as_(who: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tokens[who]}"}

        def setup() -> Any:
            admin = requests.Session()
            admin.headers.update(as_("root"))
            eid = admin.post(
                f"{uri}/api/2.0/mlflow/experiments/create", json={"name": unique("perm")}
            ).json()["experiment_id"]
            return admin.post(
                f"{uri}/api/2.0/mlflow/runs/create", json={"experiment_id": eid}
            ).json()["run"]["info"]

        info = await asyncio.to_thread(setup)
        base = f"{PROXY}/{info['experiment_id']}/{info['run_id']}/artifacts"
        listing = f"{PROXY}?path={base.removeprefix(PROXY + '/')}"

        async def status(who: str, method: str, path: str) -> int:
            return (await raw(uri, method, path, b"data", **as_(who)))[0]

        assert await status("editor", "PUT", f"{base}/f.txt") == 200
        assert await status("reader", "GET", f"{base}/f.txt") == 200
        assert await status("reader", "GET", listing) == 200
        assert (
            await status("reader", "GET", f"/api/2.0/mlflow/artifacts/list?run_id={info['run_id']}")
            == 200
        )
        assert await status("reader", "PUT", f"{base}/g.txt") == 403
        assert await status("reader", "DELETE", f"{base}/f.txt") == 403
        for method, path in (
            ("GET", f"{base}/f.txt"),
            ("GET", listing),
            ("PUT", f"{base}/g.txt"),
            ("DELETE", f"{base}/f.txt"),
            ("GET", f"/api/2.0/mlflow/artifacts/list?run_id={info['run_id']}"),
        ):
            status_, code, _ = error_json(await raw(uri, method, path, b"x", **as_("outsider")))
            assert (status_, code) == (404, "RESOURCE_DOES_NOT_EXIST"), (method, path)
        assert (await raw(uri, "GET", f"{base}/f.txt"))[0] == 401
        assert await status("editor", "DELETE", f"{base}/f.txt") == 200
    finally:
        await running.stop(None)


async def test_a_compressed_body_stores_the_inflated_file(client, tracking_uri) -> None:
    run = await asyncio.to_thread(new_run, client)
    data = b"line of text\n" * 50_000
    resp = await asyncio.to_thread(
        requests.put,
        tracking_uri + proxy_path(run, "log.txt"),
        data=gzip.compress(data),
        headers={"Content-Encoding": "gzip"},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    got = await asyncio.to_thread(
        requests.get, tracking_uri + proxy_path(run, "log.txt"), timeout=60
    )
    assert got.content == data
