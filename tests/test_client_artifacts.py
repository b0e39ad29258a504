"""Artifacts through the public Python clients, against a real server: round trips of empty,
1-byte and multi-chunk files byte for byte, directories up and down, text, dicts and
figures, progress reports, logged models' files, errors as typed exceptions, an upload
and a download resumed after the connection is really cut (a TCP proxy between client and
server drops it mid-transfer), the module-level API in a real interpreter, and downloads
that refuse to write outside their destination."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import matplotlib
import pytest
import pytest_asyncio
import yaml

from conftest import server_config
from trackd.client import (
    AsyncClient,
    Client,
    FileInfo,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    TrackdError,
    transfer,
)
from trackd.server import app
from trackd.server.app import Running

matplotlib.use("Agg")

MIB = 1024 * 1024


def _target(server: Running) -> str:
    return f"127.0.0.1:{server.port}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bytes(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def _tree(root: str | Path) -> dict[str, bytes]:
    """Every file under a local directory: '/'-separated relative path -> bytes."""
    base = Path(root)
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}


@pytest_asyncio.fixture(loop_scope="module")
async def client(server: Running) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(_target(server)) as c:
        yield c


async def _run_id(client: AsyncClient) -> str:
    return (await client.create_run("0")).info.run_id


# -- round trips --


@pytest.mark.parametrize("size", [0, 1, 3 * MIB + MIB // 2], ids=["empty", "1-byte", "3.5MiB"])
async def test_a_file_round_trips_byte_identical(
    client: AsyncClient, tmp_path: Path, size: int
) -> None:
    rid = await _run_id(client)
    data = os.urandom(size)
    local = tmp_path / "weights.bin"
    local.write_bytes(data)

    stored = await client.log_artifact(rid, local, "model")
    assert isinstance(stored, FileInfo)
    assert (stored.path, stored.is_dir, stored.file_size) == ("model/weights.bin", False, size)
    assert stored.sha256 == _sha(data)
    assert stored.modification_time is not None and stored.modification_time > 0

    assert await client.get_artifact(rid, "model/weights.bin") == stored
    [directory] = await client.list_artifacts(rid)
    assert (directory.path, directory.is_dir, directory.file_size) == ("model", True, None)
    assert await client.list_artifacts(rid, "model") == [stored]

    # The RPC's own call, a whole file and a range.
    whole = tmp_path / "out" / "whole.bin"
    assert await client.download_artifact(rid, "model/weights.bin", whole) == stored
    assert whole.read_bytes() == data
    if size > 2:
        part = tmp_path / "part.bin"
        await client.download_artifact(rid, "model/weights.bin", part, 1, size - 2)
        assert part.read_bytes() == data[1:-1]

    # MLflow's call: a file keeps its artifact path under the destination.
    got = await client.download_artifacts(rid, "model/weights.bin", tmp_path / "dst")
    assert got == str(tmp_path / "dst" / "model" / "weights.bin")
    assert _bytes(got) == data
    # No temporary file is left beside it.
    assert os.listdir(tmp_path / "dst" / "model") == ["weights.bin"]


async def test_a_directory_goes_up_and_comes_down_whole(
    client: AsyncClient, tmp_path: Path
) -> None:
    rid = await _run_id(client)
    src = tmp_path / "src"
    files = {
        "a.txt": b"alpha\n",
        "sub/b.bin": os.urandom(MIB + 7),
        "sub/deeper/c.csv": b"x,y\n1,2\n3,4\n5,6\n",
        "sub/empty": b"",
    }
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)

    stored = await client.log_artifacts(rid, src, "data")
    assert [f.path for f in stored] == [f"data/{n}" for n in sorted(files)]

    listed = await client.list_artifacts(rid, "data")
    assert [(f.path, f.is_dir) for f in listed] == [("data/a.txt", False), ("data/sub", True)]
    deep = await client.list_artifacts(rid, "data", recursive=True)
    assert {f.path: f.sha256 for f in deep} == {f"data/{n}": _sha(d) for n, d in files.items()}
    csv = next(f for f in deep if f.path.endswith(".csv"))
    assert csv.row_count == 3
    assert [f.path async for f in client.iter_artifacts(rid, "data/sub", page_size=1)] == [
        "data/sub/b.bin",
        "data/sub/deeper",
        "data/sub/empty",
    ]

    got = await client.download_artifacts(rid, "data", tmp_path / "dst")
    assert got == str(tmp_path / "dst" / "data")
    assert _tree(got) == files

    # The root ("" as in MLflow) into a new temporary directory.
    root = Path(await client.download_artifacts(rid, ""))
    assert (root / "data" / "sub" / "b.bin").read_bytes() == files["sub/b.bin"]

    assert await client.delete_artifact(rid, "data/sub") == 3
    assert [f.path for f in await client.list_artifacts(rid, "data", recursive=True)] == [
        "data/a.txt"
    ]


def _text_dict_and_figure(target: str, run_id: str) -> None:
    import matplotlib.pyplot as plt

    with Client(target) as c:
        run = c.start_run(run_id=run_id).start()
        run.log_text("héllo\n", "notes/readme.txt")
        run.log_dict({"lr": 0.1, "layers": [64, 32]}, "config.json")
        run.log_dict({"lr": 0.1, "layers": [64, 32]}, "config.yaml")
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [2, 1, 0])
        run.log_figure(fig, "plots/loss.png")
        run.log_figure(fig, "plots/loss.svg", save_kwargs={"transparent": True})
        plt.close(fig)
        c.log_text(run_id, "from the client", "client.txt")
        run.end()
        # The blocking client walks pages lazily too.
        assert [f.path for f in c.iter_artifacts(run_id, "plots", page_size=1)] == [
            "plots/loss.png",
            "plots/loss.svg",
        ]


async def test_text_dicts_and_figures_are_stored_as_files(
    client: AsyncClient, server: Running, tmp_path: Path
) -> None:
    rid = await _run_id(client)
    await asyncio.to_thread(_text_dict_and_figure, _target(server), rid)
    out = Path(await client.download_artifacts(rid, "", tmp_path))
    assert (out / "notes" / "readme.txt").read_text("utf-8") == "héllo\n"
    assert json.loads((out / "config.json").read_text()) == {"lr": 0.1, "layers": [64, 32]}
    assert yaml.safe_load((out / "config.yaml").read_text()) == {"lr": 0.1, "layers": [64, 32]}
    assert (out / "plots" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (out / "plots" / "loss.svg").read_bytes()
    assert (out / "client.txt").read_text() == "from the client"
    info = await client.get_artifact(rid, "plots/loss.png")
    assert info.content_type == "image/png"
    with pytest.raises(TypeError, match="matplotlib or plotly"):
        await client.log_figure(rid, object(), "x.png")


async def test_progress_reaches_the_total(client: AsyncClient, tmp_path: Path) -> None:
    rid = await _run_id(client)
    data = os.urandom(2 * MIB + 5)
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "one.bin").write_bytes(data)
    (tmp_path / "up" / "two.bin").write_bytes(data[:100])

    seen: list[tuple[int, int]] = []
    await client.log_artifact(
        rid,
        tmp_path / "up" / "one.bin",
        progress_bar=True,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (len(data), len(data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    seen.clear()
    await client.log_artifacts(
        rid, tmp_path / "up", "dir", progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (len(data) + 100, len(data) + 100)

    seen.clear()
    await client.download_artifacts(
        rid, "dir", tmp_path / "down", progress_bar=True, progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (len(data) + 100, len(data) + 100)

    seen.clear()
    await client.download_artifact(
        rid, "one.bin", tmp_path / "one.bin", progress=lambda d, t: seen.append((d, t))
    )
    assert seen[-1] == (len(data), len(data))


async def test_logged_models_have_files_too(client: AsyncClient, tmp_path: Path) -> None:
    rid = await _run_id(client)
    model = await client.create_logged_model("0", "cnn", rid)
    mid = model.model_id
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    (tmp_path / "model" / "weights.bin").write_bytes(os.urandom(MIB + 1))
    (tmp_path / "requirements.txt").write_text("torch\n")

    stored = await client.log_model_artifacts(mid, tmp_path / "model")
    assert [f.path for f in stored] == ["MLmodel", "weights.bin"]
    one = await client.log_model_artifact(mid, tmp_path / "requirements.txt", "env")
    assert one.path == "env/requirements.txt"
    assert [(f.path, f.is_dir) for f in await client.list_logged_model_artifacts(mid)] == [
        ("MLmodel", False),
        ("env", True),
        ("weights.bin", False),
    ]
    assert await client.get_artifact(None, "weights.bin", model_id=mid) == stored[1]
    got = Path(await client.download_model_artifacts(mid, "", tmp_path / "dst"))
    assert (got / "weights.bin").read_bytes() == (tmp_path / "model" / "weights.bin").read_bytes()
    assert (got / "env" / "requirements.txt").read_text() == "torch\n"
    # A run's files and a model's are apart.
    assert await client.list_artifacts(rid) == []
    assert await client.delete_artifact(None, "env", model_id=mid) == 1
    with pytest.raises(ValueError, match="exactly one of run_id and model_id"):
        await client.get_artifact(rid, "MLmodel", model_id=mid)


async def test_failures_raise_typed_errors(
    client: AsyncClient, database_url: str, tmp_path: Path
) -> None:
    rid = await _run_id(client)
    local = tmp_path / "f.txt"
    local.write_bytes(b"12345678901")
    with pytest.raises(NotFoundError):
        await client.log_artifact("0" * 32, local)
    with pytest.raises(InvalidArgumentError) as bad:
        await client.upload_artifact(rid, local, "a/../b.txt")
    assert bad.value.reason == "INVALID_PARAMETER_VALUE"
    with pytest.raises(NotFoundError):
        await client.get_artifact(rid, "nothing.txt")
    with pytest.raises(NotFoundError):
        await client.download_artifacts(rid, "nothing", tmp_path / "dst")
    with pytest.raises(NotFoundError):
        await client.delete_artifact(rid, "nothing")
    with pytest.raises(FileNotFoundError):
        await client.log_artifact(rid, tmp_path / "missing.bin")
    with pytest.raises(NotADirectoryError):
        await client.log_artifacts(rid, local)

    small = await app.start(
        server_config(artifact_root=f"file://{tmp_path / 'store'}", artifact_max_bytes=10),
        database_url,
    )
    try:
        async with AsyncClient(_target(small)) as limited:
            with pytest.raises(ResourceExhaustedError) as big:
                await limited.log_artifact(rid, local)
            assert big.value.reason == "MAX_ARTIFACT_SIZE_EXCEEDED"
            assert "10" in big.value.message
    finally:
        await small.stop(1.0)


def test_a_download_never_writes_outside_its_destination(tmp_path: Path) -> None:
    root = tmp_path / "dst"
    root.mkdir()
    assert transfer.local_target(str(root), "a/b.txt") == str(root / "a" / "b.txt")
    for bad in ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\..\\b", "a\0b", "", "a/."]:
        with pytest.raises(TrackdError) as err:
            transfer.local_target(str(root), bad)
        assert err.value.reason == "UNSAFE_PATH", bad
    # A symbolic link inside the destination does not lead out of it either.
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(TrackdError):
        transfer.local_target(str(root), "link/escaped.txt")


# -- dropped connections --


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of the server that cuts its first connection
    (resetting both sides) once `cut_after` bytes have passed in one direction ("up":
    client to server, "down": server to client); later connections pass untouched."""

    def __init__(self, target_port: int, cut_after: int, direction: str) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.direction = direction
        self.connections = 0
        self.cut = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        first = self.connections == 0
        self.connections += 1
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        passed = 0

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, counted: bool) -> None:
            nonlocal passed
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(64 * 1024):
                    if first and counted:
                        passed += len(data)
                        if passed >= self.cut_after:
                            self.cut = True
                            client_w.transport.abort()
                            server_w.transport.abort()
                            return
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(
                pipe(client_r, server_w, self.direction == "up"),
                pipe(server_r, client_w, self.direction == "down"),
            )
        finally:
            self._tasks.discard(task)


