#pragma once
// The gateway's Prometheus text turned into the figures `nebula top` shows per deployment:
// requests and tokens per second from the deltas of two scrapes, TTFT p50 from the histogram.
// Pure functions of their inputs; no I/O.
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace nebula::tui {

// One sample of the text exposition format: `name{label="value",...} number`.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses Prometheus text. Comments, blank lines and lines that are not a well-formed sample
// (hostile or truncated input) are skipped; a sample with a NaN or infinite value is skipped too.
std::vector<Sample> parse_prometheus(std::string_view text);

// The gateway's series for one deployment (label `model`) at one scrape.
struct GatewayCounters {
  double requests = 0;           // nebula_requests_total, summed over key and status
  double prompt_tokens = 0;      // nebula_prompt_tokens_total
  double completion_tokens = 0;  // nebula_completion_tokens_total
  double queue_depth = 0;        // nebula_queue_depth (a gauge)
  double in_flight = 0;          // nebula_requests_in_flight (a gauge)
  // nebula_time_to_first_token_seconds_bucket: (upper bound in seconds, cumulative count), sorted
  // by bound; +Inf is the last when present.
  std::vector<std::pair<double, double>> ttft_buckets;
};

// Groups the samples by deployment.
std::map<std::string, GatewayCounters> gateway_counters(const std::vector<Sample>& samples);

// What a deployment's row shows.
struct DeploymentFigures {
  double requests_per_s = 0;
  double tokens_per_s = 0;  // completion tokens: what the engines generated
  std::optional<double> ttft_p50_s;
  double queue_depth = 0;
  double in_flight = 0;
};

// Figures over `seconds` between two scrapes. `before` is null for the first scrape (rates 0). A
// counter lower than before (the server restarted) counts from zero. TTFT p50 is taken over the
// requests of the interval; when none streamed in it, over everything since the server started.
DeploymentFigures figures(const GatewayCounters* before, const GatewayCounters& after, double seconds);

// The q-quantile (0..1) of cumulative histogram buckets, interpolated linearly inside the bucket
// as Prometheus' histogram_quantile() does (the first bucket from 0; a quantile in the +Inf
// bucket is the highest finite bound). nullopt when there are no observations.
std::optional<double> histogram_quantile(double q, const std::vector<std::pair<double, double>>& buckets);

}  // namespace nebula::tui
