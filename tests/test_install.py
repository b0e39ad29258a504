"""The package a user installs works. Builds the sdist and the wheel (`python -m build`:
the wheel is built from the sdist, so the sdist is proved complete), checks both with
`twine check --strict`, then installs the wheel, non-editable, into fresh virtualenvs:

- `trackd` (the light client): trackd.client and trackd.v1 import, no server dependency
  is installed, and `trackd serve` refuses to start with one line naming trackd[server];
- `trackd[server]`: every module of server/ and client/ in the source tree (walked, so a
  new subpackage cannot be forgotten) imports from the venv, never from this repository,
  every data file is installed, and the installed `trackd serve` runs the README's client
  tour against a fresh database.

Slow (a minute or two: two builds, two venvs, pip installs from pip's cache)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TOUR_HEADING = "## A tour with the Python client"
TOUR_ADDRESS = "127.0.0.1:50051"

# What only `trackd[server]` brings: distributions and the modules they provide.
SERVER_DISTRIBUTIONS = (
    "asyncpg",
    "pgserver",
    "grpcio-health-checking",
    "grpcio-reflection",
    "prometheus-client",
    "uvloop",
)
SERVER_MODULES = ("asyncpg", "pgserver", "grpc_health", "grpc_reflection", "prometheus_client")


def _clean_env() -> dict[str, str]:
    """The environment for the installed package: no PYTHONPATH (nothing of this repository
    on the path), no TRACKD_* settings, no virtualenv of ours."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("TRACKD_")}


def _run(
    args: list[str], *, cwd: Path, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args,
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder outside the repository, the cwd of everything installed."""
    return tmp_path_factory.mktemp("install")


@pytest.fixture(scope="module")
def dists(work: Path) -> tuple[Path, Path]:
    """(wheel, sdist) built from the working tree; the wheel is built from the sdist."""
    out = work / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=work)
    (wheel,) = out.glob("trackd-*.whl")
    (sdist,) = out.glob("trackd-*.tar.gz")
    return wheel, sdist


def _venv(path: Path, requirement: str, cwd: Path) -> Path:
    """A fresh virtualenv at `path` with `requirement` pip-installed; returns its bin/."""
    _run([sys.executable, "-m", "venv", str(path)], cwd=cwd)
    python = path / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", requirement], cwd=cwd)
    return path / "bin"


@pytest.fixture(scope="module")
def light(dists: tuple[Path, Path], work: Path) -> Path:
    """bin/ of a venv holding `pip install trackd` (the wheel)."""
    return _venv(work / "venv-light", str(dists[0]), work)


@pytest.fixture(scope="module")
def full(dists: tuple[Path, Path], work: Path) -> Path:
    """bin/ of a venv holding `pip install 'trackd[server]'` (the same wheel)."""
    return _venv(work / "venv-server", f"{dists[0]}[server]", work)


def source_version() -> str:
    text = (ROOT / "client/trackd/client/_version.py").read_text()
    match = re.search(r'__version__ = "([^"]+)"', text)
    assert match
    return match.group(1)


def source_modules() -> list[str]:
    """Every module of the source tree's trackd packages, by dotted name."""
    names = []
    for top in (ROOT / "server", ROOT / "client"):
        for path in sorted((top / "trackd").rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return names


def source_data_files() -> list[str]:
    """Every file of the source tree's trackd packages that is not Python source
    (migrations, py.typed, .pyi stubs), relative to the site-packages root."""
    files = []
    for top in (ROOT / "server", ROOT / "client"):
        for path in sorted((top / "trackd").rglob("*")):
            if path.is_file() and path.suffix not in (".py", ".pyc"):
                if "__pycache__" not in path.parts:
                    files.append(str(path.relative_to(top)))
    return files


# -- the distributions -----------------------------------------------------------------------


def test_sdist_and_wheel_pass_twine_check(dists: tuple[Path, Path], work: Path) -> None:
    wheel, sdist = dists
    _run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)], cwd=work)
    assert wheel.name == f"trackd-{source_version()}-py3-none-any.whl"


# -- pip install trackd ----------------------------------------------------------------------

LIGHT_CHECK = """
import importlib.metadata, importlib.util, json, sys
import trackd.client, trackd.v1
from trackd.v1 import run_service_pb2_grpc
def installed(name):
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False
print(json.dumps({
    "client": trackd.client.__file__,
    "v1": trackd.v1.__file__,
    "version": trackd.client.__version__,
    "prefix": sys.prefix,
    "distributions": [d for d in sys.argv[1].split(",") if installed(d)],
    "modules": [m for m in sys.argv[2].split(",") if importlib.util.find_spec(m)],
}))
"""


def test_light_install_is_the_client_alone(light: Path, work: Path) -> None:
    out = _run(
        [
            str(light / "python"),
            "-c",
            LIGHT_CHECK,
            ",".join(SERVER_DISTRIBUTIONS),
            ",".join(SERVER_MODULES),
        ],
        cwd=work,
    ).stdout
    got = json.loads(out)
    venv = str(light.parent)
    assert got["prefix"] == venv
    assert got["client"].startswith(venv) and got["v1"].startswith(venv), got
    assert got["version"] == source_version()
    assert got["distributions"] == [], "server dependencies in the light install"
    assert got["modules"] == [], "server modules importable in the light install"


