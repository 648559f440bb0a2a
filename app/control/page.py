"""The status page for people: `GET /` (HTML) and `GET /status.js`; no build step, no external
assets, nothing but this file.

The page holds no data itself: its script polls `GET /admin/v1/status` once a second with the
admin token (asked for on the page, kept in the tab's sessionStorage only), so the page shows
nothing the admin API would not, and a swap appears without a reload. Every value is written with
`textContent`, never as HTML, and a Content-Security-Policy allows only this origin's script.
With the admin API off (no token configured) the page says so.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hotserve status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.2em 0 .3em}
table{border-collapse:collapse;background:#fff;margin:.3em 0}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-variant-numeric:tabular-nums}
th{background:#f0f0f0} .AVAILABLE{color:#0a0} .LOADING,.START{color:#b70}
.UNLOADING{color:#888} .END{color:#888} .err{color:#c00}
.badge{display:inline-block;padding:0 .4em;border-radius:3px;background:#def;margin-right:.3em}
.pin{background:#fd8} #banner{padding:.4em .6em;margin:.5em 0;background:#eee}
#banner.bad{background:#fdd} ul{margin:.2em 0;padding-left:1.2em} li{font-size:.92em}
</style></head>
<body>
<h1>hotserve status</h1>
<div id="banner">connecting&hellip;</div>
<form id="login" hidden>
  <label>Admin token <input id="token" type="password" autocomplete="off" size="40"></label>
  <button type="submit">Show status</button>
</form>
<div id="models"></div>
<script src="/status.js"></script>
</body></html>
"""

