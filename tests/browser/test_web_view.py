"""The web view in a real browser: experiments, the runs grid (filter, sort, errors,
keyboard, paging, tree), a run's charts drawn from envelopes, artifacts, compare, logged
models and a live chart fed by the watch stream."""

from __future__ import annotations

import asyncio
import io
import math
import time
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from browser.conftest import NAMES, TIMEOUT_MS, screenshot, until, until_names
from trackd.client import AsyncClient, Dataset

pytestmark = pytest.mark.asyncio(loop_scope="module")

STEPS = 5000  # more points than a chart has pixels: the envelope has fewer buckets


@dataclass
class Seed:
    vision: str
    nlp: str
    many: str
    runs: dict[str, str]  # run name -> id
    model_id: str
    text: str
    png: bytes


def _png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1, 2], [2, 0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


async def _log_series(c: AsyncClient, run_id: str, key: str, f: Any, n: int, t0: int) -> None:
    points = [(key, f(i), i, t0 + i * 100) for i in range(n)]
    for i in range(0, n, 1000):
        await c.log_batch(run_id, metrics=points[i : i + 1000])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seed(client: AsyncClient, tmp_path_factory: pytest.TempPathFactory) -> Seed:
    c = client
    vision = await c.create_experiment("vision", tags={"team": "vision", "stage": "dev"})
    nlp = await c.create_experiment("nlp-transformers", tags={"team": "nlp"})
    many = await c.create_experiment("many-runs")
    t0 = int(time.time() * 1000) - 3_600_000
    runs: dict[str, str] = {}
    specs = [
        ("baseline", 0.01, 32, 1.0),
        ("wide", 0.001, 64, 0.7),
        ("deep", 0.1, 32, 1.3),
    ]
    for i, (name, lr, bs, scale) in enumerate(specs):
        run = await c.create_run(
            vision,
            start_time=t0 + i * 1000,
            run_name=name,
            user_id="ada",
            description=f"The {name} model.",
            source=("job", f"train-{i}"),
        )
        rid = run.info.run_id
        runs[name] = rid
        await c.log_batch(rid, params={"lr": lr, "batch_size": bs, "optimizer": "adam"})
        await c.set_tag(rid, "model", name)
        await _log_series(
            c, rid, "loss", lambda s, k=scale: k / (1 + s / 50) + 0.01 * math.sin(s), STEPS, t0
        )
        await _log_series(c, rid, "acc", lambda s, k=scale: 1 - 0.5 / (1 + s * k), 100, t0)
        await c.set_terminated(rid, "FINISHED", end_time=t0 + i * 1000 + 600_000)
    # A parent with two children.
    parent = await c.create_run(vision, start_time=t0 - 5000, run_name="sweep", user_id="bob")
    runs["sweep"] = parent.info.run_id
    for j in range(2):
        child = await c.create_run(
            vision, run_name=f"trial-{j}", parent_run_id=parent.info.run_id, user_id="bob"
        )
        runs[f"trial-{j}"] = child.info.run_id
        await c.log_batch(child.info.run_id, metrics=[("loss", 0.5 + j, 0)], params={"lr": j})
        await c.set_terminated(child.info.run_id, "FINISHED")
    await c.set_terminated(parent.info.run_id, "FINISHED")
    # A run left RUNNING and silent: UNRESPONSIVE once the liveness window (5 s) passes.
    silent = await c.create_run(vision, start_time=t0 - 9000, run_name="silent", user_id="eve")
    runs["silent"] = silent.info.run_id

    # Artifacts of the baseline run, and a dataset input and a logged model.
    base = runs["baseline"]
    text = "epoch,loss\n1,0.5\n2,0.25\n"
    png = _png()
    await c.log_text(base, text, "eval/metrics.csv")
    await c.log_text(base, "hello from trackd\n", "notes.txt")
    local = tmp_path_factory.mktemp("art") / "curve.png"
    local.write_bytes(png)
    await c.log_artifact(base, str(local), "plots")
    await c.log_input(
        base, Dataset("mnist", "a1b2c3", source_type="s3", source="s3://d/mnist"), "training"
    )
    model = await c.create_logged_model(vision, "cnn", source_run_id=base, params={"depth": 4})
    await c.log_metric(
        base,
        "acc",
        0.97,
        step=100,
        model_id=model.model_id,
        dataset_name="mnist",
        dataset_digest="a1b2c3",
    )
    await c.log_metric(
        base,
        "acc",
        0.91,
        step=100,
        model_id=model.model_id,
        dataset_name="fashion",
        dataset_digest="f00d",
    )
    await c.log_output(base, model.model_id, step=100)
    await c.finalize_logged_model(model.model_id, "READY")

    # Many runs, for paging by infinite scroll.
    for k in range(450):
        await c.create_run(many, start_time=t0 + k, run_name=f"r{k:04d}")
    return Seed(vision, nlp, many, runs, model.model_id, text, png)


async def goto(page: Any, base_url: str, route: str) -> None:
    await page.goto(f"{base_url}/#{route}")


async def row_names(page: Any) -> list[str]:
    names: list[str] = await page.eval_on_selector_all(
        "#runs tbody tr[data-run-id] td.name a", "els => els.map(e => e.textContent)"
    )
    return names


async def test_experiments_list(page: Any, base_url: str, seed: Seed) -> None:
    await goto(page, base_url, "/")
    await page.wait_for_selector(f"tr[data-experiment-id='{seed.vision}']")
    row = page.locator(f"tr[data-experiment-id='{seed.vision}']")
    assert await row.locator("a").first.inner_text() == "vision"
    tags = await row.locator(".tag").all_inner_texts()
    assert "team: vision" in tags and "stage: dev" in tags
    await screenshot(page, "experiments")
    # The search box: a name fragment, then the filter language.
    await page.fill("#experiment-search", "transf")
    await until(
        page,
        "() => document.querySelectorAll('#experiments tbody tr[data-experiment-id]').length === 1",
    )
    assert await page.locator("#experiments tbody a").first.inner_text() == "nlp-transformers"
    await page.fill("#experiment-search", "tags.team = 'vision'")
    await page.wait_for_selector(f"tr[data-experiment-id='{seed.vision}']")
    assert await page.locator("#experiments tbody tr[data-experiment-id]").count() == 1
    # Into the experiment.
    await page.click(f"tr[data-experiment-id='{seed.vision}'] a")
    await page.wait_for_selector("#runs tbody tr[data-run-id]")
    assert page.url.endswith(f"#/experiments/{seed.vision}")
    assert await page.inner_text("main h1") == "vision"


async def test_runs_filter_sort_and_errors(page: Any, base_url: str, seed: Seed) -> None:
    await goto(page, base_url, f"/experiments/{seed.vision}")
    await page.wait_for_selector("#runs tbody tr[data-run-id]")
    # Root runs only, newest first: the children stay under "sweep".
    names = await row_names(page)
    assert sorted(names) == sorted(["baseline", "wide", "deep", "sweep", "silent"])
    # Silent for longer than the liveness window: UNRESPONSIVE.
    silent = page.locator(f"tr[data-run-id='{seed.runs['silent']}'] .status")
    await page.wait_for_timeout(100)
    assert (await silent.inner_text()) in ("UNRESPONSIVE", "RUNNING")

    # Sort by name, ascending then descending.
    await page.click("#runs thead button[data-order='attributes.run_name']")
    await page.wait_for_selector("#runs thead th[aria-sort=ascending]")
    await until_names(page, ["baseline", "deep", "silent", "sweep", "wide"])
    await page.click("#runs thead button[data-order='attributes.run_name']")
    await until_names(page, ["wide", "sweep", "silent", "deep", "baseline"])
    assert "order=attributes.run_name+DESC" in page.url or "DESC" in page.url

    # A column picked from params, then sorting by it.
    await page.select_option("#add-column", "param:lr")
    await page.wait_for_selector("#runs thead button[data-order='params.lr']")
    await page.select_option("#add-column", "summary:loss:min")
    await page.wait_for_selector("#runs thead button[data-order='metrics.loss.min']")
    await page.click("#runs thead button[data-order='params.lr']")
    await until_names(page, ["wide", "baseline", "deep"], first=3)
    await screenshot(page, "runs")

    # A filter in trackd's language.
    await page.fill("#run-filter", "params.lr >= 0.01 AND metrics.loss.min < 10")
    await page.press("#run-filter", "Enter")
    await until(page, f"() => ({NAMES})().sort().join() === 'baseline,deep,sweep'")
    # The parent is there for its child that matched (root_runs_only).
    sweep = page.locator(f"tr[data-run-id='{seed.runs['sweep']}']")
    assert "descendant-match" in (await sweep.get_attribute("class") or "")

    # A bad filter: the server's message, and the column it names highlighted.
    bad = "metrics.loss < 1 AND params.lr ~ 3"
    await page.fill("#run-filter", bad)
    await page.press("#run-filter", "Enter")
    err = page.locator("#filter-error .error")
    await err.wait_for()
    message = await err.inner_text()
    assert "column" in message
    mark = page.locator("#filter-error mark.error-at")
    col = int(await mark.get_attribute("data-column") or "0")
    assert col > 0 and str(col) in message
    assert (await mark.inner_text()).strip() == bad[col - 1 :].split()[0]
    assert await page.get_attribute("#run-filter", "aria-invalid") == "true"
    await screenshot(page, "runs-filter-error")


async def test_tree_and_keyboard(page: Any, base_url: str, seed: Seed) -> None:
    await goto(page, base_url, f"/experiments/{seed.vision}?order=attributes.run_name+ASC")
    await until_names(page, ["baseline", "deep", "silent", "sweep", "wide"])
    grid = page.locator("#runs")
    assert await grid.get_attribute("role") == "grid"
    assert await page.locator("#runs tbody tr[role=row]").count() == 5

    # Focus the first row, move down with the arrows.
    await page.locator("#runs tbody tr").first.focus()
    active = "document.activeElement.dataset.runId"
    assert await page.evaluate(active) == seed.runs["baseline"]
    await page.keyboard.press("ArrowDown")
    await page.keyboard.press("ArrowDown")
    assert await page.evaluate(active) == seed.runs["silent"]
    await page.keyboard.press("ArrowUp")
    assert await page.evaluate(active) == seed.runs["deep"]
    # Visible focus: an outline on the focused row.
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")

    # Space toggles the selection.
    await page.keyboard.press(" ")
    deep = page.locator(f"tr[data-run-id='{seed.runs['deep']}']")
    assert await deep.get_attribute("aria-selected") == "true"
    assert await deep.locator("input[type=checkbox]").is_checked()
    await page.keyboard.press(" ")
    assert await deep.get_attribute("aria-selected") == "false"

    # ArrowRight on the parent loads its children into the tree.
    await page.keyboard.press("ArrowDown")
    await page.keyboard.press("ArrowDown")
    assert await page.evaluate(active) == seed.runs["sweep"]
    await page.keyboard.press("ArrowRight")
    await page.wait_for_selector(f"tr[data-run-id='{seed.runs['trial-0']}']")
    sweep = page.locator(f"tr[data-run-id='{seed.runs['sweep']}']")
    assert await sweep.get_attribute("aria-expanded") == "true"
    child = page.locator(f"tr[data-run-id='{seed.runs['trial-1']}']")
    assert await child.get_attribute("aria-level") == "2"
    await page.keyboard.press("ArrowDown")
    assert await page.evaluate(active) in (seed.runs["trial-0"], seed.runs["trial-1"])
    await screenshot(page, "runs-tree")
    # ArrowLeft goes back to the parent; again collapses it.
    await page.keyboard.press("ArrowLeft")
    assert await page.evaluate(active) == seed.runs["sweep"]
    await page.keyboard.press("ArrowLeft")
    await page.wait_for_selector(f"tr[data-run-id='{seed.runs['trial-0']}']", state="detached")

    # Enter opens the focused run.
    await page.keyboard.press("ArrowUp")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"**/#/runs/{seed.runs['silent']}")


