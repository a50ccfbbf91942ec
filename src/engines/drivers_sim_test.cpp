// The drivers against the real engine simulator (sim::EngineSim) in each engine's dialect, over
// loopback HTTP.
#include "engines/driver.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include "common/json.h"
#include "common/run_blocking.h"
#include "http/http.h"
#include "sim/sim.h"

namespace nebula::engines {
namespace {

using namespace std::chrono_literals;

// Runs a driver coroutine to completion on the test's own io_context.
template <typename T>
T run(boost::asio::io_context& io, awaitable<T> task) {
  return run_blocking(io, std::move(task));
}

http::Response empty_model_list() {
  return http::Response{200, {}, "{\"data\":[]}"};
}

// An engine simulator on a loopback port, served from its own thread.
class DriverSim : public ::testing::Test {
 protected:
  static sim::SimOptions options(const std::string& dialect) {
    sim::SimOptions options;
    options.dialect = dialect;
    options.model = "chat";
    options.step_base_ms = 1;
    options.prefill_step_ms = 1;
    options.prefill_ms_per_token = 0;
    options.decode_ms_per_seq = 0;
    options.step_noise = 0;
    options.kv_blocks = 4096;
    options.wake_l1_seconds = 0.02;
    options.wake_l2_seconds = 0.02;
    return options;
  }

  void start(const sim::SimOptions& options) {
    engine_ = std::make_unique<sim::EngineSim>(sim_io_, options);
    http::Router router;
    engine_->add_routes(router);
    server_ = std::make_unique<http::Server>(sim_io_, std::move(router));
    auto port = server_->listen({"127.0.0.1", 0});
    ASSERT_TRUE(port) << port.error().message;
    endpoint_ = "http://127.0.0.1:" + std::to_string(*port);
    work_.emplace(sim_io_.get_executor());
    thread_ = std::thread([this] { sim_io_.run(); });
  }

  void TearDown() override {
    if (server_) server_->stop();
    work_.reset();
    sim_io_.stop();
    if (thread_.joinable()) thread_.join();
  }

  const EngineDriver& driver(const std::string& name) {
    const EngineDriver* found = find_driver(name);
    EXPECT_NE(found, nullptr);
    return *found;
  }

  Readiness probe(const std::string& name) { return run(io_, driver(name).probe(client_, endpoint_)); }
  Load load(const std::string& name) {
    auto result = run(io_, driver(name).load(client_, endpoint_));
    EXPECT_TRUE(result) << result.error().message;
    return result ? *result : Load{};
  }
  bool sleeping(const std::string& name, const LaunchContext& context = {}) {
    auto result = run(io_, driver(name).is_sleeping(client_, endpoint_, context));
    EXPECT_TRUE(result) << result.error().message;
    return result && *result;
  }

  int chat(const std::string& content, int max_tokens = 4) {
    json body = {{"model", "chat"},
                 {"max_tokens", max_tokens},
                 {"messages", json::array({json{{"role", "user"}, {"content", content}}})}};
    auto response = blocking_.request("POST", endpoint_ + "/v1/chat/completions", body.dump(), {}, 10s);
    return response ? response->status : 0;
  }

  boost::asio::io_context sim_io_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work_;
  std::unique_ptr<sim::EngineSim> engine_;
  std::unique_ptr<http::Server> server_;
  std::thread thread_;
  std::string endpoint_;

