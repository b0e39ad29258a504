"""trackd's Python client: `Client` (blocking) and `AsyncClient` (asyncio) over the
generated trackd.v1 stubs, with a run context manager.

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

from trackd.client.aio import AsyncActiveRun, AsyncClient
from trackd.client.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    TrackdError,
)
from trackd.client.logger import (
    AsyncMetricLogger,
    BufferFullError,
    LoggerClosedError,
    MetricLogger,
    RejectedPointsError,
    Rejection,
)
from trackd.client.sync import ActiveRun, Client
from trackd.v1.common_pb2 import ViewType
from trackd.v1.dataset_pb2 import Dataset
from trackd.v1.logged_model_pb2 import LoggedModelStatus
from trackd.v1.run_pb2 import RunStatus

__all__ = [
    "ActiveRun",
    "AlreadyExistsError",
    "AsyncActiveRun",
    "AsyncClient",
    "AsyncMetricLogger",
    "BufferFullError",
    "Client",
    "Dataset",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "LoggedModelStatus",
    "LoggerClosedError",
    "MetricLogger",
    "NotFoundError",
    "RejectedPointsError",
    "Rejection",
    "RunStatus",
    "TrackdError",
    "ViewType",
]
