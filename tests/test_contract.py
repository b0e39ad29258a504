"""The error model and the compatibility rules are part of the contract.

- google/rpc protos are vendored with their license, identical to the Python runtime's;
  the generated trackd.v1 modules import google.rpc from googleapis-common-protos.
- trackd.v1.ErrorReason lists exactly the reasons the server sends; every RPC's comment
  names its errors as `CODE (REASON)`, each pair as the server maps it.
- ChunkRejection carries a numeric google.rpc.Code; the Python logger reads it.
- Every error fits gRPC's default metadata limit, whatever the text it quotes.
- `make breaking` fails on a wire-incompatible change and skips, saying why, without a
  previous commit.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import pkgutil
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import code_pb2

import trackd.server.errors
import trackd.v1
from helpers import error_info, new_run, violations
from trackd.client.logger import _code_name
from trackd.server.service import rpc
from trackd.v1 import errors_pb2, metric_pb2
from trackd.v1 import run_service_pb2 as rpb

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
VENDORED = ["status.proto", "error_details.proto", "code.proto"]
PREFIX = "ERROR_REASON_"


# -- vendored google.rpc ---------------------------------------------------------------------


def test_google_rpc_protos_are_vendored_with_license_and_source() -> None:
    here = PROTOS / "google" / "rpc"
    assert "Apache License" in (here / "LICENSE").read_text()
    readme = (here / "README.md").read_text()
    assert "googleapis-common-protos" in readme
    installed = pathlib.Path(code_pb2.__file__).parent
    for name in VENDORED:
        # The same text as the Python runtime's google.rpc, so that a client generated
        # from protos/ and the server agree on every detail message.
        assert (here / name).read_text() == (installed / name).read_text(), name


def test_generated_modules_import_google_rpc_from_the_runtime_package() -> None:
    generated = ROOT / "client" / "trackd" / "v1"
    assert not (ROOT / "client" / "google").exists()
    assert not list(generated.glob("*code_pb2*")) and not list(generated.glob("status_pb2*"))
    text = (generated / "run_service_pb2.py").read_text()
    assert "from google.rpc import code_pb2" in text
    field = rpb.ChunkRejection.DESCRIPTOR.fields_by_name["status_code"]
    assert field.enum_type is code_pb2.DESCRIPTOR.enum_types_by_name["Code"]


# -- the reasons -----------------------------------------------------------------------------


def _error_classes() -> list[type[trackd.server.errors.TrackdError]]:
    found = []
    todo = [trackd.server.errors.TrackdError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def reason_codes() -> dict[str, grpc.StatusCode]:
    """Each reason the server sends, with the status code it goes with."""
    out: dict[str, grpc.StatusCode] = {}
    for cls in _error_classes():
        err = cls("x")
        assert out.get(err.reason, err.code) == err.code, err.reason
        out[err.reason] = err.code
    return out


def test_error_reason_enum_lists_exactly_the_reasons_the_server_sends() -> None:
    names = {v.name for v in errors_pb2.ErrorReason.DESCRIPTOR.values if v.number}
    assert all(n.startswith(PREFIX) for n in names)
    assert {n.removeprefix(PREFIX) for n in names} == set(reason_codes())


def rpc_comments() -> Iterator[tuple[str, str]]:
    """(rpc name, its leading comment) of every rpc in the service files."""
    for path in sorted((PROTOS / "trackd" / "v1").glob("*_service.proto")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"\s*rpc (\w+)\(", line)
            if not m:
                continue
            j = i
            while j > 0 and lines[j - 1].strip().startswith("//"):
                j -= 1
            yield m.group(1), " ".join(x.strip().lstrip("/ ") for x in lines[j:i])


def test_every_rpc_names_its_errors_as_the_server_maps_them() -> None:
    codes = reason_codes()
    seen = []
    for name, comment in rpc_comments():
        seen.append(name)
        assert "Errors:" in comment, f"{name}: no 'Errors:' in its comment"
        pairs = re.findall(r"\b([A-Z_]{2,}) \(([A-Z_]+)\)", comment.split("Errors:", 1)[1])
        assert pairs, f"{name}: its errors name no `CODE (REASON)`"
        for code, reason in pairs:
            assert reason in codes, f"{name}: {reason} is not an ErrorReason"
            assert codes[reason] == grpc.StatusCode[code], f"{name}: {code} ({reason})"
    # Every service of every generated module of the contract, so a new one is covered.
    services = [
        importlib.import_module(f"trackd.v1.{m.name}")
        for m in pkgutil.iter_modules(trackd.v1.__path__)
        if m.name.endswith("_pb2")
    ]
    methods = [
        m.name for f in services for s in f.DESCRIPTOR.services_by_name.values() for m in s.methods
    ]
    assert sorted(seen) == sorted(methods)


# -- ChunkRejection.status_code ----------------------------------------------------------------


async def test_chunk_rejections_carry_a_numeric_code_and_the_deprecated_name(runs) -> None:  # type: ignore[no-untyped-def]
    run_id = (await new_run(runs)).info.run_id
    sid = uuid.uuid4().hex
    chunks = [rpb.StreamMetricsRequest(stream_id=sid, sequence=0)]
    bad_keys = rpb.StreamMetricsRequest(stream_id=sid, sequence=1)
    for i in range(30):  # 30 violations: a long message, cut to the documented length
        bad_keys.series.add(run_id=run_id, key=f"bad*{i:03d}" + "k" * 240, steps=[1], values=[0.0])
    chunks.append(bad_keys)
    unknown = rpb.StreamMetricsRequest(stream_id=sid, sequence=2)
    unknown.series.add(run_id="a" * 32, key="k", steps=[1], values=[0.0])
    chunks.append(unknown)
    acks = [a async for a in runs.StreamMetrics(iter(chunks))]
    rejected = {r.sequence: r for a in acks for r in a.rejections}
    assert rejected[1].status_code == code_pb2.INVALID_ARGUMENT
    assert rejected[1].code == "INVALID_ARGUMENT"
    assert "series[0].key" in rejected[1].message and len(rejected[1].message) <= 2000
    assert rejected[2].status_code == code_pb2.NOT_FOUND and rejected[2].code == "NOT_FOUND"
    assert rejected[2].reason == "RESOURCE_DOES_NOT_EXIST"


def test_the_python_logger_reads_the_numeric_code() -> None:
    only_number = rpb.ChunkRejection(status_code=code_pb2.FAILED_PRECONDITION)
    assert _code_name(only_number) == "FAILED_PRECONDITION"
    # A server older than status_code sends only the name.
    assert _code_name(rpb.ChunkRejection(code="NOT_FOUND")) == "NOT_FOUND"


# -- errors fit the default metadata limit ---------------------------------------------------


async def test_an_error_quoting_long_values_reaches_a_default_client_whole(runs) -> None:  # type: ignore[no-untyped-def]
    """A param logged again with another value is FAILED_PRECONDITION quoting both values;
    at 6000 four-byte characters each, the status once exceeded the 16 KiB of metadata a
    client accepts, and the client saw "Stream removed" instead of the error."""
    run_id = (await new_run(runs)).info.run_id
    await runs.LogParam(rpb.LogParamRequest(run_id=run_id, key="p", value="\U0001f600" * 6000))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await runs.LogParam(rpb.LogParamRequest(run_id=run_id, key="p", value="\U0001f601" * 6000))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.value.details()
    assert error_info(exc.value).reason == "INVALID_STATE"
    assert len((exc.value.details() or "").encode()) <= rpc.STATUS_MESSAGE_BYTES_MAX


async def test_an_error_with_a_thousand_violations_reaches_a_default_client(runs) -> None:  # type: ignore[no-untyped-def]
    run_id = (await new_run(runs)).info.run_id
    metrics = [metric_pb2.Metric(key=f"bad*{i:04d}" + "k" * 240, value=1.0) for i in range(1000)]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await runs.LogBatch(rpb.LogBatchRequest(run_id=run_id, metrics=metrics))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
    # The message lists what fits and counts the rest.
    assert re.search(r"; and 9\d\d more$", exc.value.details() or "")
    found = violations(exc.value)
    assert "metrics[0].key" in found and 1 <= len(found) < 1000


# -- buf breaking ----------------------------------------------------------------------------


def _git(repo: pathlib.Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout


def _breaking(repo: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(repo),
            "breaking",
            f"BIN={ROOT / '.venv' / 'bin'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(
    shutil.which("git") is None or shutil.which("make") is None, reason="needs git and make"
)
def test_make_breaking_guards_the_contract(tmp_path: pathlib.Path) -> None:
    if not (ROOT / ".venv" / "bin" / "buf").exists():
        pytest.skip("buf is not installed in .venv (make install)")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("Makefile", "buf.yaml"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(PROTOS, repo / "protos")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "contract")
    # One commit: nothing to compare with, and it says so.
    first = _breaking(repo)
    assert first.returncode == 0 and "skipped" in first.stdout, first.stdout + first.stderr

    # A compatible change (a new field) passes.
    proto = repo / "protos" / "trackd" / "v1" / "run_service.proto"
    text = proto.read_text()
    added = text.replace(
        "  string metric_key = 3;\n}", "  string metric_key = 3;\n  // New.\n  int64 extra = 4;\n}"
    )
    assert added != text
    proto.write_text(added)
    _git(repo, "commit", "-q", "-am", "add a field")
    ok = _breaking(repo)
    assert ok.returncode == 0 and "skipped" not in ok.stdout, ok.stdout + ok.stderr

    # A renamed field fails.
    proto.write_text(added.replace("string metric_key = 3;", "string series_key = 3;"))
    _git(repo, "commit", "-q", "-am", "rename a field")
    bad = _breaking(repo)
    assert bad.returncode != 0
    assert 'changed name from "metric_key" to "series_key"' in bad.stdout + bad.stderr

    # A shallow clone has no previous commit: skipped, saying why.
    shallow = tmp_path / "shallow"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow)],
        check=True,
        capture_output=True,
    )
    skipped = _breaking(shallow)
    assert skipped.returncode == 0 and "shallow" in skipped.stdout, skipped.stdout
