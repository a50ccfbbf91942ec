#include "agent/supervisor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <filesystem>
#include <fstream>

#include "agent/container_runtime.h"
#include "http/http.h"

namespace nebula::agent {

namespace {
using std::chrono::milliseconds;
using TimePoint = std::chrono::steady_clock::time_point;

// How often a running engine is checked for having exited (waitpid, or the container runtime's
// last inspection): often while it is being stopped, since a mode switch waits for it.
constexpr milliseconds kExitCheck{200};
constexpr milliseconds kExitCheckStopping{10};
constexpr milliseconds kHousekeeping{1000};  // log rotation, load from the engine's metrics
constexpr milliseconds kRetry{1000};         // a report or deletion the server did not take
constexpr milliseconds kSleepRetry{250};     // a sleep or wake the engine refused
constexpr milliseconds kMinWait{2};          // run() never spins faster than this

// Readiness probes after launch: every 10 ms for the first second (a simulator or a small model
// is ready in well under a second, and each probe is one local request), then slower.
milliseconds readiness_interval(int probes) {
  if (probes < 100) return milliseconds(10);
  if (probes < 200) return milliseconds(100);
  return milliseconds(500);
}

// Writes the files a driver asked for (Command::files) before its engine starts.
Status write_launch_files(const std::map<std::string, std::string>& files) {
  for (const auto& [path, contents] : files) {
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
    if (ec) return Error{ErrorCode::Internal, fmt::format("cannot create the directory of {}: {}", path, ec.message())};
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << contents;
    out.close();
    if (!out) return Error{ErrorCode::Internal, "cannot write " + path};
  }
  return {};
}

int64_t seconds_of(milliseconds duration) {
  return std::chrono::duration_cast<std::chrono::seconds>(duration).count();
}
}  // namespace

const char* Supervisor::phase_name(Phase phase) {
  switch (phase) {
    case Phase::Idle: return "Idle";
    case Phase::Downloading: return "Downloading";
    case Phase::Starting: return "Starting";
    case Phase::Preparing: return "Preparing";
    case Phase::Ready: return "Ready";
    case Phase::Unhealthy: return "Unhealthy";
    case Phase::Sleeping: return "Sleeping";
    case Phase::StoppedAsleep: return "StoppedAsleep";
    case Phase::StoppingToSleep: return "StoppingToSleep";
    case Phase::Killing: return "Killing";
    case Phase::Stopping: return "Stopping";
    case Phase::Removing: return "Removing";
    case Phase::Gone: return "Gone";
  }
  return "?";
}

Supervisor::Supervisor(SupervisorHost& host, asio::io_context& io, const std::string& name)
    : host_(host), io_(io), name_(name), alive_(std::make_shared<bool>(true)) {
  desired_.metadata.name = name;
  backoff_ = host_.supervision().restart_backoff;
}

Supervisor::~Supervisor() {
  *alive_ = false;
}

void Supervisor::adopt(const Adopted& record) {
  from_record_ = true;
  desired_.spec.engine = record.engine;
  driver_ = host_.driver(record.engine);
  status_.restarts = record.restarts;
  status_.phase = "";
  auto start = host_.launcher().start_time(record.pid);
  bool container = !record.container_id.empty();
  bool alive = container || (start && *start == record.start_time);
  if (!alive) {
    // It ended while no agent watched: a crash as far as anyone can tell.
    status_.restarts = record.restarts + 1;
    status_.last_error = "the engine exited while the agent was down";
    spdlog::warn("agent: the engine of {} (pid {}) ended while the agent was down", name_, record.pid);
    return;
  }
  port_ = record.port;
  adopted_ = true;
  started_ = now();
  status_.port = record.port;
  status_.endpoint = record.endpoint;
  status_.plan_version = record.plan_version;
  // Whether it is ready is probed as for a start, without the driver's post-start work.
  phase_ = Phase::Starting;
  next_probe_ = now();
  if (container) {
    // A container: the runtime inspects it and reports whether it still runs.
    host_.containers().adopt(name_, record.container_id);
    container_ = true;
    container_id_ = record.container_id;
    spdlog::info("agent: re-adopting container {} of {}", record.container_id, name_);
  } else {
    pid_ = record.pid;
    start_time_ = record.start_time;
    status_.pid = record.pid;
    spdlog::info("agent: re-adopted engine of {} (pid {}, port {})", name_, record.pid, record.port);
  }
}

void Supervisor::apply(const api::Replica& replica) {
  desired_ = replica;
  deleted_ = false;
  if (phase_ == Phase::Gone) phase_ = Phase::Idle;  // placed here again before it was dropped
  if (!driver_) driver_ = host_.driver(replica.spec.engine);
  if (!listed_ && !from_record_) {
    status_ = replica.status;
    status_.pid = 0;
    status_dirty_ = true;
  } else if (!listed_) {
    // An engine known from agent.db: keep what this agent knows of the process, take the rest.
    api::ReplicaStatus known = status_;
    status_ = replica.status;
    status_.pid = known.pid;
    status_.port = known.port;
    status_.endpoint = known.endpoint;
    status_.plan_version = known.plan_version;
    status_.restarts = std::max(known.restarts, replica.status.restarts);
    if (!known.last_error.empty()) status_.last_error = known.last_error;
    if (!running()) status_.phase = api::phase::kScheduled;
    status_dirty_ = true;
  } else if (replica.status.phase != status_.phase) {
    // Someone else rewrote the status (the controller marks replicas of a silent node Unknown):
    // report what this agent actually sees.
    status_dirty_ = true;
  }
  listed_ = true;
  kick();
}

void Supervisor::mark_deleted() {
  deleted_ = true;
  kick();
}

void Supervisor::kick() {
  kicked_ = true;
  if (wake_) wake_->cancel();
}

void Supervisor::stop() {
  stopped_ = true;
  kick();
}

awaitable<void> Supervisor::run() {
  wake_ = std::make_unique<asio::steady_timer>(io_);
  while (!stopped_ && phase_ != Phase::Gone) {
    kicked_ = false;
    co_await step();
    co_await report();
    if (stopped_ || phase_ == Phase::Gone) break;
    if (kicked_) continue;  // something changed while the step ran
    auto wait = std::chrono::duration_cast<milliseconds>(next_deadline() - now());
    wake_->expires_after(std::clamp(wait, kMinWait, milliseconds(std::chrono::hours(1))));
    boost::system::error_code cancelled;
    co_await wake_->async_wait(asio::redirect_error(asio::use_awaitable, cancelled));
  }
}

TimePoint Supervisor::next_deadline() const {
  const TimePoint now = this->now();
  TimePoint next = TimePoint::max();
  auto at = [&next](TimePoint time) { next = std::min(next, time); };
  if (status_dirty_ && !deleted_) at(now + kRetry);
  if (running()) {
    bool stopping = phase_ == Phase::Stopping || phase_ == Phase::StoppingToSleep || phase_ == Phase::Killing;
    at(now + (stopping ? kExitCheckStopping : kExitCheck));
    if (stopping && !container_) at(stop_deadline_);
  }
  switch (phase_) {
    case Phase::Idle: at(next_start_); break;
    case Phase::Downloading: at(now + kRetry); break;  // the progress message; the end kicks
    case Phase::Starting:
      at(next_probe_);
      at(started_ + host_.startup_timeout(desired_.spec.engine));
      break;
    case Phase::Preparing: break;  // the driver's work kicks when it ends
    case Phase::Ready:
      at(next_probe_);
      at(next_housekeeping_);
      if (desired_.spec.sleep_level > 0) at(next_sleep_attempt_);
      break;
    case Phase::Unhealthy:  // not put to sleep until it answers again
      at(next_probe_);
      at(next_housekeeping_);
      break;
    case Phase::Sleeping:
      at(next_housekeeping_);
      if (desired_.spec.sleep_level == 0) at(next_sleep_attempt_);
      break;
    case Phase::Removing: at(now + kRetry); break;
    case Phase::StoppedAsleep:
    case Phase::StoppingToSleep:
    case Phase::Killing:
    case Phase::Stopping:
    case Phase::Gone: break;
  }
  return next;
}

void Supervisor::set_status_phase(const std::string& phase, const std::string& message) {
  if (status_.phase == phase && status_.message == message) return;
  status_.phase = phase;
  status_.message = message;
  status_dirty_ = true;
}

awaitable<void> Supervisor::report() {
  if (!status_dirty_ || deleted_ || status_.phase.empty()) co_return;
  status_dirty_ = false;
  // A named local, not a condition: g++ 12 mishandles a co_await inside an if (or ?:).
  bool taken = co_await host_.put_status(name_, status_);
  if (!taken) status_dirty_ = true;
}

std::string Supervisor::stopped_asleep_message() const {
  return fmt::format("stopped while idle ({} cannot sleep here); the next request starts it", desired_.spec.engine);
}

bool Supervisor::can_sleep_here() const {
  return driver_ && driver_->can_sleep(host_.launch_context(*this, port_));
}

awaitable<void> Supervisor::step() {
  const TimePoint now = this->now();
  const SupervisorOptions& options = host_.supervision();

  // The engine's exit, whatever the phase: expected (stopping), or a crash.
  if (running()) {
    if (std::optional<ExitStatus> exit = engine_exited()) {
      bool was_starting = phase_ == Phase::Starting || phase_ == Phase::Preparing;
      // An engine that dies while starting says why in its last log lines: the process's log
      // file, or what the container runtime read from Docker when it saw the container exit.
      std::string log_tail;
      if (was_starting) {
        log_tail = container_ ? host_.containers().state(name_).log_tail : tail_lines(host_.log_path(name_), 10);
      }
      forget();
      host_.engines_changed();
      if (phase_ == Phase::StoppingToSleep) {
        phase_ = Phase::StoppedAsleep;
        set_status_phase(api::phase::kSleeping, stopped_asleep_message());
      } else if (phase_ == Phase::Killing) {
        crashed(kill_reason_, kill_log_tail_);
      } else if (phase_ != Phase::Stopping && !deleted_ && !desired_.spec.stop) {
        std::string why = "engine " + exit->describe();
        if (was_starting) why += " while starting";
        crashed(why, log_tail);
      }
    }
  }

  if (deleted_ || desired_.spec.stop) {
    host_.cancel_download(*this);
    if (running() && phase_ != Phase::Stopping) {
      kill_engine(SIGTERM);
      phase_ = Phase::Stopping;
      stop_deadline_ = now + options.stop_grace;
      set_status_phase(api::phase::kStopping, "stopping the engine");
    } else if (running() && now > stop_deadline_ && !container_) {
      kill_engine(SIGKILL);
    }
    if (running()) co_return;
    if (deleted_) {
      phase_ = Phase::Gone;
      co_return;
    }
    // The engine is gone: remove the Replica; the watch then reports it deleted.
    phase_ = Phase::Removing;
    bool removed = co_await host_.delete_replica(name_);
    if (removed) {
      deleted_ = true;
      phase_ = Phase::Gone;
    }
    co_return;
  }

  if (!running()) {
    if (phase_ == Phase::Stopping || phase_ == Phase::Removing) phase_ = Phase::Idle;  // wanted again
    if (desired_.spec.sleep_level > 0 && driver_ && !can_sleep_here()) {
      phase_ = Phase::StoppedAsleep;
      set_status_phase(api::phase::kSleeping, stopped_asleep_message());
      co_return;
    }
    if (phase_ == Phase::StoppedAsleep) phase_ = Phase::Idle;  // woken: start it again
    if (now >= next_start_ && host_.model_ready(*this)) launch();
    co_return;
  }

  switch (phase_) {
    case Phase::StoppingToSleep:
    case Phase::Killing:
      if (now > stop_deadline_ && !container_) kill_engine(SIGKILL);
      co_return;
    case Phase::Starting:
      if (now >= next_probe_) co_await check_ready();
      co_return;
    case Phase::Preparing: {
      if (!prepared_) co_return;  // still running; it kicks when done
      Status done = std::move(*prepared_);
      prepared_.reset();
      if (!done.ok()) {
        abandon_start("preparing the engine failed: " + done.error().message);
        co_return;
      }
      became_ready();
      co_return;
    }
    case Phase::Ready:
    case Phase::Unhealthy:
      housekeeping();
      if (phase_ == Phase::Ready && now - ready_since_ >= options.stable_after) backoff_ = options.restart_backoff;
      if (now >= next_probe_) co_await check_liveness();
      if (phase_ == Phase::Ready) co_await follow_sleep();
      co_return;
    case Phase::Sleeping:
      housekeeping();
      co_await follow_sleep();
      co_return;
    default: co_return;
  }
}

// Starting: ready once the driver says so (and its post-start work is done), or killed when the
// startup timeout passes, with the engine's last log lines in the replica's error.
awaitable<void> Supervisor::check_ready() {
  next_probe_ = now() + readiness_interval(probes_++);
  auto readiness = co_await driver_->probe(host_.client(), status_.endpoint);
  if (!running() || phase_ != Phase::Starting) co_return;
  if (readiness == engines::Readiness::Ready) {
    if (adopted_) {
      became_ready();
    } else {
      start_prepare();
    }
    co_return;
  }
  if (readiness == engines::Readiness::Loading) set_status_phase(api::phase::kStarting, "the engine is loading");
  auto limit = host_.startup_timeout(desired_.spec.engine);
  if (now() - started_ > limit) {
    abandon_start(fmt::format("not ready after {} s", seconds_of(limit)), tail_lines(host_.log_path(name_), 10));
  }
}

// The driver's post-start work runs as a task of its own (an Ollama pull can take hours): the
// supervisor stays responsive meanwhile (a deletion stops the engine, which ends the work).
void Supervisor::start_prepare() {
  phase_ = Phase::Preparing;
  set_status_phase(api::phase::kStarting, "preparing the engine");
  engines::LaunchContext context = host_.launch_context(*this, port_);
  // Loading the model (llama.cpp's router) may take what is left of the startup timeout.
  auto left = context.ready_timeout - std::chrono::duration_cast<milliseconds>(now() - started_);
  context.ready_timeout = std::max(left, milliseconds(1000));
  auto alive = alive_;
  asio::co_spawn(
      io_,
      [this, alive, driver = driver_, client = &host_.client(), endpoint = status_.endpoint,
       context]() -> awaitable<void> {
        Status done = co_await driver->prepare(*client, endpoint, context);
        if (!*alive) co_return;
        prepared_ = std::move(done);
        kick();
      },
      asio::detached);
}

void Supervisor::became_ready() {
  phase_ = Phase::Ready;
  ready_since_ = now();
  next_housekeeping_ = ready_since_ + kHousekeeping;
  failed_probes_ = 0;
  next_probe_ = now() + host_.supervision().probe_period;
  status_.next_restart_ms = 0;
  set_status_phase(api::phase::kReady, "");
}

// The driver's probe, bounded by `timeout`: nullopt when it did not answer in time. The probe runs
// as a task of its own, so a hung engine costs the timeout, not the HTTP client's own limit.
awaitable<std::optional<engines::Readiness>> Supervisor::probe_within(milliseconds timeout) {
  auto answer = std::make_shared<std::optional<engines::Readiness>>();
  auto timer = std::make_shared<asio::steady_timer>(io_, timeout);
  asio::co_spawn(
      io_,
      [answer, timer, driver = driver_, client = &host_.client(), endpoint = status_.endpoint]() -> awaitable<void> {
        *answer = co_await driver->probe(*client, endpoint);
        timer->cancel();
      },
      asio::detached);
  if (!*answer) {
    boost::system::error_code cancelled;
    co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, cancelled));
  }
  co_return *answer;
}

