// The documents of /api/v1 (docs/architecture.md#resources), as far as the dashboard reads them.
export interface Metadata {
  name: string;
  uid?: string;
  created_ms?: number;
  revision?: number;
  labels?: Record<string, string>;
}
export interface Doc {
  metadata: Metadata;
}
export interface Gpu {
  index: number;
  uuid?: string;
  name: string;
  memory_total_mb: number;
  memory_used_mb: number;
  utilization?: number;
  temperature_c?: number;
  power_w?: number;
}
export interface Node extends Doc {
  spec?: { drain?: boolean };
  status?: {
    gpus?: Gpu[];
    gpu_probe?: string;
    engines?: string[];
    agent_url?: string;
    heartbeat_ms?: number;
    ready?: boolean;
    message?: string;
  };
}
export interface DeploymentSpec {
  model: string;
  engine?: string;
  replicas?: number;
  gpus_per_replica?: number;
  max_context?: number;
  max_seqs?: number;
  vram_mb?: number;
  engine_args?: string[];
  env?: Record<string, string>;
  priority?: number;
  idle_timeout_ms?: number;
  on_idle?: string;
}
export interface Deployment extends Doc {
  spec: DeploymentSpec;
  status?: {
    replicas?: number;
    ready_replicas?: number;
    phase?: string;
    message?: string;
    plan_version?: number;
    rollout?: { state?: string; message?: string };
    idle_since_ms?: number;
    sleep_requested_ms?: number;
    wake_requested_ms?: number;
  };
}
export interface Replica extends Doc {
  spec: {
    deployment: string;
    node?: string;
    gpus?: number[];
    vram_mb?: number;
    stop?: boolean;
    draining_since_ms?: number;
    plan_version?: number;
  };
  status?: { phase?: string; endpoint?: string; restarts?: number; message?: string; last_error?: string };
}
export interface ClusterEvent extends Doc {
  time_ms: number;
  object: string;
  type: string;
  reason: string;
  message: string;
}
export interface ApiKey extends Doc {
  display_name: string;
  scope: string;
  models: string[];
  rpm: number;
  tpm: number;
  max_concurrency: number;
  budget_tokens: number;
  priority: number;
  expires_ms: number;
  revoked: boolean;
  last_used_ms?: number;
}
export interface Mode extends Doc {
  deployments: string[];
  active?: boolean;
  switched_ms?: number;
  last_switch?: string;
  switch?: { phase?: string; message?: string; from?: string };
}
export interface SwitchAnswer {
  mode: string;
  from?: string;
  started: string[];
  stopped: string[];
  slept: string[];
  woken: string[];
  dry_run: boolean;
  duration_ms?: number;
}
export interface UsageRecord {
  day: string;
  key: string;
  model: string;
  requests: number;
  errors: number;
  prompt_tokens: number;
  completion_tokens: number;
  cached_tokens: number;
  total_tokens: number;
}
export interface SimulatedGpu {
  node: string;
  index: number;
  name: string;
  total_mb: number;
  reserved_mb?: number;
  used_before_mb: number;
  used_after_mb: number;
  replicas?: string[];
}
export interface Simulation {
  deployment: string;
  fits: boolean;
  replicas: number;
  estimate?: { vram_mb?: number; source?: string };
  placements: { replica: string; node: string; gpus: number[]; vram_mb: number }[];
  gpus: SimulatedGpu[];
  reason?: string;
  alternatives?: { kind: string; value: string; summary: string; saves_mb: number }[];
}
export interface CatalogModel {
  id: string;
  alias: string;
  parameters: number;
  context_length: number;
  variants: { id: string; alias: string; quantization: string }[];
}
