#include "agent/container_runtime.h"

#include "engines/fake_docker.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

namespace nebula::agent {
namespace {

using namespace std::chrono_literals;
namespace beast_http = boost::beast::http;
using Local = boost::asio::local::stream_protocol;
namespace fs = std::filesystem;
using Phase = ContainerRuntime::State::Phase;
using engines::testing::Answer;
using engines::testing::docker_log_frame;
using engines::testing::FakeDocker;
using engines::testing::Seen;

// Holds an answer until opened (or until a cap, so a broken test cannot hang).
class Gate {
 public:
  void wait() {
    std::unique_lock lock(mutex_);
    waiting_ = true;
    changed_.notify_all();
    changed_.wait_for(lock, 5s, [&] { return open_; });
    waiting_ = false;
    passed_ = true;
  }
  void open() {
    std::lock_guard lock(mutex_);
    open_ = true;
    changed_.notify_all();
  }
  bool waiting() {
    std::lock_guard lock(mutex_);
    return waiting_;
  }
  bool passed() {
    std::lock_guard lock(mutex_);
    return passed_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool open_ = false;
  bool waiting_ = false;
  bool passed_ = false;
};

// A daemon with one image ("img:1" present unless image_present is false) and the containers it
// creates (each named after its replica, id "id-NAME"), whose run state the test controls.
class Daemon {
 public:
  explicit Daemon(const fs::path& socket_path)
      : fake_(socket_path, [this](const Seen& request) { return answer(request); }) {}

  FakeDocker& fake() { return fake_; }
  std::vector<std::string> targets() { return fake_.targets(); }
  Gate& pull_gate() { return pull_gate_; }

  void set_image_present(bool present) {
    std::lock_guard lock(mutex_);
    image_present_ = present;
    hold_pull_ = false;
  }
  void hold_pulls() {
    std::lock_guard lock(mutex_);
    hold_pull_ = true;
  }
  // A container that exists already (as after an agent restart).
  void add_container(const std::string& id, bool running, int exit_code) {
    std::lock_guard lock(mutex_);
    containers_[id] = Container{running, exit_code};
  }
  void exit_container(const std::string& id, int exit_code) {
    std::lock_guard lock(mutex_);
    containers_[id] = Container{false, exit_code};
  }

 private:
  struct Container {
    bool running = false;
    int exit_code = 0;
  };

