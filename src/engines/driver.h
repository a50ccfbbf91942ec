#pragma once
// Engine drivers: one per engine Nebula can run (vllm, sglang, llamacpp, tgi, ollama, docker,
// command, sim), behind one interface. A driver knows how to launch its engine (argv and
// environment, GPU pinning), how to tell it is ready, how to read its load from its metrics,
// and how to sleep and wake it where the engine can. The agent does the supervising; drivers
// hold no per-replica state, so one instance serves every replica of its engine.
//
// Added since the first version of this interface (existing names unchanged):
// - EngineConfig::docker_socket, EngineConfig::allowed_mounts (docker driver).
// - LaunchContext::sleep_mode (vllm: launch with sleep mode on, default true) and
//   LaunchContext::sleep_level (the level the replica was put to sleep at; vllm's wake needs it).
// - ContainerSpec, EngineDriver::runs_in_container() and EngineDriver::container(): the docker
//   driver describes a container instead of a command; engines/docker.h runs it.
// - EngineDriver::is_sleeping().
// - Availability::features / LaunchContext::features (what detect() found the node's build can do,
//   e.g. llama-server's router mode), LaunchContext::work_dir, LaunchContext::ready_timeout,
//   Command::files (written by the agent before launch), can_sleep(context) and
//   load(client, endpoint, context) for engines whose answer depends on the launch.
//
// The sequence the agent follows for a replica:
//   command() (or container()) -> launch -> probe() until Ready -> prepare() -> Ready
//   -> load() periodically; sleep()/wake() when asked -> stop.
// probe() reports the HTTP endpoint only: Down = nothing answers (not listening yet, or gone),
// Loading = it answers but is not ready. The agent combines that with the process's liveness and
// its startup timeout. docs/engines.md has each engine's flags and endpoints.
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/asio.h"
#include "common/result.h"

namespace nebula::http {
class Client;
}

namespace nebula::engines {

// Per-node engine configuration (agent.yaml `engines:` or flags): the binary (or image for
// docker) to use, and extra arguments always passed.
struct EngineConfig {
  std::string binary;  // "" = the engine's default name looked up on PATH (or image for docker)
  std::vector<std::string> extra_args;
  std::map<std::string, std::string> env;
  // command driver only: the argv template, with {port} {model} {gpus} {max_context} {served_name}
  // {host} (and {num_gpus}); docker: the container command when the deployment gives none.
  std::vector<std::string> command_template;
  // docker only: the Docker Engine API socket, and the host directories containers may bind-mount
  // (a mount outside them is refused; empty = no mounts at all).
  std::string docker_socket = "/var/run/docker.sock";
  std::vector<std::string> allowed_mounts;
};

// Everything a driver needs to build one replica's launch.
struct LaunchContext {
  std::string replica;      // replica name (container name for docker)
  std::string served_name;  // the name clients use: the deployment name
  std::string model;        // what to load: a local path after preparation, or an id/tag
  std::vector<int> gpus;    // GPU indices on the node; empty = CPU
  std::string host = "127.0.0.1";
  int port = 0;
  int max_context = 0;  // 0 = the engine's default
  int max_seqs = 0;     // 0 = the engine's default
  double gpu_memory_utilization = 0;
  std::vector<std::string> engine_args;  // the deployment's own engine args, appended last
  std::map<std::string, std::string> env;
  std::string nebula_binary;  // the sim driver runs `<nebula_binary> engine-sim`
  EngineConfig config;
  // vllm: launch with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1 so sleep() works.
  bool sleep_mode = true;
  // The level sleep() was last called with; wake() after level 2 must reload the weights (vllm).
  int sleep_level = 1;
  // A directory that belongs to this replica, which the agent creates ("" = none): where a
  // driver puts the files it asks for in Command::files.
  std::string work_dir;
  // What detect() found this node's build of the engine can do (Availability::features).
  std::vector<std::string> features;
  // How long prepare() and wake() may wait for the engine to load its model; 0 = the driver's own.
  std::chrono::milliseconds ready_timeout{0};

