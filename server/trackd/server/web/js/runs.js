// An experiment's runs: a grid with keyset paging (infinite scroll appends pages, only the
// loaded rows are in the page), a filter in trackd's search language with the server's error
// shown at its column, sorting by column (order_by), picked columns of params, metrics and
// metric summaries, parent/child runs as a tree, selection for compare, and the keyboard.

import { get, post, enc, ApiError, experimentName } from './api.js';
import { h, put, clear, fmtTime, fmtDuration, fmtNum, statusBadge, runDuration } from './dom.js';

const PAGE = 200;
// The first page only fills the view (about 25 rows at 900 px): a smaller first answer
// shows the grid sooner; scrolling then loads PAGE rows at a time.
const FIRST_PAGE = 50;
const SUMMARY_STATS = ['min', 'max', 'mean', 'stddev', 'count', 'last_step'];
const SUMMARY_WORDS = new Set(['min', 'max', 'mean', 'avg', 'stddev', 'std', 'count', 'nan_count', 'first_step', 'last_step', 'latest', 'latest_step', 'latest_timestamp']);

/** A key in the search language: bare when it can be, else double-quoted. */
export function quoteKey(key) {
  const parts = key.split('.');
  if (/^[A-Za-z_][A-Za-z0-9_.:/-]*$/.test(key) && !SUMMARY_WORDS.has(parts[parts.length - 1])) return key;
  return `"${key.replace(/"/g, '""')}"`;
}

// Fixed columns: [id, header, order_by key or null, cell].
const BASE = [
  ['name', 'Name', 'attributes.run_name'],
  ['status', 'Status', 'attributes.status'],
  ['start', 'Start', 'attributes.start_time'],
  ['duration', 'Duration', null],
  ['owner', 'Owner', 'attributes.user_id'],
];

/** A picked column from its id: param:k, metric:k, summary:k:stat, tag:k. */
function pickedColumn(id) {
  const [kind, ...rest] = id.split(':');
  if (kind === 'summary') {
    const stat = rest.pop();
    const key = rest.join(':');
    return { id, kind, key, stat, header: `${key} (${stat})`, order: `metrics.${quoteKey(key)}.${stat}` };
  }
  const key = rest.join(':');
  const prefix = { param: 'params', metric: 'metrics', tag: 'tags' }[kind];
  return { id, kind, key, header: kind === 'metric' ? key : `${kind}: ${key}`, order: `${prefix}.${quoteKey(key)}` };
}

function cellValue(run, col) {
  const d = run.data || {};
  if (col.kind === 'param') return (d.params || []).find((p) => p.key === col.key)?.value ?? '';
  if (col.kind === 'tag') return (d.tags || []).find((p) => p.key === col.key)?.value ?? '';
  if (col.kind === 'metric') {
    const m = (d.metrics || []).find((p) => p.key === col.key);
    return m ? fmtNum(m.value) : '';
  }
  const s = (d.metric_summaries || []).find((p) => p.key === col.key);
  return s ? fmtNum(s[col.stat] ?? 0) : '';
}

/** The position a filter error points at ("... at column 13 ..."), 1-based, or 0. */
export function errorColumn(message) {
  const m = /column (\d+)/.exec(message || '');
  return m ? Number(m[1]) : 0;
}

