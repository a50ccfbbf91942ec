// The dashboard driven as a user would, in a real browser, against a real `nebula up --auth keys`
// on simulated GPUs: deploy after a dry run, watch it become Ready, chat, keys, modes, nodes,
// usage, and bad input explained on the page. Saves a screenshot of every page.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Nebula, eventually, launchBrowser, newPage, screenshot, signIn } from './harness.mjs';

let nebula;
let browser;
let page;
before(async () => {
  nebula = await Nebula.start({ auth: 'keys' });
  browser = await launchBrowser();
  page = await newPage(browser);
  page.setDefaultTimeout(30000);
});
after(async () => {
  await browser?.close();
  await nebula?.stop();
});

const go = async (path) => {
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: path }).click();
  await page.getByRole('heading', { level: 1, name: path }).waitFor();
};

test('signs in with the admin key and shows the cluster', async () => {
  await signIn(page, nebula);
  await page.getByRole('link', { name: 'gpu-box' }).first().waitFor();
  await page.getByRole('meter', { name: 'gpu-box gpu1 VRAM allocated' }).waitFor();
  await page.getByText('Nothing deployed').waitFor();
});

test('deploys from the form only after its dry run, and the deployment becomes Ready live', async () => {
  await page.goto(`${nebula.url}/ui/deployments/new`);
  await page.getByLabel('Name').fill('chat');
  await page.getByLabel('Model').fill('qwen2.5-0.5b-instruct');
  await page.getByLabel('Engine arguments').fill('--step-base-ms 20');
  const deploy = page.getByRole('button', { name: 'Deploy', exact: true });
  assert.equal(await deploy.isDisabled(), true, 'Deploy waits for the preview');
  await page.getByRole('button', { name: 'Preview placement' }).click();
  const preview = page.getByTestId('preview');
  await preview.getByText('Fits').waitFor();
  await preview.getByRole('meter', { name: 'gpu-box gpu0 after VRAM allocated' }).waitFor();
  await screenshot(page, 'deploy-preview');
  // Changing the form makes the preview stale: Deploy waits for a new one.
  await page.getByLabel('Replicas').fill('2');
  await page.getByText('The form changed since the preview').waitFor();
  assert.equal(await deploy.isDisabled(), true);
  await page.getByLabel('Replicas').fill('1');
  await page.getByRole('button', { name: 'Preview placement' }).click();
  await preview.getByText('Fits').waitFor();
  await deploy.click();
  await page.getByRole('heading', { level: 1, name: 'chat' }).waitFor();
  await eventually(async () => (await page.getByTestId('ready-count').textContent()) === '1/1', 90000, 'chat Ready');
  await page.getByRole('heading', { level: 1, name: 'chat' }).locator('..').getByText('Ready').waitFor();
  await eventually(async () => !(await page.getByLabel(/^Log of chat-/).textContent()).includes('Waiting for log'), 20000, 'the engine log');
  await screenshot(page, 'deployment-detail');
  // A rolling restart, confirmed first: a new plan rolls out and the deployment is Ready again.
  await page.getByRole('button', { name: 'Restart' }).click();
  await page.getByRole('dialog', { name: 'Restart chat?' }).getByRole('button', { name: 'Restart' }).click();
  await page.getByRole('list', { name: 'Events' }).getByText('RestartRequested').waitFor();
  await eventually(async () => (await page.getByTestId('plan').textContent()).startsWith('v2'), 30000, 'plan 2');
  await page.getByRole('list', { name: 'Events' }).getByText('plan 2 replaced plan 1 on every replica').waitFor({ timeout: 60000 });
  await eventually(async () => (await page.getByTestId('ready-count').textContent()) === '1/1', 60000, 'chat Ready again');
  // Sleep, confirmed first, and Wake, which needs no confirmation.
  await page.getByRole('button', { name: 'Sleep' }).click();
  await page.getByRole('dialog', { name: 'Put chat to sleep?' }).getByRole('button', { name: 'Sleep' }).click();
  await page.getByRole('list', { name: 'Events' }).getByText('SleepRequested').waitFor();
  await page.getByRole('button', { name: 'Wake' }).click();
  await page.getByRole('list', { name: 'Events' }).getByText('WakeRequested').waitFor();
  await page.getByRole('button', { name: 'Sleep' }).waitFor();
  await eventually(async () => (await page.getByTestId('ready-count').textContent()) === '1/1', 60000, 'chat awake');
  await go('Deployments');
  await page.locator('tr[data-deployment="chat"]').getByText('Ready').waitFor();
  await screenshot(page, 'deployments');
});