async def test_infinite_scroll(page: Any, base_url: str, seed: Seed) -> None:
    asked: list[int] = []
    page.on(
        "request",
        lambda r: (
            asked.append(r.post_data_json["max_results"])
            if r.url.endswith("/api/view/runs/search")
            else None
        ),
    )
    await goto(page, base_url, f"/experiments/{seed.many}")
    await page.wait_for_selector("#runs tbody tr[data-run-id]")
    first = await page.locator("#runs tbody tr[data-run-id]").count()
    # The first page only fills the view (50 rows, the grid shows about 25), so that it
    # comes sooner; the next pages are of 200.
    assert first == 50 and asked[0] == 50, (first, asked)
    # Scrolling to the end loads the next pages, appended to the loaded rows.
    for _ in range(20):
        n = await page.locator("#runs tbody tr[data-run-id]").count()
        if n == 450:
            break
        await page.eval_on_selector(".grid-wrap", "el => el.scrollTop = el.scrollHeight")
        await page.wait_for_timeout(150)
    assert await page.locator("#runs tbody tr[data-run-id]").count() == 450
    ids = await page.eval_on_selector_all(
        "#runs tbody tr[data-run-id]", "els => els.map(e => e.dataset.runId)"
    )
    assert len(set(ids)) == 450
    assert await page.inner_text("#run-count") == "450 runs loaded"
    assert len(asked) >= 3 and set(asked[1:]) == {200}, asked