// Ready or Unhealthy: the liveness probe. The first failure takes the replica out of routing
// (the gateway routes Ready replicas only); `probe_threshold` in a row restart it.
awaitable<void> Supervisor::check_liveness() {
  const SupervisorOptions& options = host_.supervision();
  next_probe_ = now() + options.probe_period;
  auto readiness = co_await probe_within(options.probe_timeout);
  if (!running() || (phase_ != Phase::Ready && phase_ != Phase::Unhealthy)) co_return;
  if (readiness == engines::Readiness::Ready) {
    if (phase_ == Phase::Unhealthy) {
      spdlog::info("agent: {} answers its health probe again", name_);
      became_ready();
    }
    failed_probes_ = 0;
    co_return;
  }
  ++failed_probes_;
  std::string why = !readiness
                        ? fmt::format("no answer to its health probe within {} ms", options.probe_timeout.count())
                    : *readiness == engines::Readiness::Down ? std::string("its health endpoint does not answer")
                                                             : std::string("its health endpoint says it is not ready");
  if (failed_probes_ >= options.probe_threshold) {
    spdlog::warn("agent: {}: {} ({} probes in a row): restarting it", name_, why, failed_probes_);
    kill_for_restart(fmt::format("unhealthy: {} ({} probes in a row)", why, failed_probes_));
    co_return;
  }
  if (phase_ == Phase::Ready) spdlog::warn("agent: {}: {}: out of routing until it answers", name_, why);
  phase_ = Phase::Unhealthy;
  set_status_phase(api::phase::kUnhealthy,
                   fmt::format("{} ({} of {} failed probes)", why, failed_probes_, options.probe_threshold));
}

