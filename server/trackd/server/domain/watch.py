"""Watching runs as they change (issue 13): updates pushed as they commit, from any
server sharing the database. Being built."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from trackd.server.store.pool import Database


class Watches:
    """The watch calls of one server."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(self) -> None:
        """Starts listening for commits."""

    async def stop(self) -> None:
        """Stops listening and ends the watch calls."""

    async def watch(self, request: Any) -> AsyncIterator[Any]:
        """The WatchRunResponse messages of one call."""
        raise NotImplementedError
        yield  # pragma: no cover