CANVAS_INK = """(fig) => {
  const c = fig.querySelector('canvas');
  const ctx = c.getContext('2d');
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0 && (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200)) ink++;
  }
  return {ink, total: d.length / 4};
}"""

ENVELOPE = """async ([runId, key, buckets, range]) => {
  const body = {run_ids: [runId], metric_keys: [key], axis: 'METRIC_AXIS_STEP', buckets};
  if (range) { body.x_min = range[0]; body.x_max = range[1]; }
  const r = await fetch('/api/view/envelopes', {method: 'POST', headers: {
    'Content-Type': 'application/json', 'X-Trackd-View': '1'}, body: JSON.stringify(body)});
  const j = await r.json();
  return (j.envelopes[0].x_last || []).length;
}"""


async def chart(page: Any, key: str) -> dict[str, Any]:
    info: dict[str, Any] = await page.evaluate(
        """(key) => { const c = Object.values(window.trackdCharts).find(c => c.key === key);
        return c && {points: c.points, buckets: c.buckets, zoomed: c.zoomed, loads: c.loads,
        requested: c.requested, range: c.range}; }""",
        key,
    )
    return info


async def test_run_page_charts(page: Any, base_url: str, seed: Seed) -> None:
    rid = seed.runs["baseline"]
    await goto(page, base_url, f"/runs/{rid}")
    await page.wait_for_selector("#charts figure.chart[data-key='loss'][data-loads='1']")
    await page.wait_for_selector("#charts figure.chart[data-key='acc'][data-loads='1']")
    # The run's facts, params, tags, inputs and outputs.
    assert await page.inner_text("h1") == "baseline"
    assert await page.inner_text("#crumbs") == "Experiments\nvision\nbaseline"
    params = await page.inner_text("#params")
    assert "lr" in params and "0.01" in params and "batch_size" in params
    assert "model" in await page.inner_text("#tags")
    inputs = await page.inner_text("#inputs")
    assert "mnist" in inputs and "a1b2c3" in inputs and "training" in inputs
    assert seed.model_id in await page.inner_text("#outputs")
    assert "job: train-0" in await page.inner_text("main")
    assert "The baseline model." in await page.inner_text(".description")

    for key, n in (("loss", STEPS), ("acc", 102)):  # acc: 100 + 2 of the model
        fig = page.locator(f"#charts figure.chart[data-key='{key}']")
        info = await chart(page, key)
        # As many plotted points as the envelope has buckets, about one per pixel: never
        # the raw points.
        expected = await page.evaluate(ENVELOPE, [rid, key, info["requested"], None])
        assert info["points"] == expected == int(await fig.get_attribute("data-points") or 0)
        # About one bucket per pixel of the plot's width (the server may merge a few).
        if n <= info["requested"]:
            assert info["points"] == n
        else:
            assert info["requested"] // 2 < info["points"] <= info["requested"]
        ink = await fig.evaluate(CANVAS_INK)
        assert ink["ink"] > 200, ink  # drawn: not a blank canvas
    assert (await chart(page, "loss"))["points"] < STEPS
    await screenshot(page, "run")

    # Zoom: a drag across the loss chart asks for the visible range at full resolution.
    over = page.locator("#charts figure.chart[data-key='loss'] .u-over")
    box = await over.bounding_box()
    assert box
    y = box["y"] + box["height"] / 2
    await page.mouse.move(box["x"] + box["width"] * 0.10, y)
    await page.mouse.down()
    await page.mouse.move(box["x"] + box["width"] * 0.12, y, steps=4)
    await page.mouse.up()
    await page.wait_for_selector("#charts figure.chart[data-key='loss'][data-loads='2']")
    info = await chart(page, "loss")
    assert info["zoomed"]
    lo, hi = info["range"]
    assert 0 < lo < hi < STEPS
    expected = await page.evaluate(
        ENVELOPE, [rid, "loss", info["requested"], [math.floor(lo), math.ceil(hi)]]
    )
    assert info["points"] == expected
    # A narrow range holds fewer points than pixels: every point, one per bucket.
    assert expected == math.ceil(hi) - math.floor(lo) + 1
    await page.click("#charts figure.chart[data-key='loss'] .reset-zoom")
    await page.wait_for_selector("#charts figure.chart[data-key='loss'][data-loads='3']")
    assert not (await chart(page, "loss"))["zoomed"]

    # Axis and scale: wall time, relative time, log y.
    await page.select_option("#x-axis", "wall")
    await page.wait_for_selector("#charts figure.chart[data-key='loss'][data-loads='4']")
    await page.select_option("#x-axis", "relative")
    await page.wait_for_selector("#charts figure.chart[data-key='loss'][data-loads='5']")
    await page.check("#y-log")
    await page.wait_for_selector("#charts figure.chart[data-key='loss'][data-loads='6']")
    fig = page.locator("#charts figure.chart[data-key='loss']")
    assert (await fig.evaluate(CANVAS_INK))["ink"] > 200


