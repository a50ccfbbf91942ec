#pragma once
// Gateway metrics in Prometheus text format. Hand-written: Debian has no prometheus-cpp package.
// Thread-safe.
#include <array>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

namespace nebula::gateway {

class Metrics {
 public:
  struct Completed {
    std::string model;
    std::string key;  // key id or "anonymous"
    int status = 0;
    double ttft_s = -1;  // < 0: no first token (errors, non-streamed)
    double e2e_s = 0;
    int64_t prompt_tokens = 0;
    int64_t completion_tokens = 0;
  };
  void request_done(const Completed& request);
  void inter_token(const std::string& model, double seconds);
  void upstream_error(const std::string& model);
  void in_flight(const std::string& model, int delta);
  void queue_depth(const std::string& model, int delta);
  std::string render() const;

 private:
  static constexpr std::array<double, 14> kBuckets = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                      0.5,   1,     2.5,  5,     10,   30,  60};
  struct Histogram {
    std::array<int64_t, kBuckets.size()> counts{};
    int64_t count = 0;
    double sum = 0;
    void observe(double value);
  };
  mutable std::mutex mutex_;
  std::map<std::tuple<std::string, std::string, int>, int64_t> requests_;  // model, key, status
  std::map<std::string, Histogram> ttft_, itl_, e2e_;
  std::map<std::string, int64_t> prompt_tokens_, completion_tokens_, upstream_errors_, in_flight_, queue_depth_;
};

}  // namespace nebula::gateway
