// Calls to trackd's view API. Every non-GET request carries `X-Trackd-View: 1`; a 401
// raises AuthRequired, which the app answers with the sign-in form.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || '';
  }
}

export class AuthRequired extends ApiError {}

const listeners = new Set();
/** Calls `fn(err)` on every 401 answer. */
export function onAuthRequired(fn) {
  listeners.add(fn);
}

export async function call(method, path, body, { signal } = {}) {
  const init = { method, headers: {}, credentials: 'same-origin', signal };
  if (method !== 'GET' && method !== 'HEAD') {
    init.headers['X-Trackd-View'] = '1';
  }
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  const text = await resp.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text };
    }
  }
  if (!resp.ok) {
    const code = (data && data.error_code) || '';
    const message = (data && data.message) || `HTTP ${resp.status}`;
    if (resp.status === 401) {
      const err = new AuthRequired(401, code, message);
      for (const fn of listeners) fn(err);
      throw err;
    }
    throw new ApiError(resp.status, code, message);
  }
  return data || {};
}

export const get = (path, opts) => call('GET', path, undefined, opts);
export const post = (path, body, opts) => call('POST', path, body, opts);
export const del = (path, opts) => call('DELETE', path, undefined, opts);

/** A query string from an object, leaving out empty values. */
export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === '') continue;
    u.set(k, String(v));
  }
  const s = u.toString();
  return s ? `?${s}` : '';
}

/** A JSON number of trackd's protos: numbers, or "NaN" / "Infinity" / "-Infinity". */
export function num(v) {
  if (v === undefined || v === null || v === '') return 0;
  return typeof v === 'number' ? v : Number(v);
}

/** A number array of a proto repeated field (absent when empty). */
export function nums(a) {
  return (a || []).map(num);
}

export const enc = encodeURIComponent;

/** The artifact URL of a file of a run ("runs") or logged model ("models"). */
export function artifactUrl(kind, id, path, download) {
  const p = path.split('/').map(enc).join('/');
  return `/api/view/${kind}/${enc(id)}/artifacts/${p}${download ? '?download=1' : ''}`;
}

const experimentNames = new Map();
/** An experiment's name (cached), or "Experiment <id>" when it cannot be read. */
export async function experimentName(id) {
  if (!experimentNames.has(id)) {
    const lit = /^\d+$/.test(id) ? id : `'${id.replace(/'/g, "''")}'`;
    const p = get(`/api/view/experiments${qs({ filter: `experiment_id = ${lit}`, max_results: 1, view_type: 'VIEW_TYPE_ALL' })}`)
      .then((r) => r.experiments?.[0]?.name || `Experiment ${id}`)
      .catch((err) => {
        experimentNames.delete(id);
        if (err instanceof AuthRequired) throw err;
        return `Experiment ${id}`;
      });
    experimentNames.set(id, p);
  }
  return experimentNames.get(id);
}
