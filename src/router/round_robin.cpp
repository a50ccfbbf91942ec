#include "router/policies.h"

namespace nebula::router {

std::optional<size_t> RoundRobin::choose(const RouteContext&, std::span<const Candidate> candidates) {
  if (candidates.empty()) return std::nullopt;
  return next_++ % candidates.size();
}

}  // namespace nebula::router