SCRIPT = r"""'use strict';
const KEY = 'hotserve-admin-token';
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function banner(text, bad) {
  const b = $('banner'); b.textContent = text; b.className = bad ? 'bad' : '';
}
function num(v, digits) { return (v === undefined || v === null) ? '' : Number(v).toFixed(digits); }
function version(model, v) {
  const tr = el('tr');
  tr.dataset.model = model.name; tr.dataset.version = v.version; tr.dataset.state = v.state;
  tr.appendChild(el('td', v.version));
  tr.appendChild(el('td', v.state, v.state));
  const route = el('td');
  if (v.default) route.appendChild(el('span', 'default', 'badge'));
  if (v.pinned) route.appendChild(el('span', 'pinned', 'badge pin'));
  for (const l of v.labels) route.appendChild(el('span', l, 'badge'));
  tr.appendChild(route);
  tr.appendChild(el('td', v.in_flight));
  tr.appendChild(el('td', num(v.requests_per_second, 1)));
  tr.appendChild(el('td', num(v.p99_ms, 2)));
  tr.appendChild(el('td', num(v.load_seconds, 2)));
  tr.appendChild(el('td', num(v.warmup_seconds, 2)));
  tr.appendChild(el('td', v.error || '', 'err'));
  return tr;
}
function model(m) {
  const box = el('section'); box.dataset.model = m.name;
  const title = el('h2', m.name + ' ');
  const dv = m.default_version === null ? 'none' : m.default_version;
  const def = el('span', 'default: ' + dv, 'badge');
  def.dataset.role = 'default'; title.appendChild(def);
  if (m.pinned_version !== null) {
    title.appendChild(el('span', 'pinned to ' + m.pinned_version, 'badge pin'));
  }
  box.appendChild(title);
  const ro = m.rollout && m.rollout.rollout;
  if (ro) {  // issue 11: the rollout's arms, weights, phase and reason
    let text = 'rollout: stable ' + ro.stable + ' / canary ' + ro.canary + ' at ' +
      num(ro.canary_percent, 1) + '% (shadow ' + num(ro.shadow_percent, 1) + '%), ' + ro.phase;
    if (ro.reason) text += ': ' + ro.reason;
    const line = el('div', text, ro.phase === 'rolled_back' ? 'err' : '');
    line.dataset.role = 'rollout'; box.appendChild(line);
    const an = m.rollout.analysis;
    if (an) {  // the controller's window: per arm, shadow, and its last verdict
      const w = an.window; const s = w.shadow;
      const arm = (name, a) => name + ' ' + a.requests + ' req/' + a.errors + ' err, p99 ' +
        (a.p99_ms === null ? '-' : num(a.p99_ms, 1)) + ' ms';
      const why = an.verdict_reason ? ' (' + an.verdict_reason + ')' : '';
      let t = 'analysis: ' + an.verdict + why + '; ' + arm('stable', w.stable) + '; ' +
        arm('canary', w.canary) + '; shadow ' +
        s.samples + ' samples/' + s.errors + ' err, ' + s.dropped + ' dropped';
      if (s.max_abs_diff !== null) t += ', max |diff| ' + s.max_abs_diff;
      if (s.argmax_agreement !== null) {
        t += ', argmax agreement ' + num(s.argmax_agreement * 100, 1) + '%';
      }
      const aline = el('div', t, an.verdict === 'unhealthy' ? 'err' : '');
      aline.dataset.role = 'analysis'; box.appendChild(aline);
    }
  }
  const table = el('table'); const head = el('tr');
  const columns = ['version', 'state', 'route', 'in flight', 'req/s', 'p99 ms', 'load s',
                   'warmup s', 'error'];
  for (const h of columns) head.appendChild(el('th', h));
  table.appendChild(head);
  for (const v of m.versions) table.appendChild(version(m, v));
  box.appendChild(table);
  box.appendChild(el('div', 'Recent events'));
  const list = el('ul'); list.dataset.role = 'events';
  for (const e of m.events.slice(0, 10)) {
    const when = new Date(e.time * 1000).toLocaleTimeString();
    let text = when + '  version ' + e.version + ' ' + e.state;
    if (e.load_seconds !== undefined) {
      text += ' (load ' + num(e.load_seconds, 2) + ' s, warmup ' + num(e.warmup_seconds, 2) + ' s)';
    }
    if (e.unload_seconds !== undefined) {
      text += ' (drain+unload ' + num(e.unload_seconds, 2) + ' s)';
    }
    if (e.reason) text += ': ' + e.reason;
    list.appendChild(el('li', text, e.error_code && e.error_code !== 'OK' ? 'err' : ''));
  }
  box.appendChild(list);
  return box;
}
async function poll() {
  const token = sessionStorage.getItem(KEY);
  if (!token) {
    $('login').hidden = false; banner('Enter the admin token to see the status.'); return;
  }
  let r;
  try {
    const headers = {'Authorization': 'Bearer ' + token};
    r = await fetch('/admin/v1/status', {headers: headers, cache: 'no-store'});
  } catch (err) { banner('server unreachable', true); return; }
  if (r.status === 401) {
    sessionStorage.removeItem(KEY); $('login').hidden = false; banner('Wrong token.', true);
    return;
  }
  if (r.status === 404) {
    banner('The admin API is off: set HOTSERVE_ADMIN_TOKEN or --admin_token_file.', true);
    return;
  }
  if (!r.ok) { banner('status: HTTP ' + r.status, true); return; }
  const doc = await r.json();
  $('login').hidden = true;
  const state = doc.shutting_down ? 'SHUTTING DOWN' : doc.ready ? 'ready' : 'not ready';
  const when = new Date(doc.time * 1000).toLocaleTimeString();
  banner(state + ' - updated ' + when, doc.shutting_down || !doc.ready);
  const models = $('models'); models.replaceChildren(...doc.models.map(model));
}
$('login').addEventListener('submit', (ev) => {
  ev.preventDefault(); sessionStorage.setItem(KEY, $('token').value); $('token').value = ''; poll();
});
poll(); setInterval(poll, 1000);
"""


def install_status_page(app: FastAPI) -> None:
    @app.get("/", tags=["status"], summary="The status page (HTML; data from /admin/v1/status)")
    async def page() -> HTMLResponse:
        return HTMLResponse(HTML, headers=HEADERS)

    @app.get("/status.js", include_in_schema=False)
    async def script() -> Response:
        return Response(SCRIPT, media_type="text/javascript", headers=HEADERS)
