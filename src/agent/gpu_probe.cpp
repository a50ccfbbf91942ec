#include "agent/gpu_probe.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "agent/process.h"
#include "common/subprocess.h"

namespace nebula::agent {

api::Gpu to_api_gpu(const GpuInfo& gpu) {
  api::Gpu out;
  out.index = gpu.index;
  out.uuid = gpu.uuid;
  out.name = gpu.name;
  out.memory_total_mb = gpu.memory_total_mb;
  out.memory_used_mb = gpu.memory_used_mb;
  out.utilization = gpu.utilization;
  out.temperature_c = gpu.temperature_c;
  return out;
}

std::vector<api::Gpu> to_api_gpus(const std::vector<GpuInfo>& gpus) {
  std::vector<api::Gpu> out;
  out.reserve(gpus.size());
  for (const auto& gpu : gpus) out.push_back(to_api_gpu(gpu));
  return out;
}

// ---------------------------------------------------------------------------------------------
// NVML. The types and constants below are NVML's documented ABI (nvml.h); declaring them here
// keeps the build free of the CUDA toolkit.

namespace {
using nvmlReturn_t = int;
constexpr nvmlReturn_t kNvmlSuccess = 0;
constexpr nvmlReturn_t kNvmlNotSupported = 3;
constexpr unsigned int kNvmlTemperatureGpu = 0;  // NVML_TEMPERATURE_GPU
constexpr unsigned int kNvmlNameBuffer = 96;     // NVML_DEVICE_NAME_V2_BUFFER_SIZE
constexpr unsigned int kNvmlUuidBuffer = 96;     // NVML_DEVICE_UUID_V2_BUFFER_SIZE
constexpr unsigned int kNvmlDriverBuffer = 80;   // NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE

struct nvmlDevice_st;
using nvmlDevice_t = nvmlDevice_st*;

struct nvmlMemory_t {
  unsigned long long total;  // bytes
  unsigned long long free;
  unsigned long long used;
};

struct nvmlUtilization_t {
  unsigned int gpu;  // percent
  unsigned int memory;
};

constexpr int64_t kMiB = 1024 * 1024;
}  // namespace

struct NvmlProbe::Api {
  nvmlReturn_t (*init)() = nullptr;
  nvmlReturn_t (*shutdown)() = nullptr;
  const char* (*error_string)(nvmlReturn_t) = nullptr;  // optional
  nvmlReturn_t (*device_count)(unsigned int*) = nullptr;
  nvmlReturn_t (*handle_by_index)(unsigned int, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*device_name)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*device_uuid)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*memory_info)(nvmlDevice_t, nvmlMemory_t*) = nullptr;
  nvmlReturn_t (*utilization)(nvmlDevice_t, nvmlUtilization_t*) = nullptr;
  nvmlReturn_t (*temperature)(nvmlDevice_t, unsigned int, unsigned int*) = nullptr;
  nvmlReturn_t (*power_usage)(nvmlDevice_t, unsigned int*) = nullptr;  // milliwatts
  nvmlReturn_t (*driver_version)(char*, unsigned int) = nullptr;

  std::string describe(nvmlReturn_t code) const {
    const char* text = error_string ? error_string(code) : nullptr;
    return text ? fmt::format("{} (NVML error {})", text, code) : fmt::format("NVML error {}", code);
  }
};

namespace {
template <typename Function>
bool resolve(void* handle, const char* symbol, Function& target, std::string& missing) {
  target = reinterpret_cast<Function>(dlsym(handle, symbol));
  if (!target) missing += (missing.empty() ? "" : ", ") + std::string(symbol);
  return target != nullptr;
}
}  // namespace

Result<std::unique_ptr<NvmlProbe>> NvmlProbe::load(const std::string& library) {
  dlerror();
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* reason = dlerror();
    return make_error(ErrorCode::Unavailable,
                      fmt::format("cannot load NVML ({}): {}", library, reason ? reason : "unknown reason"));
  }
  auto api = std::make_unique<Api>();
  std::string missing;
  resolve(handle, "nvmlInit_v2", api->init, missing);
  resolve(handle, "nvmlShutdown", api->shutdown, missing);
  resolve(handle, "nvmlDeviceGetCount_v2", api->device_count, missing);
  resolve(handle, "nvmlDeviceGetHandleByIndex_v2", api->handle_by_index, missing);
  resolve(handle, "nvmlDeviceGetName", api->device_name, missing);
  resolve(handle, "nvmlDeviceGetUUID", api->device_uuid, missing);
  resolve(handle, "nvmlDeviceGetMemoryInfo", api->memory_info, missing);
  resolve(handle, "nvmlDeviceGetUtilizationRates", api->utilization, missing);
  resolve(handle, "nvmlDeviceGetTemperature", api->temperature, missing);
  resolve(handle, "nvmlDeviceGetPowerUsage", api->power_usage, missing);
  resolve(handle, "nvmlSystemGetDriverVersion", api->driver_version, missing);
  if (!missing.empty()) {
    dlclose(handle);
    return make_error(ErrorCode::Unavailable, fmt::format("{} lacks NVML functions: {}", library, missing));
  }
  std::string optional_missing;
  resolve(handle, "nvmlErrorString", api->error_string, optional_missing);
  nvmlReturn_t code = api->init();
  if (code != kNvmlSuccess) {
    std::string reason = api->describe(code);
    dlclose(handle);
    return make_error(ErrorCode::Unavailable, fmt::format("nvmlInit failed: {}", reason));
  }
  return std::unique_ptr<NvmlProbe>(new NvmlProbe(handle, std::move(api)));
}

