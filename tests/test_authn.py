"""Authentication against a real server: API tokens (malformed, unknown, expired, revoked,
cached for the TTL), JWTs verified against a JWKS served on 127.0.0.1 by the test (good and
bad signatures, audience, issuer, expiry, algorithm confusion, groups), mTLS with
certificates made by the test, the clients' `token=` and `tls=`, the run logger across a
restart, per-principal limits, the refusal to serve a non-loopback address open, and the
absence of every secret from an authenticated session's logs."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import server_config
from helpers import error_info
from trackd.client import AsyncClient, Client, UnauthenticatedError
from trackd.client.credentials import TlsConfig
from trackd.server import app
from trackd.server.app import Running
from trackd.server.domain.auth import tokens
from trackd.server.domain.auth.authn import certificate_identity
from trackd.server.domain.auth.jwt import JwtVerifier
from trackd.server.store import identity
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import experiment_service_pb2_grpc

ISSUER = "https://issuer.test"
AUDIENCE = "trackd-test"
KID = "k1"
TRACKD = [sys.executable, "-m", "trackd.server"]


# -- a JWKS on 127.0.0.1 -----------------------------------------------------------------------


@dataclass
class Issuer:
    """An OIDC issuer made by the test: its signing key and its JWKS URL."""

    key: rsa.RSAPrivateKey
    jwks_url: str

    def token(self, key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ana", "exp": now + 600, "iat": now}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, key or self.key, algorithm="RS256", headers={"kid": KID})


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    """A JWKS with one RSA key, served by a thread on 127.0.0.1 (stopped at the end)."""
    key = _rsa()
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    body = json.dumps({"keys": [{**jwk, "kid": KID, "alg": "RS256", "use": "sig"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/jwks.json" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Issuer(key, f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# -- certificates -------------------------------------------------------------------------------


def _cert(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    sans: list[x509.GeneralName] | None = None,
    ca: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    cn_only_cert: Path


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and localhost, a client certificate with a
    SPIFFE URI, and one with only a common name."""
    d = tmp_path_factory.mktemp("pki")
    ca_key = _rsa()
    ca = _cert("trackd test CA", ca_key, None, ca=True)
    import ipaddress

    server_key = _rsa()
    server = _cert(
        "trackd",
        server_key,
        (ca, ca_key),
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = _rsa()
    client = _cert(
        "svc-a",
        client_key,
        (ca, ca_key),
        [x509.UniformResourceIdentifier("spiffe://trackd.test/svc-a"), x509.DNSName("svc-a")],
    )
    cn_only = _cert("svc-b", client_key, (ca, ca_key))
    return Pki(
        _write_cert(d / "ca.pem", ca),
        _write_cert(d / "server.pem", server),
        _write_key(d / "server.key", server_key),
        _write_cert(d / "client.pem", client),
        _write_key(d / "client.key", client_key),
        _write_cert(d / "cn-only.pem", cn_only),
    )


# -- the server ----------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(database_url: str, issuer: Issuer) -> AsyncIterator[Running]:
    """trackd with auth on: API tokens (trusted 0.3 s once checked) and JWTs."""
    running = await app.start(
        server_config(
            auth="on",
            jwt_issuer=ISSUER,
            jwt_jwks_url=issuer.jwks_url,
            jwt_audience=AUDIENCE,
            jwt_admin_group="trackd-admins",
            auth_cache_ttl=0.3,
        ),
        database_url,
    )
    yield running
    await running.stop(1.0)


async def _token(running: Running, principal: str, **kwargs: Any) -> str:
    name = f"t{time.monotonic_ns()}"
    return (await tokens.create(running.db, principal, name, **kwargs)).secret


async def _get(running: Running, metadata: Any = None, *, target: str | None = None) -> Any:
    async with grpc.aio.insecure_channel(target or f"127.0.0.1:{running.port}") as ch:
        stub = experiment_service_pb2_grpc.ExperimentServiceStub(ch)
        return await stub.GetExperiment(
            epb.GetExperimentRequest(experiment_id="0"), metadata=metadata, timeout=10
        )


async def _unauthenticated(running: Running, metadata: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await _get(running, metadata)
    err = exc.value
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
    assert error_info(err).reason == "UNAUTHENTICATED"
    return err


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# -- API tokens ----------------------------------------------------------------------------------


async def test_a_call_without_credentials_is_unauthenticated(server: Running) -> None:
    await _unauthenticated(server, None)


async def test_health_and_reflection_stay_open(server: Running) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", "Basic YWRtaW46YWRtaW4="),),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer "),),
        (("authorization", "tkd_abc"),),
        _bearer("tkd_short"),
        _bearer("tkd_" + "A" * 43),  # well-formed, unknown
        _bearer("not-a-jwt"),
        _bearer("a.b.c"),
        (*_bearer("tkd_" + "A" * 43), *_bearer("tkd_" + "B" * 43)),
    ],
    ids=[
        "basic",
        "bearer-empty",
        "bearer-space",
        "no-scheme",
        "short",
        "unknown",
        "garbage",
        "bad-jwt",
        "two-values",
    ],
)
async def test_malformed_or_unknown_credentials_are_unauthenticated(
    server: Running, metadata: Any
) -> None:
    await _unauthenticated(server, metadata)


