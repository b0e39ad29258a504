"""MLflow's REST API on trackd, driven by the official mlflow client (mlflow-skinny, pinned
in the dev extras) against a real server: a training script that runs unchanged with only
MLFLOW_TRACKING_URI set, MlflowClient's reads and writes, the error codes MLflow's own
server gives, and the wire conventions (query strings, int64 as numbers, unknown fields,
both path prefixes)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from trackd.client import AsyncClient
from trackd.server import app

pytestmark = pytest.mark.asyncio(loop_scope="module")


def call(uri: str, method: str, path: str, body: Any = None, query: str = "") -> tuple[int, Any]:
    """(status, JSON or text) of one raw HTTP request to trackd."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"{uri}{path}{'?' + query if query else ''}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"} if data is not None else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        raw = err.read()
        status = err.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def code_of(fn: Any, *args: Any, **kwargs: Any) -> str:
    """The MlflowException error code `fn(...)` raises."""
    with pytest.raises(MlflowException) as info:
        fn(*args, **kwargs)
    return info.value.error_code


SCRIPT = textwrap.dedent(
    """
    import json, math
    import mlflow

    mlflow.set_experiment("unchanged-script")
    with mlflow.start_run(run_name="train") as parent:
        mlflow.log_param("lr", 0.01)
        mlflow.log_params({"layers": 4, "optimizer": "adam"})
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metrics({"acc": 0.9, "nan": math.nan, "inf": math.inf}, step=5)
        mlflow.set_tag("team", "vision")
        mlflow.set_tags({"stage": "dev", "seed": 7})
        with mlflow.start_run(run_name="fold-0", nested=True) as child:
            mlflow.log_metric("fold_loss", 0.5)
    print(json.dumps({"parent": parent.info.run_id, "child": child.info.run_id}))
    """
)