async def test_artifacts(page: Any, base_url: str, seed: Seed, tmp_path: Any) -> None:
    rid = seed.runs["baseline"]
    await goto(page, base_url, f"/runs/{rid}")
    await page.wait_for_selector("#artifacts tr.dir[data-path='eval']")
    await page.click("#artifacts tr.dir[data-path='eval'] button")
    row = page.locator("#artifacts tr.file[data-path='eval/metrics.csv']")
    await row.wait_for()
    # Preview of a text file.
    await row.locator("button").click()
    await page.wait_for_selector("#artifact-preview pre.text-preview")
    assert await page.inner_text("#artifact-preview pre") == seed.text
    # Download: the bytes stored.
    async with page.expect_download(timeout=TIMEOUT_MS) as dl_info:
        await row.locator("a.download").click()
    dl = await dl_info.value
    assert dl.suggested_filename == "metrics.csv"
    target = tmp_path / "metrics.csv"
    await dl.save_as(str(target))
    assert target.read_bytes() == seed.text.encode()
    # Preview of an image.
    await page.click("#artifacts .artifact-path button:text('root')")
    await page.click("#artifacts tr.dir[data-path='plots'] button")
    await page.click("#artifacts tr.file[data-path='plots/curve.png'] button")
    img = page.locator("#artifact-preview img")
    await img.wait_for()
    await until(page, "() => document.querySelector('#artifact-preview img').naturalWidth > 0")
    await screenshot(page, "run-artifacts")
    async with page.expect_download(timeout=TIMEOUT_MS) as dl_info:
        await page.click("#artifact-preview a.download")
    dl = await dl_info.value
    target = tmp_path / "curve.png"
    await dl.save_as(str(target))
    assert target.read_bytes() == seed.png


