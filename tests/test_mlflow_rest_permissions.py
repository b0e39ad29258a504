"""Identity and permissions on the HTTP front: every REST route (read from the front's own
route table) called as anonymous, with a malformed, an expired and a revoked token, and as
a reader, an editor, a manager, a principal of another workspace and an admin, each
answer's HTTP status checked against the level the route's rule declares (the rule of the
RPC it mirrors). Tokens travel as HTTP Basic passwords and as Bearer tokens, which is what
the mlflow client sends; the real client is checked with both."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from conftest import server_config
from test_permissions import LEVELS, UNAUTHENTICATED, trackd
from trackd.server import app
from trackd.server.domain.auth import policy
from trackd.server.domain.auth.principal import Level
from trackd.server.http.front import Route

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Each caller's Authorization header; filled by the `front` fixture.
HEADERS: dict[str, dict[str, str]] = {
    "anonymous": {},
    "malformed": {"Authorization": "Bearer tkd_not-a-token"},
}
SECRETS: dict[str, str] = {}
PUBLIC = {"/health", "/version", "/server-info"}
# The web view's sign-in and its static files (tests/test_web_api.py).
PUBLIC |= {"/api/view/session", "/", "/static/{path:.+}"}


def token(database_url: str, principal: str, *args: str) -> str:
    secret = trackd(database_url, "token", "create", "--principal", principal, *args)
    assert secret.startswith("tkd_")
    return secret


def basic(secret: str, user: str = "ignored") -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def front(database_url: str) -> AsyncIterator[tuple[app.Running, aiohttp.ClientSession]]:
    """A server with auth on and its HTTP front; the callers of test_permissions."""
    made = time.monotonic()
    HEADERS["expired"] = basic(token(database_url, "expired", "--expires-in", "1s"))
    trackd(database_url, "workspace", "create", "other")
    for who, role in (("reader", "READ"), ("editor", "EDIT"), ("manager", "MANAGE")):
        SECRETS[who] = token(database_url, who, "--role", f"default={role}")
    SECRETS["outsider"] = token(database_url, "outsider", "--role", "other=MANAGE")
    SECRETS["admin"] = token(database_url, "root", "--admin")
    # Bearer for some callers, Basic (the token as the password) for the others.
    HEADERS["reader"] = basic(SECRETS["reader"])
    HEADERS["editor"] = {"Authorization": f"Bearer {SECRETS['editor']}"}
    HEADERS["manager"] = basic(SECRETS["manager"], "manager")
    HEADERS["outsider"] = {"Authorization": f"Bearer {SECRETS['outsider']}"}
    HEADERS["admin"] = basic(SECRETS["admin"], "root")
    HEADERS["revoked"] = basic(
        token(database_url, "revoked", "--name", "r", "--role", "default=MANAGE")
    )
    trackd(database_url, "token", "revoke", "--principal", "revoked", "--name", "r")
    await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - made)))
    running = await app.start(server_config(auth="on", http_listen="127.0.0.1:0"), database_url)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{running.http_port}") as session:
            yield running, session
    finally:
        await running.stop(1.0)


async def rest(
    session: aiohttp.ClientSession, who: str, method: str, path: str, fields: dict[str, Any]
) -> tuple[int, Any]:
    kw: dict[str, Any] = {"headers": HEADERS[who]}
    if method == "GET":
        kw["params"] = [
            (k, str(x)) for k, v in fields.items() for x in (v if isinstance(v, list) else [v])
        ]
    else:
        kw["json"] = fields
    async with session.request(method, path, **kw) as resp:
        try:
            return resp.status, await resp.json(content_type=None)
        except ValueError:
            return resp.status, await resp.text()


async def fixtures(session: aiohttp.ClientSession, tag: str) -> dict[str, str]:
    """A fresh experiment (in "default") with a run, made by the admin."""
    api = "/api/2.0/mlflow"
    status, body = await rest(
        session, "admin", "POST", f"{api}/experiments/create", {"name": f"m-{tag}"}
    )
    assert status == 200, body
    eid = body["experiment_id"]
    status, body = await rest(
        session, "admin", "POST", f"{api}/runs/create", {"experiment_id": eid}
    )
    rid = body["run"]["info"]["run_id"]
    status, body = await rest(
        session, "admin", "POST", f"{api}/logged-models", {"experiment_id": eid, "name": "m"}
    )
    assert status == 200, body
    mid = body["model"]["info"]["model_id"]
    status, body = await rest(
        session,
        "admin",
        "PATCH",
        f"{api}/logged-models/{mid}/tags",
        {"tags": [{"key": "k", "value": "v"}]},
    )
    assert status == 200, body
    async with session.put(
        f"/api/2.0/mlflow-artifacts/artifacts/{eid}/{rid}/artifacts/f.txt",
        data=b"matrix",
        headers=HEADERS["admin"],
    ) as resp:
        assert resp.status == 200, await resp.text()
    for path, fields in (
        ("/experiments/set-experiment-tag", {"experiment_id": eid, "key": "k", "value": "v"}),
        ("/runs/set-tag", {"run_id": rid, "key": "t", "value": "v"}),
        ("/runs/log-metric", {"run_id": rid, "key": "m", "value": 1.0, "timestamp": 1}),
    ):
        status, body = await rest(session, "admin", "POST", api + path, fields)
        assert status == 200, body
    return {"experiment_id": eid, "run_id": rid, "model_id": mid, "tag": tag}


def path_of(route: Route, ids: dict[str, str]) -> str:
    """The route's path (under its first prefix) with its placeholders filled."""
    path = route.prefixes[0] + route.path
    file = f"{ids['experiment_id']}/{ids['run_id']}/artifacts/f.txt"
    # The web view's artifact routes: the run's f.txt; a model's malformed path (400).
    view_files = {"/api/view/runs/": "f.txt", "/api/view/models/": "bad\\name"}
    file = next((f for p, f in view_files.items() if path.startswith(p)), file)
    return (
        path.replace("{model_id}", ids["model_id"])
        .replace("{run_id}", ids["run_id"])
        .replace("{tag_key:.+}", "k")
        .replace("{path:.+}", file)
    )


