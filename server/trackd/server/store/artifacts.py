"""SQL for the artifact index: files, uploads in progress, and objects to remove.

Paths are compared bytewise (the columns are COLLATE "C"), so the files under directory
`d` are the range [`d/`, `d0`): '0' is the byte after '/'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from trackd.server.store.pool import Connection

RUN = 1
MODEL = 2
_RUN_OWNER = """
SELECT r.run_pk AS pk, r.experiment_id, r.artifact_uri,
       r.lifecycle_stage <> 1 AS deleted, e.lifecycle_stage <> 1 AS experiment_deleted
FROM runs r JOIN experiments e USING (experiment_id)
WHERE r.run_id = $1::uuid"""

_MODEL_OWNER = """
SELECT m.model_pk AS pk, m.experiment_id, m.artifact_uri,
       m.lifecycle_stage <> 1 AS deleted, e.lifecycle_stage <> 1 AS experiment_deleted
FROM logged_models m JOIN experiments e USING (experiment_id)
WHERE m.model_id = $1"""

# A row's columns as FileInfo needs them.
_FILE = "path, object_key, size, sha256, content_type, row_count, modified_ms"

_GET = f"SELECT {_FILE} FROM artifacts WHERE owner_kind = $1 AND owner_pk = $2 AND path = $3"  # noqa: S608

# A file at one of the path's parent directories, or anything under the path itself.
_CONFLICT = """
SELECT path FROM artifacts
WHERE owner_kind = $1 AND owner_pk = $2
  AND (path = ANY($3::text[]) OR (path >= $4 AND path < $5))
LIMIT 1"""

_LOCK_OWNER = "SELECT pg_advisory_xact_lock($1::int, $2::int)"


# Creates or replaces a file row; the object of the row it replaces becomes garbage (the
# caller holds the owner's lock, so the old row read here is the one replaced).
_PUT = """
WITH old AS (
    SELECT object_key FROM artifacts WHERE owner_kind = $1 AND owner_pk = $2 AND path = $3
), up AS (
    INSERT INTO artifacts (owner_kind, owner_pk, path, object_key, size, sha256,
                           content_type, row_count, modified_ms)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (owner_kind, owner_pk, path) DO UPDATE SET
        object_key = EXCLUDED.object_key, size = EXCLUDED.size, sha256 = EXCLUDED.sha256,
        content_type = EXCLUDED.content_type, row_count = EXCLUDED.row_count,
        modified_ms = EXCLUDED.modified_ms
)
INSERT INTO artifact_garbage (object_key, since_ms)
SELECT object_key, $9 FROM old WHERE object_key <> $4
ON CONFLICT (object_key) DO NOTHING"""

_GARBAGE = """
INSERT INTO artifact_garbage (object_key, since_ms) SELECT unnest($1::text[]), $2
ON CONFLICT (object_key) DO NOTHING"""

# Every file in [lo, hi) after `after`, in path order.
_LIST_RECURSIVE = f"""
SELECT {_FILE}, false AS is_dir FROM artifacts
WHERE owner_kind = $1 AND owner_pk = $2 AND path >= $3 AND path < $4 AND path > $5
ORDER BY path LIMIT $6"""  # noqa: S608

# The direct children of a directory, found by skipping: after a file the next path; after
# a subdirectory `d` the first path not under it (>= 'd0'). One index probe per entry,
# however many files a subdirectory holds. $7 is the directory's prefix ("" or "d/"),
# $8 its length in characters; $9 a lower bound (a page after subdirectory `d` starts at 'd0').
_LIST_CHILDREN = """
WITH RECURSIVE walk(path, n) AS (
    (SELECT path, 1 FROM artifacts
     WHERE owner_kind = $1 AND owner_pk = $2 AND path >= $3 AND path < $4 AND path > $5
       AND path >= $9
     ORDER BY path LIMIT 1)
    UNION ALL
    SELECT nxt.path, w.n + 1 FROM walk w, LATERAL (
        SELECT a.path FROM artifacts a
        WHERE a.owner_kind = $1 AND a.owner_pk = $2 AND a.path < $4 AND a.path > w.path
          AND a.path >= CASE WHEN strpos(substr(w.path, $8 + 1), '/') > 0
                        THEN $7 || split_part(substr(w.path, $8 + 1), '/', 1) || '0'
                        ELSE '' END
        ORDER BY a.path LIMIT 1
    ) nxt
    WHERE w.n < $6
)
SELECT CASE WHEN dir THEN $7 || child ELSE a.path END AS path,
       a.object_key, a.size, a.sha256, a.content_type, a.row_count, a.modified_ms,
       dir AS is_dir
