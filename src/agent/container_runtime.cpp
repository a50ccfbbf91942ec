#include "agent/container_runtime.h"

#include <fmt/format.h>

#include <cctype>
#include <condition_variable>
#include <deque>
#include <functional>

#include "common/json.h"
#include "common/log.h"
#include "engines/docker.h"

namespace nebula::agent {
namespace {

using Clock = std::chrono::steady_clock;
using Phase = ContainerRuntime::State::Phase;

bool watched(const ContainerRuntime::State& state) {
  return !state.container_id.empty() && (state.phase == Phase::Running || state.phase == Phase::Unknown);
}

}  // namespace

struct ContainerRuntime::Command {
  enum class Kind { Start, Stop, Adopt };
  Kind kind = Kind::Start;
  uint64_t generation = 0;
  engines::ContainerSpec spec;
  std::vector<std::string> allowed_mounts;
  std::chrono::seconds grace{0};
  std::string container_id;
};

// Guarded by ContainerRuntime::mutex_, except `thread`, which only the runtime's own members
// start and join.
struct ContainerRuntime::Replica {
  std::string name;
  State state;
  // Bumped by every start, stop, adopt and forget: a start sequence (or a refresh) begun under
  // an older generation gives up and writes nothing.
  uint64_t generation = 0;
  std::string container_name;  // what a stop targets when the container's id is not known
  std::deque<Command> commands;
  bool retired = false;   // forgotten, or the runtime is going: the worker exits
  bool cleanup = false;   // forgotten: the worker first runs the queued stop (and removal)
  bool finished = false;  // the worker has exited (joining it does not wait)
  std::condition_variable wake;
  std::thread thread;
};

ContainerRuntime::ContainerRuntime(std::string socket_path, ContainerRuntimeOptions options)
    : socket_path_(std::move(socket_path)), options_(options) {}

ContainerRuntime::~ContainerRuntime() {
  std::vector<std::shared_ptr<Replica>> all;
  {
    std::lock_guard lock(mutex_);
    for (auto& [name, replica] : replicas_) all.push_back(replica);
    for (auto& replica : retired_) all.push_back(replica);
    for (auto& replica : all) {
      replica->retired = true;
      replica->cleanup = false;  // the agent is going: containers outlive it
      replica->commands.clear();
      replica->generation++;
      replica->wake.notify_all();
    }
  }
  for (auto& replica : all) {
    if (replica->thread.joinable()) replica->thread.join();
  }
}

void ContainerRuntime::reap_retired() {
  std::erase_if(retired_, [](const std::shared_ptr<Replica>& replica) {
    if (!replica->finished) return false;
    if (replica->thread.joinable()) replica->thread.join();
    return true;
  });
}

std::shared_ptr<ContainerRuntime::Replica> ContainerRuntime::replica_for(const std::string& name) {
  reap_retired();
  auto& replica = replicas_[name];
  if (!replica) {
    replica = std::make_shared<Replica>();
    replica->name = name;
    replica->thread = std::thread([this, keep = replica] { run(*keep); });
  }
  return replica;
}

void ContainerRuntime::start(const std::string& replica_name, engines::ContainerSpec spec,
                             std::vector<std::string> allowed_mounts) {
  if (spec.name.empty()) spec.name = replica_name;
  std::lock_guard lock(mutex_);
  auto replica = replica_for(replica_name);
  Command command;
  command.kind = Command::Kind::Start;
  command.generation = ++replica->generation;
  command.spec = std::move(spec);
  command.allowed_mounts = std::move(allowed_mounts);
  replica->container_name = command.spec.name;
  replica->state = State{};
  replica->state.phase = Phase::Starting;
  replica->state.stage = "queued";
  replica->commands.push_back(std::move(command));
  replica->wake.notify_all();
}

void ContainerRuntime::stop(const std::string& replica_name, std::chrono::seconds grace) {
  std::lock_guard lock(mutex_);
  auto replica = replica_for(replica_name);
  Command command;
  command.kind = Command::Kind::Stop;
  command.generation = ++replica->generation;
  command.grace = grace;
  replica->state.stage = "stopping";
  replica->commands.push_back(std::move(command));
  replica->wake.notify_all();
}

void ContainerRuntime::adopt(const std::string& replica_name, const std::string& container_id) {
  std::lock_guard lock(mutex_);
  auto replica = replica_for(replica_name);
  Command command;
  command.kind = Command::Kind::Adopt;
  command.generation = ++replica->generation;
  command.container_id = container_id;
  replica->container_name = container_id;
  replica->state = State{};
  replica->state.phase = Phase::Unknown;
  replica->state.container_id = container_id;
  replica->state.stage = "adopting";
  replica->commands.push_back(std::move(command));
  replica->wake.notify_all();
}

void ContainerRuntime::forget(const std::string& replica_name) {
  std::lock_guard lock(mutex_);
  auto found = replicas_.find(replica_name);
  if (found == replicas_.end()) return;
  auto replica = found->second;
  replicas_.erase(found);
  replica->retired = true;
  replica->generation++;
  // What is forgotten is also removed from Docker: a stop already asked for runs (with its
  // grace), else the container (stopped, exited or still running) is stopped at once and removed
  // by id. Without a known id nothing is done: the next start removes leftovers by name.
  std::erase_if(replica->commands, [](const Command& command) { return command.kind != Command::Kind::Stop; });
  bool removed = replica->state.phase == Phase::Exited && replica->state.stage == "stopped";
  if (replica->commands.empty() && !replica->state.container_id.empty() && !removed) {
    Command stop;
    stop.kind = Command::Kind::Stop;
    stop.generation = replica->generation;
    replica->commands.push_back(std::move(stop));
  }
  replica->cleanup = !replica->commands.empty();
  replica->wake.notify_all();
  retired_.push_back(replica);
  reap_retired();
}

ContainerRuntime::State ContainerRuntime::state(const std::string& replica_name) const {
  std::lock_guard lock(mutex_);
  auto found = replicas_.find(replica_name);
  if (found == replicas_.end()) {
    State unknown;
    unknown.error = "not tracked";
    return unknown;
  }
  return found->second->state;
}

std::vector<std::string> ContainerRuntime::replicas() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> names;
  for (const auto& [name, replica] : replicas_) names.push_back(name);
  return names;
}

