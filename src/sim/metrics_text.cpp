#include "sim/metrics_text.h"

#include <fmt/format.h>

#include <utility>
#include <vector>

namespace nebula::sim {
namespace {

// Builds the exposition text; every sample carries `labels` (may be empty).
class PromText {
 public:
  explicit PromText(std::string labels) : labels_(std::move(labels)) {}

  void gauge(std::string_view name, std::string_view help, double value) { single(name, "gauge", help, value); }
  void counter(std::string_view name, std::string_view help, double value) { single(name, "counter", help, value); }

  // One family with an extra label per sample: {extra_label_name}="value".
  void family(std::string_view name, std::string_view type, std::string_view help,
              const std::vector<std::pair<std::string, double>>& samples) {
    header(name, type, help);
    for (const auto& [extra, value] : samples) {
      text_ += fmt::format("{}{{{}{}}} {}\n", name, labels_.empty() ? "" : labels_ + ",", extra, number(value));
    }
  }

  void histogram(std::string_view name, std::string_view help, const Histogram& histogram) {
    header(name, "histogram", help);
    std::string prefix = labels_.empty() ? "" : labels_ + ",";
    uint64_t cumulative = 0;
    for (size_t i = 0; i < histogram.bounds.size(); ++i) {
      cumulative += histogram.counts[i];
      text_ += fmt::format("{}_bucket{{{}le=\"{}\"}} {}\n", name, prefix, number(histogram.bounds[i]), cumulative);
    }
    text_ += fmt::format("{}_bucket{{{}le=\"+Inf\"}} {}\n", name, prefix, histogram.count);
    text_ += fmt::format("{}_sum{} {}\n", name, braced(), number(histogram.sum));
    text_ += fmt::format("{}_count{} {}\n", name, braced(), histogram.count);
  }

  std::string take() { return std::move(text_); }

 private:
  static std::string number(double value) {
    if (value == static_cast<double>(static_cast<int64_t>(value)) && value < 9e15 && value > -9e15) {
      return fmt::format("{}", static_cast<int64_t>(value));
    }
    return fmt::format("{}", value);
  }
  std::string braced() const { return labels_.empty() ? "" : "{" + labels_ + "}"; }
  void header(std::string_view name, std::string_view type, std::string_view help) {
    text_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  }
  void single(std::string_view name, std::string_view type, std::string_view help, double value) {
    header(name, type, help);
    text_ += fmt::format("{}{} {}\n", name, braced(), number(value));
  }

  std::string labels_;
  std::string text_;
};

std::string model_label(const ServerGauges& gauges) {
  std::string escaped;
  for (char c : gauges.model) {
    if (c == '"' || c == '\\') escaped += '\\';
    if (c == '\n') {
      escaped += "\\n";
      continue;
    }
    escaped += c;
  }
  return fmt::format("model_name=\"{}\"", escaped);
}

void simulator_gauges(PromText& text, const Engine& engine, const ServerGauges& gauges) {
  // The simulator's own figures follow Prometheus' conventions (no ':' in the name, base units,
  // `_total` only on counters); the engines' names above are theirs, kept as they export them.
  text.gauge("nebula_sim_gpu_memory_used_bytes", "Simulated device memory held: weights, reserve and KV cache.",
             gauges.gpu_memory_used_bytes);
  text.gauge("nebula_sim_is_sleeping", "1 while the engine sleeps, 0 otherwise.", gauges.sleeping ? 1 : 0);
  text.gauge("nebula_sim_kv_cache_blocks", "KV cache blocks in the pool.", engine.kv_cache().num_blocks());
  text.gauge("nebula_sim_kv_cache_cached_blocks", "KV cache blocks holding a published prefix.",
             engine.kv_cache().cached_blocks());
  text.counter("nebula_sim_kv_cache_evictions_total", "Cached KV blocks evicted to make room.",
               static_cast<double>(engine.kv_cache().evictions()));
  text.counter("nebula_sim_steps_total", "Scheduler steps run.", static_cast<double>(engine.metrics().steps));
}

std::string vllm_metrics(const Engine& engine, const ServerGauges& gauges) {
  const EngineMetrics& m = engine.metrics();
  PromText text(model_label(gauges));
  text.gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
             static_cast<double>(engine.running()));
  text.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
             static_cast<double>(engine.waiting()));
  text.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", engine.kv_cache().usage());
  text.counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.",
               static_cast<double>(m.prefix_cache_queries));
  text.counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.",
               static_cast<double>(m.prefix_cache_hits));
  text.counter("vllm:num_preemptions_total", "Cumulative number of preemption from the engine.",
               static_cast<double>(m.preemptions));
  text.counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.", static_cast<double>(m.prompt_tokens));
  text.counter("vllm:generation_tokens_total", "Number of generation tokens processed.",
               static_cast<double>(m.generation_tokens));
  text.family("vllm:request_success_total", "counter", "Count of successfully processed requests.",
              {{"finished_reason=\"stop\"", static_cast<double>(m.finished_stop)},
               {"finished_reason=\"length\"", static_cast<double>(m.finished_length)},
               {"finished_reason=\"abort\"", static_cast<double>(m.finished_abort)}});
  text.histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                 m.time_to_first_token);
  text.histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                 m.inter_token_latency);
  text.histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", m.e2e_latency);
  text.histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
                 m.queue_time);
  const EngineConfig& config = engine.config();
  text.family("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig.",
              {{fmt::format("block_size=\"{}\",enable_prefix_caching=\"{}\",num_gpu_blocks=\"{}\"", config.block_size,
                            config.enable_prefix_caching ? "True" : "False", config.num_kv_blocks),
                1.0}});
  simulator_gauges(text, engine, gauges);
  return text.take();
}