NvmlProbe::NvmlProbe(void* handle, std::unique_ptr<Api> api) : handle_(handle), api_(std::move(api)) {}

NvmlProbe::~NvmlProbe() {
  api_->shutdown();
  dlclose(handle_);
}

Result<std::vector<GpuInfo>> NvmlProbe::probe() {
  unsigned int count = 0;
  nvmlReturn_t code = api_->device_count(&count);
  if (code != kNvmlSuccess) {
    return make_error(ErrorCode::Unavailable, "nvmlDeviceGetCount failed: " + api_->describe(code));
  }
  std::string driver;
  char driver_buffer[kNvmlDriverBuffer] = {};
  if (api_->driver_version(driver_buffer, sizeof driver_buffer) == kNvmlSuccess) driver = driver_buffer;

  // Optional readings: a card that does not support one reports 0 for it.
  auto optional_reading = [&](nvmlReturn_t result, unsigned int index, const char* what) {
    if (result == kNvmlSuccess) return true;
    if (result != kNvmlNotSupported)
      spdlog::debug("GPU {}: reading {} failed: {}", index, what, api_->describe(result));
    return false;
  };

  std::vector<GpuInfo> gpus;
  for (unsigned int index = 0; index < count; ++index) {
    nvmlDevice_t device = nullptr;
    code = api_->handle_by_index(index, &device);
    if (code != kNvmlSuccess) {
      // A lost or inaccessible card must not hide the others; the scheduler just won't see it.
      spdlog::warn("GPU {}: skipped, nvmlDeviceGetHandleByIndex failed: {}", index, api_->describe(code));
      continue;
    }
    nvmlMemory_t memory{};
    code = api_->memory_info(device, &memory);
    if (code != kNvmlSuccess) {
      spdlog::warn("GPU {}: skipped, nvmlDeviceGetMemoryInfo failed: {}", index, api_->describe(code));
      continue;
    }
    GpuInfo gpu;
    gpu.index = static_cast<int>(index);
    gpu.memory_total_mb = static_cast<int64_t>(memory.total / kMiB);
    gpu.memory_used_mb = static_cast<int64_t>(memory.used / kMiB);
    gpu.driver_version = driver;
    char text[kNvmlNameBuffer > kNvmlUuidBuffer ? kNvmlNameBuffer : kNvmlUuidBuffer] = {};
    if (optional_reading(api_->device_name(device, text, kNvmlNameBuffer), index, "name")) gpu.name = text;
    std::memset(text, 0, sizeof text);
    if (optional_reading(api_->device_uuid(device, text, kNvmlUuidBuffer), index, "uuid")) gpu.uuid = text;
    nvmlUtilization_t utilization{};
    if (optional_reading(api_->utilization(device, &utilization), index, "utilization")) {
      gpu.utilization = utilization.gpu;
    }
    unsigned int temperature = 0;
    if (optional_reading(api_->temperature(device, kNvmlTemperatureGpu, &temperature), index, "temperature")) {
      gpu.temperature_c = temperature;
    }
    unsigned int milliwatts = 0;
    if (optional_reading(api_->power_usage(device, &milliwatts), index, "power")) gpu.power_w = milliwatts / 1000.0;
    gpus.push_back(std::move(gpu));
  }
  return gpus;
}

// ---------------------------------------------------------------------------------------------
// nvidia-smi

namespace {
constexpr const char* kSmiFields =
    "index,uuid,name,memory.total,memory.used,utilization.gpu,temperature.gpu,power.draw,driver_version";
constexpr size_t kSmiFieldCount = 9;
constexpr size_t kMaxCommandOutput = 1024 * 1024;

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t' || text.front() == '\r')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r')) text.remove_suffix(1);
  return text;
}

