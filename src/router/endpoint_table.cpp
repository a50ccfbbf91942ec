#include "router/endpoint_table.h"

#include "api/api.h"
#include "common/json.h"

namespace nebula::router {

using SteadyClock = std::chrono::steady_clock;

namespace {
// Phases on the way to Ready: a request for a deployment whose replicas are here waits for them.
bool is_starting(const std::string& phase) {
  return phase == api::phase::kPending || phase == api::phase::kScheduled || phase == api::phase::kDownloading ||
         phase == api::phase::kStarting;
}
}  // namespace

void EndpointTable::set_on_change(std::function<void(const std::string&)> callback) {
  std::lock_guard lock(mutex_);
  on_change_ = std::move(callback);
}

void EndpointTable::set_on_endpoint_gone(std::function<void(const std::string&)> callback) {
  std::lock_guard lock(mutex_);
  on_endpoint_gone_ = std::move(callback);
}

void EndpointTable::set_on_replica_gone(std::function<void(const std::string&, const std::string&)> callback) {
  std::lock_guard lock(mutex_);
  on_replica_gone_ = std::move(callback);
}

namespace {}  // namespace

void EndpointTable::apply(const std::string& key, const std::string* value) {
  static const std::string kDeployments = api::store_prefix("deployments");
  static const std::string kReplicas = api::store_prefix("replicas");
  std::string changed;
  std::string gone;          // the URL of an engine that left the table
  std::string left_routing;  // a replica that left routing
  std::function<void(const std::string&)> notify;
  std::function<void(const std::string&)> notify_gone;
  std::function<void(const std::string&, const std::string&)> notify_left;
  {
    std::lock_guard lock(mutex_);
    notify = on_change_;
    notify_gone = on_endpoint_gone_;
    notify_left = on_replica_gone_;
    if (key.rfind(kDeployments, 0) == 0) {
      changed = key.substr(kDeployments.size());
      if (!value) {
        deployments_.erase(changed);
      } else if (auto document = parse_json(*value)) {
        if (auto deployment = api::deployment_from_json(*document)) {
          std::string unschedulable;
          if (deployment->status.phase == "Pending") unschedulable = deployment->status.message;
          deployments_[changed] = {deployment->metadata.created_ms,
                                   deployment->spec.max_seqs,
                                   deployment->status.idle_since_ms,
                                   deployment->status.wake_requested_ms,
                                   unschedulable,
                                   deployment->spec.routing};
        }
      }
    } else if (key.rfind(kReplicas, 0) == 0) {
      std::string name = key.substr(kReplicas.size());
      if (!value) {
        if (auto it = replicas_.find(name); it != replicas_.end()) {
          changed = it->second.deployment;
          if (it->second.endpoint) {
            gone = it->second.endpoint->url;
            if (!it->second.draining) left_routing = name;
          }
          replicas_.erase(it);
        }
      } else if (auto document = parse_json(*value)) {
        if (auto replica = api::replica_from_json(*document)) {
          auto& entry = replicas_[name];
          entry.deployment = replica->spec.deployment;
          changed = entry.deployment;
          // A draining replica (its plan superseded) takes no new request; its entry keeps the
          // endpoint so drained() can tell when the requests in flight to it have finished.
          bool leaving = replica->spec.stop || replica->spec.draining_since_ms > 0;
          const Endpoint* routed_before = entry.draining ? nullptr : entry.endpoint.get();
          bool was_draining = entry.draining;
          entry.draining = replica->spec.draining_since_ms > 0 && !replica->spec.stop;
          if (entry.draining && !was_draining) entry.draining_seen = SteadyClock::now();
          entry.starting = !leaving && is_starting(replica->status.phase);
          bool serving = replica->status.phase == api::phase::kReady && !leaving && !replica->status.endpoint.empty() &&
                         replica->status.plan_version == replica->spec.plan_version;
          if (entry.draining) {
            // keep the endpoint (if any) for its in-flight count
          } else if (!serving) {
            if (entry.endpoint) gone = entry.endpoint->url;
            entry.endpoint.reset();
          } else if (!entry.endpoint || entry.endpoint->url != replica->status.endpoint) {
            if (entry.endpoint) gone = entry.endpoint->url;
            entry.endpoint = std::make_shared<Endpoint>();
            entry.endpoint->replica = name;
            entry.endpoint->deployment = entry.deployment;
            entry.endpoint->url = replica->status.endpoint;
          }
          if (routed_before && (entry.draining || entry.endpoint.get() != routed_before)) left_routing = name;
        }
      }
    }
  }
  if (notify && !changed.empty()) notify(changed);
  if (notify_gone && !gone.empty()) notify_gone(gone);
  if (notify_left && !left_routing.empty()) notify_left(changed, left_routing);
}

bool EndpointTable::drained(const std::string& replica) const {
  std::lock_guard lock(mutex_);
  auto it = replicas_.find(replica);
  if (it == replicas_.end() || !it->second.endpoint) return true;
  const auto& entry = it->second;
  if (!entry.draining || entry.endpoint->outstanding.load() != 0) return false;
  // Other gateways (other servers, `nebula gateway`s) may still relay to it: its engine counts
  // their requests too, and must say 0 in a reading taken after the drain began. An engine
  // whose /metrics has no such figures, or a gateway that reads none, leaves this gateway's own
  // count to decide.
  if (!engine_counts_) return true;
  int64_t at_ns = entry.endpoint->engine_busy_at_ns.load();
  if (at_ns < 0) return true;
  if (at_ns <= entry.draining_seen.time_since_epoch().count()) return false;
  return entry.endpoint->engine_busy.load() <= 0;
}

size_t EndpointTable::starting_count(const std::string& deployment) const {
  std::lock_guard lock(mutex_);
  size_t count = 0;
  for (const auto& [name, entry] : replicas_) {
    if (entry.deployment == deployment && entry.starting) ++count;
  }
  return count;
}

bool EndpointTable::has_deployment(const std::string& name) const {
  std::lock_guard lock(mutex_);
  return deployments_.count(name) > 0;
}

std::vector<std::string> EndpointTable::deployments() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> names;
  for (const auto& [name, entry] : deployments_) names.push_back(name);
  return names;
}

