"""Forward-only schema migrations: numbered SQL files applied in order, each in its own
transaction, under an advisory lock so that servers starting together are safe."""

from __future__ import annotations

import logging
import re
from importlib import resources

from trackd.server.store.pool import Connection

log = logging.getLogger(__name__)

# Arbitrary constant naming trackd's migration lock among advisory locks.
LOCK_KEY = 0x7472_6163_6B64

_NAME_RE = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
APPLIED = "SELECT version FROM schema_migrations"
RECORD = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"


def available() -> list[tuple[int, str, str]]:
    """The migrations shipped with trackd: (version, file name, SQL), in order."""
    found = []
    for entry in resources.files("trackd.server.migrations").iterdir():
        m = _NAME_RE.fullmatch(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(conn: Connection) -> list[str]:
    """Applies every migration not yet applied; returns the names of those applied now."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(CREATE_TABLE)
        done = {r["version"] for r in await conn.fetch(APPLIED)}
        for version, name, sql in available():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(RECORD, version, name)
            log.info("applied migration %s", name)
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    return applied_now
