// mohd admin page. Plain ES module, no framework, no build step: it is embedded in the binary.
// Every string from the server goes into the page as text (textContent), never as HTML:
// track names are chosen by whoever uploads them.

const POLL_MS = 1000;

const state = {
  csrf: null,
  tracks: [],
  polling: false,
  pollTimer: null,
  uploadQueue: [],
  uploading: false,
  previewing: null,
  channels: [],
  routes: [],
  editing: null,
};

// ---------------------------------------------------------------------------------------------
// Helpers

const $ = (id) => document.getElementById(id);

/** Builds an element: h('td', {class: 'x', dataset: {testid: 'y'}}, 'text', child, ...). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function mmss(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '–';
  const s = Math.floor(seconds);
  const m = Math.floor(s / 60);
  const hours = Math.floor(m / 60);
  const ss = String(s % 60).padStart(2, '0');
  if (hours > 0) return `${hours}:${String(m % 60).padStart(2, '0')}:${ss}`;
  return `${m}:${ss}`;
}

function uptime(seconds) {
  const d = Math.floor(seconds / 86400);
  const hh = Math.floor((seconds % 86400) / 3600);
  const mm = Math.floor((seconds % 3600) / 60);
  if (d > 0) return `${d} d ${hh} h`;
  if (hh > 0) return `${hh} h ${mm} min`;
  if (mm > 0) return `${mm} min`;
  return `${seconds} s`;
}

function bytes(n) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function dateOf(unix) {
  return new Date(unix * 1000).toLocaleString();
}

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** Calls the API with the session cookie and, on changes, the CSRF token. */
async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && state.csrf) headers['X-CSRF-Token'] = state.csrf;
  let r;
  try {
    r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, 'Cannot reach mohd: is it running?');
  }
  let data = null;
  const type = r.headers.get('content-type') || '';
  if (r.status !== 204 && type.includes('application/json')) {
    try { data = await r.json(); } catch { data = null; }
  }
  if (!r.ok) {
    const message = (data && data.error) || `HTTP ${r.status}`;
    const err = new ApiError(r.status, message, Number(r.headers.get('retry-after')) || 0);
    if (r.status === 401 && path !== '/api/login') showLogin('Your session has ended. Log in again.');
    throw err;
  }
  return data;
}

function setMessage(el, text, ok) {
  el.textContent = text;
  el.classList.toggle('error', !ok);
  el.classList.toggle('ok', !!ok);
}

// ---------------------------------------------------------------------------------------------
// Login and navigation

function showLogin(message) {
  state.csrf = null;
  stopPolling();
  $('app').hidden = true;
  $('nav').hidden = true;
  $('logout').hidden = true;
  $('health-dot').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('login-password').focus();
}

function showApp() {
  $('login').hidden = true;
  $('app').hidden = false;
  $('nav').hidden = false;
  $('logout').hidden = false;
  $('health-dot').hidden = false;
  route();
  startPolling();
}

async function onLogin(ev) {
  ev.preventDefault();
  const button = $('login-form').querySelector('button');
  button.disabled = true;
  $('login-error').textContent = '';
  try {
    const r = await api('POST', '/api/login', { password: $('login-password').value });
    state.csrf = r.csrf_token;
    $('login-password').value = '';
    showApp();
  } catch (e) {
    let text = e.message;
    if (e.status === 401) text = 'Wrong password.';
    else if (e.status === 429) text = `Too many attempts. Try again in ${e.retryAfter || 60} s.`;
    else if (e.status === 409) text = 'No admin password is set. Run "mohd passwd" on the server.';
    $('login-error').textContent = text;
  } finally {
    button.disabled = false;
  }
}

async function onLogout() {
  try { await api('POST', '/api/logout'); } catch { /* logged out either way */ }
  showLogin('Logged out.');
}

const VIEWS = ['status', 'library', 'channels', 'settings'];

