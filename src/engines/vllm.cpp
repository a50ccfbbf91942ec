// vLLM: `vllm serve MODEL --host H --port P --served-model-name NAME ...`, OpenAI API, /health,
// Prometheus /metrics, and sleep mode (dev-mode endpoints /sleep, /wake_up, /is_sleeping).
#include <fmt/format.h>

#include "common/json.h"
#include "engines/common.h"
#include "engines/drivers.h"
#include "http/http.h"

namespace nebula::engines {
namespace {

using std::chrono::seconds;

std::string reload_weights_body() {
  return json{{"method", "reload_weights"}}.dump();
}

class VllmDriver final : public VllmProtocolDriver {
 public:
  std::string name() const override { return "vllm"; }

  Availability detect(const EngineConfig& config) const override {
    return detect_binary(config.binary.empty() ? "vllm" : config.binary, {"--version"});
  }

  Result<Command> command(const LaunchContext& context) const override {
    if (context.model.empty()) return Error{ErrorCode::InvalidArgument, "vllm needs a model"};
    Command command;
    auto& argv = command.argv;
    argv = {context.config.binary.empty() ? "vllm" : context.config.binary,
            "serve",
            context.model,
            "--host",
            context.host,
            "--port",
            std::to_string(context.port),
            "--served-model-name",
            context.served_name.empty() ? context.model : context.served_name};
    if (context.max_context > 0) {
      argv.push_back("--max-model-len");
      argv.push_back(std::to_string(context.max_context));
    }
    if (context.max_seqs > 0) {
      argv.push_back("--max-num-seqs");
      argv.push_back(std::to_string(context.max_seqs));
    }
    if (!context.gpus.empty()) {
      argv.push_back("--tensor-parallel-size");
      argv.push_back(std::to_string(context.gpus.size()));
    }
    if (context.gpu_memory_utilization > 0) {
      argv.push_back("--gpu-memory-utilization");
      argv.push_back(flag_number(context.gpu_memory_utilization));
    }
    if (context.sleep_mode) argv.push_back("--enable-sleep-mode");
    // usage.prompt_tokens_details.cached_tokens: the gateway accounts cached prompt tokens from it,
    // and vLLM leaves it null unless asked.
    argv.push_back("--enable-prompt-tokens-details");
    append_user_args(argv, context);
    command.env = base_env(context);
    // /sleep, /wake_up and /is_sleeping exist only in the server's development mode.
    if (context.sleep_mode) command.env["VLLM_SERVER_DEV_MODE"] = "1";
    return command;
  }
};

}  // namespace

Load vllm_load(const Metrics& metrics) {
  Load load;
  load.running = metrics.sum("vllm:num_requests_running");
  load.waiting = metrics.sum("vllm:num_requests_waiting");
  load.kv_cache_usage = metrics.mean("vllm:kv_cache_usage_perc");
  if (!load.kv_cache_usage) load.kv_cache_usage = metrics.mean("vllm:gpu_cache_usage_perc");
  // The counters are cumulative, so their ratio is the hit rate over the engine's lifetime.
  auto queries = metrics.sum("vllm:prefix_cache_queries_total");
  auto hits = metrics.sum("vllm:prefix_cache_hits_total");
  if (!queries) {
    queries = metrics.sum("vllm:gpu_prefix_cache_queries_total");
    hits = metrics.sum("vllm:gpu_prefix_cache_hits_total");
  }
  if (queries && hits) {
    load.prefix_hit_rate = *queries > 0 ? *hits / *queries : 0.0;
  } else {
    load.prefix_hit_rate = metrics.mean("vllm:gpu_prefix_cache_hit_rate");
  }
  return load;
}

awaitable<Readiness> HealthMetricsDriver::probe(http::Client& client, std::string endpoint) const {
  co_return co_await probe_path(client, endpoint + "/health");
}

awaitable<Result<Load>> HealthMetricsDriver::load(http::Client& client, std::string endpoint) const {
  auto metrics = co_await fetch_metrics(client, endpoint);
  if (!metrics) co_return metrics.error();
  co_return load_from(*metrics);
}

awaitable<Status> VllmProtocolDriver::sleep(http::Client& client, std::string endpoint, int level,
                                            LaunchContext context) const {
  if (level != 1 && level != 2) {
    co_return Error{ErrorCode::InvalidArgument, fmt::format("sleep level must be 1 or 2, got {}", level)};
  }
  // The level is a query parameter; vLLM ignores a JSON body.
  co_return co_await post_expect_ok(client, fmt::format("{}/sleep?level={}", endpoint, level), "", seconds(300));
}

awaitable<Status> VllmProtocolDriver::wake(http::Client& client, std::string endpoint, LaunchContext context) const {
  if (context.sleep_level != 2) co_return co_await post_expect_ok(client, endpoint + "/wake_up", "", seconds(300));
  // Level 2 discarded the weights: reallocate them, reload them from disk, then the KV cache.
  Status weights = co_await post_expect_ok(client, endpoint + "/wake_up?tags=weights", "", seconds(300));
  if (!weights.ok()) co_return weights;
  Status reloaded = co_await post_expect_ok(client, endpoint + "/collective_rpc", reload_weights_body(), seconds(600));
  if (!reloaded.ok()) co_return reloaded;
  co_return co_await post_expect_ok(client, endpoint + "/wake_up?tags=kv_cache", "", seconds(300));
}

awaitable<Result<bool>> VllmProtocolDriver::is_sleeping(http::Client& client, std::string endpoint,
                                                        LaunchContext context) const {
  auto response = co_await client.request("GET", endpoint + "/is_sleeping", "", {}, seconds(5));
  if (!response) co_return response.error();
  if (response->status != 200) {
    co_return Error{ErrorCode::Unavailable, fmt::format("GET {}/is_sleeping: HTTP {}", endpoint, response->status)};
  }
  auto body = parse_json(response->body);
  if (!body || !body->is_object() || !body->contains("is_sleeping") || !(*body)["is_sleeping"].is_boolean()) {
    co_return Error{ErrorCode::Unavailable, "GET /is_sleeping: no is_sleeping in " + response->body.substr(0, 200)};
  }
  co_return (*body)["is_sleeping"].get<bool>();
}

const EngineDriver& vllm_driver() {
  static const VllmDriver driver;
  return driver;
}

}  // namespace nebula::engines
