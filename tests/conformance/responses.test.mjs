// The Responses API through the SDK, against the gateway (engine-sim has no /v1/responses; the
// gateway translates to chat completions): create, stream events, retrieve, delete, input_items,
// cancel, previous_response_id, background, tools, structured output.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import OpenAI from 'openai';
import { zodTextFormat } from 'openai/helpers/zod';
import { z } from 'zod';

import { MODEL, chatDeployment, engineGauge, startGateway, waitFor } from './lib/harness.mjs';
import { rejection } from './lib/shared_cases.mjs';

let gateway;
let client;

const WEATHER_TOOL = {
  type: 'function',
  name: 'get_weather',
  description: 'The weather in a city',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false },
  strict: true,
};

// What every Response object carries, as the SDK's types promise it.
function checkResponseObject(response) {
  assert.match(response.id, /^resp_/);
  assert.equal(response.object, 'response');
  assert.equal(response.model, MODEL);
  assert.ok(Number.isInteger(response.created_at));
  for (const field of ['instructions', 'tools', 'tool_choice', 'parallel_tool_calls', 'temperature', 'top_p', 'metadata',
    'error', 'previous_response_id', 'store', 'text', 'max_output_tokens', 'incomplete_details']) {
    assert.ok(field in response, `the response has '${field}'`);
  }
  assert.equal(response.error, null);
  assert.ok(Array.isArray(response.tools));
  assert.equal(typeof response.metadata, 'object');
  assert.equal(typeof response.text.format.type, 'string');
}

function checkUsage(usage) {
  assert.ok(usage.input_tokens > 0);
  assert.ok(usage.output_tokens > 0);
  assert.equal(usage.total_tokens, usage.input_tokens + usage.output_tokens);
  // The Agents SDK reads these unconditionally.
  assert.equal(typeof usage.input_tokens_details.cached_tokens, 'number');
  assert.equal(typeof usage.output_tokens_details.reasoning_tokens, 'number');
}

