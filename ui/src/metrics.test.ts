import { describe, expect, it } from 'vitest';
import { parsePrometheus, quantile, stats, totalsByModel } from './metrics';

const text = (requests: number, tokens: number, fast: number) => `# HELP nebula_requests_total x
# TYPE nebula_requests_total counter
nebula_requests_total{model="chat",key="anonymous",status="200"} ${requests}
nebula_requests_total{model="chat",key="anonymous",status="429"} 1
nebula_completion_tokens_total{model="chat"} ${tokens}
nebula_queue_depth{model="chat"} 3
nebula_time_to_first_token_seconds_bucket{model="chat",le="0.01"} ${fast}
nebula_time_to_first_token_seconds_bucket{model="chat",le="0.1"} ${fast + 10}
nebula_time_to_first_token_seconds_bucket{model="chat",le="+Inf"} ${fast + 10}
nebula_http_connections_open 4
garbage line without a value
odd{model="a\\"b"} 1
`;

describe('metrics', () => {
  it('parses samples, labels with escapes, and skips comments and garbage', () => {
    const samples = parsePrometheus(text(5, 100, 0));
    expect(samples.find((s) => s.name === 'nebula_queue_depth')?.value).toBe(3);
    expect(samples.find((s) => s.name === 'odd')?.labels.model).toBe('a"b');
    expect(samples.some((s) => s.name === 'garbage')).toBe(false);
  });

  it('sums a model over its labels', () => {
    const totals = totalsByModel(parsePrometheus(text(5, 100, 0))).get('chat')!;
    expect(totals.requests).toBe(6);
    expect(totals.completionTokens).toBe(100);
    expect(totals.queueDepth).toBe(3);
  });

  it('interpolates a quantile inside its bucket, and has none without data', () => {
    expect(quantile([[0.01, 0], [0.1, 10], [Infinity, 10]], 0.5)).toBeCloseTo(0.055);
    expect(quantile([[0.1, 0], [Infinity, 0]], 0.5)).toBeNull();
    expect(quantile([], 0.5)).toBeNull();
  });

  it('turns two samples into rates, and the TTFT median over the interval', () => {
    const before = { at: 0, totals: totalsByModel(parsePrometheus(text(5, 100, 0))) };
    const after = { at: 2000, totals: totalsByModel(parsePrometheus(text(15, 300, 10))) };
    const chat = stats(before, after).get('chat')!;
    expect(chat.requestsPerSecond).toBe(5);
    expect(chat.tokensPerSecond).toBe(100);
    expect(chat.ttftP50).toBeCloseTo(0.005); // 10 new answers, all under 10 ms
    expect(stats(null, after).get('chat')!.requestsPerSecond).toBe(0);
  });

  it('never reports a negative rate when a counter resets (server restart)', () => {
    const before = { at: 0, totals: totalsByModel(parsePrometheus(text(50, 100, 0))) };
    const after = { at: 1000, totals: totalsByModel(parsePrometheus(text(1, 1, 0))) };
    expect(stats(before, after).get('chat')!.requestsPerSecond).toBe(0);
  });
});
