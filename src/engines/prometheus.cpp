#include "engines/prometheus.h"

#include <charconv>
#include <cmath>

namespace nebula::engines {
namespace {

bool name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}
bool name_char(char c) {
  return name_start(c) || (c >= '0' && c <= '9');
}
bool blank(char c) {
  return c == ' ' || c == '\t';
}

// Reads a sample value: a float, NaN, +Inf, -Inf (case-insensitive, as Prometheus accepts).
std::optional<double> parse_value(std::string_view text) {
  if (text.empty()) return std::nullopt;
  bool negative = false;
  if (text[0] == '+' || text[0] == '-') {
    negative = text[0] == '-';
    text.remove_prefix(1);
    if (text.empty() || text[0] == '+' || text[0] == '-') return std::nullopt;
  }
  double value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return negative ? -value : value;
}

// Parses `{name="value",...}` starting at text[pos] == '{'; leaves pos after the '}'.
bool parse_labels(std::string_view text, size_t& pos, std::map<std::string, std::string>& labels) {
  ++pos;
  while (true) {
    while (pos < text.size() && blank(text[pos])) ++pos;
    if (pos < text.size() && text[pos] == '}') {
      ++pos;
      return true;
    }
    size_t start = pos;
    if (pos >= text.size() || !name_start(text[pos])) return false;
    while (pos < text.size() && name_char(text[pos])) ++pos;
    std::string name(text.substr(start, pos - start));
    while (pos < text.size() && blank(text[pos])) ++pos;
    if (pos >= text.size() || text[pos] != '=') return false;
    ++pos;
    while (pos < text.size() && blank(text[pos])) ++pos;
    if (pos >= text.size() || text[pos] != '"') return false;
    ++pos;
    std::string value;
    while (true) {
      if (pos >= text.size()) return false;
      char c = text[pos++];
      if (c == '"') break;
      if (c == '\\') {
        if (pos >= text.size()) return false;
        char escaped = text[pos++];
        value += escaped == 'n' ? '\n' : escaped;
      } else {
        value += c;
      }
    }
    labels[std::move(name)] = std::move(value);
    while (pos < text.size() && blank(text[pos])) ++pos;
    if (pos < text.size() && text[pos] == ',') ++pos;
  }
}

std::optional<Sample> parse_line(std::string_view line) {
  Sample sample;
  size_t pos = 0;
  if (line.empty() || !name_start(line[0])) return std::nullopt;
  while (pos < line.size() && name_char(line[pos])) ++pos;
  sample.name = std::string(line.substr(0, pos));
  size_t name_end = pos;
  while (pos < line.size() && blank(line[pos])) ++pos;
  bool labelled = pos < line.size() && line[pos] == '{';
  if (labelled && !parse_labels(line, pos, sample.labels)) return std::nullopt;
  // A name runs into its value only through a character no name has ("m+1"); "m{a=\"b\"}1" is fine.
  if (!labelled && pos == name_end && pos < line.size()) return std::nullopt;
  while (pos < line.size() && blank(line[pos])) ++pos;
  size_t value_start = pos;
  while (pos < line.size() && !blank(line[pos])) ++pos;
  auto value = parse_value(line.substr(value_start, pos - value_start));
  if (!value) return std::nullopt;
  sample.value = *value;
  // An optional integer timestamp may follow; anything else makes the line malformed.
  while (pos < line.size() && blank(line[pos])) ++pos;
  if (pos < line.size()) {
    std::string_view timestamp = line.substr(pos);
    while (!timestamp.empty() && blank(timestamp.back())) timestamp.remove_suffix(1);
    int64_t ignored = 0;
    auto [end, error] = std::from_chars(timestamp.data(), timestamp.data() + timestamp.size(), ignored);
    if (error != std::errc() || end != timestamp.data() + timestamp.size()) return std::nullopt;
  }
  return sample;
}

}  // namespace

Metrics Metrics::parse(std::string_view text) {
  Metrics metrics;
  while (!text.empty()) {
    size_t newline = text.find('\n');
    std::string_view line = text.substr(0, newline);
    text.remove_prefix(newline == std::string_view::npos ? text.size() : newline + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    while (!line.empty() && blank(line.front())) line.remove_prefix(1);
    if (line.empty() || line.front() == '#') continue;
    if (auto sample = parse_line(line)) {
      metrics.samples_.push_back(std::move(*sample));
    } else {
      ++metrics.bad_lines_;
    }
  }
  return metrics;
}

bool Metrics::has(std::string_view name) const {
  for (const Sample& sample : samples_) {
    if (sample.name == name) return true;
  }
  return false;
}

std::optional<double> Metrics::sum(std::string_view name) const {
  std::optional<double> total;
  for (const Sample& sample : samples_) {
    if (sample.name != name || std::isnan(sample.value)) continue;
    total = total.value_or(0) + sample.value;
  }
  return total;
}

std::optional<double> Metrics::mean(std::string_view name) const {
  double total = 0;
  size_t count = 0;
  for (const Sample& sample : samples_) {
    if (sample.name != name || std::isnan(sample.value)) continue;
    total += sample.value;
    ++count;
  }
  if (count == 0) return std::nullopt;
  return total / static_cast<double>(count);
}

}  // namespace nebula::engines
