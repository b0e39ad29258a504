"""Operability that reliability needs: request ids, Prometheus metrics, per-client limits,
message size limits."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conftest import server_config
from helpers import error_info, new_run
from trackd.server import app
from trackd.v1 import metric_pb2, run_service_pb2_grpc
from trackd.v1 import run_service_pb2 as rpb


async def test_request_id_is_taken_from_metadata_and_returned(runs) -> None:
    call = runs.GetRun(rpb.GetRunRequest(run_id="0" * 32), metadata=(("x-request-id", "req-42"),))
    with pytest.raises(grpc.aio.AioRpcError):
        await call
    assert ("x-request-id", "req-42") in tuple(await call.trailing_metadata())


async def test_request_id_is_generated_when_absent(runs) -> None:
    run = await new_run(runs)
    call = runs.GetRun(rpb.GetRunRequest(run_id=run.info.run_id))
    await call
    ids = [v for k, v in await call.trailing_metadata() if k == "x-request-id"]
    assert len(ids) == 1 and len(ids[0]) == 32


async def test_access_log_carries_the_request_id(runs, caplog) -> None:
    caplog.set_level("INFO", logger="trackd.access")
    from trackd.server.service.guard import RequestIdFilter

    def logged() -> bool:
        return any(
            getattr(r, "request_id", None) == "trace-7"
            and r.code == "NOT_FOUND"  # type: ignore[attr-defined]
            and r.method == "GetRun"  # type: ignore[attr-defined]
            for r in caplog.records
            if r.name == "trackd.access"
        )

    handler_filter = RequestIdFilter()
    caplog.handler.addFilter(handler_filter)
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await runs.GetRun(
                rpb.GetRunRequest(run_id="1" * 32), metadata=(("x-request-id", "trace-7"),)
            )
        # The server writes the line once the call has ended, which can be just after the
        # client has its answer.
        for _ in range(100):
            if logged():
                break
            await asyncio.sleep(0.01)
    finally:
        caplog.handler.removeFilter(handler_filter)
    assert logged()


async def test_prometheus_metrics_are_served(database_url: str) -> None:
    running = await app.start(server_config(metrics_listen="127.0.0.1:0"), database_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            runs = run_service_pb2_grpc.RunServiceStub(ch)
            run = await new_run(runs)
            await runs.LogMetric(rpb.LogMetricRequest(run_id=run.info.run_id, key="m", value=1))
            with pytest.raises(grpc.aio.AioRpcError):
                await runs.GetRun(rpb.GetRunRequest(run_id="2" * 32))
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        wanted = 'trackd_requests_total{code="NOT_FOUND",method="GetRun"} 1.0'
        for _ in range(100):  # the server counts a call once it has ended
            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(url, timeout=5).read().decode()
            )
            if wanted in text:
                break
            await asyncio.sleep(0.01)
        assert 'trackd_requests_total{code="OK",method="CreateRun"} 1.0' in text
        assert 'trackd_requests_total{code="NOT_FOUND",method="GetRun"} 1.0' in text
        assert "trackd_request_duration_seconds_bucket" in text
        assert "trackd_ingest_points_total 1.0" in text
        assert "trackd_pool_connections" in text and "trackd_ingest_queued_points" in text
    finally:
        await running.stop(1.0)


async def test_rate_limit_answers_resource_exhausted_with_retry_info(database_url: str) -> None:
    running = await app.start(server_config(client_rate_limit=5.0), database_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            runs = run_service_pb2_grpc.RunServiceStub(ch)
            md = (("x-client-id", "greedy"),)
            codes = []
            for _ in range(12):
                try:
                    await runs.GetRun(rpb.GetRunRequest(run_id="3" * 32), metadata=md)
                except grpc.aio.AioRpcError as err:
                    codes.append(err.code())
                    last = err
            assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 5
            assert error_info(last).reason == "REQUEST_LIMIT_EXCEEDED"
            status = rpc_status.from_call(last)  # type: ignore[arg-type]
            retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
            assert retry, "no RetryInfo"
            info = error_details_pb2.RetryInfo()
            retry[0].Unpack(info)
            assert 0 < info.retry_delay.ToNanoseconds() <= 1_000_000_000
            assert "5 calls per second" in last.details()
            # Another client is not affected.
            with pytest.raises(grpc.aio.AioRpcError) as other:
                await runs.GetRun(
                    rpb.GetRunRequest(run_id="3" * 32), metadata=(("x-client-id", "polite"),)
                )
            assert other.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await running.stop(1.0)


async def test_concurrency_limit_counts_calls_in_flight(database_url: str) -> None:
    running = await app.start(server_config(client_max_concurrency=2), database_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            runs = run_service_pb2_grpc.RunServiceStub(ch)
            md = (("x-client-id", "busy"),)
            results = await asyncio.gather(
                *(runs.GetRun(rpb.GetRunRequest(run_id="4" * 32), metadata=md) for _ in range(30)),
                return_exceptions=True,
            )
            codes = {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)}
            assert codes <= {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
            # Once the calls are done (the server releases a call just after answering
            # it), the client is admitted again.
            code = None
            for _ in range(100):
                with pytest.raises(grpc.aio.AioRpcError) as again:
                    await runs.GetRun(rpb.GetRunRequest(run_id="4" * 32), metadata=md)
                code = again.value.code()
                if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    break
                await asyncio.sleep(0.01)
            assert code == grpc.StatusCode.NOT_FOUND
    finally:
        await running.stop(1.0)


async def test_oversized_messages_get_resource_exhausted_naming_the_limit(
    database_url: str,
) -> None:
    running = await app.start(server_config(max_message_bytes=64 * 1024), database_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            runs = run_service_pb2_grpc.RunServiceStub(ch)
            run = await new_run(runs)
            big = rpb.LogBatchRequest(
                run_id=run.info.run_id,
                metrics=[metric_pb2.Metric(key="k" * 200, value=1.0, step=i) for i in range(1000)],
            )
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await runs.LogBatch(big)
            assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "65536" in (exc.value.details() or "")

            async def gen():  # type: ignore[no-untyped-def]
                yield rpb.StreamMetricsRequest(stream_id="big", sequence=0)
                yield rpb.StreamMetricsRequest(
                    stream_id="big",
                    sequence=1,
                    series=[
                        rpb.MetricColumns(
                            run_id=run.info.run_id,
                            key="k",
                            steps=list(range(20_000)),
                            values=[0.0] * 20_000,
                        )
                    ],
                )

            with pytest.raises(grpc.aio.AioRpcError) as stream_exc:
                async for _ in runs.StreamMetrics(gen()):
                    pass
            assert stream_exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "65536" in (stream_exc.value.details() or "")
    finally:
        await running.stop(1.0)
