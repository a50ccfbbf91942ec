// Per-deployment gateway figures, read from /metrics every 5 s while a page shows them (the one
// periodic read of the dashboard: /metrics has no watch; everything else follows watches).
import { useRef } from 'react';
import { useQuery } from '@tanstack/react-query';
import { request } from './api';
import { parsePrometheus, stats, totalsByModel, type DeploymentStats, type ModelTotals } from './metrics';
import type { Replica } from './types';

export function useDeploymentStats(): Map<string, DeploymentStats> {
  const previous = useRef<{ at: number; totals: Map<string, ModelTotals> } | null>(null);
  const query = useQuery({
    queryKey: ['metrics'],
    queryFn: async () => {
      const text = await (await request('/metrics')).text();
      const current = { at: Date.now(), totals: totalsByModel(parsePrometheus(text)) };
      const result = stats(previous.current, current);
      previous.current = current;
      return result;
    },
    refetchInterval: 5000,
    refetchIntervalInBackground: false,
  });
  return query.data ?? new Map();
}

// VRAM reserved per GPU ("node/index" → MiB), from the replicas placed there.
export function allocatedByGpu(replicas: Replica[]): Map<string, number> {
  const allocated = new Map<string, number>();
  for (const replica of replicas) {
    const gpus = replica.spec.gpus ?? [];
    if (!replica.spec.node || gpus.length === 0) continue;
    const share = (replica.spec.vram_mb ?? 0) / gpus.length;
    for (const index of gpus) {
      const key = `${replica.spec.node}/${index}`;
      allocated.set(key, (allocated.get(key) ?? 0) + share);
    }
  }
  return allocated;
}
