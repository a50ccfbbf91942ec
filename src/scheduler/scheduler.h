#pragma once
// Placement: which node and GPUs a replica runs on, and the dry-run plan of a deployment. Pure
// functions over a snapshot of nodes and the replicas already placed, so they are tested without
// a store or a clock.
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "api/api.h"
#include "common/result.h"
#include "models/models.h"

namespace nebula::scheduler {

class Refusals;

// VRAM a replica of this deployment needs, summed over its GPUs, in MiB: models::estimate()
// (spec.vram_mb, else the catalog, else the model file, else the parameter count in the name).
int64_t estimate_vram_mb(const api::DeploymentSpec& spec);

struct Placement {
  std::string node;
  std::vector<int> gpus;
  int64_t vram_mb = 0;  // what the replica claims there, summed over its GPUs
};

// What one replica asks of a node.
struct Request {
  std::string replica;  // for messages
  std::string engine;
  int gpus = 1;
  int64_t need_per_gpu_mb = 0;  // the model's need on each GPU
  // > 0: the engine claims this fraction of each card (vLLM); the need must fit inside it.
  double gpu_memory_utilization = 0;
  std::string strategy = "spread";  // spread | binpack
  std::map<std::string, std::string> node_selector;
  std::string gpu_type;  // "" any; else a case-insensitive substring of the GPU name
  // The model's hub repository key (api::hub_repo_key); a node that has it cached wins over one
  // that would have to download it, before binpack or spread decide.
  std::string model_key;
  // GPU utilisation (0-100) of a node's GPU from a fresher source than the node's own report
  // (xtrace's signals); nullopt, or unset, means the node's report. Breaks ties only: between
  // GPUs with the same free memory, and between placements that score the same, the less busy wins.
  std::function<std::optional<double>(const std::string& node, int gpu_index)> gpu_utilization;
};
// The request of a replica of `spec`; its need is replica.spec.vram_mb split over the GPUs.
Request request_for(const api::Replica& replica, const api::DeploymentSpec& spec);

// VRAM of one GPU as the scheduler sees it. `allocated` is what placed replicas claim on it;
// `reported` what the GPU says is in use. What Nebula's own running engines use shows up in
// both, so the GPU's use is
//   used = allocated + max(0, reported − allocated to replicas whose engine may be running)
// (the second term is memory held by processes Nebula did not start). It is never less than
// max(allocated, reported), so neither a foreign process nor a replica whose engine has not
// started yet is missed, and the agent's report of its own engines is not counted twice.
struct GpuFree {
  int index = 0;
  std::string name;
  int64_t total_mb = 0;
  int64_t reserved_mb = 0;   // the node's reserved_vram_mb
  int64_t allocated_mb = 0;  // placed replicas, including stop-marked ones still present
  int64_t reported_mb = 0;   // memory_used_mb from the node's last status
  int64_t foreign_mb = 0;    // reported beyond what Nebula's running engines account for
  int64_t used_mb = 0;       // allocated + foreign
  int64_t free_mb = 0;       // total − reserved − used (may be negative)
};
std::vector<GpuFree> free_vram(const api::Node& node, const std::vector<api::Replica>& replicas);

// The nodes as they will report once the engines of `removed` are gone: each GPU's reported use
// less what those engines may hold there. A what-if (stop these replicas, would that make room?)
// places against these nodes and the replicas without `removed`; with the nodes as they are, the
// memory the removed engines still hold would count as used by something outside Nebula.
std::vector<api::Node> without_engines(std::vector<api::Node> nodes, const std::vector<api::Replica>& removed);

// The free memory of every GPU of a set of nodes given the replicas placed on them, computed once
// so that placing many replicas costs O(nodes × GPUs) each, not a scan of every replica for every
// node. Holds pointers into `nodes`: they must outlive it, unchanged.
class Capacity {
 public:
  Capacity(const std::vector<api::Node>& nodes, const std::vector<api::Replica>& placed);
  // Filters the nodes (Ready, not draining, has the engine, labels match node_selector, GPUs of
  // gpu_type, free VRAM after reserved_vram_mb), then scores what is left: spread prefers the
  // emptiest node (the smallest share of its VRAM in use), then the GPUs with the most free
  // memory on it; binpack takes the fullest GPUs that still fit. A multi-GPU replica takes
  // identical GPUs (same name and memory) on one node. ResourceExhausted when nothing fits, with
  // the nodes counted per cause ("0/100 nodes are available: 87 without enough free VRAM, e.g.
  // node a has ...; node b is not ready"): one example per cause, whatever the cluster's size
  // (with a single node, just that node's reason).
  Result<Placement> place(const Request& request) const;
  // Records a placement just made (its replica now claims that memory).
  void add(const Placement& placement);
  // The GPUs of a node; nullptr when it is not one of the nodes.
  const std::vector<GpuFree>* gpus_of(const std::string& node) const;

