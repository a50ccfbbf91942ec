#include "scheduler/scheduler.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <regex>

namespace nebula::scheduler {

namespace {
// Billions of parameters named in a model id: "llama-3.1-8b-instruct" -> 8, "qwen2.5-0.5b" -> 0.5,
// "mixtral-8x7b" -> 56 (an upper bound: experts share attention). 0 when no part names a size.
double parameters_billions(const std::string& model) {
  static const std::regex kSize(R"((?:^|[-_/:])(?:(\d+)x)?(\d+(?:\.\d+)?)[bB](?=$|[-_/:]))");
  double best = 0;
  for (auto it = std::sregex_iterator(model.begin(), model.end(), kSize); it != std::sregex_iterator(); ++it) {
    double experts = (*it)[1].matched ? std::stod((*it)[1].str()) : 1;
    best = std::max(best, experts * std::stod((*it)[2].str()));
  }
  return best;
}
}  // namespace

int64_t estimate_vram_mb(const api::DeploymentSpec& spec) {
  if (spec.vram_mb > 0) return spec.vram_mb;
  if (spec.gpus_per_replica == 0) return 0;
  double billions = parameters_billions(spec.model);
  if (billions <= 0) return 8 * 1024;
  double weights_mb = billions * 1e9 * 2 / (1024.0 * 1024.0);
  return static_cast<int64_t>(std::ceil(weights_mb * 1.2 + 2 * 1024));
}

std::vector<GpuFree> free_vram(const api::Node& node, const std::vector<api::Replica>& replicas) {
  std::vector<GpuFree> gpus;
  for (const auto& gpu : node.status.gpus) {
    gpus.push_back({gpu.index, gpu.name, gpu.memory_total_mb, gpu.memory_total_mb});
  }
  for (const auto& replica : replicas) {
    if (replica.spec.node != node.metadata.name || replica.spec.gpus.empty()) continue;
    int64_t share = replica.spec.vram_mb / static_cast<int64_t>(replica.spec.gpus.size());
    for (int index : replica.spec.gpus) {
      for (auto& gpu : gpus) {
        if (gpu.index == index) gpu.free_mb -= share;
      }
    }
  }
  return gpus;
}

Result<Placement> place(const api::Replica& replica, int gpus_per_replica, const std::vector<api::Node>& nodes,
                        const std::vector<api::Replica>& placed) {
  int64_t need_total = replica.spec.vram_mb;
  int64_t need_per_gpu = gpus_per_replica > 0 ? (need_total + gpus_per_replica - 1) / gpus_per_replica : 0;
  std::vector<std::string> reasons;
  std::optional<Placement> best;
  int64_t best_score = -1;
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
    if (std::find(engines.begin(), engines.end(), replica.spec.engine) == engines.end()) {
      reasons.push_back(fmt::format("node {} cannot run engine {}", name, replica.spec.engine));
      continue;
    }
    if (gpus_per_replica == 0) {
      if (best_score < 0) {
        best = Placement{name, {}};
        best_score = 0;
      }
      continue;
    }
    auto gpus = free_vram(node, placed);
    std::sort(gpus.begin(), gpus.end(), [](const GpuFree& a, const GpuFree& b) { return a.free_mb > b.free_mb; });
    std::vector<GpuFree> fitting;
    for (const auto& gpu : gpus) {
      if (gpu.free_mb >= need_per_gpu) fitting.push_back(gpu);
    }
    if (static_cast<int>(fitting.size()) < gpus_per_replica) {
      std::string free_list;
      for (const auto& gpu : gpus) {
        free_list +=
            fmt::format("{}gpu{} {:.1f} GiB free", free_list.empty() ? "" : ", ", gpu.index, gpu.free_mb / 1024.0);
      }
      reasons.push_back(fmt::format("node {} has {} of {} GPUs with {:.1f} GiB free ({})", name, fitting.size(),
                                    gpus_per_replica, need_per_gpu / 1024.0,
                                    free_list.empty() ? "no GPUs" : free_list));
      continue;
    }
    Placement candidate{name, {}};
    int64_t score = 0;
    for (int i = 0; i < gpus_per_replica; ++i) {
      candidate.gpus.push_back(fitting[i].index);
      score += fitting[i].free_mb - need_per_gpu;
    }
    std::sort(candidate.gpus.begin(), candidate.gpus.end());
    if (score > best_score) {
      best_score = score;
      best = std::move(candidate);
    }
  }
  if (best) return *best;
  std::string why = reasons.empty() ? "no nodes have joined" : fmt::format("{}", fmt::join(reasons, "; "));
  return make_error(ErrorCode::ResourceExhausted,
                    fmt::format("no node fits replica {} ({} GPU(s), {:.1f} GiB VRAM): {}", replica.metadata.name,
                                gpus_per_replica, need_total / 1024.0, why));
}

}  // namespace nebula::scheduler