  boost::asio::io_context io_;
  http::Client client_{io_};
  http::BlockingClient blocking_;
};

class DriverSimVllm : public DriverSim, public ::testing::WithParamInterface<const char*> {};

// vLLM's protocol, through the vllm driver and the sim driver alike.
TEST_P(DriverSimVllm, ProbeLoadSleepWake) {
  const std::string name = GetParam();
  sim::SimOptions sim_options = options("vllm");
  sim_options.decode_ms_per_seq = 10;
  start(sim_options);
  EXPECT_EQ(probe(name), Readiness::Ready);

  Load idle = load(name);
  EXPECT_EQ(idle.running, 0.0);
  EXPECT_EQ(idle.waiting, 0.0);
  ASSERT_TRUE(idle.kv_cache_usage);
  EXPECT_EQ(*idle.kv_cache_usage, 0.0);
  EXPECT_EQ(idle.prefix_hit_rate, 0.0);

  // A long prompt twice: the second finds it in the prefix cache.
  std::string prompt;
  for (int i = 0; i < 200; ++i) prompt += "word" + std::to_string(i) + " ";
  ASSERT_EQ(chat(prompt), 200);
  ASSERT_EQ(chat(prompt), 200);
  ASSERT_TRUE(load(name).prefix_hit_rate);
  EXPECT_GT(*load(name).prefix_hit_rate, 0.3);

  // A request in flight shows as running.
  std::thread slow([&] { chat("a slow one", 40); });
  bool seen_running = false;
  for (int i = 0; i < 100 && !seen_running; ++i) {
    Load busy = load(name);
    seen_running = busy.running.value_or(0) >= 1;
    if (!seen_running) std::this_thread::sleep_for(10ms);
  }
  slow.join();
  EXPECT_TRUE(seen_running);

  LaunchContext context;
  EXPECT_FALSE(sleeping(name, context));
  for (int level : {1, 2}) {
    Status slept = run(io_, driver(name).sleep(client_, endpoint_, level, context));
    ASSERT_TRUE(slept.ok()) << slept.error().message;
    EXPECT_TRUE(sleeping(name, context)) << "level " << level;
    EXPECT_EQ(chat("hello"), 503) << "asleep at level " << level;
    context.sleep_level = level;
    Status woken = run(io_, driver(name).wake(client_, endpoint_, context));
    ASSERT_TRUE(woken.ok()) << woken.error().message;
    EXPECT_FALSE(sleeping(name, context)) << "level " << level;
    EXPECT_EQ(chat("hello"), 200) << "awake after level " << level;
  }
  Status bad_level = run(io_, driver(name).sleep(client_, endpoint_, 3, context));
  EXPECT_FALSE(bad_level.ok());
}

INSTANTIATE_TEST_SUITE_P(Driver, DriverSimVllm, ::testing::Values("vllm", "sim"));

TEST_F(DriverSim, SglangProbeAndLoad) {
  start(options("sglang"));
  EXPECT_EQ(probe("sglang"), Readiness::Ready);
  ASSERT_EQ(chat("one two three"), 200);
  Load sglang = load("sglang");
  EXPECT_EQ(sglang.running, 0.0);
  EXPECT_EQ(sglang.waiting, 0.0);
  EXPECT_TRUE(sglang.kv_cache_usage);
  EXPECT_TRUE(sglang.prefix_hit_rate);
  Status slept = run(io_, driver("sglang").sleep(client_, endpoint_, 1, LaunchContext{}));
  EXPECT_FALSE(slept.ok());
  // The vLLM names are not there: the vllm driver's load finds nothing it knows.
  EXPECT_FALSE(load("vllm").running);
}

TEST_F(DriverSim, LlamacppIsLoadingUntilTheModelIsLoaded) {
  sim::SimOptions sim_options = options("llamacpp");
  sim_options.startup_seconds = 0.5;
  start(sim_options);
  EXPECT_EQ(probe("llamacpp"), Readiness::Loading) << "503 Loading model";
  auto deadline = std::chrono::steady_clock::now() + 5s;
  Readiness state = Readiness::Loading;
  while (state != Readiness::Ready && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(50ms);
    state = probe("llamacpp");
    EXPECT_NE(state, Readiness::Down);
  }
  EXPECT_EQ(state, Readiness::Ready);
  Load llamacpp = load("llamacpp");
  EXPECT_EQ(llamacpp.running, 0.0);
  EXPECT_EQ(llamacpp.waiting, 0.0);
  EXPECT_TRUE(llamacpp.kv_cache_usage);
  EXPECT_FALSE(llamacpp.prefix_hit_rate);
}

// llama-server's router mode, launched as the driver launches it: its preset file and flags make
// the simulator's model, and the driver loads, sleeps and wakes it.
TEST_F(DriverSim, LlamacppRouterModeLoadsSleepsAndWakes) {
  LaunchContext context;
  context.replica = "chat-0";
  context.served_name = "chat";
  context.model = "/models/tiny.gguf";
  context.max_context = 512;
  context.max_seqs = 2;
  context.features = {"router"};
  context.work_dir = ::testing::TempDir() + "/nebula-router-" + std::to_string(::getpid());
  const EngineDriver& llamacpp = driver("llamacpp");
  ASSERT_TRUE(llamacpp.can_sleep(context));
  auto command = llamacpp.command(context);
  ASSERT_TRUE(command) << command.error().message;
  auto& argv = command->argv;
  auto preset_flag = std::find(argv.begin(), argv.end(), "--models-preset");
  ASSERT_NE(preset_flag, argv.end());
  ASSERT_NE(std::find(argv.begin(), argv.end(), "--no-models-autoload"), argv.end());
  for (const auto& [path, contents] : command->files) {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    std::ofstream(path) << contents;
  }
  sim::PresetModel preset = sim::read_models_preset(*(preset_flag + 1));
  std::filesystem::remove_all(context.work_dir);
  EXPECT_EQ(preset.name, "chat");
  EXPECT_EQ(preset.context, 1024);
  EXPECT_EQ(preset.parallel, 2);
  sim::SimOptions sim_options = options("llamacpp");
  sim_options.router = true;
  sim_options.models_autoload = false;
  sim_options.model = preset.name;
  sim_options.max_num_seqs = preset.parallel;
  sim_options.max_model_len = preset.context / preset.parallel;
  sim_options.startup_seconds = 0.05;  // each load
  start(sim_options);

  // The router is up at once, without its model.
  EXPECT_EQ(probe("llamacpp"), Readiness::Ready);
  EXPECT_TRUE(sleeping("llamacpp", context)) << "nothing loaded before prepare()";
  EXPECT_EQ(chat("hello"), 400) << "model is not loaded";
  EXPECT_FALSE(run(io_, llamacpp.load(client_, endpoint_, context))) << "no metrics without the model";

  Status prepared = run(io_, llamacpp.prepare(client_, endpoint_, context));
  ASSERT_TRUE(prepared.ok()) << prepared.error().message;
  EXPECT_FALSE(sleeping("llamacpp", context));
  EXPECT_EQ(chat("hello"), 200);
  auto loaded = run(io_, llamacpp.load(client_, endpoint_, context));
  ASSERT_TRUE(loaded) << loaded.error().message;
  EXPECT_EQ(loaded->running, 0.0);
  EXPECT_EQ(loaded->waiting, 0.0);
  EXPECT_TRUE(loaded->kv_cache_usage);
  EXPECT_FALSE(run(io_, llamacpp.load(client_, endpoint_))) << "the router's /metrics wants ?model=";
  EXPECT_TRUE(run(io_, llamacpp.prepare(client_, endpoint_, context)).ok()) << "already loaded: nothing to do";

  for (int level : {1, 2}) {
    Status slept = run(io_, llamacpp.sleep(client_, endpoint_, level, context));
    ASSERT_TRUE(slept.ok()) << slept.error().message;
    EXPECT_TRUE(sleeping("llamacpp", context)) << "level " << level;
    EXPECT_EQ(chat("hello"), 400) << "asleep at level " << level;
    EXPECT_TRUE(run(io_, llamacpp.sleep(client_, endpoint_, level, context)).ok()) << "asleep already";
    context.sleep_level = level;
    Status woken = run(io_, llamacpp.wake(client_, endpoint_, context));
    ASSERT_TRUE(woken.ok()) << woken.error().message;
    EXPECT_FALSE(sleeping("llamacpp", context)) << "level " << level;
    EXPECT_EQ(chat("hello"), 200) << "awake after level " << level;
  }
  EXPECT_FALSE(run(io_, llamacpp.sleep(client_, endpoint_, 3, context)).ok());

  // A model the router does not have, and a load slower than the time allowed.
  LaunchContext unknown = context;
  unknown.served_name = "other";
  Status missing = run(io_, llamacpp.prepare(client_, endpoint_, unknown));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, ErrorCode::NotFound) << missing.error().message;
  ASSERT_TRUE(run(io_, llamacpp.sleep(client_, endpoint_, 1, context)).ok());
  context.ready_timeout = 10ms;  // the load takes 50 ms
  Status late = run(io_, llamacpp.wake(client_, endpoint_, context));
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().code, ErrorCode::Timeout) << late.error().message;
}

