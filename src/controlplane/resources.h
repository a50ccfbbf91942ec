#pragma once
// Typed access to resources in the Store: read, list, and read-modify-write with
// compare-and-swap retries, so concurrent writers (controller, agents, API) never lose updates.
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "api/api.h"
#include "api/modes.h"
#include "common/clock.h"
#include "store/store.h"

namespace nebula::controlplane {

template <typename T>
struct Traits;
template <>
struct Traits<api::Node> {
  static constexpr const char* kPlural = "nodes";
  static constexpr const char* kKind = "node";
  static Result<api::Node> parse(const json& value) { return api::node_from_json(value); }
};
template <>
struct Traits<api::Deployment> {
  static constexpr const char* kPlural = "deployments";
  static constexpr const char* kKind = "deployment";
  static Result<api::Deployment> parse(const json& value) { return api::deployment_from_json(value); }
};
template <>
struct Traits<api::Replica> {
  static constexpr const char* kPlural = "replicas";
  static constexpr const char* kKind = "replica";
  static Result<api::Replica> parse(const json& value) { return api::replica_from_json(value); }
};
template <>
struct Traits<api::Mode> {
  static constexpr const char* kPlural = "modes";
  static constexpr const char* kKind = "mode";
  static Result<api::Mode> parse(const json& value) { return api::mode_from_json(value); }
};
template <>
struct Traits<api::Event> {
  static constexpr const char* kPlural = "events";
  static constexpr const char* kKind = "event";
  static Result<api::Event> parse(const json& value) { return api::event_from_json(value); }
};

// Parses a stored document; metadata.revision comes from the store's mod_revision.
template <typename T>
Result<T> decode(const store::KeyValue& kv) {
  auto document = parse_json(kv.value);
  if (!document) return document.error();
  auto object = Traits<T>::parse(*document);
  if (!object) return object.error();
  object->metadata.revision = kv.mod_revision;
  return object;
}

class Resources {
 public:
  explicit Resources(store::Store& store, const Clock& clock = SystemClock::instance())
      : store_(store), clock_(clock) {}

  store::Store& store() { return store_; }
  const Clock& clock() const { return clock_; }

  template <typename T>
  Result<T> get(const std::string& name) {
    auto kv = store_.get(api::store_key(Traits<T>::kPlural, name));
    if (!kv) return kv.error();
    if (!kv->has_value()) {
      return make_error(ErrorCode::NotFound, std::string(Traits<T>::kKind) + " '" + name + "' not found");
    }
    return decode<T>(**kv);
  }

  // Every decodable resource of the kind; the store revision of the listing in *revision.
  template <typename T>
  std::vector<T> list(int64_t* revision = nullptr) {
    std::vector<T> items;
    auto listing = store_.list(api::store_prefix(Traits<T>::kPlural));
    if (!listing) return items;
    if (revision) *revision = listing->revision;
    for (const auto& kv : listing->kvs) {
      auto item = decode<T>(kv);
      if (item) items.push_back(std::move(*item));
    }
    return items;
  }

  // The form kept in the store: without the fields at their defaults where the type has such a
  // form (replicas: api::to_stored_json), else the API's.
  template <typename T>
  static json stored_json(const T& object) {
    if constexpr (requires { api::to_stored_json(object); }) {
      return api::to_stored_json(object);
    } else {
      return api::to_json(object);
    }
  }

  // Creates the resource: AlreadyExists if the name is taken. Fills uid and created time.
  template <typename T>
  Result<T> create(T object) {
    if (object.metadata.uid.empty()) object.metadata.uid = new_uid();
    if (object.metadata.created_ms == 0) object.metadata.created_ms = to_unix_ms(clock_.wall_now());
    auto revision = store_.put(api::store_key(Traits<T>::kPlural, object.metadata.name), stored_json(object).dump(),
                               store::Precondition::absent());
    if (!revision) {
      if (revision.error().code == ErrorCode::Conflict) {
        return make_error(ErrorCode::AlreadyExists,
                          std::string(Traits<T>::kPlural) + "/" + object.metadata.name + " already exists");
      }
      return revision.error();
    }
    object.metadata.revision = *revision;
    return object;
  }

  // Writes the object only if it is unchanged since it was read (metadata.revision).
  template <typename T>
  Result<int64_t> update(const T& object) {
    return store_.put(api::store_key(Traits<T>::kPlural, object.metadata.name), stored_json(object).dump(),
                      store::Precondition::at(object.metadata.revision));
  }

  // Read-modify-write with retries on conflict. mutate returns false to leave the object as is.
  template <typename T>
  Result<T> modify(const std::string& name, const std::function<bool(T&)>& mutate) {
    for (int attempt = 0; attempt < 16; ++attempt) {
      auto object = get<T>(name);
      if (!object) return object.error();
      if (!mutate(*object)) return object;
      auto revision = update(*object);
      if (revision) {
        object->metadata.revision = *revision;
        return object;
      }
      if (revision.error().code != ErrorCode::Conflict) return revision.error();
    }
    return make_error(ErrorCode::Conflict, "too many concurrent updates to " + name);
  }

  template <typename T>
  Status remove(const std::string& name) {
    auto revision = store_.remove(api::store_key(Traits<T>::kPlural, name));
    if (!revision) return revision.error();
    return {};
  }

  // Records an Event (best effort: a failure to record is logged, not returned).
  void record_event(const std::string& object, const std::string& reason, const std::string& message,
                    const std::string& type = "Normal");

  static std::string new_uid();

 private:
  store::Store& store_;
  const Clock& clock_;
};

}  // namespace nebula::controlplane
