#include "controlplane/controlplane.h"
#include "router/policy.h"

namespace nebula::controlplane {

Status canonical_routing(api::DeploymentSpec& spec) {
  if (spec.routing.empty()) return {};
  auto policy = router::make_policy(spec.routing);
  if (!policy) return Error{ErrorCode::InvalidArgument, "spec.routing: " + policy.error().message};
  spec.routing = (*policy)->describe();
  return {};
}

}  // namespace nebula::controlplane
