#pragma once
// Candidates for the policies' tests, written as {replica, outstanding} pairs.
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "router/policy.h"

namespace nebula::router::testing {

inline std::vector<Candidate> candidates(std::initializer_list<std::pair<std::string, int>> replicas) {
  std::vector<Candidate> result;
  for (const auto& [name, outstanding] : replicas) {
    Candidate candidate;
    candidate.replica = name;
    candidate.outstanding = outstanding;
    candidate.capacity = 64;
    result.push_back(candidate);
  }
  return result;
}

// The replica a policy chooses ("" when it chooses none).
inline std::string chosen(Policy& policy, const RouteContext& context, const std::vector<Candidate>& from) {
  auto index = policy.choose(context, from);
  return index ? from.at(*index).replica : "";
}

// Chooses, then tells the policy the request went there, as the gateway does.
inline std::string route(Policy& policy, const RouteContext& context, const std::vector<Candidate>& from) {
  std::string replica = chosen(policy, context, from);
  if (!replica.empty()) policy.routed(context, replica);
  return replica;
}

}  // namespace nebula::router::testing
