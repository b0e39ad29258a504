"""MLflow 3's logged-models endpoints (`/api/2.0/mlflow/logged-models...`) over trackd's
logged models domain."""

from __future__ import annotations

from trackd.server.domain.logged_models import LoggedModels
from trackd.server.http.front import HttpFront, Route


class MlflowModelsApi:
    """The handlers of MLflow's logged-model endpoints."""

    def __init__(self, front: HttpFront | None, models: LoggedModels) -> None:
        self.front: HttpFront = front  # type: ignore[assignment]  # set by the front
        self.models = models

    def routes(self) -> list[Route]:
        return []
