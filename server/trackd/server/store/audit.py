"""SQL for the audit trail: records of writes and permission changes, many at once."""

from __future__ import annotations

from collections.abc import Sequence

from trackd.server.store.pool import Connection

INSERT = """
INSERT INTO audit_log (time, principal, method, resource, outcome, request_id)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])"""


async def insert(conn: Connection, records: Sequence[tuple[int, str, str, str, str, str]]) -> None:
    """Appends (time, principal, method, resource, outcome, request_id) records."""
    columns = list(zip(*records, strict=True))
    await conn.execute(INSERT, *(list(c) for c in columns))