  Answer answer(const Seen& request) {
    const std::string& target = request.target;
    auto starts = [&](const std::string& prefix) { return target.rfind(prefix, 0) == 0; };
    auto id_between = [&](const std::string& prefix, const std::string& suffix) -> std::optional<std::string> {
      if (!starts(prefix) || target.size() < prefix.size() + suffix.size()) return std::nullopt;
      if (target.compare(target.size() - suffix.size(), suffix.size(), suffix) != 0) return std::nullopt;
      return target.substr(prefix.size(), target.size() - prefix.size() - suffix.size());
    };
    if (request.method == "POST" && starts("/images/create?fromImage=")) {
      bool hold = false;
      {
        std::lock_guard lock(mutex_);
        hold = hold_pull_;
      }
      if (hold) pull_gate_.wait();
      std::lock_guard lock(mutex_);
      image_present_ = true;
      return {200, "{\"status\":\"Pulling\"}\n{\"status\":\"Download complete\"}\n", true};
    }
    std::lock_guard lock(mutex_);
    if (request.method == "GET" && target == "/images/img:1/json") {
      if (image_present_) return {200, R"({"Id":"sha256:1"})"};
      return {404, R"({"message":"No such image: img:1"})"};
    }
    if (request.method == "POST" && starts("/containers/create?name=")) {
      std::string id = "id-" + target.substr(std::string("/containers/create?name=").size());
      containers_[id] = Container{false, 0};
      return {201, "{\"Id\":\"" + id + "\",\"Warnings\":[]}"};
    }
    auto not_found = [](const std::string& id) {
      return Answer{404, "{\"message\":\"No such container: " + id + "\"}"};
    };
    // Containers are addressed by id or by name ("id-" + name).
    auto lookup = [&](std::string id) -> Container* {
      if (!containers_.count(id)) id = "id-" + id;
      auto found = containers_.find(id);
      return found == containers_.end() ? nullptr : &found->second;
    };
    if (request.method == "POST") {
      if (auto id = id_between("/containers/", "/start")) {
        Container* container = lookup(*id);
        if (!container) return not_found(*id);
        container->running = true;
        return {204, ""};
      }
      if (starts("/containers/") && target.find("/stop?t=") != std::string::npos) {
        std::string id = target.substr(12, target.find("/stop?t=") - 12);
        Container* container = lookup(id);
        if (!container) return not_found(id);
        if (!container->running) return {304, ""};
        *container = Container{false, 143};
        return {204, ""};
      }
    }
    if (request.method == "GET") {
      if (auto id = id_between("/containers/", "/json")) {
        Container* container = lookup(*id);
        if (!container) return not_found(*id);
        return {200,
                fmt::format(R"({{"Id":"{}","State":{{"Status":"{}","Running":{},"ExitCode":{},"Pid":{},"Error":""}}}})",
                            *id, container->running ? "running" : "exited", container->running, container->exit_code,
                            container->running ? 4242 : 0)};
      }
      if (auto id = id_between("/containers/", "/logs?stdout=1&stderr=1&tail=20")) {
        if (!lookup(*id)) return not_found(*id);
        return {200, docker_log_frame(1, "loading\n") + docker_log_frame(2, "ready\n")};
      }
    }
    if (request.method == "DELETE") {
      if (auto id = id_between("/containers/", "?force=true")) {
        std::string key = containers_.count(*id) ? *id : "id-" + *id;
        if (!containers_.erase(key)) return not_found(*id);
        return {204, ""};
      }
    }
    return {500, "{\"message\":\"the fake does not know " + request.method + " " + target + "\"}"};
  }

  std::mutex mutex_;
  bool image_present_ = true;
  bool hold_pull_ = false;
  std::map<std::string, Container> containers_;
  Gate pull_gate_;
  FakeDocker fake_;  // last: its threads call answer(), so it goes first
};

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds limit = 2s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return condition();
}

int count(const std::vector<std::string>& targets, const std::string& target) {
  return static_cast<int>(std::count(targets.begin(), targets.end(), target));
}
int index_of(const std::vector<std::string>& targets, const std::string& target) {
  auto found = std::find(targets.begin(), targets.end(), target);
  return found == targets.end() ? -1 : static_cast<int>(found - targets.begin());
}

class ContainerRuntimeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("nebula-container-runtime-" + std::to_string(::getpid()));
    fs::create_directories(dir_ / "models");
    daemon_ = std::make_unique<Daemon>(dir_ / "docker.sock");
    ContainerRuntimeOptions options;
    options.refresh_interval = 20ms;
    options.call_timeout = 2s;
    runtime_ = std::make_unique<ContainerRuntime>(daemon_->fake().path(), options);
  }
  void TearDown() override {
    runtime_.reset();
    daemon_->pull_gate().open();
    daemon_.reset();
    fs::remove_all(dir_);
  }

  engines::ContainerSpec spec(const std::string& name) {
    engines::ContainerSpec spec;
    spec.name = name;
    spec.image = "img:1";
    spec.host_port = 8123;
    spec.mounts.push_back(engines::Mount{(dir_ / "models").string(), "/models", true});
    return spec;
  }
  std::vector<std::string> allowed() { return {(dir_ / "models").string()}; }

  bool phase_is(const std::string& replica, Phase phase) {
    return eventually([&] { return runtime_->state(replica).phase == phase; });
  }

  fs::path dir_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<ContainerRuntime> runtime_;
};

