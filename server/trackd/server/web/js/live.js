// The watch stream of runs (server-sent events from GET /api/view/watch): one EventSource
// per run, reconnected by the browser itself (it resends Last-Event-ID).

import { enc } from './api.js';

/** Calls onUpdate(WatchRunResponse) for each update of the run; returns a closer. */
export function watchRun(runId, onUpdate) {
  const es = new EventSource(`/api/view/watch?run_id=${enc(runId)}`, { withCredentials: true });
  es.addEventListener('update', (ev) => {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    onUpdate(msg);
  });
  // For the tests: how many watch streams are open.
  let open = false;
  es.addEventListener('open', () => {
    if (!open) window.trackdWatchOpen = (window.trackdWatchOpen || 0) + 1;
    open = true;
  });
  return () => {
    es.close();
    if (open) window.trackdWatchOpen -= 1;
  };
}

export const LIVE = new Set(['RUN_STATUS_RUNNING', 'RUN_STATUS_UNRESPONSIVE', 'RUN_STATUS_SCHEDULED']);
