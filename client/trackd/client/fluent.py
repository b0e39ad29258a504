"""The module-level API in MLflow's manner: one client per process, a stack of active runs,
and functions that log to the run on top of it.

    import trackd.client as trackd

    trackd.set_experiment("mnist")
    with trackd.start_run(run_name="baseline"):
        trackd.log_param("lr", 0.001)
        for step in range(100):
            trackd.log_metric("loss", 1 / (step + 1), step=step)
        with trackd.start_run(run_name="eval", nested=True):
            trackd.log_metric("acc", 0.97)

The server is the argument of `set_tracking_uri`, else $TRACKD_TRACKING_URI, else
127.0.0.1:50051; the experiment is `set_experiment`'s, else $TRACKD_EXPERIMENT_ID or
$TRACKD_EXPERIMENT_NAME, else "0". Runs still active when the interpreter exits are ended
FINISHED (their metrics flushed first), as MLflow does.

System metrics (`start_run(log_system_metrics=True)`, or for every run after
`enable_system_metrics_logging()` or with $TRACKD_ENABLE_SYSTEM_METRICS_LOGGING=true) are
sampled every 10 s unless `set_system_metrics_sampling_interval` says otherwise.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping
from typing import Any

from trackd.client.active_run import ActiveRun
from trackd.client.aio import resolve_target
from trackd.client.entities import Dataset, Experiment, FileInfo, Run, RunStatus
from trackd.client.inputs import RunSourceLike
from trackd.client.sync import Client
from trackd.client.system_metrics import DEFAULT_SYSTEM_METRICS_INTERVAL
from trackd.v1 import dataset_pb2

_lock = threading.RLock()
_uri: str | None = None
_client: Client | None = None
_experiment_id: str | None = None
_stack: list[ActiveRun] = []
_last: ActiveRun | None = None
# None: from $TRACKD_ENABLE_SYSTEM_METRICS_LOGGING.
_system_metrics: bool | None = None
_system_metrics_interval: float | None = None


def set_tracking_uri(uri: str) -> None:
    """Points the module-level API at a server ("host:port" or "grpc://host:port"); the
    next call connects there."""
    global _uri, _client
    with _lock:
        if _stack:
            raise RuntimeError("end the active runs before changing the tracking URI")
        old, _client, _uri = _client, None, uri
    if old is not None:
        old.close()


def get_tracking_uri() -> str:
    """The server the module-level API talks to."""
    return resolve_target(_uri)


def client() -> Client:
    """The module-level API's client (connected on first use)."""
    global _client
    with _lock:
        if _client is None:
            _client = Client(get_tracking_uri())
        return _client


def set_experiment(
    experiment_name: str | None = None, experiment_id: str | None = None
) -> Experiment:
    """Makes an experiment the one new runs go to: by name (created if missing) or id.

    Raises:
        ValueError: neither or both given. NotFoundError: no experiment of that id.
    """
    global _experiment_id
    if (experiment_name is None) == (experiment_id is None):
        raise ValueError("give exactly one of experiment_name and experiment_id")
    c = client()
    if experiment_id is not None:
        experiment = c.get_experiment(experiment_id)
    else:
        assert experiment_name is not None
        found = c.get_experiment_by_name(experiment_name)
        if found is None or found.lifecycle_stage == "deleted":
            if found is not None:
                raise ValueError(
                    f"experiment {experiment_name!r} is deleted; restore it or pick another name"
                )
            experiment = c.get_experiment(c.create_experiment(experiment_name))
        else:
            experiment = found
    _experiment_id = experiment.experiment_id
    return experiment


def _default_experiment_id() -> str:
    if _experiment_id is not None:
        return _experiment_id
    if os.environ.get("TRACKD_EXPERIMENT_ID"):
        return os.environ["TRACKD_EXPERIMENT_ID"]
    name = os.environ.get("TRACKD_EXPERIMENT_NAME")
    if name:
        return set_experiment(name).experiment_id
    return "0"


