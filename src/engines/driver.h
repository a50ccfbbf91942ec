#pragma once
// Engine drivers: one per engine Nebula can run (vllm, sglang, llamacpp, tgi, ollama, docker,
// command, sim), behind one interface. A driver knows how to launch its engine (argv and
// environment, GPU pinning), how to tell it is ready, how to read its load from its metrics,
// and how to sleep and wake it where the engine can. The agent does the supervising; drivers
// hold no per-replica state, so one instance serves every replica of its engine.
#include <chrono>
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
  std::vector<std::string> command_template;
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
};

struct Command {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;  // added to the agent's environment
};

enum class Readiness { Ready, Loading, Down };

// Load read from the engine's metrics; a field the engine does not expose stays nullopt.
struct Load {
  std::optional<double> running;
  std::optional<double> waiting;
  std::optional<double> kv_cache_usage;   // 0..1
  std::optional<double> prefix_hit_rate;  // 0..1
};

// What `nebula agent` found for an engine on this node.
struct Availability {
  bool available = false;
  std::string version;  // as the binary reports it, "" when unknown
  std::string detail;   // why not, or where it was found
};

class EngineDriver {
 public:
  virtual ~EngineDriver() = default;
  virtual std::string name() const = 0;

  // Is the engine installed here (binary on PATH / docker socket answering), and which version.
  virtual Availability detect(const EngineConfig& config) const = 0;

  // argv and environment for a process-based engine. GPU pinning goes through
  // CUDA_VISIBLE_DEVICES. An error names what is missing (e.g. a command template without {port}).
  virtual Result<Command> command(const LaunchContext& context) const = 0;

  // Is it ready to serve? endpoint is "http://host:port".
  virtual awaitable<Readiness> probe(http::Client& client, std::string endpoint) const = 0;

  // Work to do after the process is up and before it is ready (Ollama pulls its model here).
  virtual awaitable<Status> prepare(http::Client& client, std::string endpoint, LaunchContext context) const;

  // Load from the engine's metrics endpoint.
  virtual awaitable<Result<Load>> load(http::Client& client, std::string endpoint) const = 0;

  // Sleep (level 1 or 2) and wake, where the engine has it; otherwise an Unsupported error.
  virtual bool can_sleep() const { return false; }
  virtual awaitable<Status> sleep(http::Client& client, std::string endpoint, int level, LaunchContext context) const;
  virtual awaitable<Status> wake(http::Client& client, std::string endpoint, LaunchContext context) const;
};

// The driver for an engine name, or nullptr. Names: vllm sglang llamacpp tgi ollama docker command sim.
const EngineDriver* find_driver(const std::string& engine);
std::vector<std::string> driver_names();

}  // namespace nebula::engines
