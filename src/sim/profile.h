#pragma once
// Latency and memory profiles: one GPU (or TP group) × one model size, with figures derived in
// docs/simulator.md from public datasheets and model configs.
#include <string>
#include <string_view>
#include <vector>

namespace nebula::sim {

struct Profile {
  std::string name;
  std::string description;
  // Memory, in GB (1e9 bytes), summed over the GPUs of the replica.
  double gpu_memory_gb = 80;
  double gpu_memory_utilization = 0.9;  // the share vLLM claims
  double weights_gb = 16.1;
  double reserved_gb = 2.5;  // activations, CUDA graphs, NCCL buffers: claimed but not KV
  double kv_bytes_per_token = 131072;
  // Step cost (see StepCost).
  double step_base_ms = 6.5;
  double prefill_step_ms = 0;
  double prefill_ms_per_token = 0.036;
  double decode_ms_per_seq = 0.05;
  double step_noise = 0.02;
  // vLLM's scheduler defaults for the card.
  int max_num_seqs = 1024;
  int max_num_batched_tokens = 8192;
  // Lifecycle, in seconds.
  double startup_seconds = 35;
  double wake_l1_seconds = 1.0;  // weights back from CPU RAM
  double wake_l2_seconds = 4.0;  // weights reloaded from disk
  int hidden_size = 4096;        // the length of /v1/embeddings vectors
};

// "default" (h100-8b with instant start), h100-8b, h100-70b-tp4, a100-13b, rtx4090-8b, cpu-tiny.
const std::vector<Profile>& builtin_profiles();
// nullptr when unknown.
const Profile* find_profile(std::string_view name);
// "default, h100-8b, ..." for messages.
std::string profile_names();

// KV blocks that fit in what the profile leaves after weights and reserve; at least 0.
int kv_blocks_for(const Profile& profile, int block_size);

}  // namespace nebula::sim
