"""An S3-compatible server for the tests: moto's standalone server (a real HTTP S3 API) in
its own process on 127.0.0.1 and a free port, with one empty bucket.

    from s3server import s3_endpoint, s3_env, s3_environment

    @pytest.fixture(scope="module")
    def s3() -> Iterator[tuple[str, str]]:
        with s3_endpoint() as endpoint:
            yield endpoint

    def test_...(s3):
        endpoint_url, bucket = s3
        uri = f"s3://{bucket}/artifacts"   # --artifact-root / TRACKD_ARTIFACT_ROOT
        env = s3_env(endpoint_url)         # for a trackd server process
        with s3_environment(endpoint_url): # for a trackd server in the test's process
            ...

Where moto cannot be imported, s3_endpoint skips the test with the reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

# Credentials the server accepts (moto checks no signature) and the region it reports.
ACCESS_KEY_ID = "test"
SECRET_ACCESS_KEY = "test"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


def create_bucket(endpoint_url: str, bucket: str) -> None:
    """Creates `bucket` with a plain HTTP PUT /<bucket> (moto needs no signature)."""
    req = urllib.request.Request(f"{endpoint_url}/{bucket}", method="PUT", data=b"")
    with urllib.request.urlopen(req, timeout=10) as resp:
        if resp.status != 200:
            raise RuntimeError(f"creating bucket {bucket}: HTTP {resp.status}")


@contextlib.contextmanager
def s3_endpoint(startup_timeout: float = 30.0) -> Iterator[tuple[str, str]]:
    """Starts moto's server on 127.0.0.1 and a free port, waits until it answers HTTP,
    creates a bucket, and yields (endpoint_url, bucket); stops the server by its pid
    (SIGTERM, then SIGKILL after 10 s). Calls pytest.skip if moto is not installed;
    raises RuntimeError if the server does not answer within `startup_timeout` seconds
    (its log is in the message)."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("moto.server") is None:
        pytest.skip("moto[server] is not installed: no S3-compatible server to test against")
    with tempfile.NamedTemporaryFile(prefix="trackd-moto-", suffix=".log") as log:
        proc: subprocess.Popen[bytes] | None = None
        try:
            for _attempt in range(3):  # a free port can be taken before moto binds it
                port = _free_port()
                endpoint_url = f"http://127.0.0.1:{port}"
                proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                deadline = time.monotonic() + startup_timeout
                while proc.poll() is None and time.monotonic() < deadline:
                    if _answers(endpoint_url + "/"):
                        break
                    time.sleep(0.1)
                if proc.poll() is None and _answers(endpoint_url + "/"):
                    break
                _stop(proc)
                proc = None
            if proc is None:
                with open(log.name, "rb") as f:
                    output = f.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"moto server did not answer on 127.0.0.1:\n{output}")
            bucket = f"trackd-{uuid.uuid4().hex[:12]}"
            create_bucket(endpoint_url, bucket)
            yield endpoint_url, bucket
        finally:
            if proc is not None:
                _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def s3_env(endpoint_url: str) -> dict[str, str]:
    """The environment variables a trackd server (or S3Store) needs to use the endpoint:
    dummy credentials, the region and the endpoint itself."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint_url,
    }


@contextlib.contextmanager
def s3_environment(endpoint_url: str) -> Iterator[None]:
    """Sets s3_env(endpoint_url) in this process's environment (for an in-process trackd),
    restoring what was there before on exit."""
    saved = {k: os.environ.get(k) for k in s3_env(endpoint_url)}
    os.environ.update(s3_env(endpoint_url))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
