// trackd's web view: a single-page app with hash routes, no build step.
//   #/                              experiments
//   #/experiments/<id>              the experiment's runs
//   #/experiments/<id>/models       its logged models
//   #/runs/<id>                     one run
//   #/compare?runs=a,b,c            runs side by side

import { get, del, post, onAuthRequired, AuthRequired } from './js/api.js';
import { h, put, clear } from './js/dom.js';
import { experimentsPage } from './js/experiments.js';
import { runsPage } from './js/runs.js';
import { runPage } from './js/run.js';
import { comparePage } from './js/compare.js';
import { modelsPage } from './js/models.js';

const main = document.getElementById('main');
const crumbs = document.getElementById('crumbs');
const who = document.getElementById('who');

let leaving = [];
let routeSeq = 0;

function leave() {
  const fns = leaving;
  leaving = [];
  for (const fn of fns) {
    try {
      fn();
    } catch (err) {
      console.error(err);
    }
  }
}

/** What a page gets: where to draw, the route's parts and query, and cleanup hooks. */
function context(seq) {
  return {
    main,
    onLeave: (fn) => leaving.push(fn),
    current: () => seq === routeSeq,
    setCrumbs: (...items) => {
      clear(crumbs);
      const list = h('ol');
      for (const it of items) list.append(h('li', it));
      crumbs.append(list);
    },
  };
}

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, query = ''] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query) };
}

async function route() {
  leave();
  const seq = ++routeSeq;
  const ctx = context(seq);
  const { parts, query } = parseHash();
  clear(main);
  main.append(h('p.muted', 'Loading…'));
  try {
    if (parts.length === 0 || (parts[0] === 'experiments' && parts.length === 1)) {
      await experimentsPage(ctx, query);
    } else if (parts[0] === 'experiments' && parts.length === 2) {
      await runsPage(ctx, parts[1], query);
    } else if (parts[0] === 'experiments' && parts[2] === 'models') {
      await modelsPage(ctx, parts[1], query);
    } else if (parts[0] === 'runs' && parts[1]) {
      await runPage(ctx, parts[1], query);
    } else if (parts[0] === 'compare') {
      await comparePage(ctx, (query.get('runs') || '').split(',').filter(Boolean), query);
    } else {
      put(main, h('h1', 'Not found'), h('p', h('a', { href: '#/' }, 'Experiments')));
    }
  } catch (err) {
    if (seq !== routeSeq) return;
    if (err instanceof AuthRequired) return; // the sign-in form is showing
    console.error(err);
    put(main, 
      h('h1', 'Something went wrong'),
      h('p.error', { role: 'alert' }, err.message || String(err)),
      h('p', h('a', { href: '#/' }, 'Experiments')),
    );
  }
}

// Sign-in: shown whenever a call answers 401. The token goes from the password field into
// the POST body and nowhere else; the server answers with an HttpOnly cookie.
let signingIn = false;
function showSignIn(message) {
  if (signingIn) return;
  signingIn = true;
  leave();
  routeSeq++;
  clear(crumbs);
  const error = h('p.error', { role: 'alert', id: 'signin-error' }, message && message !== 'HTTP 401' ? message : '');
  const input = h('input', { type: 'password', name: 'token', id: 'signin-token', autocomplete: 'off', required: true, 'aria-describedby': 'signin-error' });
  const form = h(
    'form.signin',
    {
      onsubmit: async (ev) => {
        ev.preventDefault();
        const body = { token: input.value };
        input.value = '';
        try {
          await post('/api/view/session', body);
          signingIn = false;
          await refreshWho();
          route();
        } catch (err) {
          signingIn = true;
          error.textContent = err.status === 401 ? 'That token was not accepted.' : err.message;
          input.focus();
        }
      },
    },
    h('h1', 'Sign in'),
    h('p', 'This trackd asks who you are. Paste an access token (trackd tokens create, or your OIDC token).'),
    h('label', { for: 'signin-token' }, 'Token'),
    input,
    h('button', { type: 'submit' }, 'Sign in'),
    error,
  );
  put(main, form);
  input.focus();
}

onAuthRequired((err) => showSignIn(err.message));

async function refreshWho() {
  clear(who);
  try {
    const s = await get('/api/view/session');
    if (s.auth && s.principal) {
      who.append(
        h('span.principal', { title: s.admin ? 'administrator' : '' }, s.principal, s.admin ? ' (admin)' : ''),
        h(
          'button.link',
          {
            type: 'button',
            id: 'signout',
            onclick: async () => {
              await del('/api/view/session').catch(() => {});
              signingIn = false;
              showSignIn('Signed out.');
            },
          },
          'Sign out',
        ),
      );
    } else if (!s.auth) {
      who.append(h('span.muted', 'authentication off'));
    }
  } catch {
    // 401 shows the form; anything else leaves the corner empty.
  }
}

window.addEventListener('hashchange', () => {
  signingIn = false;
  route();
});

function start() {
  refreshWho();
  route();
}

if (window.uPlot) start();
else window.addEventListener('load', start, { once: true });
