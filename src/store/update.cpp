#include <set>
#include <string_view>

#include "store/store.h"
#include "store/watchers.h"

namespace nebula::store {

Result<std::vector<int64_t>> Store::put_all(const std::vector<Put>&) {
  return make_error(ErrorCode::Unavailable, "store: this store writes one key at a time");
}

Status check_batch(const std::vector<Put>& puts) {
  if (puts.size() > kMaxBatch) {
    return make_error(ErrorCode::InvalidArgument, "store: " + std::to_string(puts.size()) +
                                                      " puts in one batch (at most " + std::to_string(kMaxBatch) + ")");
  }
  std::set<std::string_view> keys;
  for (const auto& put : puts) {
    if (put.precondition.mod_revision < -1) {
      return make_error(ErrorCode::InvalidArgument,
                        "store: bad precondition " + std::to_string(put.precondition.mod_revision));
    }
    if (!keys.insert(put.key).second) {
      return make_error(ErrorCode::InvalidArgument, "store: key " + put.key + " twice in one batch");
    }
  }
  return {};
}

Result<int64_t> update(Store& store, const std::string& key, const Change& change, int attempts) {
  for (int attempt = 0; attempt < attempts; ++attempt) {
    auto current = store.get(key);
    if (!current) return current.error();
    std::optional<std::string> value;
    if (current->has_value()) value = (*current)->value;
    auto changed = change(value);
    if (!changed) return changed.error();
    if (!changed->has_value()) return int64_t{0};
    auto precondition = current->has_value() ? Precondition::at((*current)->mod_revision) : Precondition::absent();
    auto written = store.put(key, **changed, precondition);
    if (written || written.error().code != ErrorCode::Conflict) return written;
  }
  return make_error(ErrorCode::Conflict, "too many concurrent updates to " + key);
}

}  // namespace nebula::store
