"""Wiring: the database, the domain, the servicers, health and reflection, and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from trackd.server.config import (
    Config,
    is_loopback,
    listen_problem,
    parse_address,
    pooled,
    setting,
)
from trackd.server.domain.artifacts import Artifacts
from trackd.server.domain.auth.authn import Authenticator
from trackd.server.domain.auth.jwt import JwtVerifier
from trackd.server.domain.auth.policy import Gate
from trackd.server.domain.compaction import Compactor
from trackd.server.domain.datasets import Datasets
from trackd.server.domain.envelopes import Envelopes
from trackd.server.domain.experiments import Experiments
from trackd.server.domain.ingest import Writers
from trackd.server.domain.liveness import Liveness
from trackd.server.domain.logged_models import LoggedModels
from trackd.server.domain.run_search import RunSearch
from trackd.server.domain.runs import Runs
from trackd.server.domain.streams import MetricStreams
from trackd.server.domain.watch import Watches
from trackd.server.http import meta
from trackd.server.http.front import HttpFront
from trackd.server.http.mlflow_api import MlflowApi
from trackd.server.http.mlflow_artifacts import MlflowArtifactsApi
from trackd.server.http.mlflow_models import MlflowModelsApi
from trackd.server.http.view_api import ViewApi
from trackd.server.http.web_static import WebFiles
from trackd.server.observability import Metrics
from trackd.server.service.artifacts import ArtifactService
from trackd.server.service.experiments import ExperimentService
from trackd.server.service.guard import Guard, Limits
from trackd.server.service.logged_models import LoggedModelService
from trackd.server.service.rpc import add_service
from trackd.server.service.runs import RunService
from trackd.server.startup import StartupError, explain_database_error
from trackd.server.store import migrate
from trackd.server.store.blobs import open_store
from trackd.server.store.pool import Database
from trackd.v1 import (
    artifact_service_pb2,
    experiment_service_pb2,
    logged_model_service_pb2,
    run_service_pb2,
)

log = logging.getLogger(__name__)

SERVICES = (
    experiment_service_pb2.DESCRIPTOR.services_by_name["ExperimentService"],
    run_service_pb2.DESCRIPTOR.services_by_name["RunService"],
    logged_model_service_pb2.DESCRIPTOR.services_by_name["LoggedModelService"],
    artifact_service_pb2.DESCRIPTOR.services_by_name["ArtifactService"],
)
# Seconds between two sweeps of abandoned uploads and unreferenced artifact objects.
SWEEP_EVERY_S = 300.0


@dataclass
class Running:
    """A started server: its gRPC server, bound port, database and health servicer."""

    server: grpc.aio.Server
    port: int
    db: Database
    health: health_aio.HealthServicer
    writers: Writers
    streams: MetricStreams
    metrics: Metrics
    metrics_port: int | None = None
    artifacts: Artifacts | None = None
    sweeper: asyncio.Task[None] | None = None
    watches: Watches | None = None
    compactor: Compactor | None = None
    # The HTTP front (MLflow's REST API) and its bound port, when --http-listen is set.
    http: HttpFront | None = None
    http_port: int | None = None

    async def stop(self, grace: float | None) -> None:
        """Stops accepting calls, lets in-flight ones finish within `grace` seconds, then
        closes the pool."""
        for svc in SERVICES:
            await self.health.set(svc.full_name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        self.streams.drain()
        if self.http is not None:
            await self.http.stop()
        if self.watches is not None:
            await self.watches.stop()
        await self.server.stop(grace)
        if self.sweeper is not None:
            self.sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sweeper
        if self.artifacts is not None:
            await self.artifacts.blobs.close()
        if self.compactor is not None:
            await self.compactor.stop()
        await self.writers.stop()
        await self.db.close()


async def migrate_database(db: Database, direct_url: str = "") -> list[str]:
    """Applies pending migrations; returns the names applied. They hold a session-level
    advisory lock, so they run on a connection of their own to `direct_url` (PostgreSQL
    itself, not a pooler) when given, else on one of the pool's."""
    if not direct_url:
        async with db.pool.acquire() as conn:
            return await migrate.migrate(conn)
    direct = await asyncpg.connect(direct_url, server_settings={"application_name": "trackd"})
    try:
        return await migrate.migrate(direct)
    finally:
        await direct.close()


async def connect_database(
    url: str, *, min_size: int, max_size: int, pooled: bool = False
) -> Database:
    """Opens the pool (`pooled`: `url` is a pooler in transaction mode); a database that
    cannot be reached or refuses trackd raises StartupError saying why and naming the
    setting (with the password masked)."""
    try:
        return await Database.connect(url, min_size=min_size, max_size=max_size, pooled=pooled)
    except Exception as exc:
        explained = explain_database_error(exc, url)
        if explained is None:
            raise
        raise explained from exc


