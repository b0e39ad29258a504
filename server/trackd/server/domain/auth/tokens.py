"""API tokens: making them (shown once, kept as a SHA-256), checking them, listing and
revoking them; and the workspace roles `trackd token create --role` and `trackd role` set.

A token is `tkd_` and 43 URL-safe characters (`secrets.token_urlsafe(32)`: 256 random
bits), so a leaked one is recognisable (secret scanners can match the prefix) and none can
be guessed. Only its SHA-256 is stored: a copy of the database gives no usable token."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from trackd.server.clock import now_ms as now_ms  # also tokens.now_ms to its callers
from trackd.server.domain.auth.principal import Level, Principal, group_subject, user_subject
from trackd.server.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from trackd.server.store import identity
from trackd.server.store.pool import Connection, Database

PREFIX = "tkd_"
_SECRET_RE = re.compile(r"tkd_[A-Za-z0-9_-]{43}")
# Principal, token, workspace and group names: printable, no spaces, at most 200 chars.
_NAME_RE = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")
_DURATION_RE = re.compile(r"([0-9]{1,6})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def new_secret() -> str:
    """A fresh token secret: the prefix and 256 random bits, URL-safe."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> bytes:
    """The SHA-256 of a token secret, as stored in api_tokens.secret_hash."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def looks_like_token(bearer: str) -> bool:
    """Whether a bearer credential is meant as an API token (it has the prefix)."""
    return bearer.startswith(PREFIX)


def check_name(what: str, name: str) -> str:
    """`name` if it can name a principal, token, workspace or group; else InvalidArgument."""
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"{what} must be 1 to 200 printable characters without spaces; got {name!r}"
        )
    return name


def parse_duration(text: str) -> int:
    """Milliseconds in a duration like `30d`, `12h`, `90m`, `2w` or `45s`."""
    match = _DURATION_RE.fullmatch(text.strip())
    if not match:
        raise InvalidArgument(f"a duration is a number and s, m, h, d or w (30d); got {text!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)] * 1000


def parse_time(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time (UTC if it names no zone)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidArgument(f"not an ISO 8601 time (2027-01-31T12:00:00Z): {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def parse_role(text: str) -> Level:
    """The Level named READ, EDIT or MANAGE (any case; CAN_ prefix allowed)."""
    name = text.strip().upper().removeprefix("CAN_")
    if name not in ("READ", "EDIT", "MANAGE"):
        raise InvalidArgument(f"a role is READ, EDIT or MANAGE; got {text!r}")
    return Level[name]


@dataclass(frozen=True)
class Verified:
    """A checked credential: who it names, and until when (ms since the epoch; None for
    no expiry) it stays valid."""

    principal: Principal
    expires: int | None


async def verify(db: Database, secret: str) -> Verified:
    """The principal of API token `secret`.

    Raises:
        Unauthenticated: the token is malformed, unknown, revoked or expired (the message
            says which, never the token).
    """
    if not _SECRET_RE.fullmatch(secret):
        raise Unauthenticated("malformed API token")
    digest = hash_secret(secret)

    async def lookup(conn: Connection) -> asyncpg.Record | None:
        return await identity.token_by_hash(conn, digest)

    row = await db.read(lookup)
    # The row was found by the hash; comparing again in constant time costs nothing and
    # keeps any timing from depending on how much of the hash matched.
    if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), digest):
        raise Unauthenticated("unknown API token")
    if row["revoked_time"] is not None:
        raise Unauthenticated("the API token was revoked", {"token_id": str(row["token_id"])})
    expires = row["expires_time"]
    if expires is not None and expires <= now_ms():
        raise Unauthenticated("the API token expired", {"token_id": str(row["token_id"])})
    return Verified(Principal(row["principal"], admin=row["admin"], via="token"), expires)


@dataclass(frozen=True)
class Created:
    """A token just made: its id and its secret (shown once, never stored)."""

    token_id: int
    secret: str
    expires: int | None


async def create(
    db: Database,
    principal: str,
    name: str,
    *,
    admin: bool = False,
    expires: int | None = None,
    roles: dict[str, Level] | None = None,
) -> Created:
    """Makes a token for `principal` named `name` and gives `user:principal` the `roles`
    (workspace name to role), creating missing workspaces, in one transaction.

    Raises:
        InvalidArgument: a bad name, or an expiry in the past.
        AlreadyExists: the principal has a token of that name already.
    """
    check_name("the principal", principal)
    check_name("the token name", name)
    for workspace in roles or {}:
        check_name("a workspace name", workspace)
    now = now_ms()
    if expires is not None and expires <= now:
        raise InvalidArgument("the token's expiry is in the past")
    secret = new_secret()

    async def work(conn: Connection) -> int:
        try:
            token_id = await identity.insert_token(
                conn, principal, name, hash_secret(secret), admin, now, expires
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(
                f"principal {principal!r} has a token named {name!r} already; pick another "
                "--name or revoke it"
            ) from None
        for workspace, level in (roles or {}).items():
            ws, _ = await identity.ensure_workspace(conn, workspace, now)
            await identity.set_role(conn, ws, user_subject(principal), int(level))
        return token_id

    return Created(await db.transact(work), secret, expires)


async def revoke(
    db: Database, *, token_id: int | None = None, principal: str = "", name: str = ""
) -> None:
    """Revokes a token, named by its id or by its principal and name.

    Raises:
        NotFound: no such token that is not revoked already.
    """
    now = now_ms()

    async def work(conn: Connection) -> bool:
        if token_id is not None:
            return await identity.revoke_token(conn, token_id, now)
        return await identity.revoke_token_named(conn, principal, name, now)

    if not await db.transact(work):
        what = f"id {token_id}" if token_id is not None else f"{principal!r} / {name!r}"
        raise NotFound(f"no token that is not revoked already with {what}")


def subject(user: str | None, group: str | None) -> str:
    """The subject string of `--user U` or `--group G`."""
    if user:
        return user_subject(check_name("the user", user))
    if group:
        return group_subject(check_name("the group", group))
    raise InvalidArgument("name a --user or a --group")


async def set_role(db: Database, workspace: str, subject_: str, level: Level) -> bool:
    """Gives `subject_` role `level` in `workspace` (created if missing); returns whether
    the workspace was created."""
    check_name("the workspace", workspace)
    now = now_ms()

    async def work(conn: Connection) -> bool:
        ws, created = await identity.ensure_workspace(conn, workspace, now)
        await identity.set_role(conn, ws, subject_, int(level))
        return created

    return await db.transact(work)


async def remove_role(db: Database, workspace: str, subject_: str) -> None:
    """Removes `subject_`'s role in `workspace`.

    Raises:
        NotFound: the workspace does not exist or gives the subject no role.
    """

    async def work(conn: Connection) -> bool:
        ws = await identity.workspace_id(conn, workspace)
        return ws is not None and await identity.remove_role(conn, ws, subject_)

    if not await db.transact(work):
        raise NotFound(f"{subject_} has no role in workspace {workspace!r}")


async def create_workspace(db: Database, name: str) -> int:
    """Creates workspace `name`; returns its id.

    Raises:
        AlreadyExists: there is one of that name.
    """
    check_name("the workspace", name)
    now = now_ms()

    async def work(conn: Connection) -> tuple[int, bool]:
        return await identity.ensure_workspace(conn, name, now)

    ws, created = await db.transact(work)
    if not created:
        raise AlreadyExists(f"workspace {name!r} exists already")
    return ws
