import { describe, expect, it } from 'vitest';
import { pieceOf, sseEvents } from './sse';

function stream(chunks: string[]) {
  const encoder = new TextEncoder();
  return new ReadableStream<Uint8Array>({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
      controller.close();
    },
  });
}

describe('sse', () => {
  it('reassembles events split across chunks', async () => {
    const events = [];
    for await (const event of sseEvents(stream(['data: {"a"', ':1}\n\nevent: x\r\ndata: 2\r\n\r\n', 'data: [DONE]\n\n']))) events.push(event);
    expect(events).toEqual([
      { event: 'message', data: '{"a":1}' },
      { event: 'x', data: '2' },
      { event: 'message', data: '[DONE]' },
    ]);
  });

  it('reads text and usage from chat and Responses streams, and tolerates junk', () => {
    expect(pieceOf('chat', { event: 'message', data: '{"choices":[{"delta":{"content":"Hi"}}]}' })).toEqual({ text: 'Hi', completionTokens: undefined });
    expect(pieceOf('chat', { event: 'message', data: '{"choices":[],"usage":{"completion_tokens":9}}' }).completionTokens).toBe(9);
    expect(pieceOf('responses', { event: 'response.output_text.delta', data: '{"type":"response.output_text.delta","delta":"yo"}' }).text).toBe('yo');
    expect(pieceOf('responses', { event: 'x', data: '{"type":"response.completed","response":{"usage":{"output_tokens":4}}}' }).completionTokens).toBe(4);
    expect(pieceOf('chat', { event: 'message', data: 'not json' })).toEqual({});
    expect(pieceOf('chat', { event: 'message', data: '{"error":{"message":"boom"}}' }).error).toBe('boom');
  });
});