// nvidia-smi writes "[N/A]", "[Not Supported]", "[Unknown Error]", ... for values it cannot read.
bool unavailable(std::string_view value) {
  return value.empty() || value.front() == '[' || value == "N/A" || value == "Not Supported";
}

std::optional<double> parse_number(std::string_view value) {
  double number = 0;
  auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), number);
  if (error != std::errc() || end != value.data() + value.size() || !std::isfinite(number)) return std::nullopt;
  return number;
}

struct CommandOutput {
  int exit_code = -1;  // -1 when killed by a signal
  std::string out;
  std::string err;
};

// Runs argv (argv[0] searched on PATH) with stdin on /dev/null, collecting stdout and stderr,
// killing its process group when it outlives `timeout`.
Result<CommandOutput> run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  int out_pipe[2];
  int err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return make_error(ErrorCode::Internal, std::string("pipe: ") + strerror(errno));
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    close(out_pipe[0]);
    close(out_pipe[1]);
    return make_error(ErrorCode::Internal, std::string("pipe: ") + strerror(errno));
  }
  SpawnOptions options;
  options.argv = argv;
  options.out = Stdio::from_descriptor(out_pipe[1]);
  options.err = Stdio::from_descriptor(err_pipe[1]);
  options.new_process_group = true;
  auto spawned = spawn(options);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (!spawned) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return spawned.error();
  }
  pid_t pid = *spawned;

  CommandOutput output;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool timed_out = false;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&output.out, &output.err};
  int open_fds = 2;
  while (open_fds > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    int ready = poll(fds, 2, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buffer[4096];
      ssize_t got = read(fds[i].fd, buffer, sizeof buffer);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
        continue;
      }
      if (sinks[i]->size() < kMaxCommandOutput) sinks[i]->append(buffer, static_cast<size_t>(got));
    }
  }
  for (auto& fd : fds) {
    if (fd.fd >= 0) close(fd.fd);
  }
  // The pipes are closed, but the child may still run (it closed them, or it timed out).
  int status = 0;
  while (true) {
    pid_t reaped = waitpid(pid, &status, WNOHANG);
    if (reaped < 0 && errno == EINTR) continue;
    if (reaped != 0) break;
    if (timed_out || std::chrono::steady_clock::now() >= deadline) {
      timed_out = true;
      kill(-pid, SIGKILL);  // the whole group: a script's children hold the pipes too
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    usleep(10'000);
  }
  if (timed_out) {
    return make_error(ErrorCode::Timeout,
                      fmt::format("{} did not finish within {} ms and was killed", argv[0], timeout.count()));
  }
  output.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return output;
}

// The first line of a command's output, for an error message.
std::string first_line(const std::string& text) {
  auto line = trim(std::string_view(text).substr(0, text.find('\n')));
  return std::string(line.substr(0, 300));
}

bool on_path(const std::string& command) {
  if (command.find('/') != std::string::npos) return access(command.c_str(), X_OK) == 0;
  const char* path = std::getenv("PATH");
  std::string_view rest = path ? path : "";
  while (true) {
    size_t colon = rest.find(':');
    std::string directory(rest.substr(0, colon));
    if (directory.empty()) directory = ".";
    if (access((directory + "/" + command).c_str(), X_OK) == 0) return true;
    if (colon == std::string_view::npos) return false;
    rest.remove_prefix(colon + 1);
  }
}
}  // namespace

const char* NvidiaSmiProbe::query_fields() {
  return kSmiFields;
}

