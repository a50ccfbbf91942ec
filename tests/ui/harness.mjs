// Browser tests of the dashboard: a real `nebula up` on simulated GPUs, on a free loopback port,
// driven by Debian's chromium through playwright-core. Every process is cleaned up.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const require = createRequire(new URL('../../ui/package.json', import.meta.url));
const { chromium } = require('playwright-core');

export const binary = process.env.NEBULA_BINARY ?? new URL('../../build/nebula', import.meta.url).pathname;
export const chromiumPath = process.env.NEBULA_CHROMIUM ?? '/usr/bin/chromium';
// Screenshots land here (the README's come from it).
export const screenshotDir = process.env.NEBULA_SCREENSHOTS ?? join(tmpdir(), 'nebula-ui-screenshots');

export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

// Polls `check` until it returns a truthy value (which is returned), or throws after `timeoutMs`.
export async function eventually(check, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export class Nebula {
  // `auth`: 'keys' or 'none'.
  static async start({ auth = 'keys', gpus = '2xH100-80GB', extra = [] } = {}) {
    const nebula = new Nebula();
    nebula.dir = mkdtempSync(join(tmpdir(), 'nebula-ui-'));
    nebula.dataDir = join(nebula.dir, 'data');
    nebula.port = await freePort();
    nebula.url = `http://127.0.0.1:${nebula.port}`;
    nebula.output = '';
    const args = ['up', '--listen', `127.0.0.1:${nebula.port}`, '--data-dir', nebula.dataDir, '--sim-gpus', gpus,
      '--log-level', 'warn', '--name', 'gpu-box', '--auth', auth, '--exit-with-parent', ...extra];
    nebula.process = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const collect = (chunk) => (nebula.output += chunk.toString());
    nebula.process.stdout.on('data', collect);
    nebula.process.stderr.on('data', collect);
    nebula.exited = new Promise((resolve) => nebula.process.once('exit', resolve));
    await eventually(async () => (await fetch(`${nebula.url}/healthz`)).ok, 20000, `nebula up at ${nebula.url}`);
    if (auth === 'keys') nebula.adminKey = readFileSync(join(nebula.dataDir, 'admin.key'), 'utf8').trim();
    nebula.joinToken = readFileSync(join(nebula.dataDir, 'join-token'), 'utf8').trim();
    return nebula;
  }

  headers(extra = {}) {
    return { ...(this.adminKey ? { Authorization: `Bearer ${this.adminKey}` } : {}), ...extra };
  }

  async api(method, path, body) {
    const response = await fetch(`${this.url}${path}`, {
      method,
      headers: this.headers(body === undefined ? {} : { 'Content-Type': 'application/json' }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    return { status: response.status, json, text, headers: response.headers };
  }

  async stop() {
    if (this.process.exitCode === null) {
      this.process.kill('SIGTERM');
      const killer = setTimeout(() => this.process.kill('SIGKILL'), 20000);
      await this.exited;
      clearTimeout(killer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export async function launchBrowser() {
  if (!existsSync(chromiumPath)) {
    throw new Error(`${chromiumPath} is missing: run scripts/install-deps (it installs Debian's chromium)`);
  }
  // playwright-core gives the browser a fresh profile directory of its own (and removes it).
  return chromium.launch({
    executablePath: chromiumPath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

// A page that records console errors and CSP violations, so a test can assert there were none.
export async function newPage(browser, { width = 1280, height = 860, colorScheme = 'light' } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, colorScheme });
  const page = await context.newPage();
  page.problems = [];
  page.on('console', (message) => {
    if (message.type() === 'error') page.problems.push(message.text());
  });
  page.on('pageerror', (error) => page.problems.push(String(error)));
  return page;
}

export async function screenshot(page, name) {
  mkdirSync(screenshotDir, { recursive: true });
  await page.screenshot({ path: join(screenshotDir, `${name}.png`), fullPage: false });
}

export async function signIn(page, nebula) {
  await page.goto(`${nebula.url}/ui/`);
  await page.getByLabel('API key').fill(nebula.adminKey);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
}

export function record(file, line) {
  writeFileSync(file, line + '\n', { flag: 'a' });
}
