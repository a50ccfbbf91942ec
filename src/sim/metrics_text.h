#pragma once
// /metrics in Prometheus text format, under each dialect's metric names.
#include <cstdint>
#include <optional>
#include <string>

#include "sim/engine.h"

namespace nebula::sim {

// Ollama has no /metrics; render_metrics() gives it vLLM's names, but the server does not serve them.
enum class Dialect { Vllm, Sglang, Llamacpp, Tgi, Ollama };
// "vllm", "sglang", "llamacpp", "tgi", "ollama"; nullopt otherwise.
std::optional<Dialect> parse_dialect(const std::string& text);

// What the server adds to the engine's own numbers.
struct ServerGauges {
  std::string model;
  double gpu_memory_used_bytes = 0;
  bool sleeping = false;
  uint64_t requests_received = 0;  // inference requests that reached the engine API
};

std::string render_metrics(Dialect dialect, const Engine& engine, const ServerGauges& gauges);

}  // namespace nebula::sim
