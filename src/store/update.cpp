#include "store/store.h"

namespace nebula::store {

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
