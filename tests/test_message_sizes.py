"""No answer is too large for a gRPC client with its default limits (4 MiB a message).

Every call here goes through a plain `grpc.aio.insecure_channel` with no options, as a
client in any language would open it. The data sits at the documented limits, with 4-byte
UTF-8 characters where text is free (protobuf does not compress; PostgreSQL does, so
repeated characters keep the test fast without changing a byte on the wire). Pages must
come whole, in order, with nothing lost or repeated; an item that cannot fit alone must be
a clean RESOURCE_EXHAUSTED with its reason, never a broken call. Two tests walk the
contract's descriptors: the largest instance of every response message, and the server's
cap on every method.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import mimetypes
import pkgutil
import random
import struct
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor as desc
from google.protobuf import message_factory
from google.protobuf.message import Message

import trackd.v1
from helpers import error_info, new_experiment, new_run, unique, violations
from trackd.client import AsyncClient
from trackd.server import app
from trackd.server.domain import artifacts, envelopes, limits, paging, runs, streams
from trackd.server.domain.experiments import LEVEL_DESCRIPTIONS
from trackd.server.service import rpc, sizes
from trackd.server.service.guard import Guard
from trackd.v1 import dataset_pb2, run_pb2
from trackd.v1 import experiment_pb2 as xpb
from trackd.v1 import experiment_service_pb2 as epb
from trackd.v1 import experiment_service_pb2_grpc as egrpc
from trackd.v1 import logged_model_pb2 as mpb
from trackd.v1 import logged_model_service_pb2 as lpb
from trackd.v1 import logged_model_service_pb2_grpc as lgrpc
from trackd.v1 import run_service_pb2 as rpb
from trackd.v1 import run_service_pb2_grpc as rgrpc

MAX = sizes.MESSAGE_BYTES_MAX
CLIENT_DEFAULT = 4 * 1024 * 1024
WIDE = "\U0001f600"  # 4 bytes in UTF-8: the widest character
KEY = ("k" * 249 + "x")[: limits.KEY_MAX]  # keys are ASCII: 250 bytes at most
SERIES_POINTS = 200_000

assert MAX < CLIENT_DEFAULT


def wide(n: int, prefix: str = "") -> str:
    """A string of exactly n characters, as wide in UTF-8 as it can be."""
    return prefix + WIDE * (n - len(prefix))


def bits(x: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", x))[0])


def assert_fits(message: Message) -> None:
    size = message.ByteSize()
    assert size <= MAX, f"{message.DESCRIPTOR.name} is {size:,} bytes"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plain(server: app.Running) -> AsyncIterator[grpc.aio.Channel]:
    """A channel with gRPC's default limits: no options at all."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
def run_stub(plain: grpc.aio.Channel) -> rgrpc.RunServiceStub:
    return rgrpc.RunServiceStub(plain)


@pytest.fixture(scope="module")
def exp_stub(plain: grpc.aio.Channel) -> egrpc.ExperimentServiceStub:
    return egrpc.ExperimentServiceStub(plain)


@pytest.fixture(scope="module")
def model_stub(plain: grpc.aio.Channel) -> lgrpc.LoggedModelServiceStub:
    return lgrpc.LoggedModelServiceStub(plain)


