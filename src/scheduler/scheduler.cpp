#include "scheduler/scheduler.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <optional>

namespace nebula::scheduler {

namespace {

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

// Phases in which a replica's engine may hold memory the GPU reports.
bool engine_may_run(const api::Replica& replica) {
  const std::string& phase = replica.status.phase;
  return phase != api::phase::kPending && phase != api::phase::kScheduled;
}

std::string gib(int64_t mb) {
  return fmt::format("{:.1f}", static_cast<double>(mb) / 1024.0);
}

std::string describe(const GpuFree& gpu) {
  std::string text = fmt::format("gpu{} {} GiB free", gpu.index, gib(gpu.free_mb));
  std::vector<std::string> details;
  if (gpu.foreign_mb > 0) details.push_back(gib(gpu.foreign_mb) + " GiB used outside Nebula");
  if (gpu.reserved_mb > 0) details.push_back(gib(gpu.reserved_mb) + " GiB reserved");
  if (!details.empty()) text += fmt::format(" ({})", fmt::join(details, ", "));
  return text;
}

bool labels_match(const api::Node& node, const std::map<std::string, std::string>& selector, std::string* mismatch) {
  for (const auto& [key, value] : selector) {
    auto it = node.metadata.labels.find(key);
    if (it == node.metadata.labels.end() || it->second != value) {
      *mismatch = key + "=" + value;
      return false;
    }
  }
  return true;
}

// The node's cache holds the model: that file, or the whole repository it is part of.
bool has_model(const api::Node& node, const std::string& key) {
  if (key.empty()) return false;
  size_t at = key.find('@');
  size_t file = key.find('/', at == std::string::npos ? 0 : at);
  std::string repository = key.substr(0, file);
  for (const auto& model : node.status.models) {
    if (model == key || model == repository) return true;
  }
  return false;
}

struct Candidate {
  Placement placement;
  int64_t score = 0;
  bool has_model = false;  // the node's model cache holds the model's files
  double utilization = 0;  // summed over its GPUs: the tie-breaker
  bool better_than(const Candidate& other) const {
    if (has_model != other.has_model) return has_model;
    if (score != other.score) return score > other.score;
    return utilization < other.utilization;
  }
};

// The GPU's utilisation: the request's source when it knows (and says something sane), else the
// node's own report.
double utilization_of(const Request& request, const api::Node& node, int index) {
  if (request.gpu_utilization) {
    auto value = request.gpu_utilization(node.metadata.name, index);
    if (value && *value >= 0 && *value <= 100) return *value;
  }
  for (const auto& gpu : node.status.gpus) {
    if (gpu.index == index) return gpu.utilization;
  }
  return 0;
}

}  // namespace

int64_t estimate_vram_mb(const api::DeploymentSpec& spec) {
  return models::estimate(spec).vram_mb;
}

Request request_for(const api::Replica& replica, const api::DeploymentSpec& spec) {
  Request request;
  request.replica = replica.metadata.name;
  request.engine = replica.spec.engine;
  request.gpus = spec.gpus_per_replica;
  request.need_per_gpu_mb =
      request.gpus > 0 ? (replica.spec.vram_mb + request.gpus - 1) / static_cast<int64_t>(request.gpus) : 0;
  request.gpu_memory_utilization = models::claimed_fraction(spec);
  request.strategy = spec.placement;
  request.node_selector = spec.node_selector;
  request.gpu_type = spec.gpu_type;
  request.model_key = api::hub_repo_key(replica.spec.model);
  return request;
}

std::vector<api::Node> without_engines(std::vector<api::Node> nodes, const std::vector<api::Replica>& removed) {
  for (const auto& replica : removed) {
    if (replica.spec.gpus.empty() || !engine_may_run(replica)) continue;
    int64_t share = replica.spec.vram_mb / static_cast<int64_t>(replica.spec.gpus.size());
    for (auto& node : nodes) {
      if (node.metadata.name != replica.spec.node) continue;
      for (auto& gpu : node.status.gpus) {
        if (std::find(replica.spec.gpus.begin(), replica.spec.gpus.end(), gpu.index) == replica.spec.gpus.end()) {
          continue;
        }
        gpu.memory_used_mb = std::max<int64_t>(0, gpu.memory_used_mb - share);
      }
    }
  }
  return nodes;
}

std::vector<GpuFree> free_vram(const api::Node& node, const std::vector<api::Replica>& replicas) {
  std::vector<GpuFree> gpus;
  for (const auto& gpu : node.status.gpus) {
    GpuFree entry;
    entry.index = gpu.index;
    entry.name = gpu.name;
    entry.total_mb = gpu.memory_total_mb;
    entry.reserved_mb = std::max<int64_t>(0, node.spec.reserved_vram_mb);
    entry.reported_mb = std::max<int64_t>(0, gpu.memory_used_mb);
    gpus.push_back(entry);
  }
  std::vector<int64_t> running(gpus.size(), 0);
  for (const auto& replica : replicas) {
    if (replica.spec.node != node.metadata.name || replica.spec.gpus.empty()) continue;
    int64_t share = replica.spec.vram_mb / static_cast<int64_t>(replica.spec.gpus.size());
    for (int index : replica.spec.gpus) {
      for (size_t i = 0; i < gpus.size(); ++i) {
        if (gpus[i].index != index) continue;
        gpus[i].allocated_mb += share;
        if (engine_may_run(replica)) running[i] += share;
      }
    }
  }
  for (size_t i = 0; i < gpus.size(); ++i) {
    auto& gpu = gpus[i];
    gpu.foreign_mb = std::max<int64_t>(0, gpu.reported_mb - running[i]);
    gpu.used_mb = gpu.allocated_mb + gpu.foreign_mb;
    gpu.free_mb = gpu.total_mb - gpu.reserved_mb - gpu.used_mb;
  }
  return gpus;
}

Result<Placement> place(const Request& request, const std::vector<api::Node>& nodes,
                        const std::vector<api::Replica>& placed) {
  const bool binpack = request.strategy == "binpack";
  const double fraction = request.gpu_memory_utilization;
  std::vector<std::string> reasons;
  std::optional<Candidate> best;
  for (const auto& node : nodes) {
    const std::string& name = node.metadata.name;
    if (!node.status.ready) {
      reasons.push_back(fmt::format("node {} is not ready", name));
      continue;
    }
    if (node.spec.drain) {
      reasons.push_back(fmt::format("node {} is draining", name));
      continue;
    }
    const auto& engines = node.status.engines;
    if (std::find(engines.begin(), engines.end(), request.engine) == engines.end()) {
      reasons.push_back(fmt::format("node {} cannot run engine {}", name, request.engine));
      continue;
    }
    std::string mismatch;
    if (!labels_match(node, request.node_selector, &mismatch)) {
      reasons.push_back(fmt::format("node {} does not match node_selector {}", name, mismatch));
      continue;
    }
    if (request.gpus == 0) {
      if (!best) best = Candidate{Placement{name, {}, 0}, 0};
      continue;
    }
    auto gpus = free_vram(node, placed);
    if (!request.gpu_type.empty()) {
      std::string wanted = lower(request.gpu_type);
      std::vector<std::string> names;
      for (const auto& gpu : gpus) names.push_back(gpu.name);
      std::erase_if(gpus, [&](const GpuFree& gpu) { return lower(gpu.name).find(wanted) == std::string::npos; });
      if (gpus.empty()) {
        reasons.push_back(fmt::format("node {} has no {} GPU ({})", name, request.gpu_type,
                                      names.empty() ? "no GPUs" : fmt::format("{}", fmt::join(names, ", "))));
        continue;
      }
    }
    // Groups of identical GPUs: a tensor-parallel replica never mixes models or memory sizes.
    std::map<std::pair<std::string, int64_t>, std::vector<GpuFree>> groups;
    for (const auto& gpu : gpus) groups[{gpu.name, gpu.total_mb}].push_back(gpu);
    bool node_fits = false;
    size_t fitting_anywhere = 0, best_group_fitting = 0;
    std::string too_small;
    int64_t need_shown = request.need_per_gpu_mb;
    for (auto& [key, group] : groups) {
      int64_t claim = request.need_per_gpu_mb;
      if (fraction > 0) {
        claim = static_cast<int64_t>(std::floor(fraction * static_cast<double>(key.second)));
        if (request.need_per_gpu_mb > claim) {
          too_small =
              fmt::format("node {}: {} GiB per GPU does not fit in gpu_memory_utilization {:.2f} of a {} GiB {}", name,
                          gib(request.need_per_gpu_mb), fraction, gib(key.second), key.first);
          continue;
        }
        need_shown = claim;
      }
      std::vector<GpuFree> fitting;
      for (const auto& gpu : group) {
        if (gpu.free_mb >= claim) fitting.push_back(gpu);
      }
      fitting_anywhere += fitting.size();
      best_group_fitting = std::max(best_group_fitting, fitting.size());
      if (static_cast<int>(fitting.size()) < request.gpus) continue;
      std::map<int, double> utilization;
      for (const auto& gpu : fitting) utilization[gpu.index] = utilization_of(request, node, gpu.index);
      std::stable_sort(fitting.begin(), fitting.end(), [&](const GpuFree& a, const GpuFree& b) {
        if (a.free_mb != b.free_mb) return binpack ? a.free_mb < b.free_mb : a.free_mb > b.free_mb;
        return utilization[a.index] < utilization[b.index];
      });
      Candidate candidate{Placement{name, {}, claim * request.gpus}, 0};
      int64_t leftover = 0;
      for (int i = 0; i < request.gpus; ++i) {
        candidate.placement.gpus.push_back(fitting[i].index);
        leftover += fitting[i].free_mb - claim;
        candidate.utilization += utilization[fitting[i].index];
      }
      std::sort(candidate.placement.gpus.begin(), candidate.placement.gpus.end());
      candidate.score = binpack ? -leftover : leftover;
      candidate.has_model = has_model(node, request.model_key);
      node_fits = true;
      if (!best || candidate.better_than(*best)) best = std::move(candidate);
    }
    if (node_fits) continue;
    if (!too_small.empty() && fitting_anywhere == 0) {
      reasons.push_back(too_small);
      continue;
    }
    std::vector<std::string> free_list;
    for (const auto& gpu : gpus) free_list.push_back(describe(gpu));
    std::string listing = free_list.empty() ? "no GPUs" : fmt::format("{}", fmt::join(free_list, ", "));
    if (static_cast<int>(fitting_anywhere) >= request.gpus && static_cast<int>(best_group_fitting) < request.gpus) {
      reasons.push_back(fmt::format("node {} has {} GPUs with {} GiB free but not {} identical ones ({})", name,
                                    fitting_anywhere, gib(need_shown), request.gpus, listing));
    } else {
      reasons.push_back(fmt::format("node {} has {} of {} GPUs with {} GiB free ({})", name, best_group_fitting,
                                    request.gpus, gib(need_shown), listing));
    }
  }
  if (best) return best->placement;
  std::string why = reasons.empty() ? "no nodes have joined" : fmt::format("{}", fmt::join(reasons, "; "));
  std::string need = fraction > 0 ? fmt::format("{:.0f}% of each card", fraction * 100)
                                  : fmt::format("{} GiB VRAM", gib(request.need_per_gpu_mb * request.gpus));
  return make_error(ErrorCode::ResourceExhausted, fmt::format("no node fits replica {} ({} GPU(s), {}): {}",
                                                              request.replica, request.gpus, need, why));
}

Result<Placement> place(const api::Replica& replica, int gpus_per_replica, const std::vector<api::Node>& nodes,
                        const std::vector<api::Replica>& placed) {
  Request request;
  request.replica = replica.metadata.name;
  request.engine = replica.spec.engine;
  request.gpus = gpus_per_replica;
  request.need_per_gpu_mb = gpus_per_replica > 0 ? (replica.spec.vram_mb + gpus_per_replica - 1) / gpus_per_replica : 0;
  return place(request, nodes, placed);
}

}  // namespace nebula::scheduler
