"""Faults of the trackd process itself: SIGTERM under streaming load drains and exits 0;
points acknowledged before SIGKILL survive it."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import grpc
from procs import running

from helpers import STATS, stored_points
from trackd.v1 import run_service_pb2 as rpb
from trackd.v1 import run_service_pb2_grpc


async def _stored(database_url: str, run_ids: list[str]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {r: set() for r in run_ids}
    for (rid, _), points in (await stored_points(database_url, run_ids)).items():
        out[rid].update(p[0] for p in points)
    return out


async def _stream_until_stopped(
    stub: run_service_pb2_grpc.RunServiceStub, run_id: str, chunk: int, acked: list[int]
) -> grpc.StatusCode:
    """Streams chunks of `chunk` points (steps seq*chunk...) until the server ends the call;
    records acknowledged sequences; returns how the call ended."""
    sid = uuid.uuid4().hex

    async def gen():  # type: ignore[no-untyped-def]
        yield rpb.StreamMetricsRequest(stream_id=sid, sequence=0)
        for seq in range(1, 100_000):
            steps = list(range(seq * chunk, (seq + 1) * chunk))
            yield rpb.StreamMetricsRequest(
                stream_id=sid,
                sequence=seq,
                series=[
                    rpb.MetricColumns(run_id=run_id, key="k", steps=steps, values=[1.0] * chunk)
                ],
            )
            await asyncio.sleep(0)

    try:
        async for ack in stub.StreamMetrics(gen()):
            acked.append(ack.acked_sequence)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.INTERNAL and "execute_batch" in (
            err.debug_error_string() or ""
        ):
            # The client's own send raced the server's end of the call: gRPC's client core
            # reports its failed write instead of the status the server sent.
            return grpc.StatusCode.UNAVAILABLE
        return err.code()
    return grpc.StatusCode.OK


async def test_sigterm_under_streaming_load_drains_and_exits_zero(database_url: str) -> None:
    async with running(database_url, 0, "--grace-period", "5") as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = run_service_pb2_grpc.RunServiceStub(ch)
            run_ids = [
                (await stub.CreateRun(rpb.CreateRunRequest())).run.info.run_id for _ in range(4)
            ]
            acked: list[list[int]] = [[] for _ in run_ids]
            tasks = [
                asyncio.create_task(_stream_until_stopped(stub, r, 2000, a))
                for r, a in zip(run_ids, acked, strict=True)
            ]
            # Until every stream has two acks (bounded: a loaded machine starts them slowly).
            for _ in range(150):
                if all(len(a) > 1 for a in acked):
                    break
                await asyncio.sleep(0.1)
            assert all(len(a) > 1 for a in acked), "streams did not get going"
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            STATS["faults injected"] += 1
            codes = await asyncio.wait_for(asyncio.gather(*tasks), 15)
            assert await server.wait(15) == 0
            assert time.monotonic() - started < 5 + 2
    # Streams were ended for the clients to reconnect, not failed as a server bug.
    assert set(codes) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK}
    stored = await _stored(database_url, run_ids)
    for run_id, acks in zip(run_ids, acked, strict=True):
        last = max(acks)
        # Every acknowledged chunk is stored, whole.
        expected = {s for seq in range(1, last + 1) for s in range(seq * 2000, (seq + 1) * 2000)}
        assert expected <= stored[run_id]
        assert len(stored[run_id]) % 2000 == 0


async def test_acknowledged_points_survive_sigkill(database_url: str) -> None:
    async with running(database_url) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = run_service_pb2_grpc.RunServiceStub(ch)
            run_ids = [
                (await stub.CreateRun(rpb.CreateRunRequest())).run.info.run_id for _ in range(4)
            ]
            acked: list[list[int]] = [[] for _ in run_ids]
            tasks = [
                asyncio.create_task(_stream_until_stopped(stub, r, 1000, a))
                for r, a in zip(run_ids, acked, strict=True)
            ]
            # Until every stream has an ack (bounded: a loaded machine starts them slowly).
            for _ in range(150):
                if all(acked):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            server.proc.send_signal(signal.SIGKILL)
            STATS["faults injected"] += 1
            codes = await asyncio.wait_for(asyncio.gather(*tasks), 15)
    # A killed peer ends the calls client-side: UNAVAILABLE, or INTERNAL when gRPC's
    # transport sees the HTTP/2 stream reset mid-message (no server answered either).
    assert set(codes) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL}
    stored = await _stored(database_url, run_ids)
    for run_id, acks in zip(run_ids, acked, strict=True):
        assert acks, "nothing was acknowledged before the kill"
        last = max(acks)
        expected = {s for seq in range(1, last + 1) for s in range(seq * 1000, (seq + 1) * 1000)}
        assert expected <= stored[run_id]
