// An artifact browser: directories, download links, previews of images and text.

import { get, enc, artifactUrl, qs } from './api.js';
import { h, clear, fmtBytes, fmtTime } from './dom.js';

const TEXT = /^(text\/|application\/(json|xml|yaml|x-yaml|toml|javascript|x-ndjson))/;
const TEXT_EXT = /\.(txt|log|md|json|ya?ml|csv|tsv|py|cfg|ini|toml|xml|html|js|sh|mlmodel|MLmodel)$/i;
const PREVIEW_MAX = 1024 * 1024;

/** kind: "runs" or "models"; id: the run or model id. */
export function artifactBrowser(kind, id) {
  const pathEl = h('nav.artifact-path', { 'aria-label': 'Artifact path' });
  const list = h('tbody');
  const more = h('button', { type: 'button', hidden: true }, 'More');
  const preview = h('div.preview', { id: 'artifact-preview', 'aria-live': 'polite' });
  const el = h(
    'section.artifacts#artifacts',
    h('h2', 'Artifacts'),
    pathEl,
    h('div.artifact-panes', h('div', h('table.list.artifact-list', h('thead', h('tr', h('th', 'Name'), h('th', 'Size'), h('th', 'Stored'), h('th', ''))), list), more), preview),
  );
  let current = '';
  let token = '';

  async function open(path, append = false) {
    if (!append) {
      current = path;
      token = '';
      clear(list);
      clear(pathEl);
      const parts = path ? path.split('/') : [];
      pathEl.append(h('button.link', { type: 'button', onclick: () => open('') }, 'root'));
      parts.forEach((p, i) => {
        pathEl.append(' / ', h('button.link', { type: 'button', onclick: () => open(parts.slice(0, i + 1).join('/')) }, p));
      });
    }
    const res = await get(`/api/view/${kind}/${enc(id)}/artifacts${qs({ path: current, page_token: token })}`);
    if (current && !append) {
      const up = current.split('/').slice(0, -1).join('/');
      list.append(h('tr', h('td', h('button.link', { type: 'button', onclick: () => open(up) }, '..')), h('td'), h('td'), h('td')));
    }
    for (const f of res.files || []) {
      const name = f.path.split('/').pop();
      if (f.is_dir) {
        list.append(h('tr.dir', { 'data-path': f.path }, h('td', h('button.link', { type: 'button', onclick: () => open(f.path) }, `${name}/`)), h('td'), h('td'), h('td')));
      } else {
        list.append(
          h(
            'tr.file',
            { 'data-path': f.path },
            h('td', h('button.link', { type: 'button', onclick: () => show(f) }, name)),
            h('td.num', fmtBytes(f.file_size)),
            h('td.nowrap', fmtTime(f.modification_time)),
            h('td', h('a.download', { href: artifactUrl(kind, id, f.path, true), download: name }, 'Download')),
          ),
        );
      }
    }
    if (!list.children.length) list.append(h('tr', h('td.muted', { colspan: 4 }, 'No artifacts.')));
    token = res.next_page_token || '';
    more.hidden = !token;
  }
  more.addEventListener('click', () => open(current, true));

  async function show(f) {
    clear(preview);
    const url = artifactUrl(kind, id, f.path, false);
    const type = f.content_type || '';
    preview.append(h('h3', f.path), h('p.muted', `${type || 'unknown type'}, ${fmtBytes(f.file_size)}${f.row_count !== undefined ? `, ${f.row_count} rows` : ''}`));
    if (type.startsWith('image/')) {
      preview.append(h('img', { src: url, alt: f.path }));
    } else if (TEXT.test(type) || TEXT_EXT.test(f.path)) {
      const resp = await fetch(url, { credentials: 'same-origin', headers: { Range: `bytes=0-${PREVIEW_MAX - 1}` } });
      let text = await resp.text();
      if (text.length > PREVIEW_MAX) text = text.slice(0, PREVIEW_MAX);
      preview.append(h('pre.text-preview', text));
      if (Number(f.file_size) > PREVIEW_MAX) preview.append(h('p.muted', 'Showing the first 1 MB.'));
    } else {
      preview.append(h('p.muted', 'No preview for this type.'));
    }
    preview.append(h('p', h('a.download', { href: artifactUrl(kind, id, f.path, true), download: f.path.split('/').pop() }, 'Download')));
  }

  return { el, open };
}