def request_for(route: Route, ids: dict[str, str]) -> dict[str, Any]:
    """The fields of a request to `route` that succeeds for a caller with enough rights.
    KeyError for a route this table does not know: add it."""
    eid, rid, tag = ids["experiment_id"], ids["run_id"], ids["tag"]
    model = route.method + " " + route.path
    models: dict[str, dict[str, Any]] = {
        "POST /logged-models": {"experiment_id": eid, "name": f"lm-{tag}"},
        "POST /logged-models/search": {"experiment_ids": [eid]},
        "GET /logged-models/{model_id}": {},
        "PATCH /logged-models/{model_id}": {"status": "LOGGED_MODEL_READY"},
        "DELETE /logged-models/{model_id}": {},
        "PATCH /logged-models/{model_id}/tags": {"tags": [{"key": "k2", "value": "v"}]},
        "DELETE /logged-models/{model_id}/tags/{tag_key:.+}": {},
        "POST /logged-models/{model_id}/params": {"params": [{"key": "p", "value": "1"}]},
    }
    if model in models:
        return models[model]
    artifacts: dict[str, dict[str, Any]] = {
        "PUT /artifacts/{path:.+}": {"bytes": "put"},
        "GET /artifacts/{path:.+}": {},
        "DELETE /artifacts/{path:.+}": {},
        "GET /artifacts": {"path": f"{eid}/{rid}/artifacts"},
        "POST /mpu/create/{path:.+}": {"path": "f.txt", "num_parts": 1},
        "POST /mpu/complete/{path:.+}": {"path": "f.txt", "upload_id": "u", "parts": []},
        "POST /mpu/abort/{path:.+}": {"path": "f.txt", "upload_id": "u"},
        "GET /presigned/{path:.+}": {},
        "GET /artifacts/list": {"run_id": rid},
        "GET /logged-models/{model_id}/artifacts/directories": {},
    }
    if model in artifacts:
        return artifacts[model]
    view: dict[str, dict[str, Any]] = {
        "GET /api/view/experiments": {"max_results": 10},
        "POST /api/view/runs/search": {"experiment_ids": [eid]},
        "GET /api/view/runs/{run_id}": {},
        "GET /api/view/runs/{run_id}/children": {},
        "POST /api/view/envelopes": {"run_ids": [rid], "metric_keys": ["m"]},
        # Without `Accept: text/event-stream`: 400 once the permission check passed.
        "GET /api/view/watch": {"run_id": rid},
        "GET /api/view/runs/{run_id}/artifacts": {},
        "GET /api/view/runs/{run_id}/artifacts/{path:.+}": {},
        "POST /api/view/logged-models/search": {"experiment_ids": [eid]},
        "GET /api/view/models/{model_id}/artifacts": {},
        "GET /api/view/models/{model_id}/artifacts/{path:.+}": {},
    }
    if model in view:
        return view[model]
    table: dict[str, dict[str, Any]] = {
        "/experiments/create": {"name": f"created-{tag}"},
        "/experiments/get": {"experiment_id": eid},
        "/experiments/get-by-name": {"experiment_name": f"m-{tag}"},
        "/experiments/search": {"max_results": 10},
        "/experiments/update": {"experiment_id": eid, "new_name": f"renamed-{tag}"},
        "/experiments/delete": {"experiment_id": eid},
        "/experiments/restore": {"experiment_id": eid},
        "/experiments/set-experiment-tag": {"experiment_id": eid, "key": "k", "value": "v"},
        "/experiments/delete-experiment-tag": {"experiment_id": eid, "key": "k"},
        "/experiments/search-datasets": {"experiment_ids": [eid]},
        "/runs/create": {"experiment_id": eid},
        "/runs/get": {"run_id": rid},
        "/runs/update": {"run_id": rid, "status": "FINISHED"},
        "/runs/delete": {"run_id": rid},
        "/runs/restore": {"run_id": rid},
        "/runs/search": {"experiment_ids": [eid]},
        "/runs/log-metric": {"run_id": rid, "key": "m", "value": 2.0, "timestamp": 2},
        "/runs/log-parameter": {"run_id": rid, "key": "p", "value": "1"},
        "/runs/set-tag": {"run_id": rid, "key": "t", "value": "1"},
        "/runs/delete-tag": {"run_id": rid, "key": "t"},
        "/runs/log-batch": {"run_id": rid, "params": [{"key": "b", "value": "1"}]},
        "/runs/log-inputs": {"run_id": rid, "datasets": []},
        "/runs/outputs": {"run_id": rid, "models": []},
        "/runs/log-model": {
            "run_id": rid,
            "model_json": json.dumps(
                {"artifact_path": "m", "flavors": {}, "utc_time_created": "now", "run_id": rid}
            ),
        },
        "/metrics/get-history": {"run_id": rid, "metric_key": "m"},
        "/metrics/get-history-bulk-interval": {"run_ids": [rid], "metric_key": "m"},
    }
    return table[route.path]