function route() {
  const name = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : 'status';
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== name;
  for (const a of $('nav').querySelectorAll('a')) {
    const current = a.getAttribute('href') === `#${name}`;
    a.classList.toggle('current', current);
    if (current) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if ($('app').hidden) return;
  if (name === 'library') loadTracks();
  if (name === 'channels') loadChannels();
  if (name === 'settings') { loadSettings(); loadTokens(); }
}

// ---------------------------------------------------------------------------------------------
// Status, polled every second while the tab is visible

function startPolling() {
  if (state.polling) return;
  state.polling = true;
  poll();
}

function stopPolling() {
  state.polling = false;
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
}

async function poll() {
  if (!state.polling) return;
  clearTimeout(state.pollTimer);
  try {
    renderStatus(await api('GET', '/api/status'));
  } catch (e) {
    if (e.status === 401) return;
    const banner = $('health');
    banner.className = 'banner bad';
    banner.replaceChildren(h('strong', {}, 'No answer from mohd'), h('div', {}, e.message));
  }
  // The next poll is scheduled after this one ends, so slow answers never pile up.
  if (state.polling && !document.hidden) state.pollTimer = setTimeout(poll, POLL_MS);
}

document.addEventListener('visibilitychange', () => {
  if (!state.polling) return;
  clearTimeout(state.pollTimer);
  if (!document.hidden) poll();
});

function renderStatus(s) {
  const healthy = s.health.healthy;
  const banner = $('health');
  banner.className = `banner ${healthy ? 'ok' : 'bad'}`;
  banner.dataset.healthy = String(healthy);
  banner.replaceChildren(h('strong', {}, healthy ? 'Healthy: music is playing' : 'Not healthy'));
  if (!healthy) banner.append(h('ul', { class: 'reasons' }, s.health.reasons.map((r) => h('li', {}, r))));
  const dot = $('health-dot');
  dot.className = `dot ${healthy ? 'ok' : 'bad'}`;
  dot.title = healthy ? 'Healthy' : `Not healthy: ${s.health.reasons.join('; ')}`;

  const sync = s.library_sync;
  const syncLine = $('library-sync');
  syncLine.hidden = !sync;
  if (sync) {
    const version = sync.manifest_version == null ? 'no library yet' : `library version ${sync.manifest_version}`;
    syncLine.className = `small ${sync.state === 'failing' ? 'error' : ''}`;
    syncLine.textContent = `Following ${sync.url}: ${sync.state}, ${version}`
      + (sync.last_error ? ` (${sync.last_error})` : '')
      + '. The library is read-only here; change it on the publisher.';
  }

  $('uptime').textContent = uptime(s.uptime_s);
  $('version').textContent = s.version;
  $('disk').textContent = s.disk.total_bytes
    ? `${bytes(s.disk.free_bytes)} free of ${bytes(s.disk.total_bytes)}` : '–';
  $('call-count').textContent = String(s.calls.length);

  $('playing-body').replaceChildren(...s.channels.map((c) => {
    const p = c.playing;
    const fraction = p && p.track_len_s > 0 ? Math.min(1, p.position_s / p.track_len_s) : 0;
    return h('tr', { dataset: { testid: 'channel-row', name: c.name } },
      h('td', {}, c.name),
      h('td', { dataset: { testid: 'playing-track' } }, p ? p.track : h('span', { class: 'muted' }, 'nothing playable')),
      h('td', {}, p ? h('div', { class: 'position' },
        h('progress', { max: '1', value: String(fraction), 'aria-label': `Position in ${p.track}` }),
        h('span', { class: 'small' }, `${mmss(p.position_s)} / ${mmss(p.track_len_s)}`)) : ''),
      h('td', {}, mmss(c.loop_s)),
      h('td', {}, String(c.tracks)),
      h('td', {}, h('span', { class: `tag ${c.render}` }, c.render)),
      h('td', { class: 'small', dataset: { testid: 'playing-next' } },
        c.next ? `${c.next.track} in ${mmss(c.next.in_s)}` : '–',
        c.next_change ? h('div', { class: 'muted' }, `${c.next_change.programme} at ${c.next_change.at}`) : null));
  }));

  $('calls-body').replaceChildren(...(s.calls.length ? s.calls.map((c) =>
    h('tr', { dataset: { testid: 'call-row', id: String(c.id) } },
      h('td', {}, c.peer), h('td', {}, c.channel), h('td', {}, c.codec),
      h('td', {}, mmss(c.duration_s)), h('td', {}, c.packets_sent.toLocaleString()),
      h('td', {}, c.sending ? 'listening' : h('span', { class: 'muted' }, 'paused by caller'))))
    : [h('tr', { class: 'empty' }, h('td', { colspan: '6' }, 'No calls on hold.'))]));

  const lo = s.lineout;
  $('lineout').replaceChildren(...(lo ? [
    h('dl', { class: 'facts-list' },
      h('dt', {}, 'State'), h('dd', { dataset: { testid: 'lineout-state' } }, lo.state),
      h('dt', {}, 'Device'), h('dd', {}, lo.device),
      h('dt', {}, 'Channel'), h('dd', {}, lo.channel),
      h('dt', {}, 'Track'), h('dd', {}, lo.track || '–'),
      h('dt', {}, 'Level'), h('dd', {}, `${lo.level_db} dB`),
      h('dt', {}, 'Underruns'), h('dd', {}, String(lo.underruns))),
  ] : [h('span', { class: 'muted' }, 'Disabled.')]));

  $('registrations-body').replaceChildren(...(s.registrations.length ? s.registrations.map((r) =>
    h('tr', { dataset: { testid: 'registration-row' } },
      h('td', {}, r.aor), h('td', {}, r.registrar),
      h('td', {}, h('span', { class: `tag ${r.state}` }, r.state),
        r.last_error ? h('div', { class: 'small error' }, r.last_error) : null)))
    : [h('tr', { class: 'empty' }, h('td', { colspan: '3' }, 'None configured.'))]));
}

// ---------------------------------------------------------------------------------------------
// Library

async function loadTracks() {
  try {
    renderTracks(await api('GET', '/api/tracks'));
    $('library-error').textContent = '';
  } catch (e) {
    if (e.status !== 401) $('library-error').textContent = e.message;
  }
}

function renderTracks(tracks) {
  state.tracks = tracks;
  stopPreview();
  const body = $('tracks-body');
  if (!tracks.length) {
    body.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: '9' },
      'The library is empty: callers hear the built-in demo melody. Upload some music above.')));
    return;
  }
  body.replaceChildren(...tracks.map((t, i) => {
    const row = h('tr', {
      dataset: { testid: 'track-row', name: t.name, id: t.id },
      class: t.enabled ? '' : 'disabled',
    },
    h('td', { class: 'handle', title: 'Drag to reorder', 'aria-hidden': 'true' }, '⋮⋮'),
    h('td', { class: 'muted' }, String(i + 1)),
    h('td', { class: 'name' }, t.name),
    h('td', {}, h('input', {
      type: 'checkbox', checked: t.enabled, 'aria-label': `Play ${t.name}`,
      dataset: { testid: 'track-enabled' },
      onchange: (ev) => setEnabled(t, ev.target),
    })),
    h('td', { dataset: { testid: 'track-duration' } }, mmss(t.duration_s)),
    h('td', { class: 'format' }, t.format, h('div', { class: 'small muted' },
      `${(t.sample_rate / 1000).toFixed(1)} kHz, ${t.channels === 1 ? 'mono' : t.channels === 2 ? 'stereo' : `${t.channels} ch`}`)),
    h('td', {}, `${t.loudness_lufs.toFixed(1)} LUFS`),
    h('td', { class: 'preview' }, h('button', {
      type: 'button', class: 'icon', 'aria-label': `Preview ${t.name}`, title: 'Hear it as callers do',
      dataset: { testid: 'preview' }, onclick: (ev) => togglePreview(t, ev.currentTarget),
    }, '▶')),
    h('td', { class: 'actions' },
      h('button', {
        type: 'button', class: 'icon', 'aria-label': `Move ${t.name} up`, disabled: i === 0,
        dataset: { testid: 'move-up' }, onclick: () => move(i, i - 1),
      }, '↑'),
      h('button', {
        type: 'button', class: 'icon', 'aria-label': `Move ${t.name} down`, disabled: i === tracks.length - 1,
        dataset: { testid: 'move-down' }, onclick: () => move(i, i + 1),
      }, '↓'),
      h('button', {
        type: 'button', class: 'icon danger', 'aria-label': `Delete ${t.name}`,
        dataset: { testid: 'delete' }, onclick: () => deleteTrack(t),
      }, '✕')));
    makeDraggable(row, i);
    return row;
  }));
}

