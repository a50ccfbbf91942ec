#include "router/policy.h"

#include <fmt/format.h>

#include "router/policies.h"

namespace nebula::router {

std::string policy_names() {
  return "least-outstanding";
}

Result<std::unique_ptr<Policy>> make_policy(std::string_view spec, const PolicyOptions& options) {
  if (spec.empty() || spec == "least-outstanding") return std::unique_ptr<Policy>(new LeastOutstanding());
  return Error{ErrorCode::InvalidArgument,
               fmt::format("unknown routing policy `{}` (expected one of: {})", spec, policy_names())};
}

}  // namespace nebula::router