FROM (SELECT w.path, w.n, split_part(substr(w.path, $8 + 1), '/', 1) AS child,
             strpos(substr(w.path, $8 + 1), '/') > 0 AS dir FROM walk w) s
LEFT JOIN artifacts a
  ON NOT s.dir AND a.owner_kind = $1 AND a.owner_pk = $2 AND a.path = s.path
ORDER BY s.n"""

_DELETE = """
WITH gone AS (
    DELETE FROM artifacts
    WHERE owner_kind = $1 AND owner_pk = $2 AND (path = $3 OR (path >= $4 AND path < $5))
    RETURNING object_key
), kept AS (
    INSERT INTO artifact_garbage (object_key, since_ms) SELECT object_key, $6 FROM gone
    ON CONFLICT (object_key) DO NOTHING
)
SELECT count(*) FROM gone"""

_NEW_UPLOAD = """
INSERT INTO artifact_uploads (upload_id, owner_kind, owner_pk, path, declared_size,
                              declared_sha256, started_ms, touched_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $7)"""

_GET_UPLOAD = """
SELECT upload_id, owner_kind, owner_pk, path, declared_size, declared_sha256, touched_ms
FROM artifact_uploads WHERE upload_id = $1"""

_TOUCH_UPLOAD = "UPDATE artifact_uploads SET touched_ms = $2 WHERE upload_id = $1"

_END_UPLOAD = "DELETE FROM artifact_uploads WHERE upload_id = $1 RETURNING upload_id"

_ABANDONED = """
DELETE FROM artifact_uploads WHERE upload_id IN (
    SELECT upload_id FROM artifact_uploads WHERE touched_ms < $1 ORDER BY touched_ms LIMIT $2)
RETURNING upload_id"""

_DUE_GARBAGE = """
SELECT object_key FROM artifact_garbage WHERE since_ms < $1 ORDER BY since_ms LIMIT $2"""

_FORGET_GARBAGE = "DELETE FROM artifact_garbage WHERE object_key = ANY($1::text[])"

# The files of deleted runs and deleted logged models (a run of a deleted experiment is
# deleted with it) deleted at or before $1; their objects become garbage due at once.
_PURGE = """
WITH owners AS (
    SELECT 1::smallint AS kind, run_pk AS pk FROM runs
    WHERE lifecycle_stage <> 1 AND coalesce(deleted_time, 0) <= $1
    UNION ALL
    SELECT 2::smallint, model_pk FROM logged_models
    WHERE lifecycle_stage <> 1 AND coalesce(deleted_time, 0) <= $1
), gone AS (
    DELETE FROM artifacts a USING owners o
    WHERE a.owner_kind = o.kind AND a.owner_pk = o.pk
    RETURNING a.object_key
), kept AS (
    INSERT INTO artifact_garbage (object_key, since_ms) SELECT object_key, 0 FROM gone
    ON CONFLICT (object_key) DO NOTHING
)
SELECT count(*) FROM gone"""


# Above every path: a path is at most 1024 bytes, and this is 257 of the largest
# character (1028 bytes, each the largest UTF-8 sequence).
_ABOVE_ALL = "\U0010ffff" * 257


def _under(path: str) -> tuple[str, str]:
    """The range of paths strictly under directory `path` ("" for the root)."""
    if not path:
        return "", _ABOVE_ALL
    return path + "/", path + "0"


async def owner(conn: Connection, kind: int, ident: str) -> asyncpg.Record | None:
    """(pk, experiment_id, artifact_uri, deleted, experiment_deleted) of a run or logged
    model by its well-formed id; None if there is none."""
    return await conn.fetchrow(_RUN_OWNER if kind == RUN else _MODEL_OWNER, ident)


async def get(conn: Connection, kind: int, pk: int, path: str) -> asyncpg.Record | None:
    """The file at `path`, or None."""
    return await conn.fetchrow(_GET, kind, pk, path)


async def conflict(conn: Connection, kind: int, pk: int, path: str) -> str | None:
    """A file that stops `path` from being a file: one at a parent directory of it, or one
    under it (so that it is a directory). None when there is none."""
    parts = path.split("/")
    parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
    lo, hi = _under(path)
    found: str | None = await conn.fetchval(_CONFLICT, kind, pk, parents, lo, hi)
    return found


async def lock_owner(conn: Connection, kind: int, pk: int) -> None:
    """Serializes commits and deletions of one owner's files until the transaction ends."""
    await conn.execute(_LOCK_OWNER, 0x61727400 + kind, pk & 0x7FFFFFFF)


