#pragma once
// Deployments and their replicas as routing sees them, kept current from the store's documents.
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "router/breaker.h"

namespace nebula::router {

// A replica the gateway can send to.
struct Endpoint {
  std::string replica;
  std::string deployment;
  std::string url;  // "http://127.0.0.1:PORT"
  std::atomic<int> outstanding{0};
  Breaker breaker;  // I/O thread only
};

// Deployments and their Ready replicas, kept current from a store watch. Thread-safe.
class EndpointTable {
 public:
  // Applies one stored document (a Deployment or Replica) or its deletion.
  void apply(const std::string& key, const std::string* value);
  bool has_deployment(const std::string& name) const;
  std::vector<std::string> deployments() const;
  int64_t created_ms(const std::string& deployment) const;
  // The Ready replica with the fewest outstanding requests among those below `capacity` whose
  // breaker lets traffic through, skipping `exclude`; ties go round-robin. nullptr when none.
  std::shared_ptr<Endpoint> pick(const std::string& deployment, const std::set<std::string>& exclude,
                                 int default_capacity, std::chrono::steady_clock::time_point now);
  size_t ready_count(const std::string& deployment, const std::set<std::string>& exclude = {}) const;
  // Of those, the replicas whose breaker is open at `now` (cooling down after failures). Reads
  // the breakers: the I/O thread only.
  size_t open_count(const std::string& deployment, const std::set<std::string>& exclude,
                    std::chrono::steady_clock::time_point now) const;
  // Scale-to-zero state as the store last said: idle since (0 = awake) and the last wake request.
  int64_t idle_since_ms(const std::string& deployment) const;
  int64_t wake_requested_ms(const std::string& deployment) const;
  // Why the deployment's replicas cannot be placed, "" when nothing says so.
  std::string unschedulable(const std::string& deployment) const;
  // Replicas of the deployment on their way to Ready (Pending, Scheduled, Downloading, Starting).
  size_t starting_count(const std::string& deployment) const;
  // True when the gateway sends the replica no new request and has none in flight to it: it is
  // draining (or not routable at all). The controller stops a draining replica once this holds.
  bool drained(const std::string& replica) const;
  // Called (from any thread) after every change.
  void set_on_change(std::function<void(const std::string& deployment)> callback);
  // Called (from any thread) with the URL of an engine that left the table (its replica deleted,
  // stopped or moved to another endpoint), so connections pooled to it can be closed.
  void set_on_endpoint_gone(std::function<void(const std::string& url)> callback);

 private:
  struct ReplicaEntry {
    std::string deployment;
    std::shared_ptr<Endpoint> endpoint;  // null unless Ready and not stopping
    bool draining = false;               // out of routing, its endpoint kept for the in-flight count
    bool starting = false;               // on its way to Ready
  };
  struct DeploymentEntry {
    int64_t created_ms = 0;
    int capacity = 0;  // per replica; 0 = the default
    int64_t idle_since_ms = 0;
    int64_t wake_requested_ms = 0;
    std::string unschedulable;  // why its replicas cannot be placed ("" = they can)
  };
  mutable std::mutex mutex_;
  std::map<std::string, DeploymentEntry> deployments_;
  std::map<std::string, ReplicaEntry> replicas_;
  size_t round_robin_ = 0;
  std::function<void(const std::string&)> on_change_;
  std::function<void(const std::string&)> on_endpoint_gone_;
};

}  // namespace nebula::router