def start_run(
    run_id: str | None = None,
    experiment_id: str | None = None,
    run_name: str | None = None,
    nested: bool = False,
    parent_run_id: str | None = None,
    tags: Mapping[str, object] | None = None,
    description: str | None = None,
    log_system_metrics: bool | None = None,
    *,
    external_url: str | None = None,
    source: RunSourceLike | None = None,
) -> ActiveRun:
    """Starts (or, with `run_id`, resumes) a run and makes it the active one; use as
    `with start_run():` to end it at the block's end, or call `end_run()`.

    Args:
        run_id: resume this run.
        experiment_id: the run's experiment; default as set_experiment().
        run_name: a name; the server makes one up if None.
        nested: nest the run in the active run (otherwise an active run is an error).
        parent_run_id: nest the run in this one.
        tags, description: as Client.create_run().
        log_system_metrics: log CPU, memory, disk, network and GPU metrics as
            `system/...` series while the run lasts (see Client.start_run); None means
            as enable_system_metrics_logging() or $TRACKD_ENABLE_SYSTEM_METRICS_LOGGING
            say.
        external_url, source: as Client.create_run() (a link to the run elsewhere; what
            created it, such as ("job", "train-42")).

    Raises:
        RuntimeError: a run is active and `nested` is False.
        ImportError: system metrics are asked for and psutil is not installed.
    """
    with _lock:
        parent = _stack[-1] if _stack else None
        if parent is not None and not nested:
            raise RuntimeError(
                f"run {parent.run_id} is already active: end it with end_run(), or start "
                f"this one with nested=True"
            )
        if parent is not None and parent_run_id is None:
            parent_run_id = parent.run_id
        run = client().start_run(
            experiment_id or _default_experiment_id(),
            run_name,
            run_id=run_id,
            parent_run_id=parent_run_id,
            tags=tags,
            description=description,
            external_url=external_url,
            source=source,
            log_system_metrics=_system_metrics_on()
            if log_system_metrics is None
            else log_system_metrics,
            system_metrics_interval=_system_metrics_interval or DEFAULT_SYSTEM_METRICS_INTERVAL,
        )
        run.aio.on_end.append(lambda _: _forget(run))
        run.start()
        _stack.append(run)
        return run


def _system_metrics_on() -> bool:
    if _system_metrics is not None:
        return _system_metrics
    flag = os.environ.get("TRACKD_ENABLE_SYSTEM_METRICS_LOGGING", "")
    return flag.strip().lower() in {"1", "true", "yes", "on"}


def enable_system_metrics_logging() -> None:
    """Logs system metrics for every run started after this (unless its start_run says
    log_system_metrics=False)."""
    global _system_metrics
    _system_metrics = True


def disable_system_metrics_logging() -> None:
    """Stops logging system metrics for runs started after this (unless their start_run
    says log_system_metrics=True)."""
    global _system_metrics
    _system_metrics = False


def set_system_metrics_sampling_interval(interval: float | None) -> None:
    """Seconds between two system metrics samples of runs started after this; None
    restores the default of 10.

    Raises:
        ValueError: interval is not positive.
    """
    global _system_metrics_interval
    if interval is not None and not interval > 0:
        raise ValueError("interval must be positive")
    _system_metrics_interval = interval


def _forget(run: ActiveRun) -> None:
    global _last
    with _lock:
        if run in _stack:
            _stack.remove(run)
        _last = run


def active_run() -> ActiveRun | None:
    """The run the logging functions log to, or None."""
    with _lock:
        return _stack[-1] if _stack else None


def last_active_run() -> Run | None:
    """The active run, else the run ended last, as it is now on the server; or None."""
    run = active_run() or _last
    return client().get_run(run.run_id) if run is not None else None


def _active() -> ActiveRun:
    run = active_run()
    if run is None:
        return start_run()
    return run


def end_run(status: RunStatus | str = RunStatus.FINISHED) -> None:
    """Flushes the active run's metrics and ends it with `status`; the run it was nested
    in (if any) becomes active again. Does nothing when no run is active."""
    run = active_run()
    if run is not None:
        run.end(status)


