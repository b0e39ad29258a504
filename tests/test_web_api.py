"""The web view's server side through real HTTP: the JSON view API (`/api/view/...`), live
updates as server-sent events, artifact previews and downloads with their security
headers, the static files, and browser sign-in with the session cookie. Data is logged
through trackd's gRPC API (and artifacts through the MLflow REST proxy)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio

from conftest import server_config
from helpers import new_experiment, new_run
from test_permissions import trackd
from trackd.server import app
from trackd.server.http import view_api, web_static
from trackd.v1 import experiment_service_pb2_grpc, run_service_pb2_grpc
from trackd.v1 import run_service_pb2 as rpb

pytestmark = pytest.mark.asyncio(loop_scope="module")

VIEW = "/api/view"
SSE = {"Accept": "text/event-stream"}
WEB = Path(web_static.__file__).resolve().parent.parent / "web"
LIVENESS_S = 1.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(database_url: str) -> AsyncIterator[app.Running]:
    """trackd (auth off) with its HTTP front; a run quiet for a second is UNRESPONSIVE."""
    running = await app.start(
        server_config(http_listen="127.0.0.1:0", liveness_window=LIVENESS_S), database_url
    )
    yield running
    await running.stop(1.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(server: app.Running) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as s:
        yield s


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def channel(server: app.Running) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def runs(channel: grpc.aio.Channel) -> run_service_pb2_grpc.RunServiceStub:
    return run_service_pb2_grpc.RunServiceStub(channel)


@pytest.fixture(scope="module")
def experiments(channel: grpc.aio.Channel) -> experiment_service_pb2_grpc.ExperimentServiceStub:
    return experiment_service_pb2_grpc.ExperimentServiceStub(channel)


async def call(
    http: aiohttp.ClientSession, method: str, path: str, **kw: Any
) -> tuple[int, Any, Any]:
    """(status, JSON body, headers) of one request."""
    async with http.request(method, path, **kw) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def ok(http: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> Any:
    status, body, _ = await call(http, method, path, **kw)
    assert status == 200, (method, path, status, body)
    return body


async def stream_points(runs: Any, run_id: str, key: str, n: int, **col: Any) -> None:
    """Logs n points (step i, timestamp 1e12 + i, value i) through StreamMetrics."""
    chunk = 20_000

    async def gen() -> AsyncIterator[rpb.StreamMetricsRequest]:
        sid = f"web-{run_id[:8]}-{key}"
        yield rpb.StreamMetricsRequest(stream_id=sid, sequence=0)
        for seq, start in enumerate(range(0, n, chunk), 1):
            steps = list(range(start, min(n, start + chunk)))
            yield rpb.StreamMetricsRequest(
                stream_id=sid,
                sequence=seq,
                series=[
                    rpb.MetricColumns(
                        run_id=run_id,
                        key=key,
                        steps=steps,
                        timestamps=[10**12 + s for s in steps],
                        values=[float(s) for s in steps],
                    )
                ],
            )

    acks = [a async for a in runs.StreamMetrics(gen())]
    assert not any(a.rejections for a in acks), acks


# -- experiments, runs, logged models -----------------------------------------------------


async def test_session_with_auth_off(http: aiohttp.ClientSession) -> None:
    body = await ok(http, "GET", f"{VIEW}/session")
    assert body == {"auth": False, "principal": None, "admin": True}


async def test_experiments_and_runs_in_the_views_json(
    http: aiohttp.ClientSession, runs: Any, experiments: Any
) -> None:
    eid = await new_experiment(experiments, "web-shapes")
    run = await new_run(runs, eid, run_name="shaped", description="what it tried")
    rid = run.info.run_id
    await runs.LogMetric(
        rpb.LogMetricRequest(run_id=rid, key="loss", value=0.5, timestamp=1_700_000_000_123, step=7)
    )
    await runs.LogMetric(
        rpb.LogMetricRequest(run_id=rid, key="bad", value=math.nan, timestamp=1, step=1)
    )
    await runs.LogParam(rpb.LogParamRequest(run_id=rid, key="lr", value="0.01"))
    await runs.SetTag(rpb.SetTagRequest(run_id=rid, key="team", value="vision"))

    found = await ok(http, "GET", f"{VIEW}/experiments", params={"filter": "name = 'web-shapes'"})
    (exp,) = found["experiments"]
    assert exp["experiment_id"] == eid and exp["name"] == "web-shapes"
    assert isinstance(exp["creation_time"], int) and exp["creation_time"] > 0
    assert found["next_page_token"] == ""
    paged = await ok(
        http,
        "GET",
        f"{VIEW}/experiments",
        params=[("max_results", "1"), ("order_by", "name"), ("view_type", "VIEW_TYPE_ALL")],
    )
    assert len(paged["experiments"]) == 1 and paged["next_page_token"]

    await asyncio.sleep(LIVENESS_S + 0.5)  # no heartbeat: the run goes UNRESPONSIVE
    page = await ok(
        http, "POST", f"{VIEW}/runs/search", json={"experiment_ids": [eid], "run_view_type": 1}
    )
    (got,) = page["runs"]
    info = got["info"]
    assert info["run_id"] == rid and info["run_name"] == "shaped"
    assert info["status"] == "RUN_STATUS_UNRESPONSIVE"
    assert isinstance(info["start_time"], int) and info["start_time"] > 1_600_000_000_000
    assert info["end_time"] == 0 and info["lifecycle_stage"].endswith("ACTIVE")
    metrics = {m["key"]: m for m in got["data"]["metrics"]}
    assert metrics["loss"]["value"] == 0.5 and metrics["loss"]["step"] == 7
    assert metrics["loss"]["timestamp"] == 1_700_000_000_123
    assert metrics["bad"]["value"] == "NaN"
    assert {p["key"]: p["value"] for p in got["data"]["params"]} == {"lr": "0.01"}
    by_name = await ok(
        http,
        "POST",
        f"{VIEW}/runs/search",
        json={
            "experiment_ids": [eid],
            "run_view_type": "VIEW_TYPE_ALL",
            "filter": "params.lr = '0.01'",
            "order_by": ["metrics.loss DESC"],
        },
    )
    assert [r["info"]["run_id"] for r in by_name["runs"]] == [rid]

    one = await ok(http, "GET", f"{VIEW}/runs/{rid}")
    assert set(one) == {"run"}
    run_json = one["run"]
    assert {"info", "data", "inputs", "outputs"} <= set(run_json)
    assert run_json["info"]["description"] == "what it tried"
    assert "source" in run_json["info"] or run_json["info"].get("source") is None
    assert run_json["info"]["status"] == "RUN_STATUS_UNRESPONSIVE"
    assert run_json["inputs"] == {"dataset_inputs": [], "model_inputs": []} or isinstance(
        run_json["inputs"], dict
    )

    status, err, _ = await call(http, "GET", f"{VIEW}/runs/{'0' * 32}")
    assert status == 404 and err["error_code"] == "RESOURCE_DOES_NOT_EXIST" and err["request_id"]
    status, err, _ = await call(http, "GET", f"{VIEW}/runs/not-a-run")
    assert status == 400 and err["error_code"] == "INVALID_PARAMETER_VALUE"


async def test_a_bad_filter_names_its_column(http: aiohttp.ClientSession) -> None:
    status, err, _ = await call(
        http,
        "POST",
        f"{VIEW}/runs/search",
        json={"experiment_ids": ["0"], "filter": "params.a = 'x' AND metrics.b >> 3"},
    )
    assert status == 400 and err["error_code"] == "INVALID_PARAMETER_VALUE", err
    assert "column" in err["message"], err
    status, err, _ = await call(
        http, "POST", f"{VIEW}/runs/search", json={"experiment_ids": "0", "max_results": "x"}
    )
    assert status == 400 and err["error_code"] == "INVALID_PARAMETER_VALUE", err
    status, err, _ = await call(
        http, "POST", f"{VIEW}/runs/search", json={"experiment_ids": ["0"], "run_view_type": "NOPE"}
    )
    assert status == 400 and "SearchRunsRequest" in err["message"], err


async def test_children_of_a_run(http: aiohttp.ClientSession, runs: Any, experiments: Any) -> None:
    eid = await new_experiment(experiments)
    parent = (await new_run(runs, eid)).info.run_id
    kids = {(await new_run(runs, eid, parent_run_id=parent)).info.run_id for _ in range(3)}
    page = await ok(http, "GET", f"{VIEW}/runs/{parent}/children", params={"max_results": "2"})
    assert len(page["runs"]) == 2 and page["next_page_token"]
    rest = await ok(
        http,
        "GET",
        f"{VIEW}/runs/{parent}/children",
        params={"max_results": "2", "page_token": page["next_page_token"]},
    )
    got = {r["info"]["run_id"] for r in page["runs"] + rest["runs"]}
    assert got == kids and rest["next_page_token"] == ""
    assert all(r["info"]["parent_run_id"] == parent for r in rest["runs"])
    roots = await ok(
        http, "POST", f"{VIEW}/runs/search", json={"experiment_ids": [eid], "root_runs_only": True}
    )
    assert [r["info"]["run_id"] for r in roots["runs"]] == [parent]
    assert roots["runs"][0]["info"]["has_children"] is True


async def test_logged_models_search(
    http: aiohttp.ClientSession, runs: Any, experiments: Any
) -> None:
    eid = await new_experiment(experiments)
    api = "/api/2.0/mlflow"
    made = await ok(http, "POST", f"{api}/logged-models", json={"experiment_id": eid, "name": "m1"})
    mid = made["model"]["info"]["model_id"]
    page = await ok(http, "POST", f"{VIEW}/logged-models/search", json={"experiment_ids": [eid]})
    (model,) = page["models"]
    assert model["info"]["model_id"] == mid and model["info"]["name"] == "m1"
    assert isinstance(model["info"]["creation_timestamp"], int)
    status, err, _ = await call(
        http, "POST", f"{VIEW}/logged-models/search", json={"experiment_ids": [eid], "filter": "="}
    )
    assert status == 400 and err["error_code"] == "INVALID_PARAMETER_VALUE"


# -- envelopes -----------------------------------------------------------------------------


async def test_envelopes_of_a_100k_point_series(
    http: aiohttp.ClientSession, runs: Any, experiments: Any
) -> None:
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    await stream_points(runs, rid, "loss", 100_000)
    body = await ok(
        http,
        "POST",
        f"{VIEW}/envelopes",
        json={
            "run_ids": [rid],
            "metric_keys": ["loss", "absent"],
            "axis": "METRIC_AXIS_STEP",
            "buckets": 500,
        },
    )
    (env,) = body["envelopes"]
    assert env["run_id"] == rid and env["metric_key"] == "loss"
    assert env["axis"] == "METRIC_AXIS_STEP" and env["points"] is False
    assert 1 < len(env["count"]) <= 500 and sum(env["count"]) == 100_000
    assert all(isinstance(x, int) for x in env["x_first"] + env["x_last"] + env["count"])
    assert env["x_first"][0] == 0 and env["x_last"][-1] == 99_999
    assert env["min"][0] == 0.0 and env["max"][-1] == 99_999.0

    zoomed = await ok(
        http,
        "POST",
        f"{VIEW}/envelopes",
        json={
            "run_ids": [rid],
            "metric_keys": ["loss"],
            "axis": 2,
            "x_min": 10**12 + 10,
            "x_max": 10**12 + 19,
            "buckets": 100,
        },
    )
    (env,) = zoomed["envelopes"]
    assert env["axis"] == "METRIC_AXIS_WALL_TIME" and env["points"] is True
    assert env["x_first"] == [10**12 + i for i in range(10, 20)]
    assert env["first"] == [float(i) for i in range(10, 20)]

    status, err, _ = await call(
        http,
        "POST",
        f"{VIEW}/envelopes",
        json={"run_ids": [rid], "metric_keys": [], "buckets": 5000},
    )
    assert status == 400 and "buckets" in err["message"] and "metric_keys" in err["message"]


async def test_envelopes_beyond_the_answer_limit_are_refused(
    http: aiohttp.ClientSession, runs: Any, experiments: Any
) -> None:
    eid = await new_experiment(experiments)
    keys = [f"k{i:02d}" for i in range(60)]
    rids = [(await new_run(runs, eid)).info.run_id for _ in range(3)]
    n = 2000
    for rid in rids:

        async def gen(rid: str = rid) -> AsyncIterator[rpb.StreamMetricsRequest]:
            yield rpb.StreamMetricsRequest(stream_id=f"big-{rid[:8]}", sequence=0)
            steps = [10**12 + s for s in range(n)]  # 6-byte varints
            for seq, key in enumerate(keys, 1):
                yield rpb.StreamMetricsRequest(
                    stream_id=f"big-{rid[:8]}",
                    sequence=seq,
                    series=[
                        rpb.MetricColumns(
                            run_id=rid,
                            key=key,
                            steps=steps,
                            timestamps=[1_700_000_000_000 + s for s in steps],
                            values=[s * 0.37 for s in range(n)],
                        )
                    ],
                )

        acks = [a async for a in runs.StreamMetrics(gen())]
        assert not any(a.rejections for a in acks)
    started = time.monotonic()
    status, err, _ = await call(
        http,
        "POST",
        f"{VIEW}/envelopes",
        json={
            "run_ids": rids,
            "metric_keys": keys,
            "axis": "METRIC_AXIS_STEP",
            "buckets": 2000,
        },
    )
    assert status == 413 and err["error_code"] == "RESOURCE_EXHAUSTED", (status, err)
    assert f"{view_api.ENVELOPES_BYTES_MAX:,}" in err["message"]
    assert time.monotonic() - started < 30
    fewer = await ok(
        http,
        "POST",
        f"{VIEW}/envelopes",
        json={"run_ids": rids[:1], "metric_keys": keys[:10], "buckets": 2000},
    )
    assert len(fewer["envelopes"]) == 10
    assert all(sum(e["count"]) == n for e in fewer["envelopes"])


# -- live updates --------------------------------------------------------------------------


class Events:
    """The events of an open text/event-stream response."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, within: float) -> dict[str, str]:
        """The next event's fields (comments under ':')."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(within):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\n")
                if not line:
                    if fields:
                        return fields
                    continue
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")

    async def update(self, within: float, *, skip_heartbeats: bool = True) -> dict[str, Any]:
        while True:
            event = await self.next(within)
            if event.get("event") != "update":
                continue
            data: dict[str, Any] = json.loads(event["data"])
            assert data["position"] == event["id"]
            if skip_heartbeats and "heartbeat_time" in data:
                continue
            return data


async def test_watch_pushes_a_metric_within_two_seconds(
    server: app.Running, http: aiohttp.ClientSession, runs: Any, experiments: Any
) -> None:
    assert server.http is not None
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    async with http.get(f"{VIEW}/watch", params={"run_id": rid}, headers=SSE) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        events = Events(resp)
        first = await events.next(2)
        assert first == {"retry": "2000"}
        assert server.http.streams == 1
        sent = time.monotonic()
        await runs.LogMetric(
            rpb.LogMetricRequest(
                run_id=rid, key="acc", value=0.25, timestamp=1_700_000_000_000, step=3
            )
        )
        update = await events.update(2.0)
        assert time.monotonic() - sent < 2.0
        points = update["points"]
        assert points["run_id"] == rid and points["key"] == "acc"
        assert points["steps"] == [3] and points["timestamps"] == [1_700_000_000_000]
        assert points["values"] == [0.25]
        position = update["position"]
        # Silence: the watch's heartbeat (every 5 s) comes as an update too.
        beat = await events.update(7.0, skip_heartbeats=False)
        assert isinstance(beat["heartbeat_time"], int) and beat["heartbeat_time"] > 0
    # The client went away: the stream ends on the server's side.
    for _ in range(60):  # 3 s
        if not server.http.streams:
            break
        await asyncio.sleep(0.05)
    assert server.http.streams == 0

    # Resuming after the position (as a reconnecting EventSource does with Last-Event-ID).
    await runs.LogMetric(
        rpb.LogMetricRequest(run_id=rid, key="acc", value=0.5, timestamp=1, step=4)
    )
    headers = {**SSE, "Last-Event-ID": position}
    async with http.get(f"{VIEW}/watch", params={"experiment_id": eid}, headers=headers) as resp:
        assert resp.status == 200
        update = await Events(resp).update(3.0)
        assert update["points"]["steps"] == [4]


async def test_watch_refusals_are_error_json(
    http: aiohttp.ClientSession, runs: Any, experiments: Any
) -> None:
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    cases: list[tuple[dict[str, str], dict[str, str], int]] = [
        ({"run_id": rid}, {}, 400),  # not asked as an event stream
        ({}, SSE, 400),
        ({"run_id": rid, "experiment_id": eid}, SSE, 400),
        ({"run_id": "nope"}, SSE, 400),
        ({"run_id": "0" * 32}, SSE, 404),
        ({"experiment_id": "987654321"}, SSE, 404),
        ({"run_id": rid, "resume_position": "bogus!"}, SSE, 400),
        ({"run_id": rid, "metric_keys": "x" * 300}, SSE, 400),
    ]
    for params, headers, want in cases:
        status, err, resp_headers = await call(
            http, "GET", f"{VIEW}/watch", params=params, headers=headers
        )
        assert status == want, (params, status, err)
        assert err["error_code"] and err["message"], err
        assert "WWW-Authenticate" not in resp_headers


async def test_stop_ends_open_streams_cleanly(database_url: str) -> None:
    running = await app.start(server_config(http_listen="127.0.0.1:0"), database_url)
    stopped = False
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{running.http_port}") as s:
            responses = []
            for _ in range(3):
                resp = await s.get(f"{VIEW}/watch", params={"experiment_id": "0"}, headers=SSE)
                assert resp.status == 200
                assert await Events(resp).next(2) == {"retry": "2000"}
                responses.append(resp)
            assert running.http is not None and running.http.streams == 3
            started = time.monotonic()
            await running.stop(5.0)
            stopped = True
            assert time.monotonic() - started < 3.0
            for resp in responses:
                # The rest of the body reads to its clean end (the chunked terminator).
                async with asyncio.timeout(2):
                    rest = await resp.content.read()
                assert b"event: failure" not in rest
                assert resp.content.at_eof()
                resp.release()
    finally:
        if not stopped:
            await running.stop(1.0)


# -- artifacts -----------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
FILES = {
    "plots/curve.png": PNG,
    "notes.txt": b"hello\nworld\n",
    "page.html": b"<html><script>alert(document.cookie)</script></html>",
    "drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    "weights.bin": bytes(range(256)) * 4,
    "MLmodel": b"flavors: {}\n",
}


async def test_artifacts_listed_previewed_and_downloaded(
    server: app.Running, http: aiohttp.ClientSession, runs: Any, experiments: Any
) -> None:
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    for path, data in FILES.items():
        put = f"/api/2.0/mlflow-artifacts/artifacts/{eid}/{rid}/artifacts/{path}"
        async with http.put(put, data=data) as resp:
            assert resp.status == 200, await resp.text()

    top = await ok(http, "GET", f"{VIEW}/runs/{rid}/artifacts")
    assert top["root_uri"]
    listed = {f["path"]: f for f in top["files"]}
    assert set(listed) == {
        "plots",
        "notes.txt",
        "page.html",
        "drawing.svg",
        "weights.bin",
        "MLmodel",
    }
    assert listed["plots"]["is_dir"] is True
    assert listed["weights.bin"]["file_size"] == 1024
    deep = await ok(http, "GET", f"{VIEW}/runs/{rid}/artifacts", params={"path": "plots"})
    assert [f["path"] for f in deep["files"]] == ["plots/curve.png"]
    everything = await ok(http, "GET", f"{VIEW}/runs/{rid}/artifacts", params={"recursive": "true"})
    assert {f["path"] for f in everything["files"] if not f["is_dir"]} == set(FILES)

    expected = {
        "plots/curve.png": ("image/png", "inline"),
        "notes.txt": ("text/plain; charset=utf-8", "inline"),
        "MLmodel": ("text/plain; charset=utf-8", "inline"),
        "page.html": ("application/octet-stream", "attachment"),
        "drawing.svg": ("application/octet-stream", "attachment"),
        "weights.bin": ("application/octet-stream", "attachment"),
    }
    for path, (kind, disposition) in expected.items():
        async with http.get(f"{VIEW}/runs/{rid}/artifacts/{path}") as resp:
            assert resp.status == 200, path
            assert await resp.read() == FILES[path]
            assert resp.headers["Content-Type"] == kind, path
            assert resp.headers["Content-Disposition"].startswith(disposition), path
            assert path.rsplit("/", 1)[-1] in resp.headers["Content-Disposition"]
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Content-Security-Policy"] == "sandbox"
    async with http.get(f"{VIEW}/runs/{rid}/artifacts/plots/curve.png?download=1") as resp:
        assert resp.headers["Content-Disposition"].startswith("attachment")
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Content-Security-Policy"] == "sandbox"
    async with http.get(
        f"{VIEW}/runs/{rid}/artifacts/weights.bin", headers={"Range": "bytes=10-19"}
    ) as resp:
        assert resp.status == 206 and await resp.read() == FILES["weights.bin"][10:20]
        assert resp.headers["Content-Range"] == "bytes 10-19/1024"

    for path, want in (("plots", 400), ("missing.txt", 404), ("plots/", 400)):
        status, err, headers = await call(http, "GET", f"{VIEW}/runs/{rid}/artifacts/{path}")
        assert status == want, (path, status, err)
        assert err["error_code"] and headers["Content-Type"].startswith("application/json")
    assert server.http_port is not None
    port = server.http_port
    for raw in ("a/%2e%2e/notes.txt", "%2e%2e/%2e%2e/x", "a%5c..%5cnotes.txt"):
        status, data = await raw_get(port, f"{VIEW}/runs/{rid}/artifacts/{raw}")
        assert status == 400, (raw, data[:300])
        assert b"hello" not in data

    api = "/api/2.0/mlflow"
    made = await ok(http, "POST", f"{api}/logged-models", json={"experiment_id": eid, "name": "m"})
    mid = made["model"]["info"]["model_id"]
    put = f"/api/2.0/mlflow-artifacts/artifacts/{eid}/models/{mid}/artifacts/model/README.md"
    async with http.put(put, data=b"# model") as resp:
        assert resp.status == 200
    listed = await ok(http, "GET", f"{VIEW}/models/{mid}/artifacts", params={"recursive": "1"})
    assert [f["path"] for f in listed["files"] if not f["is_dir"]] == ["model/README.md"]
    async with http.get(f"{VIEW}/models/{mid}/artifacts/model/README.md") as resp:
        assert resp.status == 200 and await resp.read() == b"# model"
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert resp.headers["Content-Security-Policy"] == "sandbox"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    status, err, _ = await call(http, "GET", f"{VIEW}/models/m-{'0' * 32}/artifacts")
    assert status == 404, err


# -- static files --------------------------------------------------------------------------


async def test_the_page_and_static_files(http: aiohttp.ClientSession) -> None:
    index = (WEB / "index.html").read_bytes()
    for path in ("/", "/static/index.html"):
        async with http.get(path) as resp:
            assert resp.status == 200 and await resp.read() == index
            h = resp.headers
            assert h["Content-Type"] == "text/html; charset=utf-8"
            assert h["Content-Security-Policy"] == web_static.CSP
            assert "default-src 'self'" in h["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in h["Content-Security-Policy"]
            assert h["X-Content-Type-Options"] == "nosniff"
            assert h["Referrer-Policy"] == "no-referrer"
            assert h["Cache-Control"] == "no-cache"
            etag = h["ETag"]
    async with http.get("/", headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304 and await resp.read() == b""
        assert resp.headers["ETag"] == etag
    async with http.get("/", headers={"If-None-Match": '"stale"'}) as resp:
        assert resp.status == 200


async def test_the_page_preloads_every_module(http: aiohttp.ClientSession) -> None:
    """index.html names every module under js/ for preloading (a module left out would be
    fetched only when its importer is parsed, a round trip later), and each one answers."""
    import re

    async with http.get("/") as resp:
        page = await resp.text()
    preloaded = set(re.findall(r'<link rel="modulepreload" href="/static/(js/[^"]+)">', page))
    assert preloaded == {f"js/{p.name}" for p in (WEB / "js").glob("*.js")}
    for path in sorted(preloaded):
        async with http.get(f"/static/{path}") as resp:
            assert resp.status == 200 and "javascript" in resp.headers["Content-Type"]


async def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """A GET of `target` exactly as written (no client normalizes its dots)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data


