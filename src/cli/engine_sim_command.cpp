// `nebula engine-sim`: the engine simulator as a standalone server.
#include "cli/cli.h"
#include "common/log.h"
#include "sim/sim.h"

namespace nebula::cli {

int run_engine_sim_command(int argc, char** argv) {
  CLI::App app{"Run the engine simulator: an OpenAI-compatible server that behaves like vLLM", "nebula engine-sim"};
  sim::SimOptions options;
  std::string log_level = "info";
  app.add_option("--host", options.host, "Address to listen on")->capture_default_str();
  app.add_option("--port", options.port, "Port to listen on")->capture_default_str();
  app.add_option("--model", options.model, "Served model name")->capture_default_str();
  app.add_option("--mode", options.mode, "Output text: lorem or echo")
      ->check(CLI::IsMember({"lorem", "echo"}))
      ->capture_default_str();
  app.add_option("--seed", options.seed, "Seed for generated text")->capture_default_str();
  app.add_option("--startup-seconds", options.startup_seconds, "Answer 503 on /health this long after start")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-model-len", options.max_model_len, "Context length (prompt + output tokens)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--default-max-tokens", options.default_max_tokens, "Output tokens when a request sets none")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--ttft-base-ms", options.ttft_base_ms, "Fixed part of the time to first token")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--prefill-ms-per-token", options.prefill_ms_per_token, "Time to first token per prompt token")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--itl-ms", options.itl_ms, "Inter-token latency of a lone sequence")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--itl-ms-per-running-seq", options.itl_ms_per_running_seq,
                 "Extra inter-token latency per other running sequence")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn or error")->capture_default_str();
  if (auto exit = parse(app, argc, argv)) return *exit;
  init_logging(log_level);
  return sim::run_engine_sim(options);
}

}  // namespace nebula::cli