// Log rotation every second, and the engine's load for /metrics, fetched as a task of its own so
// that a hung engine's metrics never hold up the liveness probe.
void Supervisor::housekeeping() {
  const TimePoint now = this->now();
  if (now < next_housekeeping_) return;
  next_housekeeping_ = now + kHousekeeping;
  const SupervisorOptions& options = host_.supervision();
  if (rotate_log_if_larger(host_.log_path(name_), options.log_max_bytes, options.log_keep)) {
    spdlog::info("agent: rotated the log of {}", name_);
  }
  if (!driver_ || load_in_flight_) return;
  load_in_flight_ = true;
  auto alive = alive_;
  asio::co_spawn(
      io_,
      [this, alive, driver = driver_, client = &host_.client(), endpoint = status_.endpoint,
       context = host_.launch_context(*this, port_)]() -> awaitable<void> {
        auto load = co_await driver->load(*client, endpoint, context);
        if (!*alive) co_return;
        load_in_flight_ = false;
        if (load) {
          load_ = *load;
        } else {
          load_.reset();
        }
      },
      asio::detached);
}

// Sleep and wake follow spec.sleep_level, through the driver (vLLM's levels, Ollama's keep_alive,
// llama.cpp's router). An engine that cannot sleep (as launched here) is stopped instead, kept
// stopped while the level stays above 0 and started again when it drops to 0.
awaitable<void> Supervisor::follow_sleep() {
  const TimePoint now = this->now();
  if (!driver_ || now < next_sleep_attempt_) co_return;
  int wanted = desired_.spec.sleep_level;
  engines::LaunchContext context = host_.launch_context(*this, port_);
  if (!driver_->can_sleep(context)) {
    if (wanted > 0) {
      spdlog::info("agent: stopping the engine of {} while idle: {} cannot sleep here", name_, desired_.spec.engine);
      kill_engine(SIGTERM);
      phase_ = Phase::StoppingToSleep;
      stop_deadline_ = now + host_.supervision().stop_grace;
      set_status_phase(api::phase::kStopping, "stopping the engine while idle: it cannot sleep here");
    }
    co_return;
  }
  if (wanted > 0 && phase_ == Phase::Ready) {
    context.sleep_level = wanted;
    auto slept = co_await driver_->sleep(host_.client(), status_.endpoint, wanted, context);
    if (!slept) {
      next_sleep_attempt_ = this->now() + kSleepRetry;
      co_return;
    }
    slept_level_ = wanted;
    phase_ = Phase::Sleeping;
    set_status_phase(api::phase::kSleeping, fmt::format("sleep level {}", wanted));
    host_.engines_changed();
  } else if (wanted == 0 && phase_ == Phase::Sleeping) {
    context.sleep_level = slept_level_;
    auto woken = co_await driver_->wake(host_.client(), status_.endpoint, context);
    auto readiness = engines::Readiness::Down;
    if (woken) readiness = co_await driver_->probe(host_.client(), status_.endpoint);
    if (readiness != engines::Readiness::Ready) {
      next_sleep_attempt_ = this->now() + kSleepRetry;
      co_return;
    }
    became_ready();
    host_.engines_changed();
  }
}

