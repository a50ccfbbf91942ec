#pragma once
// nebula engine-sim: an OpenAI-compatible server that behaves like an LLM engine (vLLM's HTTP
// dialect) with a realistic token pace, for tests, demos and capacity planning without a GPU.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "common/asio.h"
#include "sim/engine.h"
#include "sim/profile.h"

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
  uint64_t seed = 0;                // text (a request's "seed" overrides it), step noise and fail-rate draws
  // One log line per generation request with its x-request-id and W3C traceparent (--log-requests),
  // to follow a request from the client to the engine.
  bool log_requests = false;
  std::string profile = "default";        // see profile.h; every field below that is unset comes from it
  std::string dialect = "vllm";           // vllm, sglang, llamacpp, tgi or ollama: health, metrics, native API
  std::optional<double> startup_seconds;  // /health answers 503 (and the API 503) until this has passed
  int max_model_len = 8192;               // prompt + max_tokens beyond this: 400 context_length_exceeded
  // A request without max_tokens generates up to the context left (vLLM's rule); this caps it
  // (as vLLM's generation config's max_new_tokens does). Unset = no cap.
  std::optional<int> default_max_tokens;
  int max_logprobs = 20;  // vLLM's --max-logprobs: more (top_)logprobs asked for is a 400
  // usage.prompt_tokens_details.cached_tokens in every answer. vLLM sends it only with
  // --enable-prompt-tokens-details (null otherwise); on here because the gateway's usage reads it.
  bool enable_prompt_tokens_details = true;

  // Step cost: base + [prefill_step if any prefill] + prefill tokens x per token + decode seqs x
  // per seq, milliseconds, times (1 + noise x N(0,1)).
  std::optional<double> step_base_ms;
  std::optional<double> prefill_step_ms;
  std::optional<double> prefill_ms_per_token;
  std::optional<double> decode_ms_per_seq;
  std::optional<double> step_noise;
  // Scheduler and KV cache.
  std::optional<int> max_num_seqs;
  std::optional<int> max_num_batched_tokens;
  int block_size = 16;
  std::optional<int> kv_blocks;  // overrides the count derived from memory
  bool enable_prefix_caching = true;
  bool enable_chunked_prefill = true;
  // Memory (GB = 1e9 bytes) and sleep/wake.
  std::optional<double> gpu_memory_gb;
  std::optional<double> gpu_memory_utilization;
  std::optional<double> weights_gb;
  std::optional<double> kv_bytes_per_token;
  std::optional<double> wake_l1_seconds;
  std::optional<double> wake_l2_seconds;
  std::optional<int> embedding_dim;

  // llamacpp dialect only: llama-server's router mode (as started without -m). The one model,
  // `model`, starts unloaded; GET /models lists it with its status, POST /models/load loads it
  // (taking startup_seconds, as a model process starting would) and POST /models/unload frees its
  // weights and KV cache; requests name it in the body's "model" (GET ones in ?model=). /health
  // answers 200 at once.
  bool router = false;
  // Router mode: load the model when a request names it unloaded (llama-server's default;
  // --no-models-autoload turns it off, and ?autoload=true|false overrides it per request).
  bool models_autoload = true;
  // Router mode: GET /models also lists the phantom model `default` that llama-server makes of
  // preset keys outside any section (PresetModel::implicit_default). It cannot be loaded here.
  bool router_lists_default = false;
  // Router mode: llama-server's --sleep-idle-seconds. A loaded model idle this long is put to
  // sleep (GPU freed, status "sleeping") and wakes, taking startup_seconds, for the next request.
  double sleep_idle_seconds = 0;

  // Faults.
  double fail_rate = 0;  // share of inference requests answered 429, 500 or 503 (chosen at random)
  int crash_after = 0;   // > 0: the process dies when request crash_after + 1 arrives
  int hang_after = 0;    // > 0: from request hang_after + 1 on, nothing answers, /health included
  // What a crash does; default std::_Exit(1). Tests replace it.
  std::function<void()> crash;
};

// The one model of a llama-server preset file (--models-preset): the first section other than
// [*], with its `c` (context of all slots) and `parallel`. Throws std::invalid_argument when the file
// cannot be read or names no model.
struct PresetModel {
  std::string name;
  std::string model;  // the GGUF path (the simulator does not read it)
  int context = 0;    // c / ctx-size; 0 = not given
  int parallel = 0;   // parallel / np; 0 = not given
  // Keys before the first section (e.g. `version = 1`): llama-server puts them in an implicit
  // section named `default`, which it then lists as a model of its own.
  bool implicit_default = false;
};
PresetModel read_models_preset(const std::string& path);

// Resolves the profile and its overrides into the engine's configuration. Throws
// std::invalid_argument for an unknown profile or dialect, or a KV cache that cannot hold one
// max_model_len sequence.
struct ResolvedSim {
  Profile profile;  // with the overrides applied
  EngineConfig engine;
  double startup_seconds = 0;
  int embedding_dim = 4096;
};
ResolvedSim resolve(const SimOptions& options);

// Serves the engine API of options.dialect on an io_context the caller runs with ONE thread
// (the engine's state lives on it unlocked): vLLM's /health, /v1/models, /v1/chat/completions,
// /v1/completions, /v1/embeddings, /tokenize, /metrics, /sleep, /wake_up, /is_sleeping, plus the
// dialect's own health, metrics and native endpoints. Requests are scheduled by a sim::Engine
// (engine.h) driven in real time. Requests still in flight keep the engine's state alive, so the
// EngineSim may be destroyed before them.
class EngineSim {
 public:
  // Throws std::invalid_argument for an unknown mode, profile or dialect, or an impossible
  // configuration (see resolve()).
  EngineSim(asio::io_context& io, SimOptions options);
  ~EngineSim();
  EngineSim(const EngineSim&) = delete;
  EngineSim& operator=(const EngineSim&) = delete;

  void add_routes(http::Router& router);
  const SimOptions& options() const;
  // False until startup_seconds have passed since construction.
  bool ready() const;
  // Sequences being prefilled or decoded now, and queued; safe from any thread.
  size_t running() const;
  size_t waiting() const;

 private:
  void add_router_routes(http::Router& router);
  struct State;
  std::shared_ptr<State> state_;
};

// Runs a standalone engine: listens on options.host:options.port, serves until SIGINT/SIGTERM,
// and returns the process exit code. Logs the listening address.
int run_engine_sim(const SimOptions& options);

}  // namespace nebula::sim
