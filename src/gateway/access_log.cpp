// The end of every inference request: the limiter's correction, usage, metrics and one access
// log line.
#include <fmt/compile.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "gateway/call.h"
#include "gateway/request_json.h"
#include "xtrace/xtrace.h"

namespace nebula::gateway {

using SteadyClock = std::chrono::steady_clock;

namespace {
int64_t cached_tokens(const json& usage) {
  if (!usage.is_object()) return 0;
  auto details = usage.find("prompt_tokens_details");
  if (details == usage.end() || !details->is_object()) return 0;
  return usage_tokens(*details, "cached_tokens");
}

constexpr size_t kAccessLogBatch = 64 * 1024;

// Appends format_rfc3339(time), for the access log: the date and time up to the second are
// formatted once per second instead of once per line.
void append_log_time(std::string& out, std::chrono::system_clock::time_point time) {
  thread_local int64_t cached_second = -1;
  thread_local std::string cached_prefix;  // "2026-11-23T23:02:14."
  int64_t ms = to_unix_ms(time);
  int64_t second = ms / 1000;
  if (second != cached_second) {
    cached_prefix = format_rfc3339(std::chrono::system_clock::time_point(std::chrono::seconds(second)));
    cached_prefix.resize(cached_prefix.size() - 4);  // "000Z"
    cached_second = second;
  }
  int millis = static_cast<int>(ms % 1000);
  out.append(cached_prefix);
  out.push_back(static_cast<char>('0' + millis / 100));
  out.push_back(static_cast<char>('0' + millis / 10 % 10));
  out.push_back(static_cast<char>('0' + millis % 10));
  out.push_back('Z');
}

// Appends a JSON string literal, escaped by hand for the access log (see finish()): quote,
// backslash and control characters escaped, and every byte above 0x7f as \u00XX, so a client's id
// in any encoding gives a valid line (not a faithful one: a UTF-8 character shows as its bytes).
void append_json_quoted(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c < 0x20 || c > 0x7e) {
      out.append("\\u00");
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  out.push_back('"');
}

void append_number(std::string& out, int64_t value) {
  fmt::format_int text(value);
  out.append(text.data(), text.size());
}

// A millisecond figure with microsecond precision: "12.345".
void append_ms(std::string& out, double seconds) {
  char text[32];
  auto end = fmt::format_to_n(text, sizeof text, FMT_COMPILE("{:.3f}"), seconds * 1000);
  out.append(text, end.size);
}
}  // namespace

void Gateway::finish(Call& call, int status) {
  auto now = SteadyClock::now();
  int64_t prompt = usage_tokens(call.usage, "prompt_tokens");
  int64_t completion = usage_tokens(call.usage, "completion_tokens");
  int64_t cached = cached_tokens(call.usage);
  if (call.usage.is_null() && call.relayed_chunks > 0) completion = call.relayed_chunks;  // a cut stream
  if (call.admitted && call.key) {
    limiter_->finish(call.key_id, call.ticket, call.estimated_tokens, prompt + completion, now);
  }
  if (call.admitted) {
    usage_.record(call.key_id, call.model, {prompt, completion, cached, status >= 400},
                  std::chrono::system_clock::now());
  }
  double duration = std::chrono::duration<double>(now - call.start).count();
  if (options_.xtrace) report_trace(call, status, prompt, completion);
  if (!call.model.empty()) {
    metrics_.request_done({call.model, call.key_id, status, call.ttft_s, duration, prompt, completion});
  }
  if (access_log_) {
    // Appended by hand: a json object per line, a json value per string to escape it, or even a
    // runtime format string cost more than the rest of the bookkeeping. The request id comes from
    // the client, hence the escaping.
    std::lock_guard lock(access_mutex_);
    std::string& out = access_pending_;
    out.append("{\"time\":\"");
    append_log_time(out, std::chrono::system_clock::now());
    out.append("\",\"id\":");
    append_json_quoted(out, call.request_id);
    out.append(",\"traceparent\":\"");
    out.append(call.traceparent);  // made by the gateway: hex digits and dashes only
    out.append("\",\"key\":");
    append_json_quoted(out, call.key_id);
    out.append(",\"model\":");
    append_json_quoted(out, call.model);
    out.append(",\"replica\":");
    append_json_quoted(out, call.replica);
    out.append(",\"status\":");
    append_number(out, status);
    out.append(call.stream ? ",\"stream\":true" : ",\"stream\":false");
    out.append(",\"prompt_tokens\":");
    append_number(out, prompt);
    out.append(",\"completion_tokens\":");
    append_number(out, completion);
    out.append(",\"cached_tokens\":");
    append_number(out, cached);
    out.append(",\"ttft_ms\":");
    if (call.ttft_s < 0) {
      out.append("null");
    } else {
      append_ms(out, call.ttft_s);
    }
    out.append(",\"duration_ms\":");
    append_ms(out, duration);
    out.append("}\n");
    if (out.size() < kAccessLogBatch) return;
  }
  if (access_log_) flush_access_log();
}

void Gateway::report_trace(const Call& call, int status, int64_t prompt, int64_t completion) {
  xtrace::Generation generation;
  generation.trace_id = call.trace_id;
  generation.name = call.path;
  generation.user_id = call.key ? (call.key->display_name.empty() ? call.key_id : call.key->display_name) : call.key_id;
  generation.request_id = call.request_id;
  generation.model = call.model;
  generation.deployment = call.model;  // a deployment is asked for by its name
  generation.replica = call.replica;
  generation.status = status;
  if (status >= 400) generation.error = status == 499 ? "client closed the request" : fmt::format("HTTP {}", status);
  generation.start = call.start_wall;
  generation.end = call.start_wall +
                   std::chrono::duration_cast<std::chrono::system_clock::duration>(SteadyClock::now() - call.start);
  generation.ttft_s = call.ttft_s;
  generation.prompt_tokens = prompt;
  generation.completion_tokens = completion;
  generation.stream = call.stream;
  if (call.capture_content) {
    generation.input = call.input;
    generation.output = call.output_text;
  }
  options_.xtrace->report(std::move(generation));
}

void Gateway::flush_access_log() {
  if (!access_log_) return;
  std::string lines;
  {
    std::lock_guard lock(access_mutex_);
    lines.swap(access_pending_);
  }
  if (!lines.empty()) {
    lines.pop_back();  // the logger ends the last line
    access_log_->info(lines);
  }
  access_log_->flush();
}

}  // namespace nebula::gateway