void Supervisor::launch() {
  const auto& spec = desired_.spec;
  if (std::string why = host_.engine_unavailable(spec.engine); !why.empty() || !driver_) {
    refuse_launch(why.empty() ? "engine " + spec.engine + " is not known" : why);
    return;
  }
  auto port = find_free_port();
  if (!port) {
    set_status_phase(api::phase::kFailed, port.error().message);
    next_start_ = now() + kRetry;
    return;
  }
  engines::LaunchContext context = host_.launch_context(*this, *port);
  if (driver_->runs_in_container()) {
    auto container = driver_->container(context);
    if (!container) {
      refuse_launch(container.error().message);
      return;
    }
    host_.containers().start(name_, *container, context.config.allowed_mounts);
    container_ = true;
    container_id_.clear();
    status_.pid = 0;
    spdlog::info("agent: starting {} in a container of {} on port {}", name_, container->image, *port);
    engine_started(*port, "starting container " + container->image);
    return;
  }
  auto command = driver_->command(context);
  if (!command) {
    refuse_launch(command.error().message);
    return;
  }
  if (Status written = write_launch_files(command->files); !written.ok()) {
    crashed(written.error().message);
    return;
  }
  LaunchSpec launch_spec;
  launch_spec.argv = command->argv;
  launch_spec.env = command->env;
  launch_spec.log_path = host_.log_path(name_);
  auto pid = host_.launcher().launch(launch_spec);
  if (!pid) {
    crashed(pid.error().message);
    return;
  }
  pid_ = *pid;
  start_time_ = host_.launcher().start_time(*pid).value_or(0);
  status_.pid = *pid;
  spdlog::info("agent: started {} (pid {}, port {}): {}", name_, *pid, *port, fmt::join(launch_spec.argv, " "));
  engine_started(*port, "waiting for the engine to be ready");
}

