"""Server configuration: flags over TRACKD_* environment variables over defaults."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from trackd.server.startup import StartupError, bind_failure, mask_url


@dataclass(frozen=True)
class Config:
    """Everything `trackd serve` needs to start."""

    listen: str = "127.0.0.1:50051"
    # Empty: start an embedded PostgreSQL whose data lives under data_dir.
    database_url: str = ""
    # A streaming replica of database_url for reads that tolerate lag (run search, finished
    # runs' metric history, envelopes), used when it has replayed the caller's writes.
    # Empty: every read goes to database_url.
    read_database_url: str = ""
    # "off": database_url reaches PostgreSQL itself. "transaction": it reaches a pooler in
    # transaction pooling mode (pgbouncer): no prepared statements are kept, no session
    # settings are sent at connect, and what needs a session of its own (migrations under
    # an advisory lock, the watch listener's LISTEN) uses direct_database_url.
    database_pooler: str = "off"
    # PostgreSQL itself, bypassing the pooler, for what needs a real session (migrations,
    # LISTEN). Required with database_pooler = transaction; empty: database_url.
    direct_database_url: str = ""
    pool_min_size: int = 2
    pool_max_size: int = 10
    log_level: str = "INFO"
    # "json" (one object per line), "text", or "auto": text when stderr is a terminal,
    # JSON otherwise.
    log_format: str = "auto"
    # One access-log line per call (INFO for OK and expected client errors).
    access_log: bool = True
    data_dir: str = ".trackd"
    # Where artifact bytes are stored: a directory (or file:// URI), or an S3-compatible
    # bucket and prefix (s3://bucket/prefix, credentials and endpoint from AWS_*
    # variables). Empty: `<data_dir>/artifacts`.
    artifact_root: str = ""
    # Largest artifact file accepted, in bytes (10 GiB).
    artifact_max_bytes: int = 10 * 1024**3
    # Seconds an upload may stay untouched before the sweep removes it as abandoned.
    artifact_upload_ttl: float = 86_400.0
    # Seconds in-flight calls get to finish after SIGTERM.
    grace_period: float = 10.0
    # Largest request a unary call accepts, in bytes.
    max_message_bytes: int = 4 * 1024 * 1024
    # Group-commit writer tasks (each commits on its own connection).
    ingest_writers: int = 2
    # Metric points queued for the writers before new writes wait (backpressure).
    ingest_max_queued_points: int = 1_000_000
    # Compact older metric points into blocks in the background (README, "Compact metric
    # storage"); off keeps every point a row.
    compaction: bool = True
    # Seconds between two sweeps of every series for rows to compact (one also at start).
    compaction_sweep_interval: float = 3600.0
    # A search ordered by a metric's latest value walks that metric's index, experiment by
    # experiment, when the searched experiments hold at least this many runs; over fewer,
    # one query over their runs is faster (README, "How search runs"). 0: always walk.
    search_walk_min_runs: int = 10_000
    # Seconds WatchRun positions stay resumable (the watch log keeps events this long).
    watch_retention: float = 3600.0
    # HOST:PORT for Prometheus metrics over HTTP; empty turns them off.
    metrics_listen: str = ""
    # HOST:PORT of the HTTP front (MLflow's REST API and artifact proxy); empty turns it
    # off. `make run` serves it on 127.0.0.1:5000, MLflow's port.
    http_listen: str = ""
    # Per-client limits (a client is its x-client-id metadata, else its address); 0 is off.
    client_rate_limit: float = 0.0
    client_max_concurrency: int = 0
    # Seconds a StreamMetrics call may stay silent before the server ends it.
    stream_idle_timeout: float = 300.0
    # Seconds a RUNNING run may send no heartbeat and no metric point before it reads as
    # UNRESPONSIVE.
    liveness_window: float = 120.0
    # Server processes sharing the listening port (SO_REUSEPORT); 1 serves in-process.
    workers: int = 1
    # Let other processes bind the same port (set for each of --workers' processes).
    reuse_port: bool = False
    # "on" authenticates every call (API tokens, plus JWT and mTLS when configured); "off"
    # serves everyone as the anonymous admin. Configuring JWT or a client CA turns it on.
    auth: str = "off"
    # Serve TLS with this certificate chain and private key (PEM files).
    tls_cert: str = ""
    tls_key: str = ""
    # Require client certificates signed by this CA (PEM); the certificate names the caller.
    tls_client_ca: str = ""
    # OIDC / JWT bearer tokens: the issuer (`iss`), its JWKS URL and the audience (`aud`).
    jwt_issuer: str = ""
    jwt_jwks_url: str = ""
    jwt_audience: str = ""
    # The claim holding the caller's groups, and the group whose members are admins.
    jwt_groups_claim: str = "groups"
    jwt_admin_group: str = ""
    # Seconds a verified credential is trusted before it is checked again (a revoked API
    # token stops working within this time); never past the credential's own expiry.
    auth_cache_ttl: float = 5.0
    # Serve a non-loopback address without any authenticator (everyone is an admin).
    allow_unauthenticated: bool = False

    @property
    def jwt_enabled(self) -> bool:
        """Whether JWT bearer tokens are accepted."""
        return bool(self.jwt_jwks_url)

    @property
    def mtls_enabled(self) -> bool:
        """Whether clients must present a certificate signed by tls_client_ca."""
        return bool(self.tls_client_ca)

    @property
    def auth_enabled(self) -> bool:
        """Whether calls are authenticated (API tokens always are, once it is on)."""
        return self.auth == "on" or self.jwt_enabled or self.mtls_enabled


_ENV = {
    "listen": "TRACKD_LISTEN",
    "database_url": "TRACKD_DATABASE_URL",
    "read_database_url": "TRACKD_READ_DATABASE_URL",
    "database_pooler": "TRACKD_DATABASE_POOLER",
    "direct_database_url": "TRACKD_DIRECT_DATABASE_URL",
    "pool_min_size": "TRACKD_POOL_MIN_SIZE",
    "pool_max_size": "TRACKD_POOL_MAX_SIZE",
    "log_level": "TRACKD_LOG_LEVEL",
    "log_format": "TRACKD_LOG_FORMAT",
    "access_log": "TRACKD_ACCESS_LOG",
    "data_dir": "TRACKD_DATA_DIR",
    "artifact_root": "TRACKD_ARTIFACT_ROOT",
    "artifact_max_bytes": "TRACKD_ARTIFACT_MAX_BYTES",
    "artifact_upload_ttl": "TRACKD_ARTIFACT_UPLOAD_TTL",
    "grace_period": "TRACKD_GRACE_PERIOD",
    "max_message_bytes": "TRACKD_MAX_MESSAGE_BYTES",
    "ingest_writers": "TRACKD_INGEST_WRITERS",
    "ingest_max_queued_points": "TRACKD_INGEST_MAX_QUEUED_POINTS",
    "compaction": "TRACKD_COMPACTION",
    "compaction_sweep_interval": "TRACKD_COMPACTION_SWEEP_INTERVAL",
    "search_walk_min_runs": "TRACKD_SEARCH_WALK_MIN_RUNS",
    "watch_retention": "TRACKD_WATCH_RETENTION",
    "metrics_listen": "TRACKD_METRICS_LISTEN",
    "http_listen": "TRACKD_HTTP_LISTEN",
    "client_rate_limit": "TRACKD_CLIENT_RATE_LIMIT",
    "client_max_concurrency": "TRACKD_CLIENT_MAX_CONCURRENCY",
    "stream_idle_timeout": "TRACKD_STREAM_IDLE_TIMEOUT",
    "liveness_window": "TRACKD_LIVENESS_WINDOW",
    "workers": "TRACKD_WORKERS",
    "reuse_port": "TRACKD_REUSE_PORT",
    "auth": "TRACKD_AUTH",
    "tls_cert": "TRACKD_TLS_CERT",
    "tls_key": "TRACKD_TLS_KEY",
    "tls_client_ca": "TRACKD_TLS_CLIENT_CA",
    "jwt_issuer": "TRACKD_JWT_ISSUER",
    "jwt_jwks_url": "TRACKD_JWT_JWKS_URL",
    "jwt_audience": "TRACKD_JWT_AUDIENCE",
    "jwt_groups_claim": "TRACKD_JWT_GROUPS_CLAIM",
    "jwt_admin_group": "TRACKD_JWT_ADMIN_GROUP",
    "auth_cache_ttl": "TRACKD_AUTH_CACHE_TTL",
    "allow_unauthenticated": "TRACKD_ALLOW_UNAUTHENTICATED",
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


_KIND_NAMES = {bool: "a boolean (true/false, on/off, 1/0)", int: "an integer", float: "a number"}

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
LOG_FORMATS = ("auto", "json", "text")

# Smallest accepted value of each numeric setting.
_MINIMUMS: dict[str, float] = {
    "pool_min_size": 0,
    "pool_max_size": 1,
    "grace_period": 0,
    "max_message_bytes": 1,
    "ingest_writers": 1,
    "ingest_max_queued_points": 1,
    "watch_retention": 1,
    "compaction_sweep_interval": 0.001,
    "search_walk_min_runs": 0,
    "client_rate_limit": 0,
    "client_max_concurrency": 0,
    "stream_idle_timeout": 0.001,
    "liveness_window": 0.001,
    "workers": 1,
    "auth_cache_ttl": 0,
    "artifact_max_bytes": 0,
    "artifact_upload_ttl": 1,
}

AUTH_MODES = ("off", "on")
POOLER_MODES = ("off", "transaction")

_PORT_RE = re.compile(r"[0-9]{1,5}")


def env_var(name: str) -> str:
    """The environment variable of Config field `name`."""
    return _ENV[name]


def setting(name: str) -> str:
    """How a user sets Config field `name`: `--flag / TRACKD_VAR`."""
    return f"--{name.replace('_', '-')} / {_ENV[name]}"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (not usage plus an error) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per Config field; each flag's default is unset, so that the
    environment and then the built-in default apply."""
    defaults = Config()
    for name, env in _ENV.items():
        flag = "--" + name.replace("_", "-")
        kind = type(getattr(defaults, name))
        # A boolean flag alone means true (`--allow-unauthenticated`); `--flag off` too.
        extra: dict[str, object] = {"nargs": "?", "const": True} if kind is bool else {}
        parser.add_argument(
            flag,
            dest=name,
            default=None,
            type=_parser(kind),
            help=f"(env {env}; default {getattr(defaults, name)!r})",
            **extra,  # type: ignore[arg-type]
        )


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """Builds the Config: a flag wins over its environment variable, which wins over the
    default. A value that cannot be used raises StartupError naming the setting."""
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
            except ValueError:
                raise StartupError(
                    f"{var}={env[var]!r} is not {_KIND_NAMES[kind]} ({setting(name)})"
                ) from None
    return validate(Config(**values))  # type: ignore[arg-type]


