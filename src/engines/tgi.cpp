// Hugging Face TGI: `text-generation-launcher --model-id M --hostname H --port P ...`, /health,
// /metrics (tgi_queue_size, tgi_batch_current_size). No sleep.
//
// max_seqs has no TGI flag with the same meaning (TGI batches by tokens, and
// --max-concurrent-requests rejects rather than queues), so it is not passed; pass TGI's own
// flags as engine args when needed.
#include "engines/common.h"
#include "engines/drivers.h"

namespace nebula::engines {
namespace {

class TgiDriver final : public HealthMetricsDriver {
 public:
  std::string name() const override { return "tgi"; }

  Availability detect(const EngineConfig& config) const override {
    return detect_binary(binary(config), {"--version"});
  }

  Result<Command> command(const LaunchContext& context) const override {
    if (context.model.empty()) return Error{ErrorCode::InvalidArgument, "tgi needs a model id"};
    Command command;
    auto& argv = command.argv;
    argv = {binary(context.config),      "--model-id", context.model, "--hostname", context.host, "--port",
            std::to_string(context.port)};
    if (!context.gpus.empty()) {
      argv.push_back("--num-shard");
      argv.push_back(std::to_string(context.gpus.size()));
    }
    if (context.max_context > 0) {
      // A request's prompt may use all but one token of the context; the rest is its output.
      argv.push_back("--max-input-tokens");
      argv.push_back(std::to_string(std::max(1, context.max_context - 1)));
      argv.push_back("--max-total-tokens");
      argv.push_back(std::to_string(context.max_context));
    }
    if (context.gpu_memory_utilization > 0) {
      argv.push_back("--cuda-memory-fraction");
      argv.push_back(flag_number(context.gpu_memory_utilization));
    }
    append_user_args(argv, context);
    command.env = base_env(context);
    return command;
  }

  Load load_from(const Metrics& metrics) const override { return tgi_load(metrics); }

 private:
  static std::string binary(const EngineConfig& config) {
    return config.binary.empty() ? "text-generation-launcher" : config.binary;
  }
};

}  // namespace

Load tgi_load(const Metrics& metrics) {
  Load load;
  load.running = metrics.sum("tgi_batch_current_size");
  load.waiting = metrics.sum("tgi_queue_size");
  return load;
}

const EngineDriver& tgi_driver() {
  static const TgiDriver driver;
  return driver;
}

}  // namespace nebula::engines
