// Per-deployment figures from the gateway's /metrics (Prometheus text): two samples a few
// seconds apart give rates; the TTFT histogram gives the median.
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export function parsePrometheus(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels: Record<string, string> = {};
    const labelText = match[3] ?? '';
    for (const label of labelText.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[label[1]!] = label[2]!.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    }
    const value = Number(match[4]);
    if (Number.isNaN(value)) continue;
    samples.push({ name: match[1]!, labels, value });
  }
  return samples;
}

export interface ModelTotals {
  requests: number;
  completionTokens: number;
  queueDepth: number;
  inFlight: number;
  ttftBuckets: [number, number][]; // [upper bound in seconds, cumulative count]
}

export function totalsByModel(samples: Sample[]): Map<string, ModelTotals> {
  const byModel = new Map<string, ModelTotals>();
  const get = (model: string) => {
    let totals = byModel.get(model);
    if (!totals) {
      totals = { requests: 0, completionTokens: 0, queueDepth: 0, inFlight: 0, ttftBuckets: [] };
      byModel.set(model, totals);
    }
    return totals;
  };
  for (const sample of samples) {
    const model = sample.labels.model;
    if (model === undefined) continue;
    switch (sample.name) {
      case 'nebula_requests_total':
        get(model).requests += sample.value;
        break;
      case 'nebula_completion_tokens_total':
        get(model).completionTokens += sample.value;
        break;
      case 'nebula_queue_depth':
        get(model).queueDepth += sample.value;
        break;
      case 'nebula_requests_in_flight':
        get(model).inFlight += sample.value;
        break;
      case 'nebula_time_to_first_token_seconds_bucket': {
        const bound = sample.labels.le === '+Inf' ? Infinity : Number(sample.labels.le);
        get(model).ttftBuckets.push([bound, sample.value]);
        break;
      }
    }
  }
  for (const totals of byModel.values()) totals.ttftBuckets.sort((a, b) => a[0] - b[0]);
  return byModel;
}

// The q-quantile of a cumulative histogram, interpolated inside its bucket; null without data.
export function quantile(buckets: [number, number][], q: number): number | null {
  const total = buckets.length ? buckets[buckets.length - 1]![1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [bound, count] of buckets) {
    if (count >= rank) {
      if (bound === Infinity) return lowerBound;
      const inBucket = count - lowerCount;
      return inBucket > 0 ? lowerBound + ((bound - lowerBound) * (rank - lowerCount)) / inBucket : bound;
    }
    lowerBound = bound;
    lowerCount = count;
  }
  return lowerBound;
}

export interface DeploymentStats {
  requestsPerSecond: number;
  tokensPerSecond: number;
  ttftP50: number | null; // seconds, over the interval (or since start when the interval had none)
  queueDepth: number;
}

export function stats(
  previous: { at: number; totals: Map<string, ModelTotals> } | null,
  current: { at: number; totals: Map<string, ModelTotals> },
): Map<string, DeploymentStats> {
  const result = new Map<string, DeploymentStats>();
  const seconds = previous ? (current.at - previous.at) / 1000 : 0;
  for (const [model, now] of current.totals) {
    const before = previous?.totals.get(model);
    const rate = (a: number, b: number | undefined) => (seconds > 0 && b !== undefined ? Math.max(0, a - b) / seconds : 0);
    let buckets = now.ttftBuckets;
    if (before && before.ttftBuckets.length === now.ttftBuckets.length) {
      const delta = now.ttftBuckets.map(([bound, count], i) => [bound, count - before.ttftBuckets[i]![1]] as [number, number]);
      if ((delta[delta.length - 1]?.[1] ?? 0) > 0) buckets = delta;
    }
    result.set(model, {
      requestsPerSecond: rate(now.requests, before?.requests),
      tokensPerSecond: rate(now.completionTokens, before?.completionTokens),
      ttftP50: quantile(buckets, 0.5),
      queueDepth: now.queueDepth,
    });
  }
  return result;
}
