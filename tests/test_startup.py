"""Start-up failures explain themselves: through the real `trackd` entry point (a
subprocess), each is exactly one line on stderr naming the cause and the setting to
change, exit status 2, no traceback (unless --log-level DEBUG). Also: the embedded
PostgreSQL's own output goes to a file, and the log format follows the terminal."""

from __future__ import annotations

import json
import os
import pty
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from trackd.client._version import __version__

LISTEN = ("--listen", "TRACKD_LISTEN")
DATABASE_URL = ("--database-url", "TRACKD_DATABASE_URL")
DATA_DIR = ("--data-dir", "TRACKD_DATA_DIR")


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without any TRACKD_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKD_")}
    env.update(extra)
    return env


def trackd(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs `python -m trackd.server ARGS` to its end."""
    return subprocess.run(
        [sys.executable, "-m", "trackd.server", *args],
        env=_env() if env is None else env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str], *names: str) -> str:
    """Checks exit status 2, a single stderr line, no traceback, and that the line names
    every one of `names`; returns the line."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def _url(base: str, *, user: str | None = None, password: str | None = None, **parts: str) -> str:
    split = urlsplit(base)
    if user is not None or password is not None:
        host = split.hostname or ""
        if split.port:
            host += f":{split.port}"
        auth = user if user is not None else (split.username or "")
        if password is not None:
            auth += ":" + password
        parts["netloc"] = f"{auth}@{host}"
    return urlunsplit(split._replace(**parts))


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listening() -> Iterator[int]:
    """A loopback port this test holds open (listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["abc", "127.0.0.1:99999", ":x", "127.0.0.1:", "::1:80"])
def test_malformed_listen_fails_before_anything_starts(listen: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = trackd("serve", "--listen", listen, "--data-dir", str(data))
    assert repr(listen) in one_line_error(result, *LISTEN)
    assert not data.exists(), "the embedded PostgreSQL was started before --listen was checked"


def test_malformed_listen_from_the_environment(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = trackd("serve", env=_env(TRACKD_LISTEN="abc", TRACKD_DATA_DIR=str(data)))
    one_line_error(result, *LISTEN)
    assert not data.exists()


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("TRACKD_POOL_MAX_SIZE", "many"),
        ("TRACKD_GRACE_PERIOD", "soon"),
        ("TRACKD_ACCESS_LOG", "maybe"),
        ("TRACKD_LOG_FORMAT", "xml"),
        ("TRACKD_LOG_LEVEL", "LOUD"),
        ("TRACKD_WORKERS", "0"),
        ("TRACKD_METRICS_LISTEN", "localhost"),
        ("TRACKD_DATABASE_URL", "mysql://root:hunter2@db/x"),
    ],
)
def test_bad_environment_value_is_one_line(var: str, value: str, tmp_path: Path) -> None:
    result = trackd("serve", env=_env(**{var: value, "TRACKD_DATA_DIR": str(tmp_path / "d")}))
    flag = "--" + var.removeprefix("TRACKD_").lower().replace("_", "-")
    line = one_line_error(result, var, flag)
    assert "hunter2" not in line


def test_bad_flag_value_is_one_line() -> None:
    one_line_error(trackd("serve", "--pool-max-size", "many"), "--pool-max-size")
    one_line_error(trackd("serve", "--no-such-flag"), "--no-such-flag")
    one_line_error(trackd("serve", "--log-format", "xml"), "--log-format", "TRACKD_LOG_FORMAT")


def test_version() -> None:
    result = trackd("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"trackd {__version__}"


# -- the database ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_unreachable_database(command: str) -> None:
    url = f"postgresql://trackd:s3cret-pw@127.0.0.1:{closed_port()}/trackd"
    line = one_line_error(
        trackd(command, "--database-url", url, "--listen", f"127.0.0.1:{closed_port()}"),
        *DATABASE_URL,
        "connection refused",
    )
    assert "s3cret-pw" not in line and "trackd:***@" in line


def test_unknown_database_host() -> None:
    url = "postgresql://trackd:s3cret-pw@no-such-host.invalid:5432/trackd"
    line = one_line_error(
        trackd("serve", "--listen", "127.0.0.1:0", env=_env(TRACKD_DATABASE_URL=url)),
        *DATABASE_URL,
        "unknown host",
    )
    assert "s3cret-pw" not in line


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_database_does_not_exist(command: str, pg_url: str) -> None:
    name = f"trackd_missing_{uuid.uuid4().hex[:8]}"
    url = _url(pg_url, path="/" + name)
    line = one_line_error(
        trackd(command, "--database-url", url, "--listen", "127.0.0.1:0"), *DATABASE_URL, name
    )
    assert "does not exist" in line


def test_authentication_failed(pg_url: str) -> None:
    role = f"trackd_nobody_{uuid.uuid4().hex[:8]}"
    url = _url(pg_url, user=role, password="s3cret-pw")
    line = one_line_error(
        trackd("serve", "--database-url", url, "--listen", "127.0.0.1:0"),
        *DATABASE_URL,
        "authentication failed",
        role,
    )
    assert "s3cret-pw" not in line


def test_debug_level_adds_the_traceback() -> None:
    url = f"postgresql://trackd@127.0.0.1:{closed_port()}/trackd"
    result = trackd("serve", "--database-url", url, "--log-level", "DEBUG")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("trackd: error: cannot reach the database"), last


# -- the listening address -------------------------------------------------------------------


def test_listen_address_in_use(listening: int, database_url: str, tmp_path: Path) -> None:
    address = f"127.0.0.1:{listening}"
    result = trackd("serve", "--listen", address, "--database-url", database_url)
    assert "in use" in one_line_error(result, *LISTEN, address)
    # Checked before the embedded PostgreSQL starts too.
    data = tmp_path / "data"
    result = trackd("serve", "--listen", address, "--data-dir", str(data))
    one_line_error(result, *LISTEN, "in use")
    assert not data.exists()


def test_metrics_address_in_use(listening: int, database_url: str) -> None:
    result = trackd(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        f"127.0.0.1:{listening}",
        "--database-url",
        database_url,
    )
    one_line_error(result, "--metrics-listen", "TRACKD_METRICS_LISTEN", "in use")


def test_http_address_in_use(listening: int, database_url: str) -> None:
    result = trackd(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        f"127.0.0.1:{listening}",
        "--database-url",
        database_url,
    )
    one_line_error(result, "--http-listen", "TRACKD_HTTP_LISTEN", "in use")


def test_malformed_http_listen_fails_before_anything_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = trackd("serve", "--http-listen", "5000", "--data-dir", str(data))
    one_line_error(result, "--http-listen", "TRACKD_HTTP_LISTEN", "HOST:PORT")
    assert not data.exists()


def test_listen_address_not_on_this_machine(database_url: str) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never an address of this machine.
    result = trackd("serve", "--listen", "192.0.2.1:50051", "--database-url", database_url)
    assert "not an address of this machine" in one_line_error(result, *LISTEN)


# -- the embedded PostgreSQL -----------------------------------------------------------------


def test_embedded_postgres_that_fails_to_start(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("7\n")  # a data directory PostgreSQL cannot use
    result = trackd("serve", "--data-dir", str(tmp_path), "--listen", "127.0.0.1:0")
    line = one_line_error(result, *DATA_DIR, *DATABASE_URL, "failed to start")
    assert "postgres.log" in line
    assert (tmp_path / "postgres.log").stat().st_size > 0


def test_embedded_postgres_missing(tmp_path: Path) -> None:
    """The server extra without pgserver: `trackd serve` with no database configured."""
    hide = (
        "import sys; sys.modules['pgserver'] = None; "  # `import pgserver` now fails
        "from trackd.server.__main__ import main; sys.exit(main())"
    )
    data = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-c", hide, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    one_line_error(result, *DATABASE_URL, "trackd[server]", "not installed")


def test_embedded_postgres_data_dir_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = trackd("serve", "--data-dir", str(blocker / "data"), "--listen", "127.0.0.1:0")
    one_line_error(result, *DATA_DIR, *DATABASE_URL)


def test_embedded_postgres_output_goes_to_its_log_file(tmp_path: Path) -> None:
    """A successful start with the embedded PostgreSQL: trackd's stderr holds only
    trackd's own log records (JSON, stderr being a pipe); initdb's and pg_ctl's output is in
    data_dir/postgres.log."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "trackd.server", "serve", "--listen", "127.0.0.1:0"],
        env=_env(TRACKD_DATA_DIR=str(tmp_path)),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "trackd exited before listening:\n" + "".join(lines)
            lines.append(line)
            if "trackd listening on" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
        lines += rest.splitlines(keepends=True)
        assert proc.returncode == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for line in lines:
        record = json.loads(line)
        assert record["logger"].startswith("trackd."), line
    log = (tmp_path / "postgres.log").read_text()
    assert "initdb" in log and "pg_ctl" in log


# -- log format ------------------------------------------------------------------------------

_LOG_ONE = (
    "import logging; from trackd.server import logs; logs.configure('INFO', 'auto'); "
    "logging.getLogger('trackd.x').info('hello'); logs.flush()"
)


def test_log_format_auto_is_json_on_a_pipe() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _LOG_ONE], env=_env(), capture_output=True, text=True, check=True
    )
    assert json.loads(result.stderr)["msg"] == "hello"


def test_log_format_auto_is_text_on_a_terminal() -> None:
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _LOG_ONE], env=_env(), stderr=follower, check=True
        )
        assert proc.returncode == 0
        os.close(follower)
        follower = -1
        out = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    text = out.decode()
    assert " INFO trackd.x [-] hello" in text, text
    assert not text.lstrip().startswith("{")


# -- masking ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:pw@h:5432/d", "postgresql://u:***@h:5432/d"),
        ("postgresql://u:p%40ss@h/d?sslmode=require", "postgresql://u:***@h/d?sslmode=require"),
        ("postgresql:///d?host=/tmp&password=pw", "postgresql:///d?host=/tmp&password=***"),
        ("postgresql://u@[::1]:5432/d", "postgresql://u@[::1]:5432/d"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    from trackd.server.startup import mask_url

    assert mask_url(url) == masked
