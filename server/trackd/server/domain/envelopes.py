"""Plot-ready envelopes of metric series (issue 13): exact buckets read from the
pre-aggregated tiers. Being built."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from trackd.server.store.pool import Database


class Envelopes:
    """Envelopes of series over an x range."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def stream(self, request: Any) -> AsyncIterator[Any]:
        """One StreamMetricEnvelopesResponse per (run, key) asked for."""
        raise NotImplementedError
        yield  # pragma: no cover
