// sim: Nebula's own engine simulator, `<nebula> engine-sim ...`, which speaks vLLM's API (health,
// metrics, sleep mode) unless its engine args choose another --dialect.
#include "engines/common.h"
#include "engines/drivers.h"

namespace nebula::engines {
namespace {

class SimDriver final : public VllmProtocolDriver {
 public:
  std::string name() const override { return "sim"; }

  Availability detect(const EngineConfig& config) const override {
    Availability availability;
    availability.available = true;
    availability.version = NEBULA_VERSION;
    availability.detail = "built into nebula";
    return availability;
  }

  // The same argv the agent has always built: engine args before the context and sequence limits.
  // gpu_memory_utilization is not passed: the simulator sizes its KV cache from its profile, and a
  // share of a simulated card could leave it too little for one sequence.
  Result<Command> command(const LaunchContext& context) const override {
    if (context.nebula_binary.empty()) return Error{ErrorCode::InvalidArgument, "sim needs the nebula binary's path"};
    Command command;
    auto& argv = command.argv;
    argv = {context.nebula_binary,
            "engine-sim",
            "--host",
            context.host,
            "--port",
            std::to_string(context.port),
            "--model",
            context.served_name.empty() ? context.model : context.served_name};
    append_user_args(argv, context);
    if (context.max_context > 0) {
      argv.push_back("--max-model-len");
      argv.push_back(std::to_string(context.max_context));
    }
    if (context.max_seqs > 0) {
      argv.push_back("--max-num-seqs");
      argv.push_back(std::to_string(context.max_seqs));
    }
    command.env = base_env(context);
    return command;
  }
};

}  // namespace

const EngineDriver& sim_driver() {
  static const SimDriver driver;
  return driver;
}

}  // namespace nebula::engines