def log_metric(
    key: str, value: float, step: int | None = None, timestamp: int | None = None
) -> None:
    """Buffers one point of the active run (one is started if none is); returns at once."""
    _active().log_metric(key, value, step, timestamp)


def log_metrics(
    metrics: Mapping[str, float], step: int | None = None, timestamp: int | None = None
) -> None:
    """Buffers one point per key in the active run."""
    _active().log_metrics(metrics, step, timestamp)


def log_param(key: str, value: object) -> object:
    """Logs a param of the active run; returns the value."""
    return _active().log_param(key, value)


def log_params(params: Mapping[str, object]) -> None:
    """Logs params of the active run in one batch."""
    _active().log_params(params)


def set_tag(key: str, value: object) -> None:
    """Sets a tag of the active run."""
    _active().set_tag(key, value)


def set_tags(tags: Mapping[str, object]) -> None:
    """Sets tags of the active run in one batch."""
    _active().set_tags(tags)


def delete_tag(key: str) -> None:
    """Deletes a tag of the active run."""
    _active().delete_tag(key)


def log_input(
    dataset: Dataset | dataset_pb2.Dataset,
    context: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Records a dataset the active run consumed."""
    _active().log_input(dataset, context, tags)


def log_artifact(local_path: str | os.PathLike[str], artifact_path: str | None = None) -> FileInfo:
    """Uploads a local file into the active run's artifact directory `artifact_path`."""
    return _active().log_artifact(local_path, artifact_path)


def log_artifacts(
    local_dir: str | os.PathLike[str], artifact_path: str | None = None
) -> list[FileInfo]:
    """Uploads every file under a local directory into the active run's artifacts."""
    return _active().log_artifacts(local_dir, artifact_path)


def log_text(text: str, artifact_file: str) -> FileInfo:
    """Stores `text` as the active run's artifact `artifact_file`."""
    return _active().log_text(text, artifact_file)


def log_dict(dictionary: Mapping[str, Any] | list[Any], artifact_file: str) -> FileInfo:
    """Stores `dictionary` as JSON (YAML for .yaml/.yml) as the active run's artifact."""
    return _active().log_dict(dictionary, artifact_file)


def log_figure(
    figure: Any, artifact_file: str, *, save_kwargs: Mapping[str, Any] | None = None
) -> FileInfo:
    """Stores a matplotlib or plotly figure as the active run's artifact."""
    return _active().log_figure(figure, artifact_file, save_kwargs=save_kwargs)


def get_artifact_uri(artifact_path: str | None = None) -> str:
    """The active run's artifact root URI (one is started if none is), or the URI of
    `artifact_path` under it."""
    uri = _active().info.artifact_uri.rstrip("/")
    return f"{uri}/{artifact_path.lstrip('/')}" if artifact_path else uri


def flush(timeout: float | None = None) -> None:
    """Waits until the server has acknowledged every metric of the active run."""
    run = active_run()
    if run is not None:
        run.flush(timeout)


def get_run(run_id: str) -> Run:
    """A run, as Client.get_run()."""
    return client().get_run(run_id)


def _at_exit(*_: Any) -> None:
    """Ends the runs still active (innermost first), then closes the client."""
    global _client
    while True:
        run = active_run()
        if run is None:
            break
        try:
            run.end(RunStatus.FINISHED)
        except Exception:  # noqa: BLE001 - the interpreter is exiting; end the others
            _forget(run)
    with _lock:
        c, _client = _client, None
    if c is not None:
        c.close()


atexit.register(_at_exit)


__all__ = [
    "active_run",
    "client",
    "delete_tag",
    "end_run",
    "flush",
    "get_artifact_uri",
    "get_run",
    "get_tracking_uri",
    "last_active_run",
    "log_artifact",
    "log_artifacts",
    "log_dict",
    "log_figure",
    "log_input",
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "log_text",
    "set_experiment",
    "set_tag",
    "set_tags",
    "set_tracking_uri",
    "start_run",
]
