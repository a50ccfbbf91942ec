// The dry run: place a deployment's replicas on a copy of the cluster's state, show every GPU
// before → after, and when it does not fit, try concrete changes and keep the ones that fit.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "scheduler/scheduler.h"

namespace nebula::scheduler {

namespace {

struct Attempt {
  bool fits = false;
  std::vector<Placement> placements;
  std::vector<api::Replica> placed;  // the input replicas plus the plan's
  std::string reason;
  models::Estimate estimate;
};

std::string gib(int64_t mb) {
  return fmt::format("{:.1f} GiB", static_cast<double>(mb) / 1024.0);
}

// Places spec.replicas replicas of `name` one after another, each seeing the ones before.
Attempt attempt(const std::string& name, const api::DeploymentSpec& spec, const std::vector<api::Node>& nodes,
                std::vector<api::Replica> placed) {
  Attempt result;
  result.estimate = models::estimate(spec);
  result.fits = true;
  for (int i = 0; i < spec.replicas; ++i) {
    api::Replica replica;
    replica.metadata.name = fmt::format("{}-{}", name, i);
    replica.spec.deployment = name;
    replica.spec.model = spec.model;
    replica.spec.engine = spec.engine;
    replica.spec.vram_mb = result.estimate.vram_mb;
    auto placement = place(request_for(replica, spec), nodes, placed);
    if (!placement) {
      result.fits = false;
      result.reason = placement.error().message;
      break;
    }
    replica.spec.node = placement->node;
    replica.spec.gpus = placement->gpus;
    replica.spec.vram_mb = placement->vram_mb;
    placed.push_back(replica);
    result.placements.push_back(*placement);
  }
  result.placed = std::move(placed);
  return result;
}

class AlternativeFinder {
 public:
  AlternativeFinder(const api::Deployment& deployment, const std::vector<api::Node>& nodes,
                    const std::vector<api::Replica>& others, const std::vector<api::Deployment>& deployments,
                    const models::Estimate& base)
      : name_(deployment.metadata.name),
        spec_(deployment.spec),
        nodes_(nodes),
        others_(others),
        deployments_(deployments),
        base_(base) {}

  std::vector<Alternative> find() {
    shorter_context();
    fewer_sequences();
    fp8_kv_cache();
    quantised_variants();
    smaller_fraction();
    more_gpus();
    fewer_replicas();
    stop_deployments();
    return std::move(found_);
  }

 private:
  bool fits(const api::DeploymentSpec& spec, models::Estimate* estimate = nullptr) {
    auto result = attempt(name_, spec, nodes_, others_);
    if (estimate) *estimate = result.estimate;
    return result.fits;
  }
  // What a model-shape change can do: nothing when the VRAM is given outright.
  bool estimated() const { return base_.source != "spec.vram_mb"; }

  void shorter_context() {
    if (!estimated() || base_.kv_bytes_per_token == 0) return;
    for (int context = base_.context / 2; context >= 512; context /= 2) {
      api::DeploymentSpec spec = spec_;
      spec.max_context = context;
      models::Estimate estimate;
      if (fits(spec, &estimate)) {
        found_.push_back(
            {"max_context", std::to_string(context),
             fmt::format("shorter context: --max-context {} (KV cache {} → {})", context,
                         gib(base_.kv_cache_bytes / models::kMiB), gib(estimate.kv_cache_bytes / models::kMiB)),
             base_.vram_mb - estimate.vram_mb});
        return;
      }
    }
  }

  void fewer_sequences() {
    if (!estimated() || base_.kv_bytes_per_token == 0 || base_.sequences <= 1) return;
    for (int sequences = base_.sequences / 2; sequences >= 1; sequences /= 2) {
      api::DeploymentSpec spec = spec_;
      spec.max_seqs = sequences;
      models::Estimate estimate;
      if (fits(spec, &estimate)) {
        found_.push_back({"max_seqs", std::to_string(sequences),
                          fmt::format("fewer concurrent sequences: --max-seqs {}", sequences),
                          base_.vram_mb - estimate.vram_mb});
        return;
      }
    }
  }