def routes(running: app.Running) -> list[Route]:
    assert running.http is not None
    return running.http.routes


def expected(rule: policy.Rule, who: str) -> set[int] | None:
    """The HTTP statuses the caller must get; None for "anything but a refusal"."""
    if who in UNAUTHENTICATED:
        return {401}
    held = LEVELS[who]
    if rule is policy.POLICY["trackd.v1.ExperimentService.GetExperimentByName"]:
        return {404} if held == Level.NONE else None
    if rule.resource == policy.SEARCH:
        return None
    if rule.resource == policy.WORKSPACE:
        held = LEVELS[who] if who != "outsider" else Level.NONE
    if held == Level.NONE:
        return {404}
    if held < rule.level:
        return {403}
    return None


async def test_every_route_declares_a_permission(front: tuple[app.Running, Any]) -> None:
    running, _ = front
    for route in routes(running):
        if route.rule == "":
            assert route.path in PUBLIC, f"{route.method} {route.path} has no permission rule"
        else:
            assert policy.http_rule(route.rule) is not None


async def test_rest_permission_matrix(front: tuple[app.Running, aiohttp.ClientSession]) -> None:
    running, session = front
    checked = 0
    for route in routes(running):
        rule = policy.http_rule(route.rule)
        if rule is None:
            continue
        order = sorted([*UNAUTHENTICATED, *LEVELS], key=lambda w: expected(rule, w) is None)
        name = route.path.strip("/").replace("/", "-")
        shared = await fixtures(session, f"{name}-{route.method}-shared")
        for who in order:
            want = expected(rule, who)
            ids = (
                shared
                if want is not None
                else await fixtures(session, f"{name}-{route.method}-{who}")
            )
            if route.path.endswith("get-by-name"):
                ids = shared
            path = path_of(route, ids)
            status, body = await rest(session, who, route.method, path, request_for(route, ids))
            if want is None:
                assert status not in (401, 403, 404), (route.path, who, status, body)
            else:
                assert status in want, (route.path, who, status, body)
                assert body["error_code"] in (
                    "UNAUTHENTICATED",
                    "PERMISSION_DENIED",
                    "RESOURCE_DOES_NOT_EXIST",
                )
            checked += 1
    assert checked > 100


async def test_public_routes_need_no_credential(
    front: tuple[app.Running, aiohttp.ClientSession],
) -> None:
    _, session = front
    for path in ("/health", "/version", "/api/3.0/mlflow/server-info"):
        async with session.get(path) as resp:
            assert resp.status == 200


async def test_the_mlflow_client_authenticates_with_basic_and_bearer(
    front: tuple[app.Running, aiohttp.ClientSession],
) -> None:
    running, _ = front
    uri = f"http://127.0.0.1:{running.http_port}"

    def as_(**env: str) -> MlflowClient:
        """The client, with the credentials the mlflow client reads from the environment
        at each request (MLFLOW_TRACKING_USERNAME/PASSWORD, or MLFLOW_TRACKING_TOKEN)."""
        for name in ("USERNAME", "PASSWORD", "TOKEN"):
            os.environ.pop(f"MLFLOW_TRACKING_{name}", None)
        for name, value in env.items():
            os.environ[f"MLFLOW_TRACKING_{name.upper()}"] = value
        return MlflowClient(uri)

    def work() -> None:
        try:
            eid = as_(token=SECRETS["admin"]).create_experiment("auth-by-client")
            rid = as_(username="editor", password=SECRETS["editor"]).create_run(eid).info.run_id
            assert as_(token=SECRETS["reader"]).get_run(rid).info.user_id == "editor"
            with pytest.raises(MlflowException) as info:
                as_(username="reader", password=SECRETS["reader"]).log_metric(rid, "m", 1.0)
            assert info.value.error_code == "PERMISSION_DENIED"
            with pytest.raises(MlflowException) as info:
                as_(token=SECRETS["outsider"]).get_run(rid)
            assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"
            with pytest.raises(MlflowException) as info:
                as_().get_run(rid)
            assert info.value.error_code == "UNAUTHENTICATED"
            with pytest.raises(MlflowException) as info:
                as_(username="editor", password="tkd_wrong").get_run(rid)
            assert info.value.error_code == "UNAUTHENTICATED"
        finally:
            as_()

    await asyncio.to_thread(work)
