// Runs side by side: one chart per metric with a series per run, the params that differ,
// and a scatter of a chosen param against a chosen metric.

import { get, enc, num, experimentName } from './api.js';
import { h, put, clear, fmtNum, statusBadge } from './dom.js';
import { MetricChart, PALETTE, scatter } from './charts.js';
import { chartControls } from './run.js';

export async function comparePage(ctx, runIds) {
  const { main } = ctx;
  ctx.setCrumbs(h('a', { href: '#/' }, 'Experiments'), h('span', 'Compare'));
  if (runIds.length < 1) {
    put(main, h('h1', 'Compare'), h('p.muted', 'Select runs in an experiment, then Compare.'));
    return;
  }
  const runs = (await Promise.all(runIds.map((id) => get(`/api/view/runs/${enc(id)}`)))).map((r) => r.run);
  if (!ctx.current()) return;
  const expId = runs[0].info.experiment_id;
  // The experiment's name only completes the breadcrumbs: asked for beside the charts.
  const crumbs = experimentName(expId).then((expName) => {
    if (ctx.current()) ctx.setCrumbs(h('a', { href: '#/' }, 'Experiments'), h('a', { href: `#/experiments/${enc(expId)}` }, expName), h('span', `Compare ${runs.length} runs`));
  });
  const refs = runs.map((r, i) => ({ run_id: r.info.run_id, name: r.info.run_name || r.info.run_id.slice(0, 8), start_time: r.info.start_time, color: PALETTE[i % PALETTE.length] }));

  // Params: every key, the rows whose values differ first (and only those by default).
  const paramOf = runs.map((r) => new Map((r.data?.params || []).map((p) => [p.key, p.value])));
  const paramKeys = [...new Set(paramOf.flatMap((m) => [...m.keys()]))].sort();
  const differs = paramKeys.filter((k) => new Set(paramOf.map((m) => m.get(k) ?? '\u0000')).size > 1);
  const head = h('tr', h('th', 'Param'), refs.map((r) => h('th', h('span.swatch', { 'data-color': r.color }), h('a', { href: `#/runs/${enc(r.run_id)}` }, r.name))));
  const paramTable = h(
    'table.list#param-diff',
    h('thead', head),
    h('tbody', differs.map((k) => h('tr', { 'data-param': k }, h('th', { scope: 'row' }, k), paramOf.map((m) => h('td', m.get(k) ?? '—'))))),
  );
  for (const sw of paramTable.querySelectorAll('.swatch')) sw.style.background = sw.dataset.color;

  const statusRow = h('table.list', h('thead', h('tr', h('th', 'Run'), h('th', 'Status'), h('th', 'Run id'))),
    h('tbody', runs.map((r, i) => h('tr', h('td', h('span.swatch', { 'data-color': refs[i].color }), h('a', { href: `#/runs/${enc(r.info.run_id)}` }, refs[i].name)), h('td', statusBadge(r.info.status)), h('td.mono', r.info.run_id)))));
  for (const sw of statusRow.querySelectorAll('.swatch')) sw.style.background = sw.dataset.color;

  // Latest metric values per run.
  const metricOf = runs.map((r) => {
    const m = new Map();
    for (const s of r.data?.metric_summaries || []) m.set(s.key, num(s.latest_value));
    for (const x of r.data?.metrics || []) m.set(x.key, num(x.value));
    return m;
  });
  const metricKeys = [...new Set(metricOf.flatMap((m) => [...m.keys()]))].sort();

  // Scatter.
  const pSel = h('select', { id: 'scatter-param', 'aria-label': 'Param (x)' }, paramKeys.map((k) => h('option', { value: k }, k)));
  const mSel = h('select', { id: 'scatter-metric', 'aria-label': 'Metric (y)' }, metricKeys.map((k) => h('option', { value: k }, k)));
  if (differs.length) pSel.value = differs[0];
  const scatterEl = h('div#scatter');
  let sc = null;
  const drawScatter = () => {
    if (sc) sc.destroy();
    clear(scatterEl);
    sc = null;
    if (!pSel.value || !mSel.value) {
      scatterEl.append(h('p.muted', 'Needs a param and a metric.'));
      return;
    }
    const points = runs.map((r, i) => ({ x: paramOf[i].get(pSel.value), y: metricOf[i].get(mSel.value), label: refs[i].name })).filter((p) => p.x !== undefined && p.y !== undefined);
    sc = scatter(scatterEl, points, { xLabel: pSel.value, yLabel: mSel.value });
  };
  pSel.addEventListener('change', drawScatter);
  mSel.addEventListener('change', drawScatter);
  ctx.onLeave(() => sc && sc.destroy());

  const chartsEl = h('div.charts#charts');
  const charts = [];
  ctx.onLeave(() => charts.forEach((c) => c.destroy()));

  put(main, 
    h('h1', `Compare ${runs.length} runs`),
    statusRow,
    h('section', h('h2', 'Params that differ'), differs.length ? paramTable : h('p.muted', 'The runs have the same params.')),
    h('section', h('h2', 'Param against metric'), h('div.toolbar', h('label', 'Param ', pSel), h('label', 'Metric ', mSel)), scatterEl),
    h('section', h('h2', 'Metrics'), chartControls(async (m) => {
      await Promise.all(charts.map((c) => c.setMode(m).catch(() => {})));
    }), chartsEl),
  );
  drawScatter();
  for (const k of metricKeys) charts.push(new MetricChart(chartsEl, { key: k, runs: refs, scope: 'compare' }));
  await Promise.all([crumbs, ...charts.map((c) => c.load().catch(() => {}))]);
}
