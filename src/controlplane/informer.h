#pragma once
// The controller's view of the cluster, kept as Kubernetes' informers keep theirs: every node,
// deployment and replica decoded once, when it changes, from one watch on the store, instead of
// listing and decoding everything on every pass. Also each node's liveness lease (node_admission.h)
// and how many events are stored.
//
// It also says what changed (take_changes), so the controller reconciles only that, as Kubernetes'
// controllers do with their work queues, and keeps indexes of replicas by deployment and by node.
//
// Threading: the store calls the watch callback (on the committing thread, under the store's
// lock): it only queues the raw change. The controller's own thread calls everything else;
// sync() decodes what was queued.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "api/api.h"
#include "common/result.h"
#include "store/store.h"

namespace nebula::controlplane {

class Informer {
 public:
  // What the changes sync() applied since the last take_changes() touched.
  struct Changes {
    std::set<std::string> nodes;  // joined, changed or removed (a lease renewal is not a change)
    // Deployments created, changed or deleted, and the deployment of every replica created,
    // changed or removed (before and after the change).
    std::set<std::string> deployments;
    bool modes = false;     // a mode was created, changed or deleted (modes are not cached)
    bool relisted = false;  // the store ended the watch and was listed again: anything may have changed
  };

  explicit Informer(store::Store& store);
  ~Informer();
  Informer(const Informer&) = delete;
  Informer& operator=(const Informer&) = delete;

  // Lists the resources and starts the watch (once; later calls do nothing). on_change runs on
  // the committing thread for each change the controller acts on (nodes' status or spec,
  // deployments, replicas, modes), not for node lease renewals, events or keys it does not read.
  Status start(std::function<void()> on_change = {});
  bool started() const { return started_; }
  // Applies every change up to the store's current revision, waiting up to `limit` for changes a
  // store delivers asynchronously; false if they did not all arrive in time (what did is applied).
  bool sync(std::chrono::milliseconds limit = std::chrono::milliseconds(500));

  // Sorted by name, as a listing of the store is.
  std::vector<api::Node> nodes() const;
  std::vector<api::Deployment> deployments() const;
  std::vector<api::Replica> replicas() const;
  // One object by name; nullptr when the cache has none. Valid until the next sync().
  const api::Node* node(const std::string& name) const;
  const api::Deployment* deployment(const std::string& name) const;
  const api::Replica* replica(const std::string& name) const;
  // The replicas of a deployment, or those placed on a node (spec.node), sorted by name.
  std::vector<api::Replica> replicas_of(const std::string& deployment) const;
  std::vector<api::Replica> replicas_on(const std::string& node) const;
  // The deployments with a replica placed on the node.
  std::set<std::string> deployments_on(const std::string& node) const;
  // Replicas neither placed nor marked stop: what the scheduler has still to place.
  const std::set<std::string>& unplaced() const { return unplaced_; }
  // What changed since the last call; resets it.
  Changes take_changes();
  // When the node's agent last renewed its liveness lease (wall ms); 0 without one.
  int64_t lease_renewed_ms(const std::string& node) const;
  size_t event_count() const { return events_.size(); }
  // Changes each time capacity may have been freed or added: a node joined, left or changed in
  // what placement reads (not a refreshed heartbeat or GPU utilization); a placed replica was
  // removed, moved, resized or marked stop. The scheduler retries a replica
  // that did not fit when this moves.
  uint64_t capacity_generation() const { return capacity_generation_; }

 private:
  struct Change {
    bool put = true;
    std::string key;
    std::string value;
    int64_t revision = 0;
  };
  void apply(const Change& change);
  void apply_replica(const Change& change);
  void index(const api::Replica& replica);
  void unindex(const api::Replica& replica);
  // Lists the resources into queued_ and watches from the listing's revision on.
  Status list_and_watch();
  // The store ended the watch (EtcdStore, its history compacted): forget everything, list again.
  void relist();

  store::Store& store_;
  std::unique_ptr<store::WatchHandle> watch_;
  std::function<void()> on_change_;
  bool started_ = false;
  // Filled by the watch callback.
  std::mutex mutex_;
  std::condition_variable arrived_;
  std::deque<Change> queued_;
  int64_t seen_revision_ = 0;  // the newest revision the watch delivered (or the listing's)
  bool watch_ended_ = false;   // set by the store's end-of-watch callback; sync() lists again
  bool modes_changed_ = false;
  // The controller thread's.
  std::map<std::string, api::Node> nodes_;
  std::map<std::string, api::Deployment> deployments_;
  std::map<std::string, api::Replica> replicas_;
  std::map<std::string, std::set<std::string>> replicas_by_deployment_;  // replica names
  std::map<std::string, std::set<std::string>> replicas_by_node_;
  std::set<std::string> unplaced_;
  Changes changes_;
  std::map<std::string, int64_t> leases_;
  std::set<std::string> events_;
  uint64_t capacity_generation_ = 0;
};

}  // namespace nebula::controlplane
