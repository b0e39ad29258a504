"""An embedded PostgreSQL (the pgserver package) for running trackd with no database
configured. Its data persists under the data folder between runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """Starts (or joins) a PostgreSQL serving `data_dir/pgdata` over a Unix socket."""

    def __init__(self, data_dir: str) -> None:
        self.path = Path(data_dir).resolve() / "pgdata"
        self._server: Any = None

    def start(self) -> str:
        """Starts the server if needed; returns a connection URL."""
        try:
            import pgserver  # type: ignore[attr-defined,unused-ignore]
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise SystemExit(
                "no TRACKD_DATABASE_URL is set and the embedded PostgreSQL is missing: "
                "pip install 'trackd[server]'"
            ) from exc
        self.path.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded PostgreSQL in %s", self.path)
        self._server = pgserver.get_server(  # type: ignore[attr-defined,unused-ignore]
            self.path, cleanup_mode="stop"
        )
        url: str = self._server.get_uri()
        return url

    def stop(self) -> None:
        """Stops the server unless another process still uses it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