async def test_compare_three_runs(page: Any, base_url: str, seed: Seed) -> None:
    await goto(page, base_url, f"/experiments/{seed.vision}?order=attributes.run_name+ASC")
    await page.wait_for_selector("#runs tbody tr[data-run-id]")
    for name in ("baseline", "wide", "deep"):
        await page.check(f"tr[data-run-id='{seed.runs[name]}'] input[type=checkbox]")
    assert await page.inner_text("#compare") == "Compare (3)"
    await page.click("#compare")
    await page.wait_for_url("**/#/compare?runs=*")
    await page.wait_for_selector("#charts figure.chart[data-key='loss'][data-loads='1']")
    await page.wait_for_selector("#charts figure.chart[data-key='acc'][data-loads='1']")
    info = await chart(page, "loss")
    ids = {seed.runs[n] for n in ("baseline", "wide", "deep")}
    assert set(info["buckets"]) == ids
    for rid in ids:
        expected = await page.evaluate(ENVELOPE, [rid, "loss", info["requested"], None])
        assert info["buckets"][rid] == expected
    fig = page.locator("#charts figure.chart[data-key='loss']")
    assert (await fig.evaluate(CANVAS_INK))["ink"] > 300
    # A series per run in the legend.
    legend = await fig.locator(".u-legend").inner_text()
    for name in ("baseline", "wide", "deep"):
        assert name in legend
    # Params that differ: lr and batch_size, not optimizer.
    diff = page.locator("#param-diff")
    assert await diff.locator("tr[data-param='lr']").count() == 1
    assert await diff.locator("tr[data-param='batch_size']").count() == 1
    assert await diff.locator("tr[data-param='optimizer']").count() == 0
    # The scatter: lr against the final loss, one point per run.
    await page.select_option("#scatter-param", "lr")
    await page.select_option("#scatter-metric", "loss")
    sc = page.locator("#scatter figure.chart")
    assert await sc.get_attribute("data-points") == "3"
    assert (await sc.evaluate(CANVAS_INK))["ink"] > 50
    await screenshot(page, "compare")