// The replica cannot be launched here as specified: Failed, retried after the longest backoff.
void Supervisor::refuse_launch(const std::string& why) {
  status_.last_error = why;
  set_status_phase(api::phase::kFailed, why);
  phase_ = Phase::Idle;
  next_start_ = now() + host_.supervision().max_restart_backoff;
}

// The engine (process or container) was just started on port: Starting, recorded in agent.db.
void Supervisor::engine_started(int port, const std::string& message) {
  port_ = port;
  phase_ = Phase::Starting;
  adopted_ = false;
  prepared_.reset();
  started_ = now();
  probes_ = 0;
  next_probe_ = started_;
  status_.port = port;
  status_.endpoint = fmt::format("http://127.0.0.1:{}", port);
  status_.plan_version = desired_.spec.plan_version;
  status_.next_restart_ms = 0;
  status_dirty_ = true;
  set_status_phase(api::phase::kStarting, message);
  host_.save_record(*this);
  host_.engines_changed();
}

// Kills an engine that failed to become ready; its exit then counts as a crash.
void Supervisor::abandon_start(const std::string& why, const std::string& log_tail) {
  kill_for_restart(why, log_tail);
}

// SIGKILL (an engine judged dead will not honour SIGTERM); the crash is counted when the exit is
// seen, so the process is reaped first.
void Supervisor::kill_for_restart(const std::string& why, const std::string& log_tail) {
  kill_engine(SIGKILL);
  phase_ = Phase::Killing;
  kill_reason_ = why;
  kill_log_tail_ = log_tail;
  stop_deadline_ = now() + host_.supervision().stop_grace;
}