// Without router mode the driver neither sleeps nor asks for anything after the start.
TEST_F(DriverSim, LlamacppSingleModelCannotSleep) {
  start(options("llamacpp"));
  LaunchContext context;
  context.served_name = "chat";
  context.model = "/models/tiny.gguf";
  const EngineDriver& llamacpp = driver("llamacpp");
  EXPECT_FALSE(llamacpp.can_sleep(context));
  EXPECT_TRUE(run(io_, llamacpp.prepare(client_, endpoint_, context)).ok());
  EXPECT_FALSE(run(io_, llamacpp.sleep(client_, endpoint_, 1, context)).ok());
  EXPECT_FALSE(run(io_, llamacpp.is_sleeping(client_, endpoint_, context)));
  auto single = run(io_, llamacpp.load(client_, endpoint_, context));
  ASSERT_TRUE(single) << single.error().message;
  EXPECT_EQ(single->running, 0.0);
  EXPECT_EQ(chat("hello"), 200);
}

TEST_F(DriverSim, TgiProbeAndLoad) {
  start(options("tgi"));
  EXPECT_EQ(probe("tgi"), Readiness::Ready);
  Load tgi = load("tgi");
  EXPECT_EQ(tgi.running, 0.0);
  EXPECT_EQ(tgi.waiting, 0.0);
  EXPECT_FALSE(tgi.kv_cache_usage);
}

