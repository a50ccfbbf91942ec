#pragma once
// GPU discovery: the GpuProbe seam and its implementations. NVML is loaded at run time with
// dlopen, so the binary builds and runs on machines without NVIDIA's driver; nvidia-smi is the
// fallback when the library cannot be loaded; simulated GPUs come from --sim-gpus.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "api/api.h"
#include "common/result.h"

namespace nebula::agent {

// One GPU as a probe sees it. Values a driver does not support (power on some cards) are 0.
struct GpuInfo {
  int index = 0;
  std::string uuid;
  std::string name;
  int64_t memory_total_mb = 0;  // MiB
  int64_t memory_used_mb = 0;   // MiB
  double utilization = 0;       // percent
  double temperature_c = 0;
  double power_w = 0;
  std::string driver_version;  // the node's driver, the same on every GPU; "" when unknown
};

api::Gpu to_api_gpu(const GpuInfo& gpu);
std::vector<api::Gpu> to_api_gpus(const std::vector<GpuInfo>& gpus);

class GpuProbe {
 public:
  virtual ~GpuProbe() = default;
  // The GPUs right now. Blocking (nvidia-smi may take a second): call it off the I/O threads.
  virtual Result<std::vector<GpuInfo>> probe() = 0;
  // "nvml", "nvidia-smi", "sim" or "none": for logs and the node's status.
  virtual std::string name() const = 0;
};

inline constexpr const char* kNvmlLibrary = "libnvidia-ml.so.1";

// NVML through dlopen. The library stays loaded and initialised while the probe lives.
class NvmlProbe final : public GpuProbe {
 public:
  // Loads `library` (a file name searched like dlopen does, or a path) and initialises NVML.
  // Fails with Unavailable and the loader's or NVML's reason when either step fails.
  static Result<std::unique_ptr<NvmlProbe>> load(const std::string& library = kNvmlLibrary);
  ~NvmlProbe() override;
  NvmlProbe(const NvmlProbe&) = delete;
  NvmlProbe& operator=(const NvmlProbe&) = delete;

  Result<std::vector<GpuInfo>> probe() override;
  std::string name() const override { return "nvml"; }

  struct Api;  // the resolved NVML entry points

 private:
  NvmlProbe(void* handle, std::unique_ptr<Api> api);
  void* handle_;
  std::unique_ptr<Api> api_;
};

// Runs `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` (found on PATH) and parses it.
class NvidiaSmiProbe final : public GpuProbe {
 public:
  explicit NvidiaSmiProbe(std::string command = "nvidia-smi",
                          std::chrono::milliseconds timeout = std::chrono::seconds(10))
      : command_(std::move(command)), timeout_(timeout) {}
  Result<std::vector<GpuInfo>> probe() override;
  std::string name() const override { return "nvidia-smi"; }

  // The --query-gpu fields, in the order parse() expects them.
  static const char* query_fields();
  // Parses the CSV output: one GPU per non-empty line. "[N/A]", "[Not Supported]" and the like
  // read as 0; a line with the wrong number of fields or a non-numeric value fails the whole parse.
  static Result<std::vector<GpuInfo>> parse(const std::string& csv);

 private:
  std::string command_;
  std::chrono::milliseconds timeout_;
};

// Simulated GPUs from a --sim-gpus spec ("2xH100-80GB"), parsed once at construction.
class SimProbe final : public GpuProbe {
 public:
  static Result<std::unique_ptr<SimProbe>> create(const std::string& spec, const std::string& node_name);
  Result<std::vector<GpuInfo>> probe() override { return gpus_; }
  std::string name() const override { return "sim"; }

 private:
  explicit SimProbe(std::vector<GpuInfo> gpus) : gpus_(std::move(gpus)) {}
  std::vector<GpuInfo> gpus_;
};

// No GPUs: a CPU-only node.
class NoGpuProbe final : public GpuProbe {
 public:
  Result<std::vector<GpuInfo>> probe() override { return std::vector<GpuInfo>{}; }
  std::string name() const override { return "none"; }
};

struct GpuProbeOptions {
  std::string sim_gpus;   // non-empty: simulated GPUs, nothing real is probed
  std::string node_name;  // part of simulated GPUs' UUIDs
  std::string nvml_library = kNvmlLibrary;
  std::string nvidia_smi = "nvidia-smi";
};

// Chooses, and logs, the probe: sim when sim_gpus is set, else NVML when it loads, else
// nvidia-smi when it is on PATH, else no GPUs. Fails only on a malformed sim_gpus spec.
Result<std::unique_ptr<GpuProbe>> make_gpu_probe(const GpuProbeOptions& options);
Result<std::unique_ptr<GpuProbe>> make_gpu_probe(const std::string& sim_gpus, const std::string& node_name = "local");

}  // namespace nebula::agent
