#include "router/policies.h"

namespace nebula::router {

std::optional<size_t> PowerOfTwo::choose(const RouteContext&, std::span<const Candidate> candidates) {
  if (candidates.empty()) return std::nullopt;
  if (candidates.size() == 1) return 0;
  size_t first = random_.below(candidates.size());
  // The second is any other candidate, uniformly.
  size_t second = random_.below(candidates.size() - 1);
  if (second >= first) ++second;
  const auto& a = candidates[first];
  const auto& b = candidates[second];
  if (a.outstanding != b.outstanding) return a.outstanding < b.outstanding ? first : second;
  if (a.inflight_tokens != b.inflight_tokens) return a.inflight_tokens < b.inflight_tokens ? first : second;
  return first;
}

}  // namespace nebula::router
