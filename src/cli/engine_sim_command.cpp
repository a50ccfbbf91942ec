// `nebula engine-sim`: the engine simulator as a standalone server.
#include <algorithm>

#include "cli/cli.h"
#include "common/log.h"
#include "common/subprocess.h"
#include "sim/sim.h"

namespace nebula::cli {
namespace {

// An optional override: unset means "the profile's value".
template <typename T>
CLI::Option* add_override(CLI::App& app, const std::string& name, std::optional<T>& target, const std::string& help) {
  return app.add_option_function<T>(
      name, [&target](const T& value) { target = value; }, help);
}

}  // namespace

int run_engine_sim_command(int argc, char** argv) {
  CLI::App app{"Run the engine simulator: an OpenAI-compatible server that behaves like vLLM on a GPU",
               "nebula engine-sim"};
  sim::SimOptions options;
  std::string log_level = "info";
  app.add_option("--host", options.host, "Address to listen on")->capture_default_str();
  app.add_option("--port", options.port, "Port to listen on")->capture_default_str();
  app.add_option("--model", options.model, "Served model name")->capture_default_str();
  app.add_option("--mode", options.mode, "Output text: lorem or echo")
      ->check(CLI::IsMember({"lorem", "echo"}))
      ->capture_default_str();
  app.add_option("--seed", options.seed, "Seed for generated text, step noise and --fail-rate")->capture_default_str();
  app.add_flag("--log-requests", options.log_requests,
               "Log each generation request with its x-request-id and W3C traceparent");
  app.add_option("--profile", options.profile, "GPU x model preset: " + sim::profile_names())
      ->check(CLI::IsMember([] {
        std::vector<std::string> names;
        for (const auto& profile : sim::builtin_profiles()) names.push_back(profile.name);
        return names;
      }()))
      ->capture_default_str();
  app.add_option("--dialect", options.dialect, "HTTP dialect: vllm, sglang, llamacpp, tgi or ollama")
      ->check(CLI::IsMember({"vllm", "sglang", "llamacpp", "tgi", "ollama"}))
      ->capture_default_str();
  // llama-server's router mode, with llama-server's own flags, so a script can stand in for it.
  std::string models_preset;
  int models_max = 0;
  bool metrics = true;
  app.add_option("--models-preset", models_preset,
                 "llamacpp: serve as llama-server's router with the model of this preset file (its first section)");
  app.add_flag("--router", options.router, "llamacpp: serve as llama-server's router with --model as its model");
  app.add_flag("--models-autoload,!--no-models-autoload", options.models_autoload,
               "Router: load the model when a request names it unloaded (default on)");
  app.add_option("--sleep-idle-seconds", options.sleep_idle_seconds,
                 "Router: put the loaded model to sleep after this many idle seconds (0 = never)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--models-max", models_max, "Router: accepted for llama-server's command line (one model here)");
  app.add_flag("--metrics", metrics, "Accepted for llama-server's command line (/metrics is always on)");
  add_override(app, "--startup-seconds", options.startup_seconds,
               "Answer 503 on /health this long after start (default: the profile's)")
      ->check(non_negative_number());
  app.add_option("--max-model-len", options.max_model_len, "Context length (prompt + output tokens)")
      ->check(positive_number())
      ->capture_default_str();
  add_override(app, "--default-max-tokens", options.default_max_tokens,
               "Cap on output tokens when a request sets no max_tokens (default: none, the context left, as vLLM)")
      ->check(positive_number());
  app.add_flag("--enable-prompt-tokens-details,!--no-enable-prompt-tokens-details",
               options.enable_prompt_tokens_details,
               "Send usage.prompt_tokens_details.cached_tokens (default on; vLLM's default is off: null)");
  app.add_option("--max-logprobs", options.max_logprobs, "Most logprobs / top_logprobs a request may ask for")
      ->check(non_negative_number())
      ->capture_default_str();

  // Step cost; every one overrides the profile.
  add_override(app, "--step-base-ms", options.step_base_ms, "Fixed time of every scheduler step")
      ->check(non_negative_number());
  add_override(app, "--prefill-step-ms", options.prefill_step_ms, "Extra time of a step that prefills")
      ->check(non_negative_number());
  add_override(app, "--prefill-ms-per-token", options.prefill_ms_per_token, "Step time per prompt token computed")
      ->check(non_negative_number());
  add_override(app, "--decode-ms-per-seq", options.decode_ms_per_seq, "Step time per decoding sequence")
      ->check(non_negative_number());
  add_override(app, "--step-noise", options.step_noise, "Relative standard deviation of step times (0 = none)")
      ->check(non_negative_number());
  // The walking skeleton's names, kept for scripts that use them.
  add_override(app, "--itl-ms", options.step_base_ms, "Alias of --step-base-ms")->check(non_negative_number());
  add_override(app, "--itl-ms-per-running-seq", options.decode_ms_per_seq, "Alias of --decode-ms-per-seq")
      ->check(non_negative_number());
  add_override(app, "--ttft-base-ms", options.prefill_step_ms, "Alias of --prefill-step-ms")
      ->check(non_negative_number());

  // Scheduler and KV cache.
  add_override(app, "--max-num-seqs", options.max_num_seqs, "Sequences in a batch at most")->check(positive_number());
  add_override(app, "--max-num-batched-tokens", options.max_num_batched_tokens, "Tokens computed per step at most")
      ->check(positive_number());
  app.add_option("--block-size", options.block_size, "Tokens per KV cache block")
      ->check(positive_number())
      ->capture_default_str();
  add_override(app, "--kv-blocks", options.kv_blocks, "KV cache blocks (default: what the memory leaves)")
      ->check(positive_number());
  app.add_flag("!--no-enable-prefix-caching", options.enable_prefix_caching, "Disable prefix caching");
  app.add_flag("!--no-enable-chunked-prefill", options.enable_chunked_prefill, "Disable chunked prefill");
  add_override(app, "--gpu-memory-gb", options.gpu_memory_gb, "Device memory of the replica, GB")
      ->check(positive_number());
  add_override(app, "--gpu-memory-utilization", options.gpu_memory_utilization, "Share of the memory claimed")
      ->check(CLI::Range(0.0, 1.0));
  add_override(app, "--weights-gb", options.weights_gb, "Model weights, GB")->check(non_negative_number());
  add_override(app, "--kv-bytes-per-token", options.kv_bytes_per_token, "KV cache bytes per token")
      ->check(positive_number());
  add_override(app, "--wake-l1-seconds", options.wake_l1_seconds, "Wake time after sleep level 1")
      ->check(non_negative_number());
  add_override(app, "--wake-l2-seconds", options.wake_l2_seconds, "Wake time after sleep level 2")
      ->check(non_negative_number());
  add_override(app, "--embedding-dim", options.embedding_dim, "Length of /v1/embeddings vectors")
      ->check(positive_number());

  // Faults.
  app.add_option("--fail-rate", options.fail_rate, "Share of requests answered 429, 500 or 503")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--crash-after", options.crash_after, "Exit abruptly when request N+1 arrives (0 = never)")
      ->check(non_negative_number())
      ->capture_default_str();
  app.add_option("--hang-after", options.hang_after, "Stop answering anything from request N+1 on (0 = never)")
      ->check(non_negative_number())
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace, debug, info, warn or error")
      ->check(log_level_value())
      ->capture_default_str();
  if (auto exit = parse(app, argc, argv)) return *exit;
  init_logging(log_level);
  if (!models_preset.empty()) {
    try {
      sim::PresetModel preset = sim::read_models_preset(models_preset);
      options.router = true;
      options.model = preset.name;
      options.router_lists_default = preset.implicit_default;
      // c is the context of all slots together, as llama-server reads it.
      if (preset.parallel > 0) options.max_num_seqs = preset.parallel;
      if (preset.context > 0) options.max_model_len = std::max(1, preset.context / std::max(1, preset.parallel));
    } catch (const std::invalid_argument& error) {
      spdlog::error("engine-sim: {}", error.what());
      return 2;
    }
  }
  raise_descriptor_limit();
  return sim::run_engine_sim(options);
}

}  // namespace nebula::cli
