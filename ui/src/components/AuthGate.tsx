// With --auth keys the server answers 401 without a key: ask for one (kept in sessionStorage,
// for this browser session only). With --auth none the dashboard opens directly.
import { useCallback, useEffect, useState, type ReactNode } from 'react';
import { useQueryClient } from '@tanstack/react-query';
import { ApiError, apiKey, request, setApiKey } from '../api';
import { stopAllFeeds } from '../live';

type State = { kind: 'checking' } | { kind: 'open'; keyed: boolean } | { kind: 'login'; error?: string };

async function probe(): Promise<State> {
  try {
    await request('/api/v1/catalog');
    return { kind: 'open', keyed: apiKey() !== '' };
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      return { kind: 'login', error: apiKey() ? error.message : undefined };
    }
    if (error instanceof ApiError && error.status === 403) {
      return { kind: 'login', error: 'This key is not an admin key: the dashboard needs one (nebula keys create --scope admin).' };
    }
    return { kind: 'login', error: error instanceof Error ? error.message : String(error) };
  }
}

export function AuthGate({ children }: { children: (signOut?: () => void) => ReactNode }) {
  const [state, setState] = useState<State>({ kind: 'checking' });
  const client = useQueryClient();
  const check = useCallback(() => {
    void probe().then(setState);
  }, []);
  useEffect(check, [check]);
  // Signed in, a 401 from any call (the key was revoked or expired) leads back to the login.
  // Only then: the probe's own 401 on the login page must not start another probe.
  const open = state.kind === 'open';
  useEffect(() => {
    if (!open) return;
    const onUnauthorized = () => {
      stopAllFeeds();
      client.clear();
      check();
    };
    window.addEventListener('nebula:unauthorized', onUnauthorized);
    return () => window.removeEventListener('nebula:unauthorized', onUnauthorized);
  }, [open, check, client]);

  if (state.kind === 'checking') return <div className="state center">Connecting to Nebula…</div>;
  if (state.kind === 'login') {
    return (
      <Login
        error={state.error}
        onKey={(key) => {
          setApiKey(key);
          setState({ kind: 'checking' });
          check();
        }}
      />
    );
  }
  const signOut = state.keyed
    ? () => {
        setApiKey('');
        stopAllFeeds();
        client.clear();
        setState({ kind: 'login' });
      }
    : undefined;
  return <>{children(signOut)}</>;
}

export function Login({ error, onKey }: { error?: string; onKey: (key: string) => void }) {
  const [key, setKey] = useState('');
  return (
    <div className="login">
      <form
        className="card login-card"
        onSubmit={(event) => {
          event.preventDefault();
          if (key.trim()) onKey(key.trim());
        }}
      >
        <h1>
          <img src="/ui/favicon.svg" alt="" width="28" height="28" /> Nebula
        </h1>
        <p className="muted">
          This server runs with <code>--auth keys</code>. Sign in with an admin key: the bootstrap key is in{' '}
          <code>&lt;data-dir&gt;/admin.key</code>, or create one with <code>nebula keys create --scope admin</code>.
        </p>
        <label htmlFor="api-key">API key</label>
        <input
          id="api-key"
          type="password"
          autoComplete="off"
          placeholder="nb-..."
          value={key}
          onChange={(event) => setKey(event.target.value)}
          autoFocus
        />
        {error && (
          <div className="alert error" role="alert">
            {error}
          </div>
        )}
        <button type="submit" className="primary" disabled={!key.trim()}>
          Sign in
        </button>
        <p className="muted small">The key is kept for this browser tab only.</p>
      </form>
    </div>
  );
}