def parse_address(text: str, name: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT setting; StartupError naming the setting if malformed."""
    where = setting(name)
    host, colon, port = text.rpartition(":")
    shape = "HOST:PORT, such as 127.0.0.1:50051, 0.0.0.0:50051 or [::1]:50051"
    if not colon or not host:
        raise StartupError(f"{where} must be {shape}; got {text!r}")
    if not _PORT_RE.fullmatch(port) or int(port) > 65535:
        raise StartupError(f"{where}: the port of {text!r} must be a number from 0 to 65535")
    if host.startswith("[") != host.endswith("]") or host in ("[]", "[", "]"):
        raise StartupError(f"{where} must be {shape}; got {text!r}")
    if ":" in host and not host.startswith("["):
        raise StartupError(f"{where}: write an IPv6 host in brackets ([::1]:50051); got {text!r}")
    if any(c.isspace() for c in host):
        raise StartupError(f"{where} must be {shape}; got {text!r}")
    return host, int(port)


def is_unix_address(listen: str) -> bool:
    """Whether `listen` names a Unix socket (gRPC's `unix:PATH`), not HOST:PORT."""
    return listen.startswith(("unix:", "unix-abstract:"))


def listen_problem(address: str, name: str) -> str | None:
    """Why nothing can listen on `address` (Config field `name`) right now, as a one-line
    message naming the setting; None if a probe socket could bind it."""
    if is_unix_address(address):
        return None
    host, port = parse_address(address, name)
    reason = bind_failure(host, port)
    if reason is None:
        return None
    return f"cannot listen on {address}: {reason}; change {setting(name)}"


def validate(cfg: Config) -> Config:
    """`cfg`, if every value is usable; else StartupError naming the setting to change.
    Runs before anything starts (the embedded PostgreSQL included)."""
    if is_unix_address(cfg.listen):
        if cfg.workers > 1:
            raise StartupError(
                f"{setting('workers')} above 1 needs a HOST:PORT {setting('listen')}, "
                f"not {cfg.listen!r}"
            )
    else:
        parse_address(cfg.listen, "listen")
    if cfg.metrics_listen:
        parse_address(cfg.metrics_listen, "metrics_listen")
    if cfg.http_listen:
        parse_address(cfg.http_listen, "http_listen")
    url = cfg.database_url
    if url and not url.startswith(("postgresql://", "postgres://")):
        raise StartupError(
            f"{setting('database_url')} must be a postgresql:// URL (or empty for the "
            f"embedded PostgreSQL); got {mask_url(url)!r}"
        )
    _validate_pooler(cfg)
    read_url = cfg.read_database_url
    if read_url and not read_url.startswith(("postgresql://", "postgres://")):
        raise StartupError(
            f"{setting('read_database_url')} must be a postgresql:// URL (or empty); "
            f"got {mask_url(read_url)!r}"
        )
    if cfg.log_level.upper() not in LOG_LEVELS:
        raise StartupError(
            f"{setting('log_level')} must be one of {', '.join(LOG_LEVELS)}; got {cfg.log_level!r}"
        )
    if cfg.log_format not in LOG_FORMATS:
        raise StartupError(
            f"{setting('log_format')} must be one of {', '.join(LOG_FORMATS)}; "
            f"got {cfg.log_format!r}"
        )
    if not cfg.data_dir:
        raise StartupError(f"{setting('data_dir')} must not be empty")
    scheme = cfg.artifact_root.partition("://")[0] if "://" in cfg.artifact_root else ""
    if scheme not in ("", "file", "s3"):
        raise StartupError(
            f"{setting('artifact_root')} must be a directory, a file:// or an s3:// URI; "
            f"got a {scheme}:// URI"
        )
    for name, least in _MINIMUMS.items():
        value = getattr(cfg, name)
        if not math.isfinite(value) or value < least:
            raise StartupError(f"{setting(name)} must be at least {least:g}; got {value}")
    _validate_auth(cfg)
    return cfg


def _validate_pooler(cfg: Config) -> None:
    """StartupError naming the setting if the pooler settings cannot work."""
    if cfg.database_pooler not in POOLER_MODES:
        raise StartupError(
            f"{setting('database_pooler')} must be one of {', '.join(POOLER_MODES)}; "
            f"got {cfg.database_pooler!r}"
        )
    direct = cfg.direct_database_url
    if direct and not direct.startswith(("postgresql://", "postgres://")):
        raise StartupError(
            f"{setting('direct_database_url')} must be a postgresql:// URL; "
            f"got {mask_url(direct)!r}"
        )
    if cfg.database_pooler == "off":
        return
    if not cfg.database_url:
        raise StartupError(
            f"{setting('database_pooler')} {cfg.database_pooler} needs "
            f"{setting('database_url')} (the pooler's URL); the embedded PostgreSQL has no pooler"
        )
    if not direct:
        raise StartupError(
            f"{setting('database_pooler')} {cfg.database_pooler} needs "
            f"{setting('direct_database_url')}: PostgreSQL's own URL, for migrations (an "
            f"advisory lock) and the watch listener (LISTEN), which need a session of their own"
        )


def pooled(cfg: Config) -> bool:
    """Whether database_url reaches a transaction-pooling pooler."""
    return cfg.database_pooler != "off"


def _validate_auth(cfg: Config) -> None:
    """StartupError naming the setting if the authentication or TLS settings cannot work
    together (the files themselves are read when the server starts)."""
    if cfg.auth not in AUTH_MODES:
        raise StartupError(f"{setting('auth')} must be one of off, on; got {cfg.auth!r}")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise StartupError(f"{setting('tls_cert')} and {setting('tls_key')} go together")
    if cfg.tls_client_ca and not cfg.tls_cert:
        raise StartupError(
            f"{setting('tls_client_ca')} needs TLS: set {setting('tls_cert')} and "
            f"{setting('tls_key')}"
        )
    jwt_names = ("jwt_issuer", "jwt_jwks_url", "jwt_audience")
    if any(getattr(cfg, n) for n in (*jwt_names, "jwt_admin_group")):
        missing = [setting(n) for n in jwt_names if not getattr(cfg, n)]
        if missing:
            raise StartupError(f"JWT authentication also needs {', '.join(missing)}")
        if not cfg.jwt_jwks_url.startswith(("https://", "http://")):
            raise StartupError(
                f"{setting('jwt_jwks_url')} must be an https:// URL (http:// only on a "
                f"trusted network); got {cfg.jwt_jwks_url!r}"
            )
    if not cfg.jwt_groups_claim:
        raise StartupError(f"{setting('jwt_groups_claim')} must not be empty")


def is_loopback(listen: str) -> bool:
    """Whether `listen` is reachable from this machine only: a Unix socket, or a host
    that names or resolves to loopback addresses only (127.0.0.0/8, ::1)."""
    if is_unix_address(listen):
        return True
    host = listen.rpartition(":")[0].strip("[]")
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def exposure_problem(cfg: Config) -> str | None:
    """Why `cfg` must not serve: a non-loopback address with no authenticator and no
    --allow-unauthenticated (one line naming the settings); None if it may."""
    if cfg.auth_enabled or cfg.allow_unauthenticated:
        return None
    for name in ("listen", "http_listen"):
        address = getattr(cfg, name)
        if address and not is_loopback(address):
            return (
                f"refusing to serve {address} ({setting(name)}) without authentication: "
                f"anyone reaching it could read and delete everything; turn it on "
                f"({setting('auth')} on, or JWT or mTLS settings) or accept the risk with "
                f"{setting('allow_unauthenticated')}"
            )
    return None


def to_env(cfg: Config) -> dict[str, str]:
    """The TRACKD_* variables that make `resolve` give `cfg` back (for child processes)."""
    out = {}
    for name, var in _ENV.items():
        value = getattr(cfg, name)
        out[var] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def parse(argv: Sequence[str]) -> Config:
    """Config from command-line flags and the environment alone."""
    parser = Parser()
    add_arguments(parser)
    return resolve(parser.parse_args(argv))
