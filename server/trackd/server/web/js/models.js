// An experiment's logged models with their metrics per dataset.

import { post, enc, experimentName } from './api.js';
import { h, put, clear, fmtTime, fmtNum } from './dom.js';
import { artifactBrowser } from './artifacts.js';

export async function modelsPage(ctx, experimentId, query) {
  const { main } = ctx;
  const expName = await experimentName(experimentId);
  if (!ctx.current()) return;
  ctx.setCrumbs(h('a', { href: '#/' }, 'Experiments'), h('a', { href: `#/experiments/${enc(experimentId)}` }, expName), h('span', 'Logged models'));
  const filterInput = h('input', { type: 'text', id: 'model-filter', value: query.get('filter') || '', placeholder: 'metrics.acc > 0.9', 'aria-label': 'Filter logged models' });
  const error = h('p.error', { role: 'alert' });
  const tbody = h('tbody');
  const more = h('button', { type: 'button', hidden: true }, 'More');
  const detail = h('div#model-detail');
  let token = '';

  async function load(reset) {
    if (reset) {
      token = '';
      clear(tbody);
    }
    error.textContent = '';
    let res;
    try {
      res = await post('/api/view/logged-models/search', { experiment_ids: [experimentId], filter: filterInput.value.trim(), order_by: [], max_results: 100, page_token: token });
    } catch (err) {
      error.textContent = err.message;
      return;
    }
    if (!ctx.current()) return;
    for (const m of res.models || []) {
      const info = m.info || {};
      // Metrics per dataset: "key" on its own, or "key (dataset)".
      const metrics = (m.data?.metrics || []).map((x) =>
        h('span.metric-chip', { 'data-key': x.key, 'data-dataset': x.dataset_name || '' }, `${x.key}${x.dataset_name ? ` (${x.dataset_name})` : ''}: ${fmtNum(x.value)}`));
      tbody.append(
        h('tr', { 'data-model-id': info.model_id },
          h('td', h('button.link', { type: 'button', onclick: () => showModel(m) }, info.name || info.model_id)),
          h('td', String(info.status || '').replace(/^LOGGED_MODEL_STATUS_/, '')),
          h('td', info.model_type || ''),
          h('td', info.source_run_id ? h('a', { href: `#/runs/${enc(info.source_run_id)}` }, info.source_run_id.slice(0, 8)) : ''),
          h('td.nowrap', fmtTime(info.creation_timestamp)),
          h('td', metrics)),
      );
    }
    if (!tbody.children.length) tbody.append(h('tr', h('td.muted', { colspan: 6 }, 'No logged models.')));
    token = res.next_page_token || '';
    more.hidden = !token;
    const wanted = query.get('model');
    if (reset && wanted) {
      const m = (res.models || []).find((x) => x.info?.model_id === wanted);
      if (m) showModel(m);
    }
  }

  function showModel(m) {
    const info = m.info || {};
    clear(detail);
    const browser = artifactBrowser('models', info.model_id);
    detail.append(
      h('h2', info.name || info.model_id),
      h('p.mono', info.model_id),
      h('table.list', h('thead', h('tr', h('th', 'Param'), h('th', 'Value'))), h('tbody', (m.data?.params || []).map((p) => h('tr', h('td', p.key), h('td', p.value))))),
      h('table.list', h('thead', h('tr', h('th', 'Metric'), h('th', 'Dataset'), h('th', 'Value'), h('th', 'Step'))),
        h('tbody', (m.data?.metrics || []).map((x) => h('tr', h('td', x.key), h('td', x.dataset_name || ''), h('td.num', fmtNum(x.value)), h('td.num', String(x.step || 0)))))),
      browser.el,
    );
    browser.open('').catch((err) => browser.el.append(h('p.error', err.message)));
  }

  more.addEventListener('click', () => load(false));
  put(main, 
    h('h1', `Logged models of ${expName}`),
    h('form.toolbar', { onsubmit: (ev) => { ev.preventDefault(); load(true); } }, filterInput, h('button', { type: 'submit' }, 'Filter')),
    error,
    h('table.list#models', h('thead', h('tr', ['Name', 'Status', 'Type', 'Source run', 'Created', 'Metrics (per dataset)'].map((t) => h('th', t)))), tbody),
    more,
    detail,
  );
  await load(true);
}
