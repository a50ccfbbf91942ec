// Requests sent, unchanged, to both targets: the gateway (`nebula up`, its deployment running
// engine-sim) and engine-sim alone. What a client sees must not depend on whether a gateway sits
// in between, so each case is a test per target and a difference fails one of them.
//
// A case that needs engine-sim behaviour not yet there carries `skip` naming that behaviour.
import assert from 'node:assert/strict';

import OpenAI from 'openai';
import { zodResponseFormat, zodFunction } from 'openai/helpers/zod';
import { z } from 'zod';

import { MODEL, engineGauge, post, waitFor } from './harness.mjs';

const USER = [{ role: 'user', content: 'Say something short.' }];

const WEATHER_TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'The weather in a city',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string' } },
      required: ['city'],
      additionalProperties: false,
    },
  },
};

function checkUsage(usage) {
  assert.ok(Number.isInteger(usage.prompt_tokens) && usage.prompt_tokens > 0, 'usage.prompt_tokens');
  assert.ok(Number.isInteger(usage.completion_tokens) && usage.completion_tokens > 0, 'usage.completion_tokens');
  assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
}

// Every chunk of a chat stream, in order.
async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

// The error a promise rejects with (fails when it resolves).
export async function rejection(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail('the request succeeded; an error was expected');
}

const Weather = z.object({
  city: z.string(),
  celsius: z.number(),
  conditions: z.enum(['sunny', 'cloudy', 'rain']),
  alerts: z.array(z.string()),
});

