"""`make bench` / `python -m bench [scenario ...]`: runs the benchmarks and prints figures."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import platform

from bench import (
    artifacts,
    auth,
    codecs,
    common,
    envelopes,
    ingest,
    logcall,
    mlflow_rest,
    search,
    storage,
    wal,
    watch,
    web,
)

SCENARIOS = {
    "ingest": ingest.run,
    "search": search.run,
    "search-compare": search.compare,
    "search-1m": search.million,
    "logcall": logcall.run,
    "auth": auth.run,
    "artifacts": artifacts.run,
    "envelopes": envelopes.run,
    "watch": watch.run,
    "codecs": codecs.run,
    "storage": storage.run,
    "mlflow-rest": mlflow_rest.run,
    "web": web.run,
    "wal": wal.run,
}
# Run only when named: search-compare needs another source tree to compare with, and
# search-1m takes minutes to load; mlflow-rest installs MLflow's server in a virtualenv of
# its own; web loads 100,000 runs and 10,000,000 points and drives a browser for minutes.
NAMED_ONLY = {"search-compare", "search-1m", "mlflow-rest", "web"}


async def main(names: list[str]) -> None:
    with common.postgres_url() as pg_url:
        async with common.kept_or_fresh_database(pg_url) as db_url:
            print(
                f"# trackd bench {datetime.date.today()} on {platform.node()} "
                f"({platform.machine()}, Python {platform.python_version()})"
            )
            for name in names:
                print(f"\n## {name}")
                results = await SCENARIOS[name](db_url)
                for section, figures in results.items():
                    print(f"- {section}")
                    for k, v in figures.items():
                        print(f"    {k}: {v}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "scenarios",
        nargs="*",
        choices=[*SCENARIOS, []],
        metavar="scenario",
        help=f"any of {', '.join(SCENARIOS)} (default: all but {', '.join(NAMED_ONLY)})",
    )
    default = [name for name in SCENARIOS if name not in NAMED_ONLY]
    asyncio.run(main(parser.parse_args().scenarios or default))
