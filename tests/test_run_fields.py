"""Descriptive run fields: description (also MLflow's `mlflow.note.content` tag), external
URL, source, duration, deleted time and owner; their round trips, limits, and search and
order on each."""

from __future__ import annotations

import time
from collections.abc import Awaitable

import grpc
import pytest

from helpers import error_info, new_experiment, new_run, violations
from trackd.v1 import common_pb2 as cpb
from trackd.v1 import run_pb2
from trackd.v1 import run_service_pb2 as rpb

NOTE_TAG = "mlflow.note.content"
JOB = run_pb2.RUN_SOURCE_TYPE_JOB
CONTAINER = run_pb2.RUN_SOURCE_TYPE_CONTAINER
NOTEBOOK = run_pb2.RUN_SOURCE_TYPE_NOTEBOOK


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def invalid(call: Awaitable[object], field: str) -> str:
    """Awaits a call that must fail INVALID_ARGUMENT naming `field`; returns the reason."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    err = exc.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert error_info(err).reason == "INVALID_PARAMETER_VALUE"
    assert field in violations(err), violations(err)
    return violations(err)[field]


async def get(runs, run_id: str) -> run_pb2.Run:  # type: ignore[no-untyped-def]
    return (await runs.GetRun(rpb.GetRunRequest(run_id=run_id))).run


def tags_of(run: run_pb2.Run) -> dict[str, str]:
    return {t.key: t.value for t in run.data.tags}


async def test_fields_round_trip_at_create_and_update(runs, experiments) -> None:
    eid = await new_experiment(experiments)
    url = "https://ci.example.com/jobs/42?attempt=1#log"
    run = await new_run(
        runs,
        eid,
        description="Fine-tuning with a warm restart.",
        external_url=url,
        source=run_pb2.RunSource(type=JOB, id="job-rbvg5wzlj"),
    )
    rid = run.info.run_id
    for got in (run, await get(runs, rid)):
        assert got.info.description == "Fine-tuning with a warm restart."
        assert tags_of(got)[NOTE_TAG] == "Fine-tuning with a warm restart."
        assert got.info.external_url == url
        assert got.info.HasField("source")
        assert (got.info.source.type, got.info.source.id) == (JOB, "job-rbvg5wzlj")
    # UpdateRun changes each one alone and leaves the others.
    resp = await runs.UpdateRun(rpb.UpdateRunRequest(run_id=rid, description="second"))
    assert resp.run_info.description == "second" and resp.run_info.external_url == url
    got = await get(runs, rid)
    assert tags_of(got)[NOTE_TAG] == "second" and got.info.source.id == "job-rbvg5wzlj"
    await runs.UpdateRun(
        rpb.UpdateRunRequest(
            run_id=rid, source=run_pb2.RunSource(type=CONTAINER, id="ri.container.a1b2")
        )
    )
    got = await get(runs, rid)
    assert (got.info.source.type, got.info.source.id) == (CONTAINER, "ri.container.a1b2")
    assert got.info.description == "second"
    # Empty values clear them: the description's tag goes too.
    resp = await runs.UpdateRun(
        rpb.UpdateRunRequest(
            run_id=rid, description="", external_url="", source=run_pb2.RunSource()
        )
    )
    got = await get(runs, rid)
    for info in (resp.run_info, got.info):
        assert info.description == "" and info.external_url == ""
        assert not info.HasField("source")
    assert NOTE_TAG not in tags_of(got)


async def test_description_is_mlflows_note_tag(runs, experiments) -> None:
    eid = await new_experiment(experiments)
    # The tag at create gives the description; agreeing with the field is fine.
    run = await new_run(runs, eid, tags=[run_pb2.RunTag(key=NOTE_TAG, value="from the tag")])
    assert run.info.description == "from the tag"
    both = await new_run(
        runs, eid, description="same", tags=[run_pb2.RunTag(key=NOTE_TAG, value="same")]
    )
    assert both.info.description == "same"
    reason = await invalid(
        runs.CreateRun(
            rpb.CreateRunRequest(
                experiment_id=eid,
                description="one",
                tags=[run_pb2.RunTag(key=NOTE_TAG, value="other")],
            )
        ),
        "description",
    )
    assert NOTE_TAG in reason
    # An MLflow client sets the note through SetTag or LogBatch, and deletes it.
    rid = run.info.run_id
    await runs.SetTag(rpb.SetTagRequest(run_id=rid, key=NOTE_TAG, value="edited"))
    assert (await get(runs, rid)).info.description == "edited"
    await runs.LogBatch(
        rpb.LogBatchRequest(run_id=rid, tags=[run_pb2.RunTag(key=NOTE_TAG, value="batched")])
    )
    assert (await get(runs, rid)).info.description == "batched"
    await runs.DeleteTag(rpb.DeleteTagRequest(run_id=rid, key=NOTE_TAG))
    assert (await get(runs, rid)).info.description == ""


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"description": "d" * 8001}, "description", "limit is 8000"),
        ({"description": "a\x00b"}, "description", "NUL"),
        ({"external_url": "ftp://example.com/x"}, "external_url", "http or https"),
        ({"external_url": "/relative/path"}, "external_url", "http or https"),
        ({"external_url": "https://"}, "external_url", "http or https"),
        ({"external_url": "https://a.example/b c"}, "external_url", "white space"),
        # urlsplit refuses it (an unclosed IPv6 host): a violation, never INTERNAL.
        ({"external_url": "https://[::1/x"}, "external_url", "http or https"),
        ({"external_url": "https://x.example/" + "a" * 1983}, "external_url", "limit is 2000"),
        ({"source": run_pb2.RunSource(type=9, id="x")}, "source.type", "not a RunSourceType"),  # type: ignore[arg-type]
        ({"source": run_pb2.RunSource(type=JOB, id="j" * 501)}, "source.id", "limit is 500"),
        ({"source": run_pb2.RunSource(id="job-1")}, "source.type", "with an id"),
    ],
)
async def test_bad_fields_are_invalid_argument(
    runs, experiments, fields: dict[str, object], field: str, says: str
) -> None:
    eid = await new_experiment(experiments)
    reason = await invalid(runs.CreateRun(rpb.CreateRunRequest(experiment_id=eid, **fields)), field)
    assert says in reason
    run = await new_run(runs, eid)
    reason = await invalid(
        runs.UpdateRun(rpb.UpdateRunRequest(run_id=run.info.run_id, **fields)), field
    )
    assert says in reason
    # Values at the limits are accepted.
    await new_run(
        runs,
        eid,
        description="d" * 8000,
        external_url="https://x.example/" + "a" * 1982,
        source=run_pb2.RunSource(type=NOTEBOOK, id="n" * 500),
    )


async def test_duration_and_deleted_time(runs, experiments) -> None:
    eid = await new_experiment(experiments)
    start = now_ms() - 5_000
    run = await new_run(runs, eid, start_time=start)
    rid = run.info.run_id
    # Running: from the start to the server's now.
    before = now_ms()
    got = await get(runs, rid)
    after = now_ms()
    assert got.info.HasField("duration")
    assert (before - start) / 1000 <= got.info.duration <= (after - start) / 1000
    # Ended: end minus start, fixed.
    await runs.UpdateRun(
        rpb.UpdateRunRequest(
            run_id=rid, status=run_pb2.RUN_STATUS_FINISHED, end_time=start + 3_723_500
        )
    )
    assert (await get(runs, rid)).info.duration == 3723.5
    # Ended without an end time, or scheduled: unknown, so unset.
    other = await new_run(runs, eid)
    await runs.UpdateRun(
        rpb.UpdateRunRequest(run_id=other.info.run_id, status=run_pb2.RUN_STATUS_FAILED)
    )
    assert not (await get(runs, other.info.run_id)).info.HasField("duration")
    await runs.UpdateRun(
        rpb.UpdateRunRequest(run_id=other.info.run_id, status=run_pb2.RUN_STATUS_SCHEDULED)
    )
    assert not (await get(runs, other.info.run_id)).info.HasField("duration")
    # The deleted time: set by a delete, cleared by a restore.
    assert (await get(runs, rid)).info.deleted_time == 0
    before = now_ms()
    await runs.DeleteRun(rpb.DeleteRunRequest(run_id=rid))
    deleted = (await get(runs, rid)).info.deleted_time
    assert before <= deleted <= now_ms()
    await runs.RestoreRun(rpb.RestoreRunRequest(run_id=rid))
    assert (await get(runs, rid)).info.deleted_time == 0


async def test_search_and_order_on_descriptive_fields(runs, experiments) -> None:
    eid = await new_experiment(experiments)
    base = 1_700_000_000_000
    made = {}
    for name, desc, url, source, hours in [
        ("a", "baseline resnet", "https://ci.example/1", (JOB, "job-1"), 2.0),
        ("b", "resnet with mixup", "", (CONTAINER, "pod-7"), 0.5),
        ("c", "", "https://ci.example/3", (JOB, "job-3"), 1.5),
        ("d", "Transformer", "", (0, ""), None),
    ]:
        run = await new_run(
            runs,
            eid,
            run_name=name,
            description=desc,
            external_url=url,
            source=run_pb2.RunSource(type=source[0], id=source[1]),
            start_time=base,
            user_id=f"user-{name in ('a', 'b')}",
        )
        if hours is None:  # scheduled: no duration
            await runs.UpdateRun(
                rpb.UpdateRunRequest(run_id=run.info.run_id, status=run_pb2.RUN_STATUS_SCHEDULED)
            )
        else:
            await runs.UpdateRun(
                rpb.UpdateRunRequest(
                    run_id=run.info.run_id,
                    status=run_pb2.RUN_STATUS_FINISHED,
                    end_time=base + int(hours * 3_600_000),
                )
            )
        made[name] = run

    async def names(filter_: str, order: list[str] | None = None) -> list[str]:
        resp = await runs.SearchRuns(
            rpb.SearchRunsRequest(experiment_ids=[eid], filter=filter_, order_by=order or [])
        )
        return [r.info.run_name for r in resp.runs]

    by_name = ["attributes.run_name"]
    assert await names("attributes.description LIKE '%resnet%'", by_name) == ["a", "b"]
    assert await names("attributes.description ILIKE 'transformer'", by_name) == ["d"]
    assert await names("attributes.description = ''", by_name) == ["c"]
    assert await names("attributes.external_url LIKE 'https://ci.example/%'", by_name) == [
        "a",
        "c",
    ]
    assert await names("attributes.source_type = 'JOB'", by_name) == ["a", "c"]
    assert await names(
        "attributes.source_type = 'CONTAINER' AND attributes.source_id = 'pod-7'"
    ) == ["b"]
    assert await names("attributes.source_type = ''") == ["d"]
    assert await names("attributes.duration > 3600", by_name) == ["a", "c"]
    assert await names("attributes.duration > 5400.5") == ["a"]
    assert await names("attributes.duration <= 1800") == ["b"]
    assert await names("attributes.duration IS NULL") == ["d"]
    assert await names("attributes.owner = 'user-True'", by_name) == ["a", "b"]
    # Order by each: a missing duration comes last in either direction.
    assert await names("", ["attributes.duration DESC"]) == ["a", "c", "b", "d"]
    assert await names("", ["attributes.duration"]) == ["b", "c", "a", "d"]
    assert await names("", ["attributes.description", "attributes.run_name"]) == [
        "c",
        "d",
        "a",
        "b",
    ]
    assert await names("", ["attributes.source_id DESC"]) == ["b", "c", "a", "d"]
    assert await names("", ["attributes.external_url", "attributes.run_name"]) == [
        "b",
        "d",
        "a",
        "c",
    ]
    # Paging through an order on a derived field keeps every run exactly once.
    seen: list[str] = []
    token = ""
    while True:
        resp = await runs.SearchRuns(
            rpb.SearchRunsRequest(
                experiment_ids=[eid],
                order_by=["attributes.duration DESC"],
                max_results=1,
                page_token=token,
                run_view_type=cpb.VIEW_TYPE_ALL,
            )
        )
        seen += [r.info.run_name for r in resp.runs]
        token = resp.next_page_token
        if not token:
            break
    assert seen == ["a", "c", "b", "d"]
