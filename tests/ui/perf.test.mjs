// How long the dashboard takes to show a large cluster: 100 deployments and 50 nodes (8 GPUs
// each), seeded through the API as an operator and agents would (deployments with 0 replicas;
// nodes joined with the join token, each reporting its GPUs). Prints the times from navigation
// to every row on the page (docs/benchmarks.md records them); asserts only that everything is
// shown, never a time (timings belong to benchmarks, not to pass/fail).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Nebula, launchBrowser, newPage, screenshot } from './harness.mjs';

const kDeployments = 100;
const kNodes = 50;
const kGpusPerNode = 8;

let nebula;
let browser;
before(async () => {
  nebula = await Nebula.start({ auth: 'none', gpus: '1xH100-80GB' });
  browser = await launchBrowser();
  const creates = [];
  for (let i = 0; i < kDeployments; i++) {
    const name = `model-${String(i).padStart(3, '0')}`;
    creates.push(
      nebula.api('POST', '/api/v1/deployments', { metadata: { name }, spec: { model: 'llama-3.1-8b-instruct', engine: 'sim', replicas: 0 } }),
    );
  }
  for (const created of await Promise.all(creates)) assert.equal(created.status, 201, created.text);
  for (let i = 0; i < kNodes; i++) {
    const name = `node-${String(i).padStart(2, '0')}`;
    const joined = await nebula.api('POST', '/api/v1/nodes/join', { token: nebula.joinToken, name });
    assert.equal(joined.status, 200, joined.text);
    const gpus = Array.from({ length: kGpusPerNode }, (_, index) => ({
      index,
      uuid: `GPU-${name}-${index}`,
      name: 'H100-80GB',
      memory_total_mb: 81920,
      memory_used_mb: 1024 * index,
      utilization: 10 * index,
      temperature_c: 40 + index,
    }));
    const reported = await nebula.api('PUT', `/api/v1/nodes/${name}/status`, { gpus, gpu_probe: 'sim', engines: ['sim'] });
    assert.equal(reported.status, 200, reported.text);
  }
});
after(async () => {
  await browser?.close();
  await nebula?.stop();
});

const results = [];

// Milliseconds from the page's navigation start until `count` elements match `selector`.
async function timeUntil(page, selector, count) {
  await page.waitForFunction(([s, n]) => document.querySelectorAll(s).length >= n, [selector, count], { timeout: 30000 });
  return page.evaluate(() => performance.now());
}

test(`overview, deployments and nodes show ${kDeployments} deployments and ${kNodes} nodes`, async () => {
  const page = await newPage(browser);
  // A first load warms the browser's cache of the bundle, as a returning user has it.
  await page.goto(`${nebula.url}/ui/nodes`);
  await page.getByRole('heading', { name: 'Nodes' }).waitFor();

  for (let round = 0; round < 3; round++) {
    await page.goto(`${nebula.url}/ui/`);
    const overview = await timeUntil(page, 'main tbody tr', kDeployments + kNodes * kGpusPerNode + 1);
    await page.goto(`${nebula.url}/ui/deployments`);
    const deployments = await timeUntil(page, 'tr[data-deployment]', kDeployments);
    await page.goto(`${nebula.url}/ui/nodes`);
    const nodes = await timeUntil(page, 'main tbody tr', kNodes + 1);
    results.push({ overview, deployments, nodes });
  }
  await page.goto(`${nebula.url}/ui/deployments`);
  await timeUntil(page, 'tr[data-deployment]', kDeployments);
  assert.equal(await page.locator('tr[data-deployment]').count(), kDeployments);
  await page.goto(`${nebula.url}/ui/`);
  await timeUntil(page, 'main tbody tr', kDeployments + kNodes * kGpusPerNode + 1);
  assert.equal(await page.getByRole('meter').count(), kNodes * kGpusPerNode + 1 /* nebula up's own node */);
  await screenshot(page, 'overview-large');

  const median = (key) => results.map((r) => r[key]).sort((a, b) => a - b)[1];
  console.log(
    `ui render (navigation start to every row; median of 3): overview ${median('overview').toFixed(0)} ms ` +
      `(${kDeployments} deployments, ${kNodes} nodes × ${kGpusPerNode} GPUs), deployments ${median('deployments').toFixed(0)} ms, ` +
      `nodes ${median('nodes').toFixed(0)} ms`,
  );
  await page.context().close();
});

test('a change reaches a large page through the watch, without a reload', async () => {
  const page = await newPage(browser);
  await page.goto(`${nebula.url}/ui/deployments`);
  await timeUntil(page, 'tr[data-deployment]', kDeployments);
  const scaled = await nebula.api('PUT', '/api/v1/deployments/model-042/scale', { replicas: 3 });
  assert.equal(scaled.status, 200);
  await page.locator('tr[data-deployment="model-042"]').getByText('/3').waitFor();
  const deleted = await nebula.api('DELETE', '/api/v1/deployments/model-043');
  assert.equal(deleted.status, 200);
  await page.locator('tr[data-deployment="model-043"]').waitFor({ state: 'detached' });
  assert.equal(await page.locator('tr[data-deployment]').count(), kDeployments - 1);
  await page.context().close();
});