async function setEnabled(track, checkbox) {
  checkbox.disabled = true;
  try {
    await api('PATCH', `/api/tracks/${encodeURIComponent(track.id)}`, { enabled: checkbox.checked });
    await loadTracks();
  } catch (e) {
    checkbox.checked = !checkbox.checked;
    checkbox.disabled = false;
    $('library-error').textContent = e.message;
  }
}

/** The managed channels that name track `id` (playlists, announcements, greeting). */
async function channelsUsing(id) {
  const channels = await api('GET', '/api/channels');
  const has = (refs) => (refs || []).some((r) => r.id === id);
  const inProgramme = (p) => has(p.playlist) || (p.announcements && has(p.announcements.clips));
  return channels.filter((c) => !c.read_only && (inProgramme(c) || (c.greeting && c.greeting.id === id) ||
    Object.values(c.programmes || {}).some(inProgramme))).map((c) => c.name);
}

async function deleteTrack(track) {
  let using = [];
  try { using = await channelsUsing(track.id); } catch { /* asked again by the server's answer */ }
  const also = using.length
    ? `\n\nIt is also removed from ${using.length === 1 ? 'channel' : 'channels'} ${using.join(', ')}.` : '';
  if (!confirm(`Delete "${track.name}"? The file is removed from the server.${also}`)) return;
  try {
    await api('DELETE', `/api/tracks/${encodeURIComponent(track.id)}`);
    await loadTracks();
  } catch (e) {
    $('library-error').textContent = e.message;
  }
}

async function reorder(ids) {
  try {
    renderTracks(await api('PUT', '/api/playlist', { order: ids }));
    $('library-error').textContent = '';
  } catch (e) {
    $('library-error').textContent = e.message;
    await loadTracks();
  }
}

async function move(from, to) {
  if (to < 0 || to >= state.tracks.length) return;
  const ids = state.tracks.map((t) => t.id);
  const [id] = ids.splice(from, 1);
  ids.splice(to, 0, id);
  await reorder(ids);
  // Keep the keyboard where it was: on the moved track's same button.
  const row = $('tracks-body').querySelector(`tr[data-id="${CSS.escape(id)}"]`);
  const button = row && row.querySelector(`[data-testid="${to < from ? 'move-up' : 'move-down'}"]`);
  if (button && !button.disabled) button.focus();
  else if (row) row.querySelector('button')?.focus();
}

// HTML5 drag and drop of rows. Only our own drags count (not files dropped on the table), and
// only within the table they started in (each kind of row has its own drag type).
const ROW_TYPE = 'application/x-mohd-track';
const PLAYLIST_ROW = 'application/x-mohd-channel-track';
let dragFrom = null;

function makeDraggable(row, index) {
  makeRowDraggable(row, index, ROW_TYPE, $('tracks-body'), move);
}

function makeRowDraggable(row, index, type, body, onMove) {
  row.draggable = true;
  row.addEventListener('dragstart', (ev) => {
    dragFrom = { index, type };
    ev.dataTransfer.effectAllowed = 'move';
    ev.dataTransfer.setData(type, String(index));
    ev.dataTransfer.setData('text/plain', row.dataset.name || '');
    row.classList.add('dragging');
  });
  row.addEventListener('dragend', () => {
    dragFrom = null;
    row.classList.remove('dragging');
    clearDropMarks(body);
  });
  row.addEventListener('dragover', (ev) => {
    if (!dragFrom || dragFrom.type !== type || !ev.dataTransfer.types.includes(type)) return;
    ev.preventDefault();
    ev.dataTransfer.dropEffect = 'move';
    const after = isLowerHalf(row, ev);
    clearDropMarks(body);
    row.classList.add(after ? 'drop-after' : 'drop-before');
  });
  row.addEventListener('dragleave', () => row.classList.remove('drop-before', 'drop-after'));
  row.addEventListener('drop', (ev) => {
    if (!dragFrom || dragFrom.type !== type) return;
    ev.preventDefault();
    const from = dragFrom.index;
    let to = isLowerHalf(row, ev) ? index + 1 : index;
    if (from < to) to -= 1;
    clearDropMarks(body);
    dragFrom = null;
    if (to !== from) onMove(from, to);
  });
}

function isLowerHalf(row, ev) {
  const r = row.getBoundingClientRect();
  return ev.clientY > r.top + r.height / 2;
}

function clearDropMarks(body) {
  for (const r of body.querySelectorAll('.drop-before, .drop-after')) {
    r.classList.remove('drop-before', 'drop-after');
  }
}

// Preview: one <audio> at a time, under the row's button.
function stopPreview() {
  const p = state.previewing;
  if (!p) return;
  p.audio.pause();
  p.audio.remove();
  p.button.textContent = '▶';
  p.button.setAttribute('aria-label', `Preview ${p.name}`);
  state.previewing = null;
}

function togglePreview(track, button) {
  const same = state.previewing && state.previewing.id === track.id;
  stopPreview();
  if (same) return;
  const audio = h('audio', {
    controls: true, preload: 'none', src: `/api/tracks/${encodeURIComponent(track.id)}/preview`,
    dataset: { testid: 'preview-audio' },
  });
  button.after(audio);
  button.textContent = '■';
  button.setAttribute('aria-label', `Stop preview of ${track.name}`);
  state.previewing = { id: track.id, name: track.name, audio, button };
  audio.addEventListener('ended', stopPreview);
  audio.play().catch(() => { /* autoplay refused: the controls are there */ });
}

// Uploads: one file at a time (each is decoded on the server), each with its own progress bar.
function addFiles(files) {
  for (const file of files) {
    const bar = h('progress', { max: '100', value: '0', 'aria-label': `Upload of ${file.name}` });
    const status = h('span', { class: 'status', dataset: { testid: 'upload-status' } }, 'waiting');
    const item = h('li', { dataset: { testid: 'upload-item', name: file.name }, class: 'waiting' },
      h('span', { class: 'name' }, file.name), h('span', { class: 'muted small' }, bytes(file.size)), bar, status);
    $('uploads').append(item);
    state.uploadQueue.push({ file, item, bar, status });
  }
  if (!state.uploading) nextUpload();
}

