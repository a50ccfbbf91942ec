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
  std::vector<api::Node> one = {node};
  return *Capacity(one, replicas).gpus_of(node.metadata.name);
}

namespace {

// The GPUs' used and free memory from what is allocated to them, what their engines may hold and
// what the node reports (see GpuFree).
void settle(GpuFree& gpu, int64_t running_mb) {
  gpu.foreign_mb = std::max<int64_t>(0, gpu.reported_mb - running_mb);
  gpu.used_mb = gpu.allocated_mb + gpu.foreign_mb;
  gpu.free_mb = gpu.total_mb - gpu.reserved_mb - gpu.used_mb;
}

}  // namespace

// Why nodes were turned down, counted per cause (as the Kubernetes scheduler reports "0/100 nodes
// are available: 87 Insufficient memory"), with the first node's own words for each cause: a
// message that stays short however many nodes there are.
class Refusals {
 public:
  // detail() gives the node's own words; it is called for the first node of each cause only.
  template <typename Detail>
  void add(const std::string& cause, const Detail& detail) {
    auto it = causes_.find(cause);
    if (it == causes_.end()) {
      it = causes_.emplace(cause, Cause{0, detail()}).first;
      order_.push_back(cause);
    }
    ++it->second.count;
  }
  std::string summary(size_t node_count) const {
    if (node_count == 0) return "no nodes have joined";
    std::vector<std::string> parts;
    for (const auto& cause : order_) {
      const auto& entry = causes_.at(cause);
      parts.push_back(entry.count == 1 ? entry.example
                                       : fmt::format("{} {}, e.g. {}", entry.count, cause, entry.example));
    }
    // One node (a workstation): its own words are the whole story.
    if (node_count == 1) return fmt::format("{}", fmt::join(parts, "; "));
    return fmt::format("0/{} nodes are available: {}", node_count, fmt::join(parts, "; "));
  }

 private:
  struct Cause {
    size_t count = 0;
    std::string example;
  };
  std::map<std::string, Cause> causes_;
  std::vector<std::string> order_;
};

Capacity::Capacity(const std::vector<api::Node>& nodes, const std::vector<api::Replica>& placed) {
  nodes_.reserve(nodes.size());
  std::map<std::string, size_t> index;
  for (const auto& node : nodes) {
    NodeCapacity entry;
    entry.node = &node;
    for (const auto& gpu : node.status.gpus) {
      GpuFree free;
      free.index = gpu.index;
      free.name = gpu.name;
      free.total_mb = gpu.memory_total_mb;
      free.reserved_mb = std::max<int64_t>(0, node.spec.reserved_vram_mb);
      free.reported_mb = std::max<int64_t>(0, gpu.memory_used_mb);
      entry.gpus.push_back(free);
    }
    entry.running_mb.assign(entry.gpus.size(), 0);
    for (size_t position = 0; position < entry.gpus.size(); ++position) {
      const GpuFree& gpu = entry.gpus[position];
      auto group = std::find_if(entry.groups.begin(), entry.groups.end(), [&](const NodeCapacity::Group& existing) {
        return existing.name == gpu.name && existing.total_mb == gpu.total_mb;
      });
      if (group == entry.groups.end()) group = entry.groups.insert(entry.groups.end(), {gpu.name, gpu.total_mb, {}});
      group->members.push_back(position);
    }
    index.emplace(node.metadata.name, nodes_.size());
    nodes_.push_back(std::move(entry));
  }
  for (const auto& replica : placed) {
    auto it = index.find(replica.spec.node);
    if (it == index.end() || replica.spec.gpus.empty()) continue;
    claim(nodes_[it->second], replica.spec.gpus, replica.spec.vram_mb, engine_may_run(replica));
  }
  for (auto& entry : nodes_) {
    for (size_t i = 0; i < entry.gpus.size(); ++i) settle(entry.gpus[i], entry.running_mb[i]);
  }
  by_name_ = std::move(index);
}

void Capacity::claim(NodeCapacity& entry, const std::vector<int>& gpus, int64_t vram_mb, bool running) {
  int64_t share = vram_mb / static_cast<int64_t>(gpus.size());
  for (int gpu_index : gpus) {
    for (size_t i = 0; i < entry.gpus.size(); ++i) {
      if (entry.gpus[i].index != gpu_index) continue;
      entry.gpus[i].allocated_mb += share;
      if (running) entry.running_mb[i] += share;
    }
  }
}

