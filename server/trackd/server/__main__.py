"""The `trackd` command: `trackd serve` runs the server, `trackd migrate` applies the
schema migrations and exits."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from trackd.server import config as config_mod
from trackd.server import logs
from trackd.server.embedded import EmbeddedPostgres


def _run(coro_factory: object) -> None:
    try:
        import uvloop

        uvloop.run(coro_factory)  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - uvloop is optional
        asyncio.run(coro_factory)  # type: ignore[arg-type]


async def do_migrate_quietly(url: str) -> None:
    """Applies pending migrations (before workers start, so that they find none)."""
    from trackd.server import app
    from trackd.server.store.pool import Database

    db = await Database.connect(url, min_size=1, max_size=1)
    try:
        await app.migrate_database(db)
    finally:
        await db.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `trackd` and `python -m trackd.server`."""
    parser = argparse.ArgumentParser(prog="trackd", description="trackd experiment tracking")
    sub = parser.add_subparsers(dest="command")
    for name, text in (("serve", "run the gRPC server"), ("migrate", "apply migrations")):
        config_mod.add_arguments(sub.add_parser(name, help=text))
    args = parser.parse_args(argv)
    command = args.command or "serve"
    cfg = config_mod.resolve(args)
    logs.configure(cfg.log_level, cfg.log_format)
    embedded = None
    url = cfg.database_url
    if not url:
        embedded = EmbeddedPostgres(cfg.data_dir)
        url = embedded.start()
    try:
        from trackd.server import app
        from trackd.server.store.pool import Database

        if command == "migrate":

            async def do_migrate() -> None:
                db = await Database.connect(url, min_size=1, max_size=1)
                try:
                    applied = await app.migrate_database(db)
                finally:
                    await db.close()
                print("applied: " + (", ".join(applied) or "nothing (up to date)"))

            _run(do_migrate())
        elif cfg.workers > 1:
            from trackd.server import workers

            _run(do_migrate_quietly(url))
            return workers.run(cfg, url)
        else:
            _run(app.serve(cfg, url))
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