  void fp8_kv_cache() {
    if (!estimated() || base_.kv_bytes_per_token == 0 || base_.kv_cache_dtype == "fp8") return;
    api::DeploymentSpec spec = spec_;
    spec.kv_cache_dtype = "fp8";
    models::Estimate estimate;
    if (fits(spec, &estimate)) {
      found_.push_back({"kv_cache_dtype", "fp8", "an FP8 KV cache (kv_cache_dtype: fp8) halves the KV cache",
                        base_.vram_mb - estimate.vram_mb});
    }
  }

  void quantised_variants() {
    if (!estimated()) return;
    auto match = models::find_in_catalog(spec_.model);
    if (!match || match->variant) return;
    for (const auto& variant : match->entry->variants) {
      api::DeploymentSpec spec = spec_;
      spec.model = variant.id;
      models::Estimate estimate;
      if (fits(spec, &estimate)) {
        found_.push_back(
            {"model", variant.id,
             fmt::format("the {} variant {} (weights {} → {})", variant.quantization, variant.id,
                         gib(base_.weights_bytes / models::kMiB), gib(estimate.weights_bytes / models::kMiB)),
             base_.vram_mb - estimate.vram_mb});
      }
    }
  }

  // vLLM claims a fraction of the card whatever the model needs: claim less.
  void smaller_fraction() {
    double current = base_.gpu_memory_utilization;
    if (current <= 0) return;
    int64_t card_mb = 0;
    for (const auto& node : nodes_) {
      for (const auto& gpu : node.status.gpus) card_mb = std::max(card_mb, gpu.memory_total_mb);
    }
    for (int step = static_cast<int>(std::lround(current * 20)) - 1; step >= 2; --step) {
      double fraction = step / 20.0;
      api::DeploymentSpec spec = spec_;
      spec.gpu_memory_utilization = fraction;
      if (fits(spec)) {
        int64_t saves = static_cast<int64_t>((current - fraction) * static_cast<double>(card_mb)) *
                        std::max(1, spec_.gpus_per_replica);
        found_.push_back({"gpu_memory_utilization", fmt::format("{:.2f}", fraction),
                          fmt::format("claim less of each card: gpu_memory_utilization {:.2f}", fraction), saves});
        return;
      }
    }
  }

  void more_gpus() {
    if (spec_.gpus_per_replica < 1) return;
    for (int gpus = spec_.gpus_per_replica * 2; gpus <= 8; gpus *= 2) {
      api::DeploymentSpec spec = spec_;
      spec.gpus_per_replica = gpus;
      if (!estimated()) spec.vram_mb = spec_.vram_mb;  // the same total, split over more GPUs
      models::Estimate estimate;
      if (fits(spec, &estimate)) {
        found_.push_back(
            {"gpus_per_replica", std::to_string(gpus),
             fmt::format("tensor parallel over {} GPUs: --gpus {} ({} per GPU)", gpus, gpus, gib(estimate.per_gpu_mb)),
             base_.per_gpu_mb - estimate.per_gpu_mb});
        return;
      }
    }
  }

  void fewer_replicas() {
    for (int replicas = spec_.replicas - 1; replicas >= 1; --replicas) {
      api::DeploymentSpec spec = spec_;
      spec.replicas = replicas;
      if (fits(spec)) {
        found_.push_back({"replicas", std::to_string(replicas),
                          fmt::format("fewer replicas: --replicas {} fits", replicas),
                          base_.vram_mb * (spec_.replicas - replicas)});
        return;
      }
    }
  }

