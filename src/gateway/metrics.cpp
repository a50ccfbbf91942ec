#include "gateway/metrics.h"

#include <fmt/format.h>

#include "common/prometheus.h"

namespace nebula::gateway {

void Metrics::Histogram::observe(double value) {
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    if (value <= kBuckets[i]) counts[i] += 1;
  }
  count += 1;
  sum += value;
}

void Metrics::request_done(const Completed& request) {
  std::lock_guard lock(mutex_);
  requests_[{request.model, request.key, request.status}] += 1;
  if (request.ttft_s >= 0) ttft_[request.model].observe(request.ttft_s);
  e2e_[request.model].observe(request.e2e_s);
  prompt_tokens_[request.model] += request.prompt_tokens;
  completion_tokens_[request.model] += request.completion_tokens;
}

void Metrics::inter_token(const std::string& model, double seconds) {
  std::lock_guard lock(mutex_);
  itl_[model].observe(seconds);
}

void Metrics::upstream_error(const std::string& model) {
  std::lock_guard lock(mutex_);
  upstream_errors_[model] += 1;
}

void Metrics::in_flight(const std::string& model, int delta) {
  std::lock_guard lock(mutex_);
  in_flight_[model] += delta;
}

void Metrics::queue_depth(const std::string& model, int delta) {
  std::lock_guard lock(mutex_);
  queue_depth_[model] += delta;
}

std::string Metrics::render() const {
  std::lock_guard lock(mutex_);
  std::string out;
  out += "# HELP nebula_requests_total Gateway requests by model, key and HTTP status.\n";
  out += "# TYPE nebula_requests_total counter\n";
  for (const auto& [labels, count] : requests_) {
    out += fmt::format("nebula_requests_total{{model=\"{}\",key=\"{}\",status=\"{}\"}} {}\n",
                       prometheus_label(std::get<0>(labels)), prometheus_label(std::get<1>(labels)),
                       std::get<2>(labels), count);
  }
  auto histograms = [&](const char* name, const char* help, const std::map<std::string, Histogram>& series) {
    out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
    for (const auto& [model, histogram] : series) {
      for (size_t i = 0; i < kBuckets.size(); ++i) {
        out += fmt::format("{}_bucket{{model=\"{}\",le=\"{}\"}} {}\n", name, prometheus_label(model), kBuckets[i],
                           histogram.counts[i]);
      }
      out += fmt::format("{}_bucket{{model=\"{}\",le=\"+Inf\"}} {}\n", name, prometheus_label(model), histogram.count);
      out += fmt::format("{}_sum{{model=\"{}\"}} {}\n", name, prometheus_label(model), histogram.sum);
      out += fmt::format("{}_count{{model=\"{}\"}} {}\n", name, prometheus_label(model), histogram.count);
    }
  };
  histograms("nebula_time_to_first_token_seconds", "Time to the first streamed token.", ttft_);
  histograms("nebula_inter_token_latency_seconds", "Time between streamed tokens.", itl_);
  histograms("nebula_request_duration_seconds", "End-to-end request time.", e2e_);
  auto counters = [&](const char* name, const char* type, const char* help,
                      const std::map<std::string, int64_t>& series) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    for (const auto& [model, value] : series)
      out += fmt::format("{}{{model=\"{}\"}} {}\n", name, prometheus_label(model), value);
  };
  counters("nebula_prompt_tokens_total", "counter", "Prompt tokens the engines reported.", prompt_tokens_);
  counters("nebula_completion_tokens_total", "counter", "Completion tokens the engines reported.", completion_tokens_);
  counters("nebula_upstream_errors_total", "counter", "Failed attempts to reach an engine.", upstream_errors_);
  counters("nebula_requests_in_flight", "gauge", "Requests being served.", in_flight_);
  counters("nebula_queue_depth", "gauge", "Requests waiting in the admission queue.", queue_depth_);
  return out;
}

}  // namespace nebula::gateway
