#include "store/watchers.h"

#include <utility>

namespace nebula::store {

class WatcherRegistry::Handle final : public WatchHandle {
 public:
  Handle(std::weak_ptr<State> state, uint64_t id) : state_(std::move(state)), id_(id) {}
  ~Handle() override { cancel(); }

  void cancel() override {
    if (auto state = state_.lock()) {
      std::lock_guard lock(state->mu);
      state->watchers.erase(id_);
    }
  }

 private:
  std::weak_ptr<State> state_;
  uint64_t id_;
};

WatcherRegistry::WatcherRegistry() : state_(std::make_shared<State>()) {}

std::unique_ptr<WatchHandle> WatcherRegistry::add(std::string prefix, int64_t min_revision, WatchCallback callback) {
  std::lock_guard lock(state_->mu);
  uint64_t id = state_->next_id++;
  state_->watchers.emplace(id, Watcher{std::move(prefix), min_revision, std::move(callback)});
  return std::make_unique<Handle>(state_, id);
}

void WatcherRegistry::notify(const WatchEvent& event) {
  std::lock_guard lock(state_->mu);
  for (auto& [id, watcher] : state_->watchers) {
    if (event.kv.mod_revision >= watcher.min_revision && has_prefix(event.kv.key, watcher.prefix)) {
      watcher.callback(event);
    }
  }
}

std::optional<std::string> prefix_end(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty() && static_cast<unsigned char>(end.back()) == 0xff) end.pop_back();
  if (end.empty()) return std::nullopt;
  end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
  return end;
}

Status check_key(const std::string& key) {
  if (key.empty()) return make_error(ErrorCode::InvalidArgument, "store: empty key");
  return {};
}

namespace {

Status check_precondition(const std::string& key, const std::optional<KeyValue>& current, Precondition precondition) {
  int64_t want = precondition.mod_revision;
  if (want < -1) {
    return make_error(ErrorCode::InvalidArgument, "store: bad precondition " + std::to_string(want));
  }
  if (want == 0 && current) {
    return make_error(ErrorCode::Conflict, "store: key " + key + " already exists");
  }
  if (want > 0 && !current) {
    return make_error(ErrorCode::Conflict,
                      "store: key " + key + " does not exist (expected mod_revision " + std::to_string(want) + ")");
  }
  if (want > 0 && current->mod_revision != want) {
    return make_error(ErrorCode::Conflict, "store: key " + key + " is at mod_revision " +
                                               std::to_string(current->mod_revision) + ", expected " +
                                               std::to_string(want));
  }
  return {};
}

}  // namespace

Status check_put(const std::string& key, const std::optional<KeyValue>& current, Precondition precondition) {
  if (auto status = check_key(key); !status) return status;
  return check_precondition(key, current, precondition);
}

Status check_remove(const std::string& key, const std::optional<KeyValue>& current, Precondition precondition) {
  if (auto status = check_key(key); !status) return status;
  if (auto status = check_precondition(key, current, precondition); !status) return status;
  if (!current) return make_error(ErrorCode::NotFound, "store: key " + key + " not found");
  return {};
}

Status check_watch_from(int64_t from_revision, int64_t compacted_revision) {
  if (from_revision < 0) {
    return make_error(ErrorCode::InvalidArgument, "store: bad watch revision " + std::to_string(from_revision));
  }
  if (from_revision != 0 && from_revision <= compacted_revision) {
    return make_error(ErrorCode::Compacted, "store: revision " + std::to_string(from_revision) +
                                                " is compacted (history starts after " +
                                                std::to_string(compacted_revision) + ")");
  }
  return {};
}

WatchEvent make_put_event(const std::string& key, const std::string& value, int64_t lease, int64_t revision,
                          const std::optional<KeyValue>& current) {
  WatchEvent event;
  event.type = WatchEvent::Type::Put;
  event.kv.key = key;
  event.kv.value = value;
  event.kv.create_revision = current ? current->create_revision : revision;
  event.kv.mod_revision = revision;
  event.kv.version = current ? current->version + 1 : 1;
  event.kv.lease = lease;
  event.prev = current;
  return event;
}

WatchEvent make_delete_event(const KeyValue& current, int64_t revision) {
  WatchEvent event;
  event.type = WatchEvent::Type::Delete;
  event.kv.key = current.key;
  event.kv.mod_revision = revision;
  event.prev = current;
  return event;
}

}  // namespace nebula::store
