#pragma once
// The control plane: the management REST API (/api/v1) over the Store, and the controllers that
// reconcile desired state (deployments) into replicas placed on nodes. Level-triggered and
// idempotent: a restart at any time converges again.
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "common/asio.h"
#include "common/clock.h"
#include "controlplane/informer.h"
#include "controlplane/resources.h"
#include "http/http.h"
#include "scheduler/scheduler.h"
#include "store/store.h"

namespace nebula::controlplane {

struct Options {
  // A node whose last heartbeat is older than this is NotReady.
  std::chrono::milliseconds node_timeout{30'000};
  // Replicas on a NotReady node are replaced elsewhere once it has been silent this much longer
  // than node_timeout; the node's agent stops the stale engines when it comes back.
  std::chrono::milliseconds reschedule_grace{60'000};
  // Agents present this token to join (`nebula agent --token`).
  std::string join_token;
  // Periodic reconcile even without changes (heartbeat expiry needs the clock, not an event).
  std::chrono::milliseconds resync_interval{1'000};
  // A joining agent gets this credential back (a node-scoped API key): it proves the agent's
  // identity when it rejoins, and (hashed) the server's identity when the server calls the agent.
  std::function<Result<std::string>(const std::string& node)> issue_node_credential;
  // The server requires API keys (--auth keys). Without them, deployment env keys that change how
  // an engine loads (LD_PRELOAD, PYTHONPATH...) are refused: nobody could be an admin.
  bool keys_required = false;
  // Events kept in the store; older ones are pruned.
  size_t max_events = 500;
  // Rollouts. A replica of a superseded plan leaves routing, then stops once replica_drained says
  // no request is in flight to it (the in-process gateway's view), or after drain_timeout.
  std::chrono::milliseconds drain_timeout{60'000};
  std::function<bool(const std::string& replica)> replica_drained;
  // Several servers on one etcd: whether this one leads (runs the controller), for
  // GET /api/v1/leader. Unset: the only server, always the leader.
  std::function<bool()> is_leader;
  // A rollout rolls back when a replica of the new plan crashed this many times (or cannot be
  // launched at all), or when no new replica was made for this long without it completing.
  int rollout_max_crashes = 2;
  std::chrono::milliseconds rollout_progress_timeout{15 * 60'000};
  // --signals xtrace: GPU utilisation from xtrace, while fresh, to break ties between GPUs that
  // fit (scheduler::Request::gpu_utilization); unset = the nodes' own reports.
  std::function<std::optional<double>(const std::string& node, int gpu_index)> gpu_utilization;
};

// The deployment controller, scheduler loop and node-liveness check, on one thread of its own
// (store calls block). Reads the cluster from an Informer (decoded once per change, not listed
// every pass). Wakes when a node, deployment, replica or mode changes, and every resync_interval
// (heartbeat expiry needs the clock); node lease renewals and events wake nothing.
class Controller {
 public:
  Controller(Resources& resources, Options options);
  ~Controller();
  void start();
  void stop();
  // One full reconcile pass; public so tests can drive it step by step.
  void reconcile();
  // How many times the scheduler tried to place a pending replica (tests, benchmarks).
  uint64_t placement_attempts() const { return placement_attempts_; }

 private:
  void run();
  void reconcile_nodes(std::vector<api::Node>& nodes);
  int64_t heard_from(const api::Node& node) const;
  void mark_replicas_unknown(const std::string& node);
  void replace_lost(std::vector<api::Replica>& replicas, const std::vector<api::Node>& nodes);
  api::DeploymentStatus reconcile_idle(const api::Deployment& deployment, const std::vector<api::Replica*>& active,
                                       int ready);
  void reconcile_deployment(const api::Deployment& observed, std::vector<api::Replica>& replicas,
                            const std::vector<api::Node>& nodes, const std::set<std::string>& draining_nodes);
  // Rollouts (rollout.cpp).
  using StopReplica = std::function<bool(api::Replica&, const char* reason, const std::string& message)>;
  api::Deployment ensure_plan(const api::Deployment& deployment);
  void finish_drains(const std::vector<api::Replica*>& draining, const StopReplica& stop_replica);
  bool rollback_if_failing(const api::Deployment& deployment, const std::vector<api::Replica*>& current);
  int replace_old_plan(const api::Deployment& deployment, const api::DeploymentSpec& plan_spec, int desired,
                       const std::vector<api::Replica*>& current, std::vector<api::Replica*>& old, size_t draining,
                       const std::vector<api::Node>& nodes, const std::vector<api::Replica>& replicas,
                       const StopReplica& stop_replica, int& ready);
  void complete_rollout(const api::Deployment& deployment);
  void schedule(std::vector<api::Replica>& replicas, const std::vector<api::Node>& nodes,
                const std::vector<api::Deployment>& deployments);
  // Writes placements made in a pass (by index into replicas): transactions of store::kMaxBatch
  // (Store::put_batches), a failed one's replicas one compare-and-swap each. Those written are
  // set in replicas and added to scheduled.
  void write_placements_of(std::vector<api::Replica>& replicas,
                           const std::vector<std::pair<size_t, scheduler::Placement>>& placements,
                           std::map<std::string, std::vector<std::pair<std::string, scheduler::Placement>>>& scheduled);
  bool evict_for(const api::Replica& replica, const api::DeploymentSpec& spec, const std::vector<api::Node>& nodes,
                 std::vector<api::Replica>& replicas, const std::vector<api::Deployment>& deployments);
  void collect_stopped(std::vector<api::Replica>& replicas, const std::vector<api::Node>& nodes);
  void prune_events();
  // A replica that did not fit is tried again when capacity changes (a node joins or changes, a
  // replica goes away or moves) or, failing that, after a backoff doubling from 1 s to 60 s.
  bool should_try(const api::Replica& replica) const;
  void failed_to_place(const api::Replica& replica);

  Resources& resources_;
  Options options_;
  Informer informer_;
  struct Backoff {
    uint64_t capacity_generation = 0;
    std::chrono::steady_clock::time_point retry_at;
    std::chrono::milliseconds delay{0};
  };
  std::map<std::string, Backoff> unschedulable_;  // by replica name
  uint64_t placement_attempts_ = 0;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool dirty_ = true;
  bool stopping_ = false;
  std::thread thread_;
  // Nodes are judged on heartbeats only from node_timeout after this (wall ms): a server that was
  // down gives every agent time to report before calling it silent.
  int64_t started_ms_ = 0;
};

// The spec plan `version` of the deployment was made from (the deployment's own spec when the
// history no longer holds it).
api::DeploymentSpec spec_of_plan(const api::Deployment& deployment, int64_t version);
// Replicas of `replicas` that are Ready.
int count_ready(const std::vector<api::Replica*>& replicas);

// Checks spec.routing with the router's own parser and writes it in its canonical form ("" stays
// ""): a spec the gateway would refuse never reaches the store. InvalidArgument naming the bad
// part (routing.cpp).
Status canonical_routing(api::DeploymentSpec& spec);

// Registers /api/v1/*, /healthz and /readyz. Handlers run on the server's io_context (one thread);
// `io` is that io_context, used for watch notifications.
void add_api_routes(http::Router& router, Resources& resources, asio::io_context& io, const Options& options);

// POST /api/v1/simulate: the dry-run plan of a deployment body (simulate_routes.cpp).
void add_simulate_routes(http::Router& router, Resources& resources);

// /api/v1/modes: create, list, get, delete, and POST /api/v1/modes/{name}/switch (mode_routes.cpp).
void add_mode_routes(http::Router& router, Resources& resources, asio::io_context& io);

// Rollouts: POST /api/v1/deployments/{name}/restart, GET .../rollout, POST .../rollout/undo
// (rollout_routes.cpp).
void add_rollout_routes(http::Router& router, Resources& resources);

// Sleep and wake on demand: POST /api/v1/deployments/{name}/sleep and .../wake (sleep_routes.cpp).
// Each records the ask in the deployment's status (sleep_requested_ms, wake_requested_ms) and
// answers; the controller puts the replicas to sleep (the spec's on_idle) or wakes them.
void add_sleep_routes(http::Router& router, Resources& resources);

// The answer to a sleep or wake: the deployment after the ask, and whether the ask changed it (a
// second sleep of a sleeping deployment changes nothing).
struct SleepAnswer {
  api::Deployment deployment;
  bool changed = false;
};
// NotFound for an unknown deployment; Conflict for one with zero replicas (nothing to sleep or wake).
Result<SleepAnswer> request_sleep(Resources& resources, const std::string& name);
Result<SleepAnswer> request_wake(Resources& resources, const std::string& name);

// Join tokens: POST/GET /api/v1/tokens, DELETE /api/v1/tokens/{id} (tokens.cpp).
void add_token_routes(http::Router& router, Resources& resources);
// The server's own token, or an unexpired one from `nebula token create`.
bool join_token_valid(Resources& resources, const Options& options, const std::string& token);

// OpenAI-style error JSON with the status for an error code (the one place codes map to HTTP).
int http_status(ErrorCode code);
http::Response error_response(const Error& error);

}  // namespace nebula::controlplane
