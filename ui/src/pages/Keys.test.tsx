import { describe, expect, it, vi, afterEach } from 'vitest';
import { render, screen, within } from '@testing-library/react';
import { QueryClient, QueryClientProvider } from '@tanstack/react-query';
import { Keys, keyState } from './Keys';
import type { ApiKey } from '../types';

const key = (id: string, extra: Partial<ApiKey>): ApiKey => ({
  metadata: { name: id },
  display_name: id,
  scope: 'inference',
  models: [],
  rpm: 0,
  tpm: 0,
  max_concurrency: 0,
  budget_tokens: 0,
  priority: 0,
  expires_ms: 0,
  revoked: false,
  ...extra,
});

afterEach(() => vi.unstubAllGlobals());

describe('Keys', () => {
  it('tells active, expired and revoked keys apart', () => {
    expect(keyState(key('a', {}), 1000)).toBe('active');
    expect(keyState(key('a', { expires_ms: 999 }), 1000)).toBe('expired');
    expect(keyState(key('a', { expires_ms: 2000 }), 1000)).toBe('active');
    expect(keyState(key('a', { revoked: true, expires_ms: 1 }), 1000)).toBe('revoked');
  });

  it('lists keys with limits, last use and state, hiding node keys', async () => {
    const items = [
      key('alive', { rpm: 60, last_used_ms: Date.now() - 5000 }),
      key('old', { expires_ms: Date.now() - 1000 }),
      key('gone', { revoked: true }),
      key('node1', { scope: 'node', display_name: 'node/x' }),
    ];
    vi.stubGlobal('fetch', vi.fn(async () => new Response(JSON.stringify({ items }), { status: 200 })));
    render(
      <QueryClientProvider client={new QueryClient()}>
        <Keys />
      </QueryClientProvider>,
    );
    const alive = await screen.findByText('alive', { selector: 'code' });
    const row = alive.closest('tr')!;
    expect(within(row).getByText('60 rpm')).toBeTruthy();
    expect(within(row).getByText(/s ago$/)).toBeTruthy();
    expect(within(row).getByRole('button', { name: 'Revoke' })).toBeTruthy();
    expect(within(screen.getByText('old', { selector: 'code' }).closest('tr')!).getByText('expired')).toBeTruthy();
    const gone = screen.getByText('gone', { selector: 'code' }).closest('tr')!;
    expect(within(gone).getByText('revoked')).toBeTruthy();
    expect(within(gone).queryByRole('button', { name: 'Revoke' })).toBeNull();
    expect(screen.queryByText('node1')).toBeNull();
    // Every control of the create form has a label.
    expect(screen.getByLabelText('Name')).toBeTruthy();
    expect(screen.getByLabelText('Scope')).toBeTruthy();
  });

  it('says what to do when the server refuses the key', async () => {
    vi.stubGlobal(
      'fetch',
      vi.fn(async () => new Response(JSON.stringify({ error: { message: 'nope', code: 'permission_denied' } }), { status: 403 })),
    );
    render(
      <QueryClientProvider client={new QueryClient({ defaultOptions: { queries: { retry: false } } })}>
        <Keys />
      </QueryClientProvider>,
    );
    expect(await screen.findByText('This key may not do that: use an admin key.')).toBeTruthy();
  });
});
