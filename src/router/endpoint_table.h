#pragma once
// Deployments and their replicas as routing sees them, kept current from the store's documents.
#include <algorithm>
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
#include "router/policy.h"

namespace nebula::router {

// A replica the gateway can send to.
struct Endpoint {
  std::string replica;
  std::string deployment;
  std::string url;  // "http://127.0.0.1:PORT"
  std::atomic<int> outstanding{0};
  // The estimated prompt + output tokens of the requests in flight to it.
  std::atomic<int64_t> inflight_tokens{0};
  // The requests its engine holds (running + waiting) as its /metrics last said, from every
  // gateway, and when (steady ns; 0 = not read yet, -1 = its /metrics has no such figures): what
  // drained() reads from another thread.
  std::atomic<double> engine_busy{-1};
  std::atomic<int64_t> engine_busy_at_ns{0};
  // I/O thread only:
  Breaker breaker;
  EngineLoad engine;      // what its engine's /metrics said last (engine.at: when)
  bool scraping = false;  // a read of its /metrics is under way
  // --signals xtrace: its pending requests and KV usage as xtrace last said, while fresh (-1:
  // nothing fresh); at: when they were last found fresh. They win over `engine`'s figures.
  double signal_waiting = -1;
  double signal_kv_usage = -1;
  SteadyClock::time_point signal_at{};
  // What the policies see: `engine`, with the signals over it when there are any.
  EngineLoad load() const {
    if (signal_at == SteadyClock::time_point{} || (signal_waiting < 0 && signal_kv_usage < 0)) return engine;
    EngineLoad merged = engine;
    if (signal_waiting >= 0) merged.waiting = signal_waiting;
    if (signal_kv_usage >= 0) merged.kv_usage = signal_kv_usage;
    merged.at = std::max(engine.at, signal_at);
    merged.from_signals = true;
    return merged;
  }
};

// The replicas a request may go to, as the Policy sees them (`candidates`) and as the gateway
// sends to them (`endpoints`, in the same order).
struct Candidates {
  std::vector<std::shared_ptr<Endpoint>> endpoints;
  std::vector<Candidate> candidates;
};

// Deployments and their Ready replicas, kept current from a store watch. Thread-safe.
class EndpointTable {
 public:
  // Applies one stored document (a Deployment or Replica) or its deletion.
  void apply(const std::string& key, const std::string* value);
  bool has_deployment(const std::string& name) const;
  std::vector<std::string> deployments() const;
  int64_t created_ms(const std::string& deployment) const;
  // The replicas of `deployment` a request may go to now, in name order: serving (Ready, not
  // draining or stopping, on the deployment's current plan), not in `exclude`, their breaker
  // letting traffic through and below their capacity (the deployment's max_seqs, else
  // `default_capacity`). Reads each endpoint's breaker and engine load: I/O thread only.
  Candidates candidates(const std::string& deployment, const std::set<std::string>& exclude, int default_capacity,
                        std::chrono::steady_clock::time_point now) const;
  // Every serving endpoint, of every deployment, and with include_draining those of draining
  // replicas too (what the load scraper reads, so drained() hears from their engines).
  // The gateway reads each engine's own request counts (its load scraper runs): drained() then
  // waits for them too.
  void expect_engine_counts(bool on) { engine_counts_ = on; }
  std::vector<std::shared_ptr<Endpoint>> endpoints(bool include_draining = false) const;
  // The deployment's `spec.routing`, "" when it has none.
  std::string routing(const std::string& deployment) const;
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
  // Called (from any thread) when a replica leaves routing for good or for a while (deleted,
  // stopped, no longer Ready, draining, or moved to another endpoint, which is a new engine):
  // what a policy learnt about it is void.
  void set_on_replica_gone(std::function<void(const std::string& deployment, const std::string& replica)> callback);

 private:
  struct ReplicaEntry {
    std::string deployment;
    std::shared_ptr<Endpoint> endpoint;       // null unless Ready and not stopping
    bool draining = false;                    // out of routing, its endpoint kept for the in-flight count
    SteadyClock::time_point draining_seen{};  // when this table first saw it draining
    bool starting = false;                    // on its way to Ready
  };
  struct DeploymentEntry {
    int64_t created_ms = 0;
    int capacity = 0;  // per replica; 0 = the default
    int64_t idle_since_ms = 0;
    int64_t wake_requested_ms = 0;
    std::string unschedulable;  // why its replicas cannot be placed ("" = they can)
    std::string routing;        // spec.routing
  };
  mutable std::mutex mutex_;
  std::atomic<bool> engine_counts_{false};
  std::map<std::string, DeploymentEntry> deployments_;
  std::map<std::string, ReplicaEntry> replicas_;
  std::function<void(const std::string&)> on_change_;
  std::function<void(const std::string&)> on_endpoint_gone_;
  std::function<void(const std::string&, const std::string&)> on_replica_gone_;
};

}  // namespace nebula::router
