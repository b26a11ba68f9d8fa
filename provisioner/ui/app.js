// Catalyst-Zero operator console.
//
// One file, no dependencies. Every value that comes from the API is treated
// as hostile: the DOM is built with createElement and textContent only, and
// every text goes through `shown()`, which makes control and invisible
// formatting characters visible. The one exception is the runbook fragment
// that the daemon itself renders from this repository's markdown
// (`/ui/runbooks/<file>`), set with innerHTML into its container.
'use strict';

(() => {
  // ===== constants =====

  const JOB_STATUSES = ['pending', 'running', 'paused', 'succeeded', 'failed', 'cancelled', 'abandoned'];
  const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'abandoned']);
  // Named SSE events the daemon sends (`event:` is the kind). Events of a
  // kind not listed here are never lost: the next one seen shows the gap,
  // and the gap is read back from the JSON pages.
  const EVENT_KINDS = ['job', 'phase', 'step', 'wait', 'tofu', 'cost', 'kit', 'dns', 'ssh', 'cloud',
    'custody', 'log', 'operator', 'end', 'warning', 'drift', 'release'];
  const NODE_STAGES = ['created', 'reachable', 'joined', 'ready'];
  const MAX_ROWS = 1000; // event rows kept in the DOM
  const INITIAL_EVENTS = 200; // newest events shown when a job page opens
  const OLDER_PAGE = 200; // events per "Load older"
  const JOBS_POLL_MS = 2000;
  const SOVEREIGN_POLL_MS = 5000;
  const RECONNECT_POLL_MS = 3000;
  const ENDED_POLL_MS = 10000;
  const SESSION_CHECK_MS = 60000;

  // ===== text =====

  // C0, DEL, C1, and the invisible formatting characters that can disguise
  // text (soft hyphen, zero-width, bidi embeddings/overrides/isolates, line
  // and paragraph separators, BOM, interlinear annotations).
  const HIDDEN_RE = /[\u0000-\u001F\u007F-\u009F\u00AD\u061C\u180E\u200B-\u200F\u2028-\u202E\u2060-\u206F\uFEFF\uFFF9-\uFFFB]/g;

  /** Text as shown: every control or invisible character becomes `\u{XX}`. */
  function shown(v) {
    if (v === null || v === undefined) return '';
    const s = typeof v === 'string' ? v : String(v);
    return s.replace(HIDDEN_RE, (c) => '\\u{' + c.codePointAt(0).toString(16).toUpperCase().padStart(2, '0') + '}');
  }

  /** Any value as a compact string (objects as JSON). Not yet `shown()`. */
  function str(v) {
    if (v === null || v === undefined) return '';
    if (typeof v === 'object') {
      try { return JSON.stringify(v); } catch (_) { return ''; }
    }
    return String(v);
  }

  function clip(s, n) {
    return s.length > n ? s.slice(0, n - 1) + '…' : s;
  }

  const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
  const isStr = (v) => typeof v === 'string' && v.length > 0;
  const arr = (v) => (Array.isArray(v) ? v : []);

  function shortId(id) {
    const s = str(id);
    // A UUIDv7 starts with its time: the start and the (random) end tell
    // jobs apart.
    return /^[0-9a-f]{8}-[0-9a-f-]{27}$/i.test(s) ? s.slice(0, 8) + '…' + s.slice(-4) : clip(s, 16);
  }

  // ===== time =====

  function ms(iso) {
    if (typeof iso !== 'string') return NaN;
    return Date.parse(iso);
  }

  /** `850 ms`, `1.2 s`, `3 m 04 s`, `2 h 05 m`, `3 d 04 h`. */
  function fmtDuration(d) {
    if (!Number.isFinite(d)) return '—';
    if (d < 0) d = 0;
    if (d < 1000) return Math.round(d) + ' ms';
    const s = d / 1000;
    if (s < 60) return (Math.floor(s * 10) / 10).toFixed(1) + ' s';
    const total = Math.floor(s);
    const p2 = (n) => String(n).padStart(2, '0');
    if (total < 3600) return Math.floor(total / 60) + ' m ' + p2(total % 60) + ' s';
    if (total < 86400) return Math.floor(total / 3600) + ' h ' + p2(Math.floor(total / 60) % 60) + ' m';
    return Math.floor(total / 86400) + ' d ' + p2(Math.floor(total / 3600) % 24) + ' h';
  }

  /** `12 s ago`, `4 m ago`, `3 h ago`, `2 d ago`. */
  function fmtAge(iso) {
    const t = ms(iso);
    if (!Number.isFinite(t)) return '—';
    const s = Math.max(0, Math.floor((Date.now() - t) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' m ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  const p2 = (n) => String(n).padStart(2, '0');

  /** Local `HH:MM:SS`. */
  function fmtClock(iso) {
    const t = ms(iso);
    if (!Number.isFinite(t)) return str(iso);
    const d = new Date(t);
    return p2(d.getHours()) + ':' + p2(d.getMinutes()) + ':' + p2(d.getSeconds());
  }

  /** Local `YYYY-MM-DD HH:MM:SS`. */
  function fmtDateTime(iso) {
    const t = ms(iso);
    if (!Number.isFinite(t)) return str(iso) || '—';
    const d = new Date(t);
    return d.getFullYear() + '-' + p2(d.getMonth() + 1) + '-' + p2(d.getDate()) + ' ' +
      p2(d.getHours()) + ':' + p2(d.getMinutes()) + ':' + p2(d.getSeconds());
  }

  function jobDuration(j) {
    const start = ms(j.created_at);
    let end = ms(j.finished_at);
    if (!Number.isFinite(end)) end = TERMINAL.has(j.status) ? ms(j.updated_at) : Date.now();
    return end - start;
  }

  // ===== DOM =====

  /**
   * createElement with props and children. Prop names are always literals
   * of this file; values go through setAttribute (titles through shown()).
   * String children become text nodes, through shown().
   */
  function h(tag, props, ...kids) {
    const n = document.createElement(tag);
    if (props) {
      for (const k of Object.keys(props)) {
        const v = props[k];
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') n.className = v;
        else if (k === 'on') for (const ev of Object.keys(v)) n.addEventListener(ev, v[ev]);
        else if (k === 'title' || k === 'aria-label') n.setAttribute(k, shown(v));
        else n.setAttribute(k, v === true ? '' : String(v));
      }
    }
    append(n, kids);
    return n;
  }

  /** A row of a definition list: `<div><dt>label</dt><dd>value</dd></div>`. */
  function fact(label, value) {
    return h('div', null, h('dt', null, label), h('dd', null, value));
  }

  function append(n, kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      n.append(kid instanceof Node ? kid : document.createTextNode(shown(kid)));
    }
  }

  /** Sets a node's text (through shown()) only if it changed. */
  function setText(n, v) {
    const t = shown(v);
    if (n.textContent !== t) n.textContent = t;
  }

  function setAttr(n, k, v) {
    const s = String(v);
    if (n.getAttribute(k) !== s) n.setAttribute(k, s);
  }

  function setTitle(n, v) {
    setAttr(n, 'title', shown(v));
  }

  const jobHref = (id) => '#/jobs/' + encodeURIComponent(str(id));
  const sovHref = (id) => '#/sovereigns/' + encodeURIComponent(str(id));

  /**
   * Keyed update of `parent`'s children: reuses the node of each key, creates
   * the missing ones, removes the others, keeps `items`' order.
   */
  function reconcile(parent, items, key, create, update) {
    const old = new Map();
    for (const c of Array.from(parent.children)) {
      if (c._key === undefined) c.remove();
      else old.set(c._key, c);
    }
    let prev = null;
    for (const it of items) {
      const k = key(it);
      let node = old.get(k);
      if (node) old.delete(k);
      else {
        node = create(it);
        node._key = k;
      }
      update(node, it);
      const want = prev ? prev.nextSibling : parent.firstChild;
      if (node !== want) parent.insertBefore(node, want);
      prev = node;
    }
    for (const n of old.values()) n.remove();
  }

  function badge(state, id) {
    return h('span', { class: 'badge', id, 'data-state': str(state) }, str(state));
  }

  function setBadge(n, state) {
    setAttr(n, 'data-state', str(state));
    setText(n, str(state));
  }

  // ===== state =====

  const root = document.getElementById('app') || document.body.appendChild(h('div', { id: 'app' }));
  const S = {
    session: null,
    page: null, // the current page's lifetime (timers, fetches, streams)
    shell: null, // {main, dialog, nav, net}
    sovCache: new Map(), // sovereign id → {name, fqdn, status}
    sovFetchedAt: 0,
    phaseCache: new Map(), // job id → its current phase, from its detail
    sessionTimers: [],
  };

  class AuthLost extends Error {}

  const quiet = (e) => e instanceof AuthLost || (e && e.name === 'AbortError');

  // ===== fetch =====

  /**
   * Same-origin JSON call. A 401 at any time ends the session in the UI.
   * POSTs carry the CSRF header and a JSON body. Answers {ok, status, data}.
   */
  async function api(path, opts = {}) {
    const method = opts.method || 'GET';
    const headers = { Accept: 'application/json' };
    let body;
    if (method !== 'GET') {
      headers['X-CSRF-Token'] = (S.session && S.session.csrf) || '';
      if (method === 'POST') {
        headers['Content-Type'] = 'application/json';
        body = JSON.stringify(opts.body === undefined ? {} : opts.body);
      }
    }
    let r;
    try {
      r = await fetch(path, { method, headers, body, credentials: 'same-origin', cache: 'no-store', signal: opts.signal });
    } catch (e) {
      if (!quiet(e)) setNet(false);
      throw e;
    }
    setNet(true);
    if (r.status === 401 && !opts.noExpire) {
      expire('Your session ended (expired or revoked). Sign in again.');
      throw new AuthLost('unauthorized');
    }
    let data = null;
    const ct = r.headers.get('content-type') || '';
    if (r.status !== 204 && ct.includes('json')) {
      try { data = await r.json(); } catch (_) { data = null; }
    }
    return { ok: r.ok, status: r.status, data };
  }

  /** An error answer as one line: the code and message, or every field error. */
  function errorText(r) {
    const d = r && r.data;
    if (d && Array.isArray(d.errors) && d.errors.length) {
      return 'HTTP ' + r.status + ': ' + d.errors.map((e) => (isObj(e) ? str(e.path) + ': ' + str(e.message) : str(e))).join('; ');
    }
    if (d && isObj(d.error)) {
      return 'HTTP ' + r.status + (d.error.code ? ' ' + str(d.error.code) : '') + ': ' + str(d.error.message);
    }
    return 'HTTP ' + (r ? r.status : '?');
  }

  function setNet(ok) {
    const n = S.shell && S.shell.net;
    if (!n) return;
    n.hidden = ok;
  }

  // ===== session =====

  async function boot() {
    window.addEventListener('hashchange', route);
    let r;
    try {
      r = await fetch('/ui/session', { credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } });
    } catch (_) {
      renderSignIn('The daemon did not answer. Check that it runs, then sign in.');
      return;
    }
    if (r.ok) {
      let s = null;
      try { s = await r.json(); } catch (_) { s = null; }
      if (isObj(s)) {
        startSession(s);
        return;
      }
    }
    renderSignIn(r.status === 401 || r.ok ? '' : 'The daemon answered HTTP ' + r.status + '.');
  }

  function startSession(s) {
    S.session = s;
    renderShell();
    scheduleSessionChecks();
    route();
  }

  function scheduleSessionChecks() {
    for (const t of S.sessionTimers) clearTimeout(t);
    S.sessionTimers = [];
    const check = async () => {
      if (!S.session) return;
      try {
        const r = await api('/ui/session');
        if (r.ok && isObj(r.data) && S.session) {
          S.session = r.data;
          if (S.shell) {
            setText(S.shell.whoami, str(r.data.actor));
            setText(S.shell.role, str(r.data.role));
          }
        }
      } catch (_) { /* a 401 signed out already; a network error waits for the next check */ }
    };
    S.sessionTimers.push(setInterval(check, SESSION_CHECK_MS));
    const exp = ms(S.session && S.session.expires_at);
    if (Number.isFinite(exp)) {
      const wait = exp - Date.now() + 1000;
      if (wait > 0 && wait < 0x7fffffff) S.sessionTimers.push(setTimeout(check, wait));
    }
  }

  /** Drops everything: streams, timers, state and the whole DOM. */
  function teardown() {
    leavePage();
    for (const t of S.sessionTimers) { clearTimeout(t); clearInterval(t); }
    S.sessionTimers = [];
    if (S.shell && S.shell.dialog && S.shell.dialog.open) {
      try { S.shell.dialog.close(); } catch (_) { /* gone */ }
    }
    S.session = null;
    S.shell = null;
    S.sovCache.clear();
    S.sovFetchedAt = 0;
    S.phaseCache.clear();
    root.replaceChildren();
  }

  /** The session is gone (401): nothing of the previous page remains. */
  function expire(note) {
    if (!S.session) return;
    teardown();
    renderSignIn(note);
  }

  async function signOut() {
    const csrf = (S.session && S.session.csrf) || '';
    try {
      await fetch('/ui/session', { method: 'DELETE', headers: { 'X-CSRF-Token': csrf }, credentials: 'same-origin', cache: 'no-store' });
    } catch (_) { /* signed out here anyway */ }
    teardown();
    renderSignIn('Signed out.');
  }

  function renderSignIn(note) {
    root.replaceChildren();
    document.title = 'Sign in · Catalyst-Zero';
    const token = h('input', { id: 'token', type: 'password', name: 'token', autocomplete: 'current-password', required: true, spellcheck: 'false' });
    const button = h('button', { id: 'sign-in', type: 'submit', class: 'primary' }, 'Sign in');
    const error = h('p', { id: 'sign-in-error', class: 'form-error', role: 'alert' });
    const form = h('form', { id: 'sign-in-form', class: 'sign-in-form', autocomplete: 'off' },
      h('div', { class: 'brand brand-large' }, h('span', { class: 'brand-mark' }), 'Catalyst-Zero'),
      h('h1', null, 'Operator console'),
      note ? h('p', { class: 'sign-in-note' }, note) : null,
      h('label', { for: 'token' }, 'Operator token'),
      token,
      button,
      error,
      h('p', { class: 'muted small' }, 'The token is sent once to the daemon, which answers with a session cookie. It is not stored in this browser.'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const t = token.value.trim();
      error.textContent = '';
      if (!t) {
        error.textContent = 'Enter your operator token.';
        return;
      }
      button.disabled = true;
      try {
        const r = await fetch('/ui/session', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
          body: JSON.stringify({ token: t }),
          credentials: 'same-origin',
          cache: 'no-store',
        });
        let data = null;
        try { data = await r.json(); } catch (_) { data = null; }
        if (r.ok && isObj(data)) {
          token.value = '';
          startSession(data);
          return;
        }
        const msg = isObj(data) && isObj(data.error) && data.error.message
          ? str(data.error.message)
          : r.status === 401 ? 'That token is not valid.' : 'Sign-in failed (HTTP ' + r.status + ').';
        setText(error, msg);
      } catch (_) {
        error.textContent = 'The daemon did not answer.';
      } finally {
        button.disabled = false;
      }
    });
    root.append(h('main', { class: 'sign-in' }, form));
    token.focus();
  }

  // ===== shell and routing =====

  function renderShell() {
    root.replaceChildren();
    const whoami = h('span', { id: 'whoami' }, str(S.session.actor));
    const role = h('span', { class: 'role' }, str(S.session.role));
    const signOutBtn = h('button', { id: 'sign-out', type: 'button', class: 'ghost' }, 'Sign out');
    signOutBtn.addEventListener('click', signOut);
    const jobsLink = h('a', { href: '#/jobs', class: 'nav-link', id: 'nav-jobs' }, 'Jobs');
    const net = h('span', { class: 'net-warning', role: 'status', hidden: true }, 'Daemon unreachable, retrying…');
    const header = h('header', { class: 'topbar' },
      h('a', { href: '#/jobs', class: 'brand' }, h('span', { class: 'brand-mark' }), 'Catalyst-Zero'),
      h('nav', null, jobsLink),
      net,
      h('div', { class: 'who' }, whoami, role, signOutBtn));
    const main = h('main', { id: 'page', class: 'page' });
    const dialog = buildDialog();
    root.append(header, main, dialog.el);
    S.shell = { main, dialog: dialog.el, ask: dialog.ask, net, whoami, role, jobsLink };
  }

  function newPage() {
    const ctrl = new AbortController();
    const timers = new Set();
    const intervals = new Set();
    const cleanups = [];
    const pg = {
      alive: true,
      signal: ctrl.signal,
      timeout(fn, wait) {
        const id = setTimeout(() => {
          timers.delete(id);
          if (pg.alive) fn();
        }, wait);
        timers.add(id);
        return id;
      },
      clear(id) {
        if (!id) return;
        clearTimeout(id);
        clearInterval(id);
        timers.delete(id);
        intervals.delete(id);
      },
      every(wait, fn) {
        const id = setInterval(() => { if (pg.alive) fn(); }, wait);
        intervals.add(id);
        return id;
      },
      onLeave(fn) { cleanups.push(fn); },
      leave() {
        pg.alive = false;
        ctrl.abort();
        for (const t of timers) clearTimeout(t);
        for (const t of intervals) clearInterval(t);
        timers.clear();
        intervals.clear();
        for (const f of cleanups) { try { f(); } catch (_) { /* leaving anyway */ } }
      },
    };
    return pg;
  }

  function leavePage() {
    if (S.page) S.page.leave();
    S.page = null;
  }

  function route() {
    if (!S.session || !S.shell) return;
    let raw = location.hash.replace(/^#/, '');
    if (raw === '' || raw === '/') {
      history.replaceState(null, '', '#/jobs');
      raw = '/jobs';
    }
    const q = raw.indexOf('?');
    const path = q >= 0 ? raw.slice(0, q) : raw;
    const params = new URLSearchParams(q >= 0 ? raw.slice(q + 1) : '');
    const parts = path.split('/').filter((p) => p !== '');
    let seg;
    try {
      seg = parts.map(decodeURIComponent);
    } catch (_) {
      seg = [];
    }
    leavePage();
    if (S.shell.dialog.open) S.shell.dialog.close();
    const pg = newPage();
    S.page = pg;
    const main = S.shell.main;
    main.replaceChildren();
    window.scrollTo(0, 0);
    if (seg[0] === 'jobs' && seg.length === 1) S.shell.jobsLink.setAttribute('aria-current', 'page');
    else S.shell.jobsLink.removeAttribute('aria-current');
    if (seg[0] === 'jobs' && seg.length === 1) pageJobs(pg, main, params);
    else if (seg[0] === 'jobs' && seg.length === 2) pageJob(pg, main, seg[1]);
    else if (seg[0] === 'sovereigns' && seg.length === 2) pageSovereign(pg, main, seg[1]);
    else {
      document.title = 'Not found · Catalyst-Zero';
      main.append(h('section', { class: 'card empty-state' }, h('h1', null, 'Nothing here'),
        h('p', null, 'No page at this address. ', h('a', { href: '#/jobs' }, 'Back to the jobs.'))));
    }
  }

  // ===== sovereign names =====

  async function ensureSovereigns(pg, ids, force) {
    const missing = ids.some((id) => isStr(id) && !S.sovCache.has(id));
    const stale = Date.now() - S.sovFetchedAt > 30000;
    const recent = Date.now() - S.sovFetchedAt < 5000;
    if (!force && !stale && (!missing || recent)) return;
    S.sovFetchedAt = Date.now();
    try {
      const r = await api('/v1/sovereigns', { signal: pg.signal });
      if (!r.ok || !isObj(r.data)) return;
      for (const s of arr(r.data.sovereigns)) {
        if (isObj(s) && isStr(s.id)) S.sovCache.set(s.id, { name: s.name, fqdn: s.fqdn, status: s.status });
      }
    } catch (e) {
      if (e instanceof AuthLost) throw e;
    }
  }

  function sovLabel(id) {
    const s = S.sovCache.get(id);
    return s && (isStr(s.name) || isStr(s.fqdn)) ? str(s.name || s.fqdn) : shortId(id);
  }

  /**
   * GETs `url` for a page (a job's or a Sovereign's): `apply`s the JSON
   * answer, or says in `notFound` why there is none (404, an error, or the
   * daemon unreachable, which the page's polling retries).
   */
  async function load(pg, url, notFound, noun, id, apply) {
    try {
      const r = await api(url, { signal: pg.signal });
      if (!pg.alive) return;
      if (r.ok && isObj(r.data)) {
        notFound.replaceChildren();
        apply(r.data);
      } else if (r.status === 404) {
        notFound.replaceChildren(h('section', { class: 'card empty-state' }, h('h2', null, 'No such ' + noun),
          h('p', null, 'The daemon knows no ' + noun + ' ', code(id), '. ', h('a', { href: '#/jobs' }, 'Back to the jobs.'))));
      } else {
        notFound.replaceChildren(h('p', { class: 'banner error' }, 'Could not read the ' + noun + ': ' + errorText(r)));
      }
    } catch (e) {
      if (!quiet(e) && pg.alive) notFound.replaceChildren(h('p', { class: 'banner error' }, 'Could not reach the daemon; retrying.'));
    }
  }

  // ===== jobs list =====

  /** The current phase of a job, as far as this page knows it. */
  function currentPhase(j) {
    const step = (isObj(j.pause) && j.pause.step) || (isObj(j.error) && j.error.step);
    if (isStr(step)) return step.split('/')[0];
    if (!TERMINAL.has(j.status) && isStr(j.current_phase)) return j.current_phase;
    if (!TERMINAL.has(j.status) && S.phaseCache.has(j.id)) return S.phaseCache.get(j.id);
    return '—';
  }

  function pageJobs(pg, main, params) {
    document.title = 'Jobs · Catalyst-Zero';
    let filter = params.get('status') || '';
    if (!JOB_STATUSES.includes(filter)) filter = '';
    const select = h('select', { id: 'status-filter' },
      h('option', { value: '' }, 'all'),
      JOB_STATUSES.map((s) => h('option', { value: s }, s)));
    select.value = filter;
    select.addEventListener('change', () => {
      location.hash = select.value ? '#/jobs?status=' + encodeURIComponent(select.value) : '#/jobs';
    });
    const count = h('span', { class: 'muted count' });
    const tbody = h('tbody');
    const table = h('table', { id: 'jobs', class: 'table' },
      h('thead', null, h('tr', null,
        h('th', null, 'Job'), h('th', null, 'Status'), h('th', null, 'Kind'), h('th', null, 'Sovereign'),
        h('th', null, 'Phase'), h('th', null, 'Age'), h('th', { class: 'num' }, 'Duration'))),
      tbody);
    const note = h('p', { class: 'empty' }, 'Loading…');
    main.append(
      h('div', { class: 'page-head' },
        h('h1', null, 'Jobs'),
        h('div', { class: 'toolbar' }, h('label', { for: 'status-filter' }, 'Status'), select, count)),
      h('section', { class: 'card flush' }, table, note));

    const createRow = () => {
      const r = h('tr');
      r._id = h('a', { class: 'mono' });
      r._status = h('span', { class: 'badge' });
      r._kind = h('td', { class: 'kind' });
      r._sov = h('a');
      r._phase = h('td', { class: 'phase' });
      r._age = h('td', { class: 'age' });
      r._dur = h('td', { class: 'duration num' });
      r.append(h('td', { class: 'id' }, r._id), h('td', { class: 'status' }, r._status), r._kind,
        h('td', { class: 'sovereign' }, r._sov), r._phase, r._age, r._dur);
      return r;
    };
    const updateRow = (r, j) => {
      setAttr(r, 'data-job', str(j.id));
      setAttr(r._id, 'href', jobHref(j.id));
      setText(r._id, shortId(j.id));
      setTitle(r._id, str(j.id));
      setBadge(r._status, j.status);
      setText(r._kind, str(j.kind));
      setAttr(r._sov, 'href', sovHref(j.sovereign_id));
      setText(r._sov, sovLabel(j.sovereign_id));
      const s = S.sovCache.get(j.sovereign_id);
      setTitle(r._sov, s ? str(s.fqdn) : str(j.sovereign_id));
      setText(r._phase, currentPhase(j));
      setText(r._age, fmtAge(j.created_at));
      setTitle(r._age, fmtDateTime(j.created_at));
      setText(r._dur, fmtDuration(jobDuration(j)));
    };

    let busy = false;
    const poll = async () => {
      if (busy) return;
      busy = true;
      try {
        const r = await api('/v1/jobs', { signal: pg.signal });
        if (!pg.alive) return;
        if (!r.ok || !isObj(r.data)) {
          setText(note, 'Could not list the jobs: ' + errorText(r));
          note.hidden = false;
          return;
        }
        const all = arr(r.data.jobs).filter((j) => isObj(j) && isStr(j.id));
        await ensureSovereigns(pg, all.map((j) => j.sovereign_id));
        if (!pg.alive) return;
        const jobs = all
          .map((j, i) => [j, i])
          .filter(([j]) => !filter || j.status === filter)
          .sort((a, b) => ((ms(b[0].created_at) || 0) - (ms(a[0].created_at) || 0)) || (b[1] - a[1]))
          .map(([j]) => j);
        reconcile(tbody, jobs, (j) => j.id, createRow, updateRow);
        setText(count, jobs.length + (filter ? ' of ' + all.length : '') + (all.length === 1 ? ' job' : ' jobs'));
        note.hidden = jobs.length > 0;
        if (!jobs.length) setText(note, filter ? 'No ' + filter + ' jobs.' : 'No jobs yet.');
      } catch (e) {
        if (!quiet(e) && pg.alive) {
          setText(note, 'Could not reach the daemon; retrying.');
          note.hidden = false;
        }
      } finally {
        busy = false;
      }
    };
    poll();
    pg.every(JOBS_POLL_MS, poll);
  }

  // ===== confirmation dialog =====

  function buildDialog() {
    const title = h('h2', { id: 'confirm-title' }, 'Confirm');
    const text = h('div', { id: 'confirm-text' });
    const reasonLabel = h('label', { for: 'confirm-reason', class: 'reason-label' }, 'Reason (required): why is skipping safe?');
    const reason = h('textarea', { id: 'confirm-reason', rows: '4', maxlength: '2000' });
    const ok = h('button', { id: 'confirm-ok', type: 'button', class: 'danger' }, 'Confirm');
    const cancel = h('button', { id: 'confirm-cancel', type: 'button' }, 'Cancel');
    const el = h('dialog', { id: 'confirm', 'aria-labelledby': 'confirm-title' },
      title, text, reasonLabel, reason, h('div', { class: 'dialog-actions' }, cancel, ok));
    let resolve = null;
    let needsReason = false;
    const finish = (v) => {
      const r = resolve;
      resolve = null;
      if (el.open) el.close();
      if (r) r(v);
    };
    const sync = () => { ok.disabled = needsReason && reason.value.trim() === ''; };
    reason.addEventListener('input', sync);
    ok.addEventListener('click', () => {
      if (ok.disabled) return;
      finish({ reason: reason.value });
    });
    cancel.addEventListener('click', () => finish(null));
    // A close event is queued: ignore it if the dialog opened again meanwhile.
    el.addEventListener('close', () => { if (!el.open) finish(null); });
    el.addEventListener('cancel', () => finish(null));

    /** Opens the dialog; resolves to {reason} on OK, null otherwise. */
    function ask(o) {
      if (resolve) finish(null);
      setText(title, o.title);
      text.replaceChildren();
      append(text, [o.text]);
      needsReason = !!o.needsReason;
      reason.value = '';
      reason.hidden = !needsReason;
      reasonLabel.hidden = !needsReason;
      setText(ok, o.ok || 'Confirm');
      ok.className = o.danger === false ? 'primary' : 'danger';
      sync();
      return new Promise((res) => {
        resolve = res;
        el.showModal();
        (needsReason ? reason : cancel).focus();
      });
    }
    return { el, ask };
  }

  // ===== verbs =====

  const code = (s) => h('code', null, str(s));

  const VERBS = {
    retry: {
      label: 'Retry failed steps', path: 'retry', body: () => ({}),
      text: () => ['Re-run every failed step of this job (while rolling back: every failed undo).'],
    },
    'retry-step': {
      label: 'Retry step', path: 'retry', body: (t) => ({ step: t.step }),
      text: (t) => ['Re-run step ', code(t.step), '.'],
    },
    'retry-phase': {
      label: 'Retry phase', path: 'retry', body: (t) => ({ phase: t.phase }),
      text: (t) => ['Re-run every step of phase ', code(t.phase), ', including the ones that succeeded (steps are idempotent).'],
    },
    skip: {
      label: 'Skip step', path: 'skip', body: (t, reason) => ({ step: t.step, reason }), needsReason: true,
      text: (t) => ['Mark step ', code(t.step), ' as done by hand. It records no output, so later steps that read it fail, and a rollback does not undo it. Skip only work you did yourself. The job then continues.'],
    },
    resume: {
      label: 'Resume', path: 'resume', body: () => ({}), danger: false,
      text: () => ['Continue the paused job: the failed steps (or the failed undo) run again.'],
    },
    abandon: {
      label: 'Abandon', path: 'abandon', body: () => ({}),
      text: () => ['Stop the job where it is and undo nothing. The Sovereign is marked failed and its cloud objects stay until it is destroyed.'],
    },
    cancel: {
      label: 'Cancel (roll back)', path: 'cancel', body: () => ({}),
      text: () => ['Stop the job and roll it back: everything that ran is undone, then the job ends cancelled.'],
    },
  };

  /** The verbs that make sense for a job, with their target step. */
  function verbsFor(d) {
    const st = d.status;
    const failing = (isObj(d.pause) && isStr(d.pause.step) && d.pause.step) ||
      (isObj(d.error) && isStr(d.error.step) && d.error.step) || null;
    const t = { step: failing, phase: failing && failing.includes('/') ? failing.split('/')[0] : null };
    const v = [];
    if (st === 'paused' || st === 'failed') {
      v.push('retry');
      if (t.step) v.push('retry-step');
      if (t.phase) v.push('retry-phase');
    }
    if (st === 'paused') {
      if (t.step) v.push('skip');
      v.push('resume', 'abandon');
    }
    if ((st === 'pending' || st === 'running' || st === 'paused') && d.mode !== 'unwinding') v.push('cancel');
    return { verbs: v, target: t };
  }

  function showOutcome(el, ok, parts) {
    setAttr(el, 'data-outcome', ok ? 'ok' : 'error');
    el.replaceChildren();
    append(el, parts);
  }

  // ===== job page =====

  function pageJob(pg, main, jobId) {
    document.title = 'Job ' + shortId(jobId) + ' · Catalyst-Zero';
    const base = '/v1/jobs/' + encodeURIComponent(jobId);

    // --- skeleton
    const status = badge('…', 'job-status');
    const kind = h('span', { id: 'job-kind' });
    const sovLink = h('a', { id: 'job-sovereign' }, '…');
    const mode = h('span', { id: 'job-mode' });
    const created = h('span', { id: 'job-created' });
    const duration = h('span', { id: 'job-duration' });
    const verbs = h('div', { id: 'verbs', class: 'verbs' });
    const outcome = h('p', { id: 'verb-outcome', class: 'outcome', role: 'status' });
    const pauseSlot = h('div', { class: 'slot' });
    const errorSlot = h('div', { class: 'slot' });
    const phases = h('div', { id: 'phases', class: 'timeline' });
    const nodes = h('div', { id: 'nodes', class: 'nodes' });
    const nodesNote = h('p', { class: 'empty' }, 'No servers yet.');
    const cost = h('section', { id: 'cost', class: 'card cost' });
    const audit = h('ol', { id: 'audit', class: 'audit' });
    const auditNote = h('p', { class: 'empty' }, 'No entries.');
    const log = createEventLog(pg, jobId, {
      onEvent: () => scheduleRefresh(),
      refresh: () => refresh(),
    });
    const notFound = h('div', { class: 'slot' });

    const head = h('div', { class: 'page-head job-head' },
      h('div', { class: 'crumbs' }, h('a', { href: '#/jobs' }, 'Jobs'), ' / ', h('span', { class: 'mono', title: jobId }, jobId)),
      h('div', { class: 'title-row' },
        h('h1', null, 'Job ', h('span', { class: 'mono' }, shortId(jobId))),
        status),
      h('dl', { class: 'facts' },
        fact('Kind', kind),
        fact('Sovereign', sovLink),
        fact('Mode', mode),
        fact('Created', created),
        fact('Duration', duration)),
      h('div', { class: 'actions' }, verbs, outcome));

    main.append(notFound, head, pauseSlot, errorSlot,
      h('div', { class: 'columns' },
        h('div', { class: 'col-main' },
          h('section', { class: 'card' }, h('h2', null, 'Stages'), phases),
          h('section', { class: 'card' }, h('h2', null, 'Nodes'), nodesNote, nodes),
          h('section', { class: 'card events-card' },
            h('div', { class: 'card-head' }, h('h2', null, 'Events'), log.stateEl),
            log.olderSlot, log.list, log.newestSlot)),
        h('div', { class: 'col-side' },
          cost,
          h('section', { class: 'card' }, h('h2', null, 'Audit trail'), auditNote, audit))));
    renderCost(cost, null);

    // --- detail refresh: debounced on events, single-flight
    let detail = null;
    let refreshing = false;
    let dirty = false;
    let refreshTimer = 0;
    let started = false;

    function scheduleRefresh() {
      if (refreshTimer) return;
      refreshTimer = pg.timeout(() => {
        refreshTimer = 0;
        refresh();
      }, 250);
    }

    async function refresh() {
      if (refreshing) {
        dirty = true;
        return;
      }
      refreshing = true;
      try {
        await load(pg, base, notFound, 'job', jobId, apply);
      } finally {
        refreshing = false;
        if (dirty && pg.alive) {
          dirty = false;
          scheduleRefresh();
        }
      }
    }

    let verbsKey = null;
    let pauseKey = null;
    let errorKey = null;
    let costKey = null;
    let sovFetched = false;

    function apply(d) {
      detail = d;
      setBadge(status, d.status);
      setText(kind, str(d.kind));
      setText(mode, str(d.mode));
      tick();
      setAttr(sovLink, 'href', sovHref(d.sovereign_id));
      setText(sovLink, sovLabel(d.sovereign_id));
      if (!sovFetched && isStr(d.sovereign_id)) {
        sovFetched = true;
        ensureSovereigns(pg, [d.sovereign_id]).then(() => {
          if (pg.alive && detail) setText(sovLink, sovLabel(detail.sovereign_id));
        }, () => {});
      }

      // verbs
      const vf = verbsFor(d);
      const vk = JSON.stringify(vf);
      if (vk !== verbsKey) {
        verbsKey = vk;
        verbs.replaceChildren(...vf.verbs.map((name) => {
          const b = h('button', { type: 'button', 'data-verb': name, class: name === 'resume' ? 'primary' : name === 'abandon' || name === 'cancel' ? 'danger-outline' : '' }, VERBS[name].label);
          b.addEventListener('click', () => runVerb(name, vf.target));
          return b;
        }));
      }

      // pause card
      const paused = d.status === 'paused' && isObj(d.pause);
      const pk = paused ? JSON.stringify(d.pause) : null;
      if (pk !== pauseKey) {
        pauseKey = pk;
        pauseSlot.replaceChildren();
        if (paused) pauseSlot.append(failureCard(pg, 'pause', d.pause, true));
      }
      const failed = d.status === 'failed' && isObj(d.error);
      const ek = failed ? JSON.stringify(d.error) : null;
      if (ek !== errorKey) {
        errorKey = ek;
        errorSlot.replaceChildren();
        if (failed) errorSlot.append(failureCard(pg, 'job-error', d.error, false));
      }

      // stages
      const pausedStep = d.status === 'paused' && isObj(d.pause) ? d.pause.step : null;
      const progress = new Map(arr(d.progress).filter(isObj).map((p) => [p.phase, p]));
      reconcile(phases, arr(d.phases).filter((p) => isObj(p) && isStr(p.phase)), (p) => p.phase, createPhase,
        (n, p) => updatePhase(n, p, progress.get(p.phase), pausedStep));
      const cur = arr(d.phases).find((p) => isObj(p) && ['running', 'paused', 'failed', 'undoing'].includes(p.state));
      if (cur) S.phaseCache.set(jobId, str(cur.phase));

      // nodes
      const ns = arr(d.nodes).filter((n) => isObj(n) && n.name !== undefined);
      nodesNote.hidden = ns.length > 0;
      reconcile(nodes, ns, (n) => str(n.name), createNode, updateNode);

      // cost
      const ck = JSON.stringify(d.cost === undefined ? null : d.cost);
      if (ck !== costKey) {
        costKey = ck;
        renderCost(cost, isObj(d.cost) ? d.cost : null);
      }

      // audit
      const entries = arr(d.audit).filter(isObj);
      auditNote.hidden = entries.length > 0;
      reconcile(audit, entries.slice().reverse(), (a) => str(a.id), createAudit, updateAudit);

      // the event stream
      const last = Number.isSafeInteger(d.last_event_id) ? d.last_event_id : null;
      if (!started) {
        started = true;
        log.start(last, TERMINAL.has(d.status));
      } else {
        log.sync(last, TERMINAL.has(d.status));
      }
    }

    async function runVerb(name, target) {
      const v = VERBS[name];
      if (!detail) return;
      const ans = await S.shell.ask({
        title: v.label + '?',
        text: [v.text(target), ' ', h('span', { class: 'muted' }, 'Job ', code(jobId), '.')],
        ok: v.label,
        needsReason: v.needsReason,
        danger: v.danger,
      });
      if (!ans || !pg.alive) return;
      const buttons = Array.from(verbs.querySelectorAll('button'));
      for (const b of buttons) b.disabled = true;
      showOutcome(outcome, true, [v.label + ': sending…']);
      try {
        const r = await api(base + '/' + v.path, { method: 'POST', body: v.body(target, ans.reason), signal: pg.signal });
        if (!pg.alive) return;
        if (r.ok) {
          const st = isObj(r.data) && r.data.status ? str(r.data.status) : '?';
          showOutcome(outcome, true, [v.label + ' accepted: the job is now ' + st + '.']);
        } else {
          showOutcome(outcome, false, [v.label + ' refused: ' + errorText(r)]);
        }
      } catch (e) {
        if (quiet(e) || !pg.alive) return;
        showOutcome(outcome, false, [v.label + ' failed: the daemon did not answer.']);
      } finally {
        if (pg.alive) for (const b of buttons) b.disabled = false;
      }
      verbsKey = null;
      refresh();
    }

    // --- live times: running steps, the job's age and duration
    function tick() {
      if (!detail) return;
      setText(created, fmtAge(detail.created_at));
      setTitle(created, fmtDateTime(detail.created_at));
      setText(duration, fmtDuration(jobDuration(detail)));
      for (const c of phases.querySelectorAll('.chip[data-state="running"], .chip[data-state="undoing"]')) {
        if (Number.isFinite(c._since)) setText(c._dur, fmtDuration(Date.now() - c._since));
      }
    }
    pg.every(1000, tick);
    // A finished job may be retried by someone else: look now and then.
    pg.every(ENDED_POLL_MS, () => { if (log.state === 'ended') refresh(); });
    // Until the first read succeeds (daemon restarting, network), try again.
    pg.every(RECONNECT_POLL_MS, () => { if (!started) refresh(); });

    refresh();
  }

  // --- failure card (#pause and #job-error)

  function failureCard(pg, id, block, isPause) {
    const e = isObj(block.error) ? block.error : block;
    const step = str(block.step);
    const title = isPause
      ? (block.unwinding ? 'Paused while rolling back: an operator is needed' : 'Paused: an operator is needed')
      : 'Failed';
    const cause = [e.system, e.op, e.cause].filter((x) => x !== undefined && x !== null && x !== '').map(str).join(' · ');
    const runbook = h('div', { class: 'runbook' });
    const card = h('section', { id, class: 'card failure', 'data-kind': isPause ? 'pause' : 'failed' },
      h('h2', null, title),
      h('dl', { class: 'facts' },
        fact('Step', h('code', { class: 'failing-step' }, step || '—')),
        fact('Class', h('span', { class: 'error-class', 'data-class': str(e.class) }, str(e.class) || '—')),
        cause ? h('div', null, h('dt', null, 'Cause'), h('dd', { class: 'error-cause' }, cause)) : null),
      h('div', { class: 'failure-body' },
        h('div', { class: 'failure-text' },
          h('p', { class: 'error-message' }, str(e.message) || '(no message)'),
          h('div', { class: 'remediation-box' }, h('h3', null, 'Remediation'), h('p', { class: 'remediation' }, str(e.remediation) || '—'))),
        h('div', { class: 'runbook-box' },
          h('h3', null, 'Runbook', isStr(e.runbook) ? [' ', h('span', { class: 'muted mono small' }, e.runbook)] : null),
          runbook)));
    if (isStr(e.runbook)) loadRunbook(pg, runbook, e.runbook);
    else runbook.textContent = 'No runbook for this error.';
    return card;
  }

  const runbookCache = new Map(); // file name → html (our own, server-rendered)

  async function loadRunbook(pg, container, path) {
    const name = String(path).split('/').pop().split('#')[0];
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*\.md$/.test(name)) {
      setText(container, 'No runbook page named ' + str(path) + '.');
      return;
    }
    container.setAttribute('data-runbook', name);
    if (!container._wired) {
      container._wired = true;
      container.addEventListener('click', (ev) => runbookClick(pg, container, ev));
    }
    if (runbookCache.has(name)) {
      setRunbook(container, runbookCache.get(name));
      return;
    }
    container.textContent = 'Loading the runbook…';
    try {
      const r = await fetch('/ui/runbooks/' + encodeURIComponent(name), {
        credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'text/html' }, signal: pg.signal,
      });
      if (!pg.alive) return;
      if (r.status === 401) {
        expire('Your session ended (expired or revoked). Sign in again.');
        return;
      }
      const ct = r.headers.get('content-type') || '';
      if (!r.ok || !ct.includes('text/html')) {
        setText(container, 'The runbook ' + name + ' is not available (HTTP ' + r.status + ').');
        return;
      }
      const html = await r.text();
      if (!pg.alive) return;
      if (runbookCache.size > 30) runbookCache.clear();
      runbookCache.set(name, html);
      setRunbook(container, html);
    } catch (e) {
      if (!quiet(e) && pg.alive) setText(container, 'The runbook could not be loaded.');
    }
  }

  function setRunbook(container, html) {
    // The one innerHTML of this file: a fragment the daemon renders from this
    // repository's own runbooks (raw HTML escaped server-side), never API data.
    container.innerHTML = html;
    // Keep the page's ids unique: the fragment's ids (heading anchors) get a
    // prefix, and its in-page links follow.
    for (const n of container.querySelectorAll('[id]')) n.id = 'rb-' + n.id;
    for (const a of container.querySelectorAll('a[href^="#"]')) a.setAttribute('data-anchor', a.getAttribute('href').slice(1));
  }

  /** A heading's anchor as GitHub makes it (`What to do` → `what-to-do`). */
  function slug(text) {
    return text.trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replace(/ /g, '-');
  }

  function scrollToAnchor(container, anchor) {
    let frag = anchor;
    try { frag = decodeURIComponent(anchor); } catch (_) { /* as is */ }
    let t = container.querySelector('[id="' + CSS.escape('rb-' + frag) + '"]');
    if (!t) t = Array.from(container.querySelectorAll('h1, h2, h3, h4, h5, h6')).find((x) => slug(x.textContent || '') === frag.toLowerCase());
    if (t) t.scrollIntoView({ behavior: 'smooth', block: 'start' });
  }

  function runbookClick(pg, container, ev) {
    const a = ev.target instanceof Element ? ev.target.closest('a') : null;
    if (!a || !container.contains(a)) return;
    const href = a.getAttribute('href') || '';
    const anchor = a.getAttribute('data-anchor');
    if (anchor !== null) {
      ev.preventDefault();
      scrollToAnchor(container, anchor);
      return;
    }
    // Another runbook (the daemon rewrites those links to /ui/runbooks/…).
    const m = /^(?:\/ui\/runbooks\/|\.\/|\.\.\/runbooks\/)?([A-Za-z0-9][A-Za-z0-9._-]*\.md)(?:#(.*))?$/.exec(href);
    if (m) {
      ev.preventDefault();
      loadRunbook(pg, container, m[1]).then(() => {
        if (m[2] && pg.alive) scrollToAnchor(container, m[2]);
        else if (pg.alive) container.scrollIntoView({ behavior: 'smooth', block: 'start' });
      });
      return;
    }
    if (/^https?:\/\//i.test(href)) {
      a.target = '_blank';
      a.rel = 'noopener noreferrer';
      return;
    }
    // Nothing else is served by the daemon.
    ev.preventDefault();
  }

  // --- stages

  function createPhase() {
    const n = h('section', { class: 'phase' });
    n._name = h('h3', { class: 'phase-name' });
    n._state = h('span', { class: 'badge' });
    n._progress = h('span', { class: 'phase-progress muted' });
    n._bar = h('span', { class: 'bar-fill' });
    n._chips = h('div', { class: 'chips' });
    n.append(h('div', { class: 'phase-dot' }),
      h('div', { class: 'phase-body' },
        h('div', { class: 'phase-head' }, n._name, n._state, h('span', { class: 'bar' }, n._bar), n._progress),
        n._chips));
    return n;
  }

  function updatePhase(n, p, prog, pausedStep) {
    setAttr(n, 'data-phase', str(p.phase));
    setAttr(n, 'data-state', str(p.state));
    setText(n._name, str(p.phase));
    setBadge(n._state, p.state);
    const steps = arr(p.steps).filter((s) => isObj(s) && isStr(s.step));
    const done = prog && Number.isFinite(prog.done) ? prog.done : steps.filter((s) => s.state === 'succeeded' || s.state === 'skipped').length;
    const total = prog && Number.isFinite(prog.total) ? prog.total : steps.length;
    setText(n._progress, done + '/' + total);
    const pct = total > 0 ? Math.round((100 * done) / total) : 0;
    setAttr(n._bar, 'data-pct', String(Math.min(100, Math.max(0, Math.round(pct / 5) * 5))));
    reconcile(n._chips, steps, (s) => s.step, createChip, (c, s) => updateChip(c, s, pausedStep));
  }

  function createChip() {
    const c = h('span', { class: 'chip' });
    c._name = h('span', { class: 'step-name' });
    c._att = h('span', { class: 'attempts' });
    c._dur = h('span', { class: 'duration' });
    c.append(c._name, c._att, c._dur);
    return c;
  }

  function updateChip(c, s, pausedStep) {
    const state = pausedStep && pausedStep === s.step ? 'paused' : str(s.state);
    setAttr(c, 'data-step', s.step);
    setAttr(c, 'data-state', state);
    const short = s.step.includes('/') ? s.step.slice(s.step.indexOf('/') + 1) : s.step;
    setText(c._name, short);
    const attempts = Number.isFinite(s.attempts) ? s.attempts : 0;
    setText(c._att, attempts > 0 ? '×' + attempts : '');
    c._att.toggleAttribute('data-retried', attempts > 1);
    const started = ms(s.started_at);
    c._since = (s.state === 'running' || s.state === 'undoing') && Number.isFinite(started) ? started : NaN;
    let dur = '';
    if (Number.isFinite(s.elapsed_ms)) dur = fmtDuration(s.elapsed_ms);
    else if (Number.isFinite(c._since)) dur = fmtDuration(Date.now() - c._since);
    setText(c._dur, dur);
    const lines = [s.step + ' · ' + state];
    if (s.action) lines.push('action: ' + str(s.action));
    if (attempts) lines.push('attempts: ' + attempts);
    if (s.started_at) lines.push('started: ' + fmtDateTime(s.started_at));
    if (s.finished_at) lines.push('finished: ' + fmtDateTime(s.finished_at));
    if (isObj(s.error)) lines.push('error [' + str(s.error.class) + ']: ' + clip(str(s.error.message), 400));
    if (isObj(s.skipped)) lines.push('skipped by ' + str(s.skipped.by) + ': ' + clip(str(s.skipped.reason), 400));
    if (s.released_by) lines.push('released by ' + str(s.released_by));
    setAttr(c, 'title', lines.map(shown).join('\n'));
  }

  // --- nodes

  function createNode() {
    const n = h('div', { class: 'node' });
    n._name = h('span', { class: 'node-name mono' });
    n._role = h('span', { class: 'node-role' });
    n._loc = h('span', { class: 'node-loc muted' });
    n._pips = NODE_STAGES.map((s) => h('li', { class: 'pip', 'data-pip': s }, h('span', null, s)));
    n._addr = h('div', { class: 'node-addr mono' });
    n.append(h('div', { class: 'node-head' }, n._name, n._role, n._loc),
      h('ol', { class: 'stages', 'aria-label': 'created, reachable, joined, ready' }, n._pips),
      n._addr);
    return n;
  }

  function updateNode(n, node) {
    setAttr(n, 'data-node', str(node.name));
    setAttr(n, 'data-stage', str(node.stage));
    n.toggleAttribute('data-failed', node.failed === true);
    setText(n._name, str(node.name));
    const role = str(node.role);
    setText(n._role, role === 'control-plane' ? 'control plane' : role);
    setAttr(n._role, 'data-role', role);
    setText(n._loc, str(node.location));
    const idx = NODE_STAGES.indexOf(node.stage);
    n._pips.forEach((p, i) => setAttr(p, 'data-on', i <= idx ? 'true' : 'false'));
    const addr = [];
    if (isStr(node.ipv4)) addr.push(node.ipv4);
    if (isStr(node.private_ip)) addr.push('private ' + node.private_ip);
    setText(n._addr, addr.length ? addr.join(' · ') : 'no address yet');
    setTitle(n, str(node.name) + ': ' + str(node.stage) + (node.failed ? ' (failed)' : ''));
  }

  // --- cost

  function money(v, cur) {
    if (typeof v === 'number' && Number.isFinite(v)) return v.toFixed(2) + (cur ? ' ' + cur : '');
    return str(v);
  }

  function renderCost(card, c) {
    card.replaceChildren(h('h2', null, 'Cost preview'));
    if (!c) {
      card.setAttribute('data-empty', '');
      card.append(h('p', { class: 'empty' }, 'Not computed yet.'));
      return;
    }
    card.removeAttribute('data-empty');
    const cur = isStr(c.currency) ? c.currency : '';
    const totals = h('div', { class: 'cost-totals' });
    if (c.monthly !== undefined) totals.append(h('div', null, h('span', { class: 'big' }, money(c.monthly, cur)), h('span', { class: 'muted' }, ' / month')));
    if (c.hourly !== undefined) totals.append(h('div', null, h('span', { class: 'mid' }, money(c.hourly, cur)), h('span', { class: 'muted' }, ' / hour')));
    card.append(totals);
    const regions = arr(c.regions).filter(isObj);
    const each = (v) => (v !== undefined ? h('span', { class: 'muted' }, ' · ' + money(v, cur) + ' each') : null);
    const known = new Set(['location', 'control_plane', 'workers', 'load_balancer', 'hourly_eur', 'monthly_eur']);
    for (const r of regions) {
      const line = (label, g) => {
        if (g === undefined) return null;
        if (!isObj(g)) return h('li', null, label + ' ' + clip(str(g), 200));
        if (g.count !== undefined) return h('li', null, h('span', { class: 'mono' }, str(g.count) + ' × ' + str(g.sku)), ' ' + label, each(g.monthly_eur));
        return h('li', null, h('span', { class: 'mono' }, str(g.type || g.sku)), ' ' + label, each(g.monthly_eur));
      };
      card.append(h('div', { class: 'cost-region', 'data-location': str(r.location) },
        h('div', { class: 'cost-region-head' },
          h('span', { class: 'mono strong' }, str(r.location) || '—'),
          h('span', { class: 'num' }, money(r.monthly_eur, cur), h('span', { class: 'muted' }, ' / month'))),
        h('ul', { class: 'cost-lines' },
          line('control plane', r.control_plane),
          line('workers', r.workers),
          line('load balancer', r.load_balancer),
          Object.keys(r).filter((k) => !known.has(k)).map((k) => h('li', { class: 'muted' }, k + ': ' + clip(str(r[k]), 200))))));
    }
    const rest = Object.keys(c).filter((k) => !['currency', 'monthly', 'hourly', 'regions'].includes(k));
    if (rest.length) {
      card.append(h('dl', { class: 'kv' }, rest.map((k) => fact(k, clip(str(c[k]), 300)))));
    }
  }

  // --- audit

  function createAudit() {
    const li = h('li', { class: 'audit-entry' });
    li._at = h('time', { class: 'muted small' });
    li._actor = h('span', { class: 'actor' });
    li._action = h('code', { class: 'action' });
    li._detail = h('div', { class: 'detail small muted' });
    li.append(h('div', { class: 'audit-line' }, li._actor, li._action, li._at), li._detail);
    return li;
  }

  function updateAudit(li, a) {
    setAttr(li, 'data-id', str(a.id));
    setText(li._at, fmtDateTime(a.at));
    setTitle(li._at, str(a.at));
    setText(li._actor, str(a.actor));
    setText(li._action, str(a.action));
    li.toggleAttribute('data-refused', /\.refused$/.test(str(a.action)));
    const d = a.detail;
    let text = '';
    if (isObj(d)) text = Object.keys(d).map((k) => k + ': ' + str(d[k])).join(' · ');
    else if (d !== null && d !== undefined) text = str(d);
    setText(li._detail, clip(text, 400));
    li._detail.hidden = !text;
  }

  // ===== event log =====

  /** The one-line summary of an event body. */
  function summarize(e) {
    const g = (k) => (e[k] === undefined || e[k] === null ? '' : str(e[k]));
    const parts = (...xs) => xs.filter((x) => x !== '').join(' ');
    const errText = (er) => (isObj(er) ? '[' + str(er.class) + '] ' + str(er.message) : str(er));
    let s;
    switch (e.kind) {
      case 'job':
        s = parts(g('status'), e.mode ? '(' + g('mode') + ')' : '',
          isObj(e.pause) && e.pause.step ? 'paused at ' + str(e.pause.step) + ': ' + errText(e.pause.error) : '',
          isObj(e.error) && e.error.step ? 'failed at ' + str(e.error.step) + ': ' + errText(e.error.error) : '');
        break;
      case 'phase':
        s = parts(g('phase'), '→', g('state'));
        break;
      case 'step':
        s = parts(g('step'), g('state'), e.attempt !== undefined ? '#' + g('attempt') : '',
          Number.isFinite(e.elapsed_ms) ? fmtDuration(e.elapsed_ms) : '',
          Number.isFinite(e.retry_in_ms) ? 'retry in ' + fmtDuration(e.retry_in_ms) : '',
          e.error !== undefined ? errText(e.error) : '');
        break;
      case 'wait':
        s = parts(g('state'), g('reason'),
          Number.isFinite(e.bound_s) ? '(bound ' + g('bound_s') + ' s)' : '',
          Number.isFinite(e.elapsed_s) ? 'after ' + g('elapsed_s') + ' s' : '',
          Number.isFinite(e.elapsed_ms) ? 'after ' + fmtDuration(e.elapsed_ms) : '');
        break;
      case 'tofu':
        s = parts(g('type'), g('action'), g('address'), Number.isFinite(e.elapsed_s) ? e.elapsed_s + ' s' : '',
          e.add !== undefined ? '+' + g('add') + ' ~' + g('change') + ' -' + g('destroy') : '', g('message'));
        break;
      case 'cost':
        s = parts(money(e.monthly, str(e.currency || '')) + '/month', money(e.hourly, str(e.currency || '')) + '/hour',
          Array.isArray(e.regions) ? '(' + e.regions.length + ' region' + (e.regions.length === 1 ? '' : 's') + ')' : '');
        break;
      case 'kit':
        s = parts(g('component') || parts(g('kind'), g('name')), g('state'), e.condition ? g('condition') + ':' : '', g('message'));
        break;
      case 'dns':
        s = parts(e.registrar ? g('registrar') + ':' : '', g('message'));
        break;
      case 'ssh':
        s = parts(e.host ? g('host') + ':' : '', g('message'));
        break;
      case 'operator':
        s = parts(g('action'), 'by', g('actor'), isObj(e.detail) ? Object.keys(e.detail).map((k) => k + '=' + str(e.detail[k])).join(' ') : g('detail'));
        break;
      case 'end':
        s = g('status');
        break;
      default:
        if (e.message !== undefined) s = g('message');
        else {
          s = Object.keys(e).filter((k) => !['id', 'at', 'kind', 'phase', 'step'].includes(k))
            .map((k) => k + '=' + clip(str(e[k]), 120)).join(' ');
        }
    }
    if (e.kind !== 'step' && e.kind !== 'phase' && isStr(e.step)) s = '[' + e.step + '] ' + s;
    return clip(s, 600);
  }

  function eventRow(e) {
    const row = h('div', { class: 'event', 'data-id': String(e.id), 'data-kind': str(e.kind) },
      h('span', { class: 'ev-id' }, String(e.id)),
      h('time', { class: 'ev-at', title: str(e.at) }, fmtClock(e.at)),
      h('span', { class: 'ev-kind' }, str(e.kind)),
      h('span', { class: 'ev-sum' }, summarize(e)));
    if (e.kind === 'step' || e.kind === 'job') setAttr(row, 'data-state', str(e.state || e.status));
    row.setAttribute('title', shown(clip(str(e), 2000)));
    return row;
  }

  /**
   * A job's event log: the newest events from a JSON page, then the SSE
   * stream, with no duplicate (ids at or below the last seen are dropped)
   * and no gap (a jump in ids is read back from the JSON pages first).
   * At most MAX_ROWS rows are in the DOM; "Load older" pages back.
   */
  function createEventLog(pg, jobId, hooks) {
    const base = '/v1/jobs/' + encodeURIComponent(jobId) + '/events';
    const stateEl = h('span', { id: 'stream-state', class: 'stream-state', 'data-state': 'connecting', role: 'status' }, 'connecting');
    const list = h('div', { id: 'events', class: 'event-log', role: 'log', 'aria-label': 'Event log' });
    const olderSlot = h('div', { class: 'older-slot' });
    const newestSlot = h('div', { class: 'newest-slot' });
    let olderBtn = null;
    let newestBtn = null;

    let state = 'connecting';
    let lastSeen = 0; // every event up to this id has been accepted
    const queue = new Map(); // id → event, ids > lastSeen + 1 waiting for the gap
    let filling = false;
    let fillTarget = 0;
    let fillRetry = 0;
    let es = null;
    let wantStream = false;
    let backoff = 1000;
    let reconnectTimer = 0;
    let pollTimer = 0;
    let catchUpTimer = 0;
    let renderBuf = [];
    let flushTimer = 0;
    let detached = false; // the newest rows were dropped for older ones
    let rebuilding = false;
    let loadingOlder = false;

    pg.onLeave(() => closeES());

    function setState(s) {
      state = s;
      stateEl.setAttribute('data-state', s);
      stateEl.textContent = s;
    }

    function closeES() {
      if (es) {
        es.close();
        es = null;
      }
    }

    async function fetchPage(after, limit) {
      const r = await api(base + '?format=json&after=' + after + '&limit=' + limit, { signal: pg.signal });
      if (!r.ok || !isObj(r.data)) throw new Error('events page: HTTP ' + r.status);
      return arr(r.data.events).filter((e) => isObj(e) && Number.isSafeInteger(e.id)).sort((a, b) => a.id - b.id);
    }

    // --- ordering

    function accepted(e) {
      if (!detached || rebuilding) {
        renderBuf.push(e);
        if (renderBuf.length > MAX_ROWS + 200) renderBuf = renderBuf.slice(renderBuf.length - MAX_ROWS);
        if (!flushTimer) flushTimer = pg.timeout(flush, 40);
      }
      if (e.kind === 'end' && wantStream) markEnded();
      hooks.onEvent(e);
    }

    function drainQueue() {
      while (queue.has(lastSeen + 1)) {
        const e = queue.get(lastSeen + 1);
        queue.delete(lastSeen + 1);
        lastSeen = e.id;
        accepted(e);
      }
    }

    function checkGap() {
      if (!queue.size || filling) return;
      let min = Infinity;
      for (const k of queue.keys()) if (k < min) min = k;
      if (min > lastSeen + 1) fill(min - 1);
    }

    function accept(e) {
      if (e.id <= lastSeen) return; // seen already
      if (queue.size >= 5000) queue.clear(); // far behind: the gap fill reads them back
      queue.set(e.id, e);
      drainQueue();
      checkGap();
    }

    /** Reads events after lastSeen up to `target` from the JSON pages. */
    async function fill(target) {
      if (Number.isSafeInteger(target) && target > fillTarget) fillTarget = target;
      if (filling || !pg.alive) return;
      filling = true;
      let stalled = false;
      try {
        while (pg.alive && lastSeen < fillTarget) {
          const after = lastSeen;
          const evs = await fetchPage(after, Math.min(1000, fillTarget - after));
          if (!pg.alive) return;
          for (const e of evs) if (e.id > lastSeen && !queue.has(e.id)) queue.set(e.id, e);
          drainQueue();
          if (lastSeen === after) {
            stalled = true;
            break;
          }
        }
      } catch (e) {
        if (quiet(e)) return;
        stalled = true;
      } finally {
        filling = false;
      }
      if (!pg.alive) return;
      if (stalled) {
        fillTarget = lastSeen;
        if (queue.size && !fillRetry) fillRetry = pg.timeout(() => { fillRetry = 0; checkGap(); }, 2000);
        return;
      }
      checkGap();
    }

    // --- rendering

    function nearBottom() {
      return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    }

    function firstShown() {
      if (list.firstElementChild) return Number(list.firstElementChild.getAttribute('data-id'));
      if (renderBuf.length) return renderBuf[0].id;
      return lastSeen + 1;
    }

    function flush() {
      flushTimer = 0;
      if (rebuilding || !renderBuf.length) return;
      if (detached) {
        renderBuf = [];
        return;
      }
      const stick = nearBottom() || !list.firstElementChild;
      const frag = document.createDocumentFragment();
      const take = renderBuf.length > MAX_ROWS ? renderBuf.slice(renderBuf.length - MAX_ROWS) : renderBuf;
      for (const e of take) frag.append(eventRow(e));
      renderBuf = [];
      list.append(frag);
      let extra = list.childElementCount - MAX_ROWS;
      if (extra > 0) {
        // Rows leave from the top: keep what the reader looks at in place.
        const top0 = list.scrollTop;
        const h0 = list.scrollHeight;
        while (extra-- > 0) list.firstElementChild.remove();
        if (!stick) list.scrollTop = Math.max(0, top0 - (h0 - list.scrollHeight));
      }
      if (stick) list.scrollTop = list.scrollHeight;
      buttons();
    }

    function buttons() {
      const older = !detached ? firstShown() > 1 : list.firstElementChild && firstShown() > 1;
      if (older && !olderBtn) {
        olderBtn = h('button', { id: 'events-older', type: 'button', class: 'small-btn' }, 'Load older');
        olderBtn.addEventListener('click', loadOlder);
        olderSlot.append(olderBtn);
      } else if (!older && olderBtn) {
        olderBtn.remove();
        olderBtn = null;
      }
      if (olderBtn) olderBtn.disabled = loadingOlder;
      if (detached && !newestBtn) {
        newestBtn = h('button', { id: 'events-newest', type: 'button', class: 'small-btn' }, 'Show the newest events');
        newestBtn.addEventListener('click', showNewest);
        newestSlot.append(h('span', { class: 'muted small' }, 'Newer events are hidden while you read older ones. '), newestBtn);
      } else if (!detached && newestBtn) {
        newestSlot.replaceChildren();
        newestBtn = null;
      }
    }

    async function loadOlder() {
      if (loadingOlder) return;
      const first = firstShown();
      if (!(first > 1)) return;
      loadingOlder = true;
      buttons();
      try {
        const after = Math.max(0, first - 1 - OLDER_PAGE);
        const evs = await fetchPage(after, first - 1 - after);
        if (!pg.alive) return;
        if (firstShown() !== first) return; // moved meanwhile; the user may click again
        const rows = evs.filter((e) => e.id > after && e.id < first);
        if (!rows.length || rows[rows.length - 1].id !== first - 1) return;
        const frag = document.createDocumentFragment();
        for (const e of rows) frag.append(eventRow(e));
        const h0 = list.scrollHeight;
        const top0 = list.scrollTop;
        list.prepend(frag);
        list.scrollTop = top0 + (list.scrollHeight - h0);
        if (list.childElementCount + renderBuf.length > MAX_ROWS) {
          renderBuf = [];
          let extra = list.childElementCount - MAX_ROWS;
          while (extra-- > 0) list.lastElementChild.remove();
          detached = true;
        }
      } catch (e) {
        if (!quiet(e) && pg.alive) setTitle(olderSlot, 'Could not load older events.');
      } finally {
        loadingOlder = false;
        if (pg.alive) buttons();
      }
    }

    async function showNewest() {
      if (rebuilding) return;
      rebuilding = true;
      detached = false;
      renderBuf = [];
      list.replaceChildren();
      buttons();
      const upto = lastSeen;
      const after = Math.max(0, upto - INITIAL_EVENTS);
      try {
        if (upto > after) {
          const evs = await fetchPage(after, upto - after);
          if (!pg.alive) return;
          const frag = document.createDocumentFragment();
          for (const e of evs) if (e.id > after && e.id <= upto) frag.append(eventRow(e));
          list.prepend(frag);
        }
      } catch (e) {
        if (quiet(e)) return;
      } finally {
        rebuilding = false;
      }
      if (!pg.alive) return;
      flush();
      list.scrollTop = list.scrollHeight;
      buttons();
    }

    // --- the stream

    function onMessage(m) {
      let data = null;
      try { data = JSON.parse(m.data); } catch (_) { data = null; }
      if (!isObj(data)) return; // a later event shows the gap, and it is read back
      let id = data.id;
      if (!Number.isSafeInteger(id)) id = parseInt(m.lastEventId, 10);
      if (!Number.isSafeInteger(id)) return;
      data.id = id;
      if (!isStr(data.kind)) data.kind = m.type;
      if (data.kind === 'end') closeES(); // or EventSource reconnects; the state follows once it is in order
      accept(data);
    }

    function open() {
      closeES();
      pg.clear(reconnectTimer);
      reconnectTimer = 0;
      if (!pg.alive) return;
      wantStream = true;
      const src = new EventSource(base + '?after=' + lastSeen);
      es = src;
      const onMsg = (m) => { if (es === src) onMessage(m); };
      for (const k of EVENT_KINDS) src.addEventListener(k, onMsg);
      src.addEventListener('message', onMsg);
      src.addEventListener('open', () => {
        if (es !== src) return;
        backoff = 1000;
        stopPoll();
        setState('live');
      });
      src.addEventListener('error', () => {
        if (es !== src) return;
        closeES();
        lost();
      });
    }

    function lost() {
      if (!wantStream || !pg.alive) return;
      setState('reconnecting');
      if (!pollTimer) pollTimer = pg.every(RECONNECT_POLL_MS, hooks.refresh);
      hooks.refresh(); // a 401 signs out; a finished job ends the stream
      pg.clear(reconnectTimer);
      reconnectTimer = pg.timeout(() => {
        reconnectTimer = 0;
        if (wantStream) open();
      }, backoff);
      backoff = Math.min(backoff * 2, 5000);
    }

    function stopPoll() {
      pg.clear(pollTimer);
      pollTimer = 0;
    }

    function markEnded() {
      wantStream = false;
      closeES();
      pg.clear(reconnectTimer);
      reconnectTimer = 0;
      stopPoll();
      setState('ended');
    }

    /** First detail read: the newest events, then the stream. */
    async function start(lastEventId, terminal) {
      const last = Number.isSafeInteger(lastEventId) && lastEventId > 0 ? lastEventId : 0;
      lastSeen = Math.max(0, last - INITIAL_EVENTS);
      buttons();
      await fill(last);
      if (!pg.alive) return;
      buttons();
      if (terminal && lastSeen >= last) markEnded();
      else open();
    }

    /** Each later detail read. */
    function sync(lastEventId, terminal) {
      const last = Number.isSafeInteger(lastEventId) ? lastEventId : null;
      if (state === 'ended') {
        if (!terminal) {
          backoff = 1000;
          open();
        } else if (last !== null && last > lastSeen) fill(last);
      } else if (state === 'reconnecting' && terminal && last !== null) {
        if (lastSeen >= last) markEnded();
        else fill(last);
      } else if (last !== null && last > lastSeen && !catchUpTimer) {
        // Events of a kind this page does not listen to: read them back if
        // the stream does not bring them soon.
        catchUpTimer = pg.timeout(() => {
          catchUpTimer = 0;
          if (lastSeen < last) fill(last);
        }, 1500);
      }
    }

    return {
      stateEl, list, olderSlot, newestSlot, start, sync,
      get state() { return state; },
    };
  }

  // ===== sovereign page =====

  function pageSovereign(pg, main, sovId) {
    document.title = 'Sovereign · Catalyst-Zero';
    const base = '/v1/sovereigns/' + encodeURIComponent(sovId);
    const name = h('span', { id: 'sovereign-name' }, '…');
    const org = h('span', { id: 'sovereign-org' });
    const fqdn = h('span', { id: 'sovereign-fqdn', class: 'mono' });
    const status = badge('…', 'sovereign-status');
    const endpoint = h('span', { id: 'api-endpoint', class: 'mono' });
    const createdAt = h('span');
    const updatedAt = h('span');
    const verbs = h('div', { class: 'verbs' });
    const outcome = h('p', { id: 'verb-outcome', class: 'outcome', role: 'status' });
    const dns = h('section', { id: 'dns', class: 'card' });
    const custody = h('section', { id: 'custody', class: 'card' });
    const regions = h('section', { id: 'regions', class: 'card' });
    const jobsBody = h('tbody');
    const jobsNote = h('p', { class: 'empty' }, 'No jobs.');
    const notFound = h('div', { class: 'slot' });

    main.append(notFound,
      h('div', { class: 'page-head' },
        h('div', { class: 'crumbs' }, h('a', { href: '#/jobs' }, 'Jobs'), ' / Sovereign ', h('span', { class: 'mono', title: sovId }, shortId(sovId))),
        h('div', { class: 'title-row' }, h('h1', null, name), status),
        h('dl', { class: 'facts' },
          fact('Organization', org),
          fact('FQDN', fqdn),
          fact('API endpoint', endpoint),
          fact('Created', createdAt),
          fact('Updated', updatedAt)),
        h('div', { class: 'actions' }, verbs, outcome)),
      h('div', { class: 'columns' },
        h('div', { class: 'col-main' },
          regions,
          h('section', { class: 'card' }, h('h2', null, 'Jobs'),
            h('table', { id: 'sovereign-jobs', class: 'table' },
              h('thead', null, h('tr', null, h('th', null, 'Job'), h('th', null, 'Kind'), h('th', null, 'Status'),
                h('th', null, 'Created'), h('th', { class: 'num' }, 'Duration'))),
              jobsBody),
            jobsNote)),
        h('div', { class: 'col-side' }, dns, custody)));

    const destroyBtn = h('button', { type: 'button', 'data-verb': 'destroy', class: 'danger-outline' }, 'Destroy…');
    let detail = null;
    let keys = {};

    destroyBtn.addEventListener('click', async () => {
      if (!detail) return;
      const ans = await S.shell.ask({
        title: 'Destroy this Sovereign?',
        text: ['Tear down ', h('strong', null, str(detail.name)), ' (', code(detail.fqdn), '): Crossplane releases its objects, every cloud object carrying its labels is destroyed, then its DNS records, zone and delegation, then its secrets. This cannot be undone; the record stays, with its jobs and audit trail.'],
        ok: 'Destroy',
      });
      if (!ans || !pg.alive) return;
      destroyBtn.disabled = true;
      showOutcome(outcome, true, ['Destroy: sending…']);
      try {
        const r = await api(base + '/destroy', { method: 'POST', body: {}, signal: pg.signal });
        if (!pg.alive) return;
        if (r.ok) {
          const jid = isObj(r.data) ? r.data.job_id : null;
          showOutcome(outcome, true, isStr(jid)
            ? ['Destroy accepted: job ', h('a', { href: jobHref(jid), class: 'mono' }, shortId(jid)), '.']
            : ['Destroy accepted.']);
        } else {
          showOutcome(outcome, false, ['Destroy refused: ' + errorText(r)]);
        }
      } catch (e) {
        if (quiet(e) || !pg.alive) return;
        showOutcome(outcome, false, ['Destroy failed: the daemon did not answer.']);
      } finally {
        if (pg.alive) destroyBtn.disabled = false;
      }
      refresh();
    });

    const changed = (k, v) => {
      const s = JSON.stringify(v === undefined ? null : v);
      if (keys[k] === s) return false;
      keys[k] = s;
      return true;
    };

    function apply(d) {
      detail = d;
      if (isStr(d.id)) S.sovCache.set(d.id, { name: d.name, fqdn: d.fqdn, status: d.status });
      document.title = shown(clip(str(d.name), 60)) + ' · Catalyst-Zero';
      setText(name, str(d.name) || '—');
      setText(org, isStr(d.org_name) ? d.org_name : '—');
      setText(fqdn, str(d.fqdn) || '—');
      setBadge(status, d.status);
      setText(endpoint, isStr(d.api_endpoint) ? d.api_endpoint : '—');
      setText(createdAt, fmtDateTime(d.created_at));
      setText(updatedAt, fmtAge(d.updated_at));
      setTitle(updatedAt, fmtDateTime(d.updated_at));
      const canDestroy = d.status !== 'destroyed' && d.status !== 'destroying';
      if (canDestroy && !destroyBtn.isConnected) verbs.append(destroyBtn);
      if (!canDestroy && destroyBtn.isConnected) destroyBtn.remove();
      if (changed('dns', d.dns)) renderDns(dns, d.dns);
      if (changed('custody', d.custody)) renderCustody(custody, d.custody);
      if (changed('regions', d.regions)) renderRegions(regions, d.regions);
      const jobs = arr(d.jobs).filter((j) => isObj(j) && isStr(j.id))
        .map((j, i) => [j, i])
        .sort((a, b) => ((ms(b[0].created_at) || 0) - (ms(a[0].created_at) || 0)) || (b[1] - a[1]))
        .map(([j]) => j);
      jobsNote.hidden = jobs.length > 0;
      reconcile(jobsBody, jobs, (j) => j.id, () => {
        const r = h('tr');
        r._link = h('a', { class: 'mono' });
        r._kind = h('td', { class: 'kind' });
        r._status = h('span', { class: 'badge' });
        r._created = h('td', { class: 'age' });
        r._dur = h('td', { class: 'duration num' });
        r.append(h('td', { class: 'id' }, r._link), r._kind, h('td', { class: 'status' }, r._status), r._created, r._dur);
        return r;
      }, (r, j) => {
        setAttr(r, 'data-job', j.id);
        setAttr(r._link, 'href', jobHref(j.id));
        setText(r._link, shortId(j.id));
        setTitle(r._link, j.id);
        setText(r._kind, str(j.kind));
        setBadge(r._status, j.status);
        setText(r._created, fmtAge(j.created_at));
        setTitle(r._created, fmtDateTime(j.created_at));
        setText(r._dur, fmtDuration(jobDuration(j)));
      });
    }

    let busy = false;
    async function refresh() {
      if (busy) return;
      busy = true;
      try {
        await load(pg, base, notFound, 'Sovereign', sovId, apply);
      } finally {
        busy = false;
      }
    }
    refresh();
    pg.every(SOVEREIGN_POLL_MS, refresh);
  }

  function renderDns(card, dns) {
    card.replaceChildren(h('h2', null, 'DNS'));
    if (!isObj(dns)) {
      card.append(h('p', { class: 'empty' }, 'No DNS state yet.'));
      return;
    }
    card.append(h('p', null, 'State ', badge(dns.state)));
    const records = arr(dns.records).filter(isObj);
    if (!records.length) {
      card.append(h('p', { class: 'empty' }, 'No records.'));
      return;
    }
    card.append(h('div', { class: 'table-scroll' }, h('table', { class: 'table compact' },
      h('thead', null, h('tr', null, h('th', null, 'Name'), h('th', null, 'Type'), h('th', null, 'Content'))),
      h('tbody', null, records.map((r) => h('tr', null,
        h('td', { class: 'mono wrap' }, str(r.name)), h('td', { class: 'mono' }, str(r.type)), h('td', { class: 'mono wrap' }, str(r.content))))))));
  }

  function renderRegions(card, regions) {
    card.replaceChildren(h('h2', null, 'Regions'));
    const rs = arr(regions).filter(isObj);
    if (!rs.length) {
      card.append(h('p', { class: 'empty' }, 'No regions yet.'));
      return;
    }
    for (const r of rs) {
      const nodes = h('div', { class: 'nodes' });
      reconcile(nodes, arr(r.nodes).filter((n) => isObj(n) && n.name !== undefined), (n) => str(n.name), createNode, updateNode);
      card.append(h('div', { class: 'region', 'data-location': str(r.location) },
        h('div', { class: 'region-head' },
          h('h3', { class: 'mono' }, str(r.location) || '—'),
          h('span', { class: 'muted' }, 'load balancer '),
          h('span', { class: 'mono lb' }, isStr(r.load_balancer) ? r.load_balancer : '—'),
          h('span', { class: 'muted small' }, arr(r.nodes).length + ' servers')),
        nodes));
    }
  }

  function renderCustody(card, c) {
    card.replaceChildren(h('h2', null, 'Custody'));
    if (!isObj(c)) {
      card.append(h('p', { class: 'empty' }, 'No custody record yet.'));
      return;
    }
    card.append(h('div', { class: 'custody-head' },
      h('span', { class: 'threshold' }, h('strong', null, str(c.threshold)), ' of ', h('strong', null, str(c.parts)), ' to recover'),
      h('span', { class: 'seal', 'data-seal': str(c.seal) }, str(c.seal))));
    const custodians = arr(c.custodians).filter(isObj);
    const labelOf = new Map(custodians.map((x) => [x.index, x.label]));
    if (custodians.length) {
      card.append(h('h3', null, 'Custodians'), h('table', { class: 'table compact' },
        h('thead', null, h('tr', null, h('th', null, '#'), h('th', null, 'Label'), h('th', null, 'Recipient'))),
        h('tbody', null, custodians.map((x) => h('tr', { 'data-custodian': str(x.index) },
          h('td', null, str(x.index)), h('td', null, str(x.label)),
          h('td', { class: 'mono wrap small', title: str(x.recipient) }, clip(str(x.recipient), 24)))))));
    }
    const items = arr(c.items).filter(isObj);
    if (items.length) {
      // Only these fields: an item carries no secret, and nothing else is shown.
      card.append(h('h3', null, 'Escrowed items'), h('table', { class: 'table compact' },
        h('thead', null, h('tr', null, h('th', null, 'Item'), h('th', null, 'Custodian'), h('th', null, 'Retrieved'))),
        h('tbody', null, items.map((it) => h('tr', { 'data-retrieved': it.retrieved === true ? 'true' : 'false' },
          h('td', null, h('div', null, str(it.kind), ' ', h('span', { class: 'muted' }, '#' + str(it.index))),
            isStr(it.fingerprint) ? h('div', { class: 'mono small muted', title: it.fingerprint }, 'sha256 ' + clip(it.fingerprint, 17)) : null),
          h('td', null, str(it.label || labelOf.get(it.custodian) || ''), ' ', h('span', { class: 'muted' }, '#' + str(it.custodian))),
          h('td', { class: 'retrieved' }, it.retrieved === true
            ? [h('span', { class: 'yes' }, 'yes'), h('div', { class: 'small muted' }, [it.retrieved_by ? 'by ' + str(it.retrieved_by) : '', it.retrieved_at ? ' ' + fmtDateTime(it.retrieved_at) : ''].join(''))]
            : h('span', { class: 'no muted' }, 'not yet')))))));
    }
  }

  // ===== start =====

  boot();
})();
