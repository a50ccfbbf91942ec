// Engines that fail, through the SDK: a replica whose circuit breaker is open answers at once
// with the engine's own error (an SDK retry must not stall in the queue), and an engine that
// dies mid-stream ends the stream with an error event the SDK raises as an APIError.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import OpenAI from 'openai';

import { MODEL, chatDeployment, startGateway, waitFor } from './lib/harness.mjs';
import { rejection } from './lib/shared_cases.mjs';

let gateway;
let killed = 0; // the engine pid the first mid-stream test killed
const USER = [{ role: 'user', content: 'Hello there.' }];

// The pid of the deployment's Ready engine.
async function enginePid(deployment) {
  const replicas = await gateway.admin('/api/v1/replicas');
  const ready = replicas.items.find((replica) => replica.spec.deployment === deployment && replica.status.phase === 'Ready');
  return ready?.status?.pid;
}

describe('resilience', () => {
  before(async () => {
    gateway = await startGateway({
      deployments: [
        // Every request fails (429, 500 or 503, as the engine picks).
        chatDeployment(['--fail-rate', '1'], 'flaky'),
        // 20 ms a token: a long stream is still running when its engine is killed.
        chatDeployment(['--mode', 'echo', '--step-base-ms', '20'], 'mortal'),
        chatDeployment(['--mode', 'echo'], MODEL),
      ],
      gpus: '2xH100-80GB',
    });
  });
  after(async () => gateway?.stop());

  test('an open breaker answers with the engine\'s error at once, for the SDK\'s retries too', async () => {
    // A 30 s stall in the queue would time out here.
    const client = gateway.client({ timeout: 10_000 });
    for (let attempt = 0; attempt < 6; ++attempt) {
      const error = await rejection(client.chat.completions.create({ model: 'flaky', messages: USER, max_tokens: 3 }));
      assert.ok(error instanceof OpenAI.APIError, String(error));
      assert.ok([429, 500, 503].includes(error.status), `attempt ${attempt}: ${error.status} ${error.message}`);
      assert.notEqual(error.code, 'queue_timeout', `attempt ${attempt}: ${error.message}`);
    }
    // The SDK's own retries (backoff or retry-after) land while the breaker is open.
    const retrying = gateway.client({ timeout: 10_000, maxRetries: 2 });
    const error = await rejection(retrying.chat.completions.create({ model: 'flaky', messages: USER, max_tokens: 3 }));
    assert.ok(error instanceof OpenAI.APIError && !(error instanceof OpenAI.APIConnectionTimeoutError), String(error));
    assert.notEqual(error.code, 'queue_timeout');
    // A healthy deployment beside it is untouched.
    const fine = await gateway.client().chat.completions.create({ model: MODEL, messages: USER, max_tokens: 3 });
    assert.ok(fine.choices[0].message.content.length > 0);
  });

  test('an engine that dies mid-stream: the SDK raises an APIError, not a connection reset', async () => {
    const pid = await enginePid('mortal');
    assert.ok(pid > 0);
    killed = pid;
    const stream = await gateway.client().chat.completions.create({
      model: 'mortal',
      messages: USER,
      max_tokens: 2000,
      ignore_eos: true,
      stream: true,
    });
    let chunks = 0;
    const error = await rejection((async () => {
      for await (const chunk of stream) {
        if (chunk.choices[0]?.delta?.content) chunks += 1;
        if (chunks === 2) process.kill(pid, 'SIGKILL');
      }
    })());
    assert.ok(chunks >= 2);
    assert.ok(error instanceof OpenAI.APIError, `${error?.constructor?.name}: ${error}`);
    assert.ok(!(error instanceof OpenAI.APIConnectionError), `${error?.constructor?.name}: ${error}`);
    assert.match(error.message, /engine|stream|broke/i);
  });

  test('the same for a Responses stream', async () => {
    // The agent restarts the engine it lost; the gateway routes to it once it is Ready again.
    const client = gateway.client();
    await waitFor(async () => {
      const pid = await enginePid('mortal');
      if (!(pid > 0) || pid === killed) return false;
      await client.chat.completions.create({ model: 'mortal', messages: USER, max_tokens: 1 });
      return true;
    }, 'the engine of mortal to be back', 60_000, 100);
    const pid = await enginePid('mortal');
    const stream = await gateway.client().responses.create({
      model: 'mortal',
      input: 'word '.repeat(500), // echoed back: 500 tokens, 10 s
      max_output_tokens: 2000,
      stream: true,
    });
    let deltas = 0;
    const error = await rejection((async () => {
      for await (const event of stream) {
        if (event.type === 'response.output_text.delta') deltas += 1;
        if (deltas === 2) process.kill(pid, 'SIGKILL');
      }
    })());
    assert.ok(error instanceof OpenAI.APIError, `${error?.constructor?.name}: ${error}`);
    assert.ok(!(error instanceof OpenAI.APIConnectionError), `${error?.constructor?.name}: ${error}`);
  });
});
