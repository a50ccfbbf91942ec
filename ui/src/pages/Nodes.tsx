import { useState } from 'react';
import { Link, useParams } from 'react-router';
import { useMutation } from '@tanstack/react-query';
import { api } from '../api';
import { useLive } from '../live';
import { allocatedByGpu } from '../stats';
import type { Node, Replica } from '../types';
import { Badge, CopyButton, Empty, ErrorBox, Loading, PageHeader, VramBar } from '../components/ui';
import { formatAgo, formatMb } from '../format';

function DrainButton({ node }: { node: Node }) {
  const drained = !!node.spec?.drain;
  const mutation = useMutation({
    mutationFn: () => api(`/api/v1/nodes/${node.metadata.name}/${drained ? 'undrain' : 'drain'}`, { method: 'POST' }),
  });
  return (
    <>
      <button type="button" onClick={() => mutation.mutate()} disabled={mutation.isPending}>
        {drained ? 'Undrain' : 'Drain'}
      </button>
      <ErrorBox error={mutation.error} />
    </>
  );
}

// "Add a node": a fresh join token (1 hour) and the exact command to run on the new machine.
function AddNode() {
  const [name, setName] = useState('');
  const token = useMutation({
    mutationFn: () => api<{ token: string; expires_ms: number }>('/api/v1/tokens', { method: 'POST', body: { ttl: '1h', description: 'dashboard: add a node' } }),
  });
  const command = token.data
    ? `nebula agent --server ${window.location.origin} --token ${token.data.token}${name ? ` --name ${name}` : ''}`
    : '';
  return (
    <section className="card" aria-labelledby="add-node-title">
      <h2 id="add-node-title">Add a node</h2>
      <p className="muted">
        Run this on the machine with the GPUs. The join token is valid for one hour; the agent keeps its own key after joining.
      </p>
      <div className="field inline">
        <label htmlFor="node-name">Node name (optional)</label>
        <input id="node-name" value={name} onChange={(event) => setName(event.target.value)} placeholder="the host name" />
        <button type="button" className="primary" onClick={() => token.mutate()} disabled={token.isPending}>
          {token.data ? 'New token' : 'Get the command'}
        </button>
      </div>
      <ErrorBox error={token.error} />
      {command && (
        <div className="command">
          <code data-testid="agent-command">{command}</code>
          <CopyButton text={command} />
        </div>
      )}
    </section>
  );
}

export function Nodes() {
  const nodes = useLive<Node>('nodes');
  const replicas = useLive<Replica>('replicas');
  const items = nodes.data?.items ?? [];
  return (
    <>
      <PageHeader title="Nodes" />
      <ErrorBox error={nodes.error} />
      {nodes.isPending ? (
        <Loading what="nodes" />
      ) : items.length === 0 ? (
        <Empty title="No nodes have joined">Use “Add a node” below.</Empty>
      ) : (
        <div className="card table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Node</th>
                <th scope="col">State</th>
                <th scope="col">GPUs</th>
                <th scope="col">Replicas</th>
                <th scope="col">Engines</th>
                <th scope="col">Heartbeat</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {items.map((node) => {
                const gpus = node.status?.gpus ?? [];
                const count = (replicas.data?.items ?? []).filter((r) => r.spec.node === node.metadata.name).length;
                return (
                  <tr key={node.metadata.name}>
                    <td>
                      <Link to={`/nodes/${node.metadata.name}`}>{node.metadata.name}</Link>
                    </td>
                    <td>
                      <Badge tone={node.status?.ready ? 'ok' : 'bad'}>{node.status?.ready ? 'Ready' : 'NotReady'}</Badge>
                      {node.spec?.drain && <Badge tone="warn">Draining</Badge>}
                    </td>
                    <td>
                      {gpus.length} × {gpus[0]?.name ?? '—'}{' '}
                      <span className="muted">({formatMb(gpus.reduce((s, g) => s + g.memory_total_mb, 0))})</span>
                    </td>
                    <td>{count}</td>
                    <td className="small">{(node.status?.engines ?? []).join(', ')}</td>
                    <td>{formatAgo(node.status?.heartbeat_ms)}</td>
                    <td>
                      <DrainButton node={node} />
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
      <AddNode />
    </>
  );
}

export function NodeDetail() {
  const { name = '' } = useParams();
  const nodes = useLive<Node>('nodes');
  const replicas = useLive<Replica>('replicas');
  const node = nodes.data?.items.find((item) => item.metadata.name === name);
  const allocated = allocatedByGpu(replicas.data?.items ?? []);
  if (nodes.isPending) return <Loading what="the node" />;
  if (!node) {
    return (
      <>
        <PageHeader title={name} />
        <Empty title={`There is no node ${name}`}>
          <Link to="/nodes">Back to nodes</Link>
        </Empty>
      </>
    );
  }
  const own = (replicas.data?.items ?? []).filter((replica) => replica.spec.node === name);
  return (
    <>
      <PageHeader title={name}>
        <Badge tone={node.status?.ready ? 'ok' : 'bad'}>{node.status?.ready ? 'Ready' : 'NotReady'}</Badge>
        <DrainButton node={node} />
      </PageHeader>
      {node.status?.message && <div className="alert warn">{node.status.message}</div>}
      <section className="card" aria-labelledby="node-gpus">
        <h2 id="node-gpus">GPUs</h2>
        {(node.status?.gpus ?? []).length === 0 ? (
          <Empty title="No GPUs reported" />
        ) : (
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">GPU</th>
                  <th scope="col">VRAM</th>
                  <th scope="col">Util.</th>
                  <th scope="col">Temp.</th>
                  <th scope="col">Power</th>
                </tr>
              </thead>
              <tbody>
                {(node.status?.gpus ?? []).map((gpu) => (
                  <tr key={gpu.index}>
                    <td>
                      gpu{gpu.index} <span className="muted">{gpu.name}</span>
                    </td>
                    <td className="wide">
                      <VramBar label={`gpu${gpu.index}`} total={gpu.memory_total_mb} used={gpu.memory_used_mb} allocated={allocated.get(`${name}/${gpu.index}`) ?? 0} />
                    </td>
                    <td>{gpu.utilization ?? 0}%</td>
                    <td>{gpu.temperature_c ?? 0} °C</td>
                    <td>{gpu.power_w ?? 0} W</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
      <section className="card" aria-labelledby="node-replicas">
        <h2 id="node-replicas">Replicas on this node</h2>
        {own.length === 0 ? (
          <Empty title="None" />
        ) : (
          <ul>
            {own.map((replica) => (
              <li key={replica.metadata.name}>
                <Link to={`/deployments/${replica.spec.deployment}`}>{replica.metadata.name}</Link> <Badge>{replica.status?.phase ?? 'Pending'}</Badge>{' '}
                gpu{(replica.spec.gpus ?? []).join(',')} · {formatMb(replica.spec.vram_mb ?? 0)}
              </li>
            ))}
          </ul>
        )}
      </section>
    </>
  );
}
