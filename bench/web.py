"""Web view benchmark (issue 17): the speed of trackd's web view in a real browser.

trackd runs as its own process with its HTTP front; the system's Chromium, driven by
Playwright (never `playwright install`), opens three pages, each in a fresh browser
context (cold: no HTTP cache, no compiled scripts) and then again in a second tab of the
same context (warm):

- `#/experiments/<id>` of an experiment of 100,000 runs (the search benchmark's loader:
  10 params, 10 metrics, 10 tags a run, 10% children, 1% grandchildren): from navigation
  start to the first page of rows in the grid, then to a real ArrowDown moving the focus
  from the first row to the second (target: interactive in <= 1 s);
- `#/runs/<id>` of a run with one 10,000,000-point metric (StreamMetrics, 4 streams):
  to its chart's canvas drawn, checked against the envelope the page received (target:
  first paint <= 1 s);
- `#/compare?runs=...` of 20 runs x 5 metrics of 10,000 points: to the 5 charts drawn
  with 20 series each (target: <= 1 s).

Times are the page's own (performance.now(), whose 0 is the navigation's start), taken by
a probe that the benchmark adds to every page (an init script, which the page's CSP does
not govern) on each animation frame. The view API's calls are read from the page's
Resource Timing entries: the server's time to the first byte, and the download.

Sizes for a quick try: TRACKD_BENCH_WEB_RUNS (100000), TRACKD_BENCH_WEB_POINTS (10000000),
TRACKD_BENCH_WEB_REPS (5). TRACKD_CHROMIUM names the browser (else chromium on PATH).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import shutil
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from bench import search
from bench.common import server_process
from trackd.client import AsyncClient
from trackd.v1 import run_service_pb2 as rpb
from trackd.v1 import run_service_pb2_grpc

TARGET_MS = 1000.0
# The Chromium flags of the browser tests (tests/browser/conftest.py).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
# Every wait is bounded: a page must reach its mark within this.
PAGE_TIMEOUT_S = 60.0
GRID_PAGE = 50  # the grid's first request (FIRST_PAGE in web/js/runs.js)
T0 = 1_700_000_000_000
CHUNK = 10_000
COMPARE_RUNS = 20
COMPARE_KEYS = ["loss", "accuracy", "lr", "grad_norm", "throughput"]
UPLOT_VERSION = Path(__file__).resolve().parents[1] / (
    "server/trackd/server/web/vendor/uplot/VERSION"
)

# The probe, run in every page before its own scripts. On each animation frame it notes
# (once) when the grid shows rows, when every chart of the page (#charts) has drawn what it
# says it plotted, and when focus reaches the grid's second row; a colored pixel is a
# series' line or band (axes, grid and labels are grey).
PROBE = """(() => {
  const b = (window.__bench = { marks: {}, keydown: null, longtasks: [] });
  const mark = (k) => { if (!(k in b.marks)) b.marks[k] = performance.now(); };
  const colored = (canvas) => {
    if (!canvas || !canvas.width || !canvas.height) return 0;
    const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
      const mx = Math.max(d[i], d[i + 1], d[i + 2]);
      const mn = Math.min(d[i], d[i + 1], d[i + 2]);
      if (d[i + 3] > 0 && mx - mn > 40) n++;
    }
    return n;
  };
  b.colored = colored;
  const tick = () => {
    Object.assign(b, window.__benchSetup || {});
    const rows = document.querySelectorAll('#runs tbody tr[data-run-id]');
    if (rows.length) {
      mark('first_row');
      const want = Math.min(b.gridPage || 1, b.gridRuns || 1);
      const r = rows[0].getBoundingClientRect();
      if (rows.length >= want && r.top >= 0 && r.bottom <= innerHeight) mark('rows');
    }
    const charts = Object.values(window.trackdCharts || {});
    if (charts.length && b.chartRuns) {
      const full = charts.filter((c) => c.el.isConnected && c.points > 0
        && Object.values(c.buckets).filter((n) => n > 0).length === b.chartRuns);
      if (full.length === b.charts) {
        const ink = full.map((c) => colored(c.el.querySelector('canvas')));
        if (ink.every((n) => n > 100)) { b.ink = ink; mark('charts'); }
      }
    }
    if (!b.stop) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'ArrowDown' && b.keydown === null) b.keydown = e.timeStamp;
  }, true);
  document.addEventListener('focusin', (e) => {
    const rows = document.querySelectorAll('#runs tbody tr[data-run-id]');
    if (rows.length > 1 && e.target === rows[1]) mark('moved');
  }, true);
  try {
    new PerformanceObserver((l) => {
      for (const e of l.getEntries()) b.longtasks.push([e.startTime, e.duration]);
    }).observe({ type: 'longtask', buffered: true });
  } catch (e) {}
})();"""

# What the page tells about itself once its mark is reached.
REPORT = """() => {
  const b = window.__bench;
  b.stop = true;
  const nav = performance.getEntriesByType('navigation')[0] || {};
  const api = performance.getEntriesByType('resource')
    .filter((e) => e.name.includes('/api/view/'))
    .map((e) => ({ path: new URL(e.name).pathname, start: e.startTime,
      ttfb: e.responseStart - e.requestStart, download: e.responseEnd - e.responseStart,
      end: e.responseEnd, bytes: e.encodedBodySize }));
  const statics = performance.getEntriesByType('resource')
    .filter((e) => e.name.includes('/static/'));
  const charts = Object.values(window.trackdCharts || {}).map((c) => ({
    key: c.key, points: c.points, requested: c.requested, buckets: c.buckets,
    runs: c.runs.length, dataPoints: Number(c.el.dataset.points) }));
  return { marks: b.marks, keydown: b.keydown, ink: b.ink || null, api, charts,
    longtasks: b.longtasks,
    statics: { n: statics.length,
      end: statics.reduce((m, e) => Math.max(m, e.responseEnd), 0) },
    dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd };
}"""


def chromium_path() -> str:
    exe = os.environ.get("TRACKD_CHROMIUM") or shutil.which("chromium")
    exe = exe or shutil.which("chromium-browser")
    if not exe or not Path(exe).exists():
        raise SystemExit("web: no Chromium (apt-get install chromium, or set TRACKD_CHROMIUM)")
    return exe


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


# -- loading -----------------------------------------------------------------------------


def _stream(
    stream_id: str, run_id: str, keys: list[str], points: int, start: int = 0
) -> Iterator[rpb.StreamMetricsRequest]:
    """StreamMetrics requests: `points` steps from `start` of each key, CHUNK a message."""
    yield rpb.StreamMetricsRequest(stream_id=stream_id, sequence=0)
    for seq, first in enumerate(range(start, start + points, CHUNK), start=1):
        steps = list(range(first, min(start + points, first + CHUNK)))
        ts = [T0 + s * 10 for s in steps]
        series = [
            rpb.MetricColumns(
                run_id=run_id,
                key=key,
                steps=steps,
                timestamps=ts,
                values=[(k + 1) / (1 + s / 500) + 0.05 * ((s * 7919 + k) % 97) / 97 for s in steps],
            )
            for k, key in enumerate(keys)
        ]
        yield rpb.StreamMetricsRequest(stream_id=stream_id, sequence=seq, series=series)


async def _log(
    stub: run_service_pb2_grpc.RunServiceStub,
    run_id: str,
    keys: list[str],
    points: int,
    streams: int = 1,
) -> None:
    per = -(-points // streams)

    async def one(p: int) -> None:
        n = max(0, min(per, points - p * per))
        reqs = _stream(uuid.uuid4().hex, run_id, keys, n, p * per)
        async for ack in stub.StreamMetrics(reqs):  # type: ignore[arg-type]
            assert not ack.rejections, ack.rejections

    await asyncio.gather(*(one(p) for p in range(streams)))


async def _load(
    target: str, conn: asyncpg.Connection, n_runs: int, n_points: int, cmp_points: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    [grid_eid] = await search.load(conn, "web", 1, n_runs)
    await conn.execute("VACUUM ANALYZE")
    out["grid"] = str(grid_eid)
    out["roots"] = await conn.fetchval(
        "SELECT count(*) FROM runs WHERE experiment_id = $1 AND parent_run_pk IS NULL", grid_eid
    )
    out["load grid"] = time.perf_counter() - t0
    opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    async with AsyncClient(target) as client, grpc.aio.insecure_channel(target, options=opts) as ch:
        stub = run_service_pb2_grpc.RunServiceStub(ch)
        t0 = time.perf_counter()
        eid = await client.create_experiment("web-chart")
        run = await client.create_run(eid, run_name="ten-million", start_time=T0)
        out["chart"] = run.info.run_id
        await _log(stub, run.info.run_id, ["loss"], n_points, streams=4)
        await client.set_terminated(run.info.run_id, "FINISHED", end_time=T0 + n_points * 10)
        out["load chart"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        eid = await client.create_experiment("web-compare")
        ids = []
        for i in range(COMPARE_RUNS):
            r = await client.create_run(eid, run_name=f"c{i:02d}", start_time=T0 + i)
            await client.log_batch(r.info.run_id, params={"lr": 0.001 * (i + 1), "seed": i % 3})
            ids.append(r.info.run_id)
        for i in range(0, COMPARE_RUNS, 4):
            await asyncio.gather(*(_log(stub, r, COMPARE_KEYS, cmp_points) for r in ids[i : i + 4]))
        for r in ids:
            await client.set_terminated(r, "FINISHED", end_time=T0 + cmp_points * 10)
        out["compare"] = ids
        out["load compare"] = time.perf_counter() - t0
    await conn.execute("ANALYZE")
    return out


# -- measuring -----------------------------------------------------------------------------


async def _until(page: Any, js: str, what: str, timeout_s: float = PAGE_TIMEOUT_S) -> Any:
    """Polls the function `js` in the page until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await page.evaluate(js)
        if got:
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"web: {what} not reached within {timeout_s:.0f} s")
        await asyncio.sleep(0.01)