async def test_a_training_script_runs_unchanged_with_only_the_tracking_uri(
    tracking_uri: str, http_server: app.Running
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SCRIPT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    ids = json.loads(out.decode().strip().splitlines()[-1])
    # What the script logged, read back through trackd's own gRPC client.
    async with AsyncClient(f"127.0.0.1:{http_server.port}") as client:
        parent = await client.get_run(ids["parent"])
        child = await client.get_run(ids["child"])
        history = await client.get_metric_history(ids["parent"], "loss")
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    assert parent.info.run_name == "train"
    assert parent.data.params == {"lr": "0.01", "layers": "4", "optimizer": "adam"}
    assert parent.data.metrics["acc"] == 0.9
    assert math.isnan(parent.data.metrics["nan"]) and parent.data.metrics["inf"] == math.inf
    assert parent.data.tags["team"] == "vision" and parent.data.tags["seed"] == "7"
    assert child.data.tags["mlflow.parentRunId"] == ids["parent"]
    assert child.info.parent_run_id == ids["parent"]
    assert [(m.step, m.value) for m in history] == [(s, 1.0 / (s + 1)) for s in range(5)]


async def test_mlflow_client_reads_and_writes(tracking_uri: str) -> None:
    def work() -> None:
        c = MlflowClient(tracking_uri)
        eid = c.create_experiment("client-tour", tags={"owner": "ml"})
        exp = c.get_experiment(eid)
        assert exp.name == "client-tour" and exp.tags == {"owner": "ml"}
        assert exp.lifecycle_stage == "active"
        assert exp.artifact_location == f"mlflow-artifacts:/{eid}"
        assert c.get_experiment_by_name("client-tour").experiment_id == eid
        assert c.get_experiment_by_name("no-such-experiment") is None
        c.set_experiment_tag(eid, "purpose", "tour")
        c.delete_experiment_tag(eid, "owner")
        assert c.get_experiment(eid).tags == {"purpose": "tour"}
        c.rename_experiment(eid, "client-tour-2")
        assert c.get_experiment(eid).name == "client-tour-2"

        run = c.create_run(eid, run_name="r", tags={"k": "v"}, start_time=1_700_000_000_000)
        rid = run.info.run_id
        assert run.info.start_time == 1_700_000_000_000
        assert run.info.artifact_uri == f"mlflow-artifacts:/{eid}/{rid}/artifacts"
        c.log_batch(
            rid,
            metrics=[Metric("m", float(i), 1_700_000_000_000 + i, i) for i in range(100)]
            + [Metric("neg", -0.0, 1, 0), Metric("ninf", -math.inf, 1, 0)],
            params=[Param("p", "1")],
            tags=[RunTag("t", "x")],
        )
        history = c.get_metric_history(rid, "m")
        assert [(h.step, h.value, h.timestamp) for h in history] == [
            (i, float(i), 1_700_000_000_000 + i) for i in range(100)
        ]
        got = c.get_run(rid)
        assert got.data.metrics["ninf"] == -math.inf
        assert math.copysign(1.0, got.data.metrics["neg"]) == -1.0
        c.set_terminated(rid, "FAILED", end_time=1_700_000_001_000)
        got = c.get_run(rid)
        assert got.info.status == "FAILED" and got.info.end_time == 1_700_000_001_000
        c.delete_tag(rid, "t")
        assert "t" not in c.get_run(rid).data.tags
        c.delete_run(rid)
        assert c.get_run(rid).info.lifecycle_stage == "deleted"
        c.restore_run(rid)
        assert c.get_run(rid).info.lifecycle_stage == "active"

        c.delete_experiment(eid)
        assert c.get_experiment(eid).lifecycle_stage == "deleted"
        names = {e.name for e in c.search_experiments(view_type=2)}  # DELETED_ONLY
        assert "client-tour-2" in names
        c.restore_experiment(eid)
        assert c.get_experiment(eid).lifecycle_stage == "active"

    await asyncio.to_thread(work)


async def test_search_runs_filters_orders_and_pages(tracking_uri: str) -> None:
    def work() -> None:
        c = MlflowClient(tracking_uri)
        eid = c.create_experiment("search-tour")
        for i in range(25):
            r = c.create_run(eid, run_name=f"r{i:02d}")
            c.log_batch(
                r.info.run_id,
                metrics=[Metric("score", float(i), 1, 0)],
                params=[Param("parity", "even" if i % 2 == 0 else "odd")],
            )
        found = c.search_runs(
            [eid], "params.parity = 'even' and metrics.score >= 10", order_by=["metrics.score DESC"]
        )
        assert [r.data.metrics["score"] for r in found] == [
            24.0,
            22.0,
            20.0,
            18.0,
            16.0,
            14.0,
            12.0,
            10.0,
        ]
        seen: list[str] = []
        token = None
        while True:
            page = c.search_runs(
                [eid], order_by=["attributes.run_name ASC"], max_results=10, page_token=token
            )
            seen += [r.info.run_name for r in page]
            token = page.token
            if not token:
                break
        assert seen == [f"r{i:02d}" for i in range(25)]
        assert code_of(c.search_runs, [eid], "metrics.score >>> 1") == "INVALID_PARAMETER_VALUE"
        assert code_of(c.search_runs, [eid], max_results=50_001) == "INVALID_PARAMETER_VALUE"

    await asyncio.to_thread(work)


async def test_errors_carry_the_codes_mlflows_server_gives(tracking_uri: str) -> None:
    def work() -> None:
        c = MlflowClient(tracking_uri)
        eid = c.create_experiment("errors")
        assert code_of(c.create_experiment, "errors") == "RESOURCE_ALREADY_EXISTS"
        assert code_of(c.get_run, "0" * 32) == "RESOURCE_DOES_NOT_EXIST"
        assert code_of(c.get_experiment, "987654") == "RESOURCE_DOES_NOT_EXIST"
        rid = c.create_run(eid).info.run_id
        c.log_param(rid, "lr", "0.1")
        c.log_param(rid, "lr", "0.1")  # the same value again is fine
        assert code_of(c.log_param, rid, "lr", "0.2") == "INVALID_PARAMETER_VALUE"
        assert code_of(c.log_metric, rid, "", 1.0) == "INVALID_PARAMETER_VALUE"
        # The client splits a large batch itself; the server holds MLflow's limit.
        too_many = [{"key": "m", "value": 1.0, "timestamp": 1, "step": i} for i in range(1001)]
        status, body = call(
            tracking_uri,
            "POST",
            "/api/2.0/mlflow/runs/log-batch",
            {"run_id": rid, "metrics": too_many},
        )
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "1000" in body["message"]
        c.delete_run(rid)
        assert code_of(c.log_metric, rid, "m", 1.0) == "INVALID_PARAMETER_VALUE"

    await asyncio.to_thread(work)


async def test_metric_history_bulk_interval_samples_like_mlflow(tracking_uri: str) -> None:
    def work() -> None:
        c = MlflowClient(tracking_uri)
        eid = c.create_experiment("bulk")
        runs = [c.create_run(eid).info.run_id for _ in range(2)]
        for n, rid in enumerate(runs):
            c.log_batch(
                rid, metrics=[Metric("m", float(s * (n + 1)), 1, s) for s in range(0, 1000, 1 + n)]
            )
        status, body = call(
            tracking_uri,
            "GET",
            "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
            query="&".join(f"run_ids={r}" for r in runs) + "&metric_key=m&max_results=10",
        )
        assert status == 200, body
        points = body["metrics"]
        steps = sorted({p["step"] for p in points})
        # At most 10 sampled steps plus each run's first and last.
        assert steps[0] == 0 and 998 in steps and 999 in steps and len(steps) <= 12
        assert {p["run_id"] for p in points} == set(runs)
        assert all(isinstance(p["timestamp"], int) for p in points)
        status, body = call(
            tracking_uri,
            "GET",
            "/api/2.0/mlflow/metrics/get-history-bulk-interval",
            query=f"run_ids={runs[0]}&metric_key=m&start_step=10&end_step=20",
        )
        assert status == 200 and [p["step"] for p in body["metrics"]] == list(range(10, 21))
        status, body = call(
            tracking_uri,
            "GET",
            "/api/2.0/mlflow/metrics/get-history-bulk-interval",
            query="&".join(f"run_ids={i:032x}" for i in range(101)) + "&metric_key=m",
        )
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "at most 100 run_ids" in body["message"]

    await asyncio.to_thread(work)


async def test_wire_conventions(tracking_uri: str) -> None:
    def work() -> None:
        status, body = call(
            tracking_uri,
            "POST",
            "/api/2.0/mlflow/experiments/create",
            {"name": "wire", "unknown_field": {"nested": [1, 2]}},
        )
        assert status == 200, body
        eid = body["experiment_id"]
        status, body = call(
            tracking_uri,
            "POST",
            "/ajax-api/2.0/mlflow/runs/create",
            {"experiment_id": eid, "start_time": 1_700_000_000_123},
        )
        assert status == 200
        run = body["run"]
        # int64 values are JSON numbers, not strings as in protobuf's own JSON.
        assert run["info"]["start_time"] == 1_700_000_000_123
        rid = run["info"]["run_id"]
        assert run["info"]["run_uuid"] == rid and run["info"]["status"] == "RUNNING"
        status, body = call(
            tracking_uri,
            "POST",
            "/api/2.0/mlflow/runs/log-metric",
            {"run_id": rid, "key": "m", "value": "NaN", "timestamp": "5", "step": 2},
        )
        assert status == 200, body
        status, body = call(
            tracking_uri,
            "GET",
            "/api/2.0/mlflow/metrics/get-history",
            query=f"run_id={rid}&metric_key=m",
        )
        assert body["metrics"] == [{"key": "m", "value": "NaN", "timestamp": 5, "step": 2}]
        values = [-0.0, "Infinity", "-Infinity", 5e-324, 1.7976931348623157e308, 0.1]
        status, body = call(
            tracking_uri,
            "POST",
            "/api/2.0/mlflow/runs/log-batch",
            {
                "run_id": rid,
                "metrics": [
                    {"key": "odd key", "value": v, "timestamp": 1, "step": i}
                    for i, v in enumerate(values)
                ],
            },
        )
        assert status == 200, body
        status, raw = call(
            tracking_uri,
            "GET",
            "/api/2.0/mlflow/metrics/get-history",
            query=f"run_id={rid}&metric_key=odd%20key&max_results=3",
        )
        assert [m["value"] for m in raw["metrics"]] == values[:3]
        assert math.copysign(1.0, raw["metrics"][0]["value"]) == -1.0
        assert raw["next_page_token"]
        status, raw = call(
            tracking_uri,
            "GET",
            "/api/2.0/mlflow/metrics/get-history",
            query=f"run_id={rid}&metric_key=odd%20key&page_token={raw['next_page_token']}",
        )
        assert [m["value"] for m in raw["metrics"]] == values[3:]
        assert "next_page_token" not in raw
        # GET fields come from the query string; a repeated key is a list.
        status, body = call(
            tracking_uri,
            "GET",
            "/api/2.0/mlflow/experiments/search",
            query="max_results=1&filter=name%20%3D%20%27wire%27",
        )
        assert status == 200 and [e["name"] for e in body["experiments"]] == ["wire"]
        status, body = call(
            tracking_uri, "POST", "/api/2.0/mlflow/runs/log-metric", {"run_id": rid, "key": "m"}
        )
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "'value'" in body["message"]
        status, body = call(
            tracking_uri,
            "POST",
            "/api/2.0/mlflow/runs/log-metric",
            {"run_id": rid, "key": "m", "value": "x", "timestamp": 1},
        )
        assert status == 400 and "'value'" in body["message"]
        req = urllib.request.Request(
            f"{tracking_uri}/api/2.0/mlflow/runs/create", data=b"{not json", method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=30)
        assert info.value.code == 400
        assert json.loads(info.value.read())["error_code"] == "INVALID_PARAMETER_VALUE"
        # The model registry is not part of trackd; unknown paths are MLflow's 404.
        for path in ("/api/2.0/mlflow/registered-models/search", "/api/2.0/mlflow/nope"):
            status, body = call(tracking_uri, "GET", path)
            assert status == 404 and body["error_code"] == "ENDPOINT_NOT_FOUND"
        assert call(tracking_uri, "GET", "/health") == (200, "OK")
        status, version = call(tracking_uri, "GET", "/version")
        assert status == 200 and version
        status, info_ = call(tracking_uri, "GET", "/api/3.0/mlflow/server-info")
        assert status == 200 and info_["workspaces_enabled"] is False

    await asyncio.to_thread(work)


async def test_a_logged_model_is_recorded_in_the_runs_history_tag(tracking_uri: str) -> None:
    def work() -> None:
        from mlflow.models import Model

        c = MlflowClient(tracking_uri)
        rid = c.create_run(c.create_experiment("log-model")).info.run_id
        store = c._tracking_client.store
        for path in ("model", "model-2"):
            model = Model(artifact_path=path, run_id=rid)
            model.add_flavor("python_function", loader_module="x", config={"secret": 1})
            store.record_logged_model(rid, model)
        history = json.loads(c.get_run(rid).data.tags["mlflow.log-model.history"])
        assert [h["artifact_path"] for h in history] == ["model", "model-2"]
        assert history[0]["flavors"] == {"python_function": {"loader_module": "x"}}
        status, body = call(
            tracking_uri,
            "POST",
            "/api/2.0/mlflow/runs/log-model",
            {"run_id": rid, "model_json": "{not json"},
        )
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE"

    await asyncio.to_thread(work)


def raw(uri: str, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> int:
    """The status of one request with exactly these headers (Host included)."""
    import http.client

    host, port = uri.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


async def test_pages_of_other_origins_and_rebound_names_are_refused(tracking_uri: str) -> None:
    host = tracking_uri.removeprefix("http://")
    create = "/api/2.0/mlflow/experiments/create"

    def work() -> None:
        body = json.dumps({"name": "origin-ok"}).encode()
        same = {"Host": host, "Origin": f"http://{host}", "Content-Type": "application/json"}
        assert raw(tracking_uri, "POST", create, same, body) == 200
        # A page of another site posting to the local server (CSRF): refused.
        other = {**same, "Origin": "http://evil.example"}
        body = json.dumps({"name": "origin-evil"}).encode()
        assert raw(tracking_uri, "POST", create, other, body) == 403
        assert raw(tracking_uri, "POST", create, {**same, "Origin": "null"}, body) == 403
        # Programs send no Origin.
        assert raw(tracking_uri, "POST", create, {"Host": host}, body) == 200
        # With auth off on loopback, a name rebound to 127.0.0.1 (DNS rebinding): refused.
        get = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=origin-ok"
        assert raw(tracking_uri, "GET", get, {"Host": host}) == 200
        port = host.rsplit(":", 1)[1]
        for name in ("localhost", "[::1]"):
            assert raw(tracking_uri, "GET", get, {"Host": f"{name}:{port}"}) == 200
        assert raw(tracking_uri, "GET", get, {"Host": f"evil.example:{port}"}) == 403
        assert raw(tracking_uri, "GET", "/", {"Host": "evil.example"}) == 403

    await asyncio.to_thread(work)
