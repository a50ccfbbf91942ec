import { Link } from 'react-router';
import { useLive } from '../live';
import { allocatedByGpu, useDeploymentStats } from '../stats';
import type { ClusterEvent, Deployment, Node, Replica } from '../types';
import { Badge, Empty, ErrorBox, Loading, PageHeader, VramBar } from '../components/ui';
import { formatAgo, formatNumber, formatSeconds } from '../format';
import { EventList } from './Events';

export function Overview() {
  const nodes = useLive<Node>('nodes');
  const deployments = useLive<Deployment>('deployments');
  const replicas = useLive<Replica>('replicas');
  const events = useLive<ClusterEvent>('events');
  const figures = useDeploymentStats();
  const allocated = allocatedByGpu(replicas.data?.items ?? []);
  const nodeItems = nodes.data?.items ?? [];
  const deploymentItems = deployments.data?.items ?? [];
  const gpuCount = nodeItems.reduce((sum, node) => sum + (node.status?.gpus?.length ?? 0), 0);
  const readyNodes = nodeItems.filter((node) => node.status?.ready).length;
  const readyDeployments = deploymentItems.filter((d) => d.status?.phase === 'Ready').length;

  return (
    <>
      <PageHeader title="Overview">
        <Link className="button primary" to="/deployments/new">
          Deploy a model
        </Link>
      </PageHeader>
      <section className="cards" aria-label="Summary">
        <div className="card stat">
          <div className="stat-value">
            {readyNodes}/{nodeItems.length}
          </div>
          <div className="muted">nodes ready</div>
        </div>
        <div className="card stat">
          <div className="stat-value">{gpuCount}</div>
          <div className="muted">GPUs</div>
        </div>
        <div className="card stat">
          <div className="stat-value">
            {readyDeployments}/{deploymentItems.length}
          </div>
          <div className="muted">deployments ready</div>
        </div>
        <div className="card stat">
          <div className="stat-value">{formatNumber([...figures.values()].reduce((s, f) => s + f.requestsPerSecond, 0))}</div>
          <div className="muted">requests/s</div>
        </div>
      </section>

      <section className="card" aria-labelledby="gpus-title">
        <h2 id="gpus-title">Nodes and GPUs</h2>
        <ErrorBox error={nodes.error} />
        {nodes.isPending ? (
          <Loading what="nodes" />
        ) : nodeItems.length === 0 ? (
          <Empty title="No nodes yet">
            Add one from <Link to="/nodes">Nodes</Link>: it shows the <code>nebula agent</code> command to run.
          </Empty>
        ) : (
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Node</th>
                  <th scope="col">GPU</th>
                  <th scope="col">VRAM (allocated / total)</th>
                  <th scope="col">Util.</th>
                  <th scope="col">Temp.</th>
                </tr>
              </thead>
              <tbody>
                {nodeItems.flatMap((node) => {
                  const gpus = node.status?.gpus ?? [];
                  const nodeCell = (
                    <>
                      <Link to={`/nodes/${node.metadata.name}`}>{node.metadata.name}</Link>{' '}
                      <Badge tone={node.status?.ready ? 'ok' : 'bad'}>{node.status?.ready ? 'Ready' : 'NotReady'}</Badge>
                      {node.spec?.drain && <Badge tone="warn">Draining</Badge>}
                    </>
                  );
                  if (gpus.length === 0) {
                    return [
                      <tr key={node.metadata.name}>
                        <td>{nodeCell}</td>
                        <td colSpan={4} className="muted">
                          no GPUs reported
                        </td>
                      </tr>,
                    ];
                  }
                  return gpus.map((gpu, i) => (
                    <tr key={`${node.metadata.name}/${gpu.index}`}>
                      <td>{i === 0 ? nodeCell : null}</td>
                      <td>
                        gpu{gpu.index} <span className="muted">{gpu.name}</span>
                      </td>
                      <td className="wide">
                        <VramBar
                          label={`${node.metadata.name} gpu${gpu.index}`}
                          total={gpu.memory_total_mb}
                          used={gpu.memory_used_mb}
                          allocated={allocated.get(`${node.metadata.name}/${gpu.index}`) ?? 0}
                        />
                      </td>
                      <td>{gpu.utilization ?? 0}%</td>
                      <td>{gpu.temperature_c ?? 0} °C</td>
                    </tr>
                  ));
                })}
              </tbody>
            </table>
          </div>
        )}
      </section>

      <section className="card" aria-labelledby="deployments-title">
        <h2 id="deployments-title">Deployments</h2>
        <ErrorBox error={deployments.error} />
        {deployments.isPending ? (
          <Loading what="deployments" />
        ) : deploymentItems.length === 0 ? (
          <Empty title="Nothing deployed">
            <Link to="/deployments/new">Deploy a model</Link> to serve it at <code>/v1</code>.
          </Empty>
        ) : (
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Ready</th>
                  <th scope="col">Phase</th>
                  <th scope="col">Req/s</th>
                  <th scope="col">TTFT p50</th>
                  <th scope="col">Tokens/s</th>
                  <th scope="col">Queue</th>
                </tr>
              </thead>
              <tbody>
                {deploymentItems.map((deployment) => {
                  const f = figures.get(deployment.metadata.name);
                  return (
                    <tr key={deployment.metadata.name}>
                      <td>
                        <Link to={`/deployments/${deployment.metadata.name}`}>{deployment.metadata.name}</Link>
                      </td>
                      <td>
                        {deployment.status?.ready_replicas ?? 0}/{deployment.spec.replicas ?? 1}
                      </td>
                      <td>
                        <Badge>{deployment.status?.phase ?? 'Pending'}</Badge>
                      </td>
                      <td>{formatNumber(f?.requestsPerSecond ?? 0)}</td>
                      <td>{formatSeconds(f?.ttftP50 ?? null)}</td>
                      <td>{formatNumber(f?.tokensPerSecond ?? 0)}</td>
                      <td>{f?.queueDepth ?? 0}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
      </section>

      <section className="card" aria-labelledby="events-title">
        <h2 id="events-title">Recent events</h2>
        <ErrorBox error={events.error} />
        {events.isPending ? <Loading what="events" /> : <EventList events={events.data?.items ?? []} limit={15} />}
      </section>
      <p className="muted small">Updated live. Heartbeat ages: {nodeItems.map((n) => `${n.metadata.name} ${formatAgo(n.status?.heartbeat_ms)}`).join(', ') || '—'}</p>
    </>
  );
}