TEST_F(ContainerRuntimeTest, StartRunsTheContainer) {
  runtime_->start("chat-0", spec("chat-0"), allowed());
  ASSERT_TRUE(phase_is("chat-0", Phase::Running)) << runtime_->state("chat-0").stage;
  auto state = runtime_->state("chat-0");
  EXPECT_EQ(state.container_id, "id-chat-0");
  EXPECT_EQ(state.stage, "running");
  EXPECT_TRUE(state.error.empty()) << state.error;
  // The refresh fills in the pid.
  EXPECT_TRUE(eventually([&] { return runtime_->state("chat-0").pid == 4242; }));
  auto targets = daemon_->targets();
  ASSERT_GE(targets.size(), 4u);
  EXPECT_EQ(std::vector<std::string>(targets.begin(), targets.begin() + 4),
            (std::vector<std::string>{"DELETE /containers/chat-0?force=true", "GET /images/img:1/json",
                                      "POST /containers/create?name=chat-0", "POST /containers/id-chat-0/start"}));
  EXPECT_EQ(count(targets, "POST /images/create?fromImage=img:1"), 0) << "the image is present";
  EXPECT_EQ(runtime_->replicas(), std::vector<std::string>{"chat-0"});

  auto logs = runtime_->logs("chat-0", 20);
  ASSERT_TRUE(logs) << logs.error().message;
  EXPECT_EQ(*logs, "loading\nready\n");
  auto none = runtime_->logs("nobody", 20);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code, ErrorCode::NotFound);
  EXPECT_EQ(runtime_->state("nobody").phase, Phase::Unknown);
}

TEST_F(ContainerRuntimeTest, RefusedSpecFailsWithoutTouchingDocker) {
  engines::ContainerSpec privileged = spec("priv");
  privileged.privileged = true;
  engines::ContainerSpec foreign = spec("foreign");
  foreign.mounts.push_back(engines::Mount{"/etc", "/etc", true});
  runtime_->start("priv", privileged, allowed());
  runtime_->start("foreign", foreign, allowed());
  ASSERT_TRUE(phase_is("priv", Phase::Failed));
  ASSERT_TRUE(phase_is("foreign", Phase::Failed));
  EXPECT_NE(runtime_->state("priv").error.find("privileged"), std::string::npos) << runtime_->state("priv").error;
  EXPECT_NE(runtime_->state("foreign").error.find("/etc"), std::string::npos) << runtime_->state("foreign").error;
  EXPECT_NE(runtime_->state("foreign").error.find("allowed mounts"), std::string::npos);
  EXPECT_EQ(runtime_->state("foreign").stage, "refused");
  EXPECT_TRUE(daemon_->targets().empty()) << "nothing is sent to Docker, let alone a create";
}

TEST_F(ContainerRuntimeTest, MissingImageIsPulledFirstWithoutBlockingTheCaller) {
  daemon_->set_image_present(false);
  daemon_->hold_pulls();
  runtime_->start("chat-0", spec("chat-0"), allowed());
  // start() returned while nothing has been answered yet.
  EXPECT_EQ(runtime_->state("chat-0").phase, Phase::Starting);
  ASSERT_TRUE(eventually([&] { return daemon_->pull_gate().waiting(); }));
  // Docker holds the pull: the caller still gets its snapshot, which says why it waits.
  auto pulling = runtime_->state("chat-0");
  EXPECT_EQ(pulling.phase, Phase::Starting);
  EXPECT_EQ(pulling.stage, "pulling image img:1");
  EXPECT_TRUE(pulling.container_id.empty());
  // Another replica is not held up behind the pull.
  daemon_->add_container("id-other", true, 0);
  runtime_->adopt("other", "id-other");
  ASSERT_TRUE(phase_is("other", Phase::Running));

  daemon_->pull_gate().open();
  ASSERT_TRUE(phase_is("chat-0", Phase::Running)) << runtime_->state("chat-0").error;
  auto targets = daemon_->targets();
  int pull = index_of(targets, "POST /images/create?fromImage=img:1");
  int create = index_of(targets, "POST /containers/create?name=chat-0");
  ASSERT_GE(pull, 0);
  EXPECT_LT(index_of(targets, "GET /images/img:1/json"), pull);
  EXPECT_LT(pull, create);
}

