"""`trackd token|role|workspace ...`: API tokens, workspace roles and workspaces, written
straight to the database (the server need not run). Each command first applies pending
migrations, as `trackd migrate` does, so that the first admin can be made on a fresh
database: `trackd token create --principal admin --admin`.

`token create` prints the secret alone on stdout (so `TOKEN=$(trackd token create ...)`
works) and what it made on stderr; the secret is never shown again nor stored."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from trackd.server.config import Config, pooled
from trackd.server.errors import InvalidArgument, TrackdError

# Exit status of a command the database refused (no such token, a name taken...).
FAILED = 1


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Adds the token, role and workspace commands to the `trackd` subparsers `sub`;
    `common` adds the database flags to each."""
    token = sub.add_parser("token", help="create, list and revoke API tokens")
    tsub = token.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="make a token and print its secret once")
    create.add_argument("--principal", required=True, help="who the token authenticates as")
    create.add_argument("--name", help="tells the principal's tokens apart (default: a time)")
    create.add_argument("--admin", action="store_true", help="an admin: every role everywhere")
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", metavar="DURATION", help="30d, 12h, 90m, 2w")
    expiry.add_argument("--expires-at", metavar="TIME", help="ISO 8601, UTC if no zone")
    create.add_argument(
        "--role",
        action="append",
        default=[],
        metavar="WORKSPACE=READ|EDIT|MANAGE",
        help="a role of the principal (user:PRINCIPAL) in a workspace, made if missing",
    )
    listing = tsub.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--principal", help="only this principal's tokens")
    revoke = tsub.add_parser("revoke", help="revoke a token by id, or by principal and name")
    revoke.add_argument("id", nargs="?", type=int, help="the token's id (see token list)")
    revoke.add_argument("--principal")
    revoke.add_argument("--name")
    for p in (create, listing, revoke):
        common(p)

    role = sub.add_parser("role", help="set, remove and list workspace roles")
    rsub = role.add_subparsers(dest="action", required=True)
    rset = rsub.add_parser("set", help="give a user or group a role in a workspace")
    rremove = rsub.add_parser("remove", help="take a user's or group's role away")
    for p in (rset, rremove):
        p.add_argument("--workspace", required=True)
        who = p.add_mutually_exclusive_group(required=True)
        who.add_argument("--user", help="a principal's name")
        who.add_argument("--group", help="a group named by JWTs' groups claim")
    rset.add_argument("--role", required=True, help="READ, EDIT or MANAGE")
    rlist = rsub.add_parser("list", help="list roles")
    rlist.add_argument("--workspace", help="only this workspace's roles")
    for p in (rset, rremove, rlist):
        common(p)

    workspace = sub.add_parser("workspace", help="create and list workspaces")
    wsub = workspace.add_subparsers(dest="action", required=True)
    wcreate = wsub.add_parser("create", help="make a workspace")
    wcreate.add_argument("workspace_name", metavar="NAME")
    wlist = wsub.add_parser("list", help="list workspaces")
    for p in (wcreate, wlist):
        common(p)


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


async def _token(args: argparse.Namespace, db: Any) -> None:
    from trackd.server.domain.auth import tokens
    from trackd.server.store import identity

    if args.action == "create":
        expires = None
        if args.expires_in:
            expires = tokens.now_ms() + tokens.parse_duration(args.expires_in)
        elif args.expires_at:
            expires = tokens.parse_time(args.expires_at)
        roles = {}
        for item in args.role:
            workspace, eq, level = item.partition("=")
            if not eq:
                raise InvalidArgument(f"--role is WORKSPACE=READ|EDIT|MANAGE; got {item!r}")
            roles[workspace] = tokens.parse_role(level)
        name = args.name or datetime.now(UTC).strftime("token-%Y%m%dT%H%M%S")
        made = await tokens.create(
            db, args.principal, name, admin=args.admin, expires=expires, roles=roles
        )
        print(made.secret, flush=True)
        print(
            f"token {made.token_id} for principal {args.principal!r} (name {name!r}"
            f"{', admin' if args.admin else ''}, expires {_time(made.expires)}); "
            "the secret above is shown only now",
            file=sys.stderr,
        )
    elif args.action == "list":

        async def fetch(conn: Any) -> list[Any]:
            return await identity.list_tokens(conn, args.principal)

        rows = await db.read(fetch)
        _print_table(
            ("id", "principal", "name", "admin", "created", "expires", "revoked"),
            [
                (
                    str(r["token_id"]),
                    r["principal"],
                    r["name"],
                    "yes" if r["admin"] else "no",
                    _time(r["created_time"]),
                    _time(r["expires_time"]),
                    _time(r["revoked_time"]),
                )
                for r in rows
            ],
        )
    else:
        if args.id is None and not (args.principal and args.name):
            raise InvalidArgument("name the token: ID, or --principal P --name N")
        await tokens.revoke(db, token_id=args.id, principal=args.principal, name=args.name)
        print("revoked", file=sys.stderr)


async def _role(args: argparse.Namespace, db: Any) -> None:
    from trackd.server.domain.auth import tokens
    from trackd.server.domain.auth.principal import Level
    from trackd.server.store import identity

    if args.action == "list":

        async def fetch(conn: Any) -> list[Any]:
            return await identity.list_roles(conn, args.workspace)

        rows = await db.read(fetch)
        _print_table(
            ("workspace", "subject", "role"),
            [(r["workspace"], r["subject"], Level(r["role"]).name) for r in rows],
        )
        return
    subject = tokens.subject(args.user, args.group)
    if args.action == "set":
        created = await tokens.set_role(db, args.workspace, subject, tokens.parse_role(args.role))
        made = " (workspace created)" if created else ""
        print(f"{subject} has {args.role.upper()} in {args.workspace}{made}", file=sys.stderr)
    else:
        await tokens.remove_role(db, args.workspace, subject)
        print(f"{subject} has no role in {args.workspace} now", file=sys.stderr)


async def _workspace(args: argparse.Namespace, db: Any) -> None:
    from trackd.server.domain.auth import tokens
    from trackd.server.store import identity

    if args.action == "create":
        ws = await tokens.create_workspace(db, args.workspace_name)
        print(f"workspace {args.workspace_name!r} created (id {ws})", file=sys.stderr)
        return

    async def fetch(conn: Any) -> list[Any]:
        return await identity.list_workspaces(conn)

    rows = await db.read(fetch)
    _print_table(
        ("id", "name", "created"),
        [(str(r["workspace_id"]), r["name"], _time(r["creation_time"])) for r in rows],
    )


_COMMANDS: dict[str, Callable[[argparse.Namespace, Any], Awaitable[None]]] = {
    "token": _token,
    "role": _role,
    "workspace": _workspace,
}
COMMANDS = frozenset(_COMMANDS)


async def run(args: argparse.Namespace, url: str, cfg: Config | None = None) -> int:
    """Runs `trackd <args.command> <args.action>` against the database at `url`, after
    applying pending migrations (over cfg's direct URL when set); returns the exit status."""
    from trackd.server import app

    cfg = cfg or Config()
    db = await app.connect_database(url, min_size=1, max_size=1, pooled=pooled(cfg))
    try:
        await app.prepare_database(db, url, cfg.direct_database_url)
        await _COMMANDS[args.command](args, db)
    except TrackdError as exc:
        print(f"trackd: error: {exc}", file=sys.stderr, flush=True)
        return FAILED
    finally:
        await db.close()
    return 0