async def put(conn: Connection, kind: int, pk: int, file: dict[str, Any]) -> None:
    """Creates or replaces the file row, in one statement; the object it replaces becomes
    garbage from the file's modification time. The caller holds the owner's lock."""
    await conn.execute(
        _PUT,
        kind,
        pk,
        file["path"],
        file["object_key"],
        file["size"],
        file["sha256"],
        file["content_type"],
        file["row_count"],
        file["modified_ms"],
    )


async def add_garbage(conn: Connection, keys: Sequence[str], since_ms: int) -> None:
    """Marks objects for removal from the store once `since_ms` is past the grace period."""
    await conn.execute(_GARBAGE, list(keys), since_ms)


async def list_files(
    conn: Connection,
    kind: int,
    pk: int,
    directory: str,
    after: str,
    limit: int,
    recursive: bool,
    after_dir: bool = False,
) -> list[asyncpg.Record]:
    """Up to `limit` entries under `directory`, in path order, after the entry `after`
    (with `after_dir`, a subdirectory: the page goes on after everything under it)."""
    lo, hi = _under(directory)
    if recursive:
        return list(await conn.fetch(_LIST_RECURSIVE, kind, pk, lo, hi, after, limit))
    floor = after + "0" if after_dir else ""
    return list(
        await conn.fetch(_LIST_CHILDREN, kind, pk, lo, hi, after, limit, lo, len(lo), floor)
    )


async def delete(conn: Connection, kind: int, pk: int, path: str, now_ms: int) -> int:
    """Deletes the file at `path`, or every file under directory `path`; their objects
    become garbage. The number of files deleted."""
    lo, hi = _under(path)
    count: int = await conn.fetchval(_DELETE, kind, pk, path, lo, hi, now_ms)
    return count


async def new_upload(
    conn: Connection,
    upload_id: str,
    kind: int,
    pk: int,
    path: str,
    size: int | None,
    sha256: str,
    now_ms: int,
) -> None:
    """Records an upload in progress."""
    await conn.execute(_NEW_UPLOAD, upload_id, kind, pk, path, size, sha256, now_ms)


async def get_upload(conn: Connection, upload_id: str) -> asyncpg.Record | None:
    """An upload in progress by id, or None."""
    return await conn.fetchrow(_GET_UPLOAD, upload_id)


async def touch_upload(conn: Connection, upload_id: str, now_ms: int) -> None:
    """Notes that an upload made progress (it is not abandoned)."""
    await conn.execute(_TOUCH_UPLOAD, upload_id, now_ms)


async def end_upload(conn: Connection, upload_id: str) -> bool:
    """Forgets an upload; False if it was already gone (another call finished it)."""
    return await conn.fetchval(_END_UPLOAD, upload_id) is not None


async def abandoned_uploads(conn: Connection, before_ms: int, limit: int) -> list[str]:
    """Forgets up to `limit` uploads untouched since `before_ms`; their ids."""
    return [r["upload_id"].hex for r in await conn.fetch(_ABANDONED, before_ms, limit)]


async def due_garbage(conn: Connection, before_ms: int, limit: int) -> list[str]:
    """Up to `limit` objects marked for removal before `before_ms`."""
    return [r["object_key"] for r in await conn.fetch(_DUE_GARBAGE, before_ms, limit)]


async def forget_garbage(conn: Connection, keys: Sequence[str]) -> None:
    """Forgets objects removed from the store."""
    await conn.execute(_FORGET_GARBAGE, list(keys))


async def purge_deleted(conn: Connection, deleted_before_ms: int) -> int:
    """Drops the files of runs and logged models deleted at or before the time; their
    objects become garbage due at once. The number of files dropped."""
    count: int = await conn.fetchval(_PURGE, deleted_before_ms)
    return count