function nextUpload() {
  const job = state.uploadQueue.shift();
  if (!job) { state.uploading = false; return; }
  state.uploading = true;
  const { file, item, bar, status } = job;
  item.className = 'active';
  status.textContent = 'uploading';
  const xhr = new XMLHttpRequest();
  xhr.open('POST', `/api/tracks?name=${encodeURIComponent(file.name)}`);
  xhr.setRequestHeader('Content-Type', 'application/octet-stream');
  if (state.csrf) xhr.setRequestHeader('X-CSRF-Token', state.csrf);
  xhr.upload.addEventListener('progress', (ev) => {
    if (ev.lengthComputable) bar.value = Math.round((ev.loaded / ev.total) * 100);
  });
  xhr.upload.addEventListener('load', () => {
    bar.value = 100;
    status.textContent = 'checking…';
  });
  const done = (ok, text) => {
    item.className = ok ? 'done' : 'failed';
    status.textContent = text;
    status.classList.toggle('error', !ok);
    if (ok) loadTracks();
    nextUpload();
  };
  xhr.addEventListener('load', () => {
    if (xhr.status === 201) {
      done(true, 'added');
      return;
    }
    let message = `HTTP ${xhr.status}`;
    try { message = JSON.parse(xhr.responseText).error || message; } catch { /* not JSON */ }
    if (xhr.status === 401) showLogin('Your session has ended. Log in again.');
    done(false, message);
  });
  xhr.addEventListener('error', () => done(false, 'the connection failed (is the file too large?)'));
  xhr.addEventListener('abort', () => done(false, 'cancelled'));
  xhr.send(file);
}

function setupDropZone() {
  const zone = $('drop-zone');
  const hasFiles = (ev) => ev.dataTransfer && ev.dataTransfer.types.includes('Files');
  zone.addEventListener('dragover', (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    ev.dataTransfer.dropEffect = 'copy';
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    zone.classList.remove('over');
    addFiles([...ev.dataTransfer.files]);
  });
  $('upload-input').addEventListener('change', (ev) => {
    addFiles([...ev.target.files]);
    ev.target.value = '';
  });
  // A file dropped anywhere else would make the browser navigate away to it.
  window.addEventListener('dragover', (ev) => { if (hasFiles(ev)) ev.preventDefault(); });
  window.addEventListener('drop', (ev) => { if (hasFiles(ev)) ev.preventDefault(); });
}

// ---------------------------------------------------------------------------------------------
// Channels, routes and dialplan

const DEFAULT_FADE_MS = 800;
const ZONES = ['Europe/London', 'Europe/Dublin', 'Europe/Paris', 'Europe/Berlin', 'Europe/Madrid',
  'Europe/Rome', 'Europe/Amsterdam', 'Europe/Zurich', 'Europe/Stockholm', 'Europe/Warsaw',
  'America/New_York', 'America/Chicago', 'America/Denver', 'America/Los_Angeles', 'America/Toronto',
  'America/Sao_Paulo', 'Asia/Tokyo', 'Asia/Singapore', 'Asia/Kolkata', 'Australia/Sydney', 'UTC'];

function musicText(c) {
  if (Array.isArray(c.music)) return h('ul', { class: 'plain' }, c.music.map((m) => h('li', {}, m)));
  if (c.music === 'library') return `the library (${c.playlist.length} tracks)`;
  if (c.music === 'demo') return 'built-in demo';
  const n = c.playlist.length;
  return n ? `${n} track${n === 1 ? '' : 's'}` : h('span', { class: 'muted' }, 'empty: demo melody');
}

function nowText(st) {
  if (!st || !st.playing) return h('span', { class: 'muted' }, '–');
  return h('div', {},
    h('span', { dataset: { testid: 'channel-now' } }, st.playing.track),
    st.programme && st.programme !== 'main' ? h('span', { class: 'tag' }, st.programme) : null,
    st.next ? h('div', { class: 'small muted', dataset: { testid: 'channel-next' } },
      `next: ${st.next.track} in ${mmss(st.next.in_s)}`) : null,
    st.next_change ? h('div', { class: 'small muted' },
      `then ${st.next_change.programme} at ${st.next_change.at}`) : null);
}

async function loadChannels() {
  try {
    const [channels, routes, dialplan] = await Promise.all([
      api('GET', '/api/channels'), api('GET', '/api/routes'), api('GET', '/api/dialplan')]);
    state.channels = channels;
    state.routes = routes;
    renderChannels(channels);
    renderRoutes(routes, channels);
    renderDialplan(dialplan);
  } catch (e) {
    if (e.status !== 401) setMessage($('channels-message'), e.message, false);
  }
}

function renderChannels(channels) {
  $('channels-body').replaceChildren(...channels.map((c) =>
    h('tr', { dataset: { testid: 'channel-config-row', name: c.name, origin: c.origin } },
      h('td', {}, h('strong', {}, c.name), ' ',
        c.read_only ? h('span', { class: 'tag', dataset: { testid: 'origin-badge' }, title: 'Read-only here' }, 'from the config file') : null,
        c.default ? h('span', { class: 'tag' }, 'default') : null),
      h('td', {}, musicText(c),
        c.shuffle ? h('span', { class: 'tag' }, 'shuffle') : null,
        c.announcements ? h('span', { class: 'tag' }, 'announcements') : null,
        c.greeting ? h('span', { class: 'tag' }, 'greeting') : null,
        c.schedule ? h('span', { class: 'tag' }, `schedule (${c.schedule.timezone})`) : null),
      h('td', {}, c.mode),
      h('td', {}, nowText(c.status)),
      h('td', {}, c.routes.length ? h('ul', { class: 'plain' }, c.routes.map((r) => h('li', {}, h('code', {}, r)))) : '–'),
      h('td', { class: 'actions' },
        h('button', {
          type: 'button', class: 'icon', dataset: { testid: 'channel-edit' },
          'aria-label': `${c.read_only ? 'Show' : 'Edit'} ${c.name}`, onclick: () => openEditor(c.name),
        }, c.read_only ? 'Show' : 'Edit'),
        c.read_only ? null : h('button', {
          type: 'button', class: 'icon danger', dataset: { testid: 'channel-delete' },
          'aria-label': `Delete ${c.name}`, onclick: () => deleteChannel(c.name),
        }, '✕')))));
}

