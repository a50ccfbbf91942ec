#pragma once
// The xtrace client: what Nebula reports to xtrace (node metrics, one trace per gateway request)
// and the load signals it may read back (docs/xtrace.md has the contract).
//
// A Client never slows its callers: report_*() append to bounded in-memory queues under a short
// lock and return (a full queue drops its oldest entry and counts it); sending, retrying and
// querying run on the Client's own thread, paced by a token bucket, with backoff and jitter
// honouring Retry-After on 429 and 5xx. Readers of signals get the last answers from a cache
// and never wait for xtrace.
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "common/result.h"

namespace nebula::xtrace {

using WallTime = std::chrono::system_clock::time_point;

struct Options {
  std::string url;    // "http://127.0.0.1:8742" (--xtrace); "" = off
  std::string token;  // bearer token (--xtrace-token); "" = none sent
  // Metric points and traces waiting to be sent, each; beyond it the oldest is dropped.
  size_t max_queue = 4096;
  // Metric points per POST /v1/metrics/batch.
  size_t max_batch = 500;
  // How often the queues are looked at when there is nothing to send.
  std::chrono::milliseconds flush_interval{250};
  // POSTs per second, over both kinds (xtrace answers 429 when its own queue is full).
  double max_sends_per_second = 200;
  // Traces in flight at once: /v1/l/batch takes one trace per POST, so one at a time would cap
  // a gateway at one trace per round trip.
  int trace_senders = 4;
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds timeout{10'000};
  // Tries per batch (the first included) before it is dropped and counted.
  int max_attempts = 4;
  std::chrono::milliseconds backoff_initial{500};
  std::chrono::milliseconds backoff_max{30'000};
  uint64_t seed = 0;  // jitter; 0 = random
  // When the client is destroyed (the process stops): how long what is still queued or in flight
  // may take to be sent before the rest is dropped. 0 = drop at once.
  std::chrono::milliseconds shutdown_flush{2'000};
};

// One point of POST /v1/metrics/batch.
struct Metric {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;
  double value = 0;
  WallTime time;
};

// One gateway request: a trace and its GENERATION observation (POST /v1/l/batch).
struct Generation {
  std::string trace_id;        // 32 lowercase hex digits (the W3C trace id)
  std::string observation_id;  // 32 lowercase hex digits; "" = a new one
  std::string name;            // the request path
  std::string user_id;         // the key's owner, "" when none
  std::string request_id;
  std::string model;
  std::string deployment;
  std::string replica;
  int status = 0;
  std::string error;  // "" when the request succeeded
  WallTime start;
  WallTime end;
  double ttft_s = -1;  // < 0: no first token seen
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  bool stream = false;
  std::optional<json> input;   // only with --xtrace-content
  std::optional<json> output;  // only with --xtrace-content
};

// The body of POST /v1/l/batch for a Generation: trace ids as UUIDs (8-4-4-4-12).
json generation_body(const Generation& generation);
// The body of POST /v1/metrics/batch.
json metrics_body(const std::vector<Metric>& metrics);
// `digits` random lowercase hex digits (ids, not secrets).
std::string random_hex(size_t count);
// 32 hex digits as a UUID: "0af7651916cd43dd8448eb211c80319c" -> "0af76519-16cd-43dd-8448-eb211c80319c".
std::string uuid_of(std::string_view hex32);
// RFC 3339 (any offset, optional fraction) to a time; nullopt when malformed.
std::optional<WallTime> parse_rfc3339(std::string_view text);

// What a consumer of signals may ask and how (the seed's table).
struct SignalLimits {
  double max_qps = 10;
  std::chrono::milliseconds freshness{15'000};  // judged by meta.latest_ts and the series' last point
  std::chrono::milliseconds cache_ttl{30'000};  // a last answer kept through failures this long
  std::chrono::milliseconds refresh{2'000};     // how often a watched query is asked again
  std::chrono::milliseconds timeout{10'000};    // one query, connection included
};
extern const SignalLimits kRouterLimits;     // 10 QPS, 15 s fresh, 30 s cache
extern const SignalLimits kSchedulerLimits;  // 5 QPS, 30 s fresh, 30 s cache

// A query: GET /api/public/metrics/query?name=NAME&labels=LABELS&group_by=GROUP_BY&agg=last.
struct Query {
  std::string name;
  std::map<std::string, std::string> labels;
  std::string group_by;
  bool operator<(const Query& other) const;
};

// Counters for /metrics.
struct Stats {
  struct Kind {
    uint64_t sent = 0;            // items xtrace accepted
    uint64_t batches = 0;         // POSTs xtrace accepted
    uint64_t retries = 0;         // POSTs tried again after a failure
    uint64_t dropped_full = 0;    // items dropped as the oldest of a full queue
    uint64_t dropped_failed = 0;  // items given up on (refused, or every try failed)
    uint64_t queued = 0;
  };
  Kind metrics, traces;
  uint64_t queries_ok = 0, queries_failed = 0, queries_throttled = 0;
};

class Client {
 public:
  // Starts the client's thread. consumers: a name ("router", "scheduler") -> its limits.
  explicit Client(Options options, std::map<std::string, SignalLimits> consumers = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const Options& options() const { return options_; }

  // Thread-safe, never blocks on I/O.
  void report_metrics(std::vector<Metric> metrics);
  void report(Generation generation);

  // Signals. watch() asks for `query` every refresh of `consumer`'s limits from now on (a query
  // not read for a minute is forgotten); value() is the last answer's value for the series whose
  // `group_by` label is `group`, or nullopt when there is none or it is stale at `now`.
  // Thread-safe, never blocks on I/O.
  void watch(const std::string& consumer, const Query& query);
  std::optional<double> value(const std::string& consumer, const Query& query, const std::string& group,
                              WallTime now) const;

  Stats stats() const;
  // nebula_xtrace_* in Prometheus text format.
  std::string render_metrics() const;

 private:
  struct Impl;
  Options options_;
  std::shared_ptr<Impl> impl_;
};

// ---- W3C Trace Context (https://www.w3.org/TR/trace-context/) --------------------------------

struct TraceParent {
  std::string trace_id;  // 32 lowercase hex, not all zero
  std::string span_id;   // 16 lowercase hex, not all zero
  uint8_t flags = 0;
  // "00-<trace_id>-<span_id>-<flags>"
  std::string format() const;
  // The header as sent by a client; nullopt when malformed (version ff, wrong lengths, upper
  // case, zero ids, a version 00 header with more fields).
  static std::optional<TraceParent> parse(std::string_view header);
  // A new trace, sampled.
  static TraceParent make();
  // The same trace, a new span id (what the gateway sends on to an engine).
  TraceParent child() const;
};

}  // namespace nebula::xtrace