// The engine died (or never came up): restart it after the backoff, which doubles per crash up
// to the cap and starts over once an engine ran stably.
void Supervisor::crashed(const std::string& why, const std::string& log_tail) {
  const SupervisorOptions& options = host_.supervision();
  const TimePoint now = this->now();
  if (ready_since_ != TimePoint{} && now - ready_since_ >= options.stable_after) backoff_ = options.restart_backoff;
  phase_ = Phase::Idle;
  ready_since_ = {};
  status_.restarts += 1;
  status_.last_error = log_tail.empty() ? why : why + "; last log lines:\n" + log_tail;
  next_start_ = now + backoff_;
  status_.next_restart_ms = to_unix_ms(host_.clock().wall_now() + backoff_);
  set_status_phase(api::phase::kFailed,
                   fmt::format("{}; restart {} in {} s", why, status_.restarts, seconds_of(backoff_)));
  spdlog::warn("agent: {}: {}", name_, status_.message);
  backoff_ = std::min(backoff_ * 2, options.max_restart_backoff);
}

void Supervisor::downloading(const std::string& message) {
  phase_ = Phase::Downloading;
  status_.next_restart_ms = 0;
  set_status_phase(api::phase::kDownloading, message);
}

// The engine process is gone: drop it from agent.db.
void Supervisor::forget() {
  if (container_) host_.containers().forget(name_);
  container_ = false;
  container_id_.clear();
  pid_ = 0;
  start_time_ = 0;
  status_.pid = 0;
  load_.reset();
  host_.remove_record(name_);
}

