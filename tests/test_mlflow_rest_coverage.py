"""Every endpoint MLflow's protos declare (tracking, artifacts, model registry, webhooks),
read from the installed official client: each is either served by trackd's HTTP front and
listed as served in README.md's endpoint table, or not served, covered by a "no" row of that
table, and answered ENDPOINT_NOT_FOUND by the running server. A new MLflow endpoint, or a
route added to trackd without its README row, fails here."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.protos import (
    databricks_pb2,
    mlflow_artifacts_pb2,
    model_registry_pb2,
    service_pb2,
    webhooks_pb2,
)

from trackd.server import app

pytestmark = pytest.mark.asyncio(loop_scope="module")

README = Path(__file__).resolve().parent.parent / "README.md"
SERVICES = (
    (service_pb2, "MlflowService"),
    (mlflow_artifacts_pb2, "MlflowArtifactsService"),
    (model_registry_pb2, "ModelRegistryService"),
    (webhooks_pb2, "WebhookService"),
)


def shape(path: str) -> str:
    """A path with every placeholder (`{x}`, `<path:x>`, `{x:regex}`) as `{}`."""
    path = "/" + path.lstrip("/")
    return re.sub(r"\{[^}]*\}|<[^>]*>", "{}", path)


def mlflow_endpoints() -> set[tuple[str, str]]:
    out = set()
    for module, name in SERVICES:
        for method in module.DESCRIPTOR.services_by_name[name].methods:
            for e in method.GetOptions().Extensions[databricks_pb2.rpc].endpoints:
                out.add((e.method, shape(e.path)))
    return out


def readme_table() -> tuple[set[tuple[str, str]], list[str], set[tuple[str, str]]]:
    """(served (method, path) rows, prefixes of the "no" rows, (method, path) rows answered
    501 NOT_IMPLEMENTED) of README's endpoint table."""
    text = README.read_text()
    section = text[text.index("### Endpoints") :]
    section = section[: section.index("\n## ")]
    served: set[tuple[str, str]] = set()
    not_served: list[str] = []
    not_implemented: set[tuple[str, str]] = set()
    for line in section.splitlines():
        m = re.match(r"\| `([^`]+)` \| (yes|no|501) \|", line)
        if not m:
            continue
        cell, answer = m.groups()
        method, _, path = cell.partition(" ")
        if answer == "yes":
            served.add((method, shape(path)))
        elif answer == "501":
            not_implemented.add((method, shape(path)))
        else:
            not_served.append(cell.rstrip(".").removesuffix("...").split(" ")[-1])
    return served, not_served, not_implemented


def trackd_routes(running: app.Running) -> set[tuple[str, str]]:
    assert running.http is not None
    out = set()
    for route in running.http.routes:
        for prefix in route.prefixes:
            if prefix.startswith("/api/2.0"):
                out.add((route.method, shape(prefix.removeprefix("/api/2.0") + route.path)))
    return out


async def test_every_mlflow_endpoint_is_served_or_listed_as_not(
    http_server: app.Running, tracking_uri: str
) -> None:
    endpoints = mlflow_endpoints()
    served_rows, no_prefixes, answered_501 = readme_table()
    routes = trackd_routes(http_server)
    assert len(endpoints) > 150
    missing_rows = []
    not_found_checks = []
    for method, path in sorted(endpoints):
        if (method, path) in routes:
            if (method, path) not in served_rows | answered_501:
                missing_rows.append(f"{method} {path} (served; add a 'yes' or '501' row)")
            continue
        if (method, path) in served_rows:
            missing_rows.append(f"{method} {path} (README says served; trackd has no route)")
        elif not any(path.startswith(p) for p in no_prefixes):
            missing_rows.append(f"{method} {path} (not served; add or widen a 'no' row)")
        else:
            not_found_checks.append((method, path))
    assert not missing_rows, "README.md's endpoint table is out of step:\n" + "\n".join(
        missing_rows
    )
    # Each README "yes" or "501" row names a route trackd has.
    assert served_rows | answered_501 <= routes, (served_rows | answered_501) - routes

    def not_found(method: str, path: str) -> tuple[int, bytes]:
        url = tracking_uri + "/api/2.0" + path.replace("{}", "x")
        req = urllib.request.Request(url, method=method, data=b"{}" if method != "GET" else None)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    for method, path in not_found_checks:
        status, body = await asyncio.to_thread(not_found, method, path)
        assert status == 404 and b"ENDPOINT_NOT_FOUND" in body, (method, path, status, body)
    run = await asyncio.to_thread(a_run, tracking_uri)
    for method, path in sorted(answered_501):
        status, body = await asyncio.to_thread(not_found, method, path.replace("{}", run))
        assert status == 501 and b"NOT_IMPLEMENTED" in body, (method, path, status, body)


def a_run(uri: str) -> str:
    """The proxy path of a file of a new run ("<experiment>/<run>/artifacts/f")."""
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    eid = c.create_experiment("coverage")
    return f"{eid}/{c.create_run(eid).info.run_id}/artifacts/f"