async def test_an_upload_resumes_after_the_connection_is_cut(
    client: AsyncClient, server: Running, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rid = await _run_id(client)
    data = os.urandom(12 * MIB + 3)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    seen: list[int] = []
    caplog.set_level(logging.INFO, logger="trackd.client.transfer")
    async with (
        CuttingProxy(server.port, 6 * MIB, "up") as proxy,
        AsyncClient(f"127.0.0.1:{proxy.port}") as proxied,
    ):
        stored = await proxied.log_artifact(rid, local, progress=lambda d, t: seen.append(d))
    assert proxy.cut and proxy.connections >= 2
    resumed = [r for r in caplog.records if r.getMessage().startswith("resuming upload")]
    assert resumed, "the upload was not resumed"
    held = resumed[0].args[2]  # type: ignore[index]
    assert 0 < held < len(data)
    # The sender went back to the byte the server held, not to the start.
    assert held in seen and seen[-1] == len(data)
    assert stored.sha256 == _sha(data) and stored.file_size == len(data)
    got = await client.download_artifacts(rid, "big.bin", tmp_path / "dst")
    assert _bytes(got) == data


async def test_a_download_resumes_after_the_connection_is_cut(
    client: AsyncClient, server: Running, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rid = await _run_id(client)
    data = os.urandom(8 * MIB + 1)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    await client.log_artifact(rid, local)
    caplog.set_level(logging.INFO, logger="trackd.client.transfer")
    async with (
        CuttingProxy(server.port, 4 * MIB, "down") as proxy,
        AsyncClient(f"127.0.0.1:{proxy.port}") as proxied,
    ):
        got = await proxied.download_artifacts(rid, "big.bin", tmp_path / "dst")
    assert proxy.cut
    assert any(r.getMessage().startswith("download of big.bin broke") for r in caplog.records)
    assert _bytes(got) == data
    assert os.listdir(tmp_path / "dst") == ["big.bin"]


# -- the module-level API --

FLUENT_SCRIPT = textwrap.dedent(
    """
    import sys
    import trackd.client as trackd

    with trackd.start_run(run_name="files") as run:
        trackd.log_artifact(sys.argv[1], "inputs")
        trackd.log_artifacts(sys.argv[2])
        trackd.log_text("hi", "hi.txt")
        trackd.log_dict({"a": 1}, "a.json")
        print(trackd.get_artifact_uri("hi.txt"))
    print(run.run_id)
    """
)


async def test_fluent_functions_log_files_to_the_active_run(
    client: AsyncClient, server: Running, tmp_path: Path
) -> None:
    (tmp_path / "one.txt").write_text("1")
    (tmp_path / "tree" / "x").mkdir(parents=True)
    (tmp_path / "tree" / "x" / "two.txt").write_text("2")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FLUENT_SCRIPT,
        str(tmp_path / "one.txt"),
        str(tmp_path / "tree"),
        env={**os.environ, "TRACKD_TRACKING_URI": _target(server)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    uri, rid = out.decode().split()
    run = await client.get_run(rid)
    assert uri == run.info.artifact_uri.rstrip("/") + "/hi.txt"
    files = await client.list_artifacts(rid, recursive=True)
    assert [f.path for f in files] == ["a.json", "hi.txt", "inputs/one.txt", "x/two.txt"]
