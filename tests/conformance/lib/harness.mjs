// Real processes for the conformance suite: `nebula up` (the gateway, with simulated GPUs and
// engine-sim replicas) and `nebula engine-sim` on its own, each on a free loopback port with a
// temporary data dir, stopped when the test file ends. The binary comes from NEBULA_BINARY
// (CMake passes $<TARGET_FILE:nebula>).
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import OpenAI from 'openai';

const run = promisify(execFile);

export const NEBULA = process.env.NEBULA_BINARY;
if (!NEBULA) throw new Error('NEBULA_BINARY must name the nebula binary (ctest sets it)');

// A case skipped for a behaviour engine-sim lacks runs anyway with NEBULA_CONFORMANCE_RUN_SKIPPED=1
// (to check it against an engine-sim that has it).
export function skipUnlessForced(reason) {
  return process.env.NEBULA_CONFORMANCE_RUN_SKIPPED ? false : reason;
}

// The model name both targets serve: the gateway's deployment and engine-sim's --model.
export const MODEL = 'chat';

// Processes still running when this process exits (a failed or interrupted run): `nebula up` gets
// SIGTERM, so that it stops its engines (it also runs with --exit-with-parent), the rest SIGKILL.
const children = new Map();
process.on('exit', () => {
  for (const [child, signal] of children) child.kill(signal);
});

export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

