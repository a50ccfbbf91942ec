#include "sim/profile.h"

#include <cmath>

namespace nebula::sim {
namespace {

std::vector<Profile> make_profiles() {
  std::vector<Profile> profiles;

  // Llama-3.1-8B bf16 on one H100 SXM 80GB: the reference point, and the default.
  Profile h100_8b;
  h100_8b.name = "h100-8b";
  h100_8b.description = "Llama-3.1-8B bf16 on 1x H100 SXM 80GB";
  h100_8b.gpu_memory_gb = 80;
  h100_8b.weights_gb = 16.1;
  h100_8b.reserved_gb = 2.5;
  h100_8b.kv_bytes_per_token = 32 * 8 * 128 * 2 * 2;  // layers x KV heads x head dim x (K,V) x bf16
  h100_8b.step_base_ms = 6.5;
  h100_8b.prefill_ms_per_token = 0.036;
  h100_8b.decode_ms_per_seq = 0.05;
  h100_8b.max_num_seqs = 1024;
  h100_8b.max_num_batched_tokens = 8192;
  h100_8b.startup_seconds = 35;
  h100_8b.wake_l1_seconds = 1.0;
  h100_8b.wake_l2_seconds = 4.0;
  h100_8b.hidden_size = 4096;

  Profile fallback = h100_8b;
  fallback.name = "default";
  fallback.description = "h100-8b with instant start (what tests and demos use)";
  fallback.startup_seconds = 0;
  fallback.wake_l1_seconds = 0.1;
  fallback.wake_l2_seconds = 0.5;
  profiles.push_back(fallback);
  profiles.push_back(h100_8b);

  Profile h100_70b = h100_8b;
  h100_70b.name = "h100-70b-tp4";
  h100_70b.description = "Llama-3.1-70B bf16 on 4x H100 SXM 80GB, tensor parallel 4";
  h100_70b.gpu_memory_gb = 4 * 80;
  h100_70b.weights_gb = 141;
  h100_70b.reserved_gb = 4 * 2.5;
  h100_70b.kv_bytes_per_token = 80 * 8 * 128 * 2 * 2;
  h100_70b.step_base_ms = 14;
  h100_70b.prefill_ms_per_token = 0.08;
  h100_70b.decode_ms_per_seq = 0.1;
  h100_70b.startup_seconds = 120;
  h100_70b.wake_l1_seconds = 2.5;
  h100_70b.wake_l2_seconds = 20;
  h100_70b.hidden_size = 8192;
  profiles.push_back(h100_70b);

  Profile a100_13b = h100_8b;
  a100_13b.name = "a100-13b";
  a100_13b.description = "Llama-2-13B bf16 on 1x A100 SXM 80GB";
  a100_13b.gpu_memory_gb = 80;
  a100_13b.weights_gb = 26;
  a100_13b.reserved_gb = 2.5;
  a100_13b.kv_bytes_per_token = 40 * 40 * 128 * 2 * 2;  // no GQA: 40 KV heads
  a100_13b.step_base_ms = 14;
  a100_13b.prefill_ms_per_token = 0.185;
  a100_13b.decode_ms_per_seq = 0.12;
  a100_13b.startup_seconds = 50;
  a100_13b.wake_l1_seconds = 1.5;
  a100_13b.wake_l2_seconds = 8;
  a100_13b.hidden_size = 5120;
  profiles.push_back(a100_13b);

  Profile rtx4090 = h100_8b;
  rtx4090.name = "rtx4090-8b";
  rtx4090.description = "Llama-3.1-8B bf16 on 1x RTX 4090 24GB";
  rtx4090.gpu_memory_gb = 24;
  rtx4090.weights_gb = 16.1;
  rtx4090.reserved_gb = 1.5;
  rtx4090.step_base_ms = 17.5;
  rtx4090.prefill_ms_per_token = 0.22;
  rtx4090.decode_ms_per_seq = 0.15;
  rtx4090.max_num_seqs = 256;
  rtx4090.max_num_batched_tokens = 2048;
  rtx4090.startup_seconds = 40;
  rtx4090.wake_l1_seconds = 1.5;
  rtx4090.wake_l2_seconds = 6;
  profiles.push_back(rtx4090);

  Profile cpu_tiny = h100_8b;
  cpu_tiny.name = "cpu-tiny";
  cpu_tiny.description = "Qwen2.5-0.5B bf16 on CPU cores (4 GB budget)";
  cpu_tiny.gpu_memory_gb = 4;
  cpu_tiny.weights_gb = 1.0;
  cpu_tiny.reserved_gb = 0.3;
  cpu_tiny.kv_bytes_per_token = 24 * 2 * 64 * 2 * 2;
  cpu_tiny.step_base_ms = 16;
  cpu_tiny.prefill_ms_per_token = 0.6;
  cpu_tiny.decode_ms_per_seq = 0.8;
  cpu_tiny.step_noise = 0.05;
  cpu_tiny.max_num_seqs = 16;
  cpu_tiny.max_num_batched_tokens = 512;
  cpu_tiny.startup_seconds = 3;
  cpu_tiny.wake_l1_seconds = 0.2;
  cpu_tiny.wake_l2_seconds = 1.0;
  cpu_tiny.hidden_size = 896;
  profiles.push_back(cpu_tiny);
  return profiles;
}

}  // namespace

const std::vector<Profile>& builtin_profiles() {
  static const std::vector<Profile> profiles = make_profiles();
  return profiles;
}

const Profile* find_profile(std::string_view name) {
  for (const Profile& profile : builtin_profiles()) {
    if (profile.name == name) return &profile;
  }
  return nullptr;
}

std::string profile_names() {
  std::string names;
  for (const Profile& profile : builtin_profiles()) {
    if (!names.empty()) names += ", ";
    names += profile.name;
  }
  return names;
}

int kv_blocks_for(const Profile& profile, int block_size) {
  double kv_bytes =
      (profile.gpu_memory_gb * profile.gpu_memory_utilization - profile.weights_gb - profile.reserved_gb) * 1e9;
  if (kv_bytes <= 0 || profile.kv_bytes_per_token <= 0 || block_size < 1) return 0;
  return static_cast<int>(std::floor(kv_bytes / (profile.kv_bytes_per_token * block_size)));
}

}  // namespace nebula::sim
