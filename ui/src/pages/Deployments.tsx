import { useState } from 'react';
import { Link, useNavigate } from 'react-router';
import { useMutation } from '@tanstack/react-query';
import { api } from '../api';
import { useLive } from '../live';
import { useDeploymentStats } from '../stats';
import type { Deployment } from '../types';
import { Badge, ConfirmDialog, Empty, ErrorBox, Loading, PageHeader } from '../components/ui';
import { formatNumber, formatSeconds } from '../format';

export function DeploymentActions({ deployment, afterDelete }: { deployment: Deployment; afterDelete?: () => void }) {
  const name = deployment.metadata.name;
  const [replicas, setReplicas] = useState(String(deployment.spec.replicas ?? 1));
  const [confirm, setConfirm] = useState<'delete' | 'restart' | 'sleep' | null>(null);
  // Asleep (or on its way): put to sleep after the last wake, or idle. Waking needs no
  // confirmation; putting to sleep stops serving until a request or a wake.
  const status = deployment.status ?? {};
  const asleep =
    (status.sleep_requested_ms ?? 0) > (status.wake_requested_ms ?? 0) || (status.idle_since_ms ?? 0) > 0;
  const sleepOrWake = useMutation({
    mutationFn: (action: 'sleep' | 'wake') =>
      api(`/api/v1/deployments/${name}/${action}`, { method: 'POST', body: {} }),
    onSuccess: () => setConfirm(null),
  });
  const scale = useMutation({
    mutationFn: () => api(`/api/v1/deployments/${name}/scale`, { method: 'PUT', body: { replicas: Number(replicas) } }),
  });
  const restart = useMutation({
    mutationFn: () => api(`/api/v1/deployments/${name}/restart`, { method: 'POST', body: {} }),
    onSuccess: () => setConfirm(null),
  });
  const remove = useMutation({
    mutationFn: () => api(`/api/v1/deployments/${name}`, { method: 'DELETE' }),
    onSuccess: () => {
      setConfirm(null);
      afterDelete?.();
    },
  });
  return (
    <div className="row-actions">
      <form
        className="inline"
        onSubmit={(event) => {
          event.preventDefault();
          scale.mutate();
        }}
      >
        <label className="sr-only" htmlFor={`replicas-${name}`}>
          Replicas of {name}
        </label>
        <input
          id={`replicas-${name}`}
          type="number"
          min={0}
          max={1000}
          value={replicas}
          onChange={(event) => setReplicas(event.target.value)}
          className="narrow"
        />
        <button type="submit" disabled={scale.isPending}>
          Scale
        </button>
      </form>
      <button type="button" onClick={() => setConfirm('restart')}>
        Restart
      </button>
      {asleep ? (
        <button type="button" disabled={sleepOrWake.isPending} onClick={() => sleepOrWake.mutate('wake')}>
          Wake
        </button>
      ) : (
        <button type="button" onClick={() => setConfirm('sleep')}>
          Sleep
        </button>
      )}
      <button type="button" className="danger" onClick={() => setConfirm('delete')}>
        Delete
      </button>
      <ErrorBox error={scale.error ?? restart.error ?? sleepOrWake.error ?? remove.error} />
      <ConfirmDialog
        open={confirm === 'delete'}
        title={`Delete ${name}?`}
        confirmLabel="Delete"
        danger
        busy={remove.isPending}
        onConfirm={() => remove.mutate()}
        onCancel={() => setConfirm(null)}
      >
        Its replicas stop and <code>/v1</code> requests for <code>{name}</code> get 404 from then on.
      </ConfirmDialog>
      <ConfirmDialog
        open={confirm === 'restart'}
        title={`Restart ${name}?`}
        confirmLabel="Restart"
        busy={restart.isPending}
        onConfirm={() => restart.mutate()}
        onCancel={() => setConfirm(null)}
      >
        A rolling restart: new replicas start before the old ones stop (max surge of the spec).
      </ConfirmDialog>
      <ConfirmDialog
        open={confirm === 'sleep'}
        title={`Put ${name} to sleep?`}
        confirmLabel="Sleep"
        busy={sleepOrWake.isPending}
        onConfirm={() => sleepOrWake.mutate('sleep')}
        onCancel={() => setConfirm(null)}
      >
        Its engines release their GPU memory (or stop, with <code>on_idle: stop</code>) until a request for{' '}
        <code>{name}</code> or Wake brings them back.
      </ConfirmDialog>
    </div>
  );
}

export function Deployments() {
  const deployments = useLive<Deployment>('deployments');
  const figures = useDeploymentStats();
  const navigate = useNavigate();
  const items = deployments.data?.items ?? [];
  return (
    <>
      <PageHeader title="Deployments">
        <button type="button" className="primary" onClick={() => navigate('/deployments/new')}>
          New deployment
        </button>
      </PageHeader>
      <ErrorBox error={deployments.error} />
      {deployments.isPending ? (
        <Loading what="deployments" />
      ) : items.length === 0 ? (
        <Empty title="No deployments">
          <Link to="/deployments/new">Create one</Link>: pick a model and see where it fits before it starts.
        </Empty>
      ) : (
        <div className="card table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Model</th>
                <th scope="col">Engine</th>
                <th scope="col">Ready</th>
                <th scope="col">Phase</th>
                <th scope="col">Req/s</th>
                <th scope="col">TTFT p50</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {items.map((deployment) => {
                const f = figures.get(deployment.metadata.name);
                return (
                  <tr key={deployment.metadata.name} data-deployment={deployment.metadata.name}>
                    <td>
                      <Link to={`/deployments/${deployment.metadata.name}`}>{deployment.metadata.name}</Link>
                    </td>
                    <td className="ellipsis">{deployment.spec.model}</td>
                    <td>{deployment.spec.engine ?? 'sim'}</td>
                    <td>
                      {deployment.status?.ready_replicas ?? 0}/{deployment.spec.replicas ?? 1}
                    </td>
                    <td>
                      <Badge>{deployment.status?.phase ?? 'Pending'}</Badge>
                      {deployment.status?.message && <div className="muted small">{deployment.status.message}</div>}
                    </td>
                    <td>{formatNumber(f?.requestsPerSecond ?? 0)}</td>
                    <td>{formatSeconds(f?.ttftP50 ?? null)}</td>
                    <td>
                      <DeploymentActions deployment={deployment} />
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}
