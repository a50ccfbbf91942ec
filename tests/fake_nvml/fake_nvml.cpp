// A stand-in for NVIDIA's libnvidia-ml.so.1 with two fixed GPUs, so NvmlProbe is tested through
// dlopen on machines without a GPU. It exports only the entry points Nebula resolves, with
// NVML's C ABI. FAKE_NVML_INIT_ERROR=N makes nvmlInit_v2 fail with NVML error N.
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {
struct FakeGpu {
  const char* name;
  const char* uuid;
  unsigned long long total_bytes;
  unsigned long long used_bytes;
  unsigned int utilization;
  unsigned int temperature;
  unsigned int power_mw;  // 0: power reading "not supported"
};

constexpr unsigned long long kMiB = 1024ull * 1024;
const FakeGpu kGpus[] = {
    {"NVIDIA H100 80GB HBM3", "GPU-fake-0000", 81559ull * kMiB, 1024ull * kMiB, 37, 45, 123456},
    {"NVIDIA A10", "GPU-fake-0001", 23028ull * kMiB, 0, 0, 30, 0},
};
constexpr unsigned int kCount = sizeof kGpus / sizeof kGpus[0];

// NVML's codes: SUCCESS 0, UNINITIALIZED 1, INVALID_ARGUMENT 2, NOT_SUPPORTED 3, INSUFFICIENT_SIZE 7.
int initialised = 0;

const FakeGpu* device(void* handle) {
  for (const auto& gpu : kGpus) {
    if (handle == &gpu) return &gpu;
  }
  return nullptr;
}

int copy(const char* text, char* buffer, unsigned int length) {
  if (!buffer) return 2;
  if (std::strlen(text) + 1 > length) return 7;
  std::strcpy(buffer, text);
  return 0;
}
}  // namespace

extern "C" {

struct nvmlMemory_t {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
struct nvmlUtilization_t {
  unsigned int gpu;
  unsigned int memory;
};

__attribute__((visibility("default"))) int nvmlInit_v2() {
  if (const char* error = std::getenv("FAKE_NVML_INIT_ERROR")) return std::atoi(error);
  ++initialised;
  return 0;
}

__attribute__((visibility("default"))) int nvmlShutdown() {
  if (initialised == 0) return 1;
  --initialised;
  return 0;
}

__attribute__((visibility("default"))) const char* nvmlErrorString(int code) {
  switch (code) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 9: return "Driver Not Loaded";
    default: return "Unknown Error";
  }
}

__attribute__((visibility("default"))) int nvmlSystemGetDriverVersion(char* version, unsigned int length) {
  if (!initialised) return 1;
  return copy("550.54.15", version, length);
}

__attribute__((visibility("default"))) int nvmlDeviceGetCount_v2(unsigned int* count) {
  if (!initialised) return 1;
  if (!count) return 2;
  *count = kCount;
  return 0;
}

__attribute__((visibility("default"))) int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void** handle) {
  if (!initialised) return 1;
  if (index >= kCount || !handle) return 2;
  *handle = const_cast<FakeGpu*>(&kGpus[index]);
  return 0;
}

__attribute__((visibility("default"))) int nvmlDeviceGetName(void* handle, char* name, unsigned int length) {
  const FakeGpu* gpu = device(handle);
  return gpu ? copy(gpu->name, name, length) : 2;
}

__attribute__((visibility("default"))) int nvmlDeviceGetUUID(void* handle, char* uuid, unsigned int length) {
  const FakeGpu* gpu = device(handle);
  return gpu ? copy(gpu->uuid, uuid, length) : 2;
}

__attribute__((visibility("default"))) int nvmlDeviceGetMemoryInfo(void* handle, nvmlMemory_t* memory) {
  const FakeGpu* gpu = device(handle);
  if (!gpu || !memory) return 2;
  memory->total = gpu->total_bytes;
  memory->used = gpu->used_bytes;
  memory->free = gpu->total_bytes - gpu->used_bytes;
  return 0;
}

__attribute__((visibility("default"))) int nvmlDeviceGetUtilizationRates(void* handle, nvmlUtilization_t* rates) {
  const FakeGpu* gpu = device(handle);
  if (!gpu || !rates) return 2;
  rates->gpu = gpu->utilization;
  rates->memory = gpu->utilization / 2;
  return 0;
}

__attribute__((visibility("default"))) int nvmlDeviceGetTemperature(void* handle, int sensor,
                                                                    unsigned int* temperature) {
  const FakeGpu* gpu = device(handle);
  if (!gpu || !temperature || sensor != 0) return 2;
  *temperature = gpu->temperature;
  return 0;
}

__attribute__((visibility("default"))) int nvmlDeviceGetPowerUsage(void* handle, unsigned int* power) {
  const FakeGpu* gpu = device(handle);
  if (!gpu || !power) return 2;
  if (gpu->power_mw == 0) return 3;
  *power = gpu->power_mw;
  return 0;
}

// For tests: how many nvmlInit_v2 calls have not been matched by nvmlShutdown.
__attribute__((visibility("default"))) int fake_nvml_init_count() {
  return initialised;
}

}  // extern "C"
