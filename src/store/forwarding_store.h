#pragma once
// A Store that hands every call to another one: the base of decorators that change one or two
// calls (tests and benchmarks make stores that refuse, lose answers, end watches or hide
// transactions on purpose) and override only those.
//
// put_batches and watch_values are not forwarded: Store's defaults run them through this
// store's put_all and watch, so a decorator that overrides put_all or watch sees every batch and
// every watch. put_all is forwarded; a decorator that hides it overrides it with Store::put_all.
#include "store/store.h"

namespace nebula::store {

class ForwardingStore : public Store {
 public:
  explicit ForwardingStore(Store& inner) : inner_(inner) {}

  Result<std::optional<KeyValue>> get(const std::string& key) override { return inner_.get(key); }
  Result<ListResult> list(const std::string& prefix) override { return inner_.list(prefix); }
  Result<int64_t> put(const std::string& key, const std::string& value,
                      Precondition precondition = Precondition::none(), int64_t lease = 0) override {
    return inner_.put(key, value, precondition, lease);
  }
  Result<int64_t> remove(const std::string& key, Precondition precondition = Precondition::none()) override {
    return inner_.remove(key, precondition);
  }
  Result<std::vector<int64_t>> put_all(const std::vector<Put>& puts) override { return inner_.put_all(puts); }
  int64_t revision() override { return inner_.revision(); }
  Result<std::unique_ptr<WatchHandle>> watch(const std::string& prefix, int64_t from_revision, WatchCallback callback,
                                             WatchEndCallback on_end = {}) override {
    return inner_.watch(prefix, from_revision, std::move(callback), std::move(on_end));
  }
  Result<int64_t> grant_lease(int64_t ttl_ms) override { return inner_.grant_lease(ttl_ms); }
  Status keep_alive(int64_t lease) override { return inner_.keep_alive(lease); }
  Status revoke_lease(int64_t lease) override { return inner_.revoke_lease(lease); }
  int expire_leases() override { return inner_.expire_leases(); }

 private:
  Store& inner_;
};

}  // namespace nebula::store
