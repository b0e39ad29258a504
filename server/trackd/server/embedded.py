"""An embedded PostgreSQL (the pgserver package) for running trackd with no database
configured. Its data persists under the data folder between runs; what pgserver and
PostgreSQL print goes to files there (`postgres.log`, `pgdata/log`), not to trackd's log."""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path
from typing import Any

from trackd.server.startup import DATA_DIR, DATABASE_URL, StartupError

log = logging.getLogger(__name__)

LOG_NAME = "postgres.log"


class EmbeddedPostgres:
    """Starts (or joins) a PostgreSQL serving `data_dir/pgdata` over a Unix socket."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.path = self.data_dir / "pgdata"
        self.log_path = self.data_dir / LOG_NAME
        self._server: Any = None

    def start(self) -> str:
        """Starts the server if needed; returns a connection URL. StartupError if it
        cannot, naming the setting to change."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            pg_log = self._capture_pgserver_log()
        except OSError as exc:
            raise StartupError(
                f"cannot create the embedded PostgreSQL's data directory {self.path}: "
                f"{exc.strerror or exc}; set {DATA_DIR} to a writable folder, or {DATABASE_URL}"
            ) from exc
        server_log = self.path / "log"  # PostgreSQL's own (pg_ctl -l)
        seen = server_log.stat().st_size if server_log.exists() else 0
        # pgserver (platformdirs) warns on import when XDG_RUNTIME_DIR is unset: its file.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                try:
                    import pgserver  # type: ignore[attr-defined,unused-ignore]
                except ImportError as exc:
                    raise StartupError(
                        "no database is configured and the embedded PostgreSQL (pgserver) is "
                        f"not installed: set {DATABASE_URL}, or pip install 'trackd[server]'"
                    ) from exc
                self._server = pgserver.get_server(  # type: ignore[attr-defined,unused-ignore]
                    self.path, cleanup_mode="stop"
                )
                url: str = self._server.get_uri()
            except StartupError:
                raise
            except Exception as exc:  # whatever pgserver raises, it did not start
                raise StartupError(
                    f"the embedded PostgreSQL in {self.path} failed to start "
                    f"({_cause(exc, server_log, seen)}; more in {self.log_path}): fix or change "
                    f"{DATA_DIR}, or use another PostgreSQL with {DATABASE_URL}"
                ) from exc
            finally:
                for warning in caught:
                    pg_log.warning("%s", warning.message)
        log.info("embedded PostgreSQL running in %s (its log: %s)", self.path, self.log_path)
        return url

    def _capture_pgserver_log(self) -> logging.Logger:
        """Sends pgserver's log (initdb's and pg_ctl's output) to data_dir/postgres.log
        instead of trackd's log stream."""
        handler = logging.FileHandler(self.log_path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        pg_log = logging.getLogger("pgserver")
        for old in pg_log.handlers:
            old.close()
        pg_log.handlers[:] = [handler]
        pg_log.setLevel(logging.INFO)
        pg_log.propagate = False
        return pg_log

    def stop(self) -> None:
        """Stops the server unless another process still uses it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def _cause(exc: BaseException, server_log: Path, seen: int) -> str:
    """Why PostgreSQL did not start, in a line: the last FATAL/PANIC line (else the last
    line) PostgreSQL wrote to its log during this attempt, else the exception."""
    try:
        with server_log.open("rb") as f:
            f.seek(seen)
            lines = [x.strip() for x in f.read().decode(errors="replace").splitlines()]
    except OSError:
        lines = []
    lines = [x for x in lines if x]
    fatal = [x for x in lines if "FATAL:" in x or "PANIC:" in x]
    if fatal or lines:
        return "PostgreSQL: " + (fatal or lines)[-1]
    if isinstance(exc, subprocess.CalledProcessError):
        command = exc.cmd[0] if isinstance(exc.cmd, list | tuple) else exc.cmd
        return f"{Path(str(command)).name} exited with status {exc.returncode}"
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