  // Stop other deployments holding VRAM: each one alone that would make room, else the fewest,
  // largest first.
  void stop_deployments() {
    std::map<std::string, int64_t> holding;
    for (const auto& replica : others_) {
      if (!replica.spec.node.empty() && !replica.spec.gpus.empty() && replica.spec.deployment != name_) {
        holding[replica.spec.deployment] += replica.spec.vram_mb;
      }
    }
    std::vector<std::pair<std::string, int64_t>> by_size(holding.begin(), holding.end());
    std::sort(by_size.begin(), by_size.end(), [](const auto& a, const auto& b) {
      return a.second != b.second ? a.second < b.second : a.first < b.first;
    });
    // Stopping a deployment frees what its replicas claim and what their engines hold as the
    // GPUs report it (an idle engine still holds its memory until it stops).
    auto fits_without = [&](const std::set<std::string>& stopped) {
      std::vector<api::Replica> kept;
      std::vector<api::Replica> removed;
      for (const auto& replica : others_) {
        (stopped.count(replica.spec.deployment) ? removed : kept).push_back(replica);
      }
      return attempt(name_, spec_, without_engines(nodes_, removed), kept).fits;
    };
    auto priority_note = [&](const std::string& name) {
      for (const auto& deployment : deployments_) {
        if (deployment.metadata.name == name && deployment.spec.priority != 0) {
          return fmt::format(" (priority {})", deployment.spec.priority);
        }
      }
      return std::string();
    };
    int singles = 0;
    for (const auto& [name, mb] : by_size) {
      if (fits_without({name})) {
        found_.push_back(
            {"stop", name, fmt::format("stop deployment {}{} (frees {})", name, priority_note(name), gib(mb)), mb});
        if (++singles == 3) return;
      }
    }
    if (singles > 0 || by_size.size() < 2) return;
    std::set<std::string> stopped;
    std::vector<std::string> names;
    int64_t freed = 0;
    for (auto it = by_size.rbegin(); it != by_size.rend(); ++it) {
      stopped.insert(it->first);
      names.push_back(it->first);
      freed += it->second;
      if (fits_without(stopped)) {
        std::string list = fmt::format("{}", fmt::join(names, ","));
        found_.push_back({"stop", list, fmt::format("stop deployments {} (frees {})", list, gib(freed)), freed});
        return;
      }
    }
  }

  std::string name_;
  api::DeploymentSpec spec_;
  const std::vector<api::Node>& nodes_;
  const std::vector<api::Replica>& others_;
  const std::vector<api::Deployment>& deployments_;
  models::Estimate base_;
  std::vector<Alternative> found_;
};

}  // namespace

Plan simulate(const api::Deployment& deployment, const std::vector<api::Node>& nodes,
              const std::vector<api::Replica>& replicas, const std::vector<api::Deployment>& deployments) {
  const std::string& name = deployment.metadata.name;
  std::vector<api::Replica> others;
  for (const auto& replica : replicas) {
    if (replica.spec.deployment != name) others.push_back(replica);
  }
  Attempt result = attempt(name, deployment.spec, nodes, others);
  Plan plan;
  plan.deployment = name;
  plan.estimate = result.estimate;
  plan.replicas = deployment.spec.replicas;
  plan.fits = result.fits;
  plan.placements = result.placements;
  plan.reason = result.reason;
  for (const auto& node : nodes) {
    auto before = free_vram(node, others);
    auto after = free_vram(node, result.placed);
    for (size_t i = 0; i < before.size() && i < after.size(); ++i) {
      GpuPlan gpu;
      gpu.node = node.metadata.name;
      gpu.index = before[i].index;
      gpu.name = before[i].name;
      gpu.total_mb = before[i].total_mb;
      gpu.reserved_mb = before[i].reserved_mb;
      gpu.used_before_mb = before[i].used_mb;
      gpu.used_after_mb = after[i].used_mb;
      for (size_t r = 0; r < result.placements.size(); ++r) {
        const auto& placement = result.placements[r];
        if (placement.node == gpu.node &&
            std::find(placement.gpus.begin(), placement.gpus.end(), gpu.index) != placement.gpus.end()) {
          gpu.replicas.push_back(fmt::format("{}-{}", name, r));
        }
      }
      plan.gpus.push_back(std::move(gpu));
    }
  }
  if (!plan.fits) {
    plan.alternatives = AlternativeFinder(deployment, nodes, others, deployments, plan.estimate).find();
  }
  return plan;
}

}  // namespace nebula::scheduler
