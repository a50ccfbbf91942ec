#include "agent/supervisor.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <map>
#include <set>
#include <stdexcept>

#include "http/http.h"

namespace nebula::agent {
namespace {

using namespace std::chrono_literals;
using Phase = Supervisor::Phase;

// Processes that exist only as entries here: launch() makes one, signals are recorded, and a
// process ends when the test says so (or at SIGKILL, which nothing survives).
class FakeLauncher final : public ProcessLauncher {
 public:
  Result<pid_t> launch(const LaunchSpec& spec) override {
    pid_t pid = next_pid_++;
    launched.push_back(spec);
    alive.insert(pid);
    return pid;
  }
  void signal_group(pid_t pid, int signal) override {
    signals[pid].push_back(signal);
    if (signal == SIGKILL) end(pid, ExitStatus{0, SIGKILL, ""});
  }
  std::optional<ExitStatus> poll(pid_t pid) override {
    if (auto it = exited.find(pid); it != exited.end()) return it->second;
    return std::nullopt;
  }
  std::optional<int64_t> start_time(pid_t pid) override {
    if (alive.count(pid)) return 1;
    return std::nullopt;
  }
  void end(pid_t pid, ExitStatus status) {
    alive.erase(pid);
    exited.emplace(pid, status);
  }

  std::vector<LaunchSpec> launched;
  std::set<pid_t> alive;
  std::map<pid_t, ExitStatus> exited;
  std::map<pid_t, std::vector<int>> signals;

