#pragma once
// Prometheus text exposition format (version 0.0.4), as engines serve it on /metrics.
#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace nebula::engines {

struct Sample {
  std::string name;  // with its _total/_bucket/... suffix, as written
  std::map<std::string, std::string> labels;
  double value = 0;  // may be NaN or +-Inf
};

class Metrics {
 public:
  // Never fails: comments and blank lines are skipped, malformed lines counted in bad_lines().
  static Metrics parse(std::string_view text);

  const std::vector<Sample>& samples() const { return samples_; }
  size_t bad_lines() const { return bad_lines_; }
  bool has(std::string_view name) const;
  // Over every label set of the metric, NaN samples left out; nullopt when there is none left.
  std::optional<double> sum(std::string_view name) const;
  std::optional<double> mean(std::string_view name) const;

 private:
  std::vector<Sample> samples_;
  size_t bad_lines_ = 0;
};

}  // namespace nebula::engines
