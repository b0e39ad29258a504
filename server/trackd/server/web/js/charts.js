// Metric charts drawn by uPlot from envelopes (POST /api/view/envelopes): per bucket a
// min/max band and a line through the bucket's last value, about one bucket per pixel of
// width, never the raw points. Drag-select zooms: the visible range is requested again at
// full resolution. Live points (from the watch stream) extend the last bucket or add
// buckets. Each chart publishes its plotted point count (`data-points` on its element and
// window.trackdCharts[id].points) for the browser tests.

import { post, num, nums } from './api.js';
import { h, fmtNum, fmtTime } from './dom.js';

export const PALETTE = [
  '#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e',
  '#17becf', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22',
];

// id -> {id, key, runs, axis, log, points, buckets: {run_id: n}, zoomed, el}
const registry = (window.trackdCharts = window.trackdCharts || {});

export const AXES = {
  step: { label: 'Step', api: 'METRIC_AXIS_STEP' },
  wall: { label: 'Wall time', api: 'METRIC_AXIS_WALL_TIME' },
  relative: { label: 'Relative time (s)', api: 'METRIC_AXIS_WALL_TIME' },
};

const finite = (v) => (Number.isFinite(v) ? v : null);

/** The envelope of one series as arrays of numbers (NaN where the API said "NaN"). */
function fromResponse(env) {
  const count = nums(env.count);
  return {
    x_first: nums(env.x_first),
    x_last: nums(env.x_last),
    first: nums(env.first),
    last: nums(env.last),
    min: nums(env.min),
    max: nums(env.max),
    count,
    exact: !!env.points,
  };
}

function emptyEnvelope() {
  return { x_first: [], x_last: [], first: [], last: [], min: [], max: [], count: [], exact: true };
}

function mergeInto(e, i, x, v) {
  if (x < e.x_first[i]) {
    e.x_first[i] = x;
    e.first[i] = v;
  }
  if (x >= e.x_last[i]) {
    e.x_last[i] = x;
    e.last[i] = v;
  }
  if (Number.isFinite(v)) {
    e.min[i] = Number.isFinite(e.min[i]) ? Math.min(e.min[i], v) : v;
    e.max[i] = Number.isFinite(e.max[i]) ? Math.max(e.max[i], v) : v;
  }
  e.count[i] += 1;
}

/** Halves the buckets of `e` by merging neighbours (live series that outgrew the width). */
function halve(e) {
  const out = emptyEnvelope();
  out.exact = false;
  for (let i = 0; i < e.x_last.length; i += 2) {
    const j = Math.min(i + 1, e.x_last.length - 1);
    out.x_first.push(e.x_first[i]);
    out.first.push(e.first[i]);
    out.x_last.push(e.x_last[j]);
    out.last.push(e.last[j]);
    const mins = [e.min[i], e.min[j]].filter(Number.isFinite);
    const maxs = [e.max[i], e.max[j]].filter(Number.isFinite);
    out.min.push(mins.length ? Math.min(...mins) : NaN);
    out.max.push(maxs.length ? Math.max(...maxs) : NaN);
    out.count.push(e.count[i] + (j !== i ? e.count[j] : 0));
  }
  return out;
}