async def test_static_paths_never_leave_the_folder(server: app.Running) -> None:
    assert server.http_port is not None
    for target in (
        "/static/../http/front.py",
        "/static/../../server/app.py",
        "/static/%2e%2e/http/front.py",
        "/static/..%2fhttp%2ffront.py",
        "/static/%2e%2e%2f%2e%2e%2fapp.py",
        "/static/..%5chttp%5cfront.py",
        "/static/.%2e/app.py",
        "/static//etc/passwd",
        "/static/%00",
        "/static/",
        "/static/.hidden",
        "/static/nothing.js",
        "/static/index.html/",
        "/../../etc/passwd",
    ):
        status, data = await raw_get(server.http_port, target)
        assert status in (400, 404), (target, status, data[:300])
        assert b"import " not in data and b"root:" not in data, target


# -- sign-in -------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def authed(database_url: str) -> AsyncIterator[tuple[app.Running, dict[str, str]]]:
    """trackd with auth on and its HTTP front; tokens of an admin and a reader."""
    tokens = {
        "admin": trackd(database_url, "token", "create", "--principal", "boss", "--admin"),
        "reader": trackd(
            database_url, "token", "create", "--principal", "ro", "--role", "default=READ"
        ),
        "gone": trackd(
            database_url, "token", "create", "--principal", "gone", "--name", "g", "--admin"
        ),
    }
    trackd(database_url, "token", "revoke", "--principal", "gone", "--name", "g")
    running = await app.start(server_config(auth="on", http_listen="127.0.0.1:0"), database_url)
    try:
        yield running, tokens
    finally:
        await running.stop(1.0)


