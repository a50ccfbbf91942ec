// Create a deployment: the form, then the dry-run (POST /api/v1/simulate) showing per-GPU VRAM
// before and after and the alternatives when it does not fit, then the create.
import { useState } from 'react';
import { useNavigate } from 'react-router';
import { useMutation, useQuery } from '@tanstack/react-query';
import { api } from '../api';
import type { CatalogModel, DeploymentSpec, Simulation } from '../types';
import { Badge, ErrorBox, PageHeader, VramBar } from '../components/ui';
import { formatMb, splitArgs } from '../format';

const engines = ['sim', 'vllm', 'sglang', 'llamacpp', 'tgi', 'ollama', 'docker', 'command'];

export interface FormValues {
  name: string;
  model: string;
  engine: string;
  replicas: string;
  gpus_per_replica: string;
  max_context: string;
  max_seqs: string;
  idle_timeout_s: string;
  on_idle: string;
  priority: string;
  engine_args: string;
}

export const initialValues: FormValues = {
  name: '',
  model: '',
  engine: 'sim',
  replicas: '1',
  gpus_per_replica: '1',
  max_context: '',
  max_seqs: '',
  idle_timeout_s: '',
  on_idle: 'sleep-l1',
  priority: '0',
  engine_args: '',
};

// The request body for the values, or the first problem with them.
export function toBody(values: FormValues): { body?: { metadata: { name: string }; spec: DeploymentSpec }; problem?: string } {
  const name = values.name.trim();
  if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(name)) {
    return { problem: 'Name: 1–63 characters of a–z, 0–9 and -, not starting with -.' };
  }
  if (!values.model.trim()) return { problem: 'Model: pick one from the catalog, or give a Hugging Face id or a path.' };
  const spec: DeploymentSpec = { model: values.model.trim(), engine: values.engine };
  const counts: [keyof FormValues, keyof DeploymentSpec, string][] = [
    ['replicas', 'replicas', 'Replicas'],
    ['gpus_per_replica', 'gpus_per_replica', 'GPUs per replica'],
    ['max_context', 'max_context', 'Context length'],
    ['max_seqs', 'max_seqs', 'Max sequences'],
    ['priority', 'priority', 'Priority'],
  ];
  for (const [field, key, label] of counts) {
    const text = values[field].trim();
    if (text === '') continue;
    const number = Number(text);
    if (!Number.isInteger(number) || number < 0) return { problem: `${label}: a whole number, 0 or more.` };
    (spec as unknown as Record<string, number>)[key] = number;
  }
  const idle = values.idle_timeout_s.trim();
  if (idle !== '') {
    const seconds = Number(idle);
    if (!Number.isFinite(seconds) || seconds < 0) return { problem: 'Idle timeout: seconds, 0 or more.' };
    spec.idle_timeout_ms = Math.round(seconds * 1000);
    if (seconds > 0) spec.on_idle = values.on_idle;
  }
  const args = splitArgs(values.engine_args);
  if (args.length) spec.engine_args = args;
  return { body: { metadata: { name }, spec } };
}

function Field({ id, label, hint, children }: { id: string; label: string; hint?: string; children: React.ReactNode }) {
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      {children}
      {hint && (
        <div className="muted small" id={`${id}-hint`}>
          {hint}
        </div>
      )}
    </div>
  );
}