function renderRoutes(routes, channels) {
  $('routes-body').replaceChildren(...(routes.length ? routes.map((r, i) =>
    h('tr', { dataset: { testid: 'managed-route-row', user: r.user || '' } },
      h('td', { class: 'muted' }, String(i + 1)),
      h('td', {}, h('code', {}, routeText(r))),
      h('td', {}, r.channel),
      h('td', { class: 'actions' },
        h('button', {
          type: 'button', class: 'icon', 'aria-label': 'Move up', disabled: i === 0,
          onclick: () => saveRoutes(moved(routes, i, i - 1)),
        }, '↑'),
        h('button', {
          type: 'button', class: 'icon', 'aria-label': 'Move down', disabled: i === routes.length - 1,
          onclick: () => saveRoutes(moved(routes, i, i + 1)),
        }, '↓'),
        h('button', {
          type: 'button', class: 'icon danger', 'aria-label': `Remove route ${routeText(r)}`,
          dataset: { testid: 'route-remove' }, onclick: () => saveRoutes(routes.filter((_, j) => j !== i)),
        }, '✕'))))
    : [h('tr', { class: 'empty' }, h('td', { colspan: '4' }, 'No routes of your own yet.'))]));
  const select = $('route-channel');
  const keep = select.value;
  select.replaceChildren(...channels.map((c) => h('option', { value: c.name }, c.name)));
  if (channels.some((c) => c.name === keep)) select.value = keep;
}

function routeText(r) {
  const parts = [];
  for (const k of ['user', 'to_user', 'from_user', 'source']) if (r[k]) parts.push(`${k} = ${r[k]}`);
  return parts.join(', ') || 'every call';
}

function moved(list, from, to) {
  const copy = list.slice();
  const [x] = copy.splice(from, 1);
  copy.splice(to, 0, x);
  return copy;
}

function renderDialplan(dialplan) {
  $('dialplan-body').replaceChildren(...(dialplan.routes.length ? dialplan.routes.map((r, i) =>
    h('tr', { dataset: { testid: 'route-row' } },
      h('td', { class: 'muted' }, String(i + 1)), h('td', {}, h('code', {}, r.match)), h('td', {}, r.channel)))
    : [h('tr', { class: 'empty' }, h('td', { colspan: '3' }, 'No routes.'))]));
  $('dialplan-default').textContent = dialplan.default_channel
    ? `Anything else goes to channel "${dialplan.default_channel}".`
    : 'Anything else is refused (404).';
}

async function saveRoutes(routes) {
  try {
    await api('PUT', '/api/routes', routes);
    setMessage($('routes-message'), 'Routes saved. New calls follow them now.', true);
  } catch (e) {
    setMessage($('routes-message'), e.message, false);
  }
  await loadChannels();
}

async function onAddRoute(ev) {
  ev.preventDefault();
  const user = $('route-user').value.trim();
  const channel = $('route-channel').value;
  if (!user || !channel) return;
  await saveRoutes([...(state.routes || []), { user, channel }]);
  if ($('routes-message').classList.contains('ok')) $('route-user').value = '';
}

async function onCreateChannel(ev) {
  ev.preventDefault();
  const name = $('channel-new-name').value.trim();
  try {
    await api('POST', '/api/channels', { name });
    $('channel-new-name').value = '';
    setMessage($('channels-message'), `Channel "${name}" created. Add music to it below.`, true);
    await loadChannels();
    await openEditor(name);
  } catch (e) {
    setMessage($('channels-message'), e.message, false);
  }
}

async function deleteChannel(name) {
  if (!confirm(`Delete channel "${name}"? Calls on it keep their music until they end.`)) return;
  const path = `/api/channels/${encodeURIComponent(name)}`;
  try {
    await api('DELETE', path);
  } catch (e) {
    if (e.status !== 409) {
      setMessage($('channels-message'), e.message, false);
      return;
    }
    if (!confirm(`${e.message}\n\nRemove those routes too and delete the channel?`)) return;
    try {
      await api('DELETE', `${path}?remove_routes=true`);
    } catch (e2) {
      setMessage($('channels-message'), e2.message, false);
      return;
    }
  }
  if (state.editing && state.editing.name === name) closeEditor();
  setMessage($('channels-message'), `Channel "${name}" deleted.`, true);
  await loadChannels();
}

// The editor works on a draft: ids only, as the API takes them; names come from the library.
function trackName(id) {
  const t = state.tracks.find((x) => x.id === id);
  return t ? t.name : `(missing ${id})`;
}

function trackOptions(select, placeholder) {
  select.replaceChildren(
    h('option', { value: '' }, placeholder),
    ...state.tracks.map((t) => h('option', { value: t.id }, t.name)));
}

function draftOf(c) {
  const ids = (refs) => refs.filter((r) => r.id).map((r) => r.id);
  const ann = (a) => a && {
    clips: ids(a.clips), every_seconds: a.every_seconds, every_tracks: a.every_tracks,
    loudness_lufs: a.loudness_lufs, fade_out_ms: a.fade_out_ms, fade_in_ms: a.fade_in_ms,
  };
  return {
    original: c.name,
    readOnly: c.read_only,
    name: c.name,
    mode: c.mode,
    loudness_lufs: c.loudness_lufs,
    shuffle: c.shuffle,
    playlist: c.read_only ? [] : ids(c.playlist),
    shownPlaylist: c.playlist,
    announcements: ann(c.announcements),
    greeting: c.greeting && c.greeting.id,
    schedule: c.schedule ? structuredClone(c.schedule) : null,
    programmes: Object.entries(c.programmes || {}).map(([name, p]) =>
      ({ name, playlist: ids(p.playlist), shuffle: p.shuffle, announcements: ann(p.announcements) })),
    switch: c.switch,
    switch_fade_ms: c.switch_fade_ms,
  };
}

async function openEditor(name) {
  try {
    const [c, tracks] = await Promise.all([
      api('GET', `/api/channels/${encodeURIComponent(name)}`), api('GET', '/api/tracks')]);
    state.tracks = tracks;
    state.editing = draftOf(c);
  } catch (e) {
    setMessage($('channels-message'), e.message, false);
    return;
  }
  setMessage($('editor-message'), '', true);
  fillEditor();
  $('channel-editor').hidden = false;
  $('channel-editor').scrollIntoView({ block: 'start' });
}

function closeEditor() {
  state.editing = null;
  $('channel-editor').hidden = true;
}

