import { describe, expect, it, vi, afterEach } from 'vitest';
import { fireEvent, render, screen } from '@testing-library/react';
import { QueryClient, QueryClientProvider } from '@tanstack/react-query';
import { AuthGate } from './AuthGate';

afterEach(() => {
  vi.unstubAllGlobals();
  sessionStorage.clear();
});

function renderGate() {
  render(
    <QueryClientProvider client={new QueryClient()}>
      <AuthGate>{() => <p>inside</p>}</AuthGate>
    </QueryClientProvider>,
  );
}

describe('AuthGate', () => {
  it('opens directly when the server needs no key', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => new Response('{"items":[]}', { status: 200 })));
    renderGate();
    expect(await screen.findByText('inside')).toBeTruthy();
  });

  it('asks for a key on 401 and sends it as a bearer token', async () => {
    const fetchMock = vi.fn(async (_url: string, init?: RequestInit) => {
      const authorization = (init?.headers as Record<string, string> | undefined)?.Authorization;
      if (authorization === 'Bearer nb-good') return new Response('{"items":[]}', { status: 200 });
      return new Response(JSON.stringify({ error: { message: 'Incorrect API key provided.', code: 'invalid_api_key' } }), { status: 401 });
    });
    vi.stubGlobal('fetch', fetchMock);
    renderGate();
    const input = await screen.findByLabelText('API key');
    expect((input as HTMLInputElement).type).toBe('password');
    fireEvent.change(input, { target: { value: 'nb-bad' } });
    fireEvent.click(screen.getByRole('button', { name: 'Sign in' }));
    expect(await screen.findByText('Incorrect API key provided.')).toBeTruthy();
    fireEvent.change(screen.getByLabelText('API key'), { target: { value: 'nb-good' } });
    fireEvent.click(screen.getByRole('button', { name: 'Sign in' }));
    expect(await screen.findByText('inside')).toBeTruthy();
    expect(sessionStorage.getItem('nebula.apiKey')).toBe('nb-good');
  });
});