TEST_F(DriverSim, OllamaPullsNamesLoadsSleepsAndWakes) {
  start(options("ollama"));
  EXPECT_EQ(probe("ollama"), Readiness::Ready);
  auto metrics = blocking_.request("GET", endpoint_ + "/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 404) << "Ollama has no /metrics";
  Load ollama = load("ollama");
  EXPECT_FALSE(ollama.running);

  LaunchContext context;
  context.model = "llama3.2:1b";
  context.served_name = "chat";
  Status prepared = run(io_, driver("ollama").prepare(client_, endpoint_, context));
  ASSERT_TRUE(prepared.ok()) << prepared.error().message;
  auto tags = blocking_.request("GET", endpoint_ + "/api/tags");
  ASSERT_TRUE(tags);
  EXPECT_NE(tags->body.find("\"llama3.2:1b\""), std::string::npos) << tags->body;
  EXPECT_NE(tags->body.find("\"chat:latest\""), std::string::npos) << tags->body;
  EXPECT_FALSE(sleeping("ollama", context)) << "prepare loads the model";

  Status slept = run(io_, driver("ollama").sleep(client_, endpoint_, 1, context));
  ASSERT_TRUE(slept.ok()) << slept.error().message;
  EXPECT_TRUE(sleeping("ollama", context));
  Status woken = run(io_, driver("ollama").wake(client_, endpoint_, context));
  ASSERT_TRUE(woken.ok()) << woken.error().message;
  EXPECT_FALSE(sleeping("ollama", context));

  // Prepared again (a restarted replica), the model is already there and nothing fails.
  EXPECT_TRUE(run(io_, driver("ollama").prepare(client_, endpoint_, context)).ok());
  LaunchContext unknown = context;
  unknown.served_name = "never-pulled";
  EXPECT_FALSE(run(io_, driver("ollama").wake(client_, endpoint_, unknown)).ok());
}

TEST_F(DriverSim, CommandAndDockerProbeAnyEngine) {
  start(options("vllm"));
  for (const char* name : {"command", "docker"}) {
    EXPECT_EQ(probe(name), Readiness::Ready) << name;
    EXPECT_EQ(load(name).waiting, 0.0) << name << " reads vLLM's names when they are there";
  }
}

TEST_F(DriverSim, ServerWithoutHealthIsReadyByItsModelList) {
  http::Router router;
  router.add("GET", "/v1/models", [](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(empty_model_list());
  });
  server_ = std::make_unique<http::Server>(sim_io_, std::move(router));
  auto port = server_->listen({"127.0.0.1", 0});
  ASSERT_TRUE(port);
  endpoint_ = "http://127.0.0.1:" + std::to_string(*port);
  work_.emplace(sim_io_.get_executor());
  thread_ = std::thread([this] { sim_io_.run(); });
  EXPECT_EQ(probe("command"), Readiness::Ready);
  Load none = load("command");
  EXPECT_FALSE(none.running) << "no /metrics: nothing known, no error";
  EXPECT_EQ(probe("vllm"), Readiness::Loading) << "vLLM answers /health; a 404 there is not ready";
}

TEST_F(DriverSim, NothingListeningIsDown) {
  int port = 0;
  {
    boost::asio::io_context io;
    http::Server server(io, http::Router{});
    port = *server.listen({"127.0.0.1", 0});
  }
  endpoint_ = "http://127.0.0.1:" + std::to_string(port);
  for (const char* name : {"vllm", "sglang", "llamacpp", "tgi", "ollama", "command", "sim"}) {
    EXPECT_EQ(probe(name), Readiness::Down) << name;
  }
  EXPECT_FALSE(run(io_, driver("vllm").load(client_, endpoint_)));
}

}  // namespace
}  // namespace nebula::engines