function fillEditor() {
  const d = state.editing;
  $('editor-title').textContent = `Channel ${d.original}`;
  $('editor-readonly').hidden = !d.readOnly;
  $('editor-fields').disabled = d.readOnly;
  $('ed-save').hidden = d.readOnly;
  $('channel-editor').dataset.name = d.original;
  $('ed-name').value = d.name;
  $('ed-mode').value = d.mode;
  $('ed-loudness').value = d.loudness_lufs;
  $('ed-shuffle').checked = d.shuffle;
  trackOptions($('ed-add-track'), 'Choose a library track…');
  trackOptions($('ed-ann-add'), 'Choose a library track…');
  trackOptions($('ed-greeting'), 'No greeting');
  $('ed-greeting').value = d.greeting || '';
  $('ed-ann-on').checked = !!d.announcements;
  $('ed-ann').hidden = !d.announcements;
  const a = d.announcements || {};
  $('ed-ann-every').value = a.every_tracks || a.every_seconds || 30;
  $('ed-ann-unit').value = a.every_tracks ? 'tracks' : 'seconds';
  $('ed-ann-fade-out').value = a.fade_out_ms ?? DEFAULT_FADE_MS;
  $('ed-ann-fade-in').value = a.fade_in_ms ?? DEFAULT_FADE_MS;
  $('ed-sched-on').checked = !!d.schedule;
  $('ed-sched').hidden = !d.schedule;
  $('zones').replaceChildren(...ZONES.map((z) => h('option', { value: z })));
  $('ed-sched-zone').value = d.schedule ? d.schedule.timezone : '';
  $('ed-switch').value = d.switch || 'track-end';
  renderPlaylist();
  renderAnnouncementClips();
  renderProgrammes();
  renderSchedule();
}

function renderPlaylist() {
  const d = state.editing;
  const body = $('ed-playlist-body');
  if (d.readOnly) {
    body.replaceChildren(...(d.shownPlaylist.length ? d.shownPlaylist.map((t, i) =>
      h('tr', { dataset: { testid: 'ed-track-row', name: t.name } },
        h('td', { class: 'muted narrow' }, String(i + 1)), h('td', { class: 'name' }, t.name)))
      : [h('tr', { class: 'empty' }, h('td', { colspan: '2' }, 'Set by the configuration file.'))]));
    return;
  }
  if (!d.playlist.length) {
    body.replaceChildren(h('tr', { class: 'empty' }, h('td', { colspan: '4' },
      'No tracks yet: callers hear the demo melody. Add library tracks above.')));
    return;
  }
  body.replaceChildren(...d.playlist.map((id, i) => {
    const row = h('tr', { dataset: { testid: 'ed-track-row', name: trackName(id), id } },
      h('td', { class: 'handle', title: 'Drag to reorder', 'aria-hidden': 'true' }, '⋮⋮'),
      h('td', { class: 'muted narrow' }, String(i + 1)),
      h('td', { class: 'name' }, trackName(id)),
      h('td', { class: 'actions' },
        h('button', {
          type: 'button', class: 'icon', 'aria-label': `Move ${trackName(id)} up`, disabled: i === 0,
          dataset: { testid: 'ed-move-up' }, onclick: () => movePlaylist(i, i - 1),
        }, '↑'),
        h('button', {
          type: 'button', class: 'icon', 'aria-label': `Move ${trackName(id)} down`,
          disabled: i === d.playlist.length - 1,
          dataset: { testid: 'ed-move-down' }, onclick: () => movePlaylist(i, i + 1),
        }, '↓'),
        h('button', {
          type: 'button', class: 'icon danger', 'aria-label': `Remove ${trackName(id)} from the playlist`,
          dataset: { testid: 'ed-track-remove' }, onclick: () => { d.playlist.splice(i, 1); renderPlaylist(); },
        }, '✕')));
    makeRowDraggable(row, i, PLAYLIST_ROW, $('ed-playlist-body'), (from, to) => movePlaylist(from, to));
    return row;
  }));
}

function movePlaylist(from, to) {
  const d = state.editing;
  if (to < 0 || to >= d.playlist.length) return;
  d.playlist = moved(d.playlist, from, to);
  renderPlaylist();
}

function renderAnnouncementClips() {
  const a = state.editing.announcements;
  $('ed-ann-clips').replaceChildren(...(a ? a.clips : []).map((id, i) =>
    h('li', { dataset: { testid: 'ed-ann-clip', name: trackName(id) } }, trackName(id),
      h('button', {
        type: 'button', class: 'link', 'aria-label': `Remove announcement ${trackName(id)}`,
        onclick: () => { a.clips.splice(i, 1); renderAnnouncementClips(); },
      }, '✕'))));
}

function programmeNames() {
  return ['main', ...state.editing.programmes.map((p) => p.name).filter((n) => n)];
}

function programmeSelect(value, testid, onchange) {
  const select = h('select', { class: 'programme-select', dataset: { testid }, onchange });
  select.replaceChildren(...programmeNames().map((n) => h('option', { value: n }, n)));
  select.value = programmeNames().includes(value) ? value : 'main';
  return select;
}

function renderProgrammes() {
  const d = state.editing;
  $('ed-programmes').replaceChildren(...d.programmes.map((p, i) => {
    const add = h('select', { 'aria-label': `Track to add to ${p.name}` });
    trackOptions(add, 'Add a track…');
    add.addEventListener('change', () => {
      if (add.value) { p.playlist.push(add.value); renderProgrammes(); }
    });
    return h('div', { class: 'card programme', dataset: { testid: 'ed-programme', name: p.name } },
      h('div', { class: 'inline-row' },
        h('label', {}, 'Name ', h('input', {
          type: 'text', value: p.name, pattern: '[A-Za-z0-9_\\-]{1,64}', spellcheck: 'false',
          dataset: { testid: 'ed-programme-name' },
          onchange: (ev) => { p.name = ev.target.value.trim(); renderSchedule(); },
        })),
        h('label', { class: 'check' }, h('input', {
          type: 'checkbox', checked: p.shuffle, onchange: (ev) => { p.shuffle = ev.target.checked; },
        }), ' Shuffle'),
        h('button', {
          type: 'button', class: 'icon danger', 'aria-label': `Remove programme ${p.name}`,
          onclick: () => { d.programmes.splice(i, 1); renderProgrammes(); renderSchedule(); },
        }, '✕')),
      h('ul', { class: 'chips' }, p.playlist.map((id, j) => h('li', {}, trackName(id),
        h('button', {
          type: 'button', class: 'link', 'aria-label': `Remove ${trackName(id)}`,
          onclick: () => { p.playlist.splice(j, 1); renderProgrammes(); },
        }, '✕')))),
      add);
  }));
}