int64_t EndpointTable::created_ms(const std::string& deployment) const {
  std::lock_guard lock(mutex_);
  auto it = deployments_.find(deployment);
  return it == deployments_.end() ? 0 : it->second.created_ms;
}

Candidates EndpointTable::candidates(const std::string& deployment, const std::set<std::string>& exclude,
                                     int default_capacity, SteadyClock::time_point now) const {
  std::lock_guard lock(mutex_);
  int capacity = default_capacity;
  if (auto it = deployments_.find(deployment); it != deployments_.end() && it->second.capacity > 0) {
    capacity = it->second.capacity;
  }
  Candidates found;
  for (const auto& [name, entry] : replicas_) {
    if (entry.deployment != deployment || !entry.endpoint || entry.draining || exclude.count(name)) continue;
    const auto& endpoint = entry.endpoint;
    int outstanding = endpoint->outstanding.load();
    if (outstanding >= capacity || !endpoint->breaker.allows(now)) continue;
    found.endpoints.push_back(endpoint);
    found.candidates.push_back(
        Candidate{name, outstanding, endpoint->inflight_tokens.load(), capacity, endpoint->load()});
  }
  return found;
}

std::vector<std::shared_ptr<Endpoint>> EndpointTable::endpoints(bool include_draining) const {
  std::lock_guard lock(mutex_);
  std::vector<std::shared_ptr<Endpoint>> serving;
  for (const auto& [name, entry] : replicas_) {
    if (entry.endpoint && (include_draining || !entry.draining)) serving.push_back(entry.endpoint);
  }
  return serving;
}

std::string EndpointTable::routing(const std::string& deployment) const {
  std::lock_guard lock(mutex_);
  auto it = deployments_.find(deployment);
  return it == deployments_.end() ? std::string() : it->second.routing;
}

int64_t EndpointTable::idle_since_ms(const std::string& deployment) const {
  std::lock_guard lock(mutex_);
  auto it = deployments_.find(deployment);
  return it == deployments_.end() ? 0 : it->second.idle_since_ms;
}

std::string EndpointTable::unschedulable(const std::string& deployment) const {
  std::lock_guard lock(mutex_);
  auto it = deployments_.find(deployment);
  return it == deployments_.end() ? std::string() : it->second.unschedulable;
}

int64_t EndpointTable::wake_requested_ms(const std::string& deployment) const {
  std::lock_guard lock(mutex_);
  auto it = deployments_.find(deployment);
  return it == deployments_.end() ? 0 : it->second.wake_requested_ms;
}

size_t EndpointTable::ready_count(const std::string& deployment, const std::set<std::string>& exclude) const {
  std::lock_guard lock(mutex_);
  size_t count = 0;
  for (const auto& [name, entry] : replicas_) {
    if (entry.deployment == deployment && entry.endpoint && !entry.draining && !exclude.count(name)) ++count;
  }
  return count;
}

size_t EndpointTable::open_count(const std::string& deployment, const std::set<std::string>& exclude,
                                 std::chrono::steady_clock::time_point now) const {
  std::lock_guard lock(mutex_);
  size_t count = 0;
  for (const auto& [name, entry] : replicas_) {
    if (entry.deployment != deployment || !entry.endpoint || entry.draining || exclude.count(name)) continue;
    if (entry.endpoint->breaker.state(now) == Breaker::State::Open) ++count;
  }
  return count;
}

}  // namespace nebula::router