  bool has_feature(const std::string& feature) const;
};

struct Command {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;  // added to the agent's environment
  // Files the agent writes before starting the process: absolute path (inside
  // LaunchContext::work_dir) -> contents. A file that cannot be written fails the launch.
  std::map<std::string, std::string> files;
};

struct Mount {
  std::string source;  // host path
  std::string target;  // path in the container
  bool read_only = false;
};

// A container for the Docker Engine API (engines/docker.h). The last three fields exist so that a
// request for them can be refused by validate_container_spec(); they are never sent.
struct ContainerSpec {
  std::string name;  // the replica
  std::string image;
  std::vector<std::string> cmd;  // empty = the image's default command
  std::map<std::string, std::string> env;
  std::map<std::string, std::string> labels;
  std::string host_ip = "127.0.0.1";
  int host_port = 0;          // published on host_ip:host_port
  int container_port = 8000;  // where the engine listens inside the container
  std::vector<int> gpus;      // -> HostConfig.DeviceRequests (driver nvidia)
  std::vector<Mount> mounts;  // -> HostConfig.Binds
  std::optional<int64_t> shm_size_bytes;
  bool privileged = false;
  std::string network_mode;  // "" = Docker's default bridge
  std::string ipc_mode;      // "" = Docker's default
};

enum class Readiness { Ready, Loading, Down };

// Load read from the engine's metrics; a field the engine does not expose stays nullopt.
struct Load {
  std::optional<double> running;
  std::optional<double> waiting;
  std::optional<double> kv_cache_usage;   // 0..1
  std::optional<double> prefix_hit_rate;  // 0..1, over the engine's lifetime
};

// What `nebula agent` found for an engine on this node.
struct Availability {
  bool available = false;
  std::string version;  // as the binary reports it, "" when unknown
  std::string detail;   // why not, or where it was found
  // What this build can do beyond the basics, in the driver's words (llamacpp: "router" when
  // llama-server has router mode). The agent hands it back in LaunchContext::features.
  std::vector<std::string> features;
};

class EngineDriver {
 public:
  virtual ~EngineDriver() = default;
  virtual std::string name() const = 0;

  // Is the engine installed here (binary on PATH / docker socket answering), and which version.
  // Blocks for at most a few seconds (it runs `BINARY --version`); call it off the I/O threads.
  virtual Availability detect(const EngineConfig& config) const = 0;

  // argv and environment for a process-based engine. GPU pinning goes through
  // CUDA_VISIBLE_DEVICES. An error names what is missing (e.g. a command template without {port}).
  virtual Result<Command> command(const LaunchContext& context) const = 0;

  // True for engines that run as containers (docker): use container() instead of command().
  virtual bool runs_in_container() const { return false; }
  virtual Result<ContainerSpec> container(const LaunchContext& context) const;

  // Is it ready to serve? endpoint is "http://host:port".
  virtual awaitable<Readiness> probe(http::Client& client, std::string endpoint) const = 0;

  // Work to do after the process is up and before it is ready (Ollama pulls its model here).
  virtual awaitable<Status> prepare(http::Client& client, std::string endpoint, LaunchContext context) const;

  // Load from the engine's metrics endpoint.
  virtual awaitable<Result<Load>> load(http::Client& client, std::string endpoint) const = 0;
  // The same for one launch, for engines that must be told which model to report on (llama.cpp's
  // router wants /metrics?model=NAME). Defaults to load(client, endpoint). The agent calls this one.
  virtual awaitable<Result<Load>> load(http::Client& client, std::string endpoint, LaunchContext context) const;

  // Sleep (level 1 or 2) and wake, where the engine has it; otherwise an InvalidArgument error.
  virtual bool can_sleep() const { return false; }
  // Whether this launch can sleep (llama.cpp only in router mode). Defaults to can_sleep(). An
  // engine that cannot is stopped by the agent while its deployment is idle, and started again on
  // wake. The agent calls this one.
  virtual bool can_sleep(const LaunchContext& context) const { return can_sleep(); }
  virtual awaitable<Status> sleep(http::Client& client, std::string endpoint, int level, LaunchContext context) const;
  virtual awaitable<Status> wake(http::Client& client, std::string endpoint, LaunchContext context) const;
  virtual awaitable<Result<bool>> is_sleeping(http::Client& client, std::string endpoint, LaunchContext context) const;
};

// The driver for an engine name, or nullptr. Names: vllm sglang llamacpp tgi ollama docker command sim.
const EngineDriver* find_driver(const std::string& engine);
std::vector<std::string> driver_names();

}  // namespace nebula::engines
