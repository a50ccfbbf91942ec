#include <algorithm>
#include <cmath>

#include "router/policies.h"

namespace nebula::router {

ScoredPolicy::ScoredPolicy(std::string spec, std::vector<std::unique_ptr<Filter>> filters,
                           std::vector<Weighted> scorers, uint64_t seed)
    : spec_(std::move(spec)),
      filters_(std::move(filters)),
      scorers_(std::move(scorers)),
      next_tie_(Random(seed).next()) {}

std::optional<size_t> ScoredPolicy::choose(const RouteContext& context, std::span<const Candidate> candidates) {
  if (candidates.empty()) return std::nullopt;
  // Filters: indices into `candidates` that remain.
  std::vector<size_t> kept(candidates.size());
  for (size_t index = 0; index < kept.size(); ++index) kept[index] = index;
  std::vector<Candidate> remaining;
  for (const auto& filter : filters_) {
    remaining.clear();
    for (size_t index : kept) remaining.push_back(candidates[index]);
    filter->prepare(context, remaining);
    std::vector<size_t> narrowed;
    for (size_t index : kept) {
      if (filter->keep(context, candidates[index])) narrowed.push_back(index);
    }
    if (!narrowed.empty()) kept = std::move(narrowed);
  }
  std::vector<Candidate> copies;
  std::span<const Candidate> scored = candidates;
  if (kept.size() != candidates.size()) {
    for (size_t index : kept) copies.push_back(candidates[index]);
    scored = copies;
  }
  std::vector<double> totals(scored.size(), 0.0), scores(scored.size());
  for (auto& [scorer, weight] : scorers_) {
    if (weight <= 0) continue;
    std::fill(scores.begin(), scores.end(), 0.0);
    scorer->score(context, scored, scores);
    // A scorer fed hostile figures (NaN, infinities) must not decide anything.
    for (size_t index = 0; index < scored.size(); ++index) {
      if (std::isfinite(scores[index])) totals[index] += weight * std::clamp(scores[index], 0.0, 1.0);
    }
  }
  double best = *std::max_element(totals.begin(), totals.end());
  // Sums of doubles: totals this close are a tie.
  constexpr double kTie = 1e-9;
  std::vector<size_t> ties;
  for (size_t index = 0; index < totals.size(); ++index) {
    if (totals[index] >= best - kTie) ties.push_back(index);
  }
  size_t pick = ties.size() == 1 ? ties[0] : ties[next_tie_++ % ties.size()];
  return kept[pick];
}

void ScoredPolicy::routed(const RouteContext& context, const std::string& replica) {
  for (auto& weighted : scorers_) weighted.scorer->routed(context, replica);
}

void ScoredPolicy::removed(const std::string& replica) {
  for (auto& weighted : scorers_) weighted.scorer->removed(replica);
}

}  // namespace nebula::router