 private:
  struct NodeCapacity {
    const api::Node* node = nullptr;
    std::vector<GpuFree> gpus;
    std::vector<int64_t> running_mb;  // per GPU: claimed by replicas whose engine may run
    // Identical GPUs (same name and memory), in the order they first appear.
    struct Group {
      std::string name;
      int64_t total_mb = 0;
      std::vector<size_t> members;  // positions in gpus
    };
    std::vector<Group> groups;
  };
  // A node's best placement for a request, with what ranks it.
  struct Scored {
    Placement placement;
    int64_t score = 0;
    bool has_model = false;  // the node's model cache holds the model's files
    bool spread = false;
    int64_t node_used_mb = 0;    // over the node's (eligible) GPUs, before this replica
    int64_t node_usable_mb = 1;  // their total less what is reserved
    double utilization = 0;      // summed over the placement's GPUs: the last tie-breaker
    bool better_than(const Scored& other) const {
      if (has_model != other.has_model) return has_model;
      if (spread) {
        // The emptiest node (smallest share of its memory in use) first, so one node's loss takes
        // as few replicas as possible; ties go to the earlier node.
        int64_t mine = node_used_mb * other.node_usable_mb;  // MiB × MiB: far from overflow
        int64_t theirs = other.node_used_mb * node_usable_mb;
        if (mine != theirs) return mine < theirs;
      }
      if (score != other.score) return score > other.score;
      return utilization < other.utilization;
    }
  };
  static void claim(NodeCapacity& entry, const std::vector<int>& gpus, int64_t vram_mb, bool running);
  // The node's best placement for the request; nullopt (and, given refusals, why) when none.
  std::optional<Scored> evaluate(const NodeCapacity& entry, const Request& request, Refusals* refusals) const;

  std::vector<NodeCapacity> nodes_;
  std::map<std::string, size_t> by_name_;
  // The last request shape's score of each node, and which nodes changed since (add()).
  mutable std::string memo_shape_;
  mutable std::vector<std::optional<Scored>> memo_;
  mutable std::vector<char> stale_;
};

// One placement against a snapshot: Capacity(nodes, placed).place(request).
Result<Placement> place(const Request& request, const std::vector<api::Node>& nodes,
                        const std::vector<api::Replica>& placed);
// Spread placement of `replica` needing replica.spec.vram_mb over `gpus_per_replica` GPUs.
Result<Placement> place(const api::Replica& replica, int gpus_per_replica, const std::vector<api::Node>& nodes,
                        const std::vector<api::Replica>& placed);

// ---- dry run (POST /api/v1/simulate, nebula deploy --dry-run) --------------------------------

struct GpuPlan {
  std::string node;
  int index = 0;
  std::string name;
  int64_t total_mb = 0;
  int64_t reserved_mb = 0;
  int64_t used_before_mb = 0;
  int64_t used_after_mb = 0;
  std::vector<std::string> replicas;  // replicas of the plan landing here
};

// A change to the deployment that makes it fit, checked by placing it again.
struct Alternative {
  std::string kind;   // max_context | max_seqs | kv_cache_dtype | model | gpu_memory_utilization |
                      // gpus_per_replica | replicas | stop
  std::string value;  // the new value; for stop, the deployments to stop, comma-separated
  std::string summary;
  int64_t saves_mb = 0;  // VRAM per replica it saves (for stop: what stopping frees)
};

struct Plan {
  std::string deployment;
  models::Estimate estimate;
  int replicas = 0;
  bool fits = false;
  std::vector<Placement> placements;  // the replicas that fit, in order
  std::vector<GpuPlan> gpus;          // every GPU of every node, before → after
  std::string reason;                 // why the first replica that does not fit does not
  std::vector<Alternative> alternatives;
};

// Plans `deployment` as if none of its replicas existed yet, against the other deployments'
// replicas. `deployments` gives the names and specs of what could be stopped.
Plan simulate(const api::Deployment& deployment, const std::vector<api::Node>& nodes,
              const std::vector<api::Replica>& replicas, const std::vector<api::Deployment>& deployments);

}  // namespace nebula::scheduler
