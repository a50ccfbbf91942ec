#pragma once
// nebula engine-sim: an OpenAI-compatible server that behaves like an LLM engine (vLLM's HTTP
// dialect) with a realistic token pace, for tests, demos and capacity planning without a GPU.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/asio.h"

namespace boost::asio {
class io_context;
}

namespace nebula::http {
class Router;
}

namespace nebula::sim {

struct SimOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8000;
  std::string model = "sim-model";  // the served model name reported by /v1/models and in responses
  std::string mode = "lorem";       // "lorem" (seeded words) | "echo" (repeat the last user message)
  uint64_t seed = 0;                // a request's "seed" overrides it
  double startup_seconds = 0;       // /health answers 503 (and the API 503) until this has passed
  int max_model_len = 8192;         // prompt + max_tokens beyond this: 400 context_length_exceeded
  int default_max_tokens = 64;      // when the request sets none (capped by max_model_len)
  // Time to first token = base + prompt_tokens * per_token + a load term.
  double ttft_base_ms = 20;
  double prefill_ms_per_token = 0.05;
  // Inter-token latency grows with the number of concurrent sequences.
  double itl_ms = 10;
  double itl_ms_per_running_seq = 0.2;
};

// Serves the engine API (GET /health, GET /v1/models, POST /v1/chat/completions,
// POST /v1/completions, GET /metrics) on an io_context the caller runs. Thread-safe. Requests
// still in flight keep the engine's state alive, so the EngineSim may be destroyed before them.
class EngineSim {
 public:
  // Throws std::invalid_argument for an unknown mode.
  EngineSim(asio::io_context& io, SimOptions options);
  ~EngineSim();
  EngineSim(const EngineSim&) = delete;
  EngineSim& operator=(const EngineSim&) = delete;

  void add_routes(http::Router& router);
  const SimOptions& options() const;
  // False until startup_seconds have passed since construction.
  bool ready() const;
  // Sequences being prefilled or decoded now.
  size_t running() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// Runs a standalone engine: listens on options.host:options.port, serves until SIGINT/SIGTERM,
// and returns the process exit code. Logs the listening address.
int run_engine_sim(const SimOptions& options);

}  // namespace nebula::sim