describe('responses', () => {
  before(async () => {
    gateway = await startGateway({ deployments: [chatDeployment(['--mode', 'echo'])] });
    client = gateway.client();
  });
  after(async () => gateway?.stop());

  test('create: a message item, usage with details, and the request echoed', async () => {
    const response = await client.responses.create({
      model: MODEL,
      instructions: 'Be brief.',
      input: 'Hello there, model.',
      max_output_tokens: 64,
      temperature: 0.5,
      top_p: 0.9,
      metadata: { run: 'conformance' },
    });
    checkResponseObject(response);
    assert.equal(response.status, 'completed');
    assert.equal(response.instructions, 'Be brief.');
    assert.equal(response.max_output_tokens, 64);
    assert.equal(response.temperature, 0.5);
    assert.equal(response.top_p, 0.9);
    assert.deepEqual(response.metadata, { run: 'conformance' });
    assert.equal(response.store, true);
    assert.equal(response.previous_response_id, null);
    assert.equal(response.output[0].type, 'message');
    assert.equal(response.output[0].role, 'assistant');
    assert.equal(response.output[0].content[0].type, 'output_text');
    assert.ok(response.output_text.length > 0, 'the SDK assembles output_text');
    checkUsage(response.usage);
  });

  test('max_output_tokens cuts the answer: status incomplete', async () => {
    const response = await client.responses.create({
      model: MODEL,
      input: 'one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen',
      max_output_tokens: 16,
    });
    assert.equal(response.status, 'incomplete');
    assert.equal(response.incomplete_details.reason, 'max_output_tokens');
  });

  test('stream: events in order with increasing sequence numbers', async () => {
    const stream = await client.responses.create({ model: MODEL, input: 'Stream this answer please.', stream: true });
    const events = [];
    for await (const event of stream) events.push(event);
    const types = events.map((event) => event.type);
    assert.deepEqual(types.slice(0, 4),
      ['response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added']);
    assert.deepEqual(types.slice(-4),
      ['response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.completed']);
    events.forEach((event, index) => assert.equal(event.sequence_number, index));
    const text = events.filter((event) => event.type === 'response.output_text.delta').map((event) => event.delta).join('');
    assert.equal(events.at(-4).text, text);
    const completed = events.at(-1).response;
    checkResponseObject(completed);
    checkUsage(completed.usage);
    checkResponseObject(events[0].response);
  });

  test('aborting a stream stops the engine working on it', async () => {
    const words = 3000;
    const before = await engineGauge(gateway.engineUrl, 'vllm:generation_tokens_total');
    const stream = await client.responses.create({ model: MODEL, input: 'word '.repeat(words), stream: true });
    let deltas = 0;
    for await (const event of stream) {
      if (event.type === 'response.output_text.delta') deltas += 1;
      if (deltas === 3) break; // leaving the loop aborts the request
    }
    await waitFor(async () => (await engineGauge(gateway.engineUrl, 'vllm:num_requests_running')) === 0,
      'the engine to stop the aborted request', 10_000);
    const generated = (await engineGauge(gateway.engineUrl, 'vllm:generation_tokens_total')) - before;
    assert.ok(generated < words, `the engine stopped early: ${generated} of ${words} tokens`);
  });

  test('stream helper: responses.stream gives the final response', async () => {
    const stream = client.responses.stream({ model: MODEL, input: 'Through the helper.' });
    let deltas = '';
    stream.on('response.output_text.delta', (event) => {
      deltas += event.delta;
    });
    const final = await stream.finalResponse();
    assert.ok(deltas.length > 0);
    assert.equal(final.output[0].content[0].text, deltas);
    checkResponseObject(final);
  });

  test('retrieve, input_items and delete a stored response', async () => {
    const created = await client.responses.create({ model: MODEL, input: 'Remember me.' });
    const retrieved = await client.responses.retrieve(created.id);
    assert.equal(retrieved.id, created.id);
    checkResponseObject(retrieved);

    const items = [];
    for await (const item of client.responses.inputItems.list(created.id)) items.push(item);
    assert.equal(items.length, 1);
    assert.equal(items[0].type, 'message');
    assert.equal(items[0].role, 'user');
    assert.deepEqual(items[0].content, [{ type: 'input_text', text: 'Remember me.' }]);
    assert.ok(items[0].id);

    await client.responses.delete(created.id);
    const error = await rejection(client.responses.retrieve(created.id));
    assert.ok(error instanceof OpenAI.NotFoundError, String(error));
    const again = await rejection(client.responses.delete(created.id));
    assert.ok(again instanceof OpenAI.NotFoundError, String(again));
  });

  test('input_items pages in both orders', async () => {
    const created = await client.responses.create({
      model: MODEL,
      input: [
        { role: 'user', content: 'first' },
        { role: 'assistant', content: 'second' },
        { role: 'user', content: 'third' },
      ],
    });
    const ascending = [];
    for await (const item of client.responses.inputItems.list(created.id, { order: 'asc', limit: 2 })) ascending.push(item);
    assert.deepEqual(ascending.map((item) => item.content[0].text), ['first', 'second', 'third']);
    assert.equal(ascending[1].content[0].type, 'output_text');
    const page = await client.responses.inputItems.list(created.id, { limit: 1 });
    assert.equal(page.data[0].content[0].text, 'third', 'newest first by default');
    assert.equal(page.has_more, true);
    const bad = await rejection(client.responses.inputItems.list(created.id, { limit: 1000 }));
    assert.ok(bad instanceof OpenAI.BadRequestError, String(bad));
  });

  test('previous_response_id continues the conversation', async () => {
    const first = await client.responses.create({ model: MODEL, input: 'My name is Ada.' });
    const second = await client.responses.create({ model: MODEL, input: 'What is my name?', previous_response_id: first.id });
    assert.equal(second.previous_response_id, first.id);
    assert.ok(second.usage.input_tokens > first.usage.input_tokens, 'the engine saw the earlier turns');
    const missing = await rejection(client.responses.create({ model: MODEL, input: 'x', previous_response_id: 'resp_nope' }));
    assert.ok(missing instanceof OpenAI.NotFoundError, String(missing));
  });

  test('store false: not retrievable', async () => {
    const response = await client.responses.create({ model: MODEL, input: 'Forget me.', store: false });
    assert.equal(response.store, false);
    const error = await rejection(client.responses.retrieve(response.id));
    assert.ok(error instanceof OpenAI.NotFoundError, String(error));
  });

  test('background: queued at once, then polled until completed', async () => {
    const queued = await client.responses.create({ model: MODEL, input: 'Run this later.', background: true });
    checkResponseObject(queued);
    assert.ok(['queued', 'in_progress'].includes(queued.status), queued.status);
    assert.equal(queued.background, true);
    const done = await waitFor(async () => {
      const polled = await client.responses.retrieve(queued.id);
      return ['completed', 'failed', 'incomplete', 'cancelled'].includes(polled.status) && polled;
    }, 'the background response to finish');
    assert.equal(done.status, 'completed');
    assert.equal(done.id, queued.id);
    assert.equal(done.background, true);
    assert.equal(done.output[0].content[0].text, 'Run this later.');
    checkUsage(done.usage);
    // A finished background response cannot be cancelled; one that is not background neither.
    const late = await rejection(client.responses.cancel(queued.id));
    assert.ok(late instanceof OpenAI.BadRequestError, String(late));
    const foreground = await client.responses.create({ model: MODEL, input: 'Now.' });
    const notBackground = await rejection(client.responses.cancel(foreground.id));
    assert.ok(notBackground instanceof OpenAI.BadRequestError, String(notBackground));
    const unknown = await rejection(client.responses.cancel('resp_unknown'));
    assert.ok(unknown instanceof OpenAI.NotFoundError, String(unknown));
  });

  test('background: cancel stops the engine and the response says cancelled', async () => {
    const words = 3000;
    const before = await engineGauge(gateway.engineUrl, 'vllm:generation_tokens_total');
    const queued = await client.responses.create({ model: MODEL, input: 'word '.repeat(words), background: true });
    await waitFor(async () => (await engineGauge(gateway.engineUrl, 'vllm:num_requests_running')) === 1,
      'the engine to work on it');
    const cancelled = await client.responses.cancel(queued.id);
    assert.equal(cancelled.status, 'cancelled');
    assert.equal(cancelled.id, queued.id);
    await waitFor(async () => (await engineGauge(gateway.engineUrl, 'vllm:num_requests_running')) === 0,
      'the engine to stop the cancelled request', 10_000);
    const generated = (await engineGauge(gateway.engineUrl, 'vllm:generation_tokens_total')) - before;
    assert.ok(generated < words, `the engine stopped early: ${generated} of ${words} tokens`);
    const polled = await waitFor(async () => {
      const response = await client.responses.retrieve(queued.id);
      return response.status === 'cancelled' && response;
    }, 'the stored response to say cancelled');
    assert.equal(polled.status, 'cancelled');
  });

  test('background: refused when streamed or not stored', async () => {
    const streamed = await rejection(client.responses.create({ model: MODEL, input: 'x', background: true, stream: true }));
    assert.ok(streamed instanceof OpenAI.BadRequestError, String(streamed));
    assert.equal(streamed.param, 'background');
    const unstored = await rejection(client.responses.create({ model: MODEL, input: 'x', background: true, store: false }));
    assert.ok(unstored instanceof OpenAI.BadRequestError, String(unstored));
    assert.equal(unstored.param, 'store');
  });

  test('function tools: a function_call item, echoed tools, and the output sent back', async () => {
    const response = await client.responses.create({
      model: MODEL,
      input: 'Weather in Paris?',
      tools: [WEATHER_TOOL],
      tool_choice: 'required',
    });
    const call = response.output.find((item) => item.type === 'function_call');
    assert.ok(call, JSON.stringify(response.output));
    assert.equal(call.name, 'get_weather');
    JSON.parse(call.arguments);
    assert.equal(response.tool_choice, 'required');
    assert.equal(response.tools[0].name, 'get_weather');
    const answer = await client.responses.create({
      model: MODEL,
      previous_response_id: response.id,
      input: [{ type: 'function_call_output', call_id: call.call_id, output: '{"celsius":21}' }],
      tools: [WEATHER_TOOL],
    });
    assert.equal(answer.status, 'completed');
    assert.ok(answer.output_text.length > 0);
  });

  test('function tools streamed: arguments.done after the last fragment, with all of them', async () => {
    const stream = await client.responses.create({
      model: MODEL,
      input: 'Weather in Paris?',
      tools: [WEATHER_TOOL],
      tool_choice: 'required',
      stream: true,
    });
    const events = [];
    for await (const event of stream) events.push(event);
    const types = events.map((event) => event.type);
    const done = types.indexOf('response.function_call_arguments.done');
    assert.ok(done > 0, types.join(','));
    assert.equal(types.lastIndexOf('response.function_call_arguments.delta'), done - 1, types.join(','));
    const fragments = events.filter((event) => event.type === 'response.function_call_arguments.delta').map((e) => e.delta);
    assert.equal(events[done].arguments, fragments.join(''));
    const item = events.find((event) => event.type === 'response.output_item.done').item;
    assert.equal(item.type, 'function_call');
    assert.equal(item.arguments, fragments.join(''));
  });

  test('bad requests: BadRequestError with the field named', async () => {
    const small = await rejection(client.responses.create({ model: MODEL, input: 'x', max_output_tokens: 0 }));
    assert.ok(small instanceof OpenAI.BadRequestError, String(small));
    assert.equal(small.param, 'max_output_tokens');
    assert.equal(small.code, 'integer_below_min_value');
    const tool = await rejection(client.responses.create({ model: MODEL, input: 'x', tools: [{ type: 'web_search' }] }));
    assert.ok(tool instanceof OpenAI.BadRequestError, String(tool));
    const missing = await rejection(client.responses.create({ model: MODEL }));
    assert.ok(missing instanceof OpenAI.BadRequestError, String(missing));
    assert.equal(missing.code, 'missing_required_parameter');
  });

  test('structured output: responses.parse with a zod schema', async () => {
    const Weather = z.object({ city: z.string(), celsius: z.number(), alerts: z.array(z.string()) });
    const response = await client.responses.parse({
      model: MODEL,
      input: 'Weather in Paris as JSON',
      text: { format: zodTextFormat(Weather, 'weather') },
      max_output_tokens: 400,
    });
    assert.equal(response.status, 'completed');
    Weather.parse(response.output_parsed);
    assert.equal(response.text.format.type, 'json_schema');
    assert.equal(response.text.format.name, 'weather');
  });
});
