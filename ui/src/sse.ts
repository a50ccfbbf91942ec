// Server-sent events from a fetch body, and the text deltas of the two OpenAI stream formats.
import { lines } from './api';

export interface SseEvent {
  event: string;
  data: string;
}

export async function* sseEvents(body: ReadableStream<Uint8Array>, signal?: AbortSignal): AsyncGenerator<SseEvent> {
  let event = '';
  let data: string[] = [];
  for await (const raw of lines(body, signal)) {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line === '') {
      if (data.length) yield { event: event || 'message', data: data.join('\n') };
      event = '';
      data = [];
    } else if (line.startsWith('data:')) {
      data.push(line.slice(5).replace(/^ /, ''));
    } else if (line.startsWith('event:')) {
      event = line.slice(6).trim();
    }
  }
  if (data.length) yield { event: event || 'message', data: data.join('\n') };
}

export interface Piece {
  text?: string;
  completionTokens?: number;
  error?: string;
}

// What one event of a chat-completions or Responses stream adds.
export function pieceOf(api: 'chat' | 'responses', event: SseEvent): Piece {
  if (event.data === '[DONE]') return {};
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(event.data) as Record<string, unknown>;
  } catch {
    return {};
  }
  if (body.error) return { error: String((body.error as { message?: string }).message ?? body.error) };
  if (api === 'chat') {
    const choices = body.choices as { delta?: { content?: string } }[] | undefined;
    const usage = body.usage as { completion_tokens?: number } | undefined;
    return { text: choices?.[0]?.delta?.content ?? undefined, completionTokens: usage?.completion_tokens };
  }
  const type = (body.type as string | undefined) ?? event.event;
  if (type === 'response.output_text.delta') return { text: body.delta as string };
  if (type === 'response.completed' || type === 'response.incomplete') {
    const usage = (body.response as { usage?: { output_tokens?: number } } | undefined)?.usage;
    return { completionTokens: usage?.output_tokens };
  }
  return {};
}
