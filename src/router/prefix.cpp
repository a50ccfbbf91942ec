#include <algorithm>

#include "router/policies.h"

namespace nebula::router {

PrefixAware::PrefixAware(Settings settings, uint64_t seed, std::string spec)
    : settings_(settings), spec_(std::move(spec)), index_(settings.default_blocks) {}

std::optional<size_t> PrefixAware::choose(const RouteContext& context, std::span<const Candidate> candidates) {
  if (candidates.empty()) return std::nullopt;
  int fewest = candidates[0].outstanding, most = candidates[0].outstanding;
  for (const auto& candidate : candidates) {
    index_.set_capacity(candidate.replica, candidate.engine.kv_capacity_tokens);
    fewest = std::min(fewest, candidate.outstanding);
    most = std::max(most, candidate.outstanding);
  }
  bool imbalanced = most - fewest > settings_.balance_abs && most > settings_.balance_rel * fewest;
  if (imbalanced || context.prefix_hashes.empty()) return fallback_.choose(context, candidates);
  // The longest match; among equals, the one with fewer requests in flight, then the first.
  size_t best = 0, best_match = 0;
  for (size_t index = 0; index < candidates.size(); ++index) {
    size_t matched = index_.match(candidates[index].replica, context.prefix_hashes);
    if (matched > best_match ||
        (matched == best_match && candidates[index].outstanding < candidates[best].outstanding)) {
      best = index;
      best_match = matched;
    }
  }
  double ratio = static_cast<double>(best_match) / static_cast<double>(context.prefix_hashes.size());
  if (best_match > 0 && ratio > settings_.threshold) return best;
  return fallback_.choose(context, candidates);
}

void PrefixAware::routed(const RouteContext& context, const std::string& replica) {
  index_.insert(replica, context.prefix_hashes);
}

}  // namespace nebula::router
