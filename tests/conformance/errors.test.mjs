// Error classes through the SDK against the gateway (`--auth keys`): authentication, unknown
// models, OpenAI's 400 codes, and 429s of each kind with their headers and the SDK's retries.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import OpenAI from 'openai';

import { MODEL, chatDeployment, post, startGateway } from './lib/harness.mjs';
import { rejection } from './lib/shared_cases.mjs';

let gateway;
const USER = [{ role: 'user', content: 'Hello there.' }];

// A client whose every HTTP attempt (the SDK's retries included) is recorded: [{time, status}].
function countingClient(apiKey, maxRetries) {
  const attempts = [];
  const client = new OpenAI({
    baseURL: `${gateway.url}/v1`,
    apiKey,
    maxRetries,
    fetch: async (url, init) => {
      const response = await fetch(url, init);
      attempts.push({ time: Date.now(), status: response.status, headers: response.headers });
      return response;
    },
  });
  return { client, attempts };
}

// x-ratelimit-reset-* as OpenAI writes it ("1s", "6m0s", "20ms"), in seconds.
function resetSeconds(text) {
  const match = text.match(/^(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$/);
  assert.ok(match && text.length > 0, `a reset duration: '${text}'`);
  return Number(match[1] ?? 0) * 60 + Number(match[2] ?? 0) + Number(match[3] ?? 0) / 1000;
}

function checkRetryHeaders(headers) {
  const seconds = Number(headers.get('retry-after'));
  const ms = Number(headers.get('retry-after-ms'));
  assert.ok(Number.isInteger(seconds) && seconds >= 1, `retry-after ${headers.get('retry-after')}`);
  assert.ok(ms > 0 && ms <= seconds * 1000 && ms > (seconds - 1) * 1000, `retry-after-ms ${ms} vs retry-after ${seconds}`);
  return ms;
}

describe('errors', () => {
  before(async () => {
    // A slow engine (20 ms a token), so a long stream holds its slot while other requests come.
    gateway = await startGateway({ deployments: [chatDeployment(['--mode', 'echo', '--step-base-ms', '20'])] });
  });
  after(async () => gateway?.stop());

  test('AuthenticationError without a key or with a wrong one', async () => {
    for (const apiKey of ['', 'nb-wrong']) {
      const client = new OpenAI({ baseURL: `${gateway.url}/v1`, apiKey, maxRetries: 0 });
      const error = await rejection(client.chat.completions.create({ model: MODEL, messages: USER, max_tokens: 3 }));
      assert.ok(error instanceof OpenAI.AuthenticationError, String(error));
      assert.equal(error.code, 'invalid_api_key');
      const listing = await rejection(client.models.list());
      assert.ok(listing instanceof OpenAI.AuthenticationError, String(listing));
      const retrieve = await rejection(client.models.retrieve(MODEL));
      assert.ok(retrieve instanceof OpenAI.AuthenticationError, String(retrieve));
    }
  });

  test('models.retrieve: the model, or NotFoundError model_not_found', async () => {
    const client = gateway.client();
    const model = await client.models.retrieve(MODEL);
    assert.equal(model.id, MODEL);
    assert.equal(model.object, 'model');
    assert.equal(model.owned_by, 'nebula');
    const error = await rejection(client.models.retrieve('no-such-model'));
    assert.ok(error instanceof OpenAI.NotFoundError, String(error));
    assert.equal(error.code, 'model_not_found');
    // A key restricted to other models does not see this one.
    const restricted = await gateway.createKey('restricted', ['--models', 'other']);
    const hidden = await rejection(gateway.client({ apiKey: restricted }).models.retrieve(MODEL));
    assert.ok(hidden instanceof OpenAI.NotFoundError, String(hidden));
  });

  test('NotFoundError model_not_found for a chat with an unknown model', async () => {
    const error = await rejection(gateway.client().chat.completions.create({ model: 'nope', messages: USER }));
    assert.ok(error instanceof OpenAI.NotFoundError, String(error));
    assert.equal(error.code, 'model_not_found');
    assert.equal(error.type, 'invalid_request_error');
  });

  test('400s carry OpenAI\'s code and param', async () => {
    const client = gateway.client();
    const cases = [
      [{ messages: [] }, 'messages', 'empty_array'],
      [{ messages: undefined }, 'messages', 'missing_required_parameter'],
      [{ max_tokens: 0 }, 'max_tokens', 'integer_below_min_value'],
      [{ max_completion_tokens: -5 }, 'max_completion_tokens', 'integer_below_min_value'],
      [{ max_tokens: 'ten' }, 'max_tokens', 'invalid_type'],
      [{ temperature: 2.5 }, 'temperature', 'decimal_above_max_value'],
      [{ temperature: -0.1 }, 'temperature', 'decimal_below_min_value'],
      [{ top_p: 1.5 }, 'top_p', 'decimal_above_max_value'],
      [{ n: 0 }, 'n', 'integer_below_min_value'],
      [{ presence_penalty: -3 }, 'presence_penalty', 'decimal_below_min_value'],
      [{ top_logprobs: 21, logprobs: true }, 'top_logprobs', 'integer_above_max_value'],
    ];
    for (const [fields, param, code] of cases) {
      const body = { model: MODEL, messages: USER, max_tokens: 3, ...fields };
      const error = await rejection(client.chat.completions.create(body));
      assert.ok(error instanceof OpenAI.BadRequestError, `${JSON.stringify(fields)}: ${error}`);
      assert.equal(error.param, param, JSON.stringify(fields));
      assert.equal(error.code, code, JSON.stringify(fields));
      assert.equal(error.type, 'invalid_request_error');
    }
    const completions = await rejection(client.completions.create({ model: MODEL, max_tokens: 3 }));
    assert.equal(completions.code, 'missing_required_parameter');
    assert.equal(completions.param, 'prompt');
    const embeddings = await rejection(client.embeddings.create({ model: MODEL }));
    assert.equal(embeddings.param, 'input');
  });

  test('RateLimitError for requests (rpm=1): type requests, retry-after and retry-after-ms agree', async () => {
    const key = await gateway.createKey('rpm-one', ['--rpm', '1']);
    const { client, attempts } = countingClient(key, 0);
    await client.chat.completions.create({ model: MODEL, messages: USER, max_tokens: 3 });
    const error = await rejection(client.chat.completions.create({ model: MODEL, messages: USER, max_tokens: 3 }));
    assert.ok(error instanceof OpenAI.RateLimitError, String(error));
    assert.equal(error.type, 'requests');
    assert.equal(error.code, 'rate_limit_exceeded');
    assert.equal(attempts.length, 2);
    const ms = checkRetryHeaders(error.headers);
    assert.ok(ms > 50_000, `the minute's window: ${ms} ms`);
    assert.equal(error.headers.get('x-ratelimit-limit-requests'), '1');
    assert.equal(error.headers.get('x-ratelimit-remaining-requests'), '0');
    assert.ok(Math.abs(resetSeconds(error.headers.get('x-ratelimit-reset-requests')) - ms / 1000) < 1);
  });

  test('the SDK retries a 429 after retry-after-ms and succeeds once the slot frees', async () => {
    const key = await gateway.createKey('one-at-a-time', ['--max-concurrency', '1']);
    const holder = gateway.client({ apiKey: key });
    const controller = new AbortController();
    // Holds the key's only slot: a long answer, streamed.
    const held = await holder.chat.completions.create(
      { model: MODEL, messages: USER, max_tokens: 2000, ignore_eos: true, stream: true },
      { signal: controller.signal });
    const iterator = held[Symbol.asyncIterator]();
    await iterator.next();

    const { client, attempts } = countingClient(key, 2);
    const refused = await rejection(client.chat.completions.create({ model: MODEL, messages: USER, max_tokens: 3 }));
    assert.ok(refused instanceof OpenAI.RateLimitError, String(refused));
    assert.equal(attempts.length, 3, 'the first attempt and the SDK\'s two retries');
    for (let i = 1; i < attempts.length; ++i) {
      const asked = Number(attempts[i - 1].headers.get('retry-after-ms'));
      assert.ok(asked > 0);
      assert.ok(attempts[i].time - attempts[i - 1].time >= asked - 5, 'the SDK waited as retry-after-ms said');
    }

    // Once the slot frees, the SDK's retry gets through.
    const second = countingClient(key, 2);
    const answer = second.client.chat.completions.create({ model: MODEL, messages: USER, max_tokens: 3 });
    await new Promise((resolve) => setTimeout(resolve, 0));
    controller.abort();
    const completion = await answer;
    assert.ok(completion.choices[0].message.content.length > 0);
    assert.ok(second.attempts.length >= 1 && second.attempts.at(-1).status === 200);
  });

  test('RateLimitError for tokens (tpm): type tokens, x-ratelimit-reset-tokens agrees with retry-after', async () => {
    const key = await gateway.createKey('tpm', ['--tpm', '1000']);
    const { client } = countingClient(key, 0);
    // ~250 prompt tokens: what the engine reports replaces the up-front estimate.
    const long = [{ role: 'user', content: 'word '.repeat(250) }];
    await client.chat.completions.create({ model: MODEL, messages: long, max_tokens: 1 });
    // ~250 used + ~800 asked for > 1000.
    const error = await rejection(client.chat.completions.create({ model: MODEL, messages: USER, max_tokens: 800 }));
    assert.ok(error instanceof OpenAI.RateLimitError, String(error));
    assert.equal(error.type, 'tokens');
    assert.equal(error.code, 'rate_limit_exceeded');
    const ms = checkRetryHeaders(error.headers);
    assert.equal(error.headers.get('x-ratelimit-limit-tokens'), '1000');
    const reset = resetSeconds(error.headers.get('x-ratelimit-reset-tokens'));
    assert.ok(Math.abs(reset - ms / 1000) < 1, `reset-tokens ${reset} s, retry-after-ms ${ms}`);
  });

  test('a request larger than the whole tpm is refused without inviting a retry', async () => {
    const key = await gateway.createKey('tpm-small', ['--tpm', '50']);
    const { client, attempts } = countingClient(key, 2);
    const error = await rejection(client.chat.completions.create({ model: MODEL, messages: USER, max_tokens: 500 }));
    assert.ok(error instanceof OpenAI.RateLimitError, String(error));
    assert.equal(error.type, 'tokens');
    assert.equal(attempts.length, 1, 'no retry: it can never fit');
    assert.equal(error.headers.get('x-should-retry'), 'false');
  });

  test('an exhausted budget is insufficient_quota, with no retry-after and no retry', async () => {
    const key = await gateway.createKey('budget', ['--budget-tokens', '50']);
    const { client, attempts } = countingClient(key, 2);
    const error = await rejection(client.chat.completions.create({ model: MODEL, messages: USER, max_tokens: 100 }));
    assert.ok(error instanceof OpenAI.RateLimitError, String(error));
    assert.equal(error.type, 'insufficient_quota');
    assert.equal(error.code, 'insufficient_quota');
    assert.equal(error.headers.get('retry-after'), null);
    assert.equal(error.headers.get('retry-after-ms'), null);
    assert.equal(attempts.length, 1);
  });

  test('hostile bodies are 400s, not crashes', async () => {
    const headers = gateway.headers;
    for (const body of ['', '\u0000', '{"model":"chat","messages":[{"role":"user","content":"x"}],"max_tokens":1e400}',
      '{"model":"chat","messages":[{"role":"user","content":"x"}],"max_tokens":99999999999999999999999}',
      '{"model":"chat","messages":[{"role":"user","content":"x"}],"temperature":"hot"}',
      '{"model":["chat"],"messages":[]}']) {
      const answer = await post(`${gateway.url}/v1/chat/completions`, body, headers);
      assert.equal(answer.status, 400, `${JSON.stringify(body)}: ${answer.text}`);
      assert.equal(typeof answer.json.error.message, 'string');
    }
    const alive = await gateway.client().chat.completions.create({ model: MODEL, messages: USER, max_tokens: 2 });
    assert.ok(alive.choices.length === 1);
  });
});
