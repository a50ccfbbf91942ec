#pragma once
// Inside the engines library: each driver's instance, the metric mappings, and the vLLM HTTP
// protocol shared by the vllm and sim drivers.
#include "engines/driver.h"
#include "engines/prometheus.h"

namespace nebula::engines {

const EngineDriver& vllm_driver();
const EngineDriver& sglang_driver();
const EngineDriver& llamacpp_driver();
const EngineDriver& tgi_driver();
const EngineDriver& ollama_driver();
const EngineDriver& docker_driver();
const EngineDriver& command_driver();
const EngineDriver& sim_driver();

// Load from each engine's metric names. Fields whose metrics are absent stay nullopt.
Load vllm_load(const Metrics& metrics);
Load sglang_load(const Metrics& metrics);
Load llamacpp_load(const Metrics& metrics);
Load tgi_load(const Metrics& metrics);
// Whichever engine's names are present (vllm, then sglang, llama.cpp, TGI): for command and docker.
Load any_engine_load(const Metrics& metrics);

// vLLM's health, metrics and sleep mode (/sleep?level=N, /wake_up, /is_sleeping).
// An engine that is ready when GET /health answers 200 and publishes its load on /metrics:
// vLLM, SGLang, llama.cpp, TGI. Each says which metric names mean what.
class HealthMetricsDriver : public EngineDriver {
 public:
  awaitable<Readiness> probe(http::Client& client, std::string endpoint) const override;
  awaitable<Result<Load>> load(http::Client& client, std::string endpoint) const override;

 protected:
  virtual Load load_from(const Metrics& metrics) const = 0;
};

class VllmProtocolDriver : public HealthMetricsDriver {
 protected:
  Load load_from(const Metrics& metrics) const override { return vllm_load(metrics); }

 public:
  bool can_sleep() const override { return true; }
  awaitable<Status> sleep(http::Client& client, std::string endpoint, int level, LaunchContext context) const override;
  awaitable<Status> wake(http::Client& client, std::string endpoint, LaunchContext context) const override;
  awaitable<Result<bool>> is_sleeping(http::Client& client, std::string endpoint, LaunchContext context) const override;
};

// Probe and load for an engine Nebula knows nothing about (command, docker): /health, else
// /v1/models; load from whichever known metric names /metrics has (none when it has no /metrics).
awaitable<Readiness> generic_probe(http::Client& client, std::string endpoint);
awaitable<Result<Load>> generic_load(http::Client& client, std::string endpoint);

}  // namespace nebula::engines