void Capacity::add(const Placement& placement) {
  auto it = by_name_.find(placement.node);
  if (it == by_name_.end() || placement.gpus.empty()) return;
  auto& entry = nodes_[it->second];
  claim(entry, placement.gpus, placement.vram_mb, false);
  if (it->second < stale_.size()) stale_[it->second] = 1;
  for (size_t i = 0; i < entry.gpus.size(); ++i) settle(entry.gpus[i], entry.running_mb[i]);
}

const std::vector<GpuFree>* Capacity::gpus_of(const std::string& node) const {
  auto it = by_name_.find(node);
  return it == by_name_.end() ? nullptr : &nodes_[it->second].gpus;
}

std::optional<Capacity::Scored> Capacity::evaluate(const NodeCapacity& entry, const Request& request,
                                                   Refusals* refusals) const {
  const bool binpack = request.strategy == "binpack";
  const double fraction = request.gpu_memory_utilization;
  const std::string wanted_type = lower(request.gpu_type);
  auto refuse = [&](const std::string& cause, const auto& detail) {
    if (refusals) refusals->add(cause, detail);
  };
  std::optional<Scored> best;
  std::vector<const GpuFree*> eligible;
  std::vector<const GpuFree*> fitting;
  std::vector<char> eligible_group;
  const api::Node& node = *entry.node;
  const std::string& name = node.metadata.name;
  if (!node.status.ready) {
    refuse("not ready", [&] { return fmt::format("node {} is not ready", name); });
    return best;
  }
  if (node.spec.drain) {
    refuse("draining", [&] { return fmt::format("node {} is draining", name); });
    return best;
  }
  const auto& engines = node.status.engines;
  if (std::find(engines.begin(), engines.end(), request.engine) == engines.end()) {
    refuse("cannot run engine " + request.engine,
           [&] { return fmt::format("node {} cannot run engine {}", name, request.engine); });
    return best;
  }
  std::string mismatch;
  if (!request.node_selector.empty() && !labels_match(node, request.node_selector, &mismatch)) {
    refuse("do not match node_selector " + mismatch,
           [&] { return fmt::format("node {} does not match node_selector {}", name, mismatch); });
    return best;
  }
  if (request.gpus == 0) {
    return Scored{Placement{name, {}, 0}, 0};
  }
  eligible.clear();
  bool any_eligible = false;
  eligible_group.assign(entry.groups.size(), 0);
  for (size_t g = 0; g < entry.groups.size(); ++g) {
    const auto& group = entry.groups[g];
    eligible_group[g] = wanted_type.empty() || lower(group.name).find(wanted_type) != std::string::npos;
    any_eligible = any_eligible || eligible_group[g];
  }
  if (!any_eligible) {
    refuse("have no " + request.gpu_type + " GPU", [&] {
      std::vector<std::string> names;
      for (const auto& gpu : entry.gpus) names.push_back(gpu.name);
      return fmt::format("node {} has no {} GPU ({})", name, request.gpu_type,
                         names.empty() ? "no GPUs" : fmt::format("{}", fmt::join(names, ", ")));
    });
    return best;
  }
  // How full the whole node is: spread prefers the emptiest node, then the emptiest GPUs on it.
  int64_t node_used = 0, node_usable = 0;
  for (size_t g = 0; g < entry.groups.size(); ++g) {
    if (!eligible_group[g]) return best;
    for (size_t position : entry.groups[g].members) {
      const GpuFree& gpu = entry.gpus[position];
      eligible.push_back(&gpu);
      node_used += gpu.used_mb;
      node_usable += std::max<int64_t>(1, gpu.total_mb - gpu.reserved_mb);
    }
  }
  // Groups of identical GPUs (same name and memory): a tensor-parallel replica never mixes them.
  bool node_fits = false;
  size_t fitting_anywhere = 0, best_group_fitting = 0;
  std::string too_small;
  int64_t need_shown = request.need_per_gpu_mb;
  for (size_t g = 0; g < entry.groups.size(); ++g) {
    if (!eligible_group[g]) continue;
    const auto& group = entry.groups[g];
    int64_t claim = request.need_per_gpu_mb;
    if (fraction > 0) {
      claim = static_cast<int64_t>(std::floor(fraction * static_cast<double>(group.total_mb)));
      if (request.need_per_gpu_mb > claim) {
        too_small = fmt::format("node {}: {} GiB per GPU does not fit in gpu_memory_utilization {:.2f} of a {} GiB {}",
                                name, gib(request.need_per_gpu_mb), fraction, gib(group.total_mb), group.name);
        continue;
      }
      need_shown = claim;
    }
    fitting.clear();
    for (size_t position : group.members) {
      if (entry.gpus[position].free_mb >= claim) fitting.push_back(&entry.gpus[position]);
    }
    fitting_anywhere += fitting.size();
    best_group_fitting = std::max(best_group_fitting, fitting.size());
    if (static_cast<int>(fitting.size()) < request.gpus) continue;
    node_fits = true;
    // The request's GPUs: the emptiest (spread) or fullest (binpack) first, ties in index order.
    // Between GPUs with the same free memory, the less busy (xtrace's signal or the node's report).
    auto takes_first = [&](const GpuFree* a, const GpuFree* b) {
      if (a->free_mb != b->free_mb) return binpack ? a->free_mb < b->free_mb : a->free_mb > b->free_mb;
      double busy_a = utilization_of(request, node, a->index), busy_b = utilization_of(request, node, b->index);
      if (busy_a != busy_b) return busy_a < busy_b;
      return a->index < b->index;
    };
    std::partial_sort(fitting.begin(), fitting.begin() + request.gpus, fitting.end(), takes_first);
    Scored candidate;
    int64_t leftover = 0;
    for (int i = 0; i < request.gpus; ++i) {
      leftover += fitting[i]->free_mb - claim;
      candidate.utilization += utilization_of(request, node, fitting[i]->index);
    }
    candidate.score = binpack ? -leftover : leftover;
    candidate.has_model = has_model(node, request.model_key);
    candidate.spread = !binpack;
    candidate.node_used_mb = node_used;
    candidate.node_usable_mb = node_usable;
    if (best && !candidate.better_than(*best)) continue;
    candidate.placement.node = name;
    candidate.placement.vram_mb = claim * request.gpus;
    for (int i = 0; i < request.gpus; ++i) candidate.placement.gpus.push_back(fitting[i]->index);
    std::sort(candidate.placement.gpus.begin(), candidate.placement.gpus.end());
    best = std::move(candidate);
  }
  if (node_fits) return best;
  if (!too_small.empty() && fitting_anywhere == 0) {
    refuse("too small for gpu_memory_utilization", [&] { return too_small; });
    return best;
  }
  auto listing = [&] {
    std::vector<std::string> free_list;
    for (const auto* gpu : eligible) free_list.push_back(describe(*gpu));
    return free_list.empty() ? std::string("no GPUs") : fmt::format("{}", fmt::join(free_list, ", "));
  };
  if (static_cast<int>(fitting_anywhere) >= request.gpus && static_cast<int>(best_group_fitting) < request.gpus) {
    refuse("without enough identical GPUs", [&] {
      return fmt::format("node {} has {} GPUs with {} GiB free but not {} identical ones ({})", name, fitting_anywhere,
                         gib(need_shown), request.gpus, listing());
    });
  } else {
    refuse("without enough free VRAM", [&] {
      return fmt::format("node {} has {} of {} GPUs with {} GiB free ({})", name, best_group_fitting, request.gpus,
                         gib(need_shown), listing());
    });
  }
  return best;
}

