"""The `trackd` command: `trackd serve` runs the server, `trackd migrate` applies the
schema migrations and exits, `trackd gc` removes artifacts for good (those of deleted runs
and logged models, replaced ones, abandoned uploads), `trackd token|role|workspace ...`
manage API tokens, workspace roles and workspaces (see identity_cli).

A start-up failure (bad setting, unreachable database, address in use, embedded
PostgreSQL failing) is one line on stderr naming the cause and the setting to change, and
exit status 2; the traceback is shown only at --log-level DEBUG."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from trackd.server import __version__, identity_cli, logs
from trackd.server import config as config_mod
from trackd.server.embedded import EmbeddedPostgres
from trackd.server.startup import EXIT_CODE, StartupError

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        return asyncio.run(coro)
    return uvloop.run(coro)


async def do_migrate_quietly(cfg: config_mod.Config, url: str) -> None:
    """Applies pending migrations (before workers start, so that they find none)."""
    from trackd.server import app

    db = await app.connect_database(url, min_size=1, max_size=1, pooled=config_mod.pooled(cfg))
    try:
        await app.prepare_database(db, url, cfg.direct_database_url)
    finally:
        await db.close()


async def do_migrate(cfg: config_mod.Config, url: str) -> None:
    """`trackd migrate`: applies pending migrations and says which."""
    from trackd.server import app

    db = await app.connect_database(url, min_size=1, max_size=1, pooled=config_mod.pooled(cfg))
    try:
        applied = await app.prepare_database(db, url, cfg.direct_database_url)
    finally:
        await db.close()
    print("applied: " + (", ".join(applied) or "nothing (up to date)"))


async def do_gc(cfg: config_mod.Config, url: str, older_than: float, grace: float | None) -> None:
    """`trackd gc`: drops the artifacts of runs and logged models deleted at least
    `older_than` seconds ago, then removes from the store every object no artifact refers
    to (replaced or deleted over `grace` seconds ago, or dropped now) and every upload
    untouched for the upload TTL."""
    from trackd.server import app
    from trackd.server.clock import now_ms
    from trackd.server.domain.artifacts import GARBAGE_GRACE_S

    db = await app.connect_database(url, min_size=1, max_size=2, pooled=config_mod.pooled(cfg))
    try:
        await app.prepare_database(db, url, cfg.direct_database_url)
        artifacts = app.open_artifacts(cfg, db)
        blobs = artifacts.blobs
        try:
            purged = await artifacts.purge_deleted(now_ms() - int(older_than * 1000))
            swept = await artifacts.sweep(
                garbage_grace_s=GARBAGE_GRACE_S if grace is None else grace
            )
        finally:
            await blobs.close()
    finally:
        await db.close()
    print(
        f"artifacts of deleted runs and logged models dropped: {purged}; objects removed "
        f"from the store: {swept['objects']}; abandoned uploads removed: {swept['uploads']}"
    )


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(text)
    return value


def _parser() -> argparse.ArgumentParser:
    parser = config_mod.Parser(prog="trackd", description="trackd experiment tracking")
    parser.add_argument("--version", action="version", version=f"trackd {__version__}")
    sub = parser.add_subparsers(dest="command")
    for name, text in (("serve", "run the gRPC server"), ("migrate", "apply migrations")):
        config_mod.add_arguments(sub.add_parser(name, help=text))
    gc = sub.add_parser(
        "gc",
        help="remove artifacts for good: those of deleted runs and logged models, replaced "
        "and deleted files, abandoned uploads",
    )
    config_mod.add_arguments(gc)
    gc.add_argument(
        "--older-than",
        dest="older_than",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="only runs and logged models deleted at least this long ago (default 0: all)",
    )
    gc.add_argument(
        "--grace",
        dest="grace",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="keep replaced or deleted files' bytes this long for downloads in progress "
        "(default: the server's own sweep grace, one hour)",
    )
    identity_cli.add_commands(sub, _database_flags)
    return parser


def _database_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of the commands that only reach the database."""
    for name in (
        "database_url",
        "database_pooler",
        "direct_database_url",
        "data_dir",
        "log_level",
    ):
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            help=f"(env {config_mod.env_var(name)})",
        )


def _start(command: str, cfg: config_mod.Config, args: argparse.Namespace) -> int:
    if command == "serve":
        # Before anything starts (the embedded PostgreSQL takes seconds): the port is free,
        # and a reachable address is never served open by accident.
        if not cfg.reuse_port:
            for name in ("listen", "metrics_listen", "http_listen"):
                address = getattr(cfg, name)
                problem = address and config_mod.listen_problem(address, name)
                if problem:
                    raise StartupError(problem)
        exposed = config_mod.exposure_problem(cfg)
        if exposed:
            raise StartupError(exposed)
    try:
        from trackd.server import app, workers
    except ImportError as exc:  # the light install: pip install trackd
        raise StartupError(
            f"the server's dependencies are not installed ({exc}): pip install 'trackd[server]'"
        ) from exc

    embedded = None
    url = cfg.database_url
    if not url:
        embedded = EmbeddedPostgres(cfg.data_dir)
        url = embedded.start()
    try:
        if command in identity_cli.COMMANDS:
            return _run(identity_cli.run(args, url, cfg))
        if command == "migrate":
            _run(do_migrate(cfg, url))
        elif command == "gc":
            _run(do_gc(cfg, url, args.older_than, args.grace))
        elif cfg.workers > 1:
            _run(do_migrate_quietly(cfg, url))
            return workers.run(cfg, url)
        else:
            _run(app.serve(cfg, url))
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `trackd` and `python -m trackd.server`."""
    args = _parser().parse_args(argv)
    level = args.log_level or os.environ.get("TRACKD_LOG_LEVEL") or ""
    try:
        cfg = config_mod.resolve(args)
        logs.configure(cfg.log_level, cfg.log_format)
        return _start(args.command or "serve", cfg, args)
    except StartupError as exc:
        logs.flush()
        if level.upper() == "DEBUG":
            traceback.print_exc()
        print(f"trackd: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
