// A small element builder: h('div.cls#id', {attr: v, onclick: fn}, child, ...).

export function h(tag, attrs, ...children) {
  const [head, id] = tag.split('#');
  const [name, ...classes] = head.split('.');
  const el = document.createElement(name || 'div');
  if (classes.length) el.className = classes.join(' ');
  if (id) {
    const [idName, ...more] = id.split('.');
    el.id = idName;
    if (more.length) el.classList.add(...more);
  }
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'class') {
      el.className = v;
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else if (k === 'value') {
      el.value = v;
    } else if (k === 'checked') {
      el.checked = !!v;
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function fmtTime(ms) {
  ms = Number(ms);
  if (!ms) return '';
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function fmtDuration(seconds) {
  if (seconds === undefined || seconds === null || Number.isNaN(seconds)) return '';
  let s = Math.max(0, Number(seconds));
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const hh = Math.floor(s / 3600);
  s -= hh * 3600;
  const mm = Math.floor(s / 60);
  s = Math.floor(s - mm * 60);
  return hh ? `${hh} h ${mm} min` : `${mm} min ${s} s`;
}

export function fmtNum(v) {
  if (v === undefined || v === null) return '';
  const n = typeof v === 'number' ? v : Number(v);
  if (Number.isNaN(n)) return String(v);
  if (!Number.isFinite(n)) return n > 0 ? 'Infinity' : '-Infinity';
  if (Number.isInteger(n)) return String(n);
  const a = Math.abs(n);
  if (a !== 0 && (a < 1e-4 || a >= 1e9)) return n.toExponential(4);
  return String(Number(n.toPrecision(6)));
}

export function fmtBytes(n) {
  n = Number(n) || 0;
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

export const STATUS = (s) => String(s || 'RUN_STATUS_UNSPECIFIED').replace(/^RUN_STATUS_/, '');

export function statusBadge(s) {
  const name = STATUS(s);
  return h(`span.status.status-${name.toLowerCase()}`, { 'data-status': name }, name);
}

/** A run's duration in seconds (info.duration, or start to end / now). */
export function runDuration(info) {
  if (info.duration !== undefined && info.duration !== null) return Number(info.duration);
  const start = Number(info.start_time || 0);
  if (!start) return null;
  const end = Number(info.end_time || 0) || Date.now();
  return (end - start) / 1000;
}

export function kvTable(rows, cls = 'kv') {
  if (!rows.length) return h('p.muted', 'None.');
  return h(
    `table.${cls}`,
    h('tbody', rows.map(([k, v]) => h('tr', h('th', { scope: 'row' }, k), h('td', v)))),
  );
}

/** Replaces the children of `el` (null, false and undefined children are left out). */
export function put(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}