test('explains bad input on the page: a model that does not fit, and a value the server refuses', async () => {
  await page.goto(`${nebula.url}/ui/deployments/new`);
  await page.getByLabel('Name').fill('Big Model');
  await page.getByText(/^Name: 1–63 characters/).waitFor();
  await page.getByLabel('Name').fill('big');
  await page.getByLabel('Model').fill('llama-3.1-70b-instruct');
  await page.getByRole('button', { name: 'Preview placement' }).click();
  const preview = page.getByTestId('preview');
  await preview.getByText('Does not fit').waitFor();
  await preview.getByRole('alert').getByText(/no node fits replica big-0/).waitFor();
  await preview.getByText(/awq-int4 variant/).waitFor();
  await preview.getByText(/tensor parallel over 2 GPUs/).waitFor();
  assert.equal(await page.getByRole('button', { name: 'Deploy', exact: true }).isDisabled(), true);
  await screenshot(page, 'deploy-does-not-fit');
  await page.getByLabel('Context length').fill('99999999999');
  await page.getByRole('button', { name: 'Preview placement' }).click();
  await page.getByRole('alert').getByText(/max_context/).waitFor();
  assert.equal((await nebula.api('GET', '/api/v1/deployments/big')).status, 404, 'nothing was created');
});

test('chats in the playground with streamed text, over both APIs', async () => {
  await go('Playground');
  await page.getByLabel('Deployment').selectOption('chat');
  await page.getByLabel('Max tokens').fill('40');
  // Record every length the answer's text goes through: streamed text grows in steps.
  await page.evaluate(() => {
    window.answerLengths = new Set();
    new MutationObserver(() => {
      const answers = document.querySelectorAll('li[data-role="assistant"] .text');
      const last = answers[answers.length - 1];
      if (last && last.textContent !== '…') window.answerLengths.add(last.textContent.length);
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  await page.getByLabel('Message').fill('Tell me about GPUs');
  await page.getByLabel('Message').press('Enter');
  const stats = page.getByTestId('answer-stats').first();
  await stats.waitFor();
  await page.getByRole('button', { name: 'Send' }).waitFor();
  assert.match(await stats.textContent(), /TTFT \d+(\.\d+)? (ms|s) · \d+(\.\d)? tokens\/s/);
  const lengths = await page.evaluate(() => [...window.answerLengths].filter((n) => n > 0).length);
  assert.ok(lengths >= 3, `the answer arrived in ${lengths} steps`);
  const answer = await page.locator('li[data-role="assistant"] .text').first().textContent();
  assert.ok(answer.length > 10, `answer: ${answer}`);
  await screenshot(page, 'playground');

  await page.getByLabel('Responses').check();
  await page.getByLabel('Message').fill('And about VRAM?');
  await page.getByRole('button', { name: 'Send' }).click();
  await page.getByTestId('answer-stats').nth(1).waitFor();
  await page.getByRole('button', { name: 'Send' }).waitFor();
  assert.ok((await page.locator('li[data-role="assistant"] .text').nth(1).textContent()).length > 10);

  // The overview shows the traffic: a TTFT median for chat, from /metrics.
  await go('Overview');
  await page.locator('tr', { has: page.getByRole('link', { name: 'chat' }) }).getByText(/^\d+(\.\d+)? m?s$/).waitFor();
  await screenshot(page, 'overview');
});

test('creates a key whose secret is shown once, sees its use, and revokes it', async () => {
  await go('API keys');
  await page.getByLabel('Name').fill('alice');
  await page.getByLabel('Requests per minute').fill('60');
  await page.getByLabel('Expires in (30d, 12h; empty = never)').fill('30d');
  await page.getByRole('button', { name: 'Create key' }).click();
  const secret = (await page.getByTestId('new-secret').textContent()).trim();
  assert.match(secret, /^nb-[a-z0-9]{8}_[0-9a-f]{32}$/);
  await page.getByText('it is shown only once').waitFor();
  await screenshot(page, 'keys-secret');
  await page.getByRole('button', { name: 'Done' }).click();
  await page.getByTestId('new-secret').waitFor({ state: 'detached' });
  assert.equal(await page.getByText(secret).count(), 0, 'the secret is gone once dismissed');
  const id = secret.slice(3, 11);
  const row = page.locator(`tr[data-key="${id}"]`);
  await row.getByText('60 rpm').waitFor();
  await row.getByText('never').waitFor();

  // The key works for inference, and its use shows on the list.
  const used = await fetch(`${nebula.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${secret}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'chat', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 }),
  });
  assert.equal(used.status, 200);
  await page.reload();
  await row.getByText(/s ago$/).waitFor();
  assert.equal(await page.getByText(secret).count(), 0, 'the secret is never shown again');
  await screenshot(page, 'keys');

  await row.getByRole('button', { name: 'Revoke' }).click();
  const dialog = page.getByRole('dialog', { name: /Revoke alice/ });
  await dialog.getByRole('button', { name: 'Revoke' }).click();
  await row.getByText('revoked').waitFor();
  const refused = await fetch(`${nebula.url}/v1/models`, { headers: { Authorization: `Bearer ${secret}` } });
  assert.equal(refused.status, 401);
});

test('creates modes and switches with a dry run first', async () => {
  const night = await nebula.api('POST', '/api/v1/deployments', {
    metadata: { name: 'night' },
    spec: { model: 'qwen2.5-0.5b-instruct', engine: 'sim', replicas: 1 },
  });
  assert.equal(night.status, 201, night.text);
  await go('Modes');
  await page.getByText('No modes').waitFor();
  for (const [mode, deployment] of [
    ['day', 'chat'],
    ['batch', 'night'],
  ]) {
    await page.getByLabel('Name').fill(mode);
    await page.getByRole('checkbox', { name: deployment }).check();
    await page.getByRole('button', { name: 'Create mode' }).click();
    await page.locator(`tr[data-mode="${mode}"]`).waitFor();
  }
  const batch = page.locator('tr[data-mode="batch"]');
  await batch.getByRole('button', { name: 'Switch to' }).click();
  const dialog = page.getByRole('dialog', { name: 'Switch to batch?' });
  await dialog.getByText(/Start: /).waitFor();
  await dialog.getByText('Stop: chat').waitFor();
  await screenshot(page, 'modes-dry-run');
  await dialog.getByRole('button', { name: 'Switch' }).click();
  await batch.getByText(/Switched in \d+\.\d s/).waitFor({ timeout: 90000 });
  await batch.getByText('active', { exact: true }).waitFor();
  await screenshot(page, 'modes');
  const chat = await nebula.api('GET', '/api/v1/deployments/chat');
  assert.equal(chat.json.spec.replicas, 0, 'the outgoing mode was stopped');
});

test('nodes: list, detail, drain and undrain, and the command to add one', async () => {
  await go('Nodes');
  await page.getByRole('button', { name: 'Get the command' }).click();
  const command = await page.getByTestId('agent-command').textContent();
  assert.match(command, new RegExp(`^nebula agent --server ${nebula.url} --token nbt-\\S+$`));
  const token = command.split('--token ')[1];
  // The token it shows really joins a node.
  const joined = await fetch(`${nebula.url}/api/v1/nodes/join`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ token, name: 'extra-node' }),
  });
  assert.equal(joined.status, 200, await joined.text());
  await page.getByRole('link', { name: 'extra-node' }).waitFor();
  await screenshot(page, 'nodes');
  const row = page.locator('tr', { has: page.getByRole('link', { name: 'gpu-box' }) });
  await row.getByRole('button', { name: 'Drain' }).click();
  await row.getByText('Draining').waitFor();
  await row.getByRole('button', { name: 'Undrain' }).click();
  await row.getByRole('button', { name: 'Drain' }).waitFor();
  await page.getByRole('link', { name: 'gpu-box' }).click();
  await page.getByRole('heading', { level: 1, name: 'gpu-box' }).waitFor();
  await page.getByRole('meter', { name: 'gpu0 VRAM allocated' }).waitFor();
  await screenshot(page, 'node-detail');
});

test('usage: per key, model and day, as a chart, tables and CSV', async () => {
  await go('Usage');
  await page.getByRole('img', { name: 'Tokens and requests per day' }).waitFor();
  const csv = page.getByRole('link', { name: 'Download CSV' });
  assert.match(await csv.getAttribute('download'), /^nebula-usage-30d\.csv$/);
  const download = await Promise.all([page.waitForEvent('download'), csv.click()]).then(([d]) => d);
  const path = await download.path();
  const { readFileSync } = await import('node:fs');
  const text = readFileSync(path, 'utf8');
  assert.match(text, /^day,key,model,requests,errors,prompt_tokens,completion_tokens,cached_tokens,total_tokens\n/);
  assert.match(text, /,chat,/);
  await screenshot(page, 'usage');
});

test('overview shows live figures; dark mode, a 390 px phone and the keyboard work', async () => {
  await go('Overview');
  await page.locator('tr', { has: page.getByRole('link', { name: 'night' }) }).getByText('Ready').waitFor({ timeout: 60000 });
  await screenshot(page, 'overview-after-switch');
  assert.deepEqual(page.problems.filter((p) => /Content Security Policy/i.test(p)), []);

  const dark = await newPage(browser, { colorScheme: 'dark' });
  await signIn(dark, nebula);
  const background = await dark.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(background, 'rgb(15, 17, 23)');
  await dark.getByRole('link', { name: 'night' }).first().waitFor();
  await screenshot(dark, 'overview-dark');
  await dark.context().close();

  const phone = await newPage(browser, { width: 390, height: 844 });
  await signIn(phone, nebula);
  await phone.getByRole('link', { name: 'night' }).first().waitFor();
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the phone`);
  await screenshot(phone, 'overview-phone');
  // Keyboard: the first Tab reaches the skip link, the next ones the menu.
  await phone.keyboard.press('Tab');
  assert.equal(await phone.evaluate(() => document.activeElement?.textContent), 'Skip to content');
  await phone.keyboard.press('Tab');
  assert.equal(await phone.evaluate(() => document.activeElement?.textContent), 'Overview');
  await phone.context().close();
});
