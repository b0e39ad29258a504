"""StreamMetrics and StreamMetricHistory through a real channel: handshake and cumulative
acks, acks only after commit, exactly-once on resend, rejections, protocol errors,
backpressure with a stalled database, and the write path's summaries under concurrency."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from conftest import server_config
from helpers import new_experiment, new_run
from trackd.server import app
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import run_service_pb2 as rpb
from trackd.v1 import run_service_pb2_grpc


def chunk(stream_id: str, seq: int, *series: rpb.MetricColumns) -> rpb.StreamMetricsRequest:
    return rpb.StreamMetricsRequest(stream_id=stream_id, sequence=seq, series=list(series))


def cols(
    run_id: str,
    key: str,
    steps: range | list[int],
    values: list[float] | None = None,
    ts: int = 1000,
) -> rpb.MetricColumns:
    steps = list(steps)
    return rpb.MetricColumns(
        run_id=run_id,
        key=key,
        steps=steps,
        timestamps=[ts] * len(steps),
        values=values if values is not None else [float(s) for s in steps],
    )


async def stream_all(
    runs, messages: list[rpb.StreamMetricsRequest]
) -> list[rpb.StreamMetricsResponse]:  # type: ignore[no-untyped-def]
    async def gen() -> AsyncIterator[rpb.StreamMetricsRequest]:
        for m in messages:
            yield m

    return [ack async for ack in runs.StreamMetrics(gen())]


async def history(runs, run_id: str, key: str) -> list[tuple[int, int, float]]:  # type: ignore[no-untyped-def]
    out = []
    async for c in runs.StreamMetricHistory(
        rpb.StreamMetricHistoryRequest(run_id=run_id, metric_key=key, chunk_size=700)
    ):
        out.extend(zip(c.steps, c.timestamps, c.values, strict=True))
    return out


async def test_handshake_reports_zero_then_acks_cover_every_chunk(runs) -> None:
    run = await new_run(runs)
    rid = run.info.run_id
    sid = uuid.uuid4().hex
    msgs = [chunk(sid, 0)] + [
        chunk(sid, i, cols(rid, "loss", range(i * 10, i * 10 + 10))) for i in range(1, 21)
    ]
    acks = await stream_all(runs, msgs)
    assert acks[0].acked_sequence == 0
    seqs = [a.acked_sequence for a in acks[1:]]
    assert seqs == sorted(seqs) and seqs[-1] == 20
    assert all(not a.rejections for a in acks)
    points = await history(runs, rid, "loss")
    assert [p[0] for p in points] == list(range(10, 210))


async def test_ack_comes_only_after_commit(runs, database_url: str) -> None:
    run = await new_run(runs)
    rid = run.info.run_id
    sid = uuid.uuid4().hex
    conn = await asyncpg.connect(database_url)
    try:
        queue: asyncio.Queue[rpb.StreamMetricsRequest | None] = asyncio.Queue()

        async def gen() -> AsyncIterator[rpb.StreamMetricsRequest]:
            while (m := await queue.get()) is not None:
                yield m

        call = runs.StreamMetrics(gen())
        await queue.put(chunk(sid, 0))
        assert (await call.read()).acked_sequence == 0
        for seq in range(1, 6):
            await queue.put(chunk(sid, seq, cols(rid, "m", range(seq * 100, seq * 100 + 100))))
            ack = await call.read()
            # Whatever was acknowledged is visible to another connection right away.
            stored = await conn.fetchval(
                "SELECT count(*) FROM metric_points p JOIN metric_series s USING (series_id)"
                " JOIN runs r USING (run_pk) WHERE r.run_id = $1 AND s.key = 'm'",
                rid,
            )
            assert stored == ack.acked_sequence * 100
            mark = await conn.fetchval(
                "SELECT last_sequence FROM ingest_streams WHERE stream_id = $1", sid
            )
            assert mark >= ack.acked_sequence
        await queue.put(None)
        assert await call.read() == grpc.aio.EOF
    finally:
        await conn.close()


async def test_resent_chunks_after_reconnect_are_not_written_twice(runs) -> None:
    run = await new_run(runs)
    rid = run.info.run_id
    sid = uuid.uuid4().hex
    data = {i: chunk(sid, i, cols(rid, "k", range(i * 5, i * 5 + 5), ts=7)) for i in range(1, 11)}
    first = await stream_all(runs, [chunk(sid, 0)] + [data[i] for i in range(1, 7)])
    assert first[-1].acked_sequence == 6
    # Reconnect: the handshake says 6 is committed; a client that did not see the last acks
    # resends 4..10.
    second = await stream_all(runs, [chunk(sid, 0)] + [data[i] for i in range(4, 11)])
    assert second[0].acked_sequence == 6
    assert second[-1].acked_sequence == 10
    assert [a.acked_sequence for a in second] == sorted(a.acked_sequence for a in second)
    points = await history(runs, rid, "k")
    assert [p[0] for p in points] == list(range(5, 55))
    got = (await runs.GetRun(rpb.GetRunRequest(run_id=rid))).run
    assert got.data.metric_summaries[0].count == 50


async def test_resend_with_changed_points_is_still_skipped(runs) -> None:
    run = await new_run(runs)
    rid = run.info.run_id
    sid = uuid.uuid4().hex
    await stream_all(runs, [chunk(sid, 0), chunk(sid, 1, cols(rid, "k", [1], [1.0]))])
    acks = await stream_all(runs, [chunk(sid, 1, cols(rid, "k", [2], [2.0]))])
    assert acks[-1].acked_sequence == 1
    assert [p[0] for p in await history(runs, rid, "k")] == [1]


async def test_bad_chunks_are_rejected_and_the_stream_goes_on(runs, experiments) -> None:
    eid = await new_experiment(experiments)
    good = (await new_run(runs, eid)).info.run_id
    deleted = (await new_run(runs, eid)).info.run_id
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=deleted))
    sid = uuid.uuid4().hex
    acks = await stream_all(
        runs,
        [
            chunk(sid, 0),
            chunk(sid, 1, cols(good, "ok", [1])),
            chunk(sid, 2, cols("a" * 32, "ok", [2])),
            chunk(sid, 3, cols(deleted, "ok", [3])),
            chunk(sid, 4, cols(good, "bad*key", [4])),
            chunk(sid, 5, rpb.MetricColumns(run_id=good, key="ok", steps=[5, 6], values=[1.0])),
            chunk(sid, 6, cols(good, "ok", [7]), cols(deleted, "ok", [8])),
            chunk(sid, 7, cols(good, "ok", [9])),
        ],
    )
    rejected = {r.sequence: r for a in acks for r in a.rejections}
    assert set(rejected) == {2, 3, 4, 5, 6}
    assert rejected[2].code == "NOT_FOUND" and rejected[2].reason == "RESOURCE_DOES_NOT_EXIST"
    assert rejected[3].code == "FAILED_PRECONDITION" and rejected[3].reason == "INVALID_STATE"
    assert rejected[4].code == "INVALID_ARGUMENT" and "series[0].key" in rejected[4].message
    assert "series[0].values" in rejected[5].message
    assert acks[-1].acked_sequence == 7
    # A rejected chunk writes nothing, not even its good series.
    assert [p[0] for p in await history(runs, good, "ok")] == [1, 9]


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        (lambda sid, rid: [chunk("bad id!", 0)], "stream_id"),
        (lambda sid, rid: [chunk(sid, 0), chunk(sid, 2, cols(rid, "k", [1]))], "sequence"),
        (lambda sid, rid: [chunk(sid, 0), chunk(sid, -1)], "sequence"),
        (lambda sid, rid: [chunk(sid, 0), chunk(sid + "x", 1)], "stream_id"),
    ],
)
async def test_protocol_errors_end_the_stream_with_invalid_argument(runs, messages, field) -> None:  # type: ignore[no-untyped-def]
    rid = (await new_run(runs)).info.run_id
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stream_all(runs, messages(uuid.uuid4().hex, rid))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (exc.value.details() or "")


async def test_chunk_over_the_point_limit_is_rejected(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    sid = uuid.uuid4().hex
    big = cols(rid, "k", range(100_001), [0.0] * 100_001)
    acks = await stream_all(runs, [chunk(sid, 0), chunk(sid, 1, big)])
    assert acks[-1].rejections[0].code == "INVALID_ARGUMENT"
    assert "100000" in acks[-1].rejections[0].message


async def test_zero_or_missing_timestamps_mean_now(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    sid = uuid.uuid4().hex
    no_ts = rpb.MetricColumns(run_id=rid, key="a", steps=[1, 2], values=[1.0, 2.0])
    zero_ts = rpb.MetricColumns(run_id=rid, key="b", steps=[1], timestamps=[0], values=[1.0])
    await stream_all(runs, [chunk(sid, 0), chunk(sid, 1, no_ts, zero_ts)])
    for key in ("a", "b"):
        assert all(p[1] > 1_600_000_000_000 for p in await history(runs, rid, key))


async def test_one_stream_carries_many_runs_and_keys(runs) -> None:
    rids = [(await new_run(runs)).info.run_id for _ in range(3)]
    sid = uuid.uuid4().hex
    msgs = [chunk(sid, 0)]
    for seq in range(1, 5):
        msgs.append(chunk(sid, seq, *[cols(r, f"k{j}", [seq]) for r in rids for j in range(3)]))
    await stream_all(runs, msgs)
    for r in rids:
        got = (await runs.GetRun(rpb.GetRunRequest(run_id=r))).run
        assert {s.key: s.count for s in got.data.metric_summaries} == {"k0": 4, "k1": 4, "k2": 4}


async def test_special_values_stream_bit_exactly(runs) -> None:
    import struct

    rid = (await new_run(runs)).info.run_id
    sid = uuid.uuid4().hex
    values = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.1]
    await stream_all(runs, [chunk(sid, 0), chunk(sid, 1, cols(rid, "x", range(7), values))])
    got = [p[2] for p in await history(runs, rid, "x")]
    assert [struct.pack("<d", v) for v in got] == [struct.pack("<d", v) for v in values]


async def test_summaries_are_exact_under_concurrent_out_of_order_streams(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    rng = random.Random(11)
    steps = list(range(4000))
    values = {s: rng.gauss(3.0, 2.0) for s in steps}
    rng.shuffle(steps)
    parts = [steps[i::6] for i in range(6)]

    async def one(part: list[int]) -> None:
        sid = uuid.uuid4().hex
        msgs = [chunk(sid, 0)]
        for j in range(0, len(part), 97):
            piece = part[j : j + 97]
            msgs.append(chunk(sid, len(msgs), cols(rid, "loss", piece, [values[s] for s in piece])))
        await stream_all(runs, msgs)

    await asyncio.gather(
        *(one(p) for p in parts),
        *(
            runs.LogMetric(
                rpb.LogMetricRequest(
                    run_id=rid, key="loss", step=s, timestamp=1000, value=values[s]
                )
            )
            for s in steps[:50]
        ),
    )  # exact duplicates of streamed points
    got = (await runs.GetRun(rpb.GetRunRequest(run_id=rid))).run
    s = {m.key: m for m in got.data.metric_summaries}["loss"]
    expected = list(values.values())
    assert s.count == 4000
    assert s.min == min(expected) and s.max == max(expected)
    assert s.mean == pytest.approx(statistics.fmean(expected), rel=1e-12)
    assert s.stddev == pytest.approx(statistics.pstdev(expected), rel=1e-9)
    assert (s.first_step, s.last_step, s.latest_step) == (0, 3999, 3999)
    assert s.latest_value == values[3999]


async def test_stream_history_matches_paged_history(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    sid = uuid.uuid4().hex
    msgs = [chunk(sid, 0)]
    for seq in range(1, 11):
        msgs.append(
            chunk(
                sid,
                seq,
                cols(
                    rid,
                    "h",
                    range(seq * 1000, seq * 1000 + 1000),
                    [float(i % 13) for i in range(1000)],
                    ts=seq,
                ),
            )
        )
    await stream_all(runs, msgs)
    streamed = await history(runs, rid, "h")
    paged = []
    token = ""
    while True:
        resp = await runs.GetMetricHistory(
            rpb.GetMetricHistoryRequest(
                run_id=rid, metric_key="h", max_results=3000, page_token=token
            )
        )
        paged.extend((m.step, m.timestamp, m.value) for m in resp.metrics)
        token = resp.next_page_token
        if not token:
            break
    assert streamed == paged and len(streamed) == 10_000


async def test_stream_history_errors(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    assert await history(runs, rid, "never-logged") == []
    for req, code in (
        (
            rpb.StreamMetricHistoryRequest(run_id="0" * 32, metric_key="k"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            rpb.StreamMetricHistoryRequest(run_id="zz", metric_key="k"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            rpb.StreamMetricHistoryRequest(run_id=rid, metric_key="k", chunk_size=200_001),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            async for _ in runs.StreamMetricHistory(req):
                pass
        assert exc.value.code() == code


async def test_backpressure_bounds_queued_points_while_the_database_stalls(
    database_url: str,
) -> None:
    running = await app.start(server_config(ingest_max_queued_points=2000), database_url)
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    runs = run_service_pb2_grpc.RunServiceStub(ch)
    blocker = await asyncpg.connect(database_url)
    try:
        rid = (await new_run(runs)).info.run_id
        sid = uuid.uuid4().hex
        await stream_all(runs, [chunk(sid, 0), chunk(sid, 1, cols(rid, "k", [0]))])
        # Stall the database for this series: hold its row lock from another connection.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(
            "SELECT 1 FROM metric_series s JOIN runs r USING (run_pk)"
            " WHERE r.run_id = $1 FOR UPDATE OF s",
            rid,
        )

        async def gen() -> AsyncIterator[rpb.StreamMetricsRequest]:
            yield chunk(sid, 0)
            for seq in range(2, 202):
                yield chunk(sid, seq, cols(rid, "k", range(seq * 500, seq * 500 + 500)))

        acks: list[int] = []

        async def consume() -> None:
            async for ack in runs.StreamMetrics(gen()):
                acks.append(ack.acked_sequence)

        task = asyncio.create_task(consume())
        peak = 0
        for _ in range(40):
            await asyncio.sleep(0.025)
            peak = max(peak, running.writers.queued_points)
        # Nothing commits while the lock is held, and the server's queue stays within its
        # bound (plus one chunk) however much the client sends; the rest waits in the
        # per-stream window and in gRPC's flow control.
        assert acks == [1]
        assert 0 < peak <= 2000 + 500
        await tx.rollback()
        await asyncio.wait_for(task, 30)
        assert acks[-1] == 201
        assert len(await history(runs, rid, "k")) == 1 + 200 * 500
    finally:
        await blocker.close()
        await ch.close()
        await running.stop(1.0)


async def test_log_metric_and_batch_share_the_writers_and_reject_deleted_runs(
    runs, experiments
) -> None:
    eid = await new_experiment(experiments)
    rid = (await new_run(runs, eid)).info.run_id
    await asyncio.gather(
        *(
            runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="c", value=i, step=i))
            for i in range(200)
        )
    )
    got = (await runs.GetRun(rpb.GetRunRequest(run_id=rid))).run
    assert got.data.metric_summaries[0].count == 200
    await experiments.DeleteExperiment(epb.DeleteExperimentRequest(experiment_id=eid))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await runs.LogMetric(rpb.LogMetricRequest(run_id=rid, key="c", value=1, step=1000))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_rejected_chunks_count_in_the_committed_sequence(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    sid = uuid.uuid4().hex
    await stream_all(
        runs,
        [
            chunk(sid, 0),
            chunk(sid, 1, cols("f" * 32, "k", [1])),
            chunk(sid, 2, cols(rid, "k*", [2])),
        ],
    )
    # The handshake after a reconnect reports the rejected chunks as handled...
    acks = await stream_all(runs, [chunk(sid, 0), chunk(sid, 3, cols(rid, "k", [3]))])
    assert acks[0].acked_sequence == 2
    assert acks[-1].acked_sequence == 3 and not acks[-1].rejections
    assert [p[0] for p in await history(runs, rid, "k")] == [3]


async def test_concurrent_writers_creating_one_new_series_all_succeed(runs) -> None:
    rid = (await new_run(runs)).info.run_id
    for round_ in range(15):
        key = f"fresh{round_}"
        # Streams are spread over the writers by stream id, so several writers race to
        # create the same series.
        results = await asyncio.gather(
            *(
                stream_all(
                    runs,
                    [chunk(sid, 0), chunk(sid, 1, cols(rid, key, [w * 10 + i for i in range(10)]))],
                )
                for w, sid in enumerate(uuid.uuid4().hex for _ in range(6))
            )
        )
        assert all(not a.rejections for acks in results for a in acks)
    got = (await runs.GetRun(rpb.GetRunRequest(run_id=rid))).run
    assert {s.key: s.count for s in got.data.metric_summaries} == {
        f"fresh{r}": 60 for r in range(15)
    }
