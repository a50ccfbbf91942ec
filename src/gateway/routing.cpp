// Replica choice through the Policy seam: the endpoint table filters the deployment's replicas
// into candidates, the deployment's Policy chooses one, and the gateway takes its slot. Policies
// are made per deployment from its spec.routing and called on the I/O thread only.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "gateway/call.h"

namespace nebula::gateway {

namespace {
// FNV-1a: the policy's seed, the same for a deployment name on every run and every machine.
uint64_t seed_of(std::string_view deployment) {
  uint64_t hash = 1469598103934665603ull;
  for (char c : deployment) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ull;
  }
  return hash;
}
}  // namespace

router::Policy& Gateway::policy_for(const std::string& deployment) {
  std::string spec = table_.routing(deployment);
  auto& entry = policies_[deployment];
  if (entry.policy && entry.spec == spec) return *entry.policy;
  router::PolicyOptions policy_options;
  policy_options.seed = seed_of(deployment);
  // Engine figures older than a few scrapes are stale.
  if (options_.load_scrape_interval.count() > 0) {
    policy_options.load_freshness = std::max(policy_options.load_freshness, 3 * options_.load_scrape_interval);
  }
  auto made =
      options_.make_policy ? options_.make_policy(spec, policy_options) : router::make_policy(spec, policy_options);
  if (!made) {
    // Logged once per spec: the entry keeps the refused spec, so the next request finds it.
    spdlog::error("gateway: deployment {} asks for routing `{}`, which is refused ({}); using the default", deployment,
                  spec, made.error().message);
    made = router::make_policy("", policy_options);
    if (!made) throw std::logic_error("make_policy refuses the default policy: " + made.error().message);
  }
  if (entry.policy) spdlog::info("gateway: deployment {} now routes with `{}`", deployment, (*made)->describe());
  entry.spec = std::move(spec);
  entry.policy = std::move(*made);
  return *entry.policy;
}

std::shared_ptr<router::Endpoint> Gateway::choose(const std::string& deployment, router::RouteContext& context,
                                                  const std::set<std::string>& exclude) {
  context.now = std::chrono::steady_clock::now();
  auto found = table_.candidates(deployment, exclude, options_.replica_capacity, context.now);
  if (found.candidates.empty()) return nullptr;
  router::Policy& policy = policy_for(deployment);
  auto chosen = policy.choose(context, found.candidates);
  if (!chosen || *chosen >= found.candidates.size()) {
    // The Policy contract is broken: a bug in the policy, not the request's fault.
    spdlog::error("gateway: routing policy `{}` of {} chose {} of {} candidates; taking the first", policy.describe(),
                  deployment, chosen ? std::to_string(*chosen) : "none", found.candidates.size());
    chosen = 0;
  }
  auto& endpoint = found.endpoints[*chosen];
  endpoint->outstanding += 1;
  endpoint->inflight_tokens += context.prompt_tokens + context.output_tokens;
  policy.routed(context, endpoint->replica);
  return endpoint;
}

void Gateway::forget_replica(const std::string& deployment, const std::string& replica) {
  auto entry = policies_.find(deployment);
  if (entry != policies_.end() && entry->second.policy) entry->second.policy->removed(replica);
}

void Gateway::forget_deployment(const std::string& deployment) {
  if (!table_.has_deployment(deployment)) policies_.erase(deployment);
}

}  // namespace nebula::gateway