Result<std::vector<GpuInfo>> NvidiaSmiProbe::parse(const std::string& csv) {
  static const char* const kNames[kSmiFieldCount] = {"index",           "uuid",        "name",
                                                     "memory.total",    "memory.used", "utilization.gpu",
                                                     "temperature.gpu", "power.draw",  "driver_version"};
  std::vector<GpuInfo> gpus;
  std::string_view rest = csv;
  int line_number = 0;
  while (!rest.empty()) {
    size_t newline = rest.find('\n');
    std::string_view line = trim(rest.substr(0, newline));
    rest.remove_prefix(newline == std::string_view::npos ? rest.size() : newline + 1);
    ++line_number;
    if (line.empty()) continue;
    std::vector<std::string_view> fields;
    std::string_view remaining = line;
    while (true) {
      size_t comma = remaining.find(',');
      fields.push_back(trim(remaining.substr(0, comma)));
      if (comma == std::string_view::npos) break;
      remaining.remove_prefix(comma + 1);
    }
    auto bad = [&](const std::string& why) {
      return make_error(ErrorCode::Internal,
                        fmt::format("cannot parse nvidia-smi output line {} '{}': {}", line_number, line, why));
    };
    if (fields.size() != kSmiFieldCount) {
      return bad(fmt::format("expected {} fields ({}), got {}", kSmiFieldCount, kSmiFields, fields.size()));
    }
    double numbers[kSmiFieldCount] = {};
    for (size_t i : {0, 3, 4, 5, 6, 7}) {
      if (unavailable(fields[i])) {
        if (i == 0) return bad("the index is missing");
        continue;
      }
      auto number = parse_number(fields[i]);
      if (!number || *number < 0) return bad(fmt::format("{} is not a number: '{}'", kNames[i], fields[i]));
      numbers[i] = *number;
    }
    GpuInfo gpu;
    gpu.index = static_cast<int>(numbers[0]);
    if (gpu.index != numbers[0]) return bad("the index is not an integer");
    gpu.uuid = unavailable(fields[1]) ? "" : std::string(fields[1]);
    gpu.name = unavailable(fields[2]) ? "" : std::string(fields[2]);
    gpu.memory_total_mb = static_cast<int64_t>(numbers[3]);
    gpu.memory_used_mb = static_cast<int64_t>(numbers[4]);
    gpu.utilization = numbers[5];
    gpu.temperature_c = numbers[6];
    gpu.power_w = numbers[7];
    gpu.driver_version = unavailable(fields[8]) ? "" : std::string(fields[8]);
    gpus.push_back(std::move(gpu));
  }
  return gpus;
}

Result<std::vector<GpuInfo>> NvidiaSmiProbe::probe() {
  std::vector<std::string> argv = {command_, std::string("--query-gpu=") + kSmiFields, "--format=csv,noheader,nounits"};
  auto output = run_command(argv, timeout_);
  if (!output) return output.error();
  if (output->exit_code != 0) {
    // nvidia-smi exits 6 with "No devices were found" on a machine whose driver sees no card.
    if (output->out.find("No devices were found") != std::string::npos ||
        output->err.find("No devices were found") != std::string::npos) {
      return std::vector<GpuInfo>{};
    }
    std::string message = first_line(output->err.empty() ? output->out : output->err);
    return make_error(ErrorCode::Unavailable, fmt::format("{} exited with {}{}{}", command_, output->exit_code,
                                                          message.empty() ? "" : ": ", message));
  }
  return parse(output->out);
}

// ---------------------------------------------------------------------------------------------

Result<std::unique_ptr<SimProbe>> SimProbe::create(const std::string& spec, const std::string& node_name) {
  auto parsed = parse_sim_gpus(spec, node_name);
  if (!parsed) return parsed.error();
  std::vector<GpuInfo> gpus;
  for (const auto& gpu : *parsed) {
    GpuInfo info;
    info.index = gpu.index;
    info.uuid = gpu.uuid;
    info.name = gpu.name;
    info.memory_total_mb = gpu.memory_total_mb;
    info.memory_used_mb = gpu.memory_used_mb;
    info.utilization = gpu.utilization;
    info.temperature_c = gpu.temperature_c;
    gpus.push_back(std::move(info));
  }
  return std::unique_ptr<SimProbe>(new SimProbe(std::move(gpus)));
}

Result<std::unique_ptr<GpuProbe>> make_gpu_probe(const GpuProbeOptions& options) {
  if (!options.sim_gpus.empty()) {
    auto sim = SimProbe::create(options.sim_gpus, options.node_name);
    if (!sim) return sim.error();
    spdlog::info("GPU probe: simulated GPUs {}", options.sim_gpus);
    return std::unique_ptr<GpuProbe>(std::move(sim.value()));
  }
  auto nvml = NvmlProbe::load(options.nvml_library);
  if (nvml) {
    spdlog::info("GPU probe: NVML ({})", options.nvml_library);
    return std::unique_ptr<GpuProbe>(std::move(nvml.value()));
  }
  if (on_path(options.nvidia_smi)) {
    spdlog::info("GPU probe: {} ({})", options.nvidia_smi, nvml.error().message);
    return std::unique_ptr<GpuProbe>(std::make_unique<NvidiaSmiProbe>(options.nvidia_smi));
  }
  spdlog::info("GPU probe: none, a CPU-only node ({}; no {} on PATH)", nvml.error().message, options.nvidia_smi);
  return std::unique_ptr<GpuProbe>(std::make_unique<NoGpuProbe>());
}

Result<std::unique_ptr<GpuProbe>> make_gpu_probe(const std::string& sim_gpus, const std::string& node_name) {
  GpuProbeOptions options;
  options.sim_gpus = sim_gpus;
  options.node_name = node_name;
  return make_gpu_probe(options);
}

}  // namespace nebula::agent