function renderSchedule() {
  const d = state.editing;
  const s = d.schedule;
  const dflt = $('ed-sched-default');
  dflt.replaceChildren(...programmeNames().map((n) => h('option', { value: n }, n)));
  dflt.value = s && programmeNames().includes(s.default) ? s.default : 'main';
  const field = (obj, key, attrs) => h('input', {
    ...attrs, value: obj[key] || '', onchange: (ev) => { obj[key] = ev.target.value.trim() || null; },
  });
  $('ed-weekly-body').replaceChildren(...(s ? s.weekly : []).map((w, i) =>
    h('tr', { dataset: { testid: 'ed-weekly-row' } },
      h('td', {}, field(w, 'days', { type: 'text', placeholder: 'mon-fri', 'aria-label': 'Days', dataset: { testid: 'ed-weekly-days' } })),
      h('td', {}, field(w, 'from', { type: 'time', 'aria-label': 'From', dataset: { testid: 'ed-weekly-from' } })),
      h('td', {}, field(w, 'to', { type: 'time', 'aria-label': 'To', dataset: { testid: 'ed-weekly-to' } })),
      h('td', {}, programmeSelect(w.programme, 'ed-weekly-programme', (ev) => { w.programme = ev.target.value; })),
      h('td', {}, h('button', {
        type: 'button', class: 'icon danger', 'aria-label': 'Remove this range',
        onclick: () => { s.weekly.splice(i, 1); renderSchedule(); },
      }, '✕')))));
  $('ed-dates-body').replaceChildren(...(s ? s.dates : []).map((x, i) =>
    h('tr', { dataset: { testid: 'ed-date-row' } },
      h('td', {}, field(x, 'date', { type: 'date', 'aria-label': 'Date', dataset: { testid: 'ed-date' } })),
      h('td', {}, field(x, 'from', { type: 'time', 'aria-label': 'From (empty: all day)' })),
      h('td', {}, field(x, 'to', { type: 'time', 'aria-label': 'To (empty: all day)' })),
      h('td', {}, programmeSelect(x.programme, 'ed-date-programme', (ev) => { x.programme = ev.target.value; })),
      h('td', {}, h('button', {
        type: 'button', class: 'icon danger', 'aria-label': 'Remove this date',
        onclick: () => { s.dates.splice(i, 1); renderSchedule(); },
      }, '✕')))));
}

function ensureSchedule() {
  const d = state.editing;
  if (!d.schedule) {
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
    d.schedule = { timezone: zone, default: 'main', weekly: [], dates: [] };
    $('ed-sched-zone').value = zone;
  }
  return d.schedule;
}

function numberOr(value, fallback) {
  const n = Number(value);
  return value === '' || !Number.isFinite(n) ? fallback : n;
}

/** The draft as the API's ChannelInput. */
function channelInput() {
  const d = state.editing;
  const ann = (a) => {
    if (!a) return null;
    return {
      clips: a.clips, every_seconds: a.every_seconds ?? null, every_tracks: a.every_tracks ?? null,
      loudness_lufs: a.loudness_lufs ?? null, fade_out_ms: a.fade_out_ms, fade_in_ms: a.fade_in_ms,
    };
  };
  if (d.announcements) {
    const every = numberOr($('ed-ann-every').value, 30);
    const byTracks = $('ed-ann-unit').value === 'tracks';
    d.announcements.every_seconds = byTracks ? null : every;
    d.announcements.every_tracks = byTracks ? every : null;
    d.announcements.fade_out_ms = numberOr($('ed-ann-fade-out').value, DEFAULT_FADE_MS);
    d.announcements.fade_in_ms = numberOr($('ed-ann-fade-in').value, DEFAULT_FADE_MS);
  }
  let schedule = null;
  if (d.schedule) {
    schedule = {
      timezone: $('ed-sched-zone').value.trim(),
      default: $('ed-sched-default').value,
      weekly: d.schedule.weekly.map((w) => ({ days: w.days || '', from: w.from || '', to: w.to || '', programme: w.programme || 'main' })),
      dates: d.schedule.dates.map((x) => ({ date: x.date || '', from: x.from || null, to: x.to || null, programme: x.programme || 'main' })),
    };
  }
  const programmes = {};
  for (const p of d.programmes) {
    if (p.name) programmes[p.name] = { playlist: p.playlist, shuffle: p.shuffle, announcements: ann(p.announcements) };
  }
  return {
    name: $('ed-name').value.trim(),
    mode: $('ed-mode').value,
    loudness_lufs: numberOr($('ed-loudness').value, null),
    shuffle: $('ed-shuffle').checked,
    playlist: d.playlist,
    announcements: ann(d.announcements),
    greeting: $('ed-greeting').value || null,
    schedule,
    programmes,
    switch: $('ed-switch').value,
    switch_fade_ms: d.switch_fade_ms ?? null,
  };
}

async function onSaveChannel(ev) {
  ev.preventDefault();
  const d = state.editing;
  if (!d || d.readOnly) return;
  const button = $('ed-save');
  button.disabled = true;
  try {
    const c = await api('PUT', `/api/channels/${encodeURIComponent(d.original)}`, channelInput());
    state.editing = draftOf(c);
    fillEditor();
    setMessage($('editor-message'), 'Saved. Callers on this channel hear the change now.', true);
    await loadChannels();
  } catch (e) {
    setMessage($('editor-message'), e.message, false);
  } finally {
    button.disabled = false;
  }
}

