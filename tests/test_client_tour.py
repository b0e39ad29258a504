"""The Python client as an MLflow user meets it, against a real server: MlflowClient's names
and argument orders, plain results (status words, dicts), paging with `.token` and
iterators, enum words as arguments, and proof through the server's Prometheus metrics that
the client reached every RPC of the contract."""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import pkgutil
import shutil
import tempfile
import threading
import urllib.request
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

import trackd.v1
from conftest import server_config
from trackd.client import (
    AlreadyExistsError,
    Client,
    Dataset,
    DatasetInput,
    Experiment,
    FailedPreconditionError,
    InvalidArgumentError,
    LoggedModelOutput,
    Metric,
    MetricSummary,
    NotFoundError,
    Param,
    Run,
    RunSource,
    RunTag,
    ViewType,
)
from trackd.server import app

RPCS = sorted(
    method.full_name
    for m in pkgutil.iter_modules(trackd.v1.__path__)
    if m.name.endswith("_pb2")
    for service in importlib.import_module(
        f"trackd.v1.{m.name}"
    ).DESCRIPTOR.services_by_name.values()
    for method in service.methods
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(database_url: str) -> AsyncIterator[app.Running]:
    """trackd with its Prometheus metrics on, so the test can see which RPCs were called."""
    running = await app.start(server_config(metrics_listen="127.0.0.1:0"), database_url)
    yield running
    await running.stop(1.0)


def _called_rpcs(metrics_port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    called = set()
    for line in text.splitlines():
        if line.startswith("trackd_requests_total{"):
            labels = dict(
                part.split("=", 1)
                for part in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            called.add(labels["method"].strip('"'))
    return called


def tour(target: str) -> dict[str, object]:
    """Every client method once, MLflow style; returns what the test checks."""
    seen: dict[str, object] = {}
    with Client(target) as client:
        # Experiments.
        eid = client.create_experiment("tour", tags={"team": "vision"})
        with pytest.raises(AlreadyExistsError):
            client.create_experiment("tour")
        exp = client.get_experiment(eid)
        assert isinstance(exp, Experiment)
        assert (exp.name, exp.lifecycle_stage, exp.tags) == ("tour", "active", {"team": "vision"})
        assert exp.proto is not None and exp.proto.experiment_id == eid
        assert client.get_experiment_by_name("tour") == exp
        assert client.get_experiment_by_name("no-such-experiment") is None
        client.set_experiment_tag(eid, "owner", "ana")
        client.delete_experiment_tag(eid, "owner")
        with pytest.raises(NotFoundError):
            client.delete_experiment_tag(eid, "owner")
        other = client.create_experiment("tour-other")
        client.rename_experiment(other, "tour-renamed")
        client.delete_experiment(other)
        assert client.get_experiment(other).lifecycle_stage == "deleted"
        client.restore_experiment(other)
        page = client.search_experiments(
            ViewType.ALL, max_results=1, filter_string="name LIKE 'tour%'", order_by=["name"]
        )
        assert [e.name for e in page] == ["tour"] and page.token
        rest = client.search_experiments("ALL", 10, "name LIKE 'tour%'", ["name"], page.token)
        assert [e.name for e in rest] == ["tour-renamed"] and rest.token is None
        assert [e.name for e in client.iter_experiments(filter_string="name LIKE 'tour%'")] == [
            "tour-renamed",
            "tour",
        ]
        # Permissions (auth is off: the anonymous caller manages everything).
        assert exp.workspace == "default"
        levels = client.get_experiment_permission_levels(eid)
        assert list(levels) == ["CAN_READ", "CAN_EDIT", "CAN_MANAGE"]
        acl = client.set_experiment_permissions(
            eid, [{"user_name": "ana", "permission_level": "CAN_READ"}]
        )
        assert [(a.user_name, a.all_permissions[0].permission_level) for a in acl] == [
            ("ana", "CAN_READ")
        ]
        acl = client.update_experiment_permissions(
            eid, [{"group_name": "vision", "permission_level": "CAN_EDIT"}]
        )
        assert [(a.user_name, a.group_name) for a in acl] == [("ana", ""), ("", "vision")]
        assert client.get_experiment_permissions(eid) == acl

        # Runs, MlflowClient's way.
        run = client.create_run(eid, tags={"stage": "dev"}, run_name="r0")
        assert isinstance(run, Run)
        rid = run.info.run_id
        assert (run.info.status, run.info.end_time, run.info.run_uuid) == ("RUNNING", None, rid)
        assert client.log_param(rid, "lr", 0.001) == 0.001
        client.log_param(rid, "layers", 4)
        client.log_param(rid, "amp", True)
        with pytest.raises(FailedPreconditionError):
            client.log_param(rid, "lr", 0.01)
        client.set_tag(rid, "model", "cnn")
        client.set_tag(rid, "tmp", "x")
        client.delete_tag(rid, "tmp")
        client.log_metric(rid, "loss", 0.9, timestamp=1000, step=0)
        client.log_batch(
            rid,
            metrics=[Metric("loss", 0.5, 2000, 1), ("loss", 0.25, 2), ("acc", float("nan"), 2)],
            params=[Param("optimizer", "adam")],
            tags=[RunTag("phase", "train")],
        )
        got = client.get_run(rid)
        assert got.data.params == {"lr": "0.001", "layers": "4", "amp": "True", "optimizer": "adam"}
        assert got.data.metrics["loss"] == 0.25
        assert math.isnan(got.data.metrics["acc"])
        assert got.data.tags["model"] == "cnn" and "tmp" not in got.data.tags
        assert got.data.tags["mlflow.runName"] == "r0"
        summary = got.data.metric_summaries["loss"]
        assert isinstance(summary, MetricSummary)
        assert (summary.count, summary.min, summary.max, summary.last_step) == (3, 0.25, 0.9, 2)
        assert got.proto is not None and got.proto.info.run_id == rid
        history = client.get_metric_history(rid, "loss")
        assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.25)]
        assert [m.value for m in client.iter_metric_history(rid, "loss", page_size=1)] == [
            0.9,
            0.5,
            0.25,
        ]
        assert client.get_metric_columns(rid, "loss")[0] == [0, 1, 2]
        assert [c[2] for c in client.iter_metric_columns(rid, "loss")] == [[0.9, 0.5, 0.25]]

        # Datasets, inputs and outputs.
        train = Dataset("mnist", "d1", "s3", "s3://b/mnist")
        client.log_inputs(rid, [DatasetInput(train, {"mlflow.data.context": "training"})])
        client.log_input(rid, Dataset("eval", "d2", "local", "/data/eval"), context="evaluation")
        model = client.create_logged_model(eid, "cnn", rid, {"team": "v"}, {"k": 3}, "torch")
        assert (model.status, model.params, model.tags) == ("PENDING", {"k": "3"}, {"team": "v"})
        client.log_outputs(rid, [LoggedModelOutput(model.model_id, 5)])
        client.log_output(rid, model.model_id, 6)
        got = client.get_run(rid)
        assert {d.dataset.name: d.tags for d in got.inputs.dataset_inputs} == {
            "mnist": {"mlflow.data.context": "training"},
            "eval": {"mlflow.data.context": "evaluation"},
        }
        assert sorted(o.step for o in got.outputs.model_outputs) == [5, 6]
        datasets = client.search_datasets([eid])
        assert {(d.name, d.context) for d in datasets} == {
            ("mnist", "training"),
            ("eval", "evaluation"),
        }

        # Artifacts: a run's files, up, listed, inspected, down and deleted.
        tmp = tempfile.mkdtemp()
        weights = os.path.join(tmp, "weights.bin")
        with open(weights, "wb") as f:
            f.write(bytes(range(256)) * 4)
        stored = client.log_artifact(rid, weights, "model")
        assert (stored.path, stored.file_size, stored.is_dir) == ("model/weights.bin", 1024, False)
        client.log_text(rid, "id,label\n1,cat\n2,dog\n", "predictions.csv")
        client.log_dict(rid, {"lr": 0.001}, "config.json")
        listed = client.list_artifacts(rid)
        assert [(f.path, f.is_dir) for f in listed] == [
            ("config.json", False),
            ("model", True),
            ("predictions.csv", False),
        ]
        table = client.get_artifact(rid, "predictions.csv")
        assert (table.content_type, table.row_count) == ("text/csv", 2)
        local = client.download_artifacts(rid, "model", os.path.join(tmp, "dst"))
        with open(os.path.join(local, "weights.bin"), "rb") as f:
            assert f.read() == bytes(range(256)) * 4
        head = client.download_artifact(rid, "predictions.csv", os.path.join(tmp, "head"), 0, 2)
        assert head.file_size == 21
        with open(os.path.join(tmp, "head"), "rb") as f:
            assert f.read() == b"id"
        assert client.delete_artifact(rid, "config.json") == 1
        with pytest.raises(NotFoundError):
            client.get_artifact(rid, "config.json")

        # Logged models.
        client.log_metric(
            rid,
            "acc",
            0.97,
            step=3,
            model_id=model.model_id,
            dataset_name="mnist",
            dataset_digest="d1",
        )
        client.set_logged_model_tags(model.model_id, {"stage": "prod"})
        client.delete_logged_model_tag(model.model_id, "stage")
        client.log_model_params(model.model_id, {"dropout": 0.1})
        ready = client.finalize_logged_model(model.model_id, "READY")
        assert ready.status == "READY"
        found = client.search_logged_models(
            [eid],
            filter_string="metrics.acc > 0.9",
            datasets=[{"dataset_name": "mnist", "dataset_digest": "d1"}],
            order_by=[{"field_name": "metrics.acc", "ascending": False}],
        )
        assert [m.model_id for m in found] == [model.model_id]
        assert [m.name for m in client.iter_logged_models(eid)] == ["cnn"]
        fetched = client.get_logged_model(model.model_id)
        assert fetched.params == {"k": "3", "dropout": "0.1"}
        assert [(m.key, m.value, m.dataset_name) for m in fetched.metrics] == [
            ("acc", 0.97, "mnist")
        ]
        client.log_model_artifact(model.model_id, weights)
        assert [f.path for f in client.list_logged_model_artifacts(model.model_id)] == [
            "weights.bin"
        ]
        shutil.rmtree(tmp)
        client.delete_logged_model(model.model_id)
        with pytest.raises(NotFoundError):
            client.get_logged_model(model.model_id)

        # Searching runs, the snippet with only the import changed.
        for i in range(3):
            r = client.create_run(eid, run_name=f"sweep-{i}")
            client.log_batch(r.info.run_id, [("loss", 0.1 * (i + 1), 0)], {"lr": str(10**-i)})
            client.set_terminated(r.info.run_id, "FAILED" if i == 2 else None)
        best = client.search_runs([eid], "metrics.loss < 0.5", order_by=["metrics.loss"])
        assert best[0].data.params["lr"] == "1"
        assert [r.info.run_name for r in best] == ["sweep-0", "sweep-1", "r0", "sweep-2"]
        failed = client.search_runs(eid, "attributes.status = 'FAILED'")
        assert [(r.info.run_name, r.info.status) for r in failed] == [("sweep-2", "FAILED")]
        first = client.search_runs([eid], "", ViewType.ACTIVE_ONLY, 2, ["attributes.run_name"])
        second = client.search_runs(
            [eid], "", "ACTIVE_ONLY", 2, ["attributes.run_name"], first.token
        )
        assert [r.info.run_name for r in first + second] == ["r0", "sweep-0", "sweep-1", "sweep-2"]
        assert second.token is None
        assert len(list(client.iter_runs([eid], page_size=1))) == 4
        with pytest.raises(InvalidArgumentError):
            client.search_runs([eid], "metrics.loss <<< 1")

        # Status words in and out; bulk deletes; the parent of a nested run.
        info = client.update_run(rid, "KILLED", name="renamed")
        assert (info.status, info.run_name) == ("KILLED", "renamed")
        child = client.create_run(eid, parent_run_id=rid, description="a child")
        assert child.data.tags["mlflow.note.content"] == "a child"
        parent = client.get_parent_run(child.info.run_id)
        assert parent is not None and parent.info.run_id == rid
        assert client.get_parent_run(rid) is None
        assert (child.info.parent_run_id, child.info.depth) == (rid, 1)
        assert child.info.description == "a child"
        sibling = client.create_run(
            eid,
            start_time=1,
            parent_run_id=rid,
            external_url="https://ci.example/jobs/7",
            source=("job", "train-7"),
        )
        assert sibling.info.source == RunSource("JOB", "train-7")
        children = client.list_child_runs(rid, max_results=1)
        assert [r.info.run_id for r in children] == [child.info.run_id] and children.token
        assert [r.info.run_id for r in client.iter_child_runs(rid)] == [
            child.info.run_id,
            sibling.info.run_id,
        ]
        assert client.get_run(rid).info.has_children
        roots = client.search_runs(eid, "params.lr < 0.01", root_runs_only=True)
        assert [r.info.run_id for r in roots] == [rid]
        assert client.get_run(rid).data.typed_params["lr"] == 0.001
        client.update_run(sibling.info.run_id, description="later", source="")
        assert client.get_run(sibling.info.run_id).info.source is None
        client.delete_run(child.info.run_id)
        client.restore_run(child.info.run_id)
        scratch = client.create_experiment("tour-scratch")
        for _ in range(3):
            client.create_run(scratch)
        assert client.delete_runs(scratch, max_timestamp_millis=2**62) == 3
        assert client.restore_runs(scratch, min_timestamp_millis=0) == 3

        # The streaming logger and a run context.
        with client.start_run(eid, "streamed") as active:
            for step in range(100):
                active.log_metric("loss", 1 / (step + 1), step)
        lg = client.logger()
        lg.log(active.run_id, "extra", 1.0)
        lg.close()
        seen["streamed"] = client.get_run(active.run_id).data.metric_summaries["loss"].count

        # Live runs: liveness, plot-ready envelopes, and a run's updates as they commit.
        live = client.create_run(eid, run_name="live").info.run_id
        client.heartbeat(live)
        assert client.get_run(live).info.last_seen_time > 0
        envelopes = client.get_metric_envelope(active.run_id, "loss", buckets=10)
        assert int(sum(envelopes[active.run_id, "loss"].count)) == 100
        updates = client.watch_run(live, keys=["loss"])
        # A point logged once the watch is surely established (the second if not).
        timers = [
            threading.Timer(delay, client.log_metric, (live, "loss", 0.5, None, step))
            for delay, step in ((0.3, 1), (2.0, 2))
        ]
        for timer in timers:
            timer.start()
        update = next(u for u in updates if u.kind != "heartbeat")
        updates.close()
        for timer in timers:
            timer.cancel()
            timer.join()
        assert (update.kind, update.values) == ("points", [0.5])
        assert update.position and update.steps in ([1], [2])
        with pytest.raises(ValueError, match="status must be one of"):
            client.update_run(rid, "DONE")
    return seen


async def test_every_client_method_works_mlflow_style_and_reaches_every_rpc(
    served: app.Running,
) -> None:
    seen = await asyncio.to_thread(tour, f"127.0.0.1:{served.port}")
    assert seen["streamed"] == 100
    assert served.metrics_port is not None
    # The server labels calls by method name, which is unique across trackd's services.
    names = {rpc.rsplit(".", 1)[1] for rpc in RPCS}
    assert len(names) == len(RPCS)
    assert names - _called_rpcs(served.metrics_port) == set(), "RPCs the client never reached"