def cookie_header(token: str) -> dict[str, str]:
    return {"Cookie": f"trackd_session={token}"}


async def test_sign_in_with_the_session_cookie(
    authed: tuple[app.Running, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    running, tokens = authed
    caplog.set_level(logging.DEBUG)
    view = {"X-Trackd-View": "1"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.http_port}") as s:
        body = await ok(s, "GET", f"{VIEW}/session")
        assert body == {"auth": True, "principal": None, "admin": False}
        status, err, headers = await call(s, "GET", f"{VIEW}/experiments")
        assert status == 401 and "WWW-Authenticate" not in headers

        # Sign-in needs the view's header, and a good token.
        status, err, _ = await call(s, "POST", f"{VIEW}/session", json={"token": tokens["admin"]})
        assert status == 403 and err["error_code"] == "PERMISSION_DENIED"
        for bad in ("tkd_wrong", tokens["gone"], "", "x" * 20_000):
            status, err, headers = await call(
                s, "POST", f"{VIEW}/session", json={"token": bad}, headers=view
            )
            assert status in (400, 401), (bad[:20], status, err)
            assert "Set-Cookie" not in headers and "WWW-Authenticate" not in headers
        status, err, headers = await call(
            s, "POST", f"{VIEW}/session", json={"token": tokens["gone"]}, headers=view
        )
        assert status == 401 and err["error_code"] == "UNAUTHENTICATED"

        async with s.post(f"{VIEW}/session", json={"token": tokens["reader"]}, headers=view) as r:
            assert r.status == 200
            assert await r.json() == {"auth": True, "principal": "ro", "admin": False}
            morsel = r.cookies["trackd_session"]
            assert morsel.value == tokens["reader"]
            assert morsel["httponly"] is True and morsel["samesite"] == "Strict"
            assert morsel["path"] == "/" and not morsel["secure"]
            assert tokens["reader"] not in await r.text()
        async with s.post(
            f"{VIEW}/session",
            json={"token": tokens["admin"]},
            headers={**view, "X-Forwarded-Proto": "https"},
        ) as r:
            assert r.status == 200 and r.cookies["trackd_session"]["secure"] is True

    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.http_port}") as s:
        reader = cookie_header(tokens["reader"])
        body = await ok(s, "GET", f"{VIEW}/session", headers=reader)
        assert body == {"auth": True, "principal": "ro", "admin": False}
        await ok(s, "GET", f"{VIEW}/experiments", headers=reader)
        await ok(s, "GET", "/api/2.0/mlflow/experiments/search", headers=reader)
        # Non-GET with the cookie: the view's header or 403 (the CSRF guard).
        search = {"experiment_ids": ["0"]}
        status, err, _ = await call(s, "POST", f"{VIEW}/runs/search", json=search, headers=reader)
        assert status == 403 and err["error_code"] == "PERMISSION_DENIED", err
        assert "X-Trackd-View" in err["message"]
        await ok(s, "POST", f"{VIEW}/runs/search", json=search, headers={**reader, **view})
        status, err, _ = await call(
            s, "POST", "/api/2.0/mlflow/experiments/create", json={"name": "csrf"}, headers=reader
        )
        assert status == 403, err
        # The reader may not write, with the header either.
        status, err, _ = await call(
            s,
            "POST",
            "/api/2.0/mlflow/experiments/create",
            json={"name": "csrf"},
            headers={**reader, **view},
        )
        assert status == 403 and "EDIT" in err["message"], err
        # An Authorization header wins over the cookie, and needs no view header.
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        status, _, _ = await call(
            s,
            "GET",
            f"{VIEW}/experiments",
            headers={**cookie_header(tokens["admin"]), "Authorization": "Bearer tkd_bad"},
        )
        assert status == 401
        body = await ok(s, "GET", f"{VIEW}/session", headers=admin)
        assert body == {"auth": True, "principal": "boss", "admin": True}
        await ok(s, "POST", f"{VIEW}/runs/search", json=search, headers=admin)
        # A revoked token's cookie: refused, and the session says nobody.
        gone = cookie_header(tokens["gone"])
        status, _, _ = await call(s, "GET", f"{VIEW}/experiments", headers=gone)
        assert status == 401
        assert (await ok(s, "GET", f"{VIEW}/session", headers=gone))["principal"] is None
        # Live updates with the cookie.
        async with s.get(
            f"{VIEW}/watch", params={"experiment_id": "0"}, headers={**reader, **SSE}
        ) as resp:
            assert resp.status == 200
            assert await Events(resp).next(2) == {"retry": "2000"}

        # Sign-out clears the cookie (and needs the view's header).
        status, _, _ = await call(s, "DELETE", f"{VIEW}/session", headers=reader)
        assert status == 403
        async with s.delete(f"{VIEW}/session", headers={**reader, **view}) as r:
            assert r.status == 200
            morsel = r.cookies["trackd_session"]
            assert morsel.value == "" and morsel["max-age"] == "0"

    # A browser-like client: the cookie jar keeps the cookie and sends it back.
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{running.http_port}", cookie_jar=jar) as s:
        await ok(s, "POST", f"{VIEW}/session", json={"token": tokens["admin"]}, headers=view)
        assert (await ok(s, "GET", f"{VIEW}/session"))["principal"] == "boss"
        await ok(s, "GET", f"{VIEW}/runs/search".replace("runs/search", "experiments"))
        await ok(s, "DELETE", f"{VIEW}/session", headers=view)
        assert (await ok(s, "GET", f"{VIEW}/session"))["principal"] is None
        status, _, _ = await call(s, "GET", f"{VIEW}/experiments")
        assert status == 401

    for record in caplog.records:
        text = record.getMessage() + json.dumps(record.__dict__, default=str)
        for token in tokens.values():
            assert token not in text, record
