// What goes over the wire to xtrace: the bodies of its two ingestion endpoints, UUIDs and RFC
// 3339 times, and W3C traceparent headers.
#include <fmt/format.h>

#include <cctype>
#include <ctime>
#include <random>

#include "common/clock.h"
#include "xtrace/xtrace.h"

namespace nebula::xtrace {

namespace {
bool is_lower_hex(std::string_view text) {
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool all_zero(std::string_view text) {
  return text.find_first_not_of('0') == std::string_view::npos;
}

int digits(std::string_view text, size_t at, size_t count) {
  int value = 0;
  for (size_t i = at; i < at + count; ++i) {
    if (i >= text.size() || !std::isdigit(static_cast<unsigned char>(text[i]))) return -1;
    value = value * 10 + (text[i] - '0');
  }
  return value;
}
}  // namespace

// Random hex digits from a per-thread generator seeded once from the OS: trace and span ids
// need uniqueness, not secrecy, and this runs once per request.
std::string random_hex(size_t count) {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(count);
  while (out.size() < count) {
    uint64_t bits = generator();
    for (int i = 0; i < 16 && out.size() < count; ++i, bits >>= 4) out.push_back(kHex[bits & 15]);
  }
  return out;
}

std::string uuid_of(std::string_view hex32) {
  if (hex32.size() != 32) return std::string(hex32);
  return fmt::format("{}-{}-{}-{}-{}", hex32.substr(0, 8), hex32.substr(8, 4), hex32.substr(12, 4), hex32.substr(16, 4),
                     hex32.substr(20));
}

std::optional<WallTime> parse_rfc3339(std::string_view text) {
  // YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)
  if (text.size() < 20 || text[4] != '-' || text[7] != '-' || (text[10] != 'T' && text[10] != 't' && text[10] != ' ') ||
      text[13] != ':' || text[16] != ':') {
    return std::nullopt;
  }
  int year = digits(text, 0, 4), month = digits(text, 5, 2), day = digits(text, 8, 2);
  int hour = digits(text, 11, 2), minute = digits(text, 14, 2), second = digits(text, 17, 2);
  if (year < 0 || month < 1 || month > 12 || day < 1 || day > 31 || hour < 0 || hour > 23 || minute < 0 ||
      minute > 59 || second < 0 || second > 60) {
    return std::nullopt;
  }
  size_t at = 19;
  int64_t nanos = 0;
  if (at < text.size() && text[at] == '.') {
    ++at;
    int64_t scale = 100'000'000;
    size_t first = at;
    while (at < text.size() && std::isdigit(static_cast<unsigned char>(text[at]))) {
      nanos += (text[at] - '0') * scale;
      scale /= 10;
      ++at;
    }
    if (at == first) return std::nullopt;
  }
  int offset_minutes = 0;
  if (at < text.size() && (text[at] == 'Z' || text[at] == 'z')) {
    ++at;
  } else if (at + 6 == text.size() && (text[at] == '+' || text[at] == '-') && text[at + 3] == ':') {
    int offset_hours = digits(text, at + 1, 2), offset_mins = digits(text, at + 4, 2);
    if (offset_hours < 0 || offset_hours > 23 || offset_mins < 0 || offset_mins > 59) return std::nullopt;
    offset_minutes = (offset_hours * 60 + offset_mins) * (text[at] == '-' ? -1 : 1);
    at += 6;
  } else {
    return std::nullopt;
  }
  if (at != text.size()) return std::nullopt;
  std::tm parts{};
  parts.tm_year = year - 1900;
  parts.tm_mon = month - 1;
  parts.tm_mday = day;
  parts.tm_hour = hour;
  parts.tm_min = minute;
  parts.tm_sec = second;
  time_t seconds = timegm(&parts);
  return WallTime(std::chrono::seconds(seconds) - std::chrono::minutes(offset_minutes)) +
         std::chrono::duration_cast<WallTime::duration>(std::chrono::nanoseconds(nanos));
}

json metrics_body(const std::vector<Metric>& metrics) {
  json points = json::array();
  for (const auto& metric : metrics) {
    json labels = json::object();
    for (const auto& [name, value] : metric.labels) labels[name] = value;
    points.push_back({{"name", metric.name},
                      {"labels", labels},
                      {"value", metric.value},
                      {"timestamp", format_rfc3339(metric.time)}});
  }
  return json{{"metrics", std::move(points)}};
}

json generation_body(const Generation& generation) {
  std::string trace_id = uuid_of(generation.trace_id);
  double latency = std::chrono::duration<double>(generation.end - generation.start).count();
  json trace = {{"id", trace_id},          {"timestamp", format_rfc3339(generation.start)},
                {"name", generation.name}, {"tags", json::array({"gateway"})},
                {"latency", latency},      {"metadata", {{"request_id", generation.request_id}}}};
  if (!generation.user_id.empty()) trace["userId"] = generation.user_id;
  json metadata = {{"deployment", generation.deployment},
                   {"replica", generation.replica},
                   {"status", generation.status},
                   {"stream", generation.stream},
                   {"request_id", generation.request_id}};
  if (!generation.error.empty()) metadata["error"] = generation.error;
  json observation = {{"id", uuid_of(generation.observation_id)},
                      {"traceId", trace_id},
                      {"type", "GENERATION"},
                      {"name", generation.name},
                      {"model", generation.model},
                      {"startTime", format_rfc3339(generation.start)},
                      {"endTime", format_rfc3339(generation.end)},
                      {"promptTokens", generation.prompt_tokens},
                      {"completionTokens", generation.completion_tokens},
                      {"totalTokens", generation.prompt_tokens + generation.completion_tokens},
                      {"latency", latency},
                      {"level", generation.status >= 400 ? "ERROR" : "DEFAULT"},
                      {"metadata", std::move(metadata)}};
  if (generation.ttft_s >= 0) {
    observation["timeToFirstToken"] = generation.ttft_s;
    observation["completionStartTime"] =
        format_rfc3339(generation.start + std::chrono::duration_cast<WallTime::duration>(
                                              std::chrono::duration<double>(generation.ttft_s)));
  }
  if (!generation.error.empty()) observation["statusMessage"] = generation.error;
  if (generation.input) {
    trace["input"] = *generation.input;
    observation["input"] = *generation.input;
  }
  if (generation.output) {
    trace["output"] = *generation.output;
    observation["output"] = *generation.output;
  }
  return json{{"trace", std::move(trace)}, {"observations", json::array({std::move(observation)})}};
}

std::string TraceParent::format() const {
  return fmt::format("00-{}-{}-{:02x}", trace_id, span_id, flags);
}

std::optional<TraceParent> TraceParent::parse(std::string_view header) {
  // version "-" trace-id "-" parent-id "-" flags; a later version may append "-" fields.
  while (!header.empty() && (header.front() == ' ' || header.front() == '\t')) header.remove_prefix(1);
  while (!header.empty() && (header.back() == ' ' || header.back() == '\t')) header.remove_suffix(1);
  if (header.size() < 55 || header[2] != '-' || header[35] != '-' || header[52] != '-') return std::nullopt;
  std::string_view version = header.substr(0, 2), trace_id = header.substr(3, 32), span_id = header.substr(36, 16),
                   flags = header.substr(53, 2);
  if (!is_lower_hex(version) || version == "ff") return std::nullopt;
  if (header.size() > 55 && (version == "00" || header[55] != '-')) return std::nullopt;
  if (!is_lower_hex(trace_id) || !is_lower_hex(span_id) || !is_lower_hex(flags)) return std::nullopt;
  if (all_zero(trace_id) || all_zero(span_id)) return std::nullopt;
  TraceParent parent;
  parent.trace_id = std::string(trace_id);
  parent.span_id = std::string(span_id);
  parent.flags = static_cast<uint8_t>(std::stoi(std::string(flags), nullptr, 16));
  return parent;
}

TraceParent TraceParent::make() {
  TraceParent parent;
  do parent.trace_id = random_hex(32);
  while (all_zero(parent.trace_id));
  do parent.span_id = random_hex(16);
  while (all_zero(parent.span_id));
  parent.flags = 1;
  return parent;
}

TraceParent TraceParent::child() const {
  TraceParent next = *this;
  do next.span_id = random_hex(16);
  while (all_zero(next.span_id) || next.span_id == span_id);
  return next;
}

bool Query::operator<(const Query& other) const {
  return std::tie(name, labels, group_by) < std::tie(other.name, other.labels, other.group_by);
}

}  // namespace nebula::xtrace