export const sharedCases = [
  {
    name: 'models.list names the model',
    async run(target) {
      const models = [];
      for await (const model of target.client().models.list()) models.push(model);
      const model = models.find((entry) => entry.id === MODEL);
      assert.ok(model, `${MODEL} in ${JSON.stringify(models)}`);
      assert.equal(model.object, 'model');
      assert.ok(Number.isInteger(model.created));
    },
  },
  {
    name: 'chat completion',
    async run(target) {
      const completion = await target.client().chat.completions.create({ model: MODEL, messages: USER, max_tokens: 8 });
      assert.match(completion.id, /^chatcmpl-/);
      assert.equal(completion.object, 'chat.completion');
      assert.equal(completion.model, MODEL);
      assert.ok(Number.isInteger(completion.created));
      assert.equal(completion.choices.length, 1);
      const [choice] = completion.choices;
      assert.equal(choice.index, 0);
      assert.equal(choice.message.role, 'assistant');
      assert.ok(typeof choice.message.content === 'string' && choice.message.content.length > 0);
      assert.ok(['stop', 'length'].includes(choice.finish_reason), choice.finish_reason);
      checkUsage(completion.usage);
      assert.ok(completion.usage.completion_tokens <= 8);
    },
  },
  {
    name: 'chat completion: max_tokens stops with finish_reason length',
    async run(target) {
      const completion = await target.client().chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: 'Write a long essay about the sea and its tides.' }],
        max_tokens: 3,
      });
      assert.equal(completion.choices[0].finish_reason, 'length');
      assert.equal(completion.usage.completion_tokens, 3);
    },
  },
  {
    name: 'chat stream',
    async run(target) {
      const stream = await target.client().chat.completions.create({
        model: MODEL,
        messages: USER,
        max_tokens: 8,
        stream: true,
      });
      const chunks = await collect(stream);
      assert.ok(chunks.length >= 2);
      const id = chunks[0].id;
      let text = '';
      for (const chunk of chunks) {
        assert.equal(chunk.object, 'chat.completion.chunk');
        assert.equal(chunk.id, id, 'one id for the whole stream');
        assert.ok(!chunk.usage, 'no usage chunk unless asked for');
        text += chunk.choices[0]?.delta?.content ?? '';
      }
      assert.ok(text.length > 0);
      const finishes = chunks.filter((chunk) => chunk.choices[0]?.finish_reason);
      assert.equal(finishes.length, 1, 'one chunk carries finish_reason');
      assert.equal(finishes[0], chunks.at(-1), 'the last chunk carries finish_reason');
    },
  },
  {
    name: 'chat stream: include_usage adds a last chunk with usage and no choices',
    async run(target) {
      const stream = await target.client().chat.completions.create({
        model: MODEL,
        messages: USER,
        max_tokens: 6,
        stream: true,
        stream_options: { include_usage: true },
      });
      const chunks = await collect(stream);
      const last = chunks.at(-1);
      assert.deepEqual(last.choices, []);
      checkUsage(last.usage);
      const text = chunks.map((chunk) => chunk.choices[0]?.delta?.content ?? '').join('');
      assert.ok(text.length > 0);
      for (const chunk of chunks.slice(0, -1)) assert.ok(!chunk.usage, 'usage only in the last chunk');
    },
  },
  {
    name: 'chat stream: the SDK stream helper assembles the message',
    async run(target) {
      const stream = target.client().chat.completions.stream({ model: MODEL, messages: USER, max_tokens: 8 });
      let deltas = '';
      stream.on('content.delta', ({ delta }) => {
        deltas += delta;
      });
      const completion = await stream.finalChatCompletion();
      assert.equal(completion.choices[0].message.content, deltas);
      assert.ok(deltas.length > 0);
    },
  },
  {
    name: 'chat tools: tool_choice required calls the tool with JSON arguments',
    async run(target) {
      const completion = await target.client().chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: 'Weather in Paris?' }],
        tools: [WEATHER_TOOL],
        tool_choice: 'required',
        max_tokens: 40,
      });
      const [choice] = completion.choices;
      assert.equal(choice.finish_reason, 'tool_calls');
      assert.equal(choice.message.tool_calls.length, 1);
      const [call] = choice.message.tool_calls;
      assert.equal(call.type, 'function');
      assert.equal(call.function.name, 'get_weather');
      assert.ok(call.id);
      JSON.parse(call.function.arguments);
    },
  },
  {
    name: 'chat tools: a tool result goes back as a tool message',
    async run(target) {
      const completion = await target.client().chat.completions.create({
        model: MODEL,
        messages: [
          { role: 'user', content: 'Weather in Paris?' },
          {
            role: 'assistant',
            content: null,
            tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }],
          },
          { role: 'tool', tool_call_id: 'call_1', content: '{"celsius": 21}' },
        ],
        tools: [WEATHER_TOOL],
        max_tokens: 8,
      });
      assert.ok(completion.choices[0].message.content.length > 0);
    },
  },
  {
    name: 'chat tools: streamed call through chat.completions.stream, events in order',
    async run(target) {
      const stream = target.client().chat.completions.stream({
        model: MODEL,
        messages: [{ role: 'user', content: 'Weather in Paris?' }],
        tools: [WEATHER_TOOL],
        tool_choice: { type: 'function', function: { name: 'get_weather' } },
        max_tokens: 40,
      });
      const events = [];
      let argumentDeltas = '';
      stream.on('tool_calls.function.arguments.delta', (event) => {
        events.push('delta');
        argumentDeltas += event.arguments_delta;
      });
      stream.on('tool_calls.function.arguments.done', (event) => {
        events.push('done');
        assert.equal(event.name, 'get_weather');
        assert.equal(event.arguments, argumentDeltas, 'done carries every fragment');
      });
      const chunks = [];
      stream.on('chunk', (chunk) => chunks.push(chunk));
      const completion = await stream.finalChatCompletion();
      assert.ok(events.length >= 2 && events.at(-1) === 'done' && events.indexOf('done') === events.length - 1,
        events.join(','));
      const [call] = completion.choices[0].message.tool_calls;
      assert.equal(call.function.arguments, argumentDeltas);
      assert.equal(completion.choices[0].finish_reason, 'tool_calls');
      // As OpenAI sends it: finish_reason in a final chunk of its own, with an empty delta.
      const last = chunks.filter((chunk) => chunk.choices.length > 0).at(-1);
      assert.equal(last.choices[0].finish_reason, 'tool_calls');
      assert.ok(!last.choices[0].delta.tool_calls, 'the finishing chunk carries no argument fragment');
    },
  },
  {
    name: 'completions',
    async run(target) {
      const completion = await target.client().completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 16 });
      assert.match(completion.id, /^cmpl-/);
      assert.equal(completion.object, 'text_completion');
      assert.equal(completion.choices.length, 1);
      assert.ok(completion.choices[0].text.length > 0);
      assert.ok(['stop', 'length'].includes(completion.choices[0].finish_reason));
      checkUsage(completion.usage);
    },
  },
  {
    name: 'completions stream',
    async run(target) {
      const stream = await target.client().completions.create({
        model: MODEL,
        prompt: 'Once upon a time',
        max_tokens: 16,
        stream: true,
        stream_options: { include_usage: true },
      });
      const chunks = await collect(stream);
      const text = chunks.map((chunk) => chunk.choices[0]?.text ?? '').join('');
      assert.ok(text.length > 0);
      checkUsage(chunks.at(-1).usage);
    },
  },
  {
    name: 'completions: an array of prompts gives a choice per prompt',
    async run(target) {
      const completion = await target.client().completions.create({ model: MODEL, prompt: ['One', 'Two'], max_tokens: 3 });
      assert.deepEqual(completion.choices.map((choice) => choice.index).sort(), [0, 1]);
    },
  },
  {
    name: 'completions: echo returns the prompt first',
    async run(target) {
      const prompt = 'Echo me';
      const completion = await target.client().completions.create({ model: MODEL, prompt, max_tokens: 3, echo: true });
      const { text } = completion.choices[0];
      // The prompt, then what was generated (the engines here repeat the prompt: without echo the
      // text would be the prompt alone).
      assert.ok(text.startsWith(prompt) && text.length > prompt.length, text);
    },
  },
  {
    name: 'embeddings: float and the SDK default (base64)',
    async run(target) {
      const floats = await target.client().embeddings.create({ model: MODEL, input: 'hello', encoding_format: 'float' });
      assert.equal(floats.object, 'list');
      assert.equal(floats.data.length, 1);
      assert.equal(floats.data[0].object, 'embedding');
      assert.ok(floats.data[0].embedding.length > 0 && floats.data[0].embedding.every(Number.isFinite));
      assert.ok(floats.usage.prompt_tokens > 0);
      // Without encoding_format the SDK asks for base64 and decodes it into the same floats.
      const decoded = await target.client().embeddings.create({ model: MODEL, input: ['hello', 'world'] });
      assert.equal(decoded.data.length, 2);
      assert.deepEqual(decoded.data.map((item) => item.index), [0, 1]);
      assert.equal(decoded.data[0].embedding.length, floats.data[0].embedding.length);
      for (let i = 0; i < 4; ++i) assert.ok(Math.abs(decoded.data[0].embedding[i] - floats.data[0].embedding[i]) < 1e-6);
    },
  },
  {
    name: 'logprobs in a chat completion',
    async run(target) {
      const completion = await target.client().chat.completions.create({
        model: MODEL,
        messages: USER,
        max_tokens: 4,
        logprobs: true,
        top_logprobs: 2,
      });
      const content = completion.choices[0].logprobs.content;
      assert.equal(content.length, 4);
      for (const token of content) {
        assert.ok(token.logprob <= 0);
        assert.equal(token.top_logprobs.length, 2);
        assert.ok(token.top_logprobs.some((top) => top.token === token.token));
      }
    },
  },
  {
    name: 'logprobs in a completion',
    async run(target) {
      const completion = await target.client().completions.create({
        model: MODEL,
        prompt: 'Hi there my friend',
        max_tokens: 3,
        logprobs: 2,
      });
      const logprobs = completion.choices[0].logprobs;
      assert.equal(logprobs.tokens.length, 3);
      assert.equal(logprobs.token_logprobs.length, 3);
      assert.equal(logprobs.top_logprobs.length, 3);
    },
  },
  {
    name: 'structured output: chat.completions.parse with a zod schema',
    async run(target) {
      const completion = await target.client().chat.completions.parse({
        model: MODEL,
        messages: [{ role: 'user', content: 'Weather in Paris as JSON' }],
        response_format: zodResponseFormat(Weather, 'weather'),
        max_tokens: 400,
      });
      const parsed = completion.choices[0].message.parsed;
      Weather.parse(parsed);
    },
  },
  {
    name: 'structured output: json_object gives a JSON object',
    async run(target) {
      const completion = await target.client().chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: 'A JSON object please' }],
        response_format: { type: 'json_object' },
        max_tokens: 200,
      });
      const value = JSON.parse(completion.choices[0].message.content);
      assert.equal(typeof value, 'object');
    },
  },
  {
    name: 'structured output: a zod tool\'s arguments parsed by chat.completions.parse',
    async run(target) {
      const completion = await target.client().chat.completions.parse({
        model: MODEL,
        messages: [{ role: 'user', content: 'Weather in Paris?' }],
        tools: [zodFunction({ name: 'get_weather', parameters: z.object({ city: z.string() }) })],
        tool_choice: 'required',
        max_tokens: 100,
      });
      const [call] = completion.choices[0].message.tool_calls;
      assert.equal(typeof call.function.parsed_arguments.city, 'string');
    },
    skip: 'needs engine-sim to generate tool arguments that follow the tool\'s parameters schema',
  },
  {
    name: 'bad request: empty messages is a BadRequestError naming messages',
    async run(target) {
      const error = await rejection(target.client().chat.completions.create({ model: MODEL, messages: [], max_tokens: 3 }));
      assert.ok(error instanceof OpenAI.BadRequestError, String(error));
      assert.equal(error.status, 400);
      assert.equal(error.param, 'messages');
    },
  },
  {
    name: 'bad request: max_tokens 0 is a BadRequestError naming max_tokens',
    async run(target) {
      const error = await rejection(target.client().chat.completions.create({ model: MODEL, messages: USER, max_tokens: 0 }));
      assert.ok(error instanceof OpenAI.BadRequestError, String(error));
      assert.equal(error.param, 'max_tokens');
    },
  },
  {
    name: 'bad request: n 0 is a BadRequestError naming n',
    async run(target) {
      const error = await rejection(target.client().chat.completions.create({ model: MODEL, messages: USER, n: 0, max_tokens: 3 }));
      assert.ok(error instanceof OpenAI.BadRequestError, String(error));
      assert.equal(error.param, 'n');
    },
  },
  {
    name: 'bad request: temperature below 0',
    async run(target) {
      const error = await rejection(
        target.client().chat.completions.create({ model: MODEL, messages: USER, temperature: -1, max_tokens: 3 }));
      assert.ok(error instanceof OpenAI.BadRequestError, String(error));
      assert.equal(error.param, 'temperature');
    },
  },
  {
    name: 'bad request: a body that is not JSON, or hostile JSON',
    async run(target) {
      for (const body of ['nojson', '[]', '{"model":', '{"model":"chat","messages":"x"}', '{"model":"chat","messages":[1,2]}',
        `{"model":"chat","messages":${'['.repeat(10000)}${']'.repeat(10000)}}`]) {
        const answer = await post(`${target.url}/v1/chat/completions`, body, target.headers ?? {});
        assert.equal(answer.status, 400, `${body.slice(0, 40)}: ${answer.text.slice(0, 200)}`);
        assert.equal(typeof answer.json?.error?.message, 'string');
      }
    },
  },
  {
    name: 'aborting a stream stops the engine working on it',
    async run(target) {
      const controller = new AbortController();
      const stream = await target.client().chat.completions.create(
        // ignore_eos (vLLM's): the answer runs to max_tokens.
        { model: MODEL, messages: USER, max_tokens: 4000, stream: true, ignore_eos: true },
        { signal: controller.signal },
      );
      let chunks = 0;
      for await (const chunk of stream) {
        if (chunk.choices[0]?.delta?.content) chunks += 1;
        if (chunks === 3) break; // leaving the loop aborts the request
      }
      assert.equal(chunks, 3);
      assert.equal(await engineGauge(target.engineUrl, 'vllm:num_requests_waiting'), 0);
      await waitFor(async () => (await engineGauge(target.engineUrl, 'vllm:num_requests_running')) === 0,
        'the engine to stop the aborted request', 10_000);
    },
  },
];
