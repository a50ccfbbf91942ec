#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <utility>

#include "common/ids.h"
#include "controlplane/controlplane.h"
#include "controlplane/modes.h"
#include "scheduler/scheduler.h"

namespace nebula::controlplane {

namespace {
constexpr std::chrono::milliseconds kFirstRetry{1'000};
constexpr std::chrono::milliseconds kMaxRetry{60'000};
// Marks a replica stopped in the store (a no-op when it already is) and keeps what was stored.
void mark_stopped(Resources& resources, api::Replica& replica) {
  auto updated = resources.modify<api::Replica>(replica.metadata.name, [](api::Replica& current) {
    if (current.spec.stop) return false;
    current.spec.stop = true;
    return true;
  });
  if (updated) replica = *updated;
}

}  // namespace

Controller::Controller(Resources& resources, Options options)
    : resources_(resources),
      options_(std::move(options)),
      informer_(resources.store()),
      started_ms_(to_unix_ms(resources.clock().wall_now())) {}

Controller::~Controller() {
  stop();
}

void Controller::start() {
  ensure_informer();  // else the first pass tries again
  thread_ = std::thread([this] { run(); });
}

void Controller::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    wake_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

void Controller::wake() {
  std::lock_guard lock(mutex_);
  dirty_ = true;
  wake_.notify_one();
}

bool Controller::ensure_informer() {
  if (informer_.started()) return true;
  // A change to what the controller acts on wakes the loop (informer.h says which).
  auto started = informer_.start([this] { wake(); });
  if (!started) spdlog::error("controller: cannot watch the store: {}", started.error().message);
  return started.ok();
}

int64_t Controller::now_ms() const {
  return to_unix_ms(resources_.clock().wall_now());
}

void Controller::run() {
  bool first = true;
  while (true) {
    {
      std::unique_lock lock(mutex_);
      if (!first) {
        // Until the earliest due time, unless a change comes first; never longer than a full resync.
        int64_t wait_ms = std::clamp<int64_t>(next_due_ms() - now_ms(), 0, options_.full_resync_interval.count());
        wake_.wait_for(lock, std::chrono::milliseconds(wait_ms), [this] { return dirty_ || stopping_; });
      }
      first = false;
      if (stopping_) return;
      dirty_ = false;
    }
    try {
      if (!full_pass_done_ || now_ms() >= full_resync_due_ms_) {
        reconcile();
      } else {
        reconcile_changes();
      }
    } catch (const std::exception& error) {
      spdlog::error("controller: reconcile failed: {}", error.what());
      // What the failed pass had taken from its queue is looked at again by a full pass soon.
      full_resync_due_ms_ = std::min(full_resync_due_ms_, now_ms() + options_.poll_interval.count());
    }
  }
}

int64_t Controller::next_due_ms() const {
  return std::min(
      {full_resync_due_ms_, node_due_.earliest(), deployment_due_.earliest(), scheduling_due_ms_, switch_due_ms_});
}

int64_t Controller::not_before_poll(int64_t due, int64_t now) const {
  if (due == kNever) return kNever;
  return due <= now ? now + options_.poll_interval.count() : due;
}

void Controller::reconcile() {
  const ControllerStats before = stats_;
  const int64_t now = now_ms();
  pass_started_ = resources_.clock().steady_now();
  full_resync_due_ms_ = now + options_.poll_interval.count();  // tried again soon if this pass cannot run
  // Mode switches first: their deployment writes are then seen by this pass.
  switching_ = advance_switches(resources_);
  if (!ensure_informer()) return;
  if (!informer_.sync()) spdlog::warn("controller: the store's watch lags; reconciling what arrived");
  (void)informer_.take_changes();  // everything is looked at
  capacity_seen_ = informer_.capacity_generation();
  auto nodes = informer_.nodes();
  auto deployments = informer_.deployments();
  auto replicas = informer_.replicas();

  node_due_.clear();
  nodes_seen_.clear();
  for (auto& node : nodes) {
    judge_node(node);
    plan_node(node, now);
    nodes_seen_[node.metadata.name] = {node.status.ready, node.spec.drain};
  }
  stats_.nodes_checked += nodes.size();

  // Replicas whose deployment is gone are stopped.
  for (auto& replica : replicas) {
    bool owned = std::any_of(deployments.begin(), deployments.end(), [&](const api::Deployment& deployment) {
      return deployment.metadata.name == replica.spec.deployment;
    });
    if (!owned && !replica.spec.stop) mark_stopped(resources_, replica);
  }
  replace_lost(replicas, nodes);
  std::set<std::string> draining;
  for (const auto& node : nodes) {
    if (node.spec.drain) draining.insert(node.metadata.name);
  }
  deployment_due_.clear();
  for (const auto& deployment : deployments) {
    const std::string& name = deployment.metadata.name;
    ++stats_.deployments_reconciled;
    if (options_.on_reconcile) options_.on_reconcile(name);
    deployment_due_.set(name, not_before_poll(reconcile_deployment(deployment, replicas, nodes, draining), now));
  }
  if (scheduling_due()) ++stats_.scheduling_passes;
  schedule(replicas, nodes, deployments);
  collect_stopped(replicas, nodes);
  prune_events();

  informer_.sync();  // this pass's placements, so they are not taken for pending ones
  plan_scheduling();
  switch_due_ms_ = switching_ ? now + options_.poll_interval.count() : kNever;
  full_pass_done_ = true;
  full_resync_due_ms_ = now + options_.full_resync_interval.count();
  ++stats_.passes;
  ++stats_.full_passes;
  log_pass("full", before);
}

void Controller::reconcile_changes() {
  if (!full_pass_done_) {
    reconcile();
    return;
  }
  const ControllerStats before = stats_;
  const int64_t now = now_ms();
  pass_started_ = resources_.clock().steady_now();
  if (!informer_.sync()) spdlog::warn("controller: the store's watch lags; reconciling what arrived");
  auto changes = informer_.take_changes();
  if (changes.modes || switching_) {
    // Mode switches first: their deployment writes are then seen by this pass.
    switching_ = advance_switches(resources_);
    informer_.sync();
    auto more = informer_.take_changes();
    changes.nodes.merge(more.nodes);
    changes.deployments.merge(more.deployments);
    changes.relisted = changes.relisted || more.relisted;
  }
  switch_due_ms_ = switching_ ? now + options_.poll_interval.count() : kNever;
  if (changes.relisted) {
    reconcile();  // the store was listed again: anything may have changed
    return;
  }

  std::set<std::string> queue = std::move(changes.deployments);
  for (auto& name : deployment_due_.take_until(now)) queue.insert(std::move(name));
  check_nodes(changes.nodes, queue);
  if (informer_.capacity_generation() != capacity_seen_) {
    // Room may have been made or taken: a deployment waiting for some (a replica not placed, a
    // rollout replacing one old replica at a time) is looked at again.
    capacity_seen_ = informer_.capacity_generation();
    for (const auto& name : informer_.unplaced()) {
      if (const api::Replica* replica = informer_.replica(name)) queue.insert(replica->spec.deployment);
    }
  }

  std::vector<api::Node> nodes;
  std::map<std::string, std::vector<api::Replica>> reconciled;
  if (!queue.empty()) {
    nodes = informer_.nodes();
    std::set<std::string> draining;
    for (const auto& node : nodes) {
      if (node.spec.drain) draining.insert(node.metadata.name);
    }
    for (const auto& name : queue) {
      auto& replicas = reconciled[name] = informer_.replicas_of(name);
      reconcile_queued(name, replicas, nodes, draining);
    }
  }
  // (A sync costs a round trip on etcd: only after a pass that may have written something.)
  if (!queue.empty()) informer_.sync();  // the replicas this pass created are the scheduler's to place
  bool scheduled = scheduling_due();
  if (scheduled) {
    ++stats_.scheduling_passes;
    nodes = informer_.nodes();
    auto replicas = informer_.replicas();
    schedule(replicas, nodes, informer_.deployments());
  }
  for (auto& [name, replicas] : reconciled) collect_stopped(replicas, nodes);
  prune_events();

  if (!queue.empty() || scheduled) informer_.sync();  // this pass's placements are not pending ones
  plan_scheduling();
  ++stats_.passes;
  log_pass("incremental", before);
}

void Controller::reconcile_queued(const std::string& name, std::vector<api::Replica>& replicas,
                                  const std::vector<api::Node>& nodes, const std::set<std::string>& draining_nodes) {
  ++stats_.deployments_reconciled;
  if (options_.on_reconcile) options_.on_reconcile(name);
  // A copy: the cache changes under a pointer at the next sync.
  std::optional<api::Deployment> deployment;
  if (const api::Deployment* cached = informer_.deployment(name)) deployment = *cached;
  if (!deployment) {
    // Gone: its replicas are stopped.
    deployment_due_.erase(name);
    for (auto& replica : replicas) {
      if (!replica.spec.stop) mark_stopped(resources_, replica);
    }
  }
  replace_lost(replicas, nodes);
  if (deployment) {
    int64_t due = reconcile_deployment(*deployment, replicas, nodes, draining_nodes);
    deployment_due_.set(name, not_before_poll(due, now_ms()));
  }
}

void Controller::check_nodes(const std::set<std::string>& changed, std::set<std::string>& queue) {
  const int64_t now = now_ms();
  std::set<std::string> names = changed;
  if (node_due_.earliest() <= now) {
    // Every node whose deadline falls within half a node_timeout is looked at with the one due:
    // agents renewing their leases then cost one wake per node_timeout or so, not one per node.
    for (auto& name : node_due_.take_until(now + options_.node_timeout.count() / 2)) names.insert(std::move(name));
  }
  const int64_t lost_after = options_.node_timeout.count() + options_.reschedule_grace.count();
  for (const auto& name : names) {
    ++stats_.nodes_checked;
    const api::Node* cached = informer_.node(name);
    if (!cached) {
      // Gone: its replicas are replaced elsewhere.
      node_due_.erase(name);
      nodes_seen_.erase(name);
      queue.merge(informer_.deployments_on(name));
      continue;
    }
    api::Node node = *cached;  // a copy: judging it syncs the cache
    judge_node(node);
    NodeSeen seen{node.status.ready, node.spec.drain};
    auto previous = nodes_seen_.find(name);
    bool concerns_replicas = previous == nodes_seen_.end() || !(previous->second == seen) ||
                             (!node.status.ready && now - heard_from(node) > lost_after);
    nodes_seen_[name] = seen;
    if (concerns_replicas) queue.merge(informer_.deployments_on(name));
    plan_node(node, now);
  }
}

void Controller::plan_node(const api::Node& node, int64_t now) {
  int64_t heard = heard_from(node);
  int64_t due = kNever;
  if (node.status.ready) {
    due = not_before_poll(heard + options_.node_timeout.count() + 1, now);
  } else {
    // Its replicas are replaced once the grace runs out (replace_lost); after that only a change
    // (a heartbeat, the node deleted) concerns it.
    int64_t lost_at = heard + options_.node_timeout.count() + options_.reschedule_grace.count() + 1;
    if (lost_at > now) due = lost_at;
  }
  node_due_.set(node.metadata.name, due);
}

bool Controller::scheduling_due() const {
  for (const auto& name : informer_.unplaced()) {
    const api::Replica* replica = informer_.replica(name);
    if (replica && informer_.deployment(replica->spec.deployment) && should_try(*replica)) return true;
  }
  return false;
}

void Controller::plan_scheduling() {
  scheduling_due_ms_ = kNever;
  // Both clocks read now, together: a backoff's steady deadline in wall time.
  const int64_t now = now_ms();
  const auto steady_now = resources_.clock().steady_now();
  for (const auto& name : informer_.unplaced()) {
    const api::Replica* replica = informer_.replica(name);
    if (!replica || !informer_.deployment(replica->spec.deployment)) continue;
    auto backoff = unschedulable_.find(name);
    int64_t due = 0;
    if (backoff == unschedulable_.end()) {
      // Not placed and not backing off: waiting for an eviction to free memory, or its placement
      // could not be written.
      due = now + options_.poll_interval.count();
    } else if (backoff->second.capacity_generation != informer_.capacity_generation()) {
      due = now;  // capacity changed since it was tried
    } else {
      auto wait = std::chrono::ceil<std::chrono::milliseconds>(backoff->second.retry_at - steady_now);
      due = now + std::max<int64_t>(0, wait.count());
    }
    scheduling_due_ms_ = std::min(scheduling_due_ms_, due);
  }
}

void Controller::log_pass(const char* kind, const ControllerStats& before) const {
  spdlog::debug("controller: {} pass: {} deployment(s) reconciled, {} node(s) checked, scheduler {}", kind,
                stats_.deployments_reconciled - before.deployments_reconciled,
                stats_.nodes_checked - before.nodes_checked,
                stats_.scheduling_passes > before.scheduling_passes ? "ran" : "idle");
}

// ---- DueTimes ----------------------------------------------------------------------------------

void Controller::DueTimes::set(const std::string& name, int64_t due_ms) {
  erase(name);
  if (due_ms == kNever) return;
  by_name_[name] = due_ms;
  by_time_.insert({due_ms, name});
}

void Controller::DueTimes::erase(const std::string& name) {
  auto found = by_name_.find(name);
  if (found == by_name_.end()) return;
  by_time_.erase({found->second, name});
  by_name_.erase(found);
}

void Controller::DueTimes::clear() {
  by_name_.clear();
  by_time_.clear();
}

int64_t Controller::DueTimes::earliest() const {
  return by_time_.empty() ? kNever : by_time_.begin()->first;
}

std::vector<std::string> Controller::DueTimes::take_until(int64_t until_ms) {
  std::vector<std::string> due;
  while (!by_time_.empty() && by_time_.begin()->first <= until_ms) {
    due.push_back(by_time_.begin()->second);
    by_name_.erase(by_time_.begin()->second);
    by_time_.erase(by_time_.begin());
  }
  return due;
}

// The last time a node could have been heard from: its heartbeat, or this controller's start when
// that is later. A server that was down (an upgrade, `nebula up` restarted after a while) gives
// every node node_timeout from its own start to report, instead of calling it silent for as long
// as the server itself was gone and rescheduling engines the agent would have re-adopted.
int64_t Controller::heard_from(const api::Node& node) const {
  return std::max({node.status.heartbeat_ms, informer_.lease_renewed_ms(node.metadata.name), started_ms_});
}

bool Controller::judge_node(api::Node& node) {
  int64_t now_ms = this->now_ms();
  bool alive = now_ms - heard_from(node) <= options_.node_timeout.count();
  if (!node.status.ready || alive) return false;
  auto updated = resources_.modify<api::Node>(node.metadata.name, [&](api::Node& current) {
    if (!current.status.ready || now_ms - heard_from(current) <= options_.node_timeout.count()) return false;
    current.status.ready = false;
    current.status.message = fmt::format("no heartbeat for {} s", (now_ms - heard_from(current)) / 1000);
    return true;
  });
  if (!updated || updated->status.ready) return false;
  node = *updated;
  resources_.record_event("node/" + node.metadata.name, "NodeNotReady", node.status.message, "Warning");
  mark_replicas_unknown(node.metadata.name);
  return true;
}

// Nobody can vouch for the engines of a silent node: they leave the router's table (phase Unknown)
// until the agent reports again. Rescheduling them elsewhere is the node-agent issue's work.
void Controller::mark_replicas_unknown(const std::string& node) {
  informer_.sync();
  for (const auto& replica : informer_.replicas_on(node)) {
    if (replica.status.phase == api::phase::kUnknown) continue;
    (void)resources_.modify<api::Replica>(replica.metadata.name, [](api::Replica& current) {
      current.status.phase = api::phase::kUnknown;
      current.status.message = "node is not ready";
      return true;
    });
  }
}

// A replica whose node has been silent past node_timeout + reschedule_grace (or whose node is
// gone) is given up: marked stop, so its deployment creates a replacement the scheduler places
// on a live node, and removed (no agent can confirm its engine stopped). If the node comes back,
// its agent no longer finds the replica and stops the stale engine; until then the node's
// reported GPU memory keeps the scheduler from placing anything into that engine's memory.
void Controller::replace_lost(std::vector<api::Replica>& replicas, const std::vector<api::Node>& nodes) {
  int64_t now_ms = to_unix_ms(resources_.clock().wall_now());
  int64_t limit = options_.node_timeout.count() + options_.reschedule_grace.count();
  for (auto& replica : replicas) {
    if (replica.spec.node.empty() || replica.spec.stop) continue;
    auto node = std::find_if(nodes.begin(), nodes.end(),
                             [&](const api::Node& n) { return n.metadata.name == replica.spec.node; });
    bool lost = node == nodes.end() || (!node->status.ready && now_ms - heard_from(*node) > limit);
    if (!lost) continue;
    auto updated = resources_.modify<api::Replica>(replica.metadata.name, [](api::Replica& current) {
      if (current.spec.stop) return false;
      current.spec.stop = true;
      return true;
    });
    if (!updated) continue;
    replica = *updated;
    std::string why = node == nodes.end() ? "its node " + replica.spec.node + " is gone"
                                          : fmt::format("its node {} has been silent for {} s", replica.spec.node,
                                                        (now_ms - heard_from(*node)) / 1000);
    resources_.record_event("replica/" + replica.metadata.name, "Rescheduling", why + ": replacing it elsewhere",
                            "Warning");
  }
}

// Decides whether the deployment is idle: asleep (or stopped) after idle_timeout without a
// request, or at once when `nebula sleep` asked for it; awake again once the gateway (a request)
// or `nebula wake` asked for it. Returns the status it leaves.
api::DeploymentStatus Controller::reconcile_idle(const api::Deployment& deployment,
                                                 const std::vector<api::Replica*>& active, int ready, int64_t* due) {
  *due = kNever;
  const auto& spec = deployment.spec;
  const auto& status = deployment.status;
  int64_t now = to_unix_ms(resources_.clock().wall_now());
  bool idle = status.idle_since_ms > 0;
  bool asked_to_sleep = api::sleep_requested(status);
  if (!idle && !asked_to_sleep && spec.idle_timeout_ms <= 0) return status;
  bool go_idle = false;
  bool wake = false;
  if (idle) {
    // A request arrived or a wake was asked for (or the timeout was switched off and nobody asked
    // for sleep): wake.
    wake = !asked_to_sleep && (status.wake_requested_ms >= status.idle_since_ms || spec.idle_timeout_ms <= 0);
  } else if (asked_to_sleep) {
    go_idle = true;  // on demand: now, Ready or not (a replica still starting sleeps once Ready)
  } else {
    int64_t last_use = std::max({status.last_request_ms, status.wake_requested_ms, deployment.metadata.created_ms});
    bool all_ready = ready > 0 && ready == static_cast<int>(active.size());
    go_idle = all_ready && now - last_use > spec.idle_timeout_ms;
    // Until every replica is Ready, a replica's change brings the deployment back here.
    if (all_ready && !go_idle) *due = last_use + spec.idle_timeout_ms + 1;
  }
  if (!go_idle && !wake) return status;
  api::DeploymentStatus result = status;
  auto updated = resources_.modify<api::Deployment>(deployment.metadata.name, [&](api::Deployment& current) {
    if (go_idle) {
      current.status.idle_since_ms = now;
    } else {
      current.status.idle_since_ms = 0;
      current.status.evicted = false;
      current.status.last_request_ms = now;  // a fresh idle period starts at the wake
    }
    return true;
  });
  if (!updated) return status;
  result = updated->status;
  const std::string object = "deployment/" + deployment.metadata.name;
  if (go_idle && asked_to_sleep) {
    resources_.record_event(object, "Idle", fmt::format("put to sleep on demand: {}", spec.on_idle));
  } else if (go_idle) {
    resources_.record_event(object, "Idle",
                            fmt::format("no request for {} s: {}", spec.idle_timeout_ms / 1000, spec.on_idle));
  } else {
    resources_.record_event(object, "Waking", "a request arrived or a wake was asked for");
  }
  return result;
}

int64_t Controller::reconcile_deployment(const api::Deployment& observed, std::vector<api::Replica>& replicas,
                                         const std::vector<api::Node>& nodes,
                                         const std::set<std::string>& draining_nodes) {
  api::Deployment deployment = ensure_plan(observed);
  const std::string& name = deployment.metadata.name;
  const int64_t target = deployment.status.plan_version;
  const api::DeploymentSpec plan_spec = spec_of_plan(deployment, target);
  std::vector<api::Replica*> active;       // neither stopping nor draining
  std::vector<api::Replica*> rolling_out;  // draining: out of routing, stopped once drained
  int ready = 0;
  int existing = 0;
  for (auto& replica : replicas) {
    if (replica.spec.deployment != name) continue;
    ++existing;
    if (replica.spec.stop) continue;
    if (replica.spec.draining_since_ms > 0) {
      rolling_out.push_back(&replica);
      continue;
    }
    active.push_back(&replica);
    if (replica.status.phase == api::phase::kReady) ++ready;
  }
  auto stop_replica = [&](api::Replica& replica, const char* reason, const std::string& message) {
    auto updated = resources_.modify<api::Replica>(replica.metadata.name, [](api::Replica& current) {
      if (current.spec.stop) return false;
      current.spec.stop = true;
      return true;
    });
    if (!updated) return false;
    if (replica.status.phase == api::phase::kReady && replica.spec.draining_since_ms == 0) --ready;
    replica = *updated;
    resources_.record_event("deployment/" + name, reason, message + " " + updated->metadata.name);
    return true;
  };
  finish_drains(rolling_out, stop_replica);
  // When to look again without a change: a replica still draining stops at its drain timeout, or
  // as soon as the gateway has nothing in flight to it (which no store change reports: polled).
  int64_t due = kNever;
  for (const api::Replica* replica : rolling_out) {
    if (replica->spec.stop) continue;
    due = std::min(due, replica->spec.draining_since_ms + options_.drain_timeout.count());
    if (options_.replica_drained) due = std::min(due, now_ms() + options_.poll_interval.count());
  }

  // Scale-to-zero: an idle deployment's replicas sleep or stop; a request for it wakes them.
  int64_t idle_due = kNever;
  api::DeploymentStatus idle_state = reconcile_idle(deployment, active, ready, &idle_due);
  due = std::min(due, idle_due);
  bool idle = idle_state.idle_since_ms > 0;
  int desired = idle && (deployment.spec.on_idle == "stop" || idle_state.evicted) ? 0 : deployment.spec.replicas;
  int sleep_level = !idle                                   ? 0
                    : deployment.spec.on_idle == "sleep-l2" ? 2
                    : deployment.spec.on_idle == "sleep-l1" ? 1
                                                            : 0;
  for (api::Replica* replica : active) {
    if (replica->spec.sleep_level == sleep_level) continue;
    auto updated = resources_.modify<api::Replica>(replica->metadata.name, [&](api::Replica& current) {
      if (current.spec.sleep_level == sleep_level) return false;
      current.spec.sleep_level = sleep_level;
      return true;
    });
    if (updated) *replica = *updated;
  }
  // Drain, make before break: replicas on a draining node are replaced first, and each one stops
  // only while the deployment keeps `desired` Ready replicas without it.
  std::vector<api::Replica*> leaving;
  std::erase_if(active, [&](api::Replica* replica) {
    if (!draining_nodes.count(replica->spec.node)) return false;
    leaving.push_back(replica);
    return true;
  });
  if (!leaving.empty()) {
    std::sort(leaving.begin(), leaving.end(), [](const api::Replica* a, const api::Replica* b) {
      return (a->status.phase == api::phase::kReady) < (b->status.phase == api::phase::kReady);
    });
    for (api::Replica* replica : leaving) {
      bool serving = replica->status.phase == api::phase::kReady;
      if (serving && ready - 1 < desired) continue;
      stop_replica(*replica, "Drained", "node " + replica->spec.node + " is draining: stopping");
    }
  }

  // The current plan's replicas and the superseded ones.
  std::vector<api::Replica*> current;
  std::vector<api::Replica*> old;
  for (api::Replica* replica : active) (replica->spec.plan_version == target ? current : old).push_back(replica);
  // The next pass (the rollback's write brings it) rolls over to the old plan.
  if (rollback_if_failing(deployment, current, &due)) return kNever;
  bool superseded_gone = old.empty() && rolling_out.empty();

  // Scale the current plan down: the replicas that serve least first (not Ready, then the newest).
  if (static_cast<int>(current.size()) > desired) {
    std::sort(current.begin(), current.end(), [](const api::Replica* a, const api::Replica* b) {
      bool a_ready = a->status.phase == api::phase::kReady;
      bool b_ready = b->status.phase == api::phase::kReady;
      if (a_ready != b_ready) return !a_ready;
      return a->metadata.created_ms > b->metadata.created_ms;
    });
    size_t excess = current.size() - static_cast<size_t>(desired);
    for (size_t i = 0; i < excess; ++i) stop_replica(*current[i], "ScaledDown", "stopping replica");
    current.erase(current.begin(), current.begin() + static_cast<std::ptrdiff_t>(excess));
  }
  int to_create = replace_old_plan(deployment, plan_spec, desired, current, old, rolling_out.size(), nodes, replicas,
                                   stop_replica, ready);

  // The rollout is done when only the current plan's replicas are left and enough of them serve
  // (an idle deployment's replicas sleep: having them is enough).
  bool rolling = deployment.status.rollout.state == api::rollout_state::kProgressing;
  if (rolling && superseded_gone && to_create == 0 && (idle || count_ready(current) >= desired)) {
    complete_rollout(deployment);
    rolling = false;
  }

  // Status: how many replicas serve, and a phase a user can read at a glance.
  std::string phase = ready >= desired && !rolling ? "Ready" : "Progressing";
  if (idle) phase = "Idle";
  std::string message;
  for (auto& replica : replicas) {
    if (replica.spec.deployment != name || replica.spec.stop) continue;
    if (replica.status.phase == api::phase::kPending && !replica.status.message.empty()) {
      phase = "Pending";
      message = replica.status.message;
    } else if (replica.status.phase == api::phase::kFailed && message.empty()) {
      message = replica.metadata.name + ": " + replica.status.last_error;
    }
  }
  // A rollout's new replica waiting for the memory of an old one is not unschedulable (the
  // gateway fails requests at once for a Pending deployment with nothing Ready).
  if (rolling && deployment.status.rollout.from_version > 0 && phase == "Pending") phase = "Progressing";
  if (deployment.status.ready_replicas != ready || deployment.status.replicas != existing + to_create ||
      deployment.status.phase != phase || deployment.status.message != message) {
    auto updated = resources_.modify<api::Deployment>(name, [&](api::Deployment& now) {
      now.status.ready_replicas = ready;
      now.status.replicas = existing + to_create;
      now.status.phase = phase;
      now.status.message = message;
      return true;
    });
    (void)updated;  // a conflict means something changed: the next pass recomputes
  }
  // Scale up last (this appends to `replicas`, which the pointers above point into): new
  // replicas of the current plan start Pending; the scheduler places them.
  for (int i = 0; i < to_create; ++i) {
    api::Replica replica;
    replica.metadata.name = name + "-" + random_id(5);
    replica.spec.deployment = name;
    replica.spec.model = plan_spec.model;
    replica.spec.engine = plan_spec.engine;
    replica.spec.vram_mb = scheduler::estimate_vram_mb(plan_spec);
    replica.spec.max_context = plan_spec.max_context;
    replica.spec.max_seqs = plan_spec.max_seqs;
    replica.spec.engine_args = plan_spec.engine_args;
    replica.spec.env = plan_spec.env;
    replica.spec.plan_version = target;
    auto created = resources_.create(replica);
    if (!created) {
      spdlog::warn("controller: cannot create a replica of {}: {}", name, created.error().message);
      due = std::min(due, now_ms() + options_.poll_interval.count());  // tried again
      continue;
    }
    replicas.push_back(*created);
    resources_.record_event("deployment/" + name, "ReplicaCreated",
                            fmt::format("created replica {} (plan {})", created->metadata.name, target));
  }
  return due;
}

bool Controller::should_try(const api::Replica& replica) const {
  auto backoff = unschedulable_.find(replica.metadata.name);
  if (backoff == unschedulable_.end()) return true;
  return backoff->second.capacity_generation != informer_.capacity_generation() ||
         resources_.clock().steady_now() >= backoff->second.retry_at;
}

void Controller::failed_to_place(const api::Replica& replica) {
  auto& backoff = unschedulable_[replica.metadata.name];
  backoff.delay = backoff.delay.count() == 0 ? kFirstRetry : std::min(kMaxRetry, backoff.delay * 2);
  // From the pass's start, not this moment: the replicas that failed together are retried
  // together, by one run of the scheduler.
  backoff.retry_at = pass_started_ + backoff.delay;
  backoff.capacity_generation = informer_.capacity_generation();
}

void Controller::schedule(std::vector<api::Replica>& replicas, const std::vector<api::Node>& nodes,
                          const std::vector<api::Deployment>& deployments) {
  std::map<std::string, const api::Deployment*> owners;
  for (const auto& deployment : deployments) owners[deployment.metadata.name] = &deployment;
  // Backoffs of replicas that are gone or placed are forgotten.
  std::set<std::string> pending;
  for (const auto& replica : replicas) {
    if (replica.spec.node.empty() && !replica.spec.stop) pending.insert(replica.metadata.name);
  }
  std::erase_if(unschedulable_, [&](const auto& entry) { return !pending.count(entry.first); });
  if (pending.empty()) return;
  // Every placement made in this pass is added to `capacity`, so two pending replicas never claim
  // the same free memory.
  scheduler::Capacity capacity(nodes, replicas);
  std::map<std::string, std::vector<std::pair<std::string, scheduler::Placement>>> scheduled;  // by deployment
  // Placements made and claimed in `capacity` but not yet written: written together at the end
  // of the pass (or before an eviction's what-if), in transactions of up to store::kMaxBatch,
  // each compare-and-swap on the replica as the informer had it. A placement whose write fails
  // keeps its claim in `capacity` until the pass ends (a replica placed later in the pass may
  // find less room than there is, never more).
  std::vector<std::pair<size_t, scheduler::Placement>> unwritten;  // index into replicas
  auto write_placements = [&] {
    if (unwritten.empty()) return;
    write_placements_of(replicas, unwritten, scheduled);
    unwritten.clear();
  };
  for (size_t index = 0; index < replicas.size(); ++index) {
    auto& replica = replicas[index];
    if (!replica.spec.node.empty() || replica.spec.stop) continue;
    auto owner = owners.find(replica.spec.deployment);
    if (owner == owners.end()) continue;
    if (!should_try(replica)) continue;
    // A replica is placed as its own plan asks (after a rollback, the live spec is the failed one).
    const api::DeploymentSpec spec = spec_of_plan(*owner->second, replica.spec.plan_version);
    ++placement_attempts_;
    auto request = scheduler::request_for(replica, spec);
    request.gpu_utilization = options_.gpu_utilization;
    auto placement = capacity.place(request);
    if (!placement) write_placements();  // eviction's what-if reads `replicas`: bring it up to date
    if (!placement && evict_for(replica, spec, nodes, replicas, deployments)) {
      continue;  // placed on a later pass, once the evicted engines have released their memory
    }
    if (!placement) {
      failed_to_place(replica);
      const std::string& reason = placement.error().message;
      if (replica.status.message != reason) {
        auto updated = resources_.modify<api::Replica>(replica.metadata.name, [&](api::Replica& current) {
          if (!current.spec.node.empty()) return false;
          current.status.phase = api::phase::kPending;
          current.status.message = reason;
          return true;
        });
        if (updated) replica = *updated;
        resources_.record_event("replica/" + replica.metadata.name, "FailedScheduling", reason, "Warning");
      }
      continue;
    }
    capacity.add(*placement);
    unwritten.emplace_back(index, *placement);
  }
  write_placements();
  // One event per replica placed, or one per deployment when a pass placed many of its replicas
  // (the event log keeps max_events: ten thousand of them would only be written to be pruned).
  constexpr size_t kEventsPerDeployment = 5;
  for (const auto& [deployment, placed] : scheduled) {
    if (placed.size() <= kEventsPerDeployment) {
      for (const auto& [name, placement] : placed) {
        resources_.record_event(
            "replica/" + name, "Scheduled",
            fmt::format("placed on node {} GPU(s) [{}]", placement.node, fmt::join(placement.gpus, ",")));
      }
      continue;
    }
    std::set<std::string> nodes_used;
    for (const auto& entry : placed) nodes_used.insert(entry.second.node);
    resources_.record_event("deployment/" + deployment, "Scheduled",
                            fmt::format("placed {} replicas on {} node(s)", placed.size(), nodes_used.size()));
  }
}

namespace {
// Writes a placement into a replica; false when it was placed or stopped meanwhile.
bool assign(api::Replica& replica, const scheduler::Placement& placement) {
  if (!replica.spec.node.empty() || replica.spec.stop) return false;
  replica.spec.node = placement.node;
  replica.spec.gpus = placement.gpus;
  replica.spec.vram_mb = placement.vram_mb;  // vLLM claims a fraction of the card it lands on
  replica.status.phase = api::phase::kScheduled;
  replica.status.message = "";
  return true;
}
}  // namespace

void Controller::write_placements_of(
    std::vector<api::Replica>& replicas, const std::vector<std::pair<size_t, scheduler::Placement>>& placements,
    std::map<std::string, std::vector<std::pair<std::string, scheduler::Placement>>>& scheduled) {
  // From the informer's copy, in transactions of store::kMaxBatch, several in flight at once
  // (Store::put_batches); the replicas of a transaction that fails (one of them changed since,
  // or the store cannot batch, or its answer was lost) are written one compare-and-swap each,
  // re-read only when it changed: a write that took effect unheard reads back with this very
  // placement, so none is placed twice.
  // Each is written in the stored form (defaults left out: about half the bytes of the API's
  // form, and every byte crosses etcd's JSON gateway several times); it reads back the same.
  std::vector<api::Replica> assigned;
  assigned.reserve(placements.size());
  std::vector<std::vector<store::Put>> batches;
  for (const auto& [index, placement] : placements) {
    assigned.push_back(replicas[index]);
    api::Replica& replica = assigned.back();
    assign(replica, placement);
    if (batches.empty() || batches.back().size() == store::kMaxBatch) batches.emplace_back();
    batches.back().push_back({api::store_key(Traits<api::Replica>::kPlural, replica.metadata.name),
                              Resources::stored_json(replica).dump(),
                              store::Precondition::at(replica.metadata.revision)});
  }
  auto outcomes = resources_.store().put_batches(batches);
  for (size_t i = 0; i < placements.size(); ++i) {
    const auto& [index, placement] = placements[i];
    const auto& written = outcomes[i / store::kMaxBatch];
    const store::Put& put = batches[i / store::kMaxBatch][i % store::kMaxBatch];
    api::Replica& replica = replicas[index];
    Result<api::Replica> updated = assigned[i];
    if (written) {
      updated->metadata.revision = (*written)[i % store::kMaxBatch];
    } else if (auto revision = resources_.store().put(put.key, put.value, put.precondition); revision) {
      updated->metadata.revision = *revision;
    } else if (revision.error().code == ErrorCode::Conflict) {
      updated = resources_.modify<api::Replica>(replica.metadata.name,
                                                [&](api::Replica& current) { return assign(current, placement); });
    } else {
      updated = revision.error();
    }
    if (updated && updated->spec.node == placement.node && updated->spec.gpus == placement.gpus) {
      replica = *updated;
      unschedulable_.erase(replica.metadata.name);
      scheduled[replica.spec.deployment].push_back({replica.metadata.name, placement});
    }
  }
}

// Makes room for a replica that does not fit by stopping idle deployments of equal or lower
// priority, least recently used first; never one that is awake (serving or able to serve).
// Returns true when stopping some of them frees enough memory, having stopped exactly those.
bool Controller::evict_for(const api::Replica& replica, const api::DeploymentSpec& spec,
                           const std::vector<api::Node>& nodes, std::vector<api::Replica>& replicas,
                           const std::vector<api::Deployment>& deployments) {
  std::vector<const api::Deployment*> candidates;
  for (const auto& deployment : deployments) {
    if (deployment.metadata.name == replica.spec.deployment || deployment.status.idle_since_ms == 0 ||
        deployment.status.evicted || deployment.spec.priority > spec.priority) {
      continue;
    }
    candidates.push_back(&deployment);
  }
  std::sort(candidates.begin(), candidates.end(), [](const api::Deployment* a, const api::Deployment* b) {
    return std::max(a->status.last_request_ms, a->status.idle_since_ms) <
           std::max(b->status.last_request_ms, b->status.idle_since_ms);
  });
  // Memory already on its way out (replicas stopping after an earlier eviction or a scale-down)
  // may be enough: then wait for it rather than evict more.
  // (What the removed engines hold still shows in the GPUs' reports: without_engines takes it out.)
  std::vector<api::Replica> without;
  std::vector<api::Replica> removed;
  auto move_out = [&](const std::function<bool(const api::Replica&)>& leaves) {
    std::vector<api::Replica> kept;
    for (auto& other : without) (leaves(other) ? removed : kept).push_back(std::move(other));
    without = std::move(kept);
  };
  without = replicas;
  move_out([](const api::Replica& other) { return other.spec.stop; });
  auto fits_now = [&] {
    return scheduler::place(scheduler::request_for(replica, spec), scheduler::without_engines(nodes, removed), without)
        .ok();
  };
  if (fits_now()) return true;
  // Take candidates one by one (LRU first) until the replica would fit without their replicas.
  std::vector<const api::Deployment*> chosen;
  bool fits = false;
  for (const auto* candidate : candidates) {
    move_out([&](const api::Replica& other) { return other.spec.deployment == candidate->metadata.name; });
    chosen.push_back(candidate);
    if (fits_now()) {
      fits = true;
      break;
    }
  }
  if (!fits) return false;
  for (const auto* victim : chosen) {
    const std::string& name = victim->metadata.name;
    auto updated = resources_.modify<api::Deployment>(name, [](api::Deployment& current) {
      if (current.status.idle_since_ms == 0) return false;  // woke meanwhile: leave it
      current.status.evicted = true;
      return true;
    });
    if (!updated || !updated->status.evicted) return false;
    for (auto& other : replicas) {
      if (other.spec.deployment != name || other.spec.stop) continue;
      auto stopped = resources_.modify<api::Replica>(other.metadata.name, [](api::Replica& current) {
        current.spec.stop = true;
        return true;
      });
      if (stopped) other = *stopped;
    }
    resources_.record_event("deployment/" + name, "Evicted",
                            fmt::format("stopped while idle to make room for {}", replica.spec.deployment));
  }
  return true;
}

void Controller::collect_stopped(std::vector<api::Replica>& replicas, const std::vector<api::Node>& nodes) {
  // A replica marked stop is removed by its node's agent once the engine is gone. When no agent
  // can do that (never placed, node gone or NotReady), the controller removes it.
  for (const auto& replica : replicas) {
    if (!replica.spec.stop) continue;
    auto node = std::find_if(nodes.begin(), nodes.end(),
                             [&](const api::Node& n) { return n.metadata.name == replica.spec.node; });
    bool agent_can_stop = node != nodes.end() && node->status.ready;
    if (agent_can_stop) continue;
    auto removed = resources_.remove<api::Replica>(replica.metadata.name);
    if (removed) resources_.record_event("replica/" + replica.metadata.name, "Removed", "replica removed");
  }
  std::erase_if(replicas, [](const api::Replica& replica) { return replica.spec.stop && replica.spec.node.empty(); });
}

void Controller::prune_events() {
  if (informer_.event_count() <= options_.max_events + options_.max_events / 5) return;
  auto listing = resources_.store().list(api::store_prefix("events"));
  if (!listing || listing->kvs.size() <= options_.max_events + options_.max_events / 5) return;
  size_t excess = listing->kvs.size() - options_.max_events;
  for (size_t i = 0; i < excess; ++i) (void)resources_.store().remove(listing->kvs[i].key);
}

}  // namespace nebula::controlplane
