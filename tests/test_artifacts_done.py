"""Issue 12's definition of done, through the Python client on both stores (a local
directory and an S3-compatible server, moto in its own process): a run's model file, plot
and predictions table, and a logged model's weights, are logged, listed with size and
SHA-256, and downloaded byte-identical."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytest_asyncio

from conftest import server_config
from s3server import s3_endpoint, s3_environment
from trackd.client import AsyncClient
from trackd.server import app

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module", params=["local", "s3"])
def artifact_root(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[tuple[str, Path]]:  # type: ignore[no-untyped-def]
    """(--artifact-root, --data-dir) of one store."""
    base = tmp_path_factory.mktemp(f"done-{request.param}")
    if request.param == "local":
        yield str(base / "root"), base / "data"
        return
    with s3_endpoint() as (endpoint, bucket), s3_environment(endpoint):
        yield f"s3://{bucket}/done", base / "data"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(artifact_root: tuple[str, Path], database_url: str) -> AsyncIterator[app.Running]:
    root, data_dir = artifact_root
    config = server_config(artifact_root=root, data_dir=str(data_dir))
    running = await app.start(config, database_url)
    yield running
    await running.stop(1.0)


@pytest_asyncio.fixture(loop_scope="module")
async def client(server: app.Running) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(f"127.0.0.1:{server.port}") as c:
        yield c


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_model_plot_and_predictions_round_trip(client: AsyncClient, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_id = (await client.create_run("0")).info.run_id
    model = tmp_path / "model.pt"
    model.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several 1 MiB chunks
    table = pa.table({"id": list(range(500)), "score": [i / 7 for i in range(500)]})
    parquet = io.BytesIO()
    pq.write_table(table, parquet)
    predictions = tmp_path / "predictions.parquet"
    predictions.write_bytes(parquet.getvalue())
    csv = tmp_path / "predictions.csv"
    csv.write_text("id,score\n" + "".join(f"{i},{i / 7}\n" for i in range(500)))
    figure, axes = plt.subplots()
    axes.plot([0, 1, 2], [3, 1, 2])

    await client.log_artifact(run_id, model, "model")
    await client.log_artifact(run_id, predictions, "predictions")
    await client.log_artifact(run_id, csv, "predictions")
    await client.log_figure(run_id, figure, "plots/loss.png")
    plt.close(figure)

    listed = {f.path: f for f in await client.list_artifacts(run_id, recursive=True)}
    assert set(listed) == {
        "model/model.pt",
        "predictions/predictions.parquet",
        "predictions/predictions.csv",
        "plots/loss.png",
    }
    assert listed["model/model.pt"].file_size == model.stat().st_size
    assert listed["model/model.pt"].sha256 == _sha(model)
    assert listed["predictions/predictions.parquet"].row_count == 500
    assert listed["predictions/predictions.csv"].row_count == 500
    assert listed["plots/loss.png"].content_type == "image/png"
    top = await client.list_artifacts(run_id)
    assert [(f.path, f.is_dir) for f in top] == [
        ("model", True),
        ("plots", True),
        ("predictions", True),
    ]

    out = Path(await client.download_artifacts(run_id, "", str(tmp_path / "out")))
    for path, info in listed.items():
        got = out / path
        assert got.stat().st_size == info.file_size, path
        assert _sha(got) == info.sha256, path
    assert (out / "model/model.pt").read_bytes() == model.read_bytes()
    assert (out / "predictions/predictions.parquet").read_bytes() == predictions.read_bytes()


async def test_logged_model_weights_round_trip(client: AsyncClient, tmp_path: Path) -> None:
    model = await client.create_logged_model("0", name="classifier")
    weights = tmp_path / "weights.bin"
    weights.write_bytes(os.urandom(1024 * 1024 + 1))
    stored = await client.log_model_artifact(model.model_id, weights)
    assert (stored.path, stored.file_size, stored.sha256) == (
        "weights.bin",
        weights.stat().st_size,
        _sha(weights),
    )
    listed = await client.list_logged_model_artifacts(model.model_id)
    assert [(f.path, f.sha256) for f in listed] == [("weights.bin", _sha(weights))]
    out = Path(
        await client.download_model_artifacts(model.model_id, "weights.bin", str(tmp_path / "m"))
    )
    assert _sha(out) == _sha(weights)