 private:
  pid_t next_pid_ = 1000;
};

// An engine driver whose answers the test sets. probe() can hang (until released) and prepare()
// can take as long as the test wants, to show that one replica's wait holds up no other.
class FakeDriver final : public engines::EngineDriver {
 public:
  explicit FakeDriver(asio::io_context& io) : release_probe(io), release_prepare(io) {
    release_probe.expires_at(asio::steady_timer::time_point::max());
    release_prepare.expires_at(asio::steady_timer::time_point::max());
  }
  std::string name() const override { return "fake"; }
  engines::Availability detect(const engines::EngineConfig&) const override { return {true, "1", "", {}}; }
  Result<engines::Command> command(const engines::LaunchContext& context) const override {
    engines::Command command;
    command.argv = {"fake-engine", "--port", std::to_string(context.port)};
    return command;
  }
  awaitable<engines::Readiness> probe(http::Client&, std::string) const override {
    ++probes;
    if (probe_hangs) {
      boost::system::error_code ignored;
      co_await release_probe.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
    co_return readiness;
  }
  awaitable<Status> prepare(http::Client&, std::string, engines::LaunchContext) const override {
    ++prepares;
    if (prepare_waits) {
      boost::system::error_code ignored;
      co_await release_prepare.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
    co_return Status{};
  }
  awaitable<Result<engines::Load>> load(http::Client&, std::string) const override { co_return engines::Load{}; }
  bool can_sleep() const override { return true; }
  awaitable<Status> sleep(http::Client&, std::string, int level, engines::LaunchContext) const override {
    slept_at.push_back(level);
    co_return Status{};
  }
  awaitable<Status> wake(http::Client&, std::string, engines::LaunchContext) const override {
    ++wakes;
    co_return Status{};
  }

  engines::Readiness readiness = engines::Readiness::Loading;
  bool probe_hangs = false;
  bool prepare_waits = false;
  mutable asio::steady_timer release_probe;
  mutable asio::steady_timer release_prepare;
  mutable int probes = 0;
  mutable int prepares = 0;
  mutable int wakes = 0;
  mutable std::vector<int> slept_at;
};

class FakeHost final : public SupervisorHost {
 public:
  FakeHost(asio::io_context& io, FakeDriver& driver) : client_(io), driver_(driver) {
    options.restart_backoff = 10s;
    options.max_restart_backoff = 40s;
    options.stop_grace = 5s;
    options.probe_period = 5s;
    options.probe_timeout = 50ms;
    options.probe_threshold = 3;
  }
  const SupervisorOptions& supervision() const override { return options; }
  const Clock& clock() const override { return clock_; }
  ProcessLauncher& launcher() override { return launcher_; }
  http::Client& client() override { return client_; }
  const engines::EngineDriver* driver(const std::string& engine) const override {
    return engine == "fake" ? &driver_ : nullptr;
  }
  engines::LaunchContext launch_context(const Supervisor& replica, int port) const override {
    engines::LaunchContext context;
    context.replica = replica.name();
    context.port = port;
    return context;
  }
  std::string engine_unavailable(const std::string&) const override { return ""; }
  std::chrono::milliseconds startup_timeout(const std::string&) const override { return 60s; }
  bool model_ready(Supervisor&) override { return true; }
  void cancel_download(Supervisor&) override {}
  ContainerRuntime& containers() override { throw std::logic_error("no containers in these tests"); }
  void save_record(const Supervisor& replica) override { records.insert(replica.name()); }
  void remove_record(const std::string& replica) override { records.erase(replica); }
  std::string log_path(const std::string& replica) const override { return "/nonexistent/" + replica + ".log"; }
  awaitable<bool> put_status(const std::string& replica, const api::ReplicaStatus& status) override {
    reported[replica].push_back(status);
    co_return true;
  }
  awaitable<bool> delete_replica(const std::string& replica) override {
    deleted.push_back(replica);
    co_return true;
  }
  void engines_changed() override { ++changes; }

  SupervisorOptions options;
  FakeClock clock_;
  FakeLauncher launcher_;
  std::map<std::string, std::vector<api::ReplicaStatus>> reported;
  std::vector<std::string> deleted;
  std::set<std::string> records;
  int changes = 0;

 private:
  http::Client client_;
  FakeDriver& driver_;
};

api::Replica replica_spec(const std::string& name) {
  api::Replica replica;
  replica.metadata.name = name;
  replica.spec.deployment = "chat";
  replica.spec.engine = "fake";
  replica.spec.node = "n1";
  replica.status.phase = api::phase::kScheduled;
  return replica;
}

class SupervisorTest : public ::testing::Test {
 protected:
  SupervisorTest() : driver_(io_), host_(io_, driver_) {}

  std::unique_ptr<Supervisor> make(const std::string& name) {
    auto supervisor = std::make_unique<Supervisor>(host_, io_, name);
    supervisor->apply(replica_spec(name));
    return supervisor;
  }

  // Runs one step() and its report(), then whatever tasks of their own are ready.
  void step(Supervisor& supervisor) {
    drive([&]() -> awaitable<void> {
      co_await supervisor.step();
      co_await supervisor.report();
    });
  }
  template <typename Work>
  void drive(Work work) {
    bool done = false;
    asio::co_spawn(io_, work, [&](std::exception_ptr error) {
      if (error) std::rethrow_exception(error);
      done = true;
    });
    io_.restart();
    while (!done) io_.run_one();
    io_.poll();
  }
  void advance(std::chrono::milliseconds by) { host_.clock_.advance(by); }
  // Brings a fresh supervisor to Ready: launched, probed ready, prepared.
  std::unique_ptr<Supervisor> ready(const std::string& name) {
    auto supervisor = make(name);
    driver_.readiness = engines::Readiness::Ready;
    step(*supervisor);  // launch
    step(*supervisor);  // probe: ready -> prepare
    step(*supervisor);  // prepared -> Ready
    EXPECT_EQ(supervisor->phase(), Phase::Ready);
    return supervisor;
  }
  std::string last_phase(const std::string& name) { return host_.reported[name].back().phase; }

  asio::io_context io_;
  FakeDriver driver_;
  FakeHost host_;
};

TEST_F(SupervisorTest, LaunchesProbesUntilReadyThenPrepares) {
  auto supervisor = make("chat-1");
  step(*supervisor);
  ASSERT_EQ(host_.launcher_.launched.size(), 1u);
  EXPECT_EQ(supervisor->phase(), Phase::Starting);
  EXPECT_EQ(last_phase("chat-1"), api::phase::kStarting);
  EXPECT_TRUE(host_.records.count("chat-1")) << "recorded for the next agent";

  // Not ready yet: probed again at its deadline, which comes soon after the launch.
  step(*supervisor);
  EXPECT_EQ(supervisor->phase(), Phase::Starting);
  EXPECT_LE(supervisor->next_deadline(), host_.clock_.steady_now() + 10ms);
  advance(10ms);
  driver_.readiness = engines::Readiness::Ready;
  step(*supervisor);
  EXPECT_EQ(driver_.prepares, 1);
  step(*supervisor);
  EXPECT_EQ(supervisor->phase(), Phase::Ready);
  EXPECT_EQ(last_phase("chat-1"), api::phase::kReady);
  EXPECT_EQ(host_.launcher_.launched.size(), 1u);
}

// An engine's post-start work (an Ollama pull: hours) holds up no other replica of the node, and
// its own supervisor still answers.
TEST_F(SupervisorTest, ALongPrepareHoldsUpNoOtherReplica) {
  driver_.prepare_waits = true;
  auto slow = make("slow");
  driver_.readiness = engines::Readiness::Ready;
  step(*slow);
  step(*slow);
  EXPECT_EQ(slow->phase(), Phase::Preparing);

  auto other = make("other");
  step(*other);
  step(*other);
  EXPECT_EQ(other->phase(), Phase::Preparing) << "its prepare waits too";
  driver_.prepare_waits = false;
  driver_.release_prepare.cancel();  // both prepares end
  io_.restart();
  io_.poll();
  step(*other);
  step(*slow);
  EXPECT_EQ(other->phase(), Phase::Ready);
  EXPECT_EQ(slow->phase(), Phase::Ready);

  // A deletion while preparing stops the engine at once.
  driver_.prepare_waits = true;
  auto third = make("third");
  step(*third);
  step(*third);
  ASSERT_EQ(third->phase(), Phase::Preparing);
  third->mark_deleted();
  step(*third);
  EXPECT_EQ(third->phase(), Phase::Stopping);
  pid_t pid = third->pid();
  EXPECT_EQ(host_.launcher_.signals[pid].front(), SIGTERM);
  host_.launcher_.end(pid, ExitStatus{0, SIGTERM, ""});
  step(*third);
  EXPECT_EQ(third->phase(), Phase::Gone);
  driver_.release_prepare.cancel();
}

TEST_F(SupervisorTest, ACrashRestartsAfterABackoffThatDoubles) {
  auto supervisor = ready("chat-1");
  host_.launcher_.end(supervisor->pid(), ExitStatus{1, 0, ""});
  step(*supervisor);
  EXPECT_EQ(supervisor->phase(), Phase::Idle);
  EXPECT_EQ(supervisor->status().restarts, 1);
  EXPECT_EQ(last_phase("chat-1"), api::phase::kFailed);
  EXPECT_NE(supervisor->status().message.find("restart 1 in 10 s"), std::string::npos) << supervisor->status().message;
  EXPECT_EQ(supervisor->next_deadline(), host_.clock_.steady_now() + 10s) << "no tick: it sleeps until the restart";

  advance(9s);
  step(*supervisor);
  EXPECT_EQ(host_.launcher_.launched.size(), 1u) << "not before the backoff";
  advance(1s);
  step(*supervisor);
  EXPECT_EQ(host_.launcher_.launched.size(), 2u);
  EXPECT_EQ(supervisor->phase(), Phase::Starting);

  host_.launcher_.end(supervisor->pid(), ExitStatus{1, 0, ""});
  step(*supervisor);
  EXPECT_NE(supervisor->status().message.find("while starting; restart 2 in 20 s"), std::string::npos)
      << supervisor->status().message;
}

// Liveness: the first failed probe takes the replica out of routing (Unhealthy), the threshold
// restarts it, a counted restart.
TEST_F(SupervisorTest, FailedLivenessProbesMakeItUnhealthyThenRestartIt) {
  auto supervisor = ready("chat-1");
  EXPECT_EQ(supervisor->next_deadline(), host_.clock_.steady_now() + 200ms) << "only the exit check comes sooner";
  driver_.readiness = engines::Readiness::Down;
  step(*supervisor);
  EXPECT_EQ(supervisor->phase(), Phase::Ready) << "not probed before the period";

  advance(5s);
  step(*supervisor);
  EXPECT_EQ(supervisor->phase(), Phase::Unhealthy);
  EXPECT_EQ(last_phase("chat-1"), api::phase::kUnhealthy);
  EXPECT_NE(supervisor->status().message.find("1 of 3 failed probes"), std::string::npos);

  // Answers again: back in routing.
  driver_.readiness = engines::Readiness::Ready;
  advance(5s);
  step(*supervisor);
  EXPECT_EQ(supervisor->phase(), Phase::Ready);
  EXPECT_EQ(last_phase("chat-1"), api::phase::kReady);

  driver_.readiness = engines::Readiness::Loading;
  pid_t pid = supervisor->pid();
  for (int probe = 1; probe <= 2; ++probe) {
    advance(5s);
    step(*supervisor);
    EXPECT_EQ(supervisor->phase(), Phase::Unhealthy) << probe;
  }
  EXPECT_NE(supervisor->status().message.find("2 of 3 failed probes"), std::string::npos);
  advance(5s);
  step(*supervisor);
  EXPECT_EQ(host_.launcher_.signals[pid].back(), SIGKILL);
  EXPECT_EQ(supervisor->phase(), Phase::Killing);
  step(*supervisor);  // the exit is seen (SIGKILL ended the fake process)
  EXPECT_EQ(supervisor->phase(), Phase::Idle);
  EXPECT_EQ(supervisor->status().restarts, 1);
  EXPECT_NE(supervisor->status().last_error.find("unhealthy"), std::string::npos) << supervisor->status().last_error;
  advance(10s);
  step(*supervisor);
  EXPECT_EQ(host_.launcher_.launched.size(), 2u) << "replaced";
}

// A probe that does not answer within the probe timeout counts as failed: a hung engine costs the
// timeout, not the HTTP client's own limit.
TEST_F(SupervisorTest, AProbeWithoutAnswerWithinTheTimeoutFails) {
  auto supervisor = ready("chat-1");
  driver_.probe_hangs = true;
  advance(5s);
  step(*supervisor);
  EXPECT_EQ(supervisor->phase(), Phase::Unhealthy);
  EXPECT_NE(supervisor->status().message.find("no answer to its health probe within 50 ms"), std::string::npos)
      << supervisor->status().message;
  driver_.release_probe.cancel();
}

TEST_F(SupervisorTest, ADeletedReplicaIsStoppedWithGraceThenKilled) {
  auto supervisor = ready("chat-1");
  pid_t pid = supervisor->pid();
  supervisor->mark_deleted();
  step(*supervisor);
  EXPECT_EQ(supervisor->phase(), Phase::Stopping);
  EXPECT_EQ(host_.launcher_.signals[pid].front(), SIGTERM);
  advance(4s);
  step(*supervisor);
  EXPECT_NE(host_.launcher_.signals[pid].back(), SIGKILL) << "within the grace";
  advance(2s);
  step(*supervisor);
  EXPECT_EQ(host_.launcher_.signals[pid].back(), SIGKILL);
  step(*supervisor);
  EXPECT_EQ(supervisor->phase(), Phase::Gone);
  EXPECT_FALSE(host_.records.count("chat-1"));
  EXPECT_TRUE(host_.deleted.empty()) << "the server deleted it already";
}

TEST_F(SupervisorTest, AStoppedReplicaIsRemovedFromTheServerOnceItsEngineEnded) {
  auto supervisor = ready("chat-1");
  api::Replica stopped = replica_spec("chat-1");
  stopped.spec.stop = true;
  supervisor->apply(stopped);
  step(*supervisor);
  host_.launcher_.end(supervisor->pid(), ExitStatus{0, 0, ""});
  int changes = host_.changes;
  step(*supervisor);
  EXPECT_EQ(host_.changes, changes + 1) << "the node's GPU memory is reported at once";
  EXPECT_EQ(host_.deleted, std::vector<std::string>{"chat-1"});
  EXPECT_EQ(supervisor->phase(), Phase::Gone);
}

// Event-driven: a wake reaches the engine as soon as the desired state changes, not at a tick.
TEST_F(SupervisorTest, RunReactsToAChangeAtOnce) {
  auto supervisor = ready("chat-1");
  bool finished = false;
  asio::co_spawn(io_, supervisor->run(), [&](std::exception_ptr) { finished = true; });
  io_.restart();
  io_.poll();
  EXPECT_TRUE(driver_.slept_at.empty());

  api::Replica asleep = replica_spec("chat-1");
  asleep.spec.sleep_level = 1;
  supervisor->apply(asleep);
  io_.poll();
  EXPECT_EQ(driver_.slept_at, std::vector<int>{1});
  EXPECT_EQ(supervisor->phase(), Phase::Sleeping);
  EXPECT_EQ(last_phase("chat-1"), api::phase::kSleeping);

  supervisor->apply(replica_spec("chat-1"));
  io_.poll();
  EXPECT_EQ(driver_.wakes, 1);
  EXPECT_EQ(supervisor->phase(), Phase::Ready);
  EXPECT_EQ(last_phase("chat-1"), api::phase::kReady);

  supervisor->stop();
  io_.poll();
  EXPECT_TRUE(finished);
}

}  // namespace
}  // namespace nebula::agent