/** Adds one live point to an envelope of at most `cap` buckets. */
export function appendPoint(e, x, v, cap) {
  const n = e.x_last.length;
  if (n === 0 || x > e.x_last[n - 1]) {
    if (n >= cap) {
      const halved = halve(e);
      Object.assign(e, halved);
    }
    // A new bucket, unless the last one already merges several points: then the point
    // joins it while the series is denser than the chart (keeps ~cap buckets).
    const m = e.x_last.length;
    if (m === 0 || e.exact || m < cap) {
      e.x_first.push(x);
      e.x_last.push(x);
      e.first.push(v);
      e.last.push(v);
      e.min.push(Number.isFinite(v) ? v : NaN);
      e.max.push(Number.isFinite(v) ? v : NaN);
      e.count.push(1);
      return;
    }
    mergeInto(e, m - 1, x, v);
    return;
  }
  // An earlier x: into the bucket whose range holds it (or the one after the gap).
  let lo = 0;
  let hi = n - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (e.x_last[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  mergeInto(e, lo, x, v);
  e.exact = false;
}

let seq = 0;

export class MetricChart {
  /**
   * runs: [{run_id, name, start_time, color}]; key: the metric key; axis: step|wall|relative.
   */
  constructor(container, { key, runs, axis = 'step', log = false, height = 220, scope = 'c' }) {
    this.key = key;
    this.runs = runs;
    this.axis = axis;
    this.log = log;
    this.height = height;
    this.id = `${scope}:${key}:${++seq}`;
    this.env = new Map(); // run_id -> envelope arrays
    this.range = null; // [x_min, x_max] in the API's unit per run, when zoomed
    this.plotEl = h('div.plot');
    this.status = h('span.chart-status.muted');
    this.resetBtn = h(
      'button.link.reset-zoom',
      { type: 'button', hidden: true, onclick: () => this.resetZoom() },
      'Reset zoom',
    );
    this.el = h(
      'figure.chart',
      { 'data-key': key, 'data-chart-id': this.id, 'data-points': '0' },
      h('figcaption', h('span.chart-title', key), this.status, this.resetBtn),
      this.plotEl,
    );
    this.el.addEventListener('dblclick', () => this.range && this.resetZoom());
    container.append(this.el);
    this.info = { id: this.id, key, runs: runs.map((r) => r.run_id), axis, log, points: 0, buckets: {}, zoomed: false, el: this.el, loads: 0 };
    registry[this.id] = this.info;
    this.u = null;
  }

  width() {
    return Math.max(200, Math.floor(this.el.clientWidth || this.el.parentElement?.clientWidth || 600) - 16);
  }

  /** Fetches envelopes (the whole series, or `range` when zoomed) and draws them. */
  async load() {
    const buckets = Math.min(2000, this.width());
    this.status.textContent = 'loading…';
    const byRun = new Map();
    try {
      if (this.axis === 'relative' && this.range) {
        // Each run's own start time turns the relative range into wall times.
        for (const r of this.runs) {
          const start = num(r.start_time);
          const res = await post('/api/view/envelopes', {
            run_ids: [r.run_id], metric_keys: [this.key], axis: AXES.wall.api,
            x_min: Math.floor(start + this.range[0] * 1000), x_max: Math.ceil(start + this.range[1] * 1000), buckets,
          });
          for (const e of res.envelopes || []) byRun.set(e.run_id, fromResponse(e));
        }
      } else {
        const body = { run_ids: this.runs.map((r) => r.run_id), metric_keys: [this.key], axis: AXES[this.axis].api, buckets };
        if (this.range) {
          body.x_min = Math.floor(this.range[0]);
          body.x_max = Math.ceil(this.range[1]);
        }
        const res = await post('/api/view/envelopes', body);
        for (const e of res.envelopes || []) byRun.set(e.run_id, fromResponse(e));
      }
    } catch (err) {
      this.status.textContent = `error: ${err.message}`;
      this.el.classList.add('chart-error');
      throw err;
    }
    this.env = byRun;
    this.cap = buckets;
    this.info.requested = buckets;
    this.status.textContent = '';
    this.info.loads += 1;
    this.draw();
  }

  /** The x of an API x (step or ms) on this chart's axis. */
  xOf(run, x) {
    if (this.axis === 'relative') return (x - num(run.start_time)) / 1000;
    return x;
  }

  tables() {
    return this.runs.map((r) => {
      const e = this.env.get(r.run_id) || emptyEnvelope();
      const xs = e.x_last.map((x) => this.xOf(r, x));
      const pos = (v) => (this.log && !(v > 0) ? null : finite(v));
      // A bucket without a finite value has no band and no line point.
      return { r, e, cols: [xs, e.last.map(pos), e.min.map(pos), e.max.map(pos)] };
    });
  }

  draw() {
    const tables = this.tables();
    let data;
    if (tables.length === 1) {
      data = tables[0].cols;
    } else {
      const nonEmpty = tables.map((t) => (t.cols[0].length ? t.cols : [[0], [null], [null], [null]]));
      data = window.uPlot.join(nonEmpty);
    }
    this.info.buckets = {};
    let points = 0;
    for (const t of tables) {
      this.info.buckets[t.r.run_id] = t.cols[0].length;
      points += t.cols[0].length;
    }
    this.info.points = points;
    const lasts = tables.map((t) => t.e.x_last[t.e.x_last.length - 1]).filter((x) => x !== undefined);
    this.info.lastX = lasts.length ? Math.max(...lasts) : null;
    this.info.zoomed = !!this.range;
    this.info.range = this.range ? [...this.range] : null;
    this.el.dataset.points = String(points);
    this.el.dataset.loads = String(this.info.loads);
    this.resetBtn.hidden = !this.range;
    if (this.u) {
      this.u.setData(data);
      return;
    }
    this.u = new window.uPlot(this.options(), data, this.plotEl);
    // The legend names each run's line; its min and max series only draw the band.
    this.u.root.querySelectorAll('.u-legend .u-series').forEach((tr, i) => {
      if (i > 0 && (i - 1) % 3 !== 0) tr.classList.add('band-edge');
    });
  }

  options() {
    const series = [{ label: AXES[this.axis].label, value: (u, v) => this.fmtX(v) }];
    const bands = [];
    this.runs.forEach((r, i) => {
      const color = r.color || PALETTE[i % PALETTE.length];
      const base = series.length;
      const name = this.runs.length > 1 ? r.name || r.run_id.slice(0, 8) : this.key;
      series.push({ label: name, stroke: color, width: 1.5, spanGaps: true, value: (u, v) => fmtNum(v) });
      series.push({ label: `${name} min`, stroke: 'transparent', show: true, value: (u, v) => fmtNum(v), points: { show: false } });
      series.push({ label: `${name} max`, stroke: 'transparent', show: true, value: (u, v) => fmtNum(v), points: { show: false } });
      bands.push({ series: [base + 2, base + 1], fill: `${color}33` });
    });
    return {
      width: this.width(),
      height: this.height,
      ms: this.axis === 'wall' ? 1 : 1e-3,
      scales: { x: { time: this.axis === 'wall' }, y: { distr: this.log ? 3 : 1 } },
      axes: [{}, { size: 60, values: (u, vals) => vals.map(fmtNum) }],
      series,
      bands,
      legend: { show: this.runs.length <= 10 },
      cursor: { drag: { x: true, y: false, setScale: false } },
      hooks: {
        setSelect: [
          (u) => {
            if (u.select.width < 3) return;
            const lo = u.posToVal(u.select.left, 'x');
            const hi = u.posToVal(u.select.left + u.select.width, 'x');
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            this.zoom(lo, hi);
          },
        ],
      },
    };
  }

  fmtX(v) {
    if (v === null || v === undefined) return '';
    if (this.axis === 'wall') return fmtTime(v);
    if (this.axis === 'relative') return `${fmtNum(v)} s`;
    return fmtNum(v);
  }

  /** Shows [lo, hi] (chart x) at full resolution: requests that range again. */
  zoom(lo, hi) {
    if (!(hi > lo)) return Promise.resolve();
    this.range = [lo, hi];
    return this.load().catch(() => {});
  }

  resetZoom() {
    this.range = null;
    return this.load().catch(() => {});
  }

  /** Rebuilds the plot (axis or scale changed). */
  async setMode({ axis, log }) {
    if (axis !== undefined) this.axis = axis;
    if (log !== undefined) this.log = log;
    this.info.axis = this.axis;
    this.info.log = this.log;
    this.range = null;
    if (this.u) {
      this.u.destroy();
      this.u = null;
    }
    await this.load();
  }

  /** Adds live points of one run (MetricColumns of the watch stream). */
  addPoints(runId, cols) {
    const run = this.runs.find((r) => r.run_id === runId);
    if (!run) return;
    let e = this.env.get(runId);
    if (!e) {
      e = emptyEnvelope();
      this.env.set(runId, e);
    }
    const steps = nums(cols.steps);
    const ts = nums(cols.timestamps);
    const vals = nums(cols.values);
    const now = Date.now();
    for (let i = 0; i < vals.length; i++) {
      const x = this.axis === 'step' ? steps[i] : ts[i] || now;
      if (this.range) {
        // Zoomed: only points inside the visible range are drawn.
        const cx = this.xOf(run, x);
        if (cx < this.range[0] || cx > this.range[1]) continue;
      }
      appendPoint(e, x, vals[i], this.cap || this.width());
    }
    this.draw();
  }

  destroy() {
    if (this.u) this.u.destroy();
    this.u = null;
    delete registry[this.id];
  }
}

/** A scatter of points [{x, y, label}] (x numbers or category strings). */
export function scatter(container, points, { xLabel, yLabel, log = false }) {
  const categorical = points.some((p) => typeof p.x === 'string' && !Number.isFinite(Number(p.x)));
  let cats = [];
  if (categorical) cats = [...new Set(points.map((p) => String(p.x)))].sort();
  const rows = points
    .map((p) => ({ x: categorical ? cats.indexOf(String(p.x)) : Number(p.x), y: Number(p.y), label: p.label }))
    .filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y))
    .sort((a, b) => a.x - b.x);
  const el = h('figure.chart.scatter', { 'data-points': String(rows.length) }, h('figcaption', `${yLabel} against ${xLabel}`));
  const plot = h('div.plot');
  el.append(plot);
  container.append(el);
  const width = Math.max(240, Math.floor(container.clientWidth || 600) - 16);
  const opts = {
    width,
    height: 260,
    scales: { x: { time: false, range: (u, mn, mx) => (mn === mx ? [mn - 1, mx + 1] : [mn - (mx - mn) * 0.05, mx + (mx - mn) * 0.05]) }, y: { distr: log ? 3 : 1 } },
    axes: [
      { label: xLabel, values: (u, vals) => vals.map((v) => (categorical ? (Number.isInteger(v) ? cats[v] ?? '' : '') : fmtNum(v))) },
      { label: yLabel, size: 60, values: (u, vals) => vals.map(fmtNum) },
    ],
    series: [
      { label: xLabel, value: (u, v) => (categorical ? cats[v] ?? '' : fmtNum(v)) },
      { label: yLabel, stroke: PALETTE[0], fill: `${PALETTE[0]}aa`, paths: () => null, points: { show: true, size: 10, fill: PALETTE[0], stroke: PALETTE[0] }, value: (u, v) => fmtNum(v) },
    ],
    legend: { show: true },
  };
  const u = new window.uPlot(opts, [rows.map((p) => p.x), rows.map((p) => p.y)], plot);
  return { el, destroy: () => u.destroy() };
}
