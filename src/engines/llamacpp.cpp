// llama.cpp: `llama-server -m FILE --host H --port P -c CTX ...`. /health answers 503 "Loading
// model" until the model is loaded; /metrics exists only with --metrics (always passed here).
//
// Sleep: llama-server's router mode can unload and load models (POST /models/unload, /models/load),
// but only when started without -m. This driver starts one model per process, which has no such
// endpoints, so it cannot sleep; an idle llama.cpp deployment is stopped instead.
#include "engines/common.h"
#include "engines/drivers.h"

namespace nebula::engines {
namespace {

class LlamacppDriver final : public HealthMetricsDriver {
 public:
  std::string name() const override { return "llamacpp"; }

  Availability detect(const EngineConfig& config) const override {
    return detect_binary(config.binary.empty() ? "llama-server" : config.binary, {"--version"});
  }

  // -c is the context of all slots together: each of the --parallel slots gets c / parallel
  // tokens, so a max_context per request with max_seqs slots needs -c max_context x max_seqs.
  Result<Command> command(const LaunchContext& context) const override {
    if (context.model.empty()) return Error{ErrorCode::InvalidArgument, "llamacpp needs a model file (-m)"};
    Command command;
    auto& argv = command.argv;
    argv = {context.config.binary.empty() ? "llama-server" : context.config.binary,
            "-m",
            context.model,
            "--host",
            context.host,
            "--port",
            std::to_string(context.port),
            "--alias",
            context.served_name.empty() ? context.model : context.served_name,
            "--metrics"};
    if (context.max_context > 0) {
      argv.push_back("-c");
      argv.push_back(std::to_string(static_cast<int64_t>(context.max_context) * std::max(1, context.max_seqs)));
    }
    if (context.max_seqs > 0) {
      argv.push_back("--parallel");
      argv.push_back(std::to_string(context.max_seqs));
    }
    if (!context.gpus.empty()) {
      argv.push_back("-ngl");
      argv.push_back("999");  // every layer on the GPU(s)
    }
    append_user_args(argv, context);
    command.env = base_env(context);
    return command;
  }

  Load load_from(const Metrics& metrics) const override { return llamacpp_load(metrics); }
};

}  // namespace

Load llamacpp_load(const Metrics& metrics) {
  Load load;
  load.running = metrics.sum("llamacpp:requests_processing");
  load.waiting = metrics.sum("llamacpp:requests_deferred");
  load.kv_cache_usage = metrics.mean("llamacpp:kv_cache_usage_ratio");  // older builds only
  return load;
}

const EngineDriver& llamacpp_driver() {
  static const LlamacppDriver driver;
  return driver;
}

}  // namespace nebula::engines
