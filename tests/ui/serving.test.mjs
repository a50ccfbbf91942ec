// The dashboard is served from the binary with a strict CSP, asks for a key under --auth keys,
// opens directly under --auth none, and stays under its size budget.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Nebula, launchBrowser, newPage, screenshot, signIn } from './harness.mjs';

let nebula;
let browser;
before(async () => {
  nebula = await Nebula.start({ auth: 'keys' });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await nebula?.stop();
});

test('/ redirects to /ui/ and /ui/ carries the security headers', async () => {
  const root = await fetch(`${nebula.url}/`, { redirect: 'manual' });
  assert.equal(root.status, 302);
  assert.equal(root.headers.get('location'), '/ui/');
  const index = await fetch(`${nebula.url}/ui/`);
  assert.equal(index.status, 200);
  assert.match(index.headers.get('content-type'), /^text\/html/);
  const csp = index.headers.get('content-security-policy');
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.equal(index.headers.get('x-content-type-options'), 'nosniff');
  assert.equal(index.headers.get('x-frame-options'), 'DENY');
  const html = await index.text();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script in index.html');
  assert.doesNotMatch(html, /<style/, 'no inline style in index.html');
});

test('client-side routes reload, unknown files are 404, and ETags revalidate', async () => {
  const deep = await fetch(`${nebula.url}/ui/deployments/chat`);
  assert.equal(deep.status, 200);
  assert.match(await deep.text(), /<div id="root">/);
  assert.equal((await fetch(`${nebula.url}/ui/assets/nope.js`)).status, 404);
  const first = await fetch(`${nebula.url}/ui/`);
  const again = await fetch(`${nebula.url}/ui/`, { headers: { 'If-None-Match': first.headers.get('etag') } });
  assert.equal(again.status, 304);
});

test('the whole bundle is under 300 KB gzipped', async () => {
  const html = await (await fetch(`${nebula.url}/ui/`)).text();
  const assets = [...html.matchAll(/(?:src|href)="(\/ui\/assets\/[^"]+)"/g)].map((match) => match[1]);
  assert.ok(assets.length >= 2, `index.html names its script and stylesheet (${assets})`);
  let gzipped = 0;
  for (const asset of assets) {
    // fetch() would decompress: ask with a raw request.
    const response = await fetch(`${nebula.url}${asset}`, { headers: { 'Accept-Encoding': 'gzip' } });
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('cache-control'), 'public, max-age=31536000, immutable');
    gzipped += Number(response.headers.get('content-length') ?? 0) || (await response.arrayBuffer()).byteLength;
  }
  console.log(`bundle: ${assets.length} files, ${(gzipped / 1024).toFixed(1)} KB as served`);
  assert.ok(gzipped < 300 * 1024, `bundle is ${gzipped} bytes`);
});

test('under --auth keys the login page asks for a key, refuses a bad one, and signs in', async () => {
  const page = await newPage(browser);
  const response = await page.goto(`${nebula.url}/ui/`);
  assert.match(response.headers()['content-security-policy'], /script-src 'self'/);
  await page.getByLabel('API key').waitFor();
  await screenshot(page, 'login');
  await page.getByLabel('API key').fill('nb-bogus_0000');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').filter({ hasText: 'Incorrect API key provided.' }).waitFor();
  await signIn(page, nebula);
  // The key lives in sessionStorage only.
  assert.equal(await page.evaluate(() => localStorage.getItem('nebula.apiKey')), null);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('nebula.apiKey')), nebula.adminKey);
  const cspProblems = page.problems.filter((problem) => /Content Security Policy/i.test(problem));
  assert.deepEqual(cspProblems, []);
  await page.context().close();
});

test('under --auth none the dashboard opens directly', async () => {
  const open = await Nebula.start({ auth: 'none', gpus: '1xH100-80GB' });
  try {
    const page = await newPage(browser);
    await page.goto(`${open.url}/ui/`);
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    assert.equal(await page.getByLabel('API key').count(), 0);
    assert.equal(await page.getByRole('button', { name: 'Sign out' }).count(), 0);
    await page.context().close();
  } finally {
    await open.stop();
  }
});
