#include <algorithm>
#include <cmath>

#include "router/policies.h"

namespace nebula::router {

bool fresh(const EngineLoad& load, SteadyClock::time_point now, std::chrono::milliseconds freshness) {
  if (load.at == SteadyClock::time_point{}) return false;
  return now - load.at <= freshness;
}

void min_max_scores(std::span<const double> values, std::span<double> scores) {
  if (values.empty()) return;
  auto [low, high] = std::minmax_element(values.begin(), values.end());
  double range = *high - *low;
  for (size_t index = 0; index < values.size(); ++index) {
    scores[index] = range > 0 ? (*high - values[index]) / range : 1.0;
  }
}

void SentSinceScrape::routed(const RouteContext& context, const std::string& replica) {
  auto& window = sent_[replica];
  int64_t tokens = std::max<int64_t>(context.prompt_tokens, 0) + std::max<int64_t>(context.output_tokens, 0);
  window.sent.push_back({context.now, tokens});
  window.tokens += tokens;
  if (window.sent.size() > kMaxRemembered) {
    window.tokens -= window.sent.front().tokens;
    window.sent.pop_front();
  }
}

std::pair<int, int64_t> SentSinceScrape::after(const std::string& replica, SteadyClock::time_point since) {
  auto it = sent_.find(replica);
  if (it == sent_.end()) return {0, 0};
  auto& window = it->second;
  // What the engine had seen when it was read is in its figures already.
  while (!window.sent.empty() && window.sent.front().at <= since) {
    window.tokens -= window.sent.front().tokens;
    window.sent.pop_front();
  }
  return {static_cast<int>(window.sent.size()), window.tokens};
}

bool KvFullFilter::keep(const RouteContext& context, const Candidate& candidate) const {
  const auto& engine = candidate.engine;
  if (!fresh(engine, context.now, freshness_) || engine.kv_usage < 0) return true;
  return engine.kv_usage < kv_max_;
}

void LoadBoundFilter::prepare(const RouteContext&, std::span<const Candidate> candidates) {
  capacity_ = 0;
  if (bound_ <= 0 || candidates.empty()) return;
  double in_flight = 0;
  for (const auto& candidate : candidates) in_flight += std::max(candidate.outstanding, 0);
  capacity_ = std::ceil(bound_ * (in_flight + 1) / static_cast<double>(candidates.size()));
}

bool LoadBoundFilter::keep(const RouteContext&, const Candidate& candidate) const {
  return capacity_ <= 0 || candidate.outstanding < capacity_;
}

void PrefixScorer::score(const RouteContext& context, std::span<const Candidate> candidates, std::span<double> scores) {
  for (size_t index = 0; index < candidates.size(); ++index) {
    index_.set_capacity(candidates[index].replica, candidates[index].engine.kv_capacity_tokens);
    if (context.prefix_hashes.empty()) {
      scores[index] = 0;
      continue;
    }
    scores[index] = static_cast<double>(index_.match(candidates[index].replica, context.prefix_hashes)) /
                    static_cast<double>(context.prefix_hashes.size());
  }
}

void PrefixScorer::routed(const RouteContext& context, const std::string& replica) {
  index_.insert(replica, context.prefix_hashes);
}

void QueueScorer::score(const RouteContext& context, std::span<const Candidate> candidates, std::span<double> scores) {
  bool engine_figures = std::all_of(candidates.begin(), candidates.end(), [&](const Candidate& candidate) {
    return fresh(candidate.engine, context.now, freshness_) && candidate.engine.waiting >= 0 &&
           std::isfinite(candidate.engine.waiting);
  });
  std::vector<double> queues(candidates.size());
  for (size_t index = 0; index < candidates.size(); ++index) {
    const auto& candidate = candidates[index];
    if (engine_figures) {
      queues[index] = candidate.engine.waiting + sent_.after(candidate.replica, candidate.engine.at).first;
    } else {
      queues[index] = std::max(candidate.outstanding, 0);
    }
  }
  min_max_scores(queues, scores);
}

void KvScorer::score(const RouteContext& context, std::span<const Candidate> candidates, std::span<double> scores) {
  bool engine_figures = std::all_of(candidates.begin(), candidates.end(), [&](const Candidate& candidate) {
    return fresh(candidate.engine, context.now, freshness_) && candidate.engine.kv_usage >= 0 &&
           std::isfinite(candidate.engine.kv_usage);
  });
  bool capacities = std::all_of(candidates.begin(), candidates.end(),
                                [](const Candidate& candidate) { return candidate.engine.kv_capacity_tokens > 0; });
  if (engine_figures) {
    for (size_t index = 0; index < candidates.size(); ++index) {
      const auto& engine = candidates[index].engine;
      double usage = engine.kv_usage;
      if (engine.kv_capacity_tokens > 0) {
        usage += static_cast<double>(sent_.after(candidates[index].replica, engine.at).second) /
                 static_cast<double>(engine.kv_capacity_tokens);
      }
      scores[index] = 1.0 - std::clamp(usage, 0.0, 1.0);
    }
    return;
  }
  if (capacities) {
    for (size_t index = 0; index < candidates.size(); ++index) {
      double usage = static_cast<double>(std::max<int64_t>(candidates[index].inflight_tokens, 0)) /
                     static_cast<double>(candidates[index].engine.kv_capacity_tokens);
      scores[index] = 1.0 - std::clamp(usage, 0.0, 1.0);
    }
    return;
  }
  std::vector<double> tokens(candidates.size());
  for (size_t index = 0; index < candidates.size(); ++index) {
    tokens[index] = static_cast<double>(std::max<int64_t>(candidates[index].inflight_tokens, 0));
  }
  min_max_scores(tokens, scores);
}

void OutstandingScorer::score(const RouteContext& context, std::span<const Candidate> candidates,
                              std::span<double> scores) {
  std::vector<double> outstanding(candidates.size());
  for (size_t index = 0; index < candidates.size(); ++index) {
    outstanding[index] = std::max(candidates[index].outstanding, 0);
  }
  min_max_scores(outstanding, scores);
}

}  // namespace nebula::router
