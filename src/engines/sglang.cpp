// SGLang: `python3 -m sglang.launch_server --model-path M --host H --port P ...`, /health, and
// /metrics when launched with --enable-metrics (always, here).
//
// SGLang can free its GPU memory (/release_memory_occupation with --enable-memory-saver), but
// REFERENCE.md does not document it as a sleep mode we rely on, so this driver cannot sleep.
#include "engines/common.h"
#include "engines/drivers.h"

namespace nebula::engines {
namespace {

class SglangDriver final : public HealthMetricsDriver {
 public:
  std::string name() const override { return "sglang"; }

  // The binary is the Python interpreter that has sglang installed.
  Availability detect(const EngineConfig& config) const override {
    return detect_binary(python(config), {"-c", "import sglang; print(sglang.__version__)"});
  }

  Result<Command> command(const LaunchContext& context) const override {
    if (context.model.empty()) return Error{ErrorCode::InvalidArgument, "sglang needs a model"};
    Command command;
    auto& argv = command.argv;
    argv = {python(context.config),
            "-m",
            "sglang.launch_server",
            "--model-path",
            context.model,
            "--host",
            context.host,
            "--port",
            std::to_string(context.port),
            "--served-model-name",
            context.served_name.empty() ? context.model : context.served_name,
            "--enable-metrics"};
    if (!context.gpus.empty()) {
      argv.push_back("--tp");
      argv.push_back(std::to_string(context.gpus.size()));
    }
    if (context.max_context > 0) {
      argv.push_back("--context-length");
      argv.push_back(std::to_string(context.max_context));
    }
    if (context.max_seqs > 0) {
      argv.push_back("--max-running-requests");
      argv.push_back(std::to_string(context.max_seqs));
    }
    if (context.gpu_memory_utilization > 0) {
      argv.push_back("--mem-fraction-static");
      argv.push_back(flag_number(context.gpu_memory_utilization));
    }
    append_user_args(argv, context);
    command.env = base_env(context);
    return command;
  }

  Load load_from(const Metrics& metrics) const override { return sglang_load(metrics); }

 private:
  static std::string python(const EngineConfig& config) { return config.binary.empty() ? "python3" : config.binary; }
};

}  // namespace

Load sglang_load(const Metrics& metrics) {
  Load load;
  load.running = metrics.sum("sglang:num_running_reqs");
  load.waiting = metrics.sum("sglang:num_queue_reqs");
  load.kv_cache_usage = metrics.mean("sglang:token_usage");
  load.prefix_hit_rate = metrics.mean("sglang:cache_hit_rate");
  return load;
}

const EngineDriver& sglang_driver() {
  static const SglangDriver driver;
  return driver;
}

}  // namespace nebula::engines