async def test_a_good_token_is_accepted_and_its_secret_is_stored_only_as_a_hash(
    server: Running,
) -> None:
    secret = await _token(server, "admin", admin=True)
    assert secret.startswith("tkd_") and len(secret) == 47
    answer = await _get(server, _bearer(secret))
    assert answer.experiment.experiment_id == "0"
    async with server.db.pool.acquire() as conn:
        stored = await conn.fetch("SELECT secret_hash FROM api_tokens")
    assert tokens.hash_secret(secret) in {bytes(r["secret_hash"]) for r in stored}
    assert all(secret.encode() not in bytes(r["secret_hash"]) for r in stored)


async def test_an_expired_token_is_unauthenticated(server: Running) -> None:
    secret = tokens.new_secret()
    now = tokens.now_ms()
    async with server.db.pool.acquire() as conn:
        await identity.insert_token(
            conn, "old", "expired", tokens.hash_secret(secret), True, now - 10_000, now - 1
        )
    err = await _unauthenticated(server, _bearer(secret))
    assert "expired" in (err.details() or "")


async def test_a_token_expiring_soon_stops_at_its_expiry_not_after_the_cache_ttl(
    server: Running,
) -> None:
    made = await tokens.create(server.db, "brief", "b", admin=True, expires=tokens.now_ms() + 600)
    await _get(server, _bearer(made.secret))
    await asyncio.sleep(0.7)
    await _unauthenticated(server, _bearer(made.secret))


async def test_a_revoked_token_stops_working_within_the_cache_ttl(server: Running) -> None:
    made = await tokens.create(server.db, "revokee", "r", admin=True)
    await _get(server, _bearer(made.secret))
    await tokens.revoke(server.db, token_id=made.token_id)
    # Trusted for auth_cache_ttl (0.3 s here, 5 s by default) after its last check...
    await _get(server, _bearer(made.secret))
    await asyncio.sleep(0.4)
    # ...then checked again, and refused.
    err = await _unauthenticated(server, _bearer(made.secret))
    assert "revoked" in (err.details() or "")


async def test_the_error_never_echoes_the_credential(server: Running) -> None:
    secret = "tkd_" + "Z" * 43
    err = await _unauthenticated(server, _bearer(secret))
    assert secret not in (err.details() or "")
    assert "Z" * 20 not in str(err.trailing_metadata())