Result<std::string> ContainerRuntime::logs(const std::string& replica_name, int tail_lines) const {
  std::string container_id;
  {
    std::lock_guard lock(mutex_);
    auto found = replicas_.find(replica_name);
    if (found != replicas_.end()) container_id = found->second->state.container_id;
  }
  if (container_id.empty()) return Error{ErrorCode::NotFound, "replica " + replica_name + " has no container"};
  engines::DockerClient client(socket_path_, options_.logs_timeout);
  return client.logs(container_id, tail_lines);
}

void ContainerRuntime::run(Replica& replica) {
  std::unique_lock lock(mutex_);
  auto next_refresh = Clock::now() + options_.refresh_interval;
  while (!replica.retired || (replica.cleanup && !replica.commands.empty())) {
    if (!replica.commands.empty()) {
      Command command = std::move(replica.commands.front());
      replica.commands.pop_front();
      lock.unlock();
      switch (command.kind) {
        case Command::Kind::Start: execute_start(replica, command); break;
        case Command::Kind::Stop: execute_stop(replica, command); break;
        case Command::Kind::Adopt: refresh(replica, command.generation, command.container_id); break;
      }
      lock.lock();
      next_refresh = Clock::now() + options_.refresh_interval;
      continue;
    }
    if (!watched(replica.state)) {
      replica.wake.wait(lock);
      continue;
    }
    if (replica.wake.wait_until(lock, next_refresh) == std::cv_status::no_timeout) continue;
    if (replica.retired || !replica.commands.empty() || !watched(replica.state)) continue;
    uint64_t generation = replica.generation;
    std::string container_id = replica.state.container_id;
    lock.unlock();
    refresh(replica, generation, container_id);
    lock.lock();
    next_refresh = Clock::now() + options_.refresh_interval;
  }
  replica.finished = true;
}

void ContainerRuntime::refresh(Replica& replica, uint64_t generation, const std::string& container_id) {
  engines::DockerClient client(socket_path_, options_.call_timeout);
  auto inspected = client.inspect(container_id);
  bool was_exited = false;
  {
    std::lock_guard lock(mutex_);
    was_exited = replica.state.phase == Phase::Exited;
  }
  // It has just ended: keep its last words before it is removed.
  std::string log_tail;
  if (inspected && !inspected->running && !was_exited) {
    if (auto logs = client.logs(container_id, 10)) log_tail = *logs;
  }
  std::lock_guard lock(mutex_);
  if (replica.generation != generation) return;
  State& state = replica.state;
  if (!log_tail.empty()) state.log_tail = std::move(log_tail);
  if (inspected) {
    if (inspected->running) {
      state.phase = Phase::Running;
      state.pid = inspected->pid;
      state.error.clear();
      state.stage = "running";
    } else {
      state.phase = Phase::Exited;
      state.pid = 0;
      state.exit_code = inspected->exit_code;
      state.error = inspected->error;
      state.stage = fmt::format("exited with code {}", inspected->exit_code);
    }
  } else if (inspected.error().code == ErrorCode::NotFound) {
    state.phase = Phase::Exited;
    state.pid = 0;
    state.exit_code = -1;
    state.error = fmt::format("container {} no longer exists", container_id);
    state.stage = "gone";
  } else {
    state.error = inspected.error().message;  // the daemon did not answer: keep the phase
  }
}

