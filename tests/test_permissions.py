"""The permission matrix: every RPC of every service (read from the descriptors) called as
anonymous, with a malformed, an expired and a revoked token, and as a reader, an editor, a
manager, a principal of another workspace and an admin, each answer's code checked against
the level the policy declares. Principals are API tokens made by `trackd token create`
through the real entry point; the server runs with `--auth on`.
"""

from __future__ import annotations

import asyncio
import importlib
import pkgutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from google.protobuf import message_factory

import trackd.v1
from conftest import server_config
from trackd.server import app
from trackd.server.domain.auth import policy
from trackd.server.domain.auth.principal import Level
from trackd.server.domain.watch import Position
from trackd.v1 import (
    artifact_service_pb2,
    experiment_pb2,
    experiment_service_pb2,
    logged_model_pb2,
    logged_model_service_pb2,
    run_service_pb2,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Every service of every generated module of the contract, so a new service is covered too.
SERVICES = [
    service
    for m in pkgutil.iter_modules(trackd.v1.__path__)
    if m.name.endswith("_pb2")
    for service in importlib.import_module(
        f"trackd.v1.{m.name}"
    ).DESCRIPTOR.services_by_name.values()
]
ALL_RPCS = [m for s in SERVICES for m in s.methods]
TRACKD = [sys.executable, "-m", "trackd.server"]

# The callers, and their level on the experiments of workspace "default".
LEVELS = {
    "reader": Level.READ,
    "editor": Level.EDIT,
    "manager": Level.MANAGE,
    "outsider": Level.NONE,  # MANAGE in workspace "other" only
    "admin": Level.MANAGE,
}
UNAUTHENTICATED = ("anonymous", "malformed", "expired", "revoked")
# Metadata of each caller's calls; filled by the `authed` fixture.
METADATA: dict[str, tuple[tuple[str, str], ...]] = {
    "anonymous": (),
    "malformed": (("authorization", "Bearer tkd_not-a-token"),),
}


def trackd(database_url: str, *args: str) -> str:
    """Runs the `trackd` CLI (the real entry point); its stdout."""
    result = subprocess.run(
        [*TRACKD, *args, "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.strip()


def make_token(database_url: str, principal: str, *args: str) -> tuple[tuple[str, str], ...]:
    """A new API token of `principal` (`trackd token create`), as call metadata."""
    secret = trackd(database_url, "token", "create", "--principal", principal, *args)
    assert secret.startswith("tkd_")
    return (("authorization", f"Bearer {secret}"),)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def authed(database_url: str) -> AsyncIterator[tuple[grpc.aio.Channel, str]]:
    """A server with auth on; reader/editor/manager hold those roles in "default", the
    outsider MANAGE in "other" only; an expired and a revoked token."""
    made = time.monotonic()
    METADATA["expired"] = make_token(database_url, "expired", "--expires-in", "1s")
    trackd(database_url, "workspace", "create", "other")
    for who, role in (("reader", "READ"), ("editor", "EDIT"), ("manager", "MANAGE")):
        METADATA[who] = make_token(database_url, who, "--role", f"default={role}")
    METADATA["outsider"] = make_token(database_url, "outsider", "--role", "other=MANAGE")
    METADATA["admin"] = make_token(database_url, "root", "--admin")
    METADATA["revoked"] = make_token(
        database_url, "revoked", "--name", "r", "--role", "default=MANAGE"
    )
    trackd(database_url, "token", "revoke", "--principal", "revoked", "--name", "r")
    await asyncio.sleep(max(0.0, 1.5 - (time.monotonic() - made)))
    running = await app.start(server_config(auth="on"), database_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            yield ch, database_url
    finally:
        await running.stop(1.0)


def as_(who: str) -> tuple[tuple[str, str], ...]:
    return METADATA[who]


def unary(ch: grpc.aio.Channel, path: str, response: Any) -> Any:
    """A callable for the unary method at `path` answering `response` messages."""
    return ch.unary_unary(
        path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response.FromString,
    )


async def _call(ch: grpc.aio.Channel, method: Any, request: Any, who: str) -> grpc.StatusCode:
    """The code of one call (a streaming one is read to its end)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    out_cls = message_factory.GetMessageClass(method.output_type)
    kw: dict[str, Any] = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": out_cls.FromString,
    }
    try:
        if method.name == "UploadArtifact":
            # Start, then wait for the first answer before the bytes: a refused upload ends
            # at its start, and writing more after the status arrived would make gRPC's
            # client report INTERNAL instead of it.
            call = ch.stream_stream(path, **kw)(metadata=as_(who))
            await call.write(request[0])
            await call.read()
            for message in request[1:]:
                await call.write(message)
            await call.done_writing()
            while await call.read() is not grpc.aio.EOF:
                pass
            return grpc.StatusCode.OK
        if method.client_streaming:
            stub = ch.stream_stream(path, **kw)
            responses = stub(iter(request), metadata=as_(who))
            codes = [
                grpc.StatusCode[r.code]
                for resp in [x async for x in responses]
                for r in getattr(resp, "rejections", ())
            ]
            return codes[0] if codes else grpc.StatusCode.OK
        if method.name == "WatchRun":
            # It never ends: the first response (an update or a heartbeat), or the refusal.
            watch = ch.unary_stream(path, **kw)(request, metadata=as_(who))
            try:
                await asyncio.wait_for(watch.read(), 30)
            finally:
                watch.cancel()
            return grpc.StatusCode.OK
        if method.server_streaming:
            stream = ch.unary_stream(path, **kw)(request, metadata=as_(who))
            async for _ in stream:
                pass
            return grpc.StatusCode.OK
        await ch.unary_unary(path, **kw)(request, metadata=as_(who))
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as err:
        return err.code()


async def _fixtures(ch: grpc.aio.Channel, tag: str) -> dict[str, str]:
    """A fresh experiment (in "default"), run and logged model, made by the admin."""
    exp = experiment_service_pb2
    eid = (
        await unary(
            ch, "/trackd.v1.ExperimentService/CreateExperiment", exp.CreateExperimentResponse
        )(exp.CreateExperimentRequest(name=f"matrix-{tag}"), metadata=as_("admin"))
    ).experiment_id
    run = (
        await unary(ch, "/trackd.v1.RunService/CreateRun", run_service_pb2.CreateRunResponse)(
            run_service_pb2.CreateRunRequest(experiment_id=eid), metadata=as_("admin")
        )
    ).run.info.run_id
    lm = logged_model_service_pb2
    mid = (
        await unary(
            ch, "/trackd.v1.LoggedModelService/CreateLoggedModel", lm.CreateLoggedModelResponse
        )(lm.CreateLoggedModelRequest(experiment_id=eid), metadata=as_("admin"))
    ).model.info.model_id
    tags = {
        "/trackd.v1.ExperimentService/SetExperimentTag": exp.SetExperimentTagRequest(
            experiment_id=eid, key="k", value="v"
        ),
        "/trackd.v1.RunService/SetTag": run_service_pb2.SetTagRequest(
            run_id=run, key="t", value="v"
        ),
        "/trackd.v1.LoggedModelService/SetLoggedModelTags": lm.SetLoggedModelTagsRequest(
            model_id=mid, tags=[logged_model_pb2.LoggedModelTag(key="k", value="v")]
        ),
    }
    for path, request in tags.items():
        await unary(ch, path, type(request))(request, metadata=as_("admin"))
    upload = ch.stream_stream(
        "/trackd.v1.ArtifactService/UploadArtifact",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=artifact_service_pb2.UploadArtifactResponse.FromString,
    )
    async for _ in upload(iter(_upload(run, "f.txt")), metadata=as_("admin")):
        pass
    return {"experiment_id": eid, "run_id": run, "model_id": mid}


def _upload(run_id: str, path: str) -> list[artifact_service_pb2.UploadArtifactRequest]:
    """The messages of an upload of a small file to a run."""
    a = artifact_service_pb2
    return [
        a.UploadArtifactRequest(start=a.UploadStart(run_id=run_id, path=path)),
        a.UploadArtifactRequest(data=b"matrix"),
        a.UploadArtifactRequest(finish=a.UploadFinish()),
    ]


def _request(method: Any, ids: dict[str, str], tag: str) -> Any:
    """A request that would succeed for a caller with enough rights."""
    cls = message_factory.GetMessageClass(method.input_type)
    name = method.name
    if name == "StreamMetrics":
        series = run_service_pb2.MetricColumns(
            run_id=ids["run_id"], key="m", steps=[0], values=[1.0], timestamps=[1]
        )
        return [
            run_service_pb2.StreamMetricsRequest(stream_id=f"s-{tag}", sequence=1, series=[series])
        ]
    if name == "UploadArtifact":
        return _upload(ids["run_id"], "up.txt")
    if method.containing_service.name == "ArtifactService":
        # The owner oneof takes one id: the run's, and the file every fixture has.
        return cls(run_id=ids["run_id"], path="f.txt")
    if name == "WatchRun":
        # From the start of the watch log: the run's creation is the first response.
        return cls(run_id=ids["run_id"], resume_position=Position(0).token())
    kw: dict[str, Any] = {}
    fields = {f.name for f in method.input_type.fields}
    for field in ("experiment_id", "run_id", "model_id"):
        if field in fields:
            kw[field] = ids[field]
    if "experiment_ids" in fields:
        kw["experiment_ids"] = [ids["experiment_id"]]
    if "run_ids" in fields:
        kw["run_ids"] = [ids["run_id"]]
    extra: dict[str, dict[str, Any]] = {
        "CreateExperiment": {"name": f"created-{tag}"},
        "GetExperimentByName": {"experiment_name": f"matrix-{tag}"},
        "UpdateExperiment": {"new_name": f"renamed-{tag}"},
        "SetExperimentTag": {"key": "k", "value": "v"},
        "DeleteExperimentTag": {"key": "k"},
        "LogMetric": {"key": "m", "value": 1.0, "timestamp": 1},
        "LogParam": {"key": "p", "value": "1"},
        "SetTag": {"key": "t", "value": "1"},
        "DeleteTag": {"key": "t"},
        "GetMetricHistory": {"metric_key": "m"},
        "StreamMetricHistory": {"metric_key": "m"},
        "StreamMetricEnvelopes": {"metric_keys": ["m"]},
        "DeleteLoggedModelTag": {"tag_key": "k"},
        "FinalizeLoggedModel": {"status": 2},
        "DeleteRuns": {"max_timestamp_millis": 0},
        "RestoreRuns": {"min_timestamp_millis": 0},
    }
    kw.update(extra.get(name, {}))
    if name in ("SetExperimentPermissions", "UpdateExperimentPermissions"):
        kw["access_control_list"] = [
            experiment_pb2.AccessControlRequest(
                user_name="manager", permission_level=experiment_pb2.PERMISSION_LEVEL_CAN_MANAGE
            )
        ]
    return cls(**kw)


async def test_every_rpc_has_a_declared_permission() -> None:
    missing = [m.full_name for m in ALL_RPCS if m.full_name not in policy.POLICY]
    assert not missing, f"declare these RPCs in domain/auth/policy.py POLICY: {missing}"
    assert set(policy.POLICY) == {m.full_name for m in ALL_RPCS}


DENIED = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED}


def expected(rule: policy.Rule, who: str) -> set[grpc.StatusCode] | None:
    """The codes the caller must get; None for "anything but a refusal"."""
    if who in UNAUTHENTICATED:
        return {grpc.StatusCode.UNAUTHENTICATED}
    held = LEVELS[who]
    if rule is policy.POLICY["trackd.v1.ExperimentService.GetExperimentByName"]:
        # Among the experiments the caller may see: to the outsider the name is unknown.
        return {grpc.StatusCode.NOT_FOUND} if held == Level.NONE else None
    if rule.resource in (policy.SEARCH,):
        return None  # filtered, never refused
    if rule.resource == policy.WORKSPACE:
        # The outsider has no role in "default": the workspace is not found.
        held = LEVELS[who] if who != "outsider" else Level.NONE
    if held == Level.NONE:
        return {grpc.StatusCode.NOT_FOUND}
    if held < rule.level:
        return {grpc.StatusCode.PERMISSION_DENIED}
    return None


@pytest.mark.parametrize("method", ALL_RPCS, ids=lambda m: m.name)
async def test_permission_matrix(authed: tuple[grpc.aio.Channel, str], method: Any) -> None:
    ch, _ = authed
    rule = policy.POLICY[method.full_name]
    # Refused callers first, on one set of resources; then the allowed ones, each on its own
    # (a delete must not hide the resource from the next caller).
    order = sorted([*UNAUTHENTICATED, *LEVELS], key=lambda w: expected(rule, w) is None)
    shared = await _fixtures(ch, f"{method.name}-shared")
    for who in order:
        want = expected(rule, who)
        tag = f"{method.name}-{who}"
        ids = shared if want is not None else await _fixtures(ch, tag)
        if method.name == "GetExperimentByName":
            ids = shared
            tag = f"{method.name}-shared"
        code = await _call(ch, method, _request(method, ids, tag), who)
        if want is None:
            assert code not in DENIED | {grpc.StatusCode.UNAUTHENTICATED}, (who, code)
        else:
            assert code in want, (who, code, want)


async def test_outsider_searches_see_nothing_and_admin_sees_all(
    authed: tuple[grpc.aio.Channel, str],
) -> None:
    ch, _ = authed
    ids = await _fixtures(ch, "search")
    search = unary(ch, "/trackd.v1.RunService/SearchRuns", run_service_pb2.SearchRunsResponse)
    req = run_service_pb2.SearchRunsRequest(experiment_ids=[ids["experiment_id"]])
    assert len((await search(req, metadata=as_("admin"))).runs) == 1
    assert len((await search(req, metadata=as_("reader"))).runs) == 1
    assert len((await search(req, metadata=as_("outsider"))).runs) == 0


async def test_grant_gives_an_outsider_the_level_and_set_replaces(
    authed: tuple[grpc.aio.Channel, str],
) -> None:
    ch, _ = authed
    ids = await _fixtures(ch, "grant")
    get = unary(ch, "/trackd.v1.RunService/GetRun", run_service_pb2.GetRunResponse)
    update = unary(
        ch,
        "/trackd.v1.ExperimentService/UpdateExperimentPermissions",
        experiment_service_pb2.UpdateExperimentPermissionsResponse,
    )
    setp = unary(
        ch,
        "/trackd.v1.ExperimentService/SetExperimentPermissions",
        experiment_service_pb2.SetExperimentPermissionsResponse,
    )
    req = run_service_pb2.GetRunRequest(run_id=ids["run_id"])
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await get(req, metadata=as_("outsider"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    grant = experiment_pb2.AccessControlRequest(
        user_name="outsider", permission_level=experiment_pb2.PERMISSION_LEVEL_CAN_READ
    )
    resp = await update(
        experiment_service_pb2.UpdateExperimentPermissionsRequest(
            experiment_id=ids["experiment_id"], access_control_list=[grant]
        ),
        metadata=as_("manager"),
    )
    users = {a.user_name for a in resp.access_control_list}
    assert {"outsider", "reader", "editor", "manager"} <= users
    assert (await get(req, metadata=as_("outsider"))).run.info.run_id == ids["run_id"]
    await setp(
        experiment_service_pb2.SetExperimentPermissionsRequest(
            experiment_id=ids["experiment_id"], access_control_list=[]
        ),
        metadata=as_("manager"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await get(req, metadata=as_("outsider"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


async def test_writes_are_audited_with_their_outcome(
    authed: tuple[grpc.aio.Channel, str],
) -> None:
    ch, url = authed
    ids = await _fixtures(ch, "audit")
    tag = unary(ch, "/trackd.v1.RunService/SetTag", run_service_pb2.SetTagResponse)
    req = run_service_pb2.SetTagRequest(run_id=ids["run_id"], key="a", value="b")
    await tag(req, metadata=as_("editor"))
    with pytest.raises(grpc.aio.AioRpcError):
        await tag(req, metadata=as_("reader"))
    await asyncio.sleep(0.5)
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT principal, outcome FROM audit_log WHERE method = $1 AND resource = $2"
            " AND principal <> 'root' ORDER BY audit_id",
            "trackd.v1.RunService.SetTag",
            f"run:{ids['run_id']}",
        )
    finally:
        await conn.close()
    assert [(r["principal"], r["outcome"]) for r in rows] == [
        ("editor", "OK"),
        ("reader", "PERMISSION_DENIED"),
    ]


async def test_user_id_comes_from_the_principal(authed: tuple[grpc.aio.Channel, str]) -> None:
    ch, _ = authed
    ids = await _fixtures(ch, "user")
    create = unary(ch, "/trackd.v1.RunService/CreateRun", run_service_pb2.CreateRunResponse)
    resp = await create(
        run_service_pb2.CreateRunRequest(experiment_id=ids["experiment_id"]),
        metadata=as_("editor"),
    )
    assert resp.run.info.user_id == "editor"
    # The owner a run search filters on is that principal (`owner` is user_id's alias).
    search = unary(ch, "/trackd.v1.RunService/SearchRuns", run_service_pb2.SearchRunsResponse)
    for who in ("editor", "nobody"):
        found = await search(
            run_service_pb2.SearchRunsRequest(
                experiment_ids=[ids["experiment_id"]], filter=f"attributes.owner = '{who}'"
            ),
            metadata=as_("reader"),
        )
        owned = [r.info.run_id for r in found.runs]
        assert (resp.run.info.run_id in owned) == (who == "editor")
        assert all(r.info.user_id == who for r in found.runs)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await create(
            run_service_pb2.CreateRunRequest(experiment_id=ids["experiment_id"], user_id="ana"),
            metadata=as_("editor"),
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_id" in (exc.value.details() or "")