export function Preview({ simulation }: { simulation: Simulation }) {
  return (
    <section className={`card preview ${simulation.fits ? 'fits' : 'no-fit'}`} aria-labelledby="preview-title" data-testid="preview">
      <h2 id="preview-title">
        Dry run: {simulation.fits ? <Badge tone="ok">Fits</Badge> : <Badge tone="bad">Does not fit</Badge>}
      </h2>
      {simulation.estimate?.vram_mb !== undefined && (
        <p>
          Each replica claims <strong>{formatMb(simulation.estimate.vram_mb)}</strong>
          {simulation.estimate.source && <span className="muted"> ({simulation.estimate.source})</span>}.
        </p>
      )}
      {!simulation.fits && simulation.reason && (
        <div className="alert error" role="alert">
          {simulation.reason}
        </div>
      )}
      {simulation.placements.length > 0 && (
        <p>
          Placement:{' '}
          {simulation.placements.map((p) => `${p.replica} → ${p.node} gpu${p.gpus.join(',')}`).join('; ')}
        </p>
      )}
      <div className="table-wrap">
        <table>
          <thead>
            <tr>
              <th scope="col">GPU</th>
              <th scope="col">Before</th>
              <th scope="col">After</th>
            </tr>
          </thead>
          <tbody>
            {simulation.gpus.map((gpu) => (
              <tr key={`${gpu.node}/${gpu.index}`}>
                <td>
                  {gpu.node} gpu{gpu.index} <span className="muted">{gpu.name}</span>
                </td>
                <td className="wide">
                  <VramBar label={`${gpu.node} gpu${gpu.index} before`} total={gpu.total_mb} allocated={gpu.used_before_mb} used={gpu.used_before_mb} />
                </td>
                <td className="wide">
                  <VramBar label={`${gpu.node} gpu${gpu.index} after`} total={gpu.total_mb} allocated={gpu.used_after_mb} used={gpu.used_after_mb} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {!simulation.fits && (simulation.alternatives?.length ?? 0) > 0 && (
        <>
          <h3>What would fit</h3>
          <ul className="alternatives">
            {simulation.alternatives!.map((alternative) => (
              <li key={`${alternative.kind}:${alternative.value}`}>
                {alternative.summary} <span className="muted">(saves {formatMb(alternative.saves_mb)})</span>
              </li>
            ))}
          </ul>
        </>
      )}
    </section>
  );
}

export function DeployForm() {
  const [values, setValues] = useState<FormValues>(initialValues);
  const [previewOf, setPreviewOf] = useState<string | null>(null);
  const navigate = useNavigate();
  const catalog = useQuery({
    queryKey: ['catalog'],
    queryFn: () => api<{ items: CatalogModel[] }>('/api/v1/catalog'),
    staleTime: Infinity,
  });
  const { body, problem } = toBody(values);
  const bodyText = body ? JSON.stringify(body) : '';
  const simulate = useMutation({
    mutationFn: () => api<Simulation>('/api/v1/simulate', { method: 'POST', body }),
    onSuccess: () => setPreviewOf(bodyText),
  });
  const create = useMutation({
    mutationFn: () => api('/api/v1/deployments', { method: 'POST', body }),
    onSuccess: () => navigate(`/deployments/${body!.metadata.name}`),
  });
  const set = (field: keyof FormValues) => (event: React.ChangeEvent<HTMLInputElement | HTMLSelectElement>) => {
    setValues({ ...values, [field]: event.target.value });
  };
  const previewCurrent = simulate.data && previewOf === bodyText;
  const input = (field: keyof FormValues, extra: React.InputHTMLAttributes<HTMLInputElement> = {}) => (
    <input id={`f-${field}`} name={field} value={values[field]} onChange={set(field)} {...extra} />
  );

  return (
    <>
      <PageHeader title="New deployment" />
      <form
        className="card form-grid"
        aria-label="New deployment"
        onSubmit={(event) => {
          event.preventDefault();
          if (body) simulate.mutate();
        }}
      >
        <Field id="f-name" label="Name" hint="Clients call it as the model: /v1 model name.">
          {input('name', { required: true, placeholder: 'chat', autoComplete: 'off' })}
        </Field>
        <Field id="f-model" label="Model" hint="A catalog model, a Hugging Face id or a path on the nodes.">
          {input('model', { required: true, list: 'catalog-models', placeholder: 'llama-3.1-8b-instruct', autoComplete: 'off' })}
          <datalist id="catalog-models">
            {(catalog.data?.items ?? []).flatMap((model) => [
              <option key={model.alias} value={model.alias}>
                {model.id} · {(model.parameters / 1e9).toFixed(1)}B · {model.context_length} ctx
              </option>,
              ...model.variants.map((variant) => (
                <option key={variant.alias} value={variant.alias}>
                  {variant.id} · {variant.quantization}
                </option>
              )),
            ])}
          </datalist>
        </Field>
        <Field id="f-engine" label="Engine">
          <select id="f-engine" value={values.engine} onChange={set('engine')}>
            {engines.map((engine) => (
              <option key={engine}>{engine}</option>
            ))}
          </select>
        </Field>
        <Field id="f-replicas" label="Replicas">
          {input('replicas', { type: 'number', min: 0, max: 1000 })}
        </Field>
        <Field id="f-gpus_per_replica" label="GPUs per replica">
          {input('gpus_per_replica', { type: 'number', min: 0, max: 64 })}
        </Field>
        <Field id="f-max_context" label="Context length" hint="Tokens; empty = the model's.">
          {input('max_context', { type: 'number', min: 0 })}
        </Field>
        <Field id="f-max_seqs" label="Max sequences" hint="Concurrent sequences per replica; empty = engine default.">
          {input('max_seqs', { type: 'number', min: 0 })}
        </Field>
        <Field id="f-idle_timeout_s" label="Idle timeout (s)" hint="Empty or 0 = never idle.">
          {input('idle_timeout_s', { type: 'number', min: 0 })}
        </Field>
        <Field id="f-on_idle" label="When idle">
          <select id="f-on_idle" value={values.on_idle} onChange={set('on_idle')}>
            <option value="sleep-l1">sleep (level 1)</option>
            <option value="sleep-l2">sleep (level 2)</option>
            <option value="stop">stop</option>
          </select>
        </Field>
        <Field id="f-priority" label="Priority">
          {input('priority', { type: 'number' })}
        </Field>
        <Field id="f-engine_args" label="Engine arguments" hint="Appended to the engine's command line.">
          {input('engine_args', { placeholder: '--mode echo', autoComplete: 'off' })}
        </Field>
        <div className="form-actions">
          {problem && values.name !== '' && (
            <div className="alert warn" role="status">
              {problem}
            </div>
          )}
          <button type="submit" disabled={!body || simulate.isPending}>
            {simulate.isPending ? 'Checking…' : 'Preview placement'}
          </button>
          <button
            type="button"
            className="primary"
            disabled={!previewCurrent || !simulate.data?.fits || create.isPending}
            onClick={() => create.mutate()}
            title={previewCurrent ? undefined : 'Preview the placement first'}
          >
            {create.isPending ? 'Deploying…' : 'Deploy'}
          </button>
        </div>
      </form>
      <ErrorBox error={simulate.error} action="Fix the field it names, then preview again." />
      <ErrorBox error={create.error} />
      {simulate.data && previewCurrent && <Preview simulation={simulate.data} />}
      {simulate.data && !previewCurrent && <p className="muted">The form changed since the preview: preview again before deploying.</p>}
    </>
  );
}
