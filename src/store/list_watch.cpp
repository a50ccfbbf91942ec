#include "store/list_watch.h"

#include <spdlog/spdlog.h>

#include <chrono>

namespace nebula::store {

ListWatch::ListWatch(Store& store, std::string prefix, WatchCallback on_event)
    : store_(store), prefix_(std::move(prefix)), on_event_(std::move(on_event)) {}

ListWatch::~ListWatch() {
  stop();
}

Status ListWatch::start() {
  if (auto started = list_and_watch(); !started) return started;
  thread_ = std::thread([this] { run(); });
  return {};
}

void ListWatch::stop() {
  std::unique_ptr<WatchHandle> watch;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    watch = std::move(watch_);
  }
  wake_.notify_all();
  if (watch) watch->cancel();
  if (thread_.joinable()) thread_.join();
}

int ListWatch::resyncs() const {
  std::lock_guard lock(mutex_);
  return resyncs_;
}

Status ListWatch::list_and_watch() {
  auto listing = store_.list(prefix_);
  if (!listing) return listing.error();
  {
    std::lock_guard lock(keys_mutex_);
    std::set<std::string> listed;
    for (const auto& kv : listing->kvs) {
      WatchEvent event;
      event.kv = kv;
      on_event_(event);
      listed.insert(kv.key);
    }
    for (const auto& key : keys_) {
      if (listed.count(key)) continue;
      WatchEvent event;
      event.type = WatchEvent::Type::Delete;
      event.kv.key = key;
      event.kv.mod_revision = listing->revision;
      on_event_(event);
    }
    keys_ = std::move(listed);
  }
  // Runs on the store's thread: only flags the resync for run().
  auto on_end = [this](const Error& error) {
    spdlog::info("store: the watch of {} ended ({}); listing it again", prefix_, error.message);
    std::lock_guard lock(mutex_);
    resync_ = true;
    wake_.notify_all();
  };
  auto on_event = [this](const WatchEvent& event) {
    {
      std::lock_guard lock(keys_mutex_);
      if (event.type == WatchEvent::Type::Put) {
        keys_.insert(event.kv.key);
      } else {
        keys_.erase(event.kv.key);
      }
    }
    on_event_(event);
  };
  auto watch = store_.watch_values(prefix_, listing->revision + 1, on_event, on_end);
  if (!watch) return watch.error();
  std::unique_ptr<WatchHandle> old;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) {
      (*watch)->cancel();
      return {};
    }
    old = std::move(watch_);
    watch_ = std::move(*watch);
  }
  return {};
}

void ListWatch::run() {
  std::unique_lock lock(mutex_);
  while (true) {
    wake_.wait(lock, [this] { return resync_ || stopping_; });
    if (stopping_) return;
    resync_ = false;
    ++resyncs_;
    lock.unlock();
    // The listing or the watch fails while the store is unreachable: try again.
    auto done = list_and_watch();
    lock.lock();
    if (!done && !stopping_) {
      spdlog::warn("store: cannot list {} again: {}", prefix_, done.error().message);
      resync_ = true;
      wake_.wait_for(lock, std::chrono::seconds(1), [this] { return stopping_; });
    }
  }
}

}  // namespace nebula::store
