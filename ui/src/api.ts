// The dashboard's only way to the server: the public /api/v1 and /v1 APIs, with the API key of
// this browser session (sessionStorage: gone when the tab closes).
const keyStorage = 'nebula.apiKey';

export function apiKey(): string {
  return sessionStorage.getItem(keyStorage) ?? '';
}
export function setApiKey(key: string): void {
  if (key) sessionStorage.setItem(keyStorage, key);
  else sessionStorage.removeItem(keyStorage);
}

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly body: unknown;
  constructor(status: number, message: string, code: string, body: unknown = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

export function authHeaders(): Record<string, string> {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The error of a failed answer: the server's {"error":{"message","code"}} when it sent one.
export async function errorFrom(response: Response): Promise<ApiError> {
  const text = await response.text().catch(() => '');
  let body: unknown = null;
  try {
    body = JSON.parse(text);
  } catch {
    /* not JSON: the text itself is the message */
  }
  const error = (body as { error?: { message?: string; code?: string } } | null)?.error;
  const message = error?.message ?? (text.trim() || `${response.status} ${response.statusText}`);
  if (response.status === 401) window.dispatchEvent(new Event('nebula:unauthorized'));
  return new ApiError(response.status, message, error?.code ?? '', body);
}

export interface RequestOptions {
  method?: string;
  body?: unknown;
  signal?: AbortSignal;
}

export async function request(path: string, options: RequestOptions = {}): Promise<Response> {
  const headers: Record<string, string> = { ...authHeaders() };
  if (options.body !== undefined) headers['Content-Type'] = 'application/json';
  let response: Response;
  try {
    response = await fetch(path, {
      method: options.method ?? 'GET',
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      signal: options.signal,
    });
  } catch (error) {
    if (options.signal?.aborted) throw error;
    throw new ApiError(0, 'The server cannot be reached. Is `nebula up` still running?', 'unreachable');
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export async function api<T>(path: string, options: RequestOptions = {}): Promise<T> {
  const response = await request(path, options);
  return (await response.json()) as T;
}

// Splits a stream of bytes into lines as they arrive.
export async function* lines(body: ReadableStream<Uint8Array>, signal?: AbortSignal): AsyncGenerator<string> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  const abort = () => void reader.cancel().catch(() => undefined);
  signal?.addEventListener('abort', abort);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let newline = buffer.indexOf('\n');
      while (newline >= 0) {
        yield buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        newline = buffer.indexOf('\n');
      }
    }
    if (buffer) yield buffer;
  } finally {
    signal?.removeEventListener('abort', abort);
  }
}

export interface WatchEvent<T> {
  type: 'PUT' | 'DELETE';
  key: string;
  revision: number;
  object: T;
}

// Follows /api/v1/<plural>?watch=1 from `revision` until the stream ends or `signal` aborts.
export async function watch<T>(
  plural: string,
  revision: number,
  onEvent: (event: WatchEvent<T>) => void,
  signal: AbortSignal,
): Promise<void> {
  const response = await request(`/api/v1/${plural}?watch=1&revision=${revision}`, { signal });
  if (!response.body) return;
  for await (const line of lines(response.body, signal)) {
    if (!line.trim()) continue; // keep-alive
    onEvent(JSON.parse(line) as WatchEvent<T>);
  }
}