Result<Placement> Capacity::place(const Request& request) const {
  // Consecutive requests of one shape (a deployment's replicas) rescore only the nodes a
  // placement changed since: the others' scores stand.
  std::string shape =
      fmt::format("{}|{}|{}|{}|{}|{}|{}", request.engine, request.gpus, request.need_per_gpu_mb,
                  request.gpu_memory_utilization, request.strategy, request.gpu_type, request.model_key);
  for (const auto& [key, value] : request.node_selector) shape += "|" + key + "=" + value;
  if (shape != memo_shape_ || memo_.size() != nodes_.size()) {
    memo_shape_ = std::move(shape);
    memo_.assign(nodes_.size(), std::nullopt);
    stale_.assign(nodes_.size(), 1);
  }
  const Scored* best = nullptr;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    if (stale_[i]) {
      memo_[i] = evaluate(nodes_[i], request, nullptr);
      stale_[i] = 0;
    }
    if (memo_[i] && (!best || memo_[i]->better_than(*best))) best = &*memo_[i];
  }
  if (best) return best->placement;
  // Nothing fits: once more, for the reasons.
  Refusals refusals;
  for (const auto& entry : nodes_) evaluate(entry, request, &refusals);
  const double fraction = request.gpu_memory_utilization;
  std::string need = fraction > 0 ? fmt::format("{:.0f}% of each card", fraction * 100)
                                  : fmt::format("{} GiB VRAM", gib(request.need_per_gpu_mb * request.gpus));
  return make_error(ErrorCode::ResourceExhausted,
                    fmt::format("no node fits replica {} ({} GPU(s), {}): {}", request.replica, request.gpus, need,
                                refusals.summary(nodes_.size())));
}

Result<Placement> place(const Request& request, const std::vector<api::Node>& nodes,
                        const std::vector<api::Replica>& placed) {
  return Capacity(nodes, placed).place(request);
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
