"""Start-up failures that explain themselves. Each is a StartupError whose message is one
line naming the cause and the setting to change; `trackd` prints it and exits 2 (with the
traceback only at --log-level DEBUG)."""

from __future__ import annotations

import errno
import socket
from urllib.parse import parse_qsl, urlencode, urlsplit

EXIT_CODE = 2

DATABASE_URL = "--database-url / TRACKD_DATABASE_URL"
DATA_DIR = "--data-dir / TRACKD_DATA_DIR"


class StartupError(Exception):
    """Why trackd cannot start, worded for the person starting it (one line)."""


def mask_url(url: str) -> str:
    """`url` with its password (in the user part or a `password=` parameter) replaced by
    `***`, fit for messages and logs."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{hostinfo}"
        query = parts.query
        if "password" in query.lower():
            query = urlencode(
                [
                    (k, "***" if k.lower() == "password" else v)
                    for k, v in parse_qsl(query, keep_blank_values=True)
                ],
                safe="/*",
            )
        # Not urlunsplit: it turns postgresql:///db (a socket URL) into postgresql:/db.
        masked = f"{parts.scheme}://{netloc}{parts.path}"
        masked += f"?{query}" if query else ""
        return masked + (f"#{parts.fragment}" if parts.fragment else "")
    except ValueError:
        return "<unparsable URL>"


def _url_parts(url: str) -> tuple[str, str, str]:
    """(user, host, database) of a PostgreSQL URL, as far as it says."""
    try:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        return (
            parts.username or query.get("user", ""),
            parts.hostname or query.get("host", ""),
            parts.path.lstrip("/") or query.get("dbname", ""),
        )
    except ValueError:
        return "", "", ""


def explain_database_error(exc: BaseException, url: str) -> StartupError | None:
    """A StartupError saying why connecting to `url` failed, or None if `exc` is not a
    connection failure (a bug, to be raised as it is)."""
    import asyncpg

    where = mask_url(url)
    user, host, database = _url_parts(url)
    fix = f"fix {DATABASE_URL}"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return StartupError(
            f"database {database!r} does not exist on the PostgreSQL at {where}: "
            f"create it (createdb {database}) or {fix}"
        )
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return StartupError(
            f"authentication failed for user {user!r} at {where} "
            f"({_first_line(exc)}): {fix} (user and password)"
        )
    if isinstance(exc, socket.gaierror):
        return StartupError(f"cannot reach the database at {where}: unknown host {host!r}; {fix}")
    if isinstance(exc, TimeoutError):
        return StartupError(f"cannot reach the database at {where}: connecting timed out; {fix}")
    if isinstance(exc, OSError):
        if exc.errno == errno.ECONNREFUSED or "refused" in str(exc).lower():
            reason = "connection refused (is PostgreSQL running there?)"
        else:
            reason = exc.strerror or _first_line(exc)
        return StartupError(f"cannot reach the database at {where}: {reason}; {fix}")
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return StartupError(
            f"user {user!r} may not create trackd's tables in database {database!r} at "
            f"{where} ({_first_line(exc)}): grant it, or {fix}"
        )
    if isinstance(exc, asyncpg.PostgresError):
        return StartupError(f"the database at {where} refused trackd: {_first_line(exc)}; {fix}")
    if isinstance(exc, asyncpg.InterfaceError | ValueError):
        return StartupError(f"cannot use the database URL {where}: {_first_line(exc)}; {fix}")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def bind_failure(host: str, port: int) -> str | None:
    """Why a server could not listen on host:port (in use, not a local address, no
    permission, unknown host), found by binding a probe socket; None if it could."""
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return f"unknown host {host!r}"
    reasons: list[str] = []
    bound = False
    for family, kind, proto, _, address in infos:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:  # e.g. IPv6 disabled: gRPC skips that family too
            continue
        with probe:
            # As gRPC binds: SO_REUSEADDR, so a port in TIME_WAIT is free, a listening one not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
                bound = True
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return "the address is in use (another process listens on it)"
                if exc.errno == errno.EADDRNOTAVAIL:
                    reasons.append("it is not an address of this machine")
                elif exc.errno == errno.EACCES:
                    reasons.append("permission denied (ports below 1024 need privileges)")
                else:
                    reasons.append(exc.strerror or str(exc))
    if bound:
        return None
    return reasons[0] if reasons else "no usable address"