async def test_the_clients_send_the_token_argument_or_trackd_token(
    server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = await _token(server, "admin", admin=True)
    target = f"127.0.0.1:{server.port}"
    async with AsyncClient(target, token=secret) as c:
        assert (await c.get_experiment("0")).experiment_id == "0"
    async with AsyncClient(target) as c:
        with pytest.raises(UnauthenticatedError) as exc:
            await c.get_experiment("0")
        assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert exc.value.reason == "UNAUTHENTICATED"
    monkeypatch.setenv("TRACKD_TOKEN", secret)

    def sync_call() -> str:
        with Client(target) as c:
            return c.get_experiment("0").experiment_id

    assert await asyncio.to_thread(sync_call) == "0"


# -- JWT -----------------------------------------------------------------------------------------


async def test_a_jwt_from_the_issuer_is_accepted(server: Running, issuer: Issuer) -> None:
    await _get(server, _bearer(issuer.token(groups=["trackd-admins"])))


@pytest.mark.parametrize(
    "change",
    [
        "signature",
        "audience",
        "issuer",
        "expired",
        "no-exp",
        "no-sub",
        "hs256",
        "none",
        "kid",
        "kid-not-a-string",
    ],
)
async def test_a_bad_jwt_is_unauthenticated(server: Running, issuer: Issuer, change: str) -> None:
    now = int(time.time())
    if change == "signature":
        token = issuer.token(key=_rsa())  # same kid, another key
    elif change == "audience":
        token = issuer.token(aud="someone-else")
    elif change == "issuer":
        token = issuer.token(iss="https://evil.test")
    elif change == "expired":
        token = issuer.token(exp=now - 3600, iat=now - 7200)
    elif change == "no-exp":
        token = issuer.token(exp=None)
    elif change == "no-sub":
        token = issuer.token(sub=None)
    elif change == "hs256":
        # The public key as an HMAC secret: the classic algorithm confusion.
        public = issuer.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ana", "exp": now + 600}
        token = _hs256(payload, public)
    elif change == "none":
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ana", "exp": now + 600}
        token = jwt.encode(payload, None, algorithm="none", headers={"kid": KID})
    elif change == "kid-not-a-string":
        # PyJWT's JWKS client refuses this header with InvalidTokenError (not DecodeError).
        token = "eyJhbGciOiJSUzI1NiIsImtpZCI6N30.e30.c2ln"  # {"alg":"RS256","kid":7}.{}.sig
    else:
        token = jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "ana", "exp": now + 600},
            issuer.key,
            algorithm="RS256",
            headers={"kid": "unknown"},
        )
    await _unauthenticated(server, _bearer(token))


