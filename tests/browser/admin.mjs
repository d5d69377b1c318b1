// Drives mohd's admin page in headless Debian chromium, as an admin would: log in (a wrong
// password first), upload two files, reorder them with the buttons and by dragging, reload,
// watch a call appear on the Status page, then make a channel (playlist, shuffle, an
// announcement, a schedule), route a number to it and watch a call to that number on it. Any console error, page error, CSP violation or
// unexpected HTTP error fails the run.
//
// Run by tests/browser.rs, which starts mohd and places the call:
//   MOHD_PASSWORD=... node admin.mjs --url http://127.0.0.1:PORT --music A.wav --music B.wav \
//     --screenshots DIR [--chromium /usr/bin/chromium] [--call-seconds 30]
// When the page is ready to see a call it prints READY_FOR_CALL on stdout; the caller then dials
// in (for a few seconds) and the script waits for the call to appear and then to leave. Once the
// channel is made and routed it prints READY_FOR_CHANNEL_CALL: the caller dials the routed
// number (7001) the same way.
// Exit 0 and a last line BROWSER_TEST_OK on success; exit 1 with "BROWSER TEST FAILED: ..." on
// stderr otherwise (and a failure.png screenshot).

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: opts } = parseArgs({
  options: {
    url: { type: 'string' },
    music: { type: 'string', multiple: true },
    screenshots: { type: 'string' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    'call-seconds': { type: 'string', default: '30' },
  },
});
const password = process.env.MOHD_PASSWORD;
if (!opts.url || !password || !opts.screenshots || (opts.music || []).length !== 2) {
  console.error('usage: MOHD_PASSWORD=... node admin.mjs --url URL --music A --music B --screenshots DIR');
  process.exit(2);
}
const base = opts.url.replace(/\/$/, '');
const [musicA, musicB] = opts.music;
const nameA = basename(musicA);
const nameB = basename(musicB);
const shots = opts.screenshots;
mkdirSync(shots, { recursive: true });

const STEP_MS = 30_000;
/** The channel the page makes, and the number it routes to it (tests/browser.rs dials it). */
const CHANNEL = 'sales';
const ROUTE_USER = '7001';

class Failure extends Error {}

function log(msg) {
  console.log(`browser: ${msg}`);
}

/** Polls `probe` until it returns a truthy value; fails with `what` and the last value. */
async function waitFor(what, probe, timeoutMs = STEP_MS) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      last = `error: ${e.message}`;
    }
    if (Date.now() > end) {
      throw new Failure(`${what} (waited ${timeoutMs / 1000} s; last seen: ${JSON.stringify(last)})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

function sameOrder(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

// ---------------------------------------------------------------------------------------------
// Problems the page reports on its own: collected all along, checked after every step.

const problems = [];
// Responses the steps provoke on purpose: the first page load asks for a session it does not
// have, and the wrong password is refused. Chromium logs each as "Failed to load resource".
const allowedFailures = [
  { method: 'GET', path: '/api/session', status: 401 },
  { method: 'POST', path: '/api/login', status: 401 },
];
const allowedUrls = new Set(allowedFailures.map((f) => base + f.path));

function isAllowed(method, url, status) {
  const path = new URL(url).pathname;
  return allowedFailures.some((f) => f.method === method && f.path === path && f.status === status);
}

function checkProblems(step) {
  if (problems.length) {
    throw new Failure(`${step}: the page reported problems:\n  ${problems.join('\n  ')}`);
  }
}

const profile = mkdtempSync(join(tmpdir(), 'mohd-browser-'));
let context;
let page;
let exitCode = 0;

// The Rust test sends SIGTERM when the run takes too long; playwright closes chromium on it too.
process.once('SIGTERM', async () => {
  console.error('BROWSER TEST FAILED: stopped by SIGTERM (the run took too long)');
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  process.exit(1);
});

try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: opts.chromium,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1280, height: 900 },
    acceptDownloads: false,
  });
  context.setDefaultTimeout(STEP_MS);

  // CSP violations also reach the console, but the event names the directive and the blocked URL.
  await context.exposeBinding('__mohdCspViolation', (_src, text) => {
    problems.push(`CSP violation: ${text}`);
  });
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__mohdCspViolation(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'} ` +
        `at ${e.sourceFile || '?'}:${e.lineNumber}`);
    });
  });

  page = context.pages()[0] || (await context.newPage());
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const url = m.location().url || '';
    if (m.text().startsWith('Failed to load resource') && allowedUrls.has(url)) return;
    problems.push(`console error: ${m.text()} (${url || 'no location'})`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('response', (r) => {
    if (r.status() >= 400 && !isAllowed(r.request().method(), r.url(), r.status())) {
      problems.push(`HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
    }
  });
  page.on('requestfailed', (r) => {
    // A preview's audio or a poll cut short by navigation is not the page's fault.
    if (r.failure()?.errorText === 'net::ERR_ABORTED') return;
    problems.push(`request failed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`);
  });

  const shot = async (name) => {
    await page.screenshot({ path: join(shots, name), fullPage: true });
    log(`screenshot ${name}`);
  };
  const testid = (id) => page.locator(`[data-testid="${id}"]`);
  const trackRow = (name) => page.locator(`[data-testid="track-row"][data-name="${name}"]`);
  const domOrder = () =>
    page.$$eval('[data-testid="track-row"]', (rows) => rows.map((r) => r.dataset.name));
  // What the server stored, asked with the page's own session cookie.
  const apiTracks = () =>
    page.evaluate(async () => {
      const r = await fetch('/api/tracks', { credentials: 'same-origin', cache: 'no-store' });
      if (!r.ok) throw new Error(`GET /api/tracks: HTTP ${r.status}`);
      return r.json();
    });
  const apiOrder = async () => (await apiTracks()).map((t) => t.name);
  const expectOrder = async (step, want) => {
    await waitFor(`${step}: the playlist rows should read ${want.join(', ')}`, async () =>
      sameOrder(await domOrder(), want));
    const stored = await apiOrder();
    if (!sameOrder(stored, want)) {
      throw new Failure(`${step}: the page shows ${want.join(', ')} but GET /api/tracks says ${stored.join(', ')}`);
    }
    log(`${step}: order ${want.join(', ')} (page and server agree)`);
  };

  // 1. The login page.
  const first = await page.goto(base + '/');
  if (!first || first.status() !== 200) throw new Failure(`GET / answered ${first && first.status()}`);
  await testid('login-password').waitFor({ state: 'visible' });
  if (await page.locator('#app').isVisible()) throw new Failure('the app is visible before logging in');
  checkProblems('opening the page');
  await shot('01-login.png');

  // 2. A wrong password is refused with a message, and the app stays hidden.
  await testid('login-password').fill('not the password');
  await testid('login-submit').click();
  await waitFor('a wrong password should show "Wrong password."', async () =>
    (await testid('login-error').textContent()).includes('Wrong password'));
  if (await page.locator('#app').isVisible()) throw new Failure('a wrong password showed the app');
  checkProblems('wrong password');
  await shot('02-login-wrong-password.png');
  log('wrong password refused');

  // 3. The right one opens the Status page, healthy (a fresh library plays the demo melody).
  await testid('login-password').fill(password);
  await testid('login-submit').click();
  const outcome = await waitFor('logging in should show the app or an error', async () => {
    if ((await page.locator('#app').isVisible()) && !(await page.locator('#login').isVisible())) return 'in';
    const error = (await testid('login-error').textContent()).trim();
    return error && `login refused: "${error}"`;
  });
  if (outcome !== 'in') throw new Failure(`logging in with the admin password: ${outcome}`);
  await page.locator('[data-testid="health"][data-healthy="true"]').waitFor();
  await testid('channel-row').first().waitFor();
  checkProblems('logging in');
  await shot('03-status.png');
  log('logged in; health ok');

  // 4. Library: upload both files through the file input.
  await testid('nav-library').click();
  await waitFor('the Library view should show', () => page.locator('#view-library').isVisible());
  await testid('upload-input').setInputFiles([musicA, musicB]);
  for (const name of [nameA, nameB]) {
    const item = page.locator(`[data-testid="upload-item"][data-name="${name}"]`);
    await item.waitFor();
    await waitFor(`the upload of ${name} should finish as "added"`, async () => {
      const cls = await item.getAttribute('class');
      const status = await item.locator('[data-testid="upload-status"]').textContent();
      if (cls === 'failed') throw new Failure(`the upload of ${name} failed: ${status}`);
      return cls === 'done' && status === 'added' && (await item.locator('progress').evaluate((p) => p.value)) === 100;
    }).catch((e) => { throw e instanceof Failure && e.message.includes('failed:') ? e : new Failure(e.message); });
    await trackRow(name).waitFor();
  }
  await expectOrder('after uploading', [nameA, nameB]);
  const tracks = await apiTracks();
  for (const t of tracks) {
    if (!t.enabled || !(t.duration_s >= 2)) {
      throw new Failure(`uploaded track ${t.name} should be enabled and ≥ 2 s long: ${JSON.stringify(t)}`);
    }
  }
  checkProblems('uploading');
  await shot('04-library-uploaded.png');

  // 5. Reorder with the buttons: A down, then back up.
  await trackRow(nameA).locator('[data-testid="move-down"]').click();
  await expectOrder('after A ↓', [nameB, nameA]);
  await trackRow(nameA).locator('[data-testid="move-up"]').click();
  await expectOrder('after A ↑', [nameA, nameB]);
  checkProblems('reordering with the buttons');

  // 6. Reorder by dragging A's handle onto the lower half of B's row, with the mouse.
  const handle = trackRow(nameA).locator('td.handle');
  const target = trackRow(nameB);
  const from = await handle.boundingBox();
  const to = await target.boundingBox();
  if (!from || !to) throw new Failure('the track rows have no size on screen');
  await page.mouse.move(from.x + from.width / 2, from.y + from.height / 2);
  await page.mouse.down();
  await page.mouse.move(from.x + from.width / 2, from.y + from.height / 2 + 5, { steps: 2 });
  await page.mouse.move(to.x + 40, to.y + to.height * 0.8, { steps: 10 });
  await page.mouse.up();
  await expectOrder('after dragging A below B', [nameB, nameA]);
  checkProblems('dragging');
  await shot('05-library-dragged.png');

  // 7. The order survives a reload (the session does too: no login form).
  await page.reload();
  await waitFor('after a reload the app should show without logging in again', () =>
    page.locator('#app').isVisible());
  await waitFor('after a reload the Library view should still show', () =>
    page.locator('#view-library').isVisible());
  await expectOrder('after reloading', [nameB, nameA]);
  checkProblems('reloading');
  await shot('06-library-reloaded.png');

  // 8. Status: the channel plays the two tracks; then a call comes in and shows up, then leaves.
  await testid('nav-status').click();
  await page.locator('[data-testid="health"][data-healthy="true"]').waitFor();
  const channel = page.locator('[data-testid="channel-row"][data-name="default"]');
  await waitFor('the default channel should show 2 tracks, rendered', async () => {
    const cells = await channel.locator('td').allTextContents();
    return cells[4] === '2' && cells[5] === 'ready' && cells;
  }, 60_000);
  await waitFor('the default channel should be playing one of the uploaded tracks', async () => {
    const t = await channel.locator('[data-testid="playing-track"]').textContent();
    return [nameA, nameB].includes(t.trim());
  });
  const noCalls = await page.locator('[data-testid="call-row"]').count();
  if (noCalls !== 0) throw new Failure(`there are ${noCalls} calls before any was placed`);

  console.log('READY_FOR_CALL');
  const call = page.locator('[data-testid="call-row"]').first();
  await call.waitFor({ timeout: 30_000 }).catch(() => {
    throw new Failure('no call appeared in the calls table within 30 s of READY_FOR_CALL');
  });
  const cells = await waitFor('the call row should show a 127.0.0.1 peer, channel default, codec PCMU, packets sent', async () => {
    const c = (await call.locator('td').allTextContents()).map((s) => s.trim());
    return c[0].startsWith('127.0.0.1:') && c[1] === 'default' && c[2] === 'PCMU' &&
      Number(c[4].replace(/[^0-9]/g, '')) > 0 && c[5] === 'listening' && c;
  });
  const count = (await testid('call-count').textContent()).trim();
  if (count !== '1') throw new Failure(`"Calls on hold" should say 1, says ${count}`);
  log(`call shown: ${cells.join(' | ')}`);
  checkProblems('watching a call');
  await shot('07-status-call.png');

  await waitFor('the call should leave the table after the caller hangs up', async () =>
    (await page.locator('[data-testid="call-row"]').count()) === 0,
  Number(opts['call-seconds']) * 1000 + 15_000);
  log('call gone after hang-up');

  // 9. Channels: the config file's channel is read-only; a new channel gets a playlist (added
  // and ordered with the buttons and by dragging), shuffle, an announcement and a schedule, and
  // a number routed to it; then a call to that number shows up on it.
  await testid('nav-channels').click();
  await waitFor('the Channels view should show', () => page.locator('#view-channels').isVisible());
  const configRow = page.locator('[data-testid="channel-config-row"][data-name="default"]');
  await configRow.waitFor();
  const badge = (await configRow.locator('[data-testid="origin-badge"]').textContent()).trim();
  if (badge !== 'from the config file') throw new Failure(`the default channel's badge says "${badge}"`);
  await configRow.locator('[data-testid="channel-edit"]').click();
  await testid('editor-readonly').waitFor({ state: 'visible' });
  if (await testid('ed-save').isVisible()) throw new Failure('a config file channel can be saved from the page');
  await testid('ed-close').click();

  await testid('channel-new-name').fill(CHANNEL);
  await testid('channel-create').click();
  await page.locator(`[data-testid="channel-editor"][data-name="${CHANNEL}"]`).waitFor({ state: 'visible' });
  const edRows = () => page.$$eval('[data-testid="ed-track-row"]', (rows) => rows.map((r) => r.dataset.name));
  for (const name of [nameA, nameB]) {
    await testid('ed-add-track').selectOption({ label: name });
    await testid('ed-add-track-button').click();
  }
  await waitFor('the playlist editor should list A, B', async () => sameOrder(await edRows(), [nameA, nameB]));
  await page.locator(`[data-testid="ed-track-row"][data-name="${nameB}"] [data-testid="ed-move-up"]`).click();
  await waitFor('B ↑ should make B, A', async () => sameOrder(await edRows(), [nameB, nameA]));
  {
    const grip = page.locator(`[data-testid="ed-track-row"][data-name="${nameA}"] td.handle`);
    const onto = page.locator(`[data-testid="ed-track-row"][data-name="${nameB}"]`);
    const f = await grip.boundingBox();
    const t = await onto.boundingBox();
    await page.mouse.move(f.x + f.width / 2, f.y + f.height / 2);
    await page.mouse.down();
    await page.mouse.move(f.x + f.width / 2, f.y + f.height / 2 - 5, { steps: 2 });
    await page.mouse.move(t.x + 40, t.y + t.height * 0.2, { steps: 10 });
    await page.mouse.up();
  }
  await waitFor('dragging A above B should make A, B', async () => sameOrder(await edRows(), [nameA, nameB]));
  await testid('ed-shuffle').check();
  await testid('ed-ann-on').check();
  await testid('ed-ann-add').selectOption({ label: nameB });
  await testid('ed-ann-add-button').click();
  await testid('ed-ann-every').fill('10');
  await testid('ed-ann-unit').selectOption('seconds');
  await testid('ed-ann-fade-out').fill('300');
  await testid('ed-ann-fade-in').fill('300');
  await testid('ed-sched-on').check();
  await testid('ed-sched-zone').fill('Europe/London');
  await testid('ed-weekly-add').click();
  const weekly = page.locator('[data-testid="ed-weekly-row"]').first();
  await weekly.locator('[data-testid="ed-weekly-days"]').fill('daily');
  await weekly.locator('[data-testid="ed-weekly-from"]').fill('00:00');
  await weekly.locator('[data-testid="ed-weekly-to"]').fill('23:59');
  await testid('ed-save').click();
  await waitFor('saving the channel should say "Saved"', async () => {
    const m = (await testid('editor-message').textContent()).trim();
    if (m && !m.startsWith('Saved')) throw new Failure(`saving the channel: ${m}`);
    return m.startsWith('Saved');
  });
  const stored = await page.evaluate(async (name) =>
    (await fetch(`/api/channels/${name}`, { cache: 'no-store' })).json(), CHANNEL);
  const storedNames = stored.playlist.map((t) => t.name);
  if (!sameOrder(storedNames, [nameA, nameB]) || stored.shuffle !== true ||
      stored.announcements?.clips?.[0]?.name !== nameB || stored.announcements.every_seconds !== 10 ||
      stored.schedule?.timezone !== 'Europe/London' || stored.origin !== 'managed') {
    throw new Failure(`GET /api/channels/${CHANNEL} does not hold what the page set: ${JSON.stringify(stored)}`);
  }
  log(`channel ${CHANNEL}: ${storedNames.join(', ')}, shuffled, announcement every 10 s, schedule in ${stored.schedule.timezone}`);
  await shot('08-channel-edited.png');

  await testid('route-user').fill(ROUTE_USER);
  await testid('route-channel').selectOption(CHANNEL);
  await testid('route-add').click();
  await page.locator(`[data-testid="managed-route-row"][data-user="${ROUTE_USER}"]`).waitFor();
  await waitFor(`the dialplan should send ${ROUTE_USER} to ${CHANNEL}`, async () =>
    (await page.locator('[data-testid="route-row"]').allTextContents()).some((t) => t.includes(ROUTE_USER) && t.includes(CHANNEL)));
  await waitFor(`the ${CHANNEL} row should list its route`, async () =>
    (await page.locator(`[data-testid="channel-config-row"][data-name="${CHANNEL}"]`).textContent()).includes(ROUTE_USER));
  checkProblems('making a channel');
  await shot('09-channel-routed.png');

  await testid('nav-status').click();
  const salesRow = page.locator(`[data-testid="channel-row"][data-name="${CHANNEL}"]`);
  await waitFor(`the Status page should show ${CHANNEL} playing one of its tracks`, async () =>
    [nameA, nameB].includes((await salesRow.locator('[data-testid="playing-track"]').textContent()).trim()), 60_000);
  console.log('READY_FOR_CHANNEL_CALL');
  const salesCall = page.locator('[data-testid="call-row"]').first();
  await salesCall.waitFor({ timeout: 30_000 }).catch(() => {
    throw new Failure(`no call appeared within 30 s of READY_FOR_CHANNEL_CALL`);
  });
  await waitFor(`the call should be on channel ${CHANNEL}`, async () =>
    (await salesCall.locator('td').nth(1).textContent()).trim() === CHANNEL);
  checkProblems('a call on the new channel');
  await shot('10-status-channel-call.png');
  await waitFor('the call on the new channel should end', async () =>
    (await page.locator('[data-testid="call-row"]').count()) === 0,
  Number(opts['call-seconds']) * 1000 + 15_000);
  log(`call on ${CHANNEL} shown, then gone`);

  // 10. Log out: back to the login form, and the session is over on the server too.
  await testid('logout').click();
  await testid('login-password').waitFor({ state: 'visible' });
  // Asked for on purpose: the session is over (and a poll in flight at the click may hit it too).
  for (const path of ['/api/tracks', '/api/status']) {
    allowedFailures.push({ method: 'GET', path, status: 401 });
    allowedUrls.add(base + path);
  }
  const after = await page.evaluate(async () => (await fetch('/api/tracks', { cache: 'no-store' })).status);
  if (after !== 401) throw new Failure(`after logging out GET /api/tracks answered ${after}, not 401`);
  checkProblems('logging out');
  await shot('11-logged-out.png');

  log('all steps passed');
  console.log('BROWSER_TEST_OK');
} catch (e) {
  exitCode = 1;
  const msg = e instanceof Failure ? e.message : `${e.name}: ${e.message}`;
  console.error(`BROWSER TEST FAILED: ${msg}`);
  if (problems.length && !msg.includes('the page reported problems')) {
    console.error(`problems the page reported:\n  ${problems.join('\n  ')}`);
  }
  if (page) {
    try {
      await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true });
      console.error(`screenshot of the failure: ${join(shots, 'failure.png')}`);
    } catch { /* the browser may be gone */ }
  }
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(exitCode);
