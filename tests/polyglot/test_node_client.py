"""Polyglot is tested, not assumed: a Node client loaded from protos/ (@grpc/grpc-js and
@grpc/proto-loader with `longs: String`, gRPC's default limits) runs against a real trackd,
and what it wrote and read is checked again through the Python stubs and the database.

The Node side (trackd_client.js) covers experiments and runs, a LogBatch of 1000 points,
StreamMetrics (handshake, acks, rejected chunks with numeric status codes, a resend after a
reconnect), every page of GetMetricHistory, StreamMetricHistory, SearchRuns with filters,
error details decoded from grpc-status-details-bin to ErrorInfo.reason and BadRequest
fields, int64 values above 2^53 and NaN/+Inf/-Inf; it asserts with node:assert and prints
one JSON object.

Skipped only where `node` is not installed. The npm packages (pinned in package.json and
package-lock.json) are installed by `make test`, or here when node_modules is missing or
older than the lockfile (npm_deps.py); without npm then, the test fails saying so.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import npm_deps
import pytest

from trackd.server import app
from trackd.v1 import run_pb2
from trackd.v1 import run_service_pb2 as rpb

HERE = Path(__file__).resolve().parent
PROTOS = HERE.parents[1] / "protos"
SCRIPT = HERE / "trackd_client.js"
NODE = shutil.which("node")
TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(
    NODE is None, reason="node is not installed: the Node client test needs Node.js on PATH"
)

STEP_2_62_PLUS_1 = 2**62 + 1
TS_2_53_PLUS_1 = 2**53 + 1
INT64_MAX = 2**63 - 1


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or bits(a) == bits(b)


async def run_node(port: int) -> dict[str, Any]:
    """Runs trackd_client.js against 127.0.0.1:port; kills it after TIMEOUT_S."""
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE,
        str(SCRIPT),
        f"127.0.0.1:{port}",
        str(PROTOS),
        cwd=HERE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    except TimeoutError:
        proc.kill()  # SIGKILL to its pid
        await proc.wait()
        pytest.fail(f"trackd_client.js (pid {proc.pid}) did not finish in {TIMEOUT_S} s; killed")
    stderr = err.decode(errors="replace")
    assert proc.returncode == 0, f"trackd_client.js exited {proc.returncode}:\n{stderr}"
    lines = out.decode().strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line, got:\n{out.decode()}\n{stderr}"
    result: dict[str, Any] = json.loads(lines[0])
    return result


async def history(runs: Any, run_id: str, key: str, page: int) -> list[run_pb2.Metric]:
    """Every page of GetMetricHistory, through the Python stubs."""
    points: list[run_pb2.Metric] = []
    token = ""
    while True:
        resp = await runs.GetMetricHistory(
            rpb.GetMetricHistoryRequest(
                run_id=run_id, metric_key=key, max_results=page, page_token=token
            )
        )
        assert resp.metric_key == key
        points.extend(resp.metrics)
        if not resp.next_page_token:
            return points
        token = resp.next_page_token


async def streamed(runs: Any, run_id: str, key: str) -> list[tuple[int, int, float]]:
    out: list[tuple[int, int, float]] = []
    async for chunk in runs.StreamMetricHistory(
        rpb.StreamMetricHistoryRequest(run_id=run_id, metric_key=key)
    ):
        out.extend(zip(chunk.steps, chunk.timestamps, chunk.values, strict=True))
    return out


async def test_node_client(server: app.Running, runs: Any, database_url: str) -> None:
    try:
        await asyncio.to_thread(npm_deps.ensure)
    except npm_deps.NpmError as exc:
        pytest.fail(str(exc))

    res = await run_node(server.port)
    run_id = res["run_id"]

    # The run as Python sees it.
    got = (await runs.GetRun(rpb.GetRunRequest(run_id=run_id))).run
    assert got.info.status == run_pb2.RUN_STATUS_FINISHED
    assert got.info.run_name == "node-main-renamed"
    assert got.info.experiment_id == res["experiment_id"]
    assert {p.key: p.value for p in got.data.params} == {"lr": "0.001"}

    # LogBatch of 1000 points: read every page from Python too.
    assert res["loss_page_sizes"] == [300, 300, 300, 100]
    loss = await history(runs, run_id, "loss", 250)
    assert [(m.step, m.value) for m in loss] == [(i, 1 / (i + 1)) for i in range(1000)]
    assert all(m.key == "" for m in loss)

    # int64 above 2^53 and NaN/±Inf written by Node through LogBatch.
    special = await history(runs, run_id, "special_batch", 0)
    assert [(m.step, m.timestamp) for m in special] == [
        (-STEP_2_62_PLUS_1, TS_2_53_PLUS_1),
        (TS_2_53_PLUS_1, TS_2_53_PLUS_1),
        (STEP_2_62_PLUS_1, TS_2_53_PLUS_1),
        (INT64_MAX, 1_700_000_000_000),
    ]
    assert [bits(m.value) for m in special[:2]] == [bits(math.inf), bits(0.5)]
    assert math.isnan(special[2].value) and special[3].value == -math.inf
    for mine, node in zip(special, res["special_batch"], strict=True):
        assert (str(mine.step), str(mine.timestamp)) == (node["step"], node["timestamp"])
        assert same(mine.value, float(node["value"]))  # float() reads NaN, Infinity, -0

    # -0.0 logged by protobufjs in a singular double (LogBatch) keeps its sign.
    (neg_zero,) = await history(runs, run_id, "neg_zero_batch", 0)
    assert bits(neg_zero.value) == bits(-0.0)

    # StreamMetrics: the handshakes, the acks, the rejections.
    assert res["stream_handshakes"] == ["0", "4"]
    assert res["stream_acks"][-1] == "5"
    rejections = {r["sequence"]: r for r in res["stream_rejections"]}
    assert rejections["2"]["status_code"] == grpc.StatusCode.NOT_FOUND.value[0] == 5
    assert rejections["2"]["deprecated_code"] == "NOT_FOUND"
    assert rejections["2"]["reason"] == "RESOURCE_DOES_NOT_EXIST"
    assert rejections["3"]["status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "series[0].key" in rejections["3"]["message"]

    # The resent chunk was not written twice: the API and the database agree.
    stream_loss = await history(runs, run_id, "stream_loss", 0)
    assert [m.step for m in stream_loss] == list(range(7))
    assert res["stream_loss_steps"] == [str(i) for i in range(7)]
    summary = {s.key: s for s in got.data.metric_summaries}
    assert summary["stream_loss"].count == 7
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetchval(
            "SELECT count(*) FROM metric_points p JOIN metric_series s USING (series_id)"
            " JOIN runs r USING (run_pk) WHERE r.run_id = $1::uuid AND s.key = $2",
            run_id,
            "stream_loss",
        )
        marker = await conn.fetchval(
            "SELECT count(*) FROM metric_series s JOIN runs r USING (run_pk)"
            " WHERE r.run_id = $1::uuid AND s.key = 'resend_marker'",
            run_id,
        )
        committed = await conn.fetchval(
            "SELECT last_sequence FROM ingest_streams WHERE stream_id = $1", res["stream_id"]
        )
    finally:
        await conn.close()
    assert rows == 7
    assert marker == 0  # the resent chunk 4 carried a point of its own: not written
    assert committed == 5

    # Columns streamed by Node, read back bit-exactly (-0.0 included) from Python.
    cols = await streamed(runs, run_id, "stream_special")
    assert [(s, t) for s, t, _ in cols] == [
        (-STEP_2_62_PLUS_1, TS_2_53_PLUS_1),
        (7, 1_700_000_000_000),
        (8, TS_2_53_PLUS_1),
        (STEP_2_62_PLUS_1, TS_2_53_PLUS_1),
        (INT64_MAX, 1_700_000_000_000),
    ]
    values = [v for _, _, v in cols]
    assert [bits(v) for v in values[:3]] == [bits(math.inf), bits(-0.0), bits(1.5)]
    assert math.isnan(values[3]) and values[4] == -math.inf
    for (step, ts, value), node in zip(cols, res["stream_special"], strict=True):
        assert (str(step), str(ts)) == (node["step"], node["timestamp"])
        assert same(value, float(node["value"]))  # float() reads NaN, Infinity, -0

    # SearchRuns: the same filter from Python finds what Node found.
    page = await runs.SearchRuns(
        rpb.SearchRunsRequest(
            experiment_ids=[res["experiment_id"]],
            filter="params.lr = '0.001' AND attributes.status = 'FINISHED'",
        )
    )
    assert [r.info.run_id for r in page.runs] == res["search"]["by_param"] == [run_id]
    assert res["search"]["by_or"] == [res["other_run_id"], run_id]

    # Error details as Node decoded them.
    errors = res["errors"]
    assert errors["get_run_unknown"] == {
        "code": grpc.StatusCode.NOT_FOUND.value[0],
        "reason": "RESOURCE_DOES_NOT_EXIST",
    }
    assert errors["log_batch_bad_key"] == {
        "code": grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "reason": "INVALID_PARAMETER_VALUE",
        "fields": ["metrics[0].key"],
    }
    assert errors["create_experiment_twice"]["reason"] == "RESOURCE_ALREADY_EXISTS"