void ContainerRuntime::execute_start(Replica& replica, const Command& command) {
  const engines::ContainerSpec& spec = command.spec;
  uint64_t generation = command.generation;
  // Applies `change` to the state unless a later command superseded this start; returns whether
  // this start is still current.
  auto update = [&](const std::function<void(State&)>& change) {
    std::lock_guard lock(mutex_);
    if (replica.generation != generation || replica.retired) return false;
    change(replica.state);
    return true;
  };
  auto set_stage = [&](std::string stage) { return update([&](State& state) { state.stage = std::move(stage); }); };
  auto fail = [&](const std::string& stage, const std::string& message) {
    spdlog::warn("replica {}: container {} failed: {}: {}", replica.name, spec.name, stage, message);
    update([&](State& state) {
      state.phase = Phase::Failed;
      state.stage = stage;
      state.error = message;
    });
  };

  if (!set_stage("validating")) return;
  if (Status valid = engines::validate_container_spec(spec, command.allowed_mounts); !valid.ok()) {
    return fail("refused", valid.error().message);
  }
  engines::DockerClient client(socket_path_, options_.call_timeout);

  if (!set_stage("removing leftover container " + spec.name)) return;
  if (Status removed = client.remove(spec.name, true); !removed.ok() && removed.error().code != ErrorCode::NotFound) {
    return fail("removing leftover container", removed.error().message);
  }

  if (!set_stage("checking image " + spec.image)) return;
  auto image = client.request("GET", "/images/" + engines::docker_escape(spec.image) + "/json");
  if (!image) return fail("checking image", image.error().message);
  if (image->status == 404) {
    if (!set_stage("pulling image " + spec.image)) return;
    spdlog::info("replica {}: pulling image {}", replica.name, spec.image);
    auto abandoned = [&] {
      std::lock_guard lock(mutex_);
      return replica.generation != generation || replica.retired;
    };
    if (Status pulled = client.pull(spec.image, options_.pull_timeout, abandoned); !pulled.ok()) {
      if (abandoned()) return;
      return fail("pulling image " + spec.image, pulled.error().message);
    }
  } else if (image->status != 200) {
    return fail("checking image", fmt::format("docker image inspect {}: HTTP {}: {}", spec.image, image->status,
                                              image->body.substr(0, 500)));
  }

  if (!set_stage("creating")) return;
  auto id = client.create(spec, command.allowed_mounts);
  if (!id) return fail("creating", id.error().message);
  if (!update([&](State& state) {
        state.container_id = *id;
        state.stage = "starting";
      })) {
    return;  // superseded: a stop or the next start finds the container by its name
  }
  if (Status started = client.start(*id); !started.ok()) return fail("starting", started.error().message);
  spdlog::info("replica {}: container {} ({}) started", replica.name, spec.name, id->substr(0, 12));
  update([&](State& state) {
    state.phase = Phase::Running;
    state.stage = "running";
    state.error.clear();
  });
}

void ContainerRuntime::execute_stop(Replica& replica, const Command& command) {
  std::string target;
  {
    std::lock_guard lock(mutex_);
    target = replica.state.container_id.empty() ? replica.container_name : replica.state.container_id;
  }
  // Runs to the end even when superseded (a start after a stop should find the old container
  // stopped gracefully), but only writes the state while still current.
  auto update = [&](const std::function<void(State&)>& change) {
    std::lock_guard lock(mutex_);
    if (replica.generation == command.generation && !replica.retired) change(replica.state);
  };
  if (target.empty()) {
    update([](State& state) {
      state.phase = Phase::Exited;
      state.stage = "stopped";
    });
    return;
  }
  engines::DockerClient client(socket_path_, options_.call_timeout);
  if (Status stopped = client.stop(target, command.grace);
      !stopped.ok() && stopped.error().code != ErrorCode::NotFound) {
    spdlog::warn("replica {}: stopping container {}: {}", replica.name, target, stopped.error().message);
    update([&](State& state) {
      state.stage = "stop failed";
      state.error = stopped.error().message;
    });
    return;
  }
  auto last = client.inspect(target);
  Status removed = client.remove(target, true);
  update([&](State& state) {
    state.phase = Phase::Exited;
    state.pid = 0;
    state.stage = "stopped";
    state.error.clear();
    if (last) {
      state.exit_code = last->exit_code;
      state.error = last->error;
    }
    if (!removed.ok() && removed.error().code != ErrorCode::NotFound) state.error = removed.error().message;
  });
}

}  // namespace nebula::agent
