"""trackd's clients hold to the official MlflowClient (mlflow-skinny, installed for the
tests): every tracking method of MlflowClient that trackd's concepts cover has a method of
the same name in `Client` and `AsyncClient`, whose arguments carry MLflow's names in
MLflow's order, so that moving from MLflow is a change of import. The list of tracking
methods is read from MlflowClient itself (the methods that go to its tracking store)."""

from __future__ import annotations

import inspect
import re

import pytest
from mlflow import MlflowClient

from trackd.client import AsyncClient, Client

# MlflowClient tracking methods of concepts trackd does not have yet, and why.
NOT_YET = {
    r"mcp": "MCP server registry: not an experiment-tracking concept of trackd",
    r"traces?_": "GenAI traces: not in trackd",
    r"^(add|remove)_dataset_(to|from)_experiments$": "GenAI evaluation datasets: not in trackd",
    r"^(create|get|delete)_dataset$|^(set|delete)_dataset_tags?$": "GenAI evaluation datasets",
}
# MlflowClient's artifact methods that write through its artifact repository rather than its
# tracking store, so the derivation below cannot see them; trackd has each of them too.
ARTIFACT_HELPERS = ["log_dict", "log_figure", "log_text"]
# trackd's search_datasets lists the datasets runs used (MLflow's private
# _search_datasets); MlflowClient.search_datasets is about GenAI evaluation datasets.
SAME_NAME_OTHER_MEANING = {"search_datasets"}


def _tracking_methods() -> list[str]:
    names = []
    for name, fn in inspect.getmembers(MlflowClient, inspect.isfunction):
        if name.startswith("_"):
            continue
        if "self._tracking_client" in inspect.getsource(fn):
            names.append(name)
    return sorted(names)


TRACKING = _tracking_methods()
COVERED = [
    n
    for n in TRACKING
    if n not in SAME_NAME_OTHER_MEANING and not any(re.search(p, n) for p in NOT_YET)
] + ARTIFACT_HELPERS


def _params(fn: object) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]  # type: ignore[arg-type]


def test_mlflow_client_has_the_tracking_methods_trackd_covers() -> None:
    # A safeguard for the derivation itself: if MLflow moved its code, the list would be
    # empty and the tests below would prove nothing.
    assert {"create_run", "search_runs", "log_batch", "search_logged_models"} <= set(COVERED)
    assert {"log_artifact", "list_artifacts", "download_artifacts"} <= set(COVERED)
    assert all(hasattr(MlflowClient, n) for n in ARTIFACT_HELPERS)
    assert len(COVERED) >= 30


@pytest.mark.parametrize("name", COVERED)
@pytest.mark.parametrize("cls", [Client, AsyncClient], ids=["Client", "AsyncClient"])
def test_trackd_has_the_method_with_mlflows_arguments_in_order(cls: type, name: str) -> None:
    ours = getattr(cls, name, None)
    assert ours is not None, f"{cls.__name__} lacks MlflowClient.{name}"
    theirs = _params(getattr(MlflowClient, name))
    mine = _params(ours)
    assert mine[: len(theirs)] == theirs, (
        f"{cls.__name__}.{name}{tuple(mine)} does not begin with MlflowClient's {tuple(theirs)}"
    )
