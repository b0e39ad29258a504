// The experiments: a search box (a name, or trackd's filter language) and their tags.

import { get, qs } from './api.js';
import { h, put, clear, fmtTime } from './dom.js';

/** A search box's text as a filter: the language if it looks like it, else a name match. */
export function experimentFilter(text) {
  const t = text.trim();
  if (!t) return '';
  if (/(=|<|>|\bLIKE\b|\bILIKE\b|\bIN\b|\bIS\b)/i.test(t)) return t;
  return `name ILIKE '%${t.replace(/'/g, "''")}%'`;
}

export async function experimentsPage(ctx, query) {
  const { main } = ctx;
  ctx.setCrumbs(h('span', 'Experiments'));
  const text = query.get('q') || '';
  const input = h('input', {
    type: 'search', id: 'experiment-search', value: text, placeholder: "Search by name, or a filter: tags.team = 'vision'",
    'aria-label': 'Search experiments',
  });
  const error = h('p.error', { role: 'alert', id: 'experiment-error' });
  const list = h('tbody');
  const more = h('button', { type: 'button', hidden: true, id: 'experiments-more' }, 'More');
  const table = h(
    'table.list#experiments',
    h('thead', h('tr', h('th', 'Name'), h('th', 'Id'), h('th', 'Owner'), h('th', 'Created'), h('th', 'Tags'), h('th', ''))),
    list,
  );
  let token = '';
  let seq = 0;

  async function load(reset) {
    const mine = ++seq;
    if (reset) token = '';
    error.textContent = '';
    let res;
    try {
      res = await get(`/api/view/experiments${qs({ filter: experimentFilter(input.value), max_results: 200, page_token: token, order_by: 'last_update_time DESC' })}`);
    } catch (err) {
      if (mine === seq) {
        error.textContent = err.message;
        if (reset) clear(list);
      }
      return;
    }
    if (mine !== seq || !ctx.current()) return;
    if (reset) clear(list);
    for (const e of res.experiments || []) {
      list.append(
        h(
          'tr',
          { 'data-experiment-id': e.experiment_id },
          h('td', h('a', { href: `#/experiments/${encodeURIComponent(e.experiment_id)}` }, e.name)),
          h('td.mono', e.experiment_id),
          h('td', e.owner || ''),
          h('td', fmtTime(e.creation_time)),
          h('td', (e.tags || []).filter((t) => !t.key.startsWith('mlflow.')).map((t) => h('span.tag', `${t.key}: ${t.value}`))),
          h('td', h('a', { href: `#/experiments/${encodeURIComponent(e.experiment_id)}/models` }, 'Models')),
        ),
      );
    }
    if (!list.children.length) list.append(h('tr', h('td.muted', { colspan: 6 }, 'No experiments.')));
    token = res.next_page_token || '';
    more.hidden = !token;
  }

  let timer = 0;
  input.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      history.replaceState(null, '', `#/${input.value ? `?q=${encodeURIComponent(input.value)}` : ''}`);
      load(true);
    }, 250);
  });
  ctx.onLeave(() => clearTimeout(timer));
  more.addEventListener('click', () => load(false));

  put(main, h('h1', 'Experiments'), h('div.toolbar', input), error, table, more);
  await load(true);
}
