#pragma once
// The control plane: the management REST API (/api/v1) over the Store, and the controllers that
// reconcile desired state (deployments) into replicas placed on nodes. Level-triggered and
// idempotent: a restart at any time converges again.
#include <chrono>
#include <condition_variable>
#include <cstdint>
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
  // The controller reconciles what changed and what falls due (a heartbeat deadline, an idle or
  // drain timeout...); every full_resync_interval it reconciles everything anyway, the safety net
  // against a change it missed.
  std::chrono::milliseconds full_resync_interval{30'000};
  // How often it looks again at what no store change reports: a draining replica's requests in
  // flight (replica_drained), a mode switch in progress, a write that failed.
  std::chrono::milliseconds poll_interval{1'000};
  // A joining agent gets this credential back (a node-scoped API key): it proves the agent's
  // identity when it rejoins, and (hashed) the server's identity when the server calls the agent.
  std::function<Result<std::string>(const std::string& node)> issue_node_credential;
  // Called with the id of each node key the API revokes (`nebula nodes rm`), once the store holds
  // the revocation: the server's key ring refuses the key from then on, instead of from when its
  // store watch brings the change (milliseconds later on etcd).
  std::function<void(const std::string& key_id)> on_node_key_revoked;
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
  // Called on the controller's thread with each deployment a pass reconciles (tests count them).
  std::function<void(const std::string& deployment)> on_reconcile;
};

// What the controller has done since it started (its own thread's counters: read them there, or
// from a test between passes it drives).
struct ControllerStats {
  uint64_t passes = 0;       // full and incremental
  uint64_t full_passes = 0;  // every deployment and node, the first one and each full resync
  uint64_t deployments_reconciled = 0;
  uint64_t nodes_checked = 0;
  uint64_t scheduling_passes = 0;  // passes that ran the scheduler (something pending could be tried)
};

// The deployment controller, scheduler loop and node-liveness check, on one thread of its own
// (store calls block). Reads the cluster from an Informer (decoded once per change, not listed
// every pass) and reconciles only what changed, as Kubernetes' controllers do with work queues: a
// deployment is queued when it or one of its replicas changes, or a node it has replicas on; each
// wake reconciles the queued deployments, runs the scheduler only when a pending replica can be
// tried again, and looks at nodes only when one changed or a heartbeat deadline falls due. What
// needs the clock (heartbeat deadlines, idle, drain and rollout timeouts, scheduling backoffs) is a
// due time the loop sleeps until; a full pass runs at start (so a new leader starts from one) and
// every full_resync_interval. Node lease renewals and events wake nothing.
class Controller {
 public:
  Controller(Resources& resources, Options options);
  ~Controller();
  void start();
  void stop();
  // One full reconcile pass: every node and deployment, then the scheduler. Public so tests can
  // drive it step by step.
  void reconcile();
  // One pass over what changed since the last pass and what has fallen due: what the loop runs
  // between full passes. Public so tests can drive it (a full pass when none ran yet).
  void reconcile_changes();
  // When something falls due next (wall ms): the loop sleeps until then unless a change wakes it.
  int64_t next_due_ms() const;
  // How many times the scheduler tried to place a pending replica (tests, benchmarks).
  uint64_t placement_attempts() const { return placement_attempts_; }
  const ControllerStats& stats() const { return stats_; }

 private:
  // Wall-clock times (ms) at which something must be looked at again, by name, earliest first.
  class DueTimes {
   public:
    void set(const std::string& name, int64_t due_ms);
    void erase(const std::string& name);
    void clear();
    int64_t earliest() const;  // kNever when empty
    // Removes and returns the names due at or before `until_ms`.
    std::vector<std::string> take_until(int64_t until_ms);

   private:
    std::map<std::string, int64_t> by_name_;
    std::set<std::pair<int64_t, std::string>> by_time_;
  };
  static constexpr int64_t kNever = INT64_MAX;

  void run();
  void wake();
  bool ensure_informer();
  int64_t now_ms() const;
  // Marks the node NotReady when its heartbeat is older than node_timeout; true when it did.
  bool judge_node(api::Node& node);
  // When the node must be looked at again: its heartbeat deadline while Ready, the end of the
  // reschedule grace while NotReady.
  void plan_node(const api::Node& node, int64_t now);
  // Looks at the nodes that changed or fell due; queues the deployments their changes concern.
  void check_nodes(const std::set<std::string>& changed, std::set<std::string>& queue);
  // Reconciles one queued deployment (or stops the replicas of one that is gone).
  void reconcile_queued(const std::string& name, std::vector<api::Replica>& replicas,
                        const std::vector<api::Node>& nodes, const std::set<std::string>& draining_nodes);
  // Whether a replica waiting for a placement may be tried now; when the scheduler must run next.
  bool scheduling_due() const;
  void plan_scheduling();
  // A due time in the past means what waits is blocked on something a change will report, or a
  // write failed: looked at again after poll_interval, never in a busy loop.
  int64_t not_before_poll(int64_t due, int64_t now) const;
  void log_pass(const char* kind, const ControllerStats& before) const;
  int64_t heard_from(const api::Node& node) const;
  void mark_replicas_unknown(const std::string& node);
  void replace_lost(std::vector<api::Replica>& replicas, const std::vector<api::Node>& nodes);
  // *due: when the idle timeout runs out (kNever when it cannot).
  api::DeploymentStatus reconcile_idle(const api::Deployment& deployment, const std::vector<api::Replica*>& active,
                                       int ready, int64_t* due);
  // `replicas` holds at least the deployment's own (the pass's whole list, or only those);
  // replicas it creates are appended. Returns when the deployment must be looked at again without
  // a change (a timeout), kNever when only a change can move it.
  int64_t reconcile_deployment(const api::Deployment& observed, std::vector<api::Replica>& replicas,
                               const std::vector<api::Node>& nodes, const std::set<std::string>& draining_nodes);
  // Rollouts (rollout.cpp).
  using StopReplica = std::function<bool(api::Replica&, const char* reason, const std::string& message)>;
  api::Deployment ensure_plan(const api::Deployment& deployment);
  void finish_drains(const std::vector<api::Replica*>& draining, const StopReplica& stop_replica);
  // *due: when the rollout's progress deadline runs out (left as is when it has none).
  bool rollback_if_failing(const api::Deployment& deployment, const std::vector<api::Replica*>& current, int64_t* due);
  // `replicas` holds at least the deployment's own; what-ifs on capacity read every replica from
  // the informer.
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
  std::map<std::string, Backoff> unschedulable_;        // by replica name
  std::chrono::steady_clock::time_point pass_started_;  // backoffs count from it
  uint64_t placement_attempts_ = 0;
  ControllerStats stats_;
  // The controller thread's schedule (wall ms).
  bool full_pass_done_ = false;
  int64_t full_resync_due_ms_ = 0;
  DueTimes node_due_;        // heartbeat deadlines, reschedule graces
  DueTimes deployment_due_;  // idle, drain and rollout timeouts; drains polled
  int64_t scheduling_due_ms_ = kNever;
  bool switching_ = false;  // a mode switch is in progress: advanced every poll_interval
  int64_t switch_due_ms_ = kNever;
  uint64_t capacity_seen_ = 0;  // the informer's capacity_generation at the last pass
  // Each node's readiness and drain mark as last looked at: a change of either concerns the
  // deployments with replicas there (a refreshed heartbeat or GPU reading does not).
  struct NodeSeen {
    bool ready = false;
    bool drain = false;
    bool operator==(const NodeSeen&) const = default;
  };
  std::map<std::string, NodeSeen> nodes_seen_;
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
