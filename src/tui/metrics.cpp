#include "tui/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

namespace nebula::tui {

namespace {

bool name_char(char c, bool first) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (!first && c >= '0' && c <= '9');
}

std::optional<double> parse_number(std::string_view text) {
  if (text == "+Inf" || text == "Inf") return std::numeric_limits<double>::infinity();
  if (text == "-Inf") return -std::numeric_limits<double>::infinity();
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// `{a="x",b="y"}` from position `at` (the '{'); advances `at` past the '}'.
bool parse_labels(std::string_view line, size_t& at, std::map<std::string, std::string>& labels) {
  ++at;
  while (at < line.size() && line[at] != '}') {
    size_t start = at;
    while (at < line.size() && name_char(line[at], at == start)) ++at;
    if (at == start || at + 1 >= line.size() || line[at] != '=' || line[at + 1] != '"') return false;
    std::string name(line.substr(start, at - start));
    at += 2;
    std::string value;
    while (at < line.size() && line[at] != '"') {
      if (line[at] == '\\' && at + 1 < line.size()) {
        ++at;
        value.push_back(line[at] == 'n' ? '\n' : line[at]);
      } else {
        value.push_back(line[at]);
      }
      ++at;
    }
    if (at >= line.size()) return false;
    ++at;  // the closing quote
    labels[std::move(name)] = std::move(value);
    if (at < line.size() && line[at] == ',') ++at;
  }
  if (at >= line.size()) return false;
  ++at;  // '}'
  return true;
}

std::optional<Sample> parse_line(std::string_view line) {
  size_t at = 0;
  while (at < line.size() && name_char(line[at], at == 0)) ++at;
  if (at == 0) return std::nullopt;
  Sample sample;
  sample.name = std::string(line.substr(0, at));
  if (at < line.size() && line[at] == '{' && !parse_labels(line, at, sample.labels)) return std::nullopt;
  if (at >= line.size() || (line[at] != ' ' && line[at] != '\t')) return std::nullopt;
  while (at < line.size() && (line[at] == ' ' || line[at] == '\t')) ++at;
  std::string_view rest = line.substr(at);
  rest = rest.substr(0, rest.find_first_of(" \t"));  // a timestamp may follow
  auto value = parse_number(rest);
  if (!value || !std::isfinite(*value)) return std::nullopt;
  sample.value = *value;
  return sample;
}

std::string label(const Sample& sample, const std::string& name) {
  auto it = sample.labels.find(name);
  return it == sample.labels.end() ? std::string() : it->second;
}

// A counter's increase between two scrapes; a reset (lower than before) counts from zero.
double increase(double before, double after) {
  return after >= before ? after - before : after;
}

}  // namespace

std::vector<Sample> parse_prometheus(std::string_view text) {
  std::vector<Sample> samples;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty() && line.front() != '#') {
      if (auto sample = parse_line(line)) samples.push_back(std::move(*sample));
    }
    start = end + 1;
  }
  return samples;
}

std::map<std::string, GatewayCounters> gateway_counters(const std::vector<Sample>& samples) {
  std::map<std::string, GatewayCounters> counters;
  for (const auto& sample : samples) {
    std::string model = label(sample, "model");
    if (model.empty()) continue;
    if (sample.name == "nebula_requests_total") {
      counters[model].requests += sample.value;
    } else if (sample.name == "nebula_prompt_tokens_total") {
      counters[model].prompt_tokens += sample.value;
    } else if (sample.name == "nebula_completion_tokens_total") {
      counters[model].completion_tokens += sample.value;
    } else if (sample.name == "nebula_queue_depth") {
      counters[model].queue_depth += sample.value;
    } else if (sample.name == "nebula_requests_in_flight") {
      counters[model].in_flight += sample.value;
    } else if (sample.name == "nebula_time_to_first_token_seconds_bucket") {
      auto bound = parse_number(label(sample, "le"));
      if (bound && !std::isnan(*bound)) counters[model].ttft_buckets.emplace_back(*bound, sample.value);
    }
  }
  for (auto& [model, series] : counters) std::sort(series.ttft_buckets.begin(), series.ttft_buckets.end());
  return counters;
}

std::optional<double> histogram_quantile(double q, const std::vector<std::pair<double, double>>& buckets) {
  if (buckets.empty()) return std::nullopt;
  double total = buckets.back().second;
  if (!(total > 0)) return std::nullopt;
  double rank = std::clamp(q, 0.0, 1.0) * total;
  double lower_bound = 0, lower_count = 0;
  for (const auto& [bound, count] : buckets) {
    if (count >= rank) {
      if (std::isinf(bound)) return lower_bound;
      double in_bucket = count - lower_count;
      if (in_bucket <= 0) return bound;
      return lower_bound + (bound - lower_bound) * (rank - lower_count) / in_bucket;
    }
    lower_bound = std::isinf(bound) ? lower_bound : bound;
    lower_count = count;
  }
  return lower_bound;
}

DeploymentFigures figures(const GatewayCounters* before, const GatewayCounters& after, double seconds) {
  DeploymentFigures result;
  result.queue_depth = after.queue_depth;
  result.in_flight = after.in_flight;
  if (before && seconds > 0) {
    result.requests_per_s = increase(before->requests, after.requests) / seconds;
    result.tokens_per_s = increase(before->completion_tokens, after.completion_tokens) / seconds;
  }
  // The interval's buckets, when the scrapes have the same bounds and no counter went back.
  std::vector<std::pair<double, double>> interval;
  if (before && before->ttft_buckets.size() == after.ttft_buckets.size()) {
    for (size_t i = 0; i < after.ttft_buckets.size(); ++i) {
      double was = before->ttft_buckets[i].second, now = after.ttft_buckets[i].second;
      if (before->ttft_buckets[i].first != after.ttft_buckets[i].first || now < was) {
        interval.clear();
        break;
      }
      interval.emplace_back(after.ttft_buckets[i].first, now - was);
    }
  }
  result.ttft_p50_s = histogram_quantile(0.5, interval);
  if (!result.ttft_p50_s) result.ttft_p50_s = histogram_quantile(0.5, after.ttft_buckets);
  return result;
}

}  // namespace nebula::tui