std::string sglang_metrics(const Engine& engine, const ServerGauges& gauges) {
  const EngineMetrics& m = engine.metrics();
  PromText text(model_label(gauges));
  text.gauge("sglang:num_running_reqs", "The number of running requests.", static_cast<double>(engine.running()));
  text.gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.",
             static_cast<double>(engine.waiting()));
  text.gauge("sglang:token_usage", "The token usage.", engine.kv_cache().usage());
  double hit_rate = m.prefix_cache_queries ? static_cast<double>(m.prefix_cache_hits) / m.prefix_cache_queries : 0.0;
  text.gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", hit_rate);
  text.counter("sglang:prompt_tokens_total", "Number of prefill tokens processed.",
               static_cast<double>(m.prompt_tokens));
  text.counter("sglang:generation_tokens_total", "Number of generation tokens processed.",
               static_cast<double>(m.generation_tokens));
  text.counter("sglang:num_requests_total", "Number of requests processed.",
               static_cast<double>(m.finished_stop + m.finished_length + m.finished_abort));
  text.histogram("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                 m.time_to_first_token);
  text.histogram("sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                 m.inter_token_latency);
  text.histogram("sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds",
                 m.e2e_latency);
  simulator_gauges(text, engine, gauges);
  return text.take();
}

std::string llamacpp_metrics(const Engine& engine, const ServerGauges& gauges) {
  const EngineMetrics& m = engine.metrics();
  PromText text("");
  text.counter("llamacpp:prompt_tokens_total", "Number of prompt tokens processed.",
               static_cast<double>(m.prompt_tokens));
  text.counter("llamacpp:tokens_predicted_total", "Number of generation tokens processed.",
               static_cast<double>(m.generation_tokens));
  text.counter("llamacpp:n_decode_total", "Total number of llama_decode() calls", static_cast<double>(m.steps));
  text.gauge("llamacpp:requests_processing", "Number of requests processing.", static_cast<double>(engine.running()));
  text.gauge("llamacpp:requests_deferred", "Number of requests deferred.", static_cast<double>(engine.waiting()));
  text.gauge("llamacpp:kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.", engine.kv_cache().usage());
  text.gauge("llamacpp:kv_cache_tokens", "KV-cache tokens.",
             engine.kv_cache().usage() * engine.kv_cache().num_blocks() * engine.kv_cache().block_size());
  simulator_gauges(text, engine, gauges);
  return text.take();
}

std::string tgi_metrics(const Engine& engine, const ServerGauges& gauges) {
  const EngineMetrics& m = engine.metrics();
  PromText text("");
  text.gauge("tgi_queue_size", "Requests waiting in the queue.", static_cast<double>(engine.waiting()));
  text.gauge("tgi_batch_current_size", "Requests in the current batch.", static_cast<double>(engine.running()));
  text.counter("tgi_request_count", "Requests received.", static_cast<double>(gauges.requests_received));
  text.counter("tgi_request_success", "Requests that succeeded.",
               static_cast<double>(m.finished_stop + m.finished_length));
  text.histogram("tgi_request_duration", "Request duration in seconds.", m.e2e_latency);
  text.histogram("tgi_request_queue_duration", "Time spent queued in seconds.", m.queue_time);
  text.histogram("tgi_request_generated_tokens", "Tokens generated per request.", m.generated_tokens);
  simulator_gauges(text, engine, gauges);
  return text.take();
}

}  // namespace

std::optional<Dialect> parse_dialect(const std::string& text) {
  if (text == "vllm") return Dialect::Vllm;
  if (text == "sglang") return Dialect::Sglang;
  if (text == "llamacpp") return Dialect::Llamacpp;
  if (text == "tgi") return Dialect::Tgi;
  if (text == "ollama") return Dialect::Ollama;
  return std::nullopt;
}

std::string render_metrics(Dialect dialect, const Engine& engine, const ServerGauges& gauges) {
  switch (dialect) {
    case Dialect::Sglang: return sglang_metrics(engine, gauges);
    case Dialect::Llamacpp: return llamacpp_metrics(engine, gauges);
    case Dialect::Tgi: return tgi_metrics(engine, gauges);
    case Dialect::Vllm:
    case Dialect::Ollama: break;
  }
  return vllm_metrics(engine, gauges);
}

}  // namespace nebula::sim