TEST_F(ContainerRuntimeTest, ContainerThatExitsIsReportedWithItsCode) {
  runtime_->start("chat-0", spec("chat-0"), allowed());
  ASSERT_TRUE(phase_is("chat-0", Phase::Running));
  daemon_->exit_container("id-chat-0", 3);
  ASSERT_TRUE(phase_is("chat-0", Phase::Exited));
  auto state = runtime_->state("chat-0");
  EXPECT_EQ(state.exit_code, 3);
  EXPECT_EQ(state.pid, 0);
  EXPECT_EQ(state.container_id, "id-chat-0");
  // An exited container is no longer inspected: a running one is, twice more, and chat-0 not once.
  daemon_->add_container("id-other", true, 0);
  runtime_->adopt("other", "id-other");
  int chat_inspections = count(daemon_->targets(), "GET /containers/id-chat-0/json");
  int other_inspections = count(daemon_->targets(), "GET /containers/id-other/json");
  ASSERT_TRUE(
      eventually([&] { return count(daemon_->targets(), "GET /containers/id-other/json") >= other_inspections + 2; }));
  EXPECT_EQ(count(daemon_->targets(), "GET /containers/id-chat-0/json"), chat_inspections);
}

TEST_F(ContainerRuntimeTest, StopStopsThenRemoves) {
  runtime_->start("chat-0", spec("chat-0"), allowed());
  ASSERT_TRUE(phase_is("chat-0", Phase::Running));
  runtime_->stop("chat-0", 7s);
  auto right_after = runtime_->state("chat-0");
  // "stopping" at once, unless the worker already finished (a loaded machine can deschedule us).
  EXPECT_TRUE(right_after.stage == "stopping" || right_after.stage == "stopped") << right_after.stage;
  ASSERT_TRUE(phase_is("chat-0", Phase::Exited));
  EXPECT_EQ(runtime_->state("chat-0").exit_code, 143);
  auto targets = daemon_->targets();
  int stop = index_of(targets, "POST /containers/id-chat-0/stop?t=7");
  int remove = index_of(targets, "DELETE /containers/id-chat-0?force=true");
  ASSERT_GE(stop, 0);
  EXPECT_LT(stop, remove);

  runtime_->forget("chat-0");
  EXPECT_EQ(runtime_->state("chat-0").phase, Phase::Unknown);
  EXPECT_TRUE(runtime_->replicas().empty());
}

TEST_F(ContainerRuntimeTest, ForgettingAReplicaRemovesItsContainer) {
  // A running container (an engine killed for a startup timeout) and an exited one (a crash):
  // forgetting either leaves nothing behind in Docker.
  runtime_->start("chat-0", spec("chat-0"), allowed());
  ASSERT_TRUE(phase_is("chat-0", Phase::Running));
  runtime_->stop("chat-0", 0s);
  runtime_->forget("chat-0");
  ASSERT_TRUE(eventually([&] { return index_of(daemon_->targets(), "DELETE /containers/id-chat-0?force=true") >= 0; }));
  EXPECT_GE(index_of(daemon_->targets(), "POST /containers/id-chat-0/stop?t=0"), 0);

  runtime_->start("chat-1", spec("chat-1"), allowed());
  ASSERT_TRUE(phase_is("chat-1", Phase::Running));
  daemon_->exit_container("id-chat-1", 3);
  ASSERT_TRUE(phase_is("chat-1", Phase::Exited));
  runtime_->forget("chat-1");
  EXPECT_TRUE(eventually([&] { return index_of(daemon_->targets(), "DELETE /containers/id-chat-1?force=true") >= 0; }));
}

