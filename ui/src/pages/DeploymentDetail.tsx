import { useEffect, useState } from 'react';
import { useMutation } from '@tanstack/react-query';
import { Link, useNavigate, useParams } from 'react-router';
import { api, lines, request } from '../api';
import { useLive } from '../live';
import type { ClusterEvent, Deployment, Replica } from '../types';
import { Badge, ConfirmDialog, Empty, ErrorBox, Loading, PageHeader } from '../components/ui';
import { formatMb } from '../format';
import { DeploymentActions } from './Deployments';
import { EventList } from './Events';

const maxLogChars = 200_000;

// "replica/chat-ab12c" is a replica of chat (named <deployment>-<5 characters>), not of "cha".
export function isReplicaOf(object: string, deployment: string): boolean {
  const prefix = `replica/${deployment}-`;
  return object.startsWith(prefix) && /^[a-z0-9]{5}$/.test(object.slice(prefix.length));
}

// Follows a replica's engine log (GET .../logs?follow=1), keeping the newest 200 kB.
function Logs({ deployment, replica }: { deployment: string; replica: string }) {
  const [text, setText] = useState('');
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    const controller = new AbortController();
    setText('');
    setError(null);
    (async () => {
      try {
        const response = await request(
          `/api/v1/deployments/${deployment}/logs?replica=${encodeURIComponent(replica)}&follow=1&tail=16384`,
          { signal: controller.signal },
        );
        if (!response.body) return;
        let buffer = '';
        for await (const line of lines(response.body, controller.signal)) {
          buffer = (buffer + line + '\n').slice(-maxLogChars);
          setText(buffer);
        }
      } catch (caught) {
        if (!controller.signal.aborted) setError(caught);
      }
    })();
    return () => controller.abort();
  }, [deployment, replica]);
  return (
    <>
      <ErrorBox error={error} action="The replica may not have started yet, or its node's agent is unreachable." />
      <pre className="logs" tabIndex={0} aria-label={`Log of ${replica}`}>
        {text || 'Waiting for log lines…'}
      </pre>
    </>
  );
}

// Rolls back to the newest plan whose spec differs (POST .../rollout/undo), after a confirmation.
function UndoRollout({ name, version }: { name: string; version: number }) {
  const [open, setOpen] = useState(false);
  const undo = useMutation({
    mutationFn: () => api<{ restored_from: number }>(`/api/v1/deployments/${name}/rollout/undo`, { method: 'POST', body: {} }),
    onSuccess: () => setOpen(false),
  });
  if (version <= 1) return null;
  return (
    <>
      <button type="button" onClick={() => setOpen(true)}>
        Roll back
      </button>
      {undo.data && <span role="status">Rolling back to plan {undo.data.restored_from}</span>}
      <ErrorBox error={undo.error} />
      <ConfirmDialog
        open={open}
        title={`Roll ${name} back?`}
        confirmLabel="Roll back"
        busy={undo.isPending}
        onConfirm={() => undo.mutate()}
        onCancel={() => setOpen(false)}
      >
        The previous plan's engine settings are restored and rolled out as a new plan (plan {version} stays in the history).
      </ConfirmDialog>
    </>
  );
}