def _hs256(payload: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWT signed with `secret`, made by hand (PyJWT refuses a PEM as HMAC key)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
    body = b64(json.dumps(payload).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


async def test_a_jwt_names_its_subject_and_groups_and_the_admin_group_makes_admins(
    issuer: Issuer,
) -> None:
    verifier = JwtVerifier(ISSUER, issuer.jwks_url, AUDIENCE, "roles", "trackd-admins")
    plain = await verifier.verify(issuer.token(sub="bo", roles=["ml", "vision", 3]))
    assert plain.principal.name == "bo" and plain.principal.via == "jwt"
    assert plain.principal.groups == {"ml", "vision"}
    assert not plain.principal.admin
    assert plain.principal.subjects == ("user:bo", "group:ml", "group:vision")
    admin = await verifier.verify(issuer.token(roles="trackd-admins"))
    assert admin.principal.admin
    # Another claim name is not read as groups.
    other = await verifier.verify(issuer.token(groups=["trackd-admins"]))
    assert not other.principal.admin and not other.principal.groups


# -- per-principal limits --------------------------------------------------------------------


async def test_limits_count_per_principal_not_per_client_id(database_url: str) -> None:
    running = await app.start(server_config(auth="on", client_rate_limit=2.0), database_url)
    try:
        secret = await _token(running, "limited", admin=True)
        codes = []
        for i in range(4):
            md = (*_bearer(secret), ("x-client-id", f"dodge-{i}"))
            try:
                await _get(running, md)
                codes.append("OK")
            except grpc.aio.AioRpcError as err:
                codes.append(err.code().name)
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert error_info(err).metadata["client"] == "limited"
        assert codes[:2] == ["OK", "OK"] and "RESOURCE_EXHAUSTED" in codes[2:]
    finally:
        await running.stop(0)


# -- TLS and mTLS --------------------------------------------------------------------------------


async def test_mtls_names_the_caller_by_its_certificate(database_url: str, pki: Pki) -> None:
    running = await app.start(
        server_config(
            tls_cert=str(pki.server_cert),
            tls_key=str(pki.server_key),
            tls_client_ca=str(pki.ca),
        ),
        database_url,
    )
    target = f"127.0.0.1:{running.port}"
    try:
        # The certificate's identity is a principal like any other: roles name it.
        svc = tokens.subject("spiffe://trackd.test/svc-a", None)
        await tokens.set_role(running.db, "default", svc, tokens.parse_role("READ"))
        with_cert = TlsConfig(str(pki.ca), str(pki.client_cert), str(pki.client_key))
        async with AsyncClient(target, tls=with_cert) as c:
            assert (await c.get_experiment("0")).experiment_id == "0"
        # The rule: first URI SAN, else first DNS SAN, else the subject's CN.
        assert certificate_identity(pki.client_cert.read_bytes()) == "spiffe://trackd.test/svc-a"
        assert certificate_identity(pki.cn_only_cert.read_bytes()) == "svc-b"
        # No client certificate: the TLS handshake fails.
        async with AsyncClient(target, tls=TlsConfig(ca=str(pki.ca)), timeout=3) as c:
            with pytest.raises(Exception) as exc:
                await c.get_experiment("0")
            assert getattr(exc.value, "code", None) == grpc.StatusCode.UNAVAILABLE
        # A bearer token, when sent, decides (here: an unknown one).
        bad = TlsConfig(str(pki.ca), str(pki.client_cert), str(pki.client_key))
        async with AsyncClient(target, tls=bad, token="tkd_" + "Q" * 43) as c:
            with pytest.raises(Exception) as exc:
                await c.get_experiment("0")
            assert getattr(exc.value, "code", None) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await running.stop(0)


async def test_a_token_travels_as_call_credentials_over_tls(
    database_url: str, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await app.start(
        server_config(auth="on", tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)),
        database_url,
    )
    target = f"127.0.0.1:{running.port}"
    try:
        secret = await _token(running, "admin", admin=True)
        monkeypatch.setenv("TRACKD_TLS_CA", str(pki.ca))
        async with AsyncClient(target, token=secret) as c:  # TLS from the environment
            assert (await c.get_experiment("0")).experiment_id == "0"
        async with AsyncClient(target, tls={"ca": str(pki.ca)}) as c:
            with pytest.raises(Exception) as exc:
                await c.get_experiment("0")
            assert getattr(exc.value, "code", None) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await running.stop(0)


# -- the run logger across a restart ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_run_logger_keeps_its_token_across_a_server_restart(database_url: str) -> None:
    port = _free_port()
    cfg = server_config(auth="on", listen=f"127.0.0.1:{port}")
    first = await app.start(cfg, database_url)
    secret = await _token(first, "logger", admin=True)
    client = AsyncClient(f"127.0.0.1:{port}", token=secret)
    try:
        run_id = (await client.create_run("0", run_name="authn-restart")).info.run_id
        logger = client.logger(chunk_points=50)
        for i in range(100):
            await logger.log(run_id, "loss", float(i), step=i, timestamp=1000 + i)
        await logger.flush(timeout=10)
        await first.stop(0)
        second = await app.start(cfg, database_url)
        try:
            for i in range(100, 200):
                await logger.log(run_id, "loss", float(i), step=i, timestamp=1000 + i)
            await logger.flush(timeout=15)
            assert logger.reconnects >= 1
            history = await client.get_metric_history(run_id, "loss")
            assert [m.step for m in history] == list(range(200))
        finally:
            await client.close()
            await second.stop(0)
    finally:
        with contextlib.suppress(Exception):
            await first.stop(0)


# -- exposure --------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKD_")}
    env.update(extra)
    return env


def test_a_non_loopback_address_without_an_authenticator_refuses_to_start(
    database_url: str,
) -> None:
    port = _free_port()
    result = subprocess.run(
        [*TRACKD, "serve", "--listen", f"0.0.0.0:{port}", "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--auth" in lines[0] and "--allow-unauthenticated" in lines[0]


def test_a_non_loopback_http_address_without_an_authenticator_refuses_to_start(
    database_url: str,
) -> None:
    port = _free_port()
    result = subprocess.run(
        [*TRACKD, "serve", "--http-listen", f"0.0.0.0:{port}", "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--http-listen" in lines[0] and "--allow-unauthenticated" in lines[0]


def _serve_until_listening(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Runs `trackd serve ARGS` until it logs that it listens, then SIGTERMs it; returns
    its exit status and everything it wrote to stderr."""
    proc = subprocess.Popen([*TRACKD, "serve", *args], stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    out = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        out.append(line)
        if "auth is" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=30)
    return proc.returncode, "".join(out) + rest


@pytest.mark.parametrize("how", ["--allow-unauthenticated", "--auth on"])
def test_a_non_loopback_address_starts_with_auth_or_explicit_consent(
    database_url: str, how: str
) -> None:
    port = _free_port()
    code, err = _serve_until_listening(
        ["--listen", f"0.0.0.0:{port}", "--database-url", database_url, *how.split()],
        _env(TRACKD_LOG_FORMAT="json"),
    )
    assert code == 0, err
    summary = [json.loads(x)["msg"] for x in err.splitlines() if '"auth is' in x]
    assert len(summary) == 1, err
    assert summary[0].startswith("auth is on" if how == "--auth on" else "auth is off")


def test_loopback_with_nothing_configured_says_auth_is_off(database_url: str) -> None:
    code, err = _serve_until_listening(
        ["--listen", f"127.0.0.1:{_free_port()}", "--database-url", database_url],
        _env(TRACKD_LOG_FORMAT="json"),
    )
    assert code == 0, err
    assert any("auth is off (loopback only" in x for x in err.splitlines()), err


# -- no secret in any log line ----------------------------------------------------------------


def test_an_authenticated_session_logs_no_secret(
    database_url: str, issuer: Issuer, pki: Pki
) -> None:
    password = "pw-" + os.urandom(8).hex()  # trust auth ignores it; it must not be logged
    parts = database_url.split("://", 1)
    url = f"{parts[0]}://{parts[1].replace('@', f':{password}@', 1)}"
    admin = subprocess.run(
        [*TRACKD, "token", "create", "--principal", "root", "--admin", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(TRACKD_LOG_FORMAT="json"),
        check=True,
    )
    secret = admin.stdout.strip()
    assert secret.startswith("tkd_") and secret not in admin.stderr
    port = _free_port()
    proc = subprocess.Popen(
        [
            *TRACKD,
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--database-url",
            url,
            "--log-level",
            "DEBUG",
            "--log-format",
            "json",
            "--auth",
            "on",
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
            "--jwt-issuer",
            ISSUER,
            "--jwt-jwks-url",
            issuer.jwks_url,
            "--jwt-audience",
            AUDIENCE,
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stderr is not None
    lines = []
    while True:
        line = proc.stderr.readline()
        assert line, "".join(lines)
        lines.append(line)
        if "auth is on" in line:
            break
    the_jwt = issuer.token(sub="jay")
    bad_jwt = issuer.token(key=_rsa())
    wrong = "tkd_" + "W" * 43
    try:
        tls = TlsConfig(ca=str(pki.ca))
        target = f"127.0.0.1:{port}"
        with Client(target, token=secret, tls=tls) as c:
            exp = c.create_experiment(f"secrets-{os.getpid()}")
            run = c.create_run(exp)
            with c.logger() as lg:
                for i in range(50):
                    lg.log(run.info.run_id, "m", float(i), step=i)
            c.log_param(run.info.run_id, "p", "v")
        for token in (the_jwt, bad_jwt, wrong, "garbage"):
            with Client(target, token=token, tls=tls) as c:
                with contextlib.suppress(Exception):
                    c.get_experiment("0")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    log = "".join(lines) + rest
    assert '"UNAUTHENTICATED"' in log or "UNAUTHENTICATED" in log, log[-2000:]
    assert "CreateExperiment" in log  # the access log is on
    audit = [json.loads(x) for x in log.splitlines() if '"logger":"trackd.audit"' in x]
    assert {
        "principal": "root",
        "method": "trackd.v1.ExperimentService.CreateExperiment",
        "resource": "workspace:default",
        "outcome": "OK",
    }.items() <= next(a for a in audit if a["method"].endswith("CreateExperiment")).items()
    key_body = "".join(pki.server_key.read_text().splitlines()[1:-1])
    for name, value in {
        "API token": secret,
        "API token body": secret[4:],
        "JWT": the_jwt,
        "JWT signature": the_jwt.rsplit(".", 1)[1],
        "bad JWT signature": bad_jwt.rsplit(".", 1)[1],
        "wrong token": wrong,
        "database password": password,
        "TLS key": key_body[20:80],
    }.items():
        assert value not in log, f"{name} appears in the log"


def test_the_audit_line_written_directly_is_the_json_formatters_line() -> None:
    """The JSON-logging server writes audit lines without a LogRecord (a hot path); they
    are the lines JsonFormatter makes of the record the logger would write."""
    import io
    import logging
    import re

    from trackd.server import logs
    from trackd.server.service import guard

    class _Handler:
        FLUSH_EVERY = 0.2
        wall_flushed = time.time()
        lock = threading.Lock()
        stream = io.StringIO()

        def flush(self) -> None:
            pass

    handler = _Handler()
    who, what = 'ann"\\é\u2028', "run:<\x01>"  # escaped as json.dumps escapes them
    sink = logs._audit_sink(handler)  # type: ignore[arg-type]
    token = guard.request_id.set("rid-1")
    try:
        sink(who, "trackd.v1.RunService.LogMetric", what, "OK", "rid-2")
        record = logging.getLogger("trackd.audit").makeRecord(
            "trackd.audit",
            logging.INFO,
            __file__,
            1,
            "%s %s %s %s",
            (who, "trackd.v1.RunService.LogMetric", what, "OK"),
            None,
            extra={
                "principal": who,
                "method": "trackd.v1.RunService.LogMetric",
                "resource": what,
                "outcome": "OK",
                "audit_request_id": "rid-2",
            },
        )
        guard.RequestIdFilter().filter(record)
    finally:
        guard.request_id.reset(token)
    direct = handler.stream.getvalue()
    formatted = logs.JsonFormatter().format(record) + "\n"
    assert direct.count("\n") == 1 and json.loads(direct)["principal"] == who
    stamp = re.compile(r'"ts":"[^"]*"')
    assert stamp.sub("", direct) == stamp.sub("", formatted)  # the same bytes, in order


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--auth", "maybe"], ["--auth"]),
        (["--tls-cert", "c.pem"], ["--tls-cert", "--tls-key"]),
        (["--tls-client-ca", "ca.pem"], ["--tls-client-ca", "--tls-cert"]),
        (["--jwt-jwks-url", "https://i/jwks"], ["--jwt-issuer", "--jwt-audience"]),
        (["--jwt-admin-group", "admins"], ["--jwt-issuer", "--jwt-jwks-url"]),
        (
            ["--jwt-issuer", "i", "--jwt-audience", "a", "--jwt-jwks-url", "file:///etc/passwd"],
            ["--jwt-jwks-url"],
        ),
    ],
)
def test_auth_settings_that_cannot_work_are_refused_naming_the_setting(
    argv: list[str], names: list[str]
) -> None:
    from trackd.server import config
    from trackd.server.startup import StartupError

    with pytest.raises(StartupError) as exc:
        config.parse(argv)
    for name in names:
        assert name in str(exc.value)


def test_auth_turns_on_with_any_authenticator_and_env_variables_count() -> None:
    from trackd.server import config

    assert not config.parse([]).auth_enabled
    assert config.parse(["--auth", "on"]).auth_enabled
    jwt_on = ["--jwt-issuer", "i", "--jwt-audience", "a", "--jwt-jwks-url", "https://i/k"]
    assert config.parse(jwt_on).auth_enabled
    assert config.parse(["--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca"]).auth_enabled
    assert not config.parse(["--tls-cert", "c", "--tls-key", "k"]).auth_enabled
    assert config.parse(["--allow-unauthenticated"]).allow_unauthenticated
    assert config.is_loopback("127.0.0.1:1") and config.is_loopback("[::1]:1")
    assert config.is_loopback("localhost:1") and config.is_loopback("unix:/tmp/s")
    assert not config.is_loopback("0.0.0.0:1") and not config.is_loopback("[::]:1")
    parser = config.Parser()
    config.add_arguments(parser)
    env = {"TRACKD_AUTH": "on", "TRACKD_AUTH_CACHE_TTL": "1.5", "TRACKD_JWT_GROUPS_CLAIM": "roles"}
    cfg = config.resolve(parser.parse_args([]), env)
    assert cfg.auth_enabled and cfg.auth_cache_ttl == 1.5 and cfg.jwt_groups_claim == "roles"
    assert config.to_env(cfg)["TRACKD_AUTH"] == "on"  # --workers' children get it too
