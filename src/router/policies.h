#pragma once
// The policies make_policy() builds. Each is small and lives in its own file.
#include "router/policy.h"

namespace nebula::router {

// The fewest requests in flight from this gateway; ties go round-robin.
class LeastOutstanding : public Policy {
 public:
  std::optional<size_t> choose(const RouteContext& context, std::span<const Candidate> candidates) override;
  std::string describe() const override { return "least-outstanding"; }

 private:
  size_t next_ = 0;
};

}  // namespace nebula::router