TEST_F(ContainerRuntimeTest, StopDuringPullAbandonsTheStart) {
  daemon_->set_image_present(false);
  daemon_->hold_pulls();
  runtime_->start("chat-0", spec("chat-0"), allowed());
  ASSERT_TRUE(eventually([&] { return daemon_->pull_gate().waiting(); }));
  runtime_->stop("chat-0", 1s);
  // The pull is still held by Docker, yet the stop completes.
  ASSERT_TRUE(phase_is("chat-0", Phase::Exited)) << runtime_->state("chat-0").stage;
  EXPECT_FALSE(daemon_->pull_gate().passed());
  EXPECT_EQ(index_of(daemon_->targets(), "POST /containers/create?name=chat-0"), -1);
  EXPECT_GE(index_of(daemon_->targets(), "POST /containers/chat-0/stop?t=1"), 0) << "by name: no id yet";
}

TEST_F(ContainerRuntimeTest, AdoptTakesOverRecordedContainers) {
  daemon_->add_container("id-alive", true, 0);
  daemon_->add_container("id-dead", false, 137);
  runtime_->adopt("alive", "id-alive");
  runtime_->adopt("dead", "id-dead");
  runtime_->adopt("gone", "id-gone");
  EXPECT_EQ(runtime_->state("alive").container_id, "id-alive");
  ASSERT_TRUE(phase_is("alive", Phase::Running));
  EXPECT_EQ(runtime_->state("alive").pid, 4242);
  ASSERT_TRUE(phase_is("dead", Phase::Exited));
  EXPECT_EQ(runtime_->state("dead").exit_code, 137);
  ASSERT_TRUE(phase_is("gone", Phase::Exited));
  EXPECT_EQ(runtime_->state("gone").exit_code, -1);
  EXPECT_NE(runtime_->state("gone").error.find("no longer exists"), std::string::npos);
  // An adopted container is supervised like a started one.
  daemon_->exit_container("id-alive", 1);
  ASSERT_TRUE(phase_is("alive", Phase::Exited));
  EXPECT_EQ(runtime_->state("alive").exit_code, 1);
  EXPECT_EQ(count(daemon_->targets(), "DELETE /containers/id-alive?force=true"), 0) << "adopting touches nothing";
}

TEST_F(ContainerRuntimeTest, DaemonDownKeepsThePhase) {
  runtime_->start("chat-0", spec("chat-0"), allowed());
  ASSERT_TRUE(phase_is("chat-0", Phase::Running));
  daemon_.reset();  // the socket goes away; the container may well still run
  ASSERT_TRUE(eventually([&] { return !runtime_->state("chat-0").error.empty(); }));
  EXPECT_EQ(runtime_->state("chat-0").phase, Phase::Running);
  runtime_->adopt("later", "id-later");
  // Its inspection fails (the daemon did not answer): it stays Unknown.
  ASSERT_TRUE(eventually([&] { return !runtime_->state("later").error.empty(); }));
  EXPECT_EQ(runtime_->state("later").phase, Phase::Unknown);
  daemon_ = std::make_unique<Daemon>(dir_ / "docker.sock");  // for TearDown
}

TEST_F(ContainerRuntimeTest, DestructionDoesNotWaitForAPull) {
  daemon_->set_image_present(false);
  daemon_->hold_pulls();
  runtime_->start("chat-0", spec("chat-0"), allowed());
  ASSERT_TRUE(eventually([&] { return daemon_->pull_gate().waiting(); }));
  runtime_.reset();
  EXPECT_FALSE(daemon_->pull_gate().passed()) << "the runtime went while Docker still held the pull";
  EXPECT_EQ(index_of(daemon_->targets(), "POST /containers/create?name=chat-0"), -1);
}

}  // namespace
}  // namespace nebula::agent
