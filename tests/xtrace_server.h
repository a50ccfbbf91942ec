#pragma once
// Test-only: an xtrace server on a free loopback port that enforces the contract Nebula reports
// to (docs/xtrace.md): bearer auth, the two ingestion schemas (metric names with their exact
// labels, RFC 3339 times, UUID trace ids, GENERATION observations), a rate limit answering 429
// with Retry-After, and scripted faults (5xx, slow answers, answers that never come). It records
// what it accepted, and serves GET /api/public/metrics/query from the points it was sent (or
// points a test put there, with the times the test chose).
#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "common/json.h"
#include "http/test_server.h"

namespace nebula::testing {

class XtraceServer {
 public:
  struct Point {
    std::string name;
    std::map<std::string, std::string> labels;
    double value = 0;
    std::string timestamp;  // as sent
  };
  struct Fault {
    int status = 0;                      // 0: none; else the status answered (429 and 503 carry Retry-After)
    int retry_after_s = 1;               // the Retry-After sent with it; < 0: none
    std::chrono::milliseconds delay{0};  // answer after this long
    bool never = false;                  // never answer (a black hole)
  };

  explicit XtraceServer(std::string token = "xt-secret");
  ~XtraceServer();

  std::string url() const { return server_.url(); }
  const std::string& token() const { return token_; }

  // The next `count` ingestion requests (of either kind) get `fault`; then the default fault.
  void fail_next(int count, Fault fault);
  // Applies to every request not taken by fail_next(): e.g. slow, or a black hole.
  void set_default_fault(Fault fault);
  // Accepted ingestion POSTs per second beyond which 429 + Retry-After is answered (0 = none).
  void set_rate_limit(int per_second, int retry_after_s = 1);
  // Adds a point GET /api/public/metrics/query can return, as if a node had sent it.
  void add_point(Point point);
  // Queries for metric `name` get exactly this answer from now on (a null answer: the points').
  void set_answer(const std::string& name, json answer);

  // What was accepted and refused.
  std::vector<Point> points() const;
  std::vector<json> traces() const;              // bodies of accepted POST /v1/l/batch
  std::map<std::string, int> trace_ids() const;  // trace id -> times accepted
  std::vector<std::string> queries() const;      // targets of accepted queries
  int refused(int status) const;                 // answers with this status
  int requests() const;                          // every request that reached a handler
  std::vector<std::string> problems() const;     // why requests were refused with 400/401

 private:
  std::optional<http::Response> check_auth(const http::Request& request);
  std::optional<http::Response> take_fault(Fault& fault);
  awaitable<void> delay(Fault fault);
  http::Response metrics_batch(const http::Request& request);
  http::Response trace_batch(const http::Request& request);
  http::Response query(const http::Request& request);
  http::Response refuse(int status, const std::string& message);

  std::string token_;
  mutable std::mutex mutex_;
  std::deque<Fault> scripted_;
  Fault default_fault_;
  int rate_limit_ = 0;
  int rate_retry_after_s_ = 1;
  std::chrono::steady_clock::time_point window_start_{};
  int window_count_ = 0;
  std::vector<Point> points_;
  std::vector<json> traces_;
  std::map<std::string, int> trace_ids_;
  std::vector<std::string> queries_;
  std::map<std::string, json> answers_;
  std::map<int, int> refused_;
  std::vector<std::string> problems_;
  int requests_ = 0;
  http::testing::ServerThread server_;
};

}  // namespace nebula::testing