async def _open(context: Any, url: str, setup: dict[str, Any]) -> tuple[Any, list[str]]:
    """A new tab of `context` at `url`, and the list its script errors go to."""
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Tells the probe what "done" means on this page, before any of the page's scripts.
    await page.add_init_script(f"window.__benchSetup = {json.dumps(setup)};")
    await page.goto(url, wait_until="commit")
    return page, errors


async def _grid_once(context: Any, url: str, setup: dict[str, Any]) -> dict[str, Any]:
    page, errors = await _open(context, url, setup)
    try:
        await _until(page, "() => window.__bench.marks.rows", "the grid's first page")
        # A real key press: focus the first row, then ArrowDown.
        await page.focus("#runs tbody tr[data-run-id]")
        await page.keyboard.press("ArrowDown")
        await _until(page, "() => window.__bench.marks.moved", "ArrowDown moving the focus")
        report: dict[str, Any] = await page.evaluate(REPORT)
        report["rows_loaded"] = await page.evaluate(
            "() => document.querySelectorAll('#runs tbody tr[data-run-id]').length"
        )
        report["errors"] = errors
        return report
    finally:
        await page.close()


async def _charts_once(context: Any, url: str, setup: dict[str, Any]) -> dict[str, Any]:
    page, errors = await _open(context, url, setup)
    envelopes: list[Any] = []

    async def on_response(resp: Any) -> None:
        if resp.url.endswith("/api/view/envelopes"):
            try:
                envelopes.append(await resp.json())
            except Exception as exc:  # noqa: BLE001 - a page closing mid-read
                envelopes.append({"error": str(exc)})

    page.on("response", on_response)
    try:
        await _until(page, "() => window.__bench.marks.charts", "the charts drawn")
        report: dict[str, Any] = await page.evaluate(REPORT)
        report["errors"] = errors
        # The response handler may run just after the page's own use of the answer.
        for _ in range(100):
            if len(envelopes) >= setup["charts"]:
                break
            await asyncio.sleep(0.02)
        report["envelopes"] = [
            {
                "runs": len(e.get("envelopes", [])),
                "buckets": sum(len(x.get("count") or []) for x in e.get("envelopes", [])),
                "points": sum(int(c) for x in e.get("envelopes", []) for c in x.get("count") or []),
            }
            for e in envelopes
        ]
        return report
    finally:
        await page.close()