function setupChannelEditor() {
  $('channel-new-form').addEventListener('submit', onCreateChannel);
  $('route-form').addEventListener('submit', onAddRoute);
  $('channel-editor').addEventListener('submit', onSaveChannel);
  $('ed-close').addEventListener('click', closeEditor);
  $('ed-add-track-button').addEventListener('click', () => {
    const id = $('ed-add-track').value;
    if (!id || !state.editing) return;
    state.editing.playlist.push(id);
    renderPlaylist();
  });
  $('ed-ann-on').addEventListener('change', (ev) => {
    const d = state.editing;
    d.announcements = ev.target.checked
      ? (d.announcements || { clips: [], every_seconds: 30, every_tracks: null, fade_out_ms: DEFAULT_FADE_MS, fade_in_ms: DEFAULT_FADE_MS })
      : null;
    $('ed-ann').hidden = !ev.target.checked;
    renderAnnouncementClips();
  });
  $('ed-ann-add-button').addEventListener('click', () => {
    const id = $('ed-ann-add').value;
    const a = state.editing && state.editing.announcements;
    if (!id || !a) return;
    a.clips.push(id);
    renderAnnouncementClips();
  });
  $('ed-sched-on').addEventListener('change', (ev) => {
    if (ev.target.checked) ensureSchedule(); else state.editing.schedule = null;
    $('ed-sched').hidden = !ev.target.checked;
    renderSchedule();
  });
  $('ed-switch').addEventListener('change', (ev) => {
    state.editing.switch = ev.target.value;
  });
  $('ed-programme-add').addEventListener('click', () => {
    const d = state.editing;
    let n = d.programmes.length + 1;
    while (programmeNames().includes(`programme${n}`)) n++;
    d.programmes.push({ name: `programme${n}`, playlist: [], shuffle: false, announcements: null });
    renderProgrammes();
    renderSchedule();
  });
  $('ed-weekly-add').addEventListener('click', () => {
    ensureSchedule().weekly.push({ days: 'mon-fri', from: '09:00', to: '17:00', programme: 'main' });
    renderSchedule();
  });
  $('ed-dates-add').addEventListener('click', () => {
    ensureSchedule().dates.push({ date: '', from: null, to: null, programme: 'main' });
    renderSchedule();
  });
}

// ---------------------------------------------------------------------------------------------
// Settings, password, tokens

async function loadSettings() {
  try {
    const s = await api('GET', '/api/settings');
    $('settings-loudness').value = s.loudness_lufs ?? '';
    $('settings-level').value = s.lineout_level_db ?? '';
    $('settings-device').value = s.lineout_device ?? '';
  } catch (e) {
    if (e.status !== 401) setMessage($('settings-message'), e.message, false);
  }
}

async function onSaveSettings(ev) {
  ev.preventDefault();
  const patch = {};
  const loudness = $('settings-loudness').value.trim();
  const level = $('settings-level').value.trim();
  const device = $('settings-device').value.trim();
  if (loudness !== '') patch.loudness_lufs = Number(loudness);
  if (level !== '') patch.lineout_level_db = Number(level);
  if (device !== '') patch.lineout_device = device;
  try {
    const s = await api('PUT', '/api/settings', patch);
    $('settings-loudness').value = s.loudness_lufs ?? '';
    $('settings-level').value = s.lineout_level_db ?? '';
    $('settings-device').value = s.lineout_device ?? '';
    setMessage($('settings-message'), 'Saved. Changes apply now.', true);
  } catch (e) {
    setMessage($('settings-message'), e.message, false);
  }
}

async function onChangePassword(ev) {
  ev.preventDefault();
  const msg = $('password-message');
  const next = $('password-new').value;
  if (next !== $('password-confirm').value) {
    setMessage(msg, 'The two new passwords differ.', false);
    return;
  }
  try {
    await api('POST', '/api/password', { current: $('password-current').value, new: next });
    $('password-form').reset();
    setMessage(msg, 'Password changed. Other browsers are logged out.', true);
  } catch (e) {
    setMessage(msg, e.message, false);
  }
}

async function loadTokens() {
  try {
    const tokens = await api('GET', '/api/tokens');
    $('tokens-body').replaceChildren(...(tokens.length ? tokens.map((t) =>
      h('tr', { dataset: { testid: 'token-row', name: t.name } },
        h('td', {}, t.name), h('td', {}, dateOf(t.created)),
        h('td', {}, h('button', {
          type: 'button', class: 'secondary danger', dataset: { testid: 'token-revoke' },
          'aria-label': `Revoke ${t.name}`, onclick: () => revokeToken(t.name),
        }, 'Revoke'))))
      : [h('tr', { class: 'empty' }, h('td', { colspan: '3' }, 'No tokens.'))]));
  } catch (e) {
    if (e.status !== 401) setMessage($('token-message'), e.message, false);
  }
}

async function onCreateToken(ev) {
  ev.preventDefault();
  const name = $('token-name').value.trim();
  try {
    const r = await api('POST', '/api/tokens', { name });
    $('token-secret').textContent = r.token;
    $('token-new').hidden = false;
    $('token-name').value = '';
    setMessage($('token-message'), `Token "${r.name}" created.`, true);
    await loadTokens();
  } catch (e) {
    setMessage($('token-message'), e.message, false);
  }
}

async function revokeToken(name) {
  if (!confirm(`Revoke token "${name}"? Scripts using it stop working.`)) return;
  try {
    await api('DELETE', `/api/tokens/${encodeURIComponent(name)}`);
    setMessage($('token-message'), `Token "${name}" revoked.`, true);
    $('token-new').hidden = true;
    await loadTokens();
  } catch (e) {
    setMessage($('token-message'), e.message, false);
  }
}

async function copyToken() {
  const text = $('token-secret').textContent;
  try {
    await navigator.clipboard.writeText(text);
    setMessage($('token-message'), 'Copied.', true);
  } catch {
    // No clipboard API (plain HTTP): select it for Ctrl+C.
    const range = document.createRange();
    range.selectNodeContents($('token-secret'));
    const sel = getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }
}

// ---------------------------------------------------------------------------------------------
// Start

async function start() {
  $('login-form').addEventListener('submit', onLogin);
  $('logout').addEventListener('click', onLogout);
  $('settings-form').addEventListener('submit', onSaveSettings);
  $('password-form').addEventListener('submit', onChangePassword);
  $('token-form').addEventListener('submit', onCreateToken);
  $('token-copy').addEventListener('click', copyToken);
  window.addEventListener('hashchange', route);
  setupDropZone();
  setupChannelEditor();
  try {
    const s = await api('GET', '/api/session');
    state.csrf = s.csrf_token;
    showApp();
  } catch (e) {
    showLogin(e.status === 401 || e.status === undefined ? '' : e.message);
  }
}

start();
