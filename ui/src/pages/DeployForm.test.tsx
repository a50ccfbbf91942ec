import { describe, expect, it } from 'vitest';
import { render, screen } from '@testing-library/react';
import { initialValues, Preview, toBody } from './DeployForm';

describe('toBody', () => {
  it('builds the spec from the fields', () => {
    const { body, problem } = toBody({
      ...initialValues,
      name: 'chat',
      model: 'llama-3.1-8b-instruct',
      replicas: '2',
      max_context: '4096',
      idle_timeout_s: '300',
      on_idle: 'stop',
      engine_args: '--mode echo',
    });
    expect(problem).toBeUndefined();
    expect(body).toEqual({
      metadata: { name: 'chat' },
      spec: {
        model: 'llama-3.1-8b-instruct',
        engine: 'sim',
        replicas: 2,
        gpus_per_replica: 1,
        max_context: 4096,
        priority: 0,
        idle_timeout_ms: 300000,
        on_idle: 'stop',
        engine_args: ['--mode', 'echo'],
      },
    });
  });

  it('refuses bad names and counts before asking the server', () => {
    expect(toBody({ ...initialValues, name: 'Bad Name', model: 'm' }).problem).toMatch(/^Name/);
    expect(toBody({ ...initialValues, name: '-x', model: 'm' }).problem).toMatch(/^Name/);
    expect(toBody({ ...initialValues, name: 'x', model: '' }).problem).toMatch(/^Model/);
    expect(toBody({ ...initialValues, name: 'x', model: 'm', replicas: '1.5' }).problem).toMatch(/^Replicas/);
    expect(toBody({ ...initialValues, name: 'x', model: 'm', max_seqs: '-1' }).problem).toMatch(/^Max sequences/);
    expect(toBody({ ...initialValues, name: 'x', model: 'm', idle_timeout_s: 'soon' }).problem).toMatch(/^Idle/);
  });
});

describe('Preview', () => {
  it('explains a model that does not fit, with per-GPU VRAM and the alternatives', () => {
    render(
      <Preview
        simulation={{
          deployment: 'big',
          fits: false,
          replicas: 1,
          estimate: { vram_mb: 145817, source: 'catalog:meta-llama/Llama-3.1-70B-Instruct' },
          placements: [],
          gpus: [{ node: 'vm', index: 0, name: 'H100', total_mb: 81920, used_before_mb: 1000, used_after_mb: 1000 }],
          reason: 'no node fits replica big-0 (1 GPU(s), 142.4 GiB VRAM)',
          alternatives: [{ kind: 'model', value: 'x-awq', summary: 'the awq-int4 variant x-awq', saves_mb: 96665 }],
        }}
      />,
    );
    expect(screen.getByText('Does not fit')).toBeTruthy();
    expect(screen.getByRole('alert').textContent).toMatch(/no node fits replica big-0/);
    expect(screen.getByText(/the awq-int4 variant x-awq/)).toBeTruthy();
    expect(screen.getByRole('meter', { name: 'vm gpu0 before VRAM allocated' })).toBeTruthy();
    expect(screen.getByText('142.4 GiB')).toBeTruthy();
  });
});
