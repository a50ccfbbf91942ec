#pragma once
// Placement: which node and GPUs a replica runs on. Pure functions over a snapshot of nodes and
// the replicas already placed, so they are tested without a store or a clock.
#include <string>
#include <vector>

#include "api/api.h"
#include "common/result.h"

namespace nebula::scheduler {

// VRAM a replica of this deployment needs, summed over its GPUs, in MiB. spec.vram_mb when set;
// otherwise a first estimate from the parameter count in the model name ("llama-3.1-8b" -> 8B):
// FP16 weights × 1.2 + 2 GiB (GPUStack's rule of thumb), and 8 GiB when the name has no size.
// The model-file estimator (GGUF/safetensors headers, KV cache) replaces this guess.
int64_t estimate_vram_mb(const api::DeploymentSpec& spec);

struct Placement {
  std::string node;
  std::vector<int> gpus;
};

// Free VRAM per GPU of a node after the replicas placed on it (replicas marked stop still hold
// their memory until their engine is gone).
struct GpuFree {
  int index = 0;
  std::string name;
  int64_t total_mb = 0;
  int64_t free_mb = 0;
};
std::vector<GpuFree> free_vram(const api::Node& node, const std::vector<api::Replica>& replicas);

// Picks a Ready, non-draining node that has the engine and `gpus_per_replica` GPUs each with
// vram_mb / gpus_per_replica free, preferring the GPUs with the most free memory (spread).
// ResourceExhausted with a reason naming the best candidate when nothing fits.
Result<Placement> place(const api::Replica& replica, int gpus_per_replica, const std::vector<api::Node>& nodes,
                        const std::vector<api::Replica>& placed);

}  // namespace nebula::scheduler