async def attach_replica(db: Database, config: Config) -> None:
    """Opens the read replica's pool (StartupError if it cannot be reached)."""
    url = config.read_database_url
    try:
        await db.attach_replica(url, min_size=1, max_size=config.pool_max_size)
    except Exception as exc:
        explained = explain_database_error(exc, url)
        if explained is None:
            raise
        raise explained from exc


async def prepare_database(db: Database, url: str, direct_url: str = "") -> list[str]:
    """Applies pending migrations (over `direct_url` when given; StartupError if the
    database refuses them or cannot be reached there)."""
    try:
        return await migrate_database(db, direct_url)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise (explain_database_error(exc, direct_url or url) or exc) from exc
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if not direct_url:
            raise
        explained = explain_database_error(exc, direct_url)
        if explained is None:
            raise
        raise StartupError(
            f"{explained} (the direct URL: {setting('direct_database_url')})"
        ) from exc


def _read(path: str, name: str) -> bytes:
    """The bytes of file `path` (Config field `name`); StartupError naming the setting if
    it cannot be read. Its content never appears in a message."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise StartupError(
            f"cannot read {path}: {exc.strerror or exc}; fix {setting(name)}"
        ) from None
    if b"-----BEGIN " not in data:
        raise StartupError(f"{path} is not a PEM file; fix {setting(name)}")
    return data


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """TLS credentials from --tls-cert/--tls-key (requiring client certificates signed by
    --tls-client-ca when set); None to serve plaintext."""
    if not config.tls_cert:
        return None
    cert = _read(config.tls_cert, "tls_cert")
    key = _read(config.tls_key, "tls_key")
    ca = _read(config.tls_client_ca, "tls_client_ca") if config.tls_client_ca else None
    try:
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )
    except (RuntimeError, ValueError) as exc:
        raise StartupError(
            f"cannot use the TLS certificate and key ({type(exc).__name__}); fix "
            f"{setting('tls_cert')} and {setting('tls_key')}"
        ) from None


def authenticator(config: Config, db: Database) -> Authenticator | None:
    """The Authenticator of `config`, or None when auth is off."""
    if not config.auth_enabled:
        return None
    verifier = None
    if config.jwt_enabled:
        verifier = JwtVerifier(
            config.jwt_issuer,
            config.jwt_jwks_url,
            config.jwt_audience,
            config.jwt_groups_claim,
            config.jwt_admin_group,
        )
    return Authenticator(
        db, jwt=verifier, mtls=config.mtls_enabled, token_ttl=config.auth_cache_ttl
    )


def auth_summary(config: Config) -> str:
    """One line saying how calls are authenticated (no secret in it)."""
    tls = "TLS" if config.tls_cert else "plaintext"
    if not config.auth_enabled:
        where = "loopback only" if is_loopback(config.listen) else "--allow-unauthenticated"
        return (
            f"auth is off ({where}, {tls}): every caller is an admin; turn it on with "
            f"{setting('auth')} on"
        )
    ways = ["API tokens"]
    if config.jwt_enabled:
        ways.append(f"JWTs from {config.jwt_issuer} for {config.jwt_audience}")
    if config.mtls_enabled:
        ways.append("client certificates")
    return f"auth is on ({tls}): " + ", ".join(ways)


def open_artifacts(config: Config, db: Database) -> Artifacts:
    """The artifacts domain over the store config.artifact_root names (StartupError naming
    the setting when it cannot be opened)."""
    try:
        blobs = open_store(config.artifact_root, Path(config.data_dir))
    except (ValueError, OSError) as exc:
        raise StartupError(
            f"cannot open the artifact store: {exc}; change {setting('artifact_root')}"
        ) from exc
    return Artifacts(
        db,
        blobs,
        max_bytes=config.artifact_max_bytes,
        upload_ttl_s=config.artifact_upload_ttl,
    )


async def start(config: Config, database_url: str) -> Running:
    """Migrates the database and starts serving on config.listen (port 0 picks a free one)."""
    credentials = server_credentials(config)
    db = await connect_database(
        database_url,
        min_size=config.pool_min_size,
        max_size=config.pool_max_size,
        pooled=pooled(config),
    )
    # PostgreSQL itself, for what needs a session of its own (migrations, LISTEN).
    direct_url = config.direct_database_url or database_url
    try:
        await prepare_database(db, database_url, config.direct_database_url)
        if config.read_database_url:
            await attach_replica(db, config)
        artifacts = open_artifacts(config, db)
        experiments = Experiments(db, config.artifact_root or artifacts.blobs.uri)
        await experiments.set_default_location()
    except BaseException:
        await db.close()
        raise
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 1 if config.reuse_port else 0),
            # Find dead peers: a ping after 30 s of silence, 10 s to answer it.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
    )
    metrics = Metrics()
    guard = Guard(
        Limits(config.client_rate_limit, config.client_max_concurrency),
        metrics,
        access_log=config.access_log,
        authenticator=authenticator(config, db),
    )
    if db.replica is not None:
        guard.write_lsn = db.write_lsn
        replica = db.replica
        metrics.watch_replica(lambda: replica.reads, lambda: replica.fallbacks)
    add_service(server, ExperimentService(experiments, Datasets(db)), SERVICES[0], guard)

    compactor = (
        Compactor(
            db,
            sweep_every=config.compaction_sweep_interval,
            on_compacted=metrics.compacted.inc,
        )
        if config.compaction
        else None
    )
    writers = Writers(
        db,
        writers=config.ingest_writers,
        max_queued_points=config.ingest_max_queued_points,
        on_commit=metrics.committed,
        on_grown=compactor.note if compactor is not None else None,
    )
    if compactor is not None:
        compactor.busy = writers.busy
    writers.start()
    streams = MetricStreams(writers, idle_timeout=config.stream_idle_timeout)
    watches = Watches(db, direct_url, retention=config.watch_retention)
    await watches.start()
    liveness = Liveness(config.liveness_window)
    runs = Runs(db, writers, liveness)
    run_search = RunSearch(db, liveness, walk_min_runs=config.search_walk_min_runs)
    datasets = Datasets(db)
    logged_models = LoggedModels(db)
    envelopes = Envelopes(db)
    add_service(
        server,
        RunService(runs, run_search, streams, envelopes, watches),
        SERVICES[1],
        guard,
    )
    add_service(server, LoggedModelService(logged_models), SERVICES[2], guard)
    add_service(server, ArtifactService(artifacts), SERVICES[3], guard)
    metrics.watch(
        queued=lambda: writers.queued_points,
        pool_size=db.pool.get_size,
        pool_idle=db.pool.get_idle_size,
        streams=lambda: streams.open,
    )
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [svc.full_name for svc in SERVICES]
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    try:
        if credentials is None:
            port = server.add_insecure_port(config.listen)
        else:
            port = server.add_secure_port(config.listen, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        await watches.stop()
        await writers.stop()
        await db.close()
        raise StartupError(
            listen_problem(config.listen, "listen")
            or f"cannot listen on {config.listen}: gRPC refused it; change {setting('listen')}"
        )
    try:
        metrics_port = metrics.serve(config.metrics_listen) if config.metrics_listen else None
    except OSError as exc:
        await watches.stop()
        await writers.stop()
        await db.close()
        raise StartupError(
            listen_problem(config.metrics_listen, "metrics_listen")
            or f"cannot serve metrics on {config.metrics_listen}: {exc.strerror or exc}; "
            f"change {setting('metrics_listen')}"
        ) from exc
    http: HttpFront | None = None
    http_port: int | None = None
    if config.http_listen:
        apis = (
            MlflowApi(None, experiments, runs, run_search, datasets),
            MlflowModelsApi(None, logged_models),
            MlflowArtifactsApi(None, artifacts),
            ViewApi(
                None,
                experiments,
                runs,
                run_search,
                envelopes,
                watches,
                artifacts,
                logged_models,
            ),
        )
        http = HttpFront(
            guard,
            Gate(db),
            [*meta.routes(), *(r for a in apis for r in a.routes()), *WebFiles().routes()],
        )
        for api in apis:
            api.front = http
        host, port_ = parse_address(config.http_listen, "http_listen")
        try:
            http_port = await http.start(host, port_, reuse_port=config.reuse_port)
        except OSError as exc:
            await watches.stop()
            await writers.stop()
            await db.close()
            raise StartupError(
                listen_problem(config.http_listen, "http_listen")
                or f"cannot serve HTTP on {config.http_listen}: {exc.strerror or exc}; "
                f"change {setting('http_listen')}"
            ) from exc
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    sweeper = asyncio.create_task(artifacts.sweep_forever(SWEEP_EVERY_S))
    if compactor is not None:
        compactor.start()
    return Running(
        server,
        port,
        db,
        health_servicer,
        writers,
        streams,
        metrics,
        metrics_port,
        artifacts,
        sweeper,
        watches,
        compactor,
        http,
        http_port,
    )


async def serve(config: Config, database_url: str) -> None:
    """Serves until SIGTERM or SIGINT, then drains in-flight calls and exits."""
    running = await start(config, database_url)
    log.info("trackd listening on %s (port %s)", config.listen, running.port)
    if running.http is not None:
        log.info("MLflow REST API on http://%s (port %s)", config.http_listen, running.http_port)
    log.info("%s", auth_summary(config))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining in-flight calls for up to %ss", config.grace_period)
    await running.stop(config.grace_period)
    log.info("stopped")