async def expect_too_large(call: Any) -> grpc.aio.AioRpcError:
    """The error of a call that must be refused as too large by trackd (with its
    ErrorInfo), not by the client's receive limit."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    err = exc.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    info = error_info(err)
    assert info.reason == "MAX_READ_SIZE_EXCEEDED"
    assert info.metadata["limit"] == str(MAX) and int(info.metadata["size"]) > MAX
    return err


# -- metric histories ------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def series(run_stub: rgrpc.RunServiceStub) -> tuple[str, list[tuple[int, int, float]]]:
    """A run whose series of the longest key holds SERIES_POINTS points, each as wide as a
    point can be on the wire (negative steps and huge timestamps are 10- and 9-byte
    varints), with -0.0, NaN and infinities among the values."""
    run_id = (await new_run(run_stub)).info.run_id
    rng = random.Random(7)
    steps = [-(2**62) + i for i in range(SERIES_POINTS)]
    stamps = [2**62 + rng.randrange(2**40) for _ in range(SERIES_POINTS)]
    values = [rng.uniform(-1e300, 1e300) for _ in range(SERIES_POINTS)]
    values[:4] = [-0.0, math.nan, math.inf, -math.inf]
    stream_id = uuid.uuid4().hex
    chunk = streams.CHUNK_POINTS_MAX
    requests = [rpb.StreamMetricsRequest(stream_id=stream_id, sequence=0)]
    for seq, start in enumerate(range(0, SERIES_POINTS, chunk), 1):
        req = rpb.StreamMetricsRequest(stream_id=stream_id, sequence=seq)
        req.series.add(
            run_id=run_id,
            key=KEY,
            steps=steps[start : start + chunk],
            timestamps=stamps[start : start + chunk],
            values=values[start : start + chunk],
        )
        requests.append(req)
    acks = [ack async for ack in run_stub.StreamMetrics(iter(requests))]
    assert acks[-1].acked_sequence == len(requests) - 1
    assert not any(ack.rejections for ack in acks)
    return run_id, list(zip(steps, stamps, values, strict=True))


def same_points(got: Iterable[tuple[int, int, float]], want: list[tuple[int, int, float]]) -> None:
    assert [(s, t, bits(v)) for s, t, v in got] == [(s, t, bits(v)) for s, t, v in want]


async def test_default_history_pages_of_the_longest_key_fit_a_default_client(
    run_stub: rgrpc.RunServiceStub, series: tuple[str, list[tuple[int, int, float]]]
) -> None:
    run_id, want = series
    got: list[tuple[int, int, float]] = []
    token, pages = "", 0
    while True:
        resp = await run_stub.GetMetricHistory(
            rpb.GetMetricHistoryRequest(run_id=run_id, metric_key=KEY, page_token=token)
        )
        assert_fits(resp)
        pages += 1
        # The key comes once per page; the points carry nothing else than their values.
        assert resp.metric_key == KEY
        assert not any(m.key or m.model_id or m.dataset_name or m.run_id for m in resp.metrics)
        got.extend((m.step, m.timestamp, m.value) for m in resp.metrics)
        token = resp.next_page_token
        if not token:
            break
    assert pages == SERIES_POINTS // limits.HISTORY_MAX_RESULTS_DEFAULT
    same_points(got, want)


async def test_python_client_reads_history_with_default_limits_and_fills_the_key(
    plain: grpc.aio.Channel, series: tuple[str, list[tuple[int, int, float]]]
) -> None:
    run_id, want = series
    client = AsyncClient(channel=plain)
    points = await client.get_metric_history(run_id, KEY)
    assert all(p.key == KEY and p.proto.key == KEY for p in points)
    same_points(((p.step, p.timestamp, p.value) for p in points), want)


@pytest.mark.parametrize("chunk_size", [0, runs.HISTORY_CHUNK_MAX])
async def test_history_stream_chunks_fit_a_default_client(
    run_stub: rgrpc.RunServiceStub,
    series: tuple[str, list[tuple[int, int, float]]],
    chunk_size: int,
) -> None:
    run_id, want = series
    request = rpb.StreamMetricHistoryRequest(run_id=run_id, metric_key=KEY, chunk_size=chunk_size)
    got: list[tuple[int, int, float]] = []
    messages = 0
    async for resp in run_stub.StreamMetricHistory(request):
        assert_fits(resp)
        messages += 1
        got.extend(zip(resp.steps, resp.timestamps, resp.values, strict=True))
    # 200,000 of these points (27 bytes each) do not fit one message: they come in parts.
    assert messages >= (2 if chunk_size else SERIES_POINTS // runs.HISTORY_CHUNK_DEFAULT)
    same_points(got, want)


# -- searches ------------------------------------------------------------------------------


async def all_pages(call: Any, request: Message, field: str) -> list[list[Message]]:
    """Every page of a search, checking that each fits; the items of each page."""
    pages: list[list[Message]] = []
    while True:
        resp = await call(request)
        assert_fits(resp)
        pages.append(list(getattr(resp, field)))
        if not resp.next_page_token:
            return pages
        assert len(pages) < 10_000, "paging does not end"
        request.page_token = resp.next_page_token  # type: ignore[attr-defined]


def run_ids(pages: list[list[Message]]) -> list[str]:
    return [r.info.run_id for page in pages for r in page]  # type: ignore[attr-defined]


async def gather_in_batches(coros: list[Any], batch: int = 16) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(coros), batch):
        out.extend(await asyncio.gather(*coros[i : i + batch]))
    return out


async def wide_runs(
    stub: rgrpc.RunServiceStub, experiment_id: str, n: int, params: int, chars: int, text: Any
) -> list[str]:
    async def one(i: int) -> str:
        run_id = (await new_run(stub, experiment_id, run_name=f"r{i}")).info.run_id
        await stub.LogBatch(
            rpb.LogBatchRequest(
                run_id=run_id,
                params=[
                    run_pb2.Param(key=f"p{j}", value=text(chars, f"{i}.{j}."))
                    for j in range(params)
                ],
            )
        )
        return run_id

    return await gather_in_batches([one(i) for i in range(n)])


async def test_search_runs_of_320_runs_with_100_params_reads_every_page(
    run_stub: rgrpc.RunServiceStub, exp_stub: egrpc.ExperimentServiceStub
) -> None:
    """The reported worst case: 4.4 MB in one default page before pages were cut."""
    eid = await new_experiment(exp_stub)
    made = await wide_runs(run_stub, eid, 320, 100, 120, lambda n, p: (p + "v" * n)[:n])
    pages = await all_pages(
        run_stub.SearchRuns, rpb.SearchRunsRequest(experiment_ids=[eid]), "runs"
    )
    assert len(pages) >= 2 and len(pages[0]) < 320
    ids = run_ids(pages)
    assert len(ids) == len(set(ids)) == 320 and set(ids) == set(made)
    # Same order as pages small enough never to be cut.
    small = await all_pages(
        run_stub.SearchRuns, rpb.SearchRunsRequest(experiment_ids=[eid], max_results=25), "runs"
    )
    assert run_ids(small) == ids


async def test_search_runs_at_the_param_limits_pages_one_run_at_a_time(
    run_stub: rgrpc.RunServiceStub, exp_stub: egrpc.ExperimentServiceStub
) -> None:
    eid = await new_experiment(exp_stub)
    # 100 params of 6000 four-byte characters: 2.4 MB a run, so two never share a page.
    made = await wide_runs(run_stub, eid, 3, limits.BATCH_PARAMS_MAX, limits.PARAM_VALUE_MAX, wide)
    request = rpb.SearchRunsRequest(
        experiment_ids=[eid], max_results=limits.SEARCH_MAX_RESULTS_MAX, order_by=["params.p0"]
    )
    pages = await all_pages(run_stub.SearchRuns, request, "runs")
    assert [len(p) for p in pages] == [1, 1, 1]
    assert sorted(run_ids(pages)) == sorted(made)


async def test_a_run_too_large_for_one_message_is_a_clean_error(
    run_stub: rgrpc.RunServiceStub, exp_stub: egrpc.ExperimentServiceStub
) -> None:
    """Params and tags at their limits in two batches: 5.6 MB, more than any answer may
    hold. GetRun and SearchRuns say so; the channel goes on working."""
    eid = await new_experiment(exp_stub)
    run_id = (await new_run(run_stub, eid)).info.run_id
    await run_stub.LogBatch(
        rpb.LogBatchRequest(
            run_id=run_id,
            params=[
                run_pb2.Param(key=f"p{j}", value=wide(limits.PARAM_VALUE_MAX, f"{j}."))
                for j in range(limits.BATCH_PARAMS_MAX)
            ],
        )
    )
    await run_stub.LogBatch(
        rpb.LogBatchRequest(
            run_id=run_id,
            tags=[
                run_pb2.RunTag(key=f"t{j}", value=wide(limits.TAG_VALUE_MAX, f"{j}."))
                for j in range(limits.BATCH_TAGS_MAX)
            ],
        )
    )
    err = await expect_too_large(run_stub.GetRun(rpb.GetRunRequest(run_id=run_id)))
    assert error_info(err).metadata["run_id"] == run_id and run_id in (err.details() or "")
    err = await expect_too_large(run_stub.SearchRuns(rpb.SearchRunsRequest(experiment_ids=[eid])))
    assert error_info(err).metadata["run_id"] == run_id
    small = (await new_run(run_stub, eid)).info.run_id
    assert (await run_stub.GetRun(rpb.GetRunRequest(run_id=small))).run.info.run_id == small


async def test_search_experiments_at_the_tag_limits_reads_every_page(
    exp_stub: egrpc.ExperimentServiceStub,
) -> None:
    prefix = unique("wide")
    # 100 tags of 5000 four-byte characters and a 500-character name: 2 MB an experiment.
    made = []
    for i in range(3):
        resp = await exp_stub.CreateExperiment(
            epb.CreateExperimentRequest(
                name=wide(limits.EXPERIMENT_NAME_MAX, f"{prefix}-{i}-"),
                tags=[
                    xpb.ExperimentTag(key=f"t{j}", value=wide(limits.EXPERIMENT_TAG_VALUE_MAX))
                    for j in range(limits.EXPERIMENT_TAGS_MAX)
                ],
            )
        )
        made.append(resp.experiment_id)
    request = epb.SearchExperimentsRequest(
        filter=f"name LIKE '{prefix}-%'", max_results=limits.SEARCH_MAX_RESULTS_MAX
    )
    pages = await all_pages(exp_stub.SearchExperiments, request, "experiments")
    assert len(pages) == 3
    got = [e.experiment_id for page in pages for e in page]  # type: ignore[attr-defined]
    assert sorted(got) == sorted(made)
    # Tags added one by one grow an experiment past what one message holds.
    big = made[0]
    await asyncio.gather(
        *(
            exp_stub.SetExperimentTag(
                epb.SetExperimentTagRequest(
                    experiment_id=big, key=f"more{j}", value=wide(limits.EXPERIMENT_TAG_VALUE_MAX)
                )
            )
            for j in range(100)
        )
    )
    await expect_too_large(exp_stub.GetExperiment(epb.GetExperimentRequest(experiment_id=big)))
    await expect_too_large(exp_stub.SearchExperiments(request))


async def test_search_logged_models_at_the_param_limits_reads_every_page(
    exp_stub: egrpc.ExperimentServiceStub, model_stub: lgrpc.LoggedModelServiceStub
) -> None:
    eid = await new_experiment(exp_stub)
    made = []
    for i in range(3):
        resp = await model_stub.CreateLoggedModel(
            lpb.CreateLoggedModelRequest(
                experiment_id=eid,
                name=f"m{i}",
                params=[
                    mpb.LoggedModelParameter(key=f"p{j}", value=wide(limits.PARAM_VALUE_MAX))
                    for j in range(limits.MODEL_PARAMS_MAX)
                ],
            )
        )
        made.append(resp.model.info.model_id)
    request = lpb.SearchLoggedModelsRequest(
        experiment_ids=[eid], max_results=limits.MODEL_SEARCH_MAX_RESULTS_MAX
    )
    pages = await all_pages(model_stub.SearchLoggedModels, request, "models")
    assert [len(p) for p in pages] == [1, 1, 1]
    assert sorted(m.info.model_id for p in pages for m in p) == sorted(made)  # type: ignore[attr-defined]
    # Tags at their limits make one model too large to send: every call returning it says so.
    await model_stub.SetLoggedModelTags(
        lpb.SetLoggedModelTagsRequest(
            model_id=made[0],
            tags=[
                mpb.LoggedModelTag(key=f"t{j}", value=wide(limits.TAG_VALUE_MAX))
                for j in range(limits.MODEL_TAGS_MAX)
            ],
        )
    )
    await expect_too_large(model_stub.GetLoggedModel(lpb.GetLoggedModelRequest(model_id=made[0])))
    await expect_too_large(model_stub.SearchLoggedModels(request))
    await expect_too_large(
        model_stub.FinalizeLoggedModel(
            lpb.FinalizeLoggedModelRequest(model_id=made[0], status=mpb.LOGGED_MODEL_STATUS_READY)
        )
    )


async def test_create_logged_model_too_large_to_return_writes_nothing(
    exp_stub: egrpc.ExperimentServiceStub, model_stub: lgrpc.LoggedModelServiceStub
) -> None:
    """A request under the server's 4 MiB receive limit whose model would not fit the
    answer is refused before anything is written (not created and then unreadable)."""
    eid = await new_experiment(exp_stub)
    name = unique("huge")
    request = lpb.CreateLoggedModelRequest(
        experiment_id=eid,
        name=name,
        params=[
            mpb.LoggedModelParameter(key=f"p{j}", value=wide(limits.PARAM_VALUE_MAX))
            for j in range(limits.MODEL_PARAMS_MAX)
        ],
    )
    tag = wide(limits.TAG_VALUE_MAX)
    while request.ByteSize() <= MAX - sizes.CREATED_OVERHEAD_MAX:
        request.tags.add(key=f"t{len(request.tags)}", value=tag)
    assert request.ByteSize() < CLIENT_DEFAULT
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await model_stub.CreateLoggedModel(request)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
    assert "params" in violations(exc.value)
    found = await model_stub.SearchLoggedModels(
        lpb.SearchLoggedModelsRequest(experiment_ids=[eid], filter=f"name = '{name}'")
    )
    assert not found.models


async def test_search_datasets_of_wide_entries_reads_every_page(
    run_stub: rgrpc.RunServiceStub, exp_stub: egrpc.ExperimentServiceStub
) -> None:
    """1000 (name, digest, context) entries of about 4.1 kB (500-character names and
    contexts, 36-character digests, all 4-byte characters): more than one message."""
    eid = await new_experiment(exp_stub)
    run_id = (await new_run(run_stub, eid)).info.run_id
    context = wide(limits.INPUT_TAG_VALUE_MAX)
    digest = wide(limits.DATASET_DIGEST_MAX)
    for part in range(2):
        await run_stub.LogInputs(
            rpb.LogInputsRequest(
                run_id=run_id,
                datasets=[
                    dataset_pb2.DatasetInput(
                        dataset=dataset_pb2.Dataset(
                            name=wide(limits.DATASET_NAME_MAX, f"{part}{i:04d}"),
                            digest=digest,
                            source_type="local",
                            source="{}",
                        ),
                        tags=[dataset_pb2.InputTag(key="mlflow.data.context", value=context)],
                    )
                    for i in range(500)
                ],
            )
        )
    request = epb.SearchDatasetsRequest(
        experiment_ids=[eid], max_results=limits.SEARCH_MAX_RESULTS_MAX
    )
    pages = await all_pages(exp_stub.SearchDatasets, request, "dataset_summaries")
    assert len(pages) >= 2
    names = [d.name for page in pages for d in page]  # type: ignore[attr-defined]
    small = await all_pages(
        exp_stub.SearchDatasets,
        epb.SearchDatasetsRequest(experiment_ids=[eid], max_results=100),
        "dataset_summaries",
    )
    assert len(names) == len(set(names)) == 1000
    assert names == [d.name for page in small for d in page]  # type: ignore[attr-defined]


# -- every message kind, from the contract's descriptors -----------------------------------


def contract_services() -> list[desc.ServiceDescriptor]:
    """Every service of the generated trackd.v1 modules (walked, so a new one counts)."""
    found: dict[str, desc.ServiceDescriptor] = {}
    for info in pkgutil.iter_modules(trackd.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"trackd.v1.{info.name}")
            found.update(module.DESCRIPTOR.services_by_name)
    assert len(found) >= 3
    return list(found.values())


def contract_methods() -> list[desc.MethodDescriptor]:
    return [m for s in contract_services() for m in s.methods]


def _token_bytes() -> int:
    """The longest history page token the server can issue."""
    fingerprint = paging.query_fingerprint("history", "f" * 32, KEY)
    return len(paging.encode([-(2**63), 2**63 - 1, -(2**63)], fingerprint))


# The documented limits of the fields that bounded responses carry, in bytes of UTF-8 (a
# free-text character takes up to 4) or in entries. A field missing here is unbounded: the
# message it is in can only be sent because the server cuts or refuses what would not fit.
_ARTIFACT_URI = 4 * limits.ARTIFACT_LOCATION_MAX + len("/" + "f" * 32 + "/artifacts")
STRING_BYTES_MAX = {
    "trackd.v1.CreateExperimentResponse.experiment_id": 19,
    "trackd.v1.RunInfo.run_id": 32,
    "trackd.v1.RunInfo.run_name": 4 * limits.RUN_NAME_MAX,
    "trackd.v1.RunInfo.experiment_id": 19,
    "trackd.v1.RunInfo.user_id": 4 * limits.USER_ID_MAX,
    "trackd.v1.RunInfo.artifact_uri": _ARTIFACT_URI,
    "trackd.v1.RunInfo.parent_run_id": 32,
    # The description is the `mlflow.note.content` tag, with a tag value's limit.
    "trackd.v1.RunInfo.description": 4 * limits.TAG_VALUE_MAX,
    "trackd.v1.RunInfo.external_url": 4 * limits.EXTERNAL_URL_MAX,
    "trackd.v1.RunSource.id": 4 * limits.SOURCE_ID_MAX,
    "trackd.v1.GetMetricHistoryResponse.metric_key": limits.KEY_MAX,
    "trackd.v1.StreamMetricEnvelopesResponse.run_id": 32,
    "trackd.v1.StreamMetricEnvelopesResponse.metric_key": limits.KEY_MAX,
    "trackd.v1.GetMetricHistoryResponse.next_page_token": _token_bytes(),
    "trackd.v1.ChunkRejection.code": max(len(c.name) for c in grpc.StatusCode),
    "trackd.v1.ChunkRejection.reason": 4 * 64,
    "trackd.v1.ChunkRejection.message": 4 * 2000,
    "trackd.v1.PermissionLevelDescription.description": max(
        len(t) for t in LEVEL_DESCRIPTIONS.values()
    ),
    "trackd.v1.FileInfo.path": artifacts.PATH_BYTES_MAX,
    "trackd.v1.FileInfo.sha256": 64,
    "trackd.v1.FileInfo.content_type": max(
        len(t) for t in [*mimetypes.types_map.values(), *mimetypes.common_types.values()]
    ),
    "trackd.v1.UploadProgress.upload_id": 32,
}
REPEATED_MAX = {
    "trackd.v1.GetMetricHistoryResponse.metrics": limits.HISTORY_MAX_RESULTS_MAX,
    "trackd.v1.StreamMetricsResponse.rejections": streams.WINDOW_CHUNKS + 1,
    "trackd.v1.StreamMetricHistoryResponse.steps": runs.HISTORY_CHUNK_MAX,
    "trackd.v1.StreamMetricHistoryResponse.timestamps": runs.HISTORY_CHUNK_MAX,
    "trackd.v1.StreamMetricHistoryResponse.values": runs.HISTORY_CHUNK_MAX,
    "trackd.v1.GetExperimentPermissionLevelsResponse.permission_levels": len(LEVEL_DESCRIPTIONS),
    **{
        f"trackd.v1.StreamMetricEnvelopesResponse.{c}": envelopes.BUCKETS_MAX
        for c in envelopes.COLUMNS
    },
}
# Answers that describe one resource whole, though not as a single message field: one
# experiment's access control list (its grants and its workspace's roles). Like a single
# resource, one too large is refused whole (MAX_READ_SIZE_EXCEEDED).
WHOLE_RESOURCE = {
    "trackd.v1.GetExperimentPermissionsResponse",
    "trackd.v1.SetExperimentPermissionsResponse",
    "trackd.v1.UpdateExperimentPermissionsResponse",
}
# Fields the server leaves empty in a given place (history points carry no key or model).
LEFT_EMPTY = {
    "trackd.v1.GetMetricHistoryResponse.metrics": {
        "key",
        "model_id",
        "dataset_name",
        "dataset_digest",
        "run_id",
    }
}

_WORST_SCALAR: dict[int, Any] = {
    desc.FieldDescriptor.TYPE_INT64: -1,  # 10-byte varints
    desc.FieldDescriptor.TYPE_INT32: -1,
    desc.FieldDescriptor.TYPE_UINT64: 2**64 - 1,
    desc.FieldDescriptor.TYPE_UINT32: 2**32 - 1,
    desc.FieldDescriptor.TYPE_SINT64: -(2**63),
    desc.FieldDescriptor.TYPE_SINT32: -(2**31),
    desc.FieldDescriptor.TYPE_DOUBLE: math.nan,
    desc.FieldDescriptor.TYPE_FLOAT: math.nan,
    desc.FieldDescriptor.TYPE_FIXED64: 1,
    desc.FieldDescriptor.TYPE_FIXED32: 1,
    desc.FieldDescriptor.TYPE_BOOL: True,
}


def largest(d: desc.Descriptor, skip: frozenset[str] = frozenset()) -> Message | None:
    """The largest instance of message `d` the server can send under the documented limits,
    or None when some field it carries has no bound (a page of runs, a run's params)."""
    msg = message_factory.GetMessageClass(d)()
    for f in d.fields:
        if f.name in skip:
            continue
        count = REPEATED_MAX.get(f.full_name) if f.is_repeated else 1
        if count is None:
            return None
        if f.type == f.TYPE_MESSAGE:
            item = largest(f.message_type, frozenset(LEFT_EMPTY.get(f.full_name, ())))
            if item is None:
                return None
            if f.is_repeated:
                getattr(msg, f.name).extend([item] * count)
            else:
                getattr(msg, f.name).CopyFrom(item)
            continue
        if f.type == f.TYPE_STRING:
            n = STRING_BYTES_MAX.get(f.full_name)
            if n is None:
                return None
            value: Any = WIDE * (n // 4) + "x" * (n % 4)
        elif f.type == f.TYPE_ENUM:
            value = max(v.number for v in f.enum_type.values)
        elif f.type in _WORST_SCALAR:
            value = _WORST_SCALAR[f.type]
        else:
            return None
        if f.is_repeated:
            getattr(msg, f.name).extend([value] * count)
        else:
            setattr(msg, f.name, value)
    return msg


def test_every_response_message_fits_or_is_cut_or_refused() -> None:
    """For each RPC of the contract: the largest answer its documented limits allow fits
    in MESSAGE_BYTES_MAX; or the answer is a page (cut by size, tested above), a message of
    a response stream (split, tested above), or a single resource (refused whole, tested
    above). Whatever it is, the cap applies to it (the next test)."""
    bounded = {}
    for method in contract_methods():
        out = method.output_type
        instance = largest(out)
        if instance is not None and instance.ByteSize() <= MAX:
            bounded[method.name] = instance.ByteSize()
            continue
        is_page = "next_page_token" in out.fields_by_name
        resources = [f for f in out.fields if f.type == f.TYPE_MESSAGE and not f.is_repeated]
        single = len(resources) == len(out.fields) == 1 or out.full_name in WHOLE_RESOURCE
        assert is_page or method.server_streaming or single, (
            f"{method.full_name}: {out.name} can exceed {MAX:,} bytes and is neither a page, "
            "a stream message nor a single resource"
        )
    # The bounded ones the limits make interesting, with their worst cases.
    assert bounded["GetMetricHistory"] < 1_000_000
    assert bounded["StreamMetricEnvelopes"] < 300_000
    assert bounded["StreamMetrics"] < 200_000
    assert bounded["UpdateRun"] < 60_000  # a description of 8000 characters is most of it
    assert bounded["GetArtifact"] < 2_000
    assert bounded["UploadArtifact"] < 2_000


class _Oversized:
    """A servicer whose every method answers a message just over the cap."""

    def __init__(self, service: desc.ServiceDescriptor) -> None:
        self.methods = {m.name: m for m in service.methods}

    def __getattr__(self, name: str) -> Any:
        method = self.methods[name]

        async def unary(request: Any, context: Any) -> Message:
            return oversized(method.output_type)

        async def streaming(request: Any, context: Any) -> AsyncIterator[Message]:
            yield oversized(method.output_type)

        return streaming if method.server_streaming else unary


def oversized(d: desc.Descriptor) -> Message:
    """An instance of `d` larger than MESSAGE_BYTES_MAX, through its first string or
    repeated field found depth first."""
    msg = message_factory.GetMessageClass(d)()
    for f in d.fields:
        if f.type == f.TYPE_STRING and not f.is_repeated:
            setattr(msg, f.name, "x" * (MAX + 1))
            return msg
        if f.is_repeated and f.type in _WORST_SCALAR:
            getattr(msg, f.name).extend([_WORST_SCALAR[f.type]] * (MAX // 8 + 1))
            return msg
        if f.type == f.TYPE_MESSAGE:
            inner = oversized(f.message_type)
            if inner.ByteSize() > MAX:
                (getattr(msg, f.name).add() if f.is_repeated else getattr(msg, f.name)).CopyFrom(
                    inner
                )
                return msg
    return msg


async def test_the_server_refuses_every_answer_over_the_cap_cleanly() -> None:
    """Every method of the contract, registered as trackd registers it, answers an
    oversized message with RESOURCE_EXHAUSTED and ErrorInfo MAX_READ_SIZE_EXCEEDED, over a
    default channel (without the cap the client would refuse the message itself, with no
    details); a message kind that cannot grow past the cap has no field to grow."""
    server = grpc.aio.server()
    for service in contract_services():
        rpc.add_service(server, _Oversized(service), service, Guard(access_log=False))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    checked = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in contract_methods():
                if oversized(method.output_type).ByteSize() <= MAX:
                    assert largest(method.output_type) is not None, method.full_name
                    continue
                path = f"/{method.containing_service.full_name}/{method.name}"
                request_cls = message_factory.GetMessageClass(method.input_type)
                kwargs = {
                    "request_serializer": request_cls.SerializeToString,
                    "response_deserializer": bytes,
                }
                if method.client_streaming:
                    call: Any = channel.stream_stream(path, **kwargs)(iter([request_cls()]))
                    answer: Any = _drain(call)
                elif method.server_streaming:
                    answer = _drain(channel.unary_stream(path, **kwargs)(request_cls()))
                else:
                    answer = channel.unary_unary(path, **kwargs)(request_cls())
                await expect_too_large(answer)
                checked.append(method.name)
    finally:
        await server.stop(None)
    assert {"GetRun", "SearchRuns", "GetMetricHistory", "StreamMetricHistory"} <= set(checked)


async def _drain(call: Any) -> list[Any]:
    return [item async for item in call]