async def _measure(
    browser: Any, url: str, setup: dict[str, Any], reps: int, once: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`reps` cold loads (each in a new context) and as many warm ones (a second tab of the
    same context)."""
    cold, warm = [], []
    for _ in range(reps):
        context = await browser.new_context(viewport=VIEWPORT)
        try:
            await context.add_init_script(PROBE)
            cold.append(await once(context, url, setup))
            warm.append(await once(context, url, setup))
        finally:
            await context.close()
    return cold, warm


def _ms(samples: list[float]) -> str:
    return (
        f"median {statistics.median(samples):.0f} ms, max {max(samples):.0f} ms (n={len(samples)})"
    )


def _verdict(samples: list[float]) -> str:
    med, top = statistics.median(samples), max(samples)
    if top <= TARGET_MS:
        return "met (every load)"
    if med <= TARGET_MS:
        return f"met at the median, missed by the slowest load ({top:.0f} ms)"
    return f"missed ({med:.0f} ms median)"


def _api(reports: list[dict[str, Any]]) -> dict[str, str]:
    """Per view API path (ids folded), the median server time to first byte and download."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in reports:
        for e in r["api"]:
            path = e["path"]
            parts = path.split("/")
            if path.startswith("/api/view/runs/") and parts[4] != "search":
                path = "/".join(["/api/view/runs/<id>", *parts[5:]])
            by.setdefault(path, []).append(e)
    out = {}
    for path, es in sorted(by.items()):
        n = len(es) / len(reports)
        out[f"API {path}"] = (
            f"{n:g} a load; server (request to first byte) median "
            f"{statistics.median(e['ttfb'] for e in es):.0f} ms, "
            f"max {max(e['ttfb'] for e in es):.0f}; "
            f"download median {statistics.median(e['download'] for e in es):.0f} ms; "
            f"{statistics.median(e['bytes'] for e in es) / 1024:.0f} KiB; "
            f"answered at {statistics.median(e['end'] for e in es):.0f} ms"
        )
    return out


def _common(cold: list[dict[str, Any]]) -> dict[str, str]:
    long = statistics.median(sum(d for s, d in r["longtasks"]) for r in cold)
    statics = statistics.median(r["statics"]["end"] for r in cold)
    return {
        "cold: static files answered (median)": (
            f"{statics:.0f} ms ({cold[0]['statics']['n']} files)"
        ),
        "cold: DOMContentLoaded (median)": f"{statistics.median(r['dcl'] for r in cold):.0f} ms",
        "cold: long tasks (> 50 ms) of the page, total (median)": f"{long:.0f} ms",
    }


async def _grid(
    browser: Any, base: str, loaded: dict[str, Any], n_runs: int, reps: int
) -> dict[str, str]:
    url = f"{base}/#/experiments/{loaded['grid']}"
    setup = {"gridPage": GRID_PAGE, "gridRuns": loaded["roots"]}
    cold, warm = await _measure(browser, url, setup, reps, _grid_once)
    for r in cold + warm:
        assert not r["errors"], r["errors"]
        assert r["rows_loaded"] >= min(GRID_PAGE, loaded["roots"]), r["rows_loaded"]
    inter = [r["marks"]["rows"] + (r["marks"]["moved"] - r["keydown"]) for r in cold]
    inter_w = [r["marks"]["rows"] + (r["marks"]["moved"] - r["keydown"]) for r in warm]
    return {
        "runs": (
            f"{n_runs:,} in the experiment ({loaded['roots']:,} root runs: the tree's top level)"
        ),
        "cold: first row in the grid": _ms([r["marks"]["first_row"] for r in cold]),
        f"cold: first page ({GRID_PAGE} rows or more) shown": _ms(
            [r["marks"]["rows"] for r in cold]
        ),
        "cold: interactive (rows shown + ArrowDown handled)": _ms(inter),
        "cold: ArrowDown, key event to focus moved": _ms(
            [r["marks"]["moved"] - r["keydown"] for r in cold]
        ),
        "cold: ArrowDown as driven (harness poll included)": _ms(
            [r["marks"]["moved"] for r in cold]
        ),
        "warm: first page shown": _ms([r["marks"]["rows"] for r in warm]),
        "warm: interactive": _ms(inter_w),
        **_common(cold),
        **_api(cold),
        "target (interactive <= 1 s), cold": _verdict(inter),
        "target, warm": _verdict(inter_w),
    }


async def _chart(
    browser: Any, base: str, loaded: dict[str, Any], n_points: int, reps: int
) -> dict[str, str]:
    url = f"{base}/#/runs/{loaded['chart']}"
    cold, warm = await _measure(browser, url, {"charts": 1, "chartRuns": 1}, reps, _charts_once)
    for r in cold + warm:
        assert not r["errors"], r["errors"]
        [c] = r["charts"]
        [e] = r["envelopes"]
        # What the chart plots is the envelope the page received: its buckets, about one
        # per pixel of the plot's width, never the raw points.
        assert c["points"] == c["dataPoints"] == e["buckets"] <= c["requested"], (c, e)
        assert e["points"] == n_points, e
    c, ink = cold[0]["charts"][0], cold[0]["ink"]
    paint = [r["marks"]["charts"] for r in cold]
    paint_w = [r["marks"]["charts"] for r in warm]
    return {
        "series": f"{n_points:,} points of one metric",
        "plotted": (
            f"{c['points']} buckets (requested {c['requested']}), = the envelope's, which"
            f" counts every point once; {ink[0]} colored pixels"
        ),
        "cold: chart drawn": _ms(paint),
        "warm: chart drawn": _ms(paint_w),
        **_common(cold),
        **_api(cold),
        "target (first paint <= 1 s), cold": _verdict(paint),
        "target, warm": _verdict(paint_w),
    }


async def _compare(
    browser: Any, base: str, loaded: dict[str, Any], cmp_points: int, reps: int
) -> dict[str, str]:
    url = f"{base}/#/compare?runs={','.join(loaded['compare'])}"
    setup = {"charts": len(COMPARE_KEYS), "chartRuns": COMPARE_RUNS}
    cold, warm = await _measure(browser, url, setup, reps, _charts_once)
    for r in cold + warm:
        assert not r["errors"], r["errors"]
        assert len(r["charts"]) == len(COMPARE_KEYS), r["charts"]
        by_key = {c["key"]: c for c in r["charts"]}
        assert len(r["envelopes"]) == len(COMPARE_KEYS), r["envelopes"]
        for e in r["envelopes"]:
            assert e["runs"] == COMPARE_RUNS and e["points"] == COMPARE_RUNS * cmp_points, e
        assert sorted(c["points"] for c in by_key.values()) == sorted(
            e["buckets"] for e in r["envelopes"]
        )
    c = cold[0]["charts"][0]
    paint = [r["marks"]["charts"] for r in cold]
    paint_w = [r["marks"]["charts"] for r in warm]
    return {
        "runs x metrics": f"{COMPARE_RUNS} x {len(COMPARE_KEYS)} of {cmp_points:,} points",
        "plotted": (
            f"{c['points']} buckets a chart ({c['points'] // COMPARE_RUNS} a series;"
            f" requested {c['requested']})"
        ),
        "cold: 5 charts drawn, 20 series each": _ms(paint),
        "warm: 5 charts drawn": _ms(paint_w),
        **_common(cold),
        **_api(cold),
        "target (<= 1 s), cold": _verdict(paint),
        "target, warm": _verdict(paint_w),
    }


def _load_avg() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


async def run(database_url: str) -> dict[str, dict[str, str]]:
    from playwright.async_api import async_playwright

    n_runs = _env_int("TRACKD_BENCH_WEB_RUNS", 100_000)
    n_points = _env_int("TRACKD_BENCH_WEB_POINTS", 10_000_000)
    cmp_points = _env_int("TRACKD_BENCH_WEB_COMPARE_POINTS", 10_000)
    reps = _env_int("TRACKD_BENCH_WEB_REPS", 5)
    # TRACKD_BENCH_WEB_ONLY=grid,chart,compare (any of them): the others' data kept small.
    only = set((os.environ.get("TRACKD_BENCH_WEB_ONLY") or "grid,chart,compare").split(","))
    if "grid" not in only:
        n_runs = min(n_runs, 1_000)
    if "chart" not in only:
        n_points = min(n_points, 10_000)
    exe = chromium_path()
    out: dict[str, dict[str, str]] = {}
    conn = await asyncpg.connect(database_url)
    try:
        tree = os.environ.get("TRACKD_BENCH_SERVER_TREE") or None
        async with server_process(
            database_url, "--http-listen", "127.0.0.1:0", tree=tree
        ) as server:
            base = f"http://127.0.0.1:{server.http_port}"
            before = _load_avg()
            loaded = await _load(server.target, conn, n_runs, n_points, cmp_points)
            rate = n_points / loaded["load chart"]
            out["web: load"] = {
                f"{n_runs:,} runs (SQL, search's loader)": f"{loaded['load grid']:.1f} s",
                f"{n_points:,} points (StreamMetrics, 4 streams)": (
                    f"{loaded['load chart']:.1f} s ({rate:,.0f} points/s)"
                ),
                f"compare: {COMPARE_RUNS} runs x 5 x {cmp_points:,} points": (
                    f"{loaded['load compare']:.1f} s"
                ),
            }
            print(f"  loaded: {out['web: load']}")
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=exe, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    versions = {
                        "Chromium": browser.version,
                        "Playwright": importlib.metadata.version("playwright"),
                        "uPlot": UPLOT_VERSION.read_text().split()[1],
                        "machine": (
                            f"{os.cpu_count()} cores; before the load: {before};"
                            f" before the pages: {_load_avg()}"
                        ),
                    }
                    out["web: versions"] = versions
                    print(f"  {versions}")
                    pages = (
                        ("grid", f"web: runs grid, {n_runs:,} runs", _grid, n_runs),
                        ("chart", f"web: chart of {n_points:,} points", _chart, n_points),
                        (
                            "compare",
                            f"web: compare {COMPARE_RUNS} runs x 5 metrics",
                            _compare,
                            cmp_points,
                        ),
                    )
                    for page, name, fn, arg in pages:
                        if page not in only:
                            continue
                        out[name] = await fn(browser, base, loaded, arg, reps)
                        out[name]["machine"] = _load_avg()
                        print(f"  {name}: {out[name]}")
                finally:
                    await browser.close()
    finally:
        await conn.close()
    return out
