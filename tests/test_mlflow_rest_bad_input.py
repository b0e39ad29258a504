"""Bad input to every REST route (read from the front's route table): generated JSON of
every shape in every field, bodies that are not objects or not JSON, values at and past
the limits (long incompressible strings, deep nesting, numbers beyond int64 and double).
Every answer is MLflow's error JSON with a 4xx status, never a 500 and never a traceback;
and nothing half-written shows afterwards."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trackd.server import app
from trackd.server.http.front import JSON_BODY_MAX, URL_BYTES_MAX, Route

pytestmark = pytest.mark.asyncio(loop_scope="module")

FIELDS = [
    "run_id", "run_uuid", "experiment_id", "experiment_ids", "run_ids", "key", "value",
    "timestamp", "step", "metrics", "params", "tags", "name", "new_name", "filter",
    "order_by", "max_results", "page_token", "metric_key", "start_step", "end_step", "status",
    "end_time", "start_time", "run_name", "user_id", "datasets", "models", "model_json",
    "view_type", "run_view_type", "experiment_name", "artifact_location",
]  # fmt: skip

LONG = base64.b64encode(os.urandom(750_000)).decode()  # 1 MB, incompressible
EDGES: list[Any] = [
    LONG,
    "\x00\ud7ff\U0010ffff" * 10,
    2**63 - 1,
    -(2**63),
    2**63,
    -(2**64),
    10**400,
    1e308,
    -1e308,
    "NaN",
    "-Infinity",
    "9" * 400,
    True,
    None,
    [],
    {},
    [[[[[]]]]],
    {"key": {"key": {"key": LONG}}},
    [{"key": LONG, "value": LONG, "timestamp": 2**63, "step": -(2**63)}],
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session(http_server: app.Running) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{http_server.http_port}") as s:
        yield s


def routes(running: app.Running) -> list[Route]:
    assert running.http is not None
    return [r for r in running.http.routes if r.rule]


async def send(
    session: aiohttp.ClientSession, route: Route, fields: Any, raw: bytes | None = None
) -> tuple[int, Any]:
    path = route.prefixes[0] + route.path.replace("{", "").replace("}", "")
    if route.method == "GET" and raw is None:
        # A URL has its own limit (URL_BYTES_MAX, tested apart): values are cut to fit.
        params = [
            (k, (v if isinstance(v, str) else json.dumps(v))[:4000]) for k, v in fields.items()
        ]
        kw: dict[str, Any] = {"params": params}
    else:
        data = raw if raw is not None else json.dumps(fields).encode()
        kw = {"data": data, "headers": {"Content-Type": "application/json"}}
    async with session.request(route.method, path, **kw) as resp:
        text = await resp.text()
        return resp.status, text


def assert_refused_cleanly(route: Route, status: int, text: str) -> None:
    where = f"{route.method} {route.path}: {status} {text[:300]}"
    assert status < 500, where
    assert "Traceback" not in text and 'File "' not in text, where
    if status != 200:
        body = json.loads(text)
        assert body["error_code"] and body["message"], where
        assert len(text) < 20_000, where  # a bad value is not echoed whole


async def test_edge_values_in_every_field_of_every_route(
    http_server: app.Running, session: aiohttp.ClientSession
) -> None:
    for route in routes(http_server):
        for value in EDGES:
            for chunk in range(0, len(FIELDS), 11):
                fields = dict.fromkeys(FIELDS[chunk : chunk + 11], value)
                status, text = await send(session, route, fields)
                assert_refused_cleanly(route, status, text)


async def test_bodies_that_are_not_json_objects(
    http_server: app.Running, session: aiohttp.ClientSession
) -> None:
    bodies = [
        b"[1, 2]",
        b'"text"',
        b"42",
        b"{not json",
        b"\xff\xfe\x00",
        nested(100_000).encode(),
        b'{"run_id": ' + nested(50_000).encode() + b"}",
        b"{" + b'"k": 1,' * 1000 + b'"run_id": "x"}',
    ]
    for route in routes(http_server):
        if route.method == "GET":
            continue
        for body in bodies:
            status, text = await send(session, route, None, raw=body)
            assert_refused_cleanly(route, status, text)
    get = next(r for r in routes(http_server) if r.path == "/runs/get")
    status, text = await send(session, get, {"run_id": "x" * (URL_BYTES_MAX + 1)})
    assert status in (400, 414), (status, text[:200])  # the HTTP parser's own refusal
    too_big = b'{"name": "' + b"x" * JSON_BODY_MAX + b'"}'
    create = next(r for r in routes(http_server) if r.path == "/experiments/create")
    status, text = await send(session, create, None, raw=too_big)
    assert status == 413 and json.loads(text)["error_code"] == "RESOURCE_EXHAUSTED"
    assert str(JSON_BODY_MAX) in json.loads(text)["message"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_generated_fields(
    http_server: app.Running, session: aiohttp.ClientSession, data: st.DataObject
) -> None:
    route = data.draw(st.sampled_from(routes(http_server)))
    names = data.draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True))
    fields = {n: data.draw(json_values) for n in names}
    status, text = await send(session, route, fields)
    assert_refused_cleanly(route, status, text)


async def test_a_refused_batch_leaves_nothing(
    tracking_uri: str, session: aiohttp.ClientSession
) -> None:
    api = "/api/2.0/mlflow"
    async with session.post(f"{api}/experiments/create", json={"name": "atomic"}) as r:
        eid = (await r.json())["experiment_id"]
    async with session.post(f"{api}/runs/create", json={"experiment_id": eid}) as r:
        rid = (await r.json())["run"]["info"]["run_id"]
    batch = {
        "run_id": rid,
        "metrics": [
            {"key": "ok", "value": 1.0, "timestamp": 1, "step": 0},
            {"key": "bad", "value": {}},
        ],
        "params": [{"key": "p", "value": "1"}],
        "tags": [{"key": "t", "value": "v"}],
    }
    async with session.post(f"{api}/runs/log-batch", json=batch) as r:
        assert r.status == 400
    await asyncio.sleep(0)
    async with session.get(f"{api}/runs/get", params={"run_id": rid}) as r:
        data = (await r.json())["run"]["data"]
    assert data["metrics"] == [] and data["params"] == []
    assert [t for t in data["tags"] if t["key"] == "t"] == []
