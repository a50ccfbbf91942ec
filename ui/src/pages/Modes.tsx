// Modes: named sets of deployments; switching stops the outgoing set and starts the incoming one.
// A switch is previewed with a dry run first; while it runs the mode is read every second for its
// phase (the switch request itself answers when it is done).
import { useState } from 'react';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { api, ApiError } from '../api';
import { useLive } from '../live';
import type { Deployment, Mode, SwitchAnswer } from '../types';
import { Badge, ConfirmDialog, Empty, ErrorBox, Loading, PageHeader } from '../components/ui';
import { formatAgo } from '../format';

function list(items: string[]) {
  return items.length ? items.join(', ') : 'nothing';
}

function SwitchPlan({ plan }: { plan: SwitchAnswer }) {
  return (
    <ul className="plan">
      <li>Start: {list(plan.started)}</li>
      <li>Stop: {list(plan.stopped)}</li>
      {plan.slept.length > 0 && <li>Sleep: {list(plan.slept)}</li>}
      {plan.woken.length > 0 && <li>Wake: {list(plan.woken)}</li>}
    </ul>
  );
}

function SwitchMode({ mode }: { mode: Mode }) {
  const name = mode.metadata.name;
  const client = useQueryClient();
  const [open, setOpen] = useState(false);
  const dryRun = useMutation({
    mutationFn: () => api<SwitchAnswer>(`/api/v1/modes/${name}/switch?dry_run=1`, { method: 'POST' }),
    onSuccess: () => setOpen(true),
  });
  const run = useMutation({
    mutationFn: () => api<SwitchAnswer>(`/api/v1/modes/${name}/switch`, { method: 'POST' }),
    onSettled: () => {
      setOpen(false);
      void client.invalidateQueries({ queryKey: ['modes'] });
    },
  });
  const progress = useQuery({
    queryKey: ['mode', name],
    queryFn: () => api<Mode>(`/api/v1/modes/${name}`),
    enabled: run.isPending,
    refetchInterval: 1000,
  });
  const error = dryRun.error ?? run.error;
  return (
    <div className="row-actions">
      <button type="button" className="primary" onClick={() => dryRun.mutate()} disabled={dryRun.isPending || run.isPending || mode.active}>
        {run.isPending ? 'Switching…' : mode.active ? 'Active' : 'Switch to'}
      </button>
      {run.isPending && (
        <span role="status" aria-live="polite" className="small">
          {progress.data?.switch?.phase ?? 'Starting'}… {progress.data?.switch?.message}
        </span>
      )}
      {run.data && (
        <span role="status" className="small ok-text">
          Switched in {((run.data.duration_ms ?? 0) / 1000).toFixed(1)} s
        </span>
      )}
      <ErrorBox error={error} action={error instanceof ApiError && error.status === 503 ? 'Free GPUs first, or switch to a smaller mode.' : undefined} />
      <ConfirmDialog
        open={open}
        title={`Switch to ${name}?`}
        confirmLabel="Switch"
        busy={run.isPending}
        onConfirm={() => run.mutate()}
        onCancel={() => setOpen(false)}
      >
        {dryRun.data && <SwitchPlan plan={dryRun.data} />}
        {run.isPending && <p role="status">{progress.data?.switch?.phase ?? 'Starting'}…</p>}
      </ConfirmDialog>
    </div>
  );
}

function CreateMode() {
  const client = useQueryClient();
  const deployments = useLive<Deployment>('deployments');
  const [name, setName] = useState('');
  const [chosen, setChosen] = useState<string[]>([]);
  const create = useMutation({
    mutationFn: () => api('/api/v1/modes', { method: 'POST', body: { name, deployments: chosen } }),
    onSuccess: () => {
      setName('');
      setChosen([]);
      void client.invalidateQueries({ queryKey: ['modes'] });
    },
  });
  const items = deployments.data?.items ?? [];
  return (
    <form
      className="card"
      aria-labelledby="create-mode-title"
      onSubmit={(event) => {
        event.preventDefault();
        create.mutate();
      }}
    >
      <h2 id="create-mode-title">Create a mode</h2>
      <div className="field">
        <label htmlFor="mode-name">Name</label>
        <input id="mode-name" value={name} onChange={(event) => setName(event.target.value)} required placeholder="daytime" />
      </div>
      <fieldset>
        <legend>Deployments in this mode</legend>
        {items.length === 0 && <p className="muted">Create deployments first.</p>}
        {items.map((deployment) => (
          <label key={deployment.metadata.name} className="check">
            <input
              type="checkbox"
              checked={chosen.includes(deployment.metadata.name)}
              onChange={(event) =>
                setChosen(event.target.checked ? [...chosen, deployment.metadata.name] : chosen.filter((n) => n !== deployment.metadata.name))
              }
            />
            {deployment.metadata.name}
          </label>
        ))}
      </fieldset>
      <ErrorBox error={create.error} />
      <button type="submit" className="primary" disabled={!name || chosen.length === 0 || create.isPending}>
        Create mode
      </button>
    </form>
  );
}

export function Modes() {
  const modes = useQuery({ queryKey: ['modes'], queryFn: () => api<{ items: Mode[] }>('/api/v1/modes') });
  const items = modes.data?.items ?? [];
  return (
    <>
      <PageHeader title="Modes" />
      <ErrorBox error={modes.error} />
      {modes.isPending ? (
        <Loading what="modes" />
      ) : items.length === 0 ? (
        <Empty title="No modes">A mode is a set of deployments to run together (e.g. a daytime and a batch set); create one below.</Empty>
      ) : (
        <div className="card table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Mode</th>
                <th scope="col">Deployments</th>
                <th scope="col">Last switch</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {items.map((mode) => (
                <tr key={mode.metadata.name} data-mode={mode.metadata.name}>
                  <td>
                    {mode.metadata.name} {mode.active && <Badge tone="ok">active</Badge>}
                  </td>
                  <td>{mode.deployments.join(', ')}</td>
                  <td className="small">
                    {mode.switched_ms ? formatAgo(mode.switched_ms) : '—'} <span className="muted">{mode.last_switch}</span>
                  </td>
                  <td>
                    <SwitchMode mode={mode} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <CreateMode />
    </>
  );
}
