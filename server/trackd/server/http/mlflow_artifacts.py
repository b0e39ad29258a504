"""MLflow's artifact proxy (`/api/2.0/mlflow-artifacts/...`) and `artifacts/list` over
trackd's artifact store."""

from __future__ import annotations

from trackd.server.domain.artifacts import Artifacts
from trackd.server.http.front import HttpFront, Route


class MlflowArtifactsApi:
    """The handlers of MLflow's artifact endpoints."""

    def __init__(self, front: HttpFront | None, artifacts: Artifacts) -> None:
        self.front: HttpFront = front  # type: ignore[assignment]  # set by the front
        self.artifacts = artifacts

    def routes(self) -> list[Route]:
        return []
