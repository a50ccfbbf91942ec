#include "controlplane/modes.h"

#include <fmt/format.h>

#include <algorithm>

#include "scheduler/scheduler.h"

namespace nebula::controlplane {

namespace {

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// Whether the engine of this replica holds GPU memory now, as its agent reports it.
bool holds_vram(const api::Replica& replica) {
  const std::string& phase = replica.status.phase;
  return !replica.spec.node.empty() && phase != api::phase::kPending && phase != api::phase::kScheduled &&
         phase != api::phase::kSleeping;
}

// Each GPU's share of the replica's VRAM, keyed by (node, index).
void add_shares(const api::Replica& replica, std::map<GpuKey, int64_t>& out) {
  if (replica.spec.gpus.empty()) return;
  int64_t share = replica.spec.vram_mb / static_cast<int64_t>(replica.spec.gpus.size());
  for (int index : replica.spec.gpus) out[{replica.spec.node, index}] += share;
}

}  // namespace

bool can_sleep(const api::DeploymentSpec& spec) {
  return spec.idle_timeout_ms > 0 && (spec.on_idle == "sleep-l1" || spec.on_idle == "sleep-l2");
}

int replicas_to_restore(const api::Deployment& deployment) {
  auto label = deployment.metadata.labels.find(api::kModeReplicasLabel);
  if (label != deployment.metadata.labels.end()) {
    try {
      int count = std::stoi(label->second);
      if (count > 0) return count;
    } catch (const std::exception&) {
      // a hand-edited label: fall through to the default
    }
  }
  return deployment.spec.replicas > 0 ? deployment.spec.replicas : 1;
}

SwitchPlan plan_switch(const std::optional<api::Mode>& active, const api::Mode& target,
                       const std::vector<api::Deployment>& deployments, bool allow_sleep) {
  SwitchPlan plan;
  plan.to = target.metadata.name;
  if (active) plan.from = active->metadata.name;
  for (const auto& deployment : deployments) {
    const std::string& name = deployment.metadata.name;
    bool idle = deployment.status.idle_since_ms > 0;
    if (contains(target.deployments, name)) {
      if (deployment.spec.replicas == 0) {
        plan.start.push_back(name);
      } else if (idle) {
        plan.wake.push_back(name);
      }
      continue;
    }
    bool outgoing = active ? contains(active->deployments, name) : deployment.spec.replicas > 0;
    if (!outgoing || deployment.spec.replicas == 0) continue;
    if (allow_sleep && can_sleep(deployment.spec)) {
      plan.sleep.push_back(name);
    } else {
      plan.stop.push_back(name);
    }
  }
  return plan;
}

Status incoming_fits(const SwitchPlan& plan, std::vector<api::Node> nodes, const std::vector<api::Replica>& replicas,
                     const std::vector<api::Deployment>& deployments) {
  // The cluster as it will be: stopped deployments' replicas gone, sleeping ones no longer
  // reported by their GPUs (but still placed).
  std::map<GpuKey, int64_t> released;
  std::vector<api::Replica> remaining;
  for (const auto& replica : replicas) {
    bool stopped = contains(plan.stop, replica.spec.deployment);
    bool slept = contains(plan.sleep, replica.spec.deployment);
    if ((stopped || slept) && holds_vram(replica)) add_shares(replica, released);
    if (!stopped) remaining.push_back(replica);
  }
  for (auto& node : nodes) {
    for (auto& gpu : node.status.gpus) {
      auto it = released.find({node.metadata.name, gpu.index});
      if (it != released.end()) gpu.memory_used_mb = std::max<int64_t>(0, gpu.memory_used_mb - it->second);
    }
  }
  for (const auto& name : plan.start) {
    auto deployment = std::find_if(deployments.begin(), deployments.end(),
                                   [&](const api::Deployment& d) { return d.metadata.name == name; });
    if (deployment == deployments.end()) return make_error(ErrorCode::NotFound, "deployment '" + name + "' not found");
    api::Deployment incoming = *deployment;
    incoming.spec.replicas = replicas_to_restore(*deployment);
    auto plan_of = scheduler::simulate(incoming, nodes, remaining, deployments);
    if (!plan_of.fits) {
      return make_error(
          ErrorCode::ResourceExhausted,
          fmt::format("{} does not fit once the outgoing deployments are gone: {}", name, plan_of.reason));
    }
    // The next incoming deployment sees these placements as taken.
    for (size_t i = 0; i < plan_of.placements.size(); ++i) {
      api::Replica placed;
      placed.metadata.name = fmt::format("{}-planned-{}", name, i);
      placed.spec.deployment = name;
      placed.spec.node = plan_of.placements[i].node;
      placed.spec.gpus = plan_of.placements[i].gpus;
      placed.spec.vram_mb = plan_of.placements[i].vram_mb;
      placed.status.phase = api::phase::kScheduled;
      remaining.push_back(std::move(placed));
    }
  }
  return {};
}

std::map<GpuKey, int64_t> release_targets(const std::vector<api::Node>& nodes,
                                          const std::vector<api::Replica>& replicas,
                                          const std::set<std::string>& outgoing) {
  std::map<GpuKey, int64_t> running_all, running_others, held_by_outgoing;
  for (const auto& replica : replicas) {
    if (!holds_vram(replica)) continue;
    add_shares(replica, running_all);
    if (outgoing.count(replica.spec.deployment)) {
      add_shares(replica, held_by_outgoing);
    } else {
      add_shares(replica, running_others);
    }
  }
  std::map<GpuKey, int64_t> targets;
  for (const auto& node : nodes) {
    for (const auto& gpu : node.status.gpus) {
      GpuKey key{node.metadata.name, gpu.index};
      if (!held_by_outgoing.count(key)) continue;
      int64_t foreign = std::max<int64_t>(0, gpu.memory_used_mb - running_all[key]);
      targets[key] = running_others[key] + foreign;
    }
  }
  return targets;
}

std::vector<std::string> vram_not_released(const std::vector<api::Node>& nodes,
                                           const std::vector<api::Replica>& replicas,
                                           const std::set<std::string>& stopped, const std::set<std::string>& slept,
                                           const std::map<GpuKey, int64_t>& targets) {
  std::vector<std::string> waiting;
  for (const auto& replica : replicas) {
    if (stopped.count(replica.spec.deployment)) {
      waiting.push_back(fmt::format("replica {} is still {}", replica.metadata.name, replica.status.phase));
    } else if (slept.count(replica.spec.deployment) && !replica.spec.stop &&
               replica.status.phase != api::phase::kSleeping) {
      waiting.push_back(fmt::format("replica {} is {}, not yet Sleeping", replica.metadata.name, replica.status.phase));
    }
  }
  for (const auto& [key, target] : targets) {
    auto node =
        std::find_if(nodes.begin(), nodes.end(), [&](const api::Node& n) { return n.metadata.name == key.first; });
    if (node == nodes.end()) continue;  // a node that left holds nothing
    for (const auto& gpu : node->status.gpus) {
      if (gpu.index != key.second || gpu.memory_used_mb <= target) continue;
      waiting.push_back(fmt::format("node {} GPU {} reports {} MiB used, expected at most {} MiB", key.first,
                                    key.second, gpu.memory_used_mb, target));
    }
  }
  return waiting;
}

int ready_replicas(const std::vector<api::Replica>& replicas, const std::string& deployment) {
  return static_cast<int>(std::count_if(replicas.begin(), replicas.end(), [&](const api::Replica& replica) {
    return replica.spec.deployment == deployment && !replica.spec.stop && replica.status.phase == api::phase::kReady;
  }));
}

}  // namespace nebula::controlplane
