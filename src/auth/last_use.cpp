// When each API key was last used: the key ring notes every successful authentication in memory
// and a thread writes the new ones to the keys' documents once a minute.
#include <spdlog/spdlog.h>

#include "auth/auth.h"

namespace nebula::auth {

Status Guard::start() {
  if (auto started = keys_.start(store_); !started) return started;
  recorder_ = std::thread([this] {
    std::unique_lock lock(recorder_mutex_);
    for (;;) {
      recorder_wake_.wait_for(lock, last_use_interval_, [this] { return stopping_; });
      bool last_round = stopping_;  // a stopping guard still writes what is left
      lock.unlock();
      if (auto recorded = record_last_use(); !recorded) {
        spdlog::warn("keys: recording their last use failed: {}", recorded.error().message);
      }
      if (last_round) return;
      lock.lock();
    }
  });
  return {};
}

Guard::~Guard() {
  if (!recorder_.joinable()) return;
  {
    std::lock_guard lock(recorder_mutex_);
    stopping_ = true;
  }
  recorder_wake_.notify_all();
  recorder_.join();  // its last round writes what is left
}

Status Guard::record_last_use() {
  auto uses = keys_.take_unrecorded_uses();
  if (uses.empty()) return {};
  return auth::record_last_use(store_, uses);
}

}  // namespace nebula::auth