def test_light_install_cannot_serve(light: Path, work: Path) -> None:
    result = _run(
        [
            str(light / "trackd"),
            "serve",
            "--database-url",
            "postgresql://trackd@127.0.0.1:9/trackd",
            "--listen",
            "127.0.0.1:0",
        ],
        cwd=work,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "trackd[server]" in result.stderr and "Traceback" not in result.stderr


# -- pip install 'trackd[server]' ------------------------------------------------------------

FULL_CHECK = """
import importlib, json, sys, sysconfig
from pathlib import Path
site = Path(sysconfig.get_paths()["purelib"]).resolve()
files, failed = {}, {}
for name in sys.argv[1].split(","):
    try:
        module = importlib.import_module(name)
        files[name] = str(Path(module.__file__).resolve())
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
import trackd.client, trackd.server
print(json.dumps({
    "site": str(site),
    "files": files,
    "failed": failed,
    "missing_data": [f for f in sys.argv[2].split(",") if not (site / f).is_file()],
    "versions": [trackd.client.__version__, trackd.server.__version__],
}))
"""


def test_server_install_holds_every_module_and_file(full: Path, work: Path) -> None:
    modules = source_modules()
    assert "trackd.server.domain.search.parser" in modules  # the walk sees subpackages
    out = _run(
        [str(full / "python"), "-c", FULL_CHECK, ",".join(modules), ",".join(source_data_files())],
        cwd=work,
    ).stdout
    got = json.loads(out)
    assert got["failed"] == {}, got["failed"]
    site = got["site"]
    assert site.startswith(str(full.parent.resolve()))
    outside = {n: f for n, f in got["files"].items() if not f.startswith(site + os.sep)}
    assert outside == {}, "modules imported from outside the venv"
    assert got["missing_data"] == []
    # The web view's pages are package data too.
    assert "trackd/server/web/index.html" in source_data_files()
    assert got["versions"] == [source_version(), source_version()]
    version = _run([str(full / "trackd"), "--version"], cwd=work).stdout.strip()
    assert version == f"trackd {source_version()}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(address: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Polls the health service until SERVING (60 s at most), or fails with the log."""
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"trackd exited {proc.returncode}:\n{log.read_text()}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    pytest.fail(f"trackd did not serve within 60 s:\n{log.read_text()}")


@pytest.fixture
def installed_server(full: Path, work: Path, database_url: str) -> Iterator[str]:
    """The installed `trackd serve` on a fresh database and a free port; its address."""
    address = f"127.0.0.1:{_free_port()}"
    log = work / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                str(full / "trackd"),
                "serve",
                "--database-url",
                database_url,
                "--listen",
                address,
                "--log-format",
                "text",
            ],
            cwd=work,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )
    try:
        _wait_serving(address, proc, log)
        yield address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, f"trackd exited {proc.returncode}:\n{log.read_text()}"


def readme_tour() -> str:
    """The first ```python block after the tour's heading in README.md."""
    text = README.read_text()
    assert TOUR_HEADING in text, f"README.md has no {TOUR_HEADING!r} section"
    after = text.split(TOUR_HEADING, 1)[1]
    match = re.search(r"^```python\n(.*?)^```", after, re.S | re.M)
    assert match, "no ```python block in the README's tour"
    return match.group(1)


def test_installed_server_runs_the_readme_tour(
    full: Path, work: Path, installed_server: str
) -> None:
    tour = readme_tour()
    assert TOUR_ADDRESS in tour, f"the tour does not connect to {TOUR_ADDRESS}"
    script = work / "tour.py"
    script.write_text(tour.replace(TOUR_ADDRESS, installed_server))
    result = _run([str(full / "python"), str(script)], cwd=work, timeout=300, check=False)
    assert result.returncode == 0, (
        f"the README tour failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )


# The web view's files, as `pip install 'trackd[server]'` installed them.
WEB = ROOT / "server" / "trackd" / "server" / "web"


def test_installed_server_serves_the_web_view(full: Path, work: Path, database_url: str) -> None:
    """`trackd serve --http-listen` from the installed package serves `/` and every file
    under web/ from the venv's copy, byte for byte, with the page's security headers."""
    address = f"127.0.0.1:{_free_port()}"
    http_port = _free_port()
    log = work / "server-web.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                str(full / "trackd"),
                "serve",
                "--database-url",
                database_url,
                "--listen",
                address,
                "--http-listen",
                f"127.0.0.1:{http_port}",
                "--log-format",
                "text",
            ],
            cwd=work,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )
    try:
        _wait_serving(address, proc, log)
        base = f"http://127.0.0.1:{http_port}"
        with urllib.request.urlopen(base + "/", timeout=10) as resp:
            assert resp.status == 200
            assert resp.read() == (WEB / "index.html").read_bytes()
            assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
        files = [p for p in sorted(WEB.rglob("*")) if p.is_file()]
        assert files
        for path in files:
            rel = path.relative_to(WEB).as_posix()
            with urllib.request.urlopen(f"{base}/static/{rel}", timeout=10) as resp:
                assert resp.status == 200, rel
                assert resp.read() == path.read_bytes(), rel
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, f"trackd exited {proc.returncode}:\n{log.read_text()}"