// Has the engine ended? A process is polled (and, when adopted, checked against pid reuse); a
// container is read from the runtime's last inspection.
std::optional<ExitStatus> Supervisor::engine_exited() {
  if (!container_) {
    std::optional<ExitStatus> exit = host_.launcher().poll(pid_);
    if (!exit && adopted_ && host_.launcher().start_time(pid_) != start_time_) exit = ExitStatus{-1, 0, ""};
    return exit;
  }
  auto state = host_.containers().state(name_);
  using ContainerPhase = ContainerRuntime::State::Phase;
  if (!state.container_id.empty() && state.container_id != container_id_) {
    container_id_ = state.container_id;
    host_.save_record(*this);
  }
  if (state.pid != status_.pid) {
    status_.pid = state.pid;  // the container's main process, as Docker reports it
    status_dirty_ = true;
  }
  if (state.phase == ContainerPhase::Starting && phase_ == Phase::Starting && !state.stage.empty()) {
    set_status_phase(api::phase::kStarting, state.stage);
  }
  if (state.phase != ContainerPhase::Exited && state.phase != ContainerPhase::Failed) return std::nullopt;
  ExitStatus exit;
  exit.code = state.exit_code;
  exit.detail = state.phase == ContainerPhase::Failed ? "container failed: " + state.error : "";
  return exit;
}

void Supervisor::kill_engine(int signal) {
  if (!container_) {
    if (pid_ != 0) {
      host_.launcher().signal_group(pid_, signal);
      // A stopped process (SIGSTOP) acts on SIGTERM only once it runs again.
      if (signal == SIGTERM) host_.launcher().signal_group(pid_, SIGCONT);
    }
    return;
  }
  // docker stop: SIGTERM, then SIGKILL after the grace (a second call changes nothing).
  if (signal == SIGTERM || signal == SIGKILL) {
    auto grace = signal == SIGKILL ? std::chrono::seconds(0)
                                   : std::chrono::duration_cast<std::chrono::seconds>(host_.supervision().stop_grace);
    host_.containers().stop(name_, grace);
  }
}

}  // namespace nebula::agent
