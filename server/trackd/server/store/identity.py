"""SQL for identity: API tokens (by the SHA-256 of their secret), workspaces and workspace
roles, as the authenticators read them and the `trackd token|role|workspace` commands
write them."""

from __future__ import annotations

import asyncpg

from trackd.server.store.pool import Connection

TOKEN_BY_HASH = """
SELECT token_id, principal, name, secret_hash, admin, expires_time, revoked_time
FROM api_tokens WHERE secret_hash = $1"""
INSERT_TOKEN = """
INSERT INTO api_tokens (principal, name, secret_hash, admin, created_time, expires_time)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING token_id"""
LIST_TOKENS = """
SELECT token_id, principal, name, admin, created_time, expires_time, revoked_time
FROM api_tokens
WHERE ($1::text IS NULL OR principal = $1)
ORDER BY token_id"""
REVOKE_TOKEN_BY_ID = """
UPDATE api_tokens SET revoked_time = $2 WHERE token_id = $1 AND revoked_time IS NULL
RETURNING token_id"""
REVOKE_TOKEN_BY_NAME = """
UPDATE api_tokens SET revoked_time = $3
WHERE principal = $1 AND name = $2 AND revoked_time IS NULL
RETURNING token_id"""

WORKSPACE_ID = "SELECT workspace_id FROM workspaces WHERE name = $1"
INSERT_WORKSPACE = """
INSERT INTO workspaces (name, creation_time) VALUES ($1, $2)
ON CONFLICT (name) DO NOTHING
RETURNING workspace_id"""
LIST_WORKSPACES = "SELECT workspace_id, name, creation_time FROM workspaces ORDER BY name"

SET_ROLE = """
INSERT INTO workspace_roles (workspace_id, subject, role) VALUES ($1, $2, $3)
ON CONFLICT (workspace_id, subject) DO UPDATE SET role = EXCLUDED.role"""
REMOVE_ROLE = """
DELETE FROM workspace_roles WHERE workspace_id = $1 AND subject = $2 RETURNING role"""
LIST_ROLES = """
SELECT w.name AS workspace, r.subject, r.role
FROM workspace_roles r JOIN workspaces w USING (workspace_id)
WHERE ($1::text IS NULL OR w.name = $1)
ORDER BY w.name, r.subject"""


async def token_by_hash(conn: Connection, secret_hash: bytes) -> asyncpg.Record | None:
    """The api_tokens row whose secret hashes to `secret_hash`, or None."""
    return await conn.fetchrow(TOKEN_BY_HASH, secret_hash)


async def insert_token(
    conn: Connection,
    principal: str,
    name: str,
    secret_hash: bytes,
    admin: bool,
    created: int,
    expires: int | None,
) -> int:
    """Stores a token (its hash only); returns its id. UniqueViolationError if the
    principal already has a token of that name."""
    token_id: int = await conn.fetchval(
        INSERT_TOKEN, principal, name, secret_hash, admin, created, expires
    )
    return token_id


async def list_tokens(conn: Connection, principal: str | None = None) -> list[asyncpg.Record]:
    """Every token (of `principal`, if given), oldest first, without secrets."""
    return list(await conn.fetch(LIST_TOKENS, principal))


async def revoke_token(conn: Connection, token_id: int, now: int) -> bool:
    """Revokes token `token_id`; False if there is none or it is revoked already."""
    return await conn.fetchval(REVOKE_TOKEN_BY_ID, token_id, now) is not None


async def revoke_token_named(conn: Connection, principal: str, name: str, now: int) -> bool:
    """Revokes `principal`'s token `name`; False if there is none or it is revoked."""
    return await conn.fetchval(REVOKE_TOKEN_BY_NAME, principal, name, now) is not None


async def workspace_id(conn: Connection, name: str) -> int | None:
    """The id of workspace `name`, or None."""
    found: int | None = await conn.fetchval(WORKSPACE_ID, name)
    return found


async def ensure_workspace(conn: Connection, name: str, now: int) -> tuple[int, bool]:
    """(id, created) of workspace `name`, creating it if missing."""
    created: int | None = await conn.fetchval(INSERT_WORKSPACE, name, now)
    if created is not None:
        return created, True
    existing = await workspace_id(conn, name)
    assert existing is not None
    return existing, False


async def list_workspaces(conn: Connection) -> list[asyncpg.Record]:
    """Every workspace, by name."""
    return list(await conn.fetch(LIST_WORKSPACES))


async def set_role(conn: Connection, workspace: int, subject: str, role: int) -> None:
    """Gives `subject` role `role` (1 READ, 2 EDIT, 3 MANAGE) in `workspace`, replacing
    any role it had there."""
    await conn.execute(SET_ROLE, workspace, subject, role)


async def remove_role(conn: Connection, workspace: int, subject: str) -> bool:
    """Removes `subject`'s role in `workspace`; False if it had none."""
    return await conn.fetchval(REMOVE_ROLE, workspace, subject) is not None


async def list_roles(conn: Connection, workspace: str | None = None) -> list[asyncpg.Record]:
    """Every role (in workspace `workspace`, if given): workspace name, subject, role."""
    return list(await conn.fetch(LIST_ROLES, workspace))