async def test_logged_models(page: Any, base_url: str, seed: Seed) -> None:
    await goto(page, base_url, f"/experiments/{seed.vision}/models")
    row = page.locator(f"#models tr[data-model-id='{seed.model_id}']")
    await row.wait_for()
    text = await row.inner_text()
    assert "cnn" in text and "READY" in text
    chips = await row.locator(".metric-chip").all_inner_texts()
    assert "acc (mnist): 0.97" in chips and "acc (fashion): 0.91" in chips
    await row.locator("button").first.click()
    await page.wait_for_selector("#model-detail h2")
    assert "depth" in await page.inner_text("#model-detail")
    await screenshot(page, "models")


async def test_live_chart(page: Any, base_url: str, seed: Seed, client: AsyncClient) -> None:
    run = await client.create_run(seed.vision, run_name="live", user_id="ada")
    rid = run.info.run_id
    await client.log_batch(rid, metrics=[("loss", 1.0 / (s + 1), s) for s in range(50)])
    await goto(page, base_url, f"/runs/{rid}")
    await page.wait_for_selector("#charts figure.chart[data-key='loss'][data-loads='1']")
    assert (await chart(page, "loss"))["points"] == 50
    text = await page.inner_text("main")
    assert "null" not in text and "undefined" not in text and "NaN" not in text
    await until(page, "() => window.trackdWatchOpen > 0")
    await asyncio.sleep(0.3)  # the stream's subscription settles
    t = time.monotonic()
    await client.log_metric(rid, "loss", 0.001, step=50)
    # Within 2 s of being logged over gRPC, the point is on the open chart: no reload.
    await page.wait_for_selector(
        "#charts figure.chart[data-key='loss'][data-points='51']", timeout=2000
    )
    assert time.monotonic() - t < 2.0
    info = await chart(page, "loss")
    assert info["loads"] == 1  # appended from the stream, not fetched again
    # A new key gets its own chart.
    await client.log_metric(rid, "lr", 0.1, step=50)
    await page.wait_for_selector(
        "#charts figure.chart[data-key='lr'][data-points='1']", timeout=2000
    )
    # A burst of more points than the chart has pixels: neighbouring buckets merge, the
    # chart keeps at most one bucket per pixel and still ends at the last point.
    burst = [("loss", 0.5 / (s + 1), s) for s in range(51, 2051)]
    await client.log_batch(rid, metrics=burst[:1000])
    await client.log_batch(rid, metrics=burst[1000:])
    last_x = (
        "() => { const c = Object.values(window.trackdCharts).find(c => c.key === 'loss');"
        " return c && c.lastX; }"
    )
    await until(page, f"() => ({last_x})() === 2050", timeout_ms=5000)
    info = await chart(page, "loss")
    assert info["requested"] // 2 <= info["points"] <= info["requested"]
    assert info["loads"] == 1
    await screenshot(page, "run-live")
    # The end of the run reaches the page too.
    await client.set_terminated(rid, "FINISHED")
    await page.wait_for_selector("#run-status .status[data-status='FINISHED']", timeout=3000)