export function DeploymentDetail() {
  const { name = '' } = useParams();
  const navigate = useNavigate();
  const deployments = useLive<Deployment>('deployments');
  const replicas = useLive<Replica>('replicas');
  const events = useLive<ClusterEvent>('events');
  const [logReplica, setLogReplica] = useState('');
  const deployment = deployments.data?.items.find((item) => item.metadata.name === name);
  const own = (replicas.data?.items ?? []).filter((replica) => replica.spec.deployment === name);
  const selected = logReplica || own.find((r) => r.status?.phase === 'Ready')?.metadata.name || own[0]?.metadata.name || '';

  if (deployments.isPending) return <Loading what="the deployment" />;
  if (!deployment) {
    return (
      <>
        <PageHeader title={name} />
        <ErrorBox error={deployments.error} />
        <Empty title={`There is no deployment ${name}`}>
          It may have been deleted. <Link to="/deployments">Back to deployments</Link>
        </Empty>
      </>
    );
  }
  const spec = deployment.spec;
  return (
    <>
      <PageHeader title={name}>
        <Badge>{deployment.status?.phase ?? 'Pending'}</Badge>
      </PageHeader>
      <section className="card">
        <dl className="facts">
          <dt>Model</dt>
          <dd>{spec.model}</dd>
          <dt>Engine</dt>
          <dd>{spec.engine ?? 'sim'}</dd>
          <dt>Ready</dt>
          <dd data-testid="ready-count">
            {deployment.status?.ready_replicas ?? 0}/{spec.replicas ?? 1}
          </dd>
          <dt>GPUs per replica</dt>
          <dd>{spec.gpus_per_replica ?? 1}</dd>
          <dt>Context</dt>
          <dd>{spec.max_context || 'model default'}</dd>
          <dt>Plan</dt>
          <dd data-testid="plan">
            v{deployment.status?.plan_version ?? 1} {deployment.status?.rollout?.state && <Badge>{deployment.status.rollout.state}</Badge>}
          </dd>
          {spec.engine_args?.length ? (
            <>
              <dt>Engine args</dt>
              <dd>
                <code>{spec.engine_args.join(' ')}</code>
              </dd>
            </>
          ) : null}
        </dl>
        {deployment.status?.message && <div className="alert warn">{deployment.status.message}</div>}
        <div className="row-actions">
          <DeploymentActions deployment={deployment} afterDelete={() => navigate('/deployments')} />
          <UndoRollout name={name} version={deployment.status?.plan_version ?? 1} />
        </div>
      </section>
      <section className="card" aria-labelledby="replicas-title">
        <h2 id="replicas-title">Replicas</h2>
        {own.length === 0 ? (
          <Empty title="No replicas">Scale up to start one.</Empty>
        ) : (
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Replica</th>
                  <th scope="col">Phase</th>
                  <th scope="col">Node / GPUs</th>
                  <th scope="col">VRAM</th>
                  <th scope="col">Restarts</th>
                  <th scope="col">Message</th>
                </tr>
              </thead>
              <tbody>
                {own.map((replica) => (
                  <tr key={replica.metadata.name}>
                    <td>{replica.metadata.name}</td>
                    <td>
                      <Badge>{replica.status?.phase ?? 'Pending'}</Badge>
                      {replica.spec.draining_since_ms ? <Badge tone="warn">draining</Badge> : null}
                    </td>
                    <td>
                      {replica.spec.node || '—'} {replica.spec.gpus?.length ? `gpu${replica.spec.gpus.join(',')}` : ''}
                    </td>
                    <td>{formatMb(replica.spec.vram_mb ?? 0)}</td>
                    <td>{replica.status?.restarts ?? 0}</td>
                    <td className="muted small">{replica.status?.last_error || replica.status?.message}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
      <section className="card" aria-labelledby="logs-title">
        <h2 id="logs-title">Live logs</h2>
        {own.length > 0 && (
          <div className="field inline">
            <label htmlFor="log-replica">Replica</label>
            <select id="log-replica" value={selected} onChange={(event) => setLogReplica(event.target.value)}>
              {own.map((replica) => (
                <option key={replica.metadata.name}>{replica.metadata.name}</option>
              ))}
            </select>
          </div>
        )}
        {selected ? <Logs deployment={name} replica={selected} /> : <Empty title="No replica to show the log of" />}
      </section>
      <section className="card" aria-labelledby="devents-title">
        <h2 id="devents-title">Events</h2>
        <EventList
          events={events.data?.items ?? []}
          limit={30}
          filter={(event) => event.object === `deployment/${name}` || isReplicaOf(event.object, name)}
        />
      </section>
    </>
  );
}
