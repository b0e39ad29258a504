"""trackd's Python client: `Client` (blocking) and `AsyncClient` (asyncio) with
MlflowClient's method names and plain Python results, a run context manager, and a
module-level API in MLflow's manner (`trackd.client.start_run`, `log_metric`, ...).

    from trackd.client import Client

    with Client("127.0.0.1:50051") as client:
        with client.start_run(experiment_id="0", run_name="baseline") as run:
            run.log_param("lr", "0.001")
            for step in range(1000):
                run.log_metric("loss", 1 / (step + 1), step=step)  # buffered, streamed

`run.log_metric` does not wait for the server: points go to a bounded buffer and stream
over StreamMetrics in the background, exactly once across reconnects; the `with` exit (or
`run.flush()`) waits until the server has acknowledged them. See trackd.client.logger.
"""

from trackd.client import fluent
from trackd.client._version import __version__
from trackd.client.active_run import ActiveRun, AsyncActiveRun
from trackd.client.aio import AsyncClient
from trackd.client.entities import (
    Dataset,
    DatasetInput,
    DatasetSummary,
    Experiment,
    ExperimentTag,
    FileInfo,
    LifecycleStage,
    LoggedModel,
    LoggedModelInput,
    LoggedModelOutput,
    LoggedModelStatus,
    Metric,
    MetricSummary,
    PagedList,
    Param,
    Run,
    RunData,
    RunInfo,
    RunInputs,
    RunOutputs,
    RunStatus,
    RunTag,
    ViewType,
)
from trackd.client.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    TrackdError,
    UnauthenticatedError,
)
from trackd.client.fluent import (
    active_run,
    delete_tag,
    disable_system_metrics_logging,
    enable_system_metrics_logging,
    end_run,
    flush,
    get_artifact_uri,
    get_run,
    get_tracking_uri,
    last_active_run,
    log_artifact,
    log_artifacts,
    log_dict,
    log_figure,
    log_input,
    log_metric,
    log_metrics,
    log_param,
    log_params,
    log_text,
    set_experiment,
    set_system_metrics_sampling_interval,
    set_tag,
    set_tags,
    set_tracking_uri,
    start_run,
)
from trackd.client.live_entities import MetricAxis, MetricEnvelope, RunUpdate, UpdateKind
from trackd.client.logger import (
    AsyncMetricLogger,
    BufferFullError,
    LoggerClosedError,
    MetricLogger,
    RejectedPointsError,
    Rejection,
)
from trackd.client.sync import Client

__all__ = [
    "ActiveRun",
    "AlreadyExistsError",
    "AsyncActiveRun",
    "AsyncClient",
    "AsyncMetricLogger",
    "BufferFullError",
    "Client",
    "Dataset",
    "DatasetInput",
    "DatasetSummary",
    "Experiment",
    "ExperimentTag",
    "FailedPreconditionError",
    "FileInfo",
    "InvalidArgumentError",
    "LifecycleStage",
    "LoggedModel",
    "LoggedModelInput",
    "LoggedModelOutput",
    "LoggedModelStatus",
    "LoggerClosedError",
    "Metric",
    "MetricAxis",
    "MetricEnvelope",
    "MetricLogger",
    "MetricSummary",
    "NotFoundError",
    "PagedList",
    "Param",
    "PermissionDeniedError",
    "RejectedPointsError",
    "Rejection",
    "ResourceExhaustedError",
    "Run",
    "RunData",
    "RunInfo",
    "RunInputs",
    "RunOutputs",
    "RunStatus",
    "RunTag",
    "RunUpdate",
    "TrackdError",
    "UnauthenticatedError",
    "UpdateKind",
    "ViewType",
    "__version__",
    "active_run",
    "delete_tag",
    "disable_system_metrics_logging",
    "enable_system_metrics_logging",
    "end_run",
    "fluent",
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
    "set_system_metrics_sampling_interval",
    "set_tag",
    "set_tags",
    "set_tracking_uri",
    "start_run",
]