// Polls `condition` (sync or async) every `interval_ms` until it returns a truthy value, which is
// returned; throws with `what` after `timeout_ms`.
export async function waitFor(condition, what, timeout_ms = 20_000, interval_ms = 20) {
  const deadline = Date.now() + timeout_ms;
  let last_error;
  for (;;) {
    try {
      const value = await condition();
      if (value) return value;
    } catch (error) {
      last_error = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout_ms} ms waiting for ${what}${last_error ? `: ${last_error}` : ''}`);
    }
    await new Promise((resolve) => setTimeout(resolve, interval_ms));
  }
}

class Process {
  constructor(argv, { env = {}, exitSignal = 'SIGKILL' } = {}) {
    this.output = '';
    this.child = spawn(argv[0], argv.slice(1), { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    children.set(this.child, exitSignal);
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    this.exited.then(() => children.delete(this.child));
    for (const stream of [this.child.stdout, this.child.stderr]) {
      stream.on('data', (data) => {
        if (this.output.length < 1 << 20) this.output += data.toString();
      });
    }
  }
  get alive() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }
  // SIGTERM, then SIGKILL if it has not exited within `grace_ms`.
  async stop(grace_ms = 15_000) {
    if (!this.alive) return this.exited;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), grace_ms);
    const result = await this.exited;
    clearTimeout(timer);
    return result;
  }
}

async function get(url, headers = {}) {
  const response = await fetch(url, { headers });
  return { status: response.status, body: await response.text() };
}

// `nebula engine-sim` alone, serving MODEL; `args` are extra engine-sim flags.
export async function startEngine(args = []) {
  const port = await freePort();
  const engine = new Process([NEBULA, 'engine-sim', '--host', '127.0.0.1', '--port', String(port), '--model', MODEL,
    '--startup-seconds', '0', '--log-level', 'warn', ...args]);
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitFor(async () => (await get(`${url}/health`)).status === 200, 'engine-sim /health');
  } catch (error) {
    await engine.stop();
    throw new Error(`${error.message}\n${engine.output}`);
  }
  return {
    kind: 'engine',
    url,
    engineUrl: url,
    client: (options = {}) => new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0, ...options }),
    stop: () => engine.stop(),
    output: () => engine.output,
  };
}

// `nebula up --auth keys` on simulated GPUs with the deployments given as `nebula deploy`
// argument lists (each gets --engine sim --wait unless it says otherwise).
export async function startGateway({ deployments = [], gpus = '1xH100-80GB', extra = [] } = {}) {
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nebula-conformance-'));
  const dataDir = path.join(dir, 'data');
  const url = `http://127.0.0.1:${port}`;
  const up = new Process([NEBULA, 'up', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--sim-gpus', gpus,
    '--auth', 'keys', '--log-level', 'warn', '--name', 'conformance-node', '--exit-with-parent', ...extra],
  { exitSignal: 'SIGTERM' });
  const gateway = {
    kind: 'gateway',
    url,
    dataDir,
    output: () => up.output,
    adminKey: () => readFileSync(path.join(dataDir, 'admin.key'), 'utf8').trim(),
    async cli(args, { apiKey } = {}) {
      const env = { ...process.env, NEBULA_SERVER: url, NEBULA_DATA_DIR: dataDir };
      if (apiKey) env.NEBULA_API_KEY = apiKey;
      try {
        const { stdout } = await run(NEBULA, args, { env });
        return stdout;
      } catch (error) {
        throw new Error(`nebula ${args.join(' ')} failed: ${error.stderr || error.message}`);
      }
    },
    // A new inference key with the flags of `nebula keys create` (--rpm, --tpm ...); its secret.
    async createKey(name, flags = []) {
      const created = JSON.parse(await gateway.cli(['keys', 'create', name, '-o', 'json', ...flags]));
      return created.secret;
    },
    async admin(pathname) {
      const answer = await get(`${url}${pathname}`, { Authorization: `Bearer ${gateway.adminKey()}` });
      if (answer.status !== 200) throw new Error(`GET ${pathname}: ${answer.status} ${answer.body}`);
      return JSON.parse(answer.body);
    },
    // The engine URLs of a deployment's Ready replicas.
    async engineUrls(deployment = MODEL) {
      const replicas = await gateway.admin('/api/v1/replicas');
      return replicas.items
        .filter((replica) => replica.spec.deployment === deployment && replica.status.phase === 'Ready')
        .map((replica) => replica.status.endpoint);
    },
    async stop() {
      await up.stop(30_000);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await waitFor(async () => (await get(`${url}/readyz`)).status === 200, 'nebula up /readyz');
    await waitFor(async () => {
      const nodes = await gateway.admin('/api/v1/nodes');
      return nodes.items.length === 1 && nodes.items[0].status.ready === true;
    }, 'the node to be Ready');
    for (const deployment of deployments) {
      await gateway.cli(['deploy', ...deployment, '--wait', '--timeout', '60s']);
    }
    gateway.apiKey = await gateway.createKey('conformance');
    gateway.engineUrl = (await gateway.engineUrls())[0];
    gateway.headers = { Authorization: `Bearer ${gateway.apiKey}` };
    gateway.client = (options = {}) =>
      new OpenAI({ baseURL: `${url}/v1`, apiKey: gateway.apiKey, maxRetries: 0, ...options });
  } catch (error) {
    await up.stop();
    throw new Error(`${error.message}\n---- nebula up output ----\n${up.output}`);
  }
  return gateway;
}

// The deployment both targets' cases run against: `chat`, one engine-sim replica. Engine flags
// come last so a target can be started with the same ones on its own.
export function chatDeployment(engineArgs = [], name = MODEL) {
  return [name, '--engine', 'sim', '--model', 'qwen2.5-0.5b', ...engineArgs.map((arg) => `--engine-arg=${arg}`)];
}

// An engine's Prometheus gauge (e.g. vllm:num_requests_running), summed over its series.
export async function engineGauge(engineUrl, name) {
  const { body } = await get(`${engineUrl}/metrics`);
  let total = 0;
  let seen = false;
  for (const line of body.split('\n')) {
    if (line.startsWith('#')) continue;
    const match = line.match(/^([^{\s]+)(\{[^}]*\})?\s+(\S+)/);
    if (match && match[1] === name) {
      total += Number(match[3]);
      seen = true;
    }
  }
  if (!seen) throw new Error(`${engineUrl}/metrics has no ${name}`);
  return total;
}

// Raw HTTP for what the SDK hides (status lines, headers of a success, hostile bodies).
export async function post(url, body, headers = {}) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await response.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: response.status, headers: response.headers, text, json };
}

// Both targets, started together: the gateway (the deployment runs engine-sim with
// `engineArgs`) and engine-sim alone with the same flags.
export async function startBoth(engineArgs = []) {
  const [gateway, engine] = await Promise.all([
    startGateway({ deployments: [chatDeployment(engineArgs)] }),
    startEngine(engineArgs),
  ]);
  return { gateway, engine };
}
