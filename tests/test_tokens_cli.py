"""`trackd token|role|workspace` through the installed `trackd` entry point, as an operator
runs them: bootstrapping the first admin on a fresh database, a token's life (create, use,
list without secrets, revoke), roles for users and groups, workspaces, and one-line errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from conftest import server_config
from trackd.server import app
from trackd.server.app import Running
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import experiment_service_pb2_grpc

TRACKD = str(Path(sys.executable).with_name("trackd"))


def trackd(database_url: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs `trackd ARGS --database-url URL` and returns it (checked unless ok=False)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKD_")}
    result = subprocess.run(
        [TRACKD, *args, "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "TRACKD_LOG_LEVEL": "WARNING"},
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def admin_token(database_url: str) -> str:
    """The first admin, made before any server ran on the database (migrations included)."""
    result = trackd(database_url, "token", "create", "--principal", "admin", "--admin")
    secret = result.stdout.strip()
    assert re.fullmatch(r"tkd_[A-Za-z0-9_-]{43}", secret), result.stdout
    assert secret not in result.stderr and "shown only now" in result.stderr
    return secret


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(database_url: str, admin_token: str) -> AsyncIterator[Running]:
    """trackd with auth on and a token cache of 0 s, so that revocation shows at once."""
    running = await app.start(server_config(auth="on", auth_cache_ttl=0.0), database_url)
    yield running
    await running.stop(1.0)


async def _code(running: Running, token: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        stub = experiment_service_pb2_grpc.ExperimentServiceStub(ch)
        try:
            await stub.GetExperiment(
                epb.GetExperimentRequest(experiment_id="0"),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK


async def test_the_bootstrapped_admin_token_works(server: Running, admin_token: str) -> None:
    assert await _code(server, admin_token) == grpc.StatusCode.OK


async def test_a_token_lives_from_create_to_revoke(server: Running, database_url: str) -> None:
    made = trackd(
        database_url,
        "token",
        "create",
        "--principal",
        "ci-bot",
        "--name",
        "nightly",
        "--admin",
        "--expires-in",
        "30d",
    )
    secret = made.stdout.strip()
    assert await _code(server, secret) == grpc.StatusCode.OK

    listing = trackd(database_url, "token", "list").stdout
    assert "ci-bot" in listing and "nightly" in listing
    assert "tkd_" not in listing  # never a secret
    row = next(line for line in listing.splitlines() if "nightly" in line).split()
    token_id, expires, revoked = row[0], row[5], row[6]
    assert expires != "-" and revoked == "-"

    # The same name twice is refused in one line.
    again = trackd(
        database_url, "token", "create", "--principal", "ci-bot", "--name", "nightly", ok=False
    )
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    assert again.stdout == ""

    trackd(database_url, "token", "revoke", token_id)
    assert await _code(server, secret) == grpc.StatusCode.UNAUTHENTICATED
    revoked_row = next(
        line
        for line in trackd(database_url, "token", "list").stdout.splitlines()
        if "nightly" in line
    )
    assert revoked_row.split()[6] != "-"
    twice = trackd(database_url, "token", "revoke", token_id, ok=False)
    assert twice.returncode == 1


async def test_revoke_by_principal_and_name(server: Running, database_url: str) -> None:
    args = ("token", "create", "--principal", "dev", "--name", "laptop", "--admin")
    secret = trackd(database_url, *args).stdout.strip()
    assert await _code(server, secret) == grpc.StatusCode.OK
    trackd(database_url, "token", "revoke", "--principal", "dev", "--name", "laptop")
    assert await _code(server, secret) == grpc.StatusCode.UNAUTHENTICATED


async def test_an_expiry_in_the_past_or_malformed_is_refused(database_url: str) -> None:
    for flag, value in (("--expires-at", "2001-01-01T00:00:00Z"), ("--expires-in", "soon")):
        result = trackd(database_url, "token", "create", "--principal", "x", flag, value, ok=False)
        assert result.returncode == 1 and result.stdout == "", result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_roles_and_workspaces(database_url: str) -> None:
    made = trackd(
        database_url,
        "token",
        "create",
        "--principal",
        "ana",
        "--role",
        "vision=EDIT",
        "--role",
        "nlp=read",
    )
    assert made.stdout.startswith("tkd_")
    trackd(
        database_url, "role", "set", "--workspace", "vision", "--group", "ml", "--role", "MANAGE"
    )
    trackd(database_url, "workspace", "create", "audio")
    assert trackd(database_url, "workspace", "create", "audio", ok=False).returncode == 1
    workspaces = trackd(database_url, "workspace", "list").stdout
    for name in ("default", "vision", "nlp", "audio"):
        assert re.search(rf"\b{name}\b", workspaces), workspaces
    roles = trackd(database_url, "role", "list", "--workspace", "vision").stdout.splitlines()
    assert [r.split() for r in roles[1:]] == [
        ["vision", "group:ml", "MANAGE"],
        ["vision", "user:ana", "EDIT"],
    ]
    trackd(database_url, "role", "remove", "--workspace", "vision", "--group", "ml")
    roles = trackd(database_url, "role", "list").stdout
    assert "group:ml" not in roles and "user:ana" in roles and "READ" in roles
    missing = trackd(
        database_url, "role", "remove", "--workspace", "vision", "--group", "ml", ok=False
    )
    assert missing.returncode == 1
    bad = trackd(
        database_url, "role", "set", "--workspace", "w", "--user", "u", "--role", "OWNER", ok=False
    )
    assert bad.returncode == 1 and "READ, EDIT or MANAGE" in bad.stderr