export async function runsPage(ctx, experimentId, query) {
  const { main } = ctx;
  // The experiment's name and the first page of runs are asked for at once.
  const namePromise = experimentName(experimentId);

  const state = {
    filter: query.get('filter') || '',
    order: query.get('order') || 'attributes.start_time DESC',
    cols: (query.get('cols') || '').split(',').filter(Boolean).map(pickedColumn),
    tree: query.get('tree') !== '0',
    token: '',
    done: false,
    loading: null,
    rows: [], // {run, depth, tr, expanded, children: null | [runs]}
    selected: new Set(),
    focus: -1,
    seq: 0,
    known: { param: new Set(), metric: new Set(), tag: new Set() },
  };

  function saveHash() {
    const q = new URLSearchParams();
    if (state.filter) q.set('filter', state.filter);
    if (state.order !== 'attributes.start_time DESC') q.set('order', state.order);
    if (state.cols.length) q.set('cols', state.cols.map((c) => c.id).join(','));
    if (!state.tree) q.set('tree', '0');
    const s = q.toString();
    history.replaceState(null, '', `#/experiments/${enc(experimentId)}${s ? `?${s}` : ''}`);
  }

  // Filter box and its error.
  const filterInput = h('input', {
    type: 'text', id: 'run-filter', value: state.filter, spellcheck: 'false',
    placeholder: "metrics.loss < 0.1 AND params.lr = '0.001'", 'aria-label': 'Filter runs', 'aria-describedby': 'filter-error',
  });
  const filterError = h('div.filter-error', { id: 'filter-error', role: 'alert' });
  const filterForm = h(
    'form.toolbar',
    {
      onsubmit: (ev) => {
        ev.preventDefault();
        state.filter = filterInput.value.trim();
        saveHash();
        reload();
      },
    },
    filterInput,
    h('button', { type: 'submit' }, 'Filter'),
  );

  function showFilterError(message) {
    clear(filterError);
    filterInput.removeAttribute('aria-invalid');
    if (!message) return;
    filterInput.setAttribute('aria-invalid', 'true');
    const col = errorColumn(message);
    filterError.append(h('p.error', message));
    if (col > 0) {
      const text = state.filter;
      const at = Math.min(col - 1, text.length);
      let end = at;
      while (end < text.length && !/\s/.test(text[end])) end++;
      if (end === at) end = Math.min(at + 1, text.length);
      filterError.append(
        h('pre.filter-echo', text.slice(0, at), h('mark.error-at', { 'data-column': String(col) }, text.slice(at, end) || ' '), text.slice(end)),
      );
      filterInput.focus();
      filterInput.setSelectionRange(at, end);
    }
  }

  // Column picker.
  const addCol = h('select', { id: 'add-column', 'aria-label': 'Add a column' });
  addCol.addEventListener('change', () => {
    const id = addCol.value;
    addCol.value = '';
    if (!id || state.cols.some((c) => c.id === id)) return;
    state.cols.push(pickedColumn(id));
    saveHash();
    rebuild();
  });
  function fillPicker() {
    clear(addCol).append(h('option', { value: '' }, 'Add a column…'));
    const group = (label, items) => {
      if (!items.length) return;
      addCol.append(h('optgroup', { label }, items.map(([id, text]) => h('option', { value: id }, text))));
    };
    const sorted = (s) => [...s].sort();
    group('Params', sorted(state.known.param).map((k) => [`param:${k}`, k]));
    group('Metrics (latest)', sorted(state.known.metric).map((k) => [`metric:${k}`, k]));
    group('Metric summaries', sorted(state.known.metric).flatMap((k) => SUMMARY_STATS.map((s) => [`summary:${k}:${s}`, `${k} ${s}`])));
    group('Tags', sorted(state.known.tag).filter((k) => !k.startsWith('mlflow.')).map((k) => [`tag:${k}`, k]));
  }

  const treeBox = h('input', { type: 'checkbox', id: 'tree-toggle', checked: state.tree });
  treeBox.addEventListener('change', () => {
    state.tree = treeBox.checked;
    saveHash();
    reload();
  });
  const compareBtn = h('button', { type: 'button', id: 'compare', disabled: true, onclick: () => {
    location.hash = `#/compare?runs=${[...state.selected].join(',')}`;
  } }, 'Compare');
  const countEl = h('span.muted', { id: 'run-count', 'aria-live': 'polite' });

  // The grid.
  const thead = h('thead');
  const tbody = h('tbody');
  const table = h('table.grid#runs', { role: 'grid', 'aria-label': 'Runs', 'aria-multiselectable': 'true' }, thead, tbody);
  const sentinel = h('div.sentinel', { 'aria-hidden': 'true' });
  const loadingEl = h('p.muted.loading', { hidden: true }, 'Loading more runs…');
  const wrap = h('div.grid-wrap', table, sentinel, loadingEl);

  function header() {
    clear(thead);
    const [orderKey, orderDir = 'ASC'] = state.order.split(/\s+/);
    const th = (label, key, extra) => {
      const sorted = key && key === orderKey;
      const attrs = { role: 'columnheader', scope: 'col', 'aria-sort': sorted ? (orderDir.toUpperCase() === 'DESC' ? 'descending' : 'ascending') : key ? 'none' : undefined };
      if (!key) return h('th', attrs, label, extra);
      return h(
        'th',
        attrs,
        h('button.sort', {
          type: 'button', 'data-order': key,
          onclick: () => {
            state.order = sorted && orderDir.toUpperCase() === 'ASC' ? `${key} DESC` : `${key} ASC`;
            saveHash();
            reload();
          },
        }, label, sorted ? (orderDir.toUpperCase() === 'DESC' ? ' ▼' : ' ▲') : ''),
        extra,
      );
    };
    const allBox = h('input', { type: 'checkbox', 'aria-label': 'Select all loaded runs', id: 'select-all' });
    allBox.addEventListener('change', () => {
      for (const r of state.rows) setSelected(r, allBox.checked);
    });
    thead.append(
      h(
        'tr',
        { role: 'row' },
        h('th.sel', { role: 'columnheader', scope: 'col' }, allBox),
        BASE.map(([, label, key]) => th(label, key)),
        state.cols.map((c) =>
          th(c.header, c.order, h('button.link.remove-col', { type: 'button', title: `Remove ${c.header}`, 'aria-label': `Remove column ${c.header}`, onclick: () => {
            state.cols = state.cols.filter((x) => x.id !== c.id);
            saveHash();
            rebuild();
          } }, '×')),
        ),
      ),
    );
  }

  function learn(run) {
    const d = run.data || {};
    for (const p of d.params || []) state.known.param.add(p.key);
    for (const m of d.metrics || []) state.known.metric.add(m.key);
    for (const m of d.metric_summaries || []) state.known.metric.add(m.key);
    for (const t of d.tags || []) state.known.tag.add(t.key);
  }

  function rowElement(row) {
    const { run, depth } = row;
    const info = run.info;
    const box = h('input', { type: 'checkbox', tabindex: '-1', 'aria-label': `Select ${info.run_name || info.run_id}`, checked: state.selected.has(info.run_id) });
    box.addEventListener('click', (ev) => {
      ev.stopPropagation();
      setSelected(row, box.checked);
    });
    const toggle = info.has_children
      ? h('button.twisty', { type: 'button', tabindex: '-1', 'aria-label': row.expanded ? 'Collapse' : 'Expand', onclick: (ev) => {
        ev.stopPropagation();
        toggleExpand(row);
      } }, row.expanded ? '▾' : '▸')
      : h('span.twisty-space');
    const name = h('a', { href: `#/runs/${enc(info.run_id)}`, tabindex: '-1' }, info.run_name || info.run_id);
    const tr = h(
      'tr',
      {
        role: 'row', tabindex: '-1', 'data-run-id': info.run_id, 'aria-selected': state.selected.has(info.run_id) ? 'true' : 'false',
        'aria-level': String(depth + 1), 'aria-expanded': info.has_children ? String(!!row.expanded) : undefined,
        class: run.descendant_match ? 'descendant-match' : undefined,
      },
      h('td.sel', { role: 'gridcell' }, box),
      h('td.name', { role: 'gridcell' }, h('span.indent', { 'data-depth': String(depth) }), toggle, name),
      h('td', { role: 'gridcell' }, statusBadge(info.status)),
      h('td.nowrap', { role: 'gridcell' }, fmtTime(info.start_time)),
      h('td.nowrap', { role: 'gridcell' }, fmtDuration(runDuration(info))),
      h('td', { role: 'gridcell' }, info.user_id || ''),
      state.cols.map((c) => h('td.num', { role: 'gridcell' }, cellValue(run, c))),
    );
    tr.querySelector('.indent').style.width = `${depth * 1.25}em`;
    tr.addEventListener('click', (ev) => {
      if (ev.target.closest('a, button, input')) return;
      focusRow(state.rows.indexOf(row));
    });
    row.tr = tr;
    row.box = box;
    return tr;
  }

  function setSelected(row, on) {
    const id = row.run.info.run_id;
    if (on) state.selected.add(id);
    else state.selected.delete(id);
    row.box.checked = on;
    row.tr.setAttribute('aria-selected', on ? 'true' : 'false');
    compareBtn.disabled = state.selected.size < 2;
    compareBtn.textContent = `Compare${state.selected.size ? ` (${state.selected.size})` : ''}`;
  }

  function focusRow(i, scroll = true) {
    if (!state.rows.length) return;
    i = Math.max(0, Math.min(i, state.rows.length - 1));
    const prev = state.rows[state.focus];
    if (prev && prev.tr) prev.tr.tabIndex = -1;
    state.focus = i;
    const row = state.rows[i];
    row.tr.tabIndex = 0;
    row.tr.focus({ preventScroll: !scroll });
    if (scroll) row.tr.scrollIntoView({ block: 'nearest' });
    if (i >= state.rows.length - 5 && !state.done) loadPage();
  }

  async function toggleExpand(row) {
    const i = state.rows.indexOf(row);
    if (i < 0 || !row.run.info.has_children) return;
    if (row.expanded) {
      // Remove the subtree under the row.
      let j = i + 1;
      while (j < state.rows.length && state.rows[j].depth > row.depth) {
        state.rows[j].tr.remove();
        j++;
      }
      state.rows.splice(i + 1, j - i - 1);
      row.expanded = false;
    } else {
      if (!row.children) {
        row.children = [];
        let token = '';
        do {
          const res = await get(`/api/view/runs/${enc(row.run.info.run_id)}/children${token ? `?page_token=${enc(token)}` : ''}`);
          row.children.push(...(res.runs || []));
          token = res.next_page_token || '';
        } while (token && row.children.length < 5000);
      }
      const added = row.children.map((run) => ({ run, depth: row.depth + 1, expanded: false, children: null }));
      let after = row.tr;
      for (const r of added) {
        learn(r.run);
        const tr = rowElement(r);
        after.after(tr);
        after = tr;
      }
      state.rows.splice(i + 1, 0, ...added);
      row.expanded = true;
      fillPicker();
    }
    const old = row.tr;
    const fresh = rowElement(row);
    old.replaceWith(fresh);
    if (state.focus === i) {
      fresh.tabIndex = 0;
      fresh.focus();
    }
  }

  table.addEventListener('keydown', (ev) => {
    if (ev.target.closest('thead')) return;
    const row = state.rows[state.focus];
    switch (ev.key) {
      case 'ArrowDown':
        focusRow(state.focus + 1);
        break;
      case 'ArrowUp':
        focusRow(state.focus - 1);
        break;
      case 'Home':
        focusRow(0);
        break;
      case 'End':
        focusRow(state.rows.length - 1);
        break;
      case 'PageDown':
        focusRow(state.focus + 20);
        break;
      case 'PageUp':
        focusRow(state.focus - 20);
        break;
      case 'Enter':
        if (row) location.hash = `#/runs/${enc(row.run.info.run_id)}`;
        break;
      case ' ':
      case 'Spacebar':
        if (row) setSelected(row, !state.selected.has(row.run.info.run_id));
        break;
      case 'ArrowRight':
        if (row && row.run.info.has_children && !row.expanded) toggleExpand(row);
        break;
      case 'ArrowLeft':
        if (row && row.expanded) toggleExpand(row);
        else if (row && row.depth > 0) {
          for (let j = state.focus - 1; j >= 0; j--) {
            if (state.rows[j].depth < row.depth) {
              focusRow(j);
              break;
            }
          }
        }
        break;
      default:
        return;
    }
    ev.preventDefault();
  });
  table.addEventListener('focusin', (ev) => {
    const tr = ev.target.closest('tbody tr');
    if (!tr) return;
    const i = state.rows.findIndex((r) => r.tr === tr);
    if (i >= 0 && i !== state.focus) {
      const prev = state.rows[state.focus];
      if (prev && prev.tr) prev.tr.tabIndex = -1;
      state.focus = i;
      tr.tabIndex = 0;
    }
  });

  async function fetchPage() {
    const body = {
      experiment_ids: [experimentId],
      filter: state.filter,
      order_by: state.order ? [state.order] : [],
      max_results: state.rows.length ? PAGE : FIRST_PAGE,
      page_token: state.token,
      root_runs_only: state.tree,
    };
    return post('/api/view/runs/search', body);
  }

  function loadPage() {
    if (state.loading || state.done) return state.loading;
    const mine = state.seq;
    loadingEl.hidden = false;
    state.loading = (async () => {
      try {
        const res = await fetchPage();
        if (mine !== state.seq || !ctx.current()) return;
        showFilterError('');
        const frag = document.createDocumentFragment();
        for (const run of res.runs || []) {
          learn(run);
          const row = { run, depth: 0, expanded: false, children: null };
          state.rows.push(row);
          frag.append(rowElement(row));
        }
        tbody.append(frag);
        state.token = res.next_page_token || '';
        state.done = !state.token;
        if (state.focus < 0 && state.rows.length) state.rows[0].tr.tabIndex = 0;
        countEl.textContent = `${state.rows.length}${state.done ? '' : '+'} runs loaded`;
        if (!state.rows.length) tbody.append(h('tr.empty', h('td.muted', { colspan: String(6 + state.cols.length) }, 'No runs match.')));
        fillPicker();
      } catch (err) {
        if (mine !== state.seq) return;
        state.done = true;
        countEl.textContent = '';
        showFilterError(err instanceof ApiError ? err.message : `Could not load runs: ${err.message}`);
      } finally {
        if (mine === state.seq) {
          state.loading = null;
          loadingEl.hidden = true;
        }
      }
    })();
    return state.loading;
  }

  function reload() {
    state.seq++;
    state.token = '';
    state.done = false;
    state.loading = null;
    state.rows = [];
    state.focus = -1;
    header();
    clear(tbody);
    return loadPage().then(() => maybeMore());
  }

  function rebuild() {
    // Same rows, new columns.
    header();
    clear(tbody);
    const frag = document.createDocumentFragment();
    for (const row of state.rows) frag.append(rowElement(row));
    tbody.append(frag);
    if (state.rows[state.focus]) state.rows[state.focus].tr.tabIndex = 0;
    else if (state.rows.length) state.rows[0].tr.tabIndex = 0;
  }

  // Infinite scroll: the next page when the sentinel under the grid comes into view.
  const observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadPage()?.then(() => maybeMore());
  }, { root: wrap, rootMargin: '400px' });
  observer.observe(sentinel);
  ctx.onLeave(() => observer.disconnect());
  function maybeMore() {
    // A short page that does not fill the view: the observer fires only on changes.
    if (!wrap.isConnected) return;
    if (!state.done && !state.loading && wrap.scrollHeight <= wrap.clientHeight + 400) loadPage()?.then(() => maybeMore());
  }

  header();
  fillPicker();
  const first = reload();
  const expName = await namePromise;
  if (!ctx.current()) return;
  ctx.setCrumbs(h('a', { href: '#/' }, 'Experiments'), h('span', expName));
  put(main, 
    h('div.page-head', h('h1', expName), h('a', { href: `#/experiments/${enc(experimentId)}/models` }, 'Logged models')),
    filterForm,
    filterError,
    h('div.toolbar', addCol, h('label', treeBox, ' Parent and child runs as a tree'), compareBtn, countEl),
    wrap,
  );
  await first;
  maybeMore();
}
