import { useState } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { api } from '../api';
import type { ApiKey } from '../types';
import { Badge, ConfirmDialog, CopyButton, Empty, ErrorBox, Loading, PageHeader } from '../components/ui';
import { formatAgo, formatNumber, formatTime } from '../format';

export function keyState(key: ApiKey, now: number): 'revoked' | 'expired' | 'active' {
  if (key.revoked) return 'revoked';
  if (key.expires_ms > 0 && key.expires_ms <= now) return 'expired';
  return 'active';
}

function limits(key: ApiKey): string {
  const parts: string[] = [];
  if (key.rpm) parts.push(`${key.rpm} rpm`);
  if (key.tpm) parts.push(`${formatNumber(key.tpm)} tpm`);
  if (key.max_concurrency) parts.push(`${key.max_concurrency} concurrent`);
  if (key.budget_tokens) parts.push(`${formatNumber(key.budget_tokens)} tokens/month`);
  return parts.join(', ') || 'none';
}

function CreateKey() {
  const client = useQueryClient();
  const [form, setForm] = useState({ name: '', scope: 'inference', models: '', rpm: '', tpm: '', max_concurrency: '', budget_tokens: '', expires: '' });
  const create = useMutation({
    mutationFn: () => {
      const body: Record<string, unknown> = { name: form.name.trim(), scope: form.scope };
      const models = form.models.split(',').map((m) => m.trim()).filter(Boolean);
      if (models.length) body.models = models;
      for (const field of ['rpm', 'tpm', 'max_concurrency', 'budget_tokens'] as const) {
        if (form[field].trim()) body[field] = Number(form[field]);
      }
      if (form.expires.trim()) body.expires = form.expires.trim();
      return api<{ key: ApiKey; secret: string }>('/api/v1/keys', { method: 'POST', body });
    },
    onSuccess: () => void client.invalidateQueries({ queryKey: ['keys'] }),
  });
  const field = (name: keyof typeof form, label: string, props: React.InputHTMLAttributes<HTMLInputElement> = {}) => (
    <div className="field">
      <label htmlFor={`key-${name}`}>{label}</label>
      <input id={`key-${name}`} value={form[name]} onChange={(event) => setForm({ ...form, [name]: event.target.value })} {...props} />
    </div>
  );
  return (
    <section className="card" aria-labelledby="create-key-title">
      <h2 id="create-key-title">Create a key</h2>
      <form
        className="form-grid"
        onSubmit={(event) => {
          event.preventDefault();
          create.mutate();
        }}
      >
        {field('name', 'Name', { required: true, placeholder: 'alice' })}
        <div className="field">
          <label htmlFor="key-scope">Scope</label>
          <select id="key-scope" value={form.scope} onChange={(event) => setForm({ ...form, scope: event.target.value })}>
            <option value="inference">inference (/v1 only)</option>
            <option value="admin">admin (everything)</option>
          </select>
        </div>
        {field('models', 'Models (comma-separated, empty = all)')}
        {field('rpm', 'Requests per minute', { type: 'number', min: 0 })}
        {field('tpm', 'Tokens per minute', { type: 'number', min: 0 })}
        {field('max_concurrency', 'Max concurrent requests', { type: 'number', min: 0 })}
        {field('budget_tokens', 'Monthly token budget', { type: 'number', min: 0 })}
        {field('expires', 'Expires in (30d, 12h; empty = never)')}
        <div className="form-actions">
          <button type="submit" className="primary" disabled={!form.name.trim() || create.isPending}>
            Create key
          </button>
        </div>
      </form>
      <ErrorBox error={create.error} />
      {create.data && (
        <div className="alert ok secret" role="status">
          <strong>Key {create.data.key.metadata.name} created. Copy the secret now: it is shown only once.</strong>
          <div className="command">
            <code data-testid="new-secret">{create.data.secret}</code>
            <CopyButton text={create.data.secret} />
            <button type="button" onClick={() => create.reset()}>
              Done
            </button>
          </div>
        </div>
      )}
    </section>
  );
}

export function Keys() {
  const client = useQueryClient();
  const keys = useQuery({ queryKey: ['keys'], queryFn: () => api<{ items: ApiKey[] }>('/api/v1/keys') });
  const [revoking, setRevoking] = useState<ApiKey | null>(null);
  const revoke = useMutation({
    mutationFn: (id: string) => api(`/api/v1/keys/${id}`, { method: 'DELETE' }),
    onSuccess: () => {
      setRevoking(null);
      void client.invalidateQueries({ queryKey: ['keys'] });
    },
  });
  const now = Date.now();
  const items = (keys.data?.items ?? []).filter((key) => key.scope !== 'node');
  return (
    <>
      <PageHeader title="API keys" />
      <CreateKey />
      <ErrorBox error={keys.error} />
      {keys.isPending ? (
        <Loading what="keys" />
      ) : items.length === 0 ? (
        <Empty title="No keys">Create one above; with --auth none keys are stored but not checked.</Empty>
      ) : (
        <div className="card table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Id</th>
                <th scope="col">Name</th>
                <th scope="col">Scope</th>
                <th scope="col">Models</th>
                <th scope="col">Limits</th>
                <th scope="col">Expires</th>
                <th scope="col">Last used</th>
                <th scope="col">State</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {items.map((key) => {
                const state = keyState(key, now);
                return (
                  <tr key={key.metadata.name} data-key={key.metadata.name} className={state !== 'active' ? 'dim' : ''}>
                    <td>
                      <code>{key.metadata.name}</code>
                    </td>
                    <td>{key.display_name}</td>
                    <td>{key.scope}</td>
                    <td>{key.models.length ? key.models.join(', ') : 'all'}</td>
                    <td className="small">{limits(key)}</td>
                    <td className="small">{key.expires_ms ? formatTime(key.expires_ms) : 'never'}</td>
                    <td className="small">{formatAgo(key.last_used_ms, now)}</td>
                    <td>
                      <Badge tone={state === 'active' ? 'ok' : 'bad'}>{state}</Badge>
                    </td>
                    <td>
                      {!key.revoked && (
                        <button type="button" className="danger" onClick={() => setRevoking(key)}>
                          Revoke
                        </button>
                      )}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
      <ErrorBox error={revoke.error} />
      <ConfirmDialog
        open={revoking !== null}
        title={`Revoke ${revoking?.display_name ?? ''} (${revoking?.metadata.name ?? ''})?`}
        confirmLabel="Revoke"
        danger
        busy={revoke.isPending}
        onConfirm={() => revoking && revoke.mutate(revoking.metadata.name)}
        onCancel={() => setRevoking(null)}
      >
        Requests with this key are refused (401) at once. This cannot be undone.
      </ConfirmDialog>
    </>
  );
}
