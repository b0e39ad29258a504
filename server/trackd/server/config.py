"""Server configuration: flags over TRACKD_* environment variables over defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    """Everything `trackd serve` needs to start."""

    listen: str = "127.0.0.1:50051"
    # Empty: start an embedded PostgreSQL whose data lives under data_dir.
    database_url: str = ""
    pool_min_size: int = 2
    pool_max_size: int = 10
    log_level: str = "INFO"
    # "json" (one object per line) or "text".
    log_format: str = "json"
    # One access-log line per call (INFO for OK and expected client errors).
    access_log: bool = True
    data_dir: str = ".trackd"
    artifact_root: str = "./trackd-artifacts"
    # Seconds in-flight calls get to finish after SIGTERM.
    grace_period: float = 10.0
    # Largest request a unary call accepts, in bytes.
    max_message_bytes: int = 4 * 1024 * 1024
    # Group-commit writer tasks (each commits on its own connection).
    ingest_writers: int = 2
    # Metric points queued for the writers before new writes wait (backpressure).
    ingest_max_queued_points: int = 1_000_000
    # HOST:PORT for Prometheus metrics over HTTP; empty turns them off.
    metrics_listen: str = ""
    # Per-client limits (a client is its x-client-id metadata, else its address); 0 is off.
    client_rate_limit: float = 0.0
    client_max_concurrency: int = 0
    # Seconds a StreamMetrics call may stay silent before the server ends it.
    stream_idle_timeout: float = 300.0
    # Server processes sharing the listening port (SO_REUSEPORT); 1 serves in-process.
    workers: int = 1
    # Let other processes bind the same port (set for each of --workers' processes).
    reuse_port: bool = False


_ENV = {
    "listen": "TRACKD_LISTEN",
    "database_url": "TRACKD_DATABASE_URL",
    "pool_min_size": "TRACKD_POOL_MIN_SIZE",
    "pool_max_size": "TRACKD_POOL_MAX_SIZE",
    "log_level": "TRACKD_LOG_LEVEL",
    "log_format": "TRACKD_LOG_FORMAT",
    "access_log": "TRACKD_ACCESS_LOG",
    "data_dir": "TRACKD_DATA_DIR",
    "artifact_root": "TRACKD_ARTIFACT_ROOT",
    "grace_period": "TRACKD_GRACE_PERIOD",
    "max_message_bytes": "TRACKD_MAX_MESSAGE_BYTES",
    "ingest_writers": "TRACKD_INGEST_WRITERS",
    "ingest_max_queued_points": "TRACKD_INGEST_MAX_QUEUED_POINTS",
    "metrics_listen": "TRACKD_METRICS_LISTEN",
    "client_rate_limit": "TRACKD_CLIENT_RATE_LIMIT",
    "client_max_concurrency": "TRACKD_CLIENT_MAX_CONCURRENCY",
    "stream_idle_timeout": "TRACKD_STREAM_IDLE_TIMEOUT",
    "workers": "TRACKD_WORKERS",
    "reuse_port": "TRACKD_REUSE_PORT",
}


_BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _parse_bool(text: str) -> bool:
    try:
        return _BOOLS[text.strip().lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not a boolean (true/false, on/off, 1/0)") from None


def _parser(kind: type) -> Callable[[str], object]:
    """The function that reads a value of `kind` from text."""
    return _parse_bool if kind is bool else kind


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per Config field; each flag's default is unset, so that the
    environment and then the built-in default apply."""
    defaults = Config()
    for name, env in _ENV.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=name,
            default=None,
            type=_parser(type(getattr(defaults, name))),
            help=f"(env {env}; default {getattr(defaults, name)!r})",
        )


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """Builds the Config: a flag wins over its environment variable, which wins over the
    default."""
    env = os.environ if environ is None else environ
    defaults = Config()
    values: dict[str, object] = {}
    for name, var in _ENV.items():
        kind = type(getattr(defaults, name))
        flag_value = getattr(args, name, None)
        if flag_value is not None:
            values[name] = flag_value
        elif env.get(var):
            try:
                values[name] = _parser(kind)(env[var])
            except ValueError as exc:
                raise SystemExit(f"{var}={env[var]!r} is not a valid {kind.__name__}") from exc
    return Config(**values)  # type: ignore[arg-type]


def to_env(cfg: Config) -> dict[str, str]:
    """The TRACKD_* variables that make `resolve` give `cfg` back (for child processes)."""
    out = {}
    for name, var in _ENV.items():
        value = getattr(cfg, name)
        out[var] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def parse(argv: Sequence[str]) -> Config:
    """Config from command-line flags and the environment alone."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return resolve(parser.parse_args(argv))
