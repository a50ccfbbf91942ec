#include "engines/driver.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "../../tests/gguf_fixtures.h"  // test support, outside src/
#include "common/subprocess.h"
#include "engines/common.h"
#include "engines/drivers.h"
#include "engines/prometheus.h"
#include "http/http.h"

namespace nebula::engines {
namespace {

using namespace std::chrono_literals;
using Argv = std::vector<std::string>;

LaunchContext sample_context() {
  LaunchContext context;
  context.replica = "chat-0";
  context.served_name = "chat";
  context.model = "/models/llama-3-8b";
  context.gpus = {2, 3};
  context.port = 8123;
  context.max_context = 4096;
  context.max_seqs = 16;
  context.gpu_memory_utilization = 0.85;
  context.engine_args = {"--user-flag", "x"};
  context.env = {{"HF_HOME", "/cache/hf"}};
  context.nebula_binary = "/opt/nebula/bin/nebula";
  return context;
}

Command command_for(const std::string& engine, const LaunchContext& context) {
  const EngineDriver* driver = find_driver(engine);
  EXPECT_NE(driver, nullptr) << engine;
  auto command = driver->command(context);
  EXPECT_TRUE(command) << (command ? "" : command.error().message);
  return command ? *command : Command{};
}

TEST(DriverRegistry, EveryEngineHasItsDriver) {
  Argv expected{"vllm", "sglang", "llamacpp", "tgi", "ollama", "docker", "command", "sim"};
  EXPECT_EQ(driver_names(), expected);
  for (const std::string& name : expected) {
    const EngineDriver* driver = find_driver(name);
    ASSERT_NE(driver, nullptr) << name;
    EXPECT_EQ(driver->name(), name);
  }
  EXPECT_EQ(find_driver("triton"), nullptr);
  EXPECT_TRUE(find_driver("vllm")->can_sleep());
  EXPECT_TRUE(find_driver("sim")->can_sleep());
  EXPECT_TRUE(find_driver("ollama")->can_sleep());
  EXPECT_FALSE(find_driver("sglang")->can_sleep());
  EXPECT_TRUE(find_driver("llamacpp")->can_sleep()) << "in router mode";
  EXPECT_FALSE(find_driver("tgi")->can_sleep());
  EXPECT_TRUE(find_driver("docker")->runs_in_container());
  EXPECT_FALSE(find_driver("vllm")->runs_in_container());
}

TEST(EngineCommand, Vllm) {
  Command command = command_for("vllm", sample_context());
  EXPECT_EQ(command.argv, (Argv{"vllm",
                                "serve",
                                "/models/llama-3-8b",
                                "--host",
                                "127.0.0.1",
                                "--port",
                                "8123",
                                "--served-model-name",
                                "chat",
                                "--max-model-len",
                                "4096",
                                "--max-num-seqs",
                                "16",
                                "--tensor-parallel-size",
                                "2",
                                "--gpu-memory-utilization",
                                "0.85",
                                "--enable-sleep-mode",
                                "--enable-prompt-tokens-details",
                                "--user-flag",
                                "x"}));
  EXPECT_EQ(command.env["CUDA_VISIBLE_DEVICES"], "2,3");
  EXPECT_EQ(command.env["VLLM_SERVER_DEV_MODE"], "1");
  EXPECT_EQ(command.env["HF_HOME"], "/cache/hf");
}

TEST(EngineCommand, VllmMinimalAndWithoutSleepMode) {
  LaunchContext context;
  context.served_name = "m";
  context.model = "org/model";
  context.port = 9000;
  context.sleep_mode = false;
  context.gpus = {0};
  context.config.binary = "/venv/bin/vllm";
  context.config.extra_args = {"--node-flag"};
  Command command = command_for("vllm", context);
  EXPECT_EQ(command.argv, (Argv{"/venv/bin/vllm", "serve", "org/model", "--host", "127.0.0.1", "--port", "9000",
                                "--served-model-name", "m", "--tensor-parallel-size", "1",
                                "--enable-prompt-tokens-details", "--node-flag"}));
  EXPECT_EQ(command.env.count("VLLM_SERVER_DEV_MODE"), 0u);
  EXPECT_EQ(command.env["CUDA_VISIBLE_DEVICES"], "0");
}

TEST(EngineCommand, Sglang) {
  Command command = command_for("sglang", sample_context());
  EXPECT_EQ(command.argv, (Argv{"python3",
                                "-m",
                                "sglang.launch_server",
                                "--model-path",
                                "/models/llama-3-8b",
                                "--host",
                                "127.0.0.1",
                                "--port",
                                "8123",
                                "--served-model-name",
                                "chat",
                                "--enable-metrics",
                                "--tp",
                                "2",
                                "--context-length",
                                "4096",
                                "--max-running-requests",
                                "16",
                                "--mem-fraction-static",
                                "0.85",
                                "--user-flag",
                                "x"}));
  EXPECT_EQ(command.env["CUDA_VISIBLE_DEVICES"], "2,3");
}

TEST(EngineCommand, Llamacpp) {
  LaunchContext context = sample_context();
  context.model = "/models/qwen2.5-7b-q4_k_m.gguf";
  Command command = command_for("llamacpp", context);
  // -c covers all 16 slots, each of which gets 4096 tokens.
  EXPECT_EQ(command.argv, (Argv{"llama-server", "-m", "/models/qwen2.5-7b-q4_k_m.gguf", "--host", "127.0.0.1", "--port",
                                "8123", "--alias", "chat", "--metrics", "-c", "65536", "--parallel", "16", "-ngl",
                                "999", "--user-flag", "x"}));
  EXPECT_EQ(command.env["CUDA_VISIBLE_DEVICES"], "2,3");

  context.gpus.clear();
  context.max_seqs = 0;
  context.engine_args.clear();
  command = command_for("llamacpp", context);
  EXPECT_EQ(command.argv, (Argv{"llama-server", "-m", "/models/qwen2.5-7b-q4_k_m.gguf", "--host", "127.0.0.1", "--port",
                                "8123", "--alias", "chat", "--metrics", "-c", "4096"}));
  EXPECT_EQ(command.env["CUDA_VISIBLE_DEVICES"], "") << "a CPU replica sees no GPU";
}

// llama-server's router mode, from its documentation (tools/server/README.md "Using multiple
// models"): the router flags, and the preset keys (flags without their dashes; short forms too).
const std::set<std::string> kRouterFlags = {"--models-preset", "--models-max", "--no-models-autoload",
                                            "--host",          "--port",       "--metrics"};
const std::set<std::string> kPresetKeys = {"model", "c", "parallel", "n-gpu-layers"};

LaunchContext router_context() {
  LaunchContext context = sample_context();
  context.model = "/models/qwen2.5-7b-q4_k_m.gguf";
  context.features = {"router"};
  context.work_dir = "/data/work/chat-0";
  return context;
}

TEST(EngineCommand, LlamacppRouterMode) {
  LaunchContext context = router_context();
  Command command = command_for("llamacpp", context);
  EXPECT_EQ(command.argv,
            (Argv{"llama-server", "--models-preset", "/data/work/chat-0/models.ini", "--models-max", "1",
                  "--no-models-autoload", "--host", "127.0.0.1", "--port", "8123", "--metrics", "--user-flag", "x"}));
  EXPECT_EQ(command.env["CUDA_VISIBLE_DEVICES"], "2,3");
  ASSERT_EQ(command.files.size(), 1u);
  const std::string& ini = command.files["/data/work/chat-0/models.ini"];
  // One section named as clients name the model; -c covers all 16 slots of 4096 tokens. Nothing
  // outside a section: llama-server would list such keys as a phantom model named `default`.
  EXPECT_EQ(ini,
            "[chat]\n"
            "model = /models/qwen2.5-7b-q4_k_m.gguf\n"
            "c = 65536\n"
            "parallel = 16\n"
            "n-gpu-layers = 999\n");
  for (const std::string& arg : command.argv) {
    if (arg.rfind("--", 0) == 0 && arg != "--user-flag") {
      EXPECT_TRUE(kRouterFlags.count(arg)) << arg;
    }
  }
  std::istringstream lines(ini);
  for (std::string line; std::getline(lines, line);) {
    size_t equals = line.find(" = ");
    if (equals == std::string::npos) continue;
    EXPECT_TRUE(kPresetKeys.count(line.substr(0, equals))) << line;
  }
  EXPECT_TRUE(find_driver("llamacpp")->can_sleep(context));

  // A CPU replica without limits: the model alone.
  context.gpus.clear();
  context.max_context = 0;
  context.max_seqs = 0;
  context.engine_args.clear();
  command = command_for("llamacpp", context);
  EXPECT_EQ(command.files["/data/work/chat-0/models.ini"], "[chat]\nmodel = /models/qwen2.5-7b-q4_k_m.gguf\n");
  EXPECT_EQ(command.argv.back(), "--metrics");
}

// Without router mode (an older llama-server), or when the preset file cannot say it, the launch is
// today's single-model one, which cannot sleep.
TEST(EngineCommand, LlamacppFallsBackToOneModelPerProcess) {
  const EngineDriver& driver = *find_driver("llamacpp");
  auto expect_single_model = [&](const LaunchContext& context, const std::string& why) {
    Command command = command_for("llamacpp", context);
    ASSERT_GE(command.argv.size(), 3u) << why;
    EXPECT_EQ(command.argv[1], "-m") << why;
    EXPECT_EQ(command.argv[2], context.model) << why;
    EXPECT_TRUE(command.files.empty()) << why;
    EXPECT_FALSE(driver.can_sleep(context)) << why;
  };
  LaunchContext context = router_context();
  context.features.clear();
  expect_single_model(context, "no router mode in this build");
  context = router_context();
  context.work_dir.clear();
  expect_single_model(context, "no work directory for the preset file");
  context = router_context();
  context.model = "/models/odd;name.gguf";
  expect_single_model(context, "';' ends an INI value");
  context = router_context();
  context.served_name = "a]b";
  expect_single_model(context, "']' ends a section name");
}

TEST(EngineCommand, Tgi) {
  Command command = command_for("tgi", sample_context());
  EXPECT_EQ(command.argv, (Argv{"text-generation-launcher", "--model-id", "/models/llama-3-8b", "--hostname",
                                "127.0.0.1", "--port", "8123", "--num-shard", "2", "--max-input-tokens", "4095",
                                "--max-total-tokens", "4096", "--cuda-memory-fraction", "0.85", "--user-flag", "x"}));
  EXPECT_EQ(command.env["CUDA_VISIBLE_DEVICES"], "2,3");
}

TEST(EngineCommand, Ollama) {
  LaunchContext context = sample_context();
  context.model = "llama3.2:3b";
  context.engine_args.clear();
  context.env["OLLAMA_KEEP_ALIVE"] = "30m";
  Command command = command_for("ollama", context);
  EXPECT_EQ(command.argv, (Argv{"ollama", "serve"}));
  EXPECT_EQ(command.env["OLLAMA_HOST"], "127.0.0.1:8123");
  EXPECT_EQ(command.env["OLLAMA_NUM_PARALLEL"], "16");
  EXPECT_EQ(command.env["OLLAMA_CONTEXT_LENGTH"], "4096");
  EXPECT_EQ(command.env["OLLAMA_KEEP_ALIVE"], "30m") << "the deployment's own setting wins";
  EXPECT_EQ(command.env["CUDA_VISIBLE_DEVICES"], "2,3");
  context.env.erase("OLLAMA_KEEP_ALIVE");
  EXPECT_EQ(command_for("ollama", context).env["OLLAMA_KEEP_ALIVE"], "-1");
}

TEST(EngineCommand, CommandTemplate) {
  LaunchContext context = sample_context();
  context.config.command_template = {"my-server", "--listen={host}:{port}",
                                     "--model",   "{model}",
                                     "--name",    "{served_name}",
                                     "--ctx",     "{max_context}",
                                     "--devices", "{gpus}",
                                     "--tp",      "{num_gpus}",
                                     "--literal", "{unknown}"};
  Command command = command_for("command", context);
  EXPECT_EQ(command.argv,
            (Argv{"my-server", "--listen=127.0.0.1:8123", "--model", "/models/llama-3-8b", "--name", "chat", "--ctx",
                  "4096", "--devices", "2,3", "--tp", "2", "--literal", "{unknown}", "--user-flag", "x"}));
  EXPECT_EQ(command.env["CUDA_VISIBLE_DEVICES"], "2,3");

  context.config.command_template = {"my-server", "--port", "8000"};
  auto no_port = find_driver("command")->command(context);
  ASSERT_FALSE(no_port);
  EXPECT_NE(no_port.error().message.find("{port}"), std::string::npos) << no_port.error().message;
  context.config.command_template.clear();
  auto empty = find_driver("command")->command(context);
  ASSERT_FALSE(empty);
  EXPECT_NE(empty.error().message.find("template"), std::string::npos) << empty.error().message;
}

// The sim driver reproduces what the agent launched before drivers existed (agent.cpp launch()).
TEST(EngineCommand, SimMatchesTheAgentsLaunch) {
  LaunchContext context = sample_context();
  context.engine_args = {"--profile", "h100-8b", "--dialect", "sglang"};
  Command command = command_for("sim", context);
  EXPECT_EQ(command.argv,
            (Argv{"/opt/nebula/bin/nebula", "engine-sim", "--host", "127.0.0.1", "--port", "8123", "--model", "chat",
                  "--profile", "h100-8b", "--dialect", "sglang", "--max-model-len", "4096", "--max-num-seqs", "16"}));
  EXPECT_EQ(command.env,
            (std::map<std::string, std::string>{{"CUDA_VISIBLE_DEVICES", "2,3"}, {"HF_HOME", "/cache/hf"}}));
  context.nebula_binary.clear();
  EXPECT_FALSE(find_driver("sim")->command(context));
}

TEST(EngineCommand, DockerIsNotAProcess) {
  auto command = find_driver("docker")->command(sample_context());
  ASSERT_FALSE(command);
  EXPECT_NE(command.error().message.find("container"), std::string::npos);
  EXPECT_FALSE(find_driver("vllm")->container(sample_context()));
}

TEST(EngineCommand, EnginesNeedAModel) {
  LaunchContext context = sample_context();
  context.model.clear();
  for (const char* engine : {"vllm", "sglang", "llamacpp", "tgi", "ollama"}) {
    EXPECT_FALSE(find_driver(engine)->command(context)) << engine;
  }
}

TEST(PromParse, VllmNewNames) {
  auto metrics = Metrics::parse(
      "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
      "# TYPE vllm:num_requests_running gauge\n"
      "vllm:num_requests_running{engine=\"0\",model_name=\"chat\"} 3.0\n"
      "vllm:num_requests_running{engine=\"1\",model_name=\"chat\"} 2.0\n"
      "vllm:num_requests_waiting{engine=\"0\",model_name=\"chat\"} 7\n"
      "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"chat\"} 0.25\n"
      "vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"chat\"} 0.75\n"
      "vllm:prefix_cache_queries_total{model_name=\"chat\"} 1000\n"
      "vllm:prefix_cache_hits_total{model_name=\"chat\"} 250\n"
      "vllm:time_to_first_token_seconds_bucket{le=\"+Inf\",model_name=\"chat\"} 12\n");
  EXPECT_EQ(metrics.bad_lines(), 0u);
  Load load = vllm_load(metrics);
  EXPECT_EQ(load.running, 5.0);
  EXPECT_EQ(load.waiting, 7.0);
  EXPECT_DOUBLE_EQ(*load.kv_cache_usage, 0.5);
  EXPECT_DOUBLE_EQ(*load.prefix_hit_rate, 0.25);
  EXPECT_EQ(metrics.samples().back().labels.at("le"), "+Inf");
}

TEST(PromParse, VllmOldNames) {
  auto metrics = Metrics::parse(
      "vllm:num_requests_running{model_name=\"m\"} 1\n"
      "vllm:num_requests_waiting{model_name=\"m\"} 0\n"
      "vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.4\n"
      "vllm:gpu_prefix_cache_hit_rate{model_name=\"m\"} 0.6\n");
  Load load = vllm_load(metrics);
  EXPECT_EQ(load.running, 1.0);
  EXPECT_EQ(load.waiting, 0.0);
  EXPECT_DOUBLE_EQ(*load.kv_cache_usage, 0.4);
  EXPECT_DOUBLE_EQ(*load.prefix_hit_rate, 0.6);

  auto counters = Metrics::parse(
      "vllm:gpu_prefix_cache_queries_total 200\n"
      "vllm:gpu_prefix_cache_hits_total 50\n");
  EXPECT_DOUBLE_EQ(*vllm_load(counters).prefix_hit_rate, 0.25);
  EXPECT_FALSE(vllm_load(counters).running) << "absent metrics stay unknown";
  auto no_queries = Metrics::parse("vllm:prefix_cache_queries_total 0\nvllm:prefix_cache_hits_total 0\n");
  EXPECT_EQ(vllm_load(no_queries).prefix_hit_rate, 0.0);
}

TEST(PromParse, LabelsEscapesCommentsAndTimestamps) {
  auto metrics = Metrics::parse(
      "# a comment with {braces} and \"quotes\"\n"
      "\n"
      "   # indented comment\n"
      "metric_a{path=\"/v1/x\",msg=\"say \\\"hi\\\"\\n\",back=\"a\\\\b\",} 1.5e3 1700000000000\r\n"
      "metric_b 42\n"
      "metric_c {x=\"y\"} -7\n"
      "metric_d{} +Inf\n"
      "metric_e -Inf\n");
  EXPECT_EQ(metrics.bad_lines(), 0u);
  ASSERT_EQ(metrics.samples().size(), 5u);
  const Sample& a = metrics.samples()[0];
  EXPECT_EQ(a.name, "metric_a");
  EXPECT_EQ(a.labels.at("path"), "/v1/x");
  EXPECT_EQ(a.labels.at("msg"), "say \"hi\"\n");
  EXPECT_EQ(a.labels.at("back"), "a\\b");
  EXPECT_EQ(a.value, 1500);
  EXPECT_EQ(metrics.sum("metric_b"), 42);
  EXPECT_EQ(metrics.samples()[2].labels.at("x"), "y");
  EXPECT_EQ(metrics.sum("metric_c"), -7);
  EXPECT_TRUE(std::isinf(*metrics.sum("metric_d")) && *metrics.sum("metric_d") > 0);
  EXPECT_TRUE(std::isinf(*metrics.sum("metric_e")) && *metrics.sum("metric_e") < 0);
  EXPECT_FALSE(metrics.sum("absent"));
}

TEST(PromParse, NanIsLeftOutOfSums) {
  auto metrics = Metrics::parse(
      "vllm:kv_cache_usage_perc{engine=\"0\"} NaN\n"
      "vllm:kv_cache_usage_perc{engine=\"1\"} 0.3\n"
      "only_nan nan\n");
  EXPECT_DOUBLE_EQ(*metrics.mean("vllm:kv_cache_usage_perc"), 0.3);
  EXPECT_TRUE(metrics.has("only_nan"));
  EXPECT_FALSE(metrics.sum("only_nan"));
  EXPECT_FALSE(metrics.mean("only_nan"));
}

TEST(PromParse, BadLinesAreCountedNotFatal) {
  auto metrics = Metrics::parse(
      "good 1\n"
      "no_value\n"
      "bad_value abc\n"
      "1starts_with_digit 3\n"
      "unterminated{a=\"b 1\n"
      "missing_quote{a=b} 1\n"
      "trailing 1 notatimestamp\n"
      "glued{a=\"b\"}1\n"
      "{only=\"labels\"} 1\n"
      "two_values 1 2 3\n"
      "++ 1\n"
      "also_good{x=\"1\"} 2\n");
  EXPECT_EQ(metrics.samples().size(), 3u);
  EXPECT_EQ(metrics.bad_lines(), 9u);
  EXPECT_EQ(metrics.sum("glued"), 1) << "no blank is needed after the labels";
  EXPECT_EQ(metrics.sum("also_good"), 2);
  EXPECT_EQ(Metrics::parse("").samples().size(), 0u);
  std::string garbage;
  for (int i = 0; i < 2000; ++i) garbage += static_cast<char>((i * 7919) % 256);
  auto noisy = Metrics::parse(garbage);  // must not crash
  EXPECT_GT(noisy.bad_lines() + noisy.samples().size(), 0u);
}

TEST(PromParse, OtherEnginesNames) {
  auto sglang = sglang_load(
      Metrics::parse("sglang:num_running_reqs{model_name=\"m\"} 4\nsglang:num_queue_reqs{model_name=\"m\"} 2\n"
                     "sglang:token_usage{model_name=\"m\"} 0.5\nsglang:cache_hit_rate{model_name=\"m\"} 0.7\n"));
  EXPECT_EQ(sglang.running, 4.0);
  EXPECT_EQ(sglang.waiting, 2.0);
  EXPECT_EQ(sglang.kv_cache_usage, 0.5);
  EXPECT_EQ(sglang.prefix_hit_rate, 0.7);
  auto llamacpp = llamacpp_load(Metrics::parse(
      "llamacpp:requests_processing 1\nllamacpp:requests_deferred 3\nllamacpp:kv_cache_usage_ratio 0.125\n"));
  EXPECT_EQ(llamacpp.running, 1.0);
  EXPECT_EQ(llamacpp.waiting, 3.0);
  EXPECT_EQ(llamacpp.kv_cache_usage, 0.125);
  EXPECT_FALSE(llamacpp.prefix_hit_rate);
  auto tgi = tgi_load(Metrics::parse("tgi_queue_size 5\ntgi_batch_current_size 8\n"));
  EXPECT_EQ(tgi.running, 8.0);
  EXPECT_EQ(tgi.waiting, 5.0);
  EXPECT_FALSE(tgi.kv_cache_usage);
  EXPECT_EQ(any_engine_load(Metrics::parse("tgi_queue_size 5\n")).waiting, 5.0);
  EXPECT_FALSE(any_engine_load(Metrics::parse("process_cpu_seconds_total 5\n")).running);
}

// ---- detect(): fake engine binaries in a temporary directory.

class EngineDetect : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("nebula-detect-" + std::to_string(::getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string script(const std::string& name, const std::string& body) {
    auto path = dir_ / name;
    std::ofstream(path) << "#!/bin/sh\n" << body << "\n";
    std::filesystem::permissions(path, std::filesystem::perms::owner_all);
    return path.string();
  }

  std::filesystem::path dir_;
};

TEST_F(EngineDetect, ReadsTheVersionFromTheBinary) {
  EngineConfig config;
  config.binary = script("llama-server", "echo 'version: 4520 (a1b2c3d)' >&2; echo 'built with cc' >&2");
  Availability found = find_driver("llamacpp")->detect(config);
  EXPECT_TRUE(found.available) << found.detail;
  EXPECT_EQ(found.version, "4520 (a1b2c3d)");
  EXPECT_EQ(found.detail, config.binary);

  config.binary = script("vllm", "[ \"$1\" = --version ] && echo 0.8.5");
  EXPECT_EQ(find_driver("vllm")->detect(config).version, "0.8.5");
  config.binary = script("ollama",
                         "echo 'Warning: could not connect to a running Ollama instance'; "
                         "echo 'Warning: client version is 0.5.7'");
  EXPECT_EQ(find_driver("ollama")->detect(config).version, "0.5.7");
  config.binary = script("python3", "[ \"$1\" = -c ] && echo 0.4.6");
  EXPECT_EQ(find_driver("sglang")->detect(config).version, "0.4.6");
  config.binary = script("tgi", "echo text-generation-launcher 2.4.0");
  EXPECT_EQ(find_driver("tgi")->detect(config).version, "2.4.0");
}

TEST_F(EngineDetect, LlamaServerRouterModeIsFoundInItsHelp) {
  EngineConfig config;
  config.binary = script("llama-server",
                         "case \"$1\" in --version) echo 'version: 7400 (abc)' >&2;; "
                         "--help) echo '--models-preset PATH   path to INI file';; esac");
  Availability router = find_driver("llamacpp")->detect(config);
  ASSERT_TRUE(router.available) << router.detail;
  EXPECT_EQ(router.features, (Argv{"router"}));
  config.binary = script("old-llama-server",
                         "case \"$1\" in --version) echo 'version: 4520 (a1b2c3d)' >&2;; "
                         "--help) echo '-m, --model FNAME';; esac");
  Availability old = find_driver("llamacpp")->detect(config);
  ASSERT_TRUE(old.available) << old.detail;
  EXPECT_TRUE(old.features.empty());
}

TEST_F(EngineDetect, MissingFailingAndHangingBinaries) {
  EngineConfig config;
  config.binary = (dir_ / "absent").string();
  Availability missing = find_driver("vllm")->detect(config);
  EXPECT_FALSE(missing.available);
  EXPECT_NE(missing.detail.find("not found"), std::string::npos) << missing.detail;

  config.binary = "nebula-no-such-engine-binary";
  EXPECT_NE(find_driver("vllm")->detect(config).detail.find("not found on PATH"), std::string::npos);

  config.binary = script("broken", "echo 'ImportError: no module' >&2; exit 3");
  Availability broken = find_driver("vllm")->detect(config);
  EXPECT_FALSE(broken.available);
  EXPECT_NE(broken.detail.find("ImportError"), std::string::npos) << broken.detail;

  // A binary that never answers is killed, with its children, when time runs out.
  auto started = std::chrono::steady_clock::now();
  auto ran = run_captured({script("hang", "sleep 30 & sleep 30"), "--version"}, 300ms);
  ASSERT_TRUE(ran) << ran.error().message;
  EXPECT_TRUE(ran->timed_out);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
}

TEST_F(EngineDetect, SimIsAlwaysThereCommandNeedsItsTemplate) {
  Availability sim = find_driver("sim")->detect(EngineConfig{});
  EXPECT_TRUE(sim.available);
  EXPECT_EQ(sim.version, NEBULA_VERSION);
  EXPECT_FALSE(find_driver("command")->detect(EngineConfig{}).available);
  EngineConfig config;
  config.command_template = {"sh", "-c", "serve {port}"};
  EXPECT_TRUE(find_driver("command")->detect(config).available);
}

TEST(EngineHelpers, VersionAndSubstitution) {
  EXPECT_EQ(version_from_output("0.8.5\n"), "0.8.5");
  EXPECT_EQ(version_from_output("ollama version is 0.6.2"), "0.6.2");
  EXPECT_EQ(version_from_output(""), "");
  EXPECT_EQ(substitute("{a}-{b}{", {{"a", "1"}, {"b", "2"}}), "1-2{");
  EXPECT_EQ(substitute("{{port}}", {{"port", "8"}}), "{{port}}");
  EXPECT_EQ(gpu_list({}), "");
  EXPECT_EQ(gpu_list({0, 5}), "0,5");
}

// ---- Real engines, when this machine has them.

// Runs the driver's command as a child process in its own process group; kills it on destruction.
class ChildProcess {
 public:
  explicit ChildProcess(const Command& command) {
    SpawnOptions options;
    options.argv = command.argv;
    options.env = command.env;
    options.new_process_group = true;
    auto spawned = spawn(options);
    pid_ = spawned ? *spawned : 0;
  }
  ~ChildProcess() {
    if (pid_ <= 0) return;
    ::kill(-pid_, SIGTERM);
    for (int i = 0; i < 50 && ::waitpid(pid_, nullptr, WNOHANG) == 0; ++i) std::this_thread::sleep_for(100ms);
    ::kill(-pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  bool started() const { return pid_ > 0; }

 private:
  pid_t pid_ = 0;
};

int free_port() {
  boost::asio::io_context io;
  http::Server server(io, http::Router{});
  auto port = server.listen({"127.0.0.1", 0});
  return port ? *port : 0;
}

// Polls the driver's probe until Ready or the deadline.
Readiness wait_ready(const EngineDriver& driver, const std::string& endpoint, std::chrono::seconds deadline) {
  boost::asio::io_context io;
  http::Client client(io);
  auto until = std::chrono::steady_clock::now() + deadline;
  Readiness state = Readiness::Down;
  while (std::chrono::steady_clock::now() < until) {
    boost::asio::co_spawn(io, driver.probe(client, endpoint), [&](std::exception_ptr, Readiness r) { state = r; });
    io.restart();
    io.run();
    if (state == Readiness::Ready) break;
    std::this_thread::sleep_for(250ms);
  }
  return state;
}

void launch_real(const std::string& engine, const std::string& binary, const std::string& model_env,
                 std::chrono::seconds deadline) {
  if (!find_executable(binary)) GTEST_SKIP() << binary << " is not on PATH; the real " << engine << " test needs it";
  LaunchContext context;
  context.replica = "real-0";
  context.served_name = "real";
  context.port = free_port();
  context.max_context = 2048;
  if (!model_env.empty()) {
    const char* model = std::getenv(model_env.c_str());
    // llama.cpp runs the tiny Llama of tests/gguf_fixtures.h when no model is named.
    std::string tiny = engine == "llamacpp" ? nebula::testing::gguf_fixture("tiny-llama.gguf") : "";
    if (!model && !tiny.empty()) model = tiny.c_str();
    if (!model) GTEST_SKIP() << binary << " is on PATH but " << model_env << " names no model to load";
    context.model = model;
  } else {
    context.model = "unused";
  }
  const EngineDriver& driver = *find_driver(engine);
  Availability availability = driver.detect(EngineConfig{});
  EXPECT_TRUE(availability.available) << availability.detail;
  std::filesystem::path home = std::filesystem::temp_directory_path() / ("nebula-real-" + engine);
  // The launch follows what detect() found, as the agent's does.
  context.features = availability.features;
  context.work_dir = (home / "work").string();
  auto command = driver.command(context);
  ASSERT_TRUE(command) << command.error().message;
  for (const auto& [path, contents] : command->files) {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    std::ofstream(path) << contents;
  }
  bool router = engine == "llamacpp" && context.has_feature("router");
  if (engine == "llamacpp") {
    EXPECT_EQ(command->argv[1], router ? "--models-preset" : "-m");
    EXPECT_EQ(driver.can_sleep(context), router);
  }
  if (engine == "ollama") command->env["OLLAMA_MODELS"] = home.string();
  ChildProcess child(*command);
  ASSERT_TRUE(child.started());
  std::string endpoint = "http://127.0.0.1:" + std::to_string(context.port);
  ASSERT_EQ(wait_ready(driver, endpoint, deadline), Readiness::Ready);
  if (router) {
    // The router is up at once; prepare() loads the model.
    boost::asio::io_context io;
    http::Client async_client(io);
    Status prepared = Error{ErrorCode::Internal, "not run"};
    context.ready_timeout = deadline;
    boost::asio::co_spawn(io, driver.prepare(async_client, endpoint, context),
                          [&](std::exception_ptr, Status result) { prepared = std::move(result); });
    io.run();
    ASSERT_TRUE(prepared.ok()) << prepared.error().message;
  }
  if (engine == "llamacpp") {
    // A real completion under the served name, then the load the driver reads from its metrics.
    http::BlockingClient client;
    auto answer =
        client.request("POST", endpoint + "/v1/chat/completions",
                       R"({"model":"real","max_tokens":8,"messages":[{"role":"user","content":"Say hello"}]})",
                       {{"Content-Type", "application/json"}}, 60s);
    ASSERT_TRUE(answer) << answer.error().message;
    EXPECT_EQ(answer->status, 200) << answer->body;
    EXPECT_NE(answer->body.find("\"completion_tokens\""), std::string::npos) << answer->body;
    boost::asio::io_context io;
    http::Client async_client(io);
    Result<Load> load = Error{ErrorCode::Internal, "not run"};
    boost::asio::co_spawn(io, driver.load(async_client, endpoint, context),
                          [&](std::exception_ptr, Result<Load> result) { load = std::move(result); });
    io.run();
    ASSERT_TRUE(load) << load.error().message;
    EXPECT_TRUE(load->running.has_value());
    EXPECT_TRUE(load->waiting.has_value());
  }
  std::filesystem::remove_all(home);
}

TEST(EngineRealBinary, Ollama) {
  launch_real("ollama", "ollama", "", 20s);
}
TEST(EngineRealBinary, LlamaServer) {
  launch_real("llamacpp", "llama-server", "NEBULA_TEST_GGUF", 120s);
}
TEST(EngineRealBinary, Vllm) {
  launch_real("vllm", "vllm", "NEBULA_TEST_VLLM_MODEL", 600s);
}

}  // namespace
}  // namespace nebula::engines
