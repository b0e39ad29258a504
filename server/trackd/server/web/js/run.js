// One run: what it is (status, times, source, description), params, tags, inputs, outputs,
// its artifacts, and a chart for every metric, extended live while the run is RUNNING.

import { get, enc, num, experimentName } from './api.js';
import { h, put, clear, fmtTime, fmtDuration, fmtNum, statusBadge, runDuration, kvTable, STATUS } from './dom.js';
import { MetricChart, AXES } from './charts.js';
import { artifactBrowser } from './artifacts.js';
import { watchRun, LIVE } from './live.js';

/** The x axis and y scale pickers shared by chart pages; onChange({axis, log}). */
export function chartControls(onChange, { axis = 'step', log = false } = {}) {
  const axisSel = h('select', { id: 'x-axis', 'aria-label': 'X axis' }, Object.entries(AXES).map(([k, v]) => h('option', { value: k }, v.label)));
  axisSel.value = axis;
  const logBox = h('input', { type: 'checkbox', id: 'y-log', checked: log });
  axisSel.addEventListener('change', () => onChange({ axis: axisSel.value, log: logBox.checked }));
  logBox.addEventListener('change', () => onChange({ axis: axisSel.value, log: logBox.checked }));
  return h('div.toolbar.chart-controls', h('label', 'X axis ', axisSel), h('label', logBox, ' Log y'), h('span.muted', 'Drag across a chart to zoom; double-click to reset.'));
}

function sourceText(src) {
  if (!src || (!src.type && !src.id)) return '';
  const type = String(src.type || '').replace(/^RUN_SOURCE_TYPE_/, '').toLowerCase();
  return `${type && type !== 'unspecified' ? `${type}: ` : ''}${src.id || ''}`;
}

