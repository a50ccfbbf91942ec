#include <set>
#include <string_view>
#include <unordered_map>

#include "store/store.h"
#include "store/watchers.h"

namespace nebula::store {

Result<std::vector<int64_t>> Store::put_all(const std::vector<Put>&) {
  return make_error(ErrorCode::Unavailable, "store: this store writes one key at a time");
}

std::vector<Result<std::vector<int64_t>>> Store::put_batches(const std::vector<std::vector<Put>>& batches) {
  auto shared = keys_in_several(batches);
  std::vector<Result<std::vector<int64_t>>> outcomes;
  outcomes.reserve(batches.size());
  for (size_t index = 0; index < batches.size(); ++index) {
    if (shared[index]) {
      outcomes.push_back(shared_key_error());
    } else {
      outcomes.push_back(put_all(batches[index]));
    }
  }
  return outcomes;
}

std::vector<bool> keys_in_several(const std::vector<std::vector<Put>>& batches) {
  std::vector<bool> shared(batches.size(), false);
  if (batches.size() < 2) return shared;
  std::unordered_map<std::string_view, size_t> batch_of;
  for (size_t index = 0; index < batches.size(); ++index) {
    for (const auto& put : batches[index]) {
      auto [it, inserted] = batch_of.emplace(put.key, index);
      if (!inserted && it->second != index) shared[index] = shared[it->second] = true;
    }
  }
  return shared;
}

Error shared_key_error() {
  return Error{ErrorCode::InvalidArgument, "store: a key is in two batches of one put_batches (neither is written)"};
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
