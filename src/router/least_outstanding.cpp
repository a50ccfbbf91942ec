#include <algorithm>

#include "router/policies.h"

namespace nebula::router {

std::optional<size_t> LeastOutstanding::choose(const RouteContext&, std::span<const Candidate> candidates) {
  if (candidates.empty()) return std::nullopt;
  int fewest = candidates[0].outstanding;
  for (const auto& candidate : candidates) fewest = std::min(fewest, candidate.outstanding);
  size_t ties = 0;
  for (const auto& candidate : candidates) ties += candidate.outstanding == fewest;
  size_t pick = next_++ % ties;
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (candidates[i].outstanding != fewest) continue;
    if (pick-- == 0) return i;
  }
  return std::nullopt;  // unreachable
}

}  // namespace nebula::router