export async function runPage(ctx, runId) {
  const { main } = ctx;
  const { run } = await get(`/api/view/runs/${enc(runId)}`);
  if (!ctx.current()) return;
  const info = run.info;
  const data = run.data || {};
  const expName = await experimentName(info.experiment_id);
  if (!ctx.current()) return;
  ctx.setCrumbs(
    h('a', { href: '#/' }, 'Experiments'),
    h('a', { href: `#/experiments/${enc(info.experiment_id)}` }, expName),
    h('span', info.run_name || info.run_id),
  );

  const statusEl = h('span', statusBadge(info.status));
  const headStatus = h('span#run-status', statusBadge(info.status));
  const durationEl = h('span', fmtDuration(runDuration(info)));
  const endEl = h('span', fmtTime(info.end_time));
  const facts = [
    ['Run id', h('span.mono', info.run_id)],
    ['Status', statusEl],
    ['Owner', info.user_id || ''],
    ['Start', fmtTime(info.start_time)],
    ['End', endEl],
    ['Duration', durationEl],
    ['Source', sourceText(info.source)],
  ];
  if (info.parent_run_id) facts.push(['Parent', h('a', { href: `#/runs/${enc(info.parent_run_id)}` }, info.parent_run_id)]);
  if (info.external_url) facts.push(['Link', h('a', { href: info.external_url, rel: 'noopener noreferrer', target: '_blank' }, info.external_url)]);
  facts.push(['Artifact URI', h('span.mono', info.artifact_uri || '')]);

  const paramsRows = (data.params || []).map((p) => [p.key, p.value]);
  const tagsBody = h('div');
  const tags = new Map((data.tags || []).map((t) => [t.key, t.value]));
  const drawTags = () => clear(tagsBody).append(kvTable([...tags].filter(([k]) => !k.startsWith('mlflow.') || k === 'mlflow.note.content').sort()));
  drawTags();

  const inputs = (run.inputs?.dataset_inputs || []).map((di) => {
    const d = di.dataset || {};
    const context = (di.tags || []).find((t) => t.key === 'mlflow.data.context')?.value || '';
    return h('tr', h('td', d.name), h('td.mono', d.digest), h('td', context), h('td', d.source_type), h('td.mono.wrap', d.source));
  });
  const modelIns = (run.inputs?.model_inputs || []).map((m) => h('li.mono', m.model_id));
  const outputs = (run.outputs?.model_outputs || []).map((m) =>
    h('tr', h('td.mono', h('a', { href: `#/experiments/${enc(info.experiment_id)}/models?model=${enc(m.model_id)}` }, m.model_id)), h('td.num', String(num(m.step)))),
  );

  const summaries = new Map((data.metric_summaries || []).map((s) => [s.key, s]));
  const latest = new Map((data.metrics || []).map((m) => [m.key, m]));
  const keys = [...new Set([...summaries.keys(), ...latest.keys()])].sort();

  const chartsEl = h('div.charts#charts');
  const charts = new Map();
  let mode = { axis: 'step', log: false };
  const runRef = { run_id: info.run_id, name: info.run_name, start_time: info.start_time };
  const addChart = (key) => {
    const c = new MetricChart(chartsEl, { key, runs: [runRef], axis: mode.axis, log: mode.log, scope: 'run' });
    charts.set(key, c);
    return c;
  };
  ctx.onLeave(() => charts.forEach((c) => c.destroy()));

  const metricTable = h(
    'table.list.metrics',
    h('thead', h('tr', ['Metric', 'Latest', 'Step', 'Min', 'Max', 'Mean', 'Count'].map((t) => h('th', t)))),
    h('tbody', keys.map((k) => {
      const s = summaries.get(k) || {};
      const m = latest.get(k) || {};
      return h('tr', h('td', k), h('td.num', fmtNum(m.value ?? s.latest_value)), h('td.num', String(num(m.step ?? s.latest_step))), h('td.num', fmtNum(s.min)), h('td.num', fmtNum(s.max)), h('td.num', fmtNum(s.mean)), h('td.num', String(num(s.count))));
    })),
  );

  const artifacts = artifactBrowser('runs', info.run_id);

  put(main, 
    h('div.page-head', h('h1', info.run_name || info.run_id), headStatus),
    info.description ? h('section.description', h('h2', 'Description'), h('p.pre', info.description)) : null,
    h('div.columns',
      h('section', h('h2', 'Run'), kvTable(facts)),
      h('section#params', h('h2', 'Params'), kvTable(paramsRows)),
      h('section#tags', h('h2', 'Tags'), tagsBody),
    ),
    h('div.columns',
      h('section#inputs', h('h2', 'Inputs'), inputs.length
        ? h('table.list', h('thead', h('tr', ['Dataset', 'Digest', 'Context', 'Source type', 'Source'].map((t) => h('th', t)))), h('tbody', inputs))
        : h('p.muted', 'No datasets.'), modelIns.length ? h('div', h('h3', 'Models used'), h('ul', modelIns)) : null),
      h('section#outputs', h('h2', 'Outputs'), outputs.length
        ? h('table.list', h('thead', h('tr', h('th', 'Logged model'), h('th', 'Step'))), h('tbody', outputs))
        : h('p.muted', 'No logged models.')),
    ),
    h('section#metrics', h('h2', 'Metrics'), keys.length ? metricTable : h('p.muted', 'No metrics.'),
      chartControls(async (m) => {
        mode = m;
        await Promise.all([...charts.values()].map((c) => c.setMode(m).catch(() => {})));
      }),
      chartsEl),
    artifacts.el,
  );

  for (const k of keys) addChart(k);
  await Promise.all([...charts.values()].map((c) => c.load().catch(() => {})));
  artifacts.open('').catch((err) => artifacts.el.append(h('p.error', err.message)));

  // Live: a RUNNING run's charts grow from the watch stream (no polling, no reload).
  if (LIVE.has(info.status) && ctx.current()) {
    const stop = watchRun(info.run_id, (msg) => {
      if (msg.points) {
        const cols = msg.points;
        let c = charts.get(cols.key);
        if (!c) {
          c = addChart(cols.key);
          c.cap = c.width();
        }
        c.addPoints(cols.run_id || info.run_id, cols);
      } else if (msg.status) {
        statusEl.replaceChildren(statusBadge(msg.status.status));
        headStatus.replaceChildren(statusBadge(msg.status.status));
        if (num(msg.status.end_time)) {
          endEl.textContent = fmtTime(msg.status.end_time);
          durationEl.textContent = fmtDuration((num(msg.status.end_time) - num(info.start_time)) / 1000);
        }
        if (!LIVE.has(msg.status.status)) document.body.dataset.runEnded = STATUS(msg.status.status);
      } else if (msg.data) {
        for (const t of msg.data.tags || []) tags.set(t.key, t.value);
        drawTags();
      }
    });
    ctx.onLeave(stop);
  }
}
