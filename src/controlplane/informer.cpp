#include "controlplane/informer.h"

#include <spdlog/spdlog.h>

#include "controlplane/node_admission.h"
#include "controlplane/resources.h"

namespace nebula::controlplane {

namespace {

const std::string kNodes = api::store_prefix("nodes");
const std::string kDeployments = api::store_prefix("deployments");
const std::string kReplicas = api::store_prefix("replicas");
const std::string kModes = api::store_prefix("modes");
const std::string kEvents = api::store_prefix("events");
const std::string kLeases = node_lease_prefix();

bool starts_with(const std::string& key, const std::string& prefix) {
  return key.compare(0, prefix.size(), prefix) == 0;
}

// What the cache keeps (the value is needed) and what wakes the controller.
bool kept(const std::string& key) {
  return starts_with(key, kNodes) || starts_with(key, kDeployments) || starts_with(key, kReplicas) ||
         starts_with(key, kLeases) || starts_with(key, kEvents);
}
bool wakes(const std::string& key) {
  return starts_with(key, kNodes) || starts_with(key, kDeployments) || starts_with(key, kReplicas) ||
         starts_with(key, kModes);
}

// The name in a key under prefix.
std::string name_of(const std::string& key, const std::string& prefix) {
  return key.substr(prefix.size());
}

// Whether what the scheduler could place on the node may differ: anything but the heartbeat, the
// message and the GPUs' passing readings (utilization, temperature, power), which a node's periodic
// status refresh rewrites and which only break ties between placements that fit.
bool may_fit_differently(const api::Node& before, const api::Node& after) {
  if (before.metadata.labels != after.metadata.labels || before.spec.drain != after.spec.drain ||
      before.spec.reserved_vram_mb != after.spec.reserved_vram_mb || before.status.ready != after.status.ready ||
      before.status.engines != after.status.engines || before.status.models != after.status.models ||
      before.status.gpus.size() != after.status.gpus.size()) {
    return true;
  }
  for (size_t i = 0; i < before.status.gpus.size(); ++i) {
    const auto& was = before.status.gpus[i];
    const auto& now = after.status.gpus[i];
    if (was.index != now.index || was.uuid != now.uuid || was.memory_total_mb != now.memory_total_mb ||
        was.memory_used_mb != now.memory_used_mb) {
      return true;
    }
  }
  return false;
}

// Applies a change to one kind's map; true when it changed the map.
template <typename T>
bool apply_to(std::map<std::string, T>& objects, const std::string& name, bool put, const std::string& value,
              int64_t revision, T* before = nullptr, bool* existed = nullptr) {
  auto it = objects.find(name);
  if (existed) *existed = it != objects.end();
  if (it != objects.end()) {
    if (it->second.metadata.revision >= revision) return false;  // already seen (the listing)
    if (before) *before = it->second;
  }
  if (!put) {
    if (it == objects.end()) return false;
    objects.erase(it);
    return true;
  }
  auto object = decode<T>(store::KeyValue{"", value, 0, revision, 0, 0});
  if (!object) {
    spdlog::warn("controller: ignoring an undecodable {} {}: {}", Traits<T>::kKind, name, object.error().message);
    if (it != objects.end()) objects.erase(it);
    return true;
  }
  objects[name] = std::move(*object);
  return true;
}

}  // namespace

Informer::Informer(store::Store& store) : store_(store) {}

Informer::~Informer() {
  if (watch_) watch_->cancel();
}

Status Informer::start(std::function<void()> on_change) {
  if (started_) return {};
  on_change_ = std::move(on_change);
  auto listed = list_and_watch();
  if (listed) started_ = true;
  return listed;
}

Status Informer::list_and_watch() {
  auto listing = store_.list(api::kKeyRoot);
  if (!listing) return listing.error();
  {
    std::lock_guard lock(mutex_);
    for (const auto& kv : listing->kvs) {
      if (kept(kv.key)) queued_.push_back(Change{true, kv.key, kv.value, kv.mod_revision});
    }
    seen_revision_ = listing->revision;
    watch_ended_ = false;
  }
  auto watch = store_.watch_values(
      api::kKeyRoot, listing->revision + 1,
      [this](const store::WatchEvent& event) {
        bool put = event.type == store::WatchEvent::Type::Put;
        {
          std::lock_guard lock(mutex_);
          if (kept(event.kv.key)) {
            queued_.push_back(Change{put, event.kv.key, put ? event.kv.value : std::string(), event.kv.mod_revision});
          }
          if (starts_with(event.kv.key, kModes)) modes_changed_ = true;
          seen_revision_ = std::max(seen_revision_, event.kv.mod_revision);
        }
        arrived_.notify_all();
        if (on_change_ && wakes(event.kv.key)) on_change_();
      },
      [this](const Error& error) {
        spdlog::warn("controller: the store ended its watch ({}); listing again", error.message);
        {
          std::lock_guard lock(mutex_);
          watch_ended_ = true;
        }
        arrived_.notify_all();
        if (on_change_) on_change_();
      });
  if (!watch) return watch.error();
  watch_ = std::move(*watch);
  return {};
}

void Informer::relist() {
  if (watch_) watch_->cancel();
  watch_.reset();
  {
    std::lock_guard lock(mutex_);
    queued_.clear();
  }
  nodes_.clear();
  deployments_.clear();
  replicas_.clear();
  replicas_by_deployment_.clear();
  replicas_by_node_.clear();
  unplaced_.clear();
  leases_.clear();
  events_.clear();
  changes_.relisted = true;
  ++capacity_generation_;  // what was freed in the gap is unknown: retry what did not fit
  if (auto listed = list_and_watch(); !listed) {
    spdlog::error("controller: cannot list the store again: {}", listed.error().message);
    std::lock_guard lock(mutex_);
    watch_ended_ = true;  // try again at the next sync
  }
}

bool Informer::sync(std::chrono::milliseconds limit) {
  bool ended = false;
  {
    std::lock_guard lock(mutex_);
    ended = watch_ended_;
  }
  if (ended) relist();
  int64_t target = store_.revision();
  std::deque<Change> changes;
  bool complete = true;
  {
    std::unique_lock lock(mutex_);
    complete = arrived_.wait_for(lock, limit, [&] { return seen_revision_ >= target || watch_ended_; });
    changes.swap(queued_);
    changes_.modes = changes_.modes || modes_changed_;
    modes_changed_ = false;
  }
  for (const auto& change : changes) apply(change);
  return complete;
}

void Informer::apply(const Change& change) {
  const std::string& key = change.key;
  if (starts_with(key, kLeases)) {
    std::string node = name_of(key, kLeases);
    if (!change.put) {
      leases_.erase(node);
    } else if (auto renewed = parse_node_lease(change.value)) {
      leases_[node] = *renewed;
    }
  } else if (starts_with(key, kEvents)) {
    if (change.put) {
      events_.insert(key);
    } else {
      events_.erase(key);
    }
  } else if (starts_with(key, kNodes)) {
    std::string name = name_of(key, kNodes);
    api::Node before;
    bool existed = false;
    if (apply_to(nodes_, name, change.put, change.value, change.revision, &before, &existed)) {
      auto after = nodes_.find(name);
      if (!existed || after == nodes_.end() || may_fit_differently(before, after->second)) ++capacity_generation_;
      changes_.nodes.insert(name);
    }
  } else if (starts_with(key, kDeployments)) {
    std::string name = name_of(key, kDeployments);
    if (apply_to(deployments_, name, change.put, change.value, change.revision)) changes_.deployments.insert(name);
  } else if (starts_with(key, kReplicas)) {
    apply_replica(change);
  }
}

void Informer::apply_replica(const Change& change) {
  api::Replica before;
  bool existed = false;
  std::string name = name_of(change.key, kReplicas);
  if (!apply_to(replicas_, name, change.put, change.value, change.revision, &before, &existed)) return;
  auto after = replicas_.find(name);
  if (existed) {
    unindex(before);
    changes_.deployments.insert(before.spec.deployment);
  }
  if (after != replicas_.end()) {
    index(after->second);
    changes_.deployments.insert(after->second.spec.deployment);
  }
  // A placement only takes capacity: a replica placed where there was none is no news to a
  // replica that did not fit.
  bool freed_or_moved =
      after == replicas_.end() ||
      (existed && !before.spec.node.empty() &&
       (before.spec.node != after->second.spec.node || before.spec.gpus != after->second.spec.gpus ||
        before.spec.vram_mb != after->second.spec.vram_mb || before.spec.stop != after->second.spec.stop));
  if (freed_or_moved) ++capacity_generation_;
}

void Informer::index(const api::Replica& replica) {
  const std::string& name = replica.metadata.name;
  replicas_by_deployment_[replica.spec.deployment].insert(name);
  if (!replica.spec.node.empty()) replicas_by_node_[replica.spec.node].insert(name);
  if (replica.spec.node.empty() && !replica.spec.stop) unplaced_.insert(name);
}

void Informer::unindex(const api::Replica& replica) {
  const std::string& name = replica.metadata.name;
  auto forget = [&](std::map<std::string, std::set<std::string>>& index, const std::string& key) {
    auto entry = index.find(key);
    if (entry == index.end()) return;
    entry->second.erase(name);
    if (entry->second.empty()) index.erase(entry);
  };
  forget(replicas_by_deployment_, replica.spec.deployment);
  if (!replica.spec.node.empty()) forget(replicas_by_node_, replica.spec.node);
  unplaced_.erase(name);
}

template <typename T>
std::vector<T> values_of(const std::map<std::string, T>& objects) {
  std::vector<T> values;
  values.reserve(objects.size());
  for (const auto& [name, object] : objects) values.push_back(object);
  return values;
}

std::vector<api::Node> Informer::nodes() const {
  return values_of(nodes_);
}
std::vector<api::Deployment> Informer::deployments() const {
  return values_of(deployments_);
}
std::vector<api::Replica> Informer::replicas() const {
  return values_of(replicas_);
}

namespace {
template <typename T>
const T* find_in(const std::map<std::string, T>& objects, const std::string& name) {
  auto it = objects.find(name);
  return it == objects.end() ? nullptr : &it->second;
}
}  // namespace

const api::Node* Informer::node(const std::string& name) const {
  return find_in(nodes_, name);
}
const api::Deployment* Informer::deployment(const std::string& name) const {
  return find_in(deployments_, name);
}
const api::Replica* Informer::replica(const std::string& name) const {
  return find_in(replicas_, name);
}

namespace {
// Copies of the replicas an index lists under `key` (a deployment or a node).
std::vector<api::Replica> indexed(const std::map<std::string, std::set<std::string>>& index, const std::string& key,
                                  const std::map<std::string, api::Replica>& replicas) {
  std::vector<api::Replica> found;
  auto names = index.find(key);
  if (names == index.end()) return found;
  found.reserve(names->second.size());
  for (const auto& name : names->second) found.push_back(replicas.at(name));
  return found;
}
}  // namespace

std::vector<api::Replica> Informer::replicas_of(const std::string& deployment) const {
  return indexed(replicas_by_deployment_, deployment, replicas_);
}

std::vector<api::Replica> Informer::replicas_on(const std::string& node) const {
  return indexed(replicas_by_node_, node, replicas_);
}

std::set<std::string> Informer::deployments_on(const std::string& node) const {
  std::set<std::string> found;
  auto names = replicas_by_node_.find(node);
  if (names == replicas_by_node_.end()) return found;
  for (const auto& name : names->second) found.insert(replicas_.at(name).spec.deployment);
  return found;
}

Informer::Changes Informer::take_changes() {
  Changes taken;
  std::swap(taken, changes_);
  return taken;
}

int64_t Informer::lease_renewed_ms(const std::string& node) const {
  auto it = leases_.find(node);
  return it == leases_.end() ? 0 : it->second;
}

}  // namespace nebula::controlplane
