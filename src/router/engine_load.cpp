#include "router/engine_load.h"

#include <charconv>
#include <cmath>
#include <optional>
#include <string>

namespace nebula::router {

namespace {

enum class Figure { None, Waiting, Running, KvUsage, KvUsageOld, CapacityTokens, CacheConfig };

Figure figure_of(std::string_view name) {
  if (name == "vllm:num_requests_waiting" || name == "sglang:num_queue_reqs" || name == "llamacpp:requests_deferred") {
    return Figure::Waiting;
  }
  if (name == "vllm:num_requests_running" || name == "sglang:num_running_reqs" ||
      name == "llamacpp:requests_processing") {
    return Figure::Running;
  }
  if (name == "vllm:kv_cache_usage_perc" || name == "sglang:token_usage" || name == "llamacpp:kv_cache_usage_ratio") {
    return Figure::KvUsage;
  }
  if (name == "vllm:gpu_cache_usage_perc") return Figure::KvUsageOld;
  if (name == "sglang:max_total_num_tokens") return Figure::CapacityTokens;
  if (name == "vllm:cache_config_info") return Figure::CacheConfig;
  return Figure::None;
}

// A finite, non-negative number, the whole of `text`.
std::optional<double> number(std::string_view text) {
  double value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || !std::isfinite(value) || value < 0) {
    return std::nullopt;
  }
  return value;
}

struct Sum {
  double total = 0;
  int samples = 0;
  void add(double value) {
    total += value;
    samples += 1;
  }
};

// One sample line: `name{label="value",...} number [timestamp]`. The labels of
// vllm:cache_config_info are read for num_gpu_blocks and block_size; the others are skipped.
struct Line {
  std::string_view name;
  std::optional<double> value;
  std::optional<double> num_gpu_blocks;
  std::optional<double> block_size;
};

std::optional<Line> parse_line(std::string_view line, bool want_labels) {
  Line parsed;
  size_t i = 0;
  while (i < line.size() && line[i] != '{' && line[i] != ' ' && line[i] != '\t') ++i;
  parsed.name = line.substr(0, i);
  if (parsed.name.empty()) return std::nullopt;
  if (i < line.size() && line[i] == '{') {
    ++i;
    while (true) {
      while (i < line.size() && (line[i] == ' ' || line[i] == ',')) ++i;
      if (i >= line.size()) return std::nullopt;
      if (line[i] == '}') {
        ++i;
        break;
      }
      size_t key_start = i;
      while (i < line.size() && line[i] != '=' && line[i] != '}') ++i;
      if (i >= line.size() || line[i] != '=') return std::nullopt;
      std::string_view key = line.substr(key_start, i - key_start);
      ++i;
      if (i >= line.size() || line[i] != '"') return std::nullopt;
      ++i;
      std::string value;
      while (i < line.size() && line[i] != '"') {
        if (line[i] == '\\' && i + 1 < line.size()) ++i;
        value.push_back(line[i]);
        ++i;
      }
      if (i >= line.size()) return std::nullopt;  // unterminated
      ++i;
      if (want_labels && key == "num_gpu_blocks") parsed.num_gpu_blocks = number(value);
      if (want_labels && key == "block_size") parsed.block_size = number(value);
    }
  }
  while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
  size_t value_start = i;
  while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
  parsed.value = number(line.substr(value_start, i - value_start));
  return parsed;
}

}  // namespace

EngineLoad parse_engine_load(std::string_view text) {
  Sum waiting, running, usage, usage_old;
  double capacity = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || line[0] == '#') continue;
    size_t name_end = line.find_first_of("{ \t");
    Figure figure = figure_of(line.substr(0, name_end));
    if (figure == Figure::None) continue;
    auto parsed = parse_line(line, figure == Figure::CacheConfig);
    if (!parsed || !parsed->value) continue;
    double value = *parsed->value;
    switch (figure) {
      case Figure::Waiting: waiting.add(value); break;
      case Figure::Running: running.add(value); break;
      case Figure::KvUsage: usage.add(std::min(value, 1.0)); break;
      case Figure::KvUsageOld: usage_old.add(std::min(value, 1.0)); break;
      case Figure::CapacityTokens: capacity += value; break;
      case Figure::CacheConfig:
        if (parsed->num_gpu_blocks && parsed->block_size) capacity += *parsed->num_gpu_blocks * *parsed->block_size;
        break;
      case Figure::None: break;
    }
  }
  EngineLoad load;
  if (waiting.samples > 0) load.waiting = waiting.total;
  if (running.samples > 0) load.running = running.total;
  if (usage.samples > 0) {
    load.kv_usage = usage.total / usage.samples;
  } else if (usage_old.samples > 0) {
    load.kv_usage = usage_old.total / usage_old.samples;
  }
  // Beyond any real cache; keeps the conversion defined for absurd labels.
  constexpr double kMaxCapacity = 1e15;
  load.kv_capacity_tokens = static_cast<int64_t>(std::min(capacity, kMaxCapacity));
  return load;
}

}  // namespace nebula::router
