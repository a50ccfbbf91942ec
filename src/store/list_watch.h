#pragma once
// ListWatch: keeps a consumer in step with the keys under a prefix, as an informer does: a listing,
// then a watch from the revision after it; when the store ends the watch (EtcdStore, Compacted:
// the revisions it still had to deliver are gone) it lists again and watches from there. A
// listing reaches the consumer as events: a Put of each listed key-value (prev unset), then a
// Delete (at the listing's revision) of each key it had delivered that the listing no longer
// holds. Nothing is lost (a listing holds every change up to its revision) and no watched event
// is repeated (the watch starts after it); a consumer that applies whole values, as the key ring
// and the gateway's endpoint table do, ends up exactly where the store is.
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "store/store.h"

namespace nebula::store {

class ListWatch {
 public:
  // store must outlive the ListWatch. on_event follows the WatchCallback rules; a listing's events
  // come on start()'s caller thread, then on the ListWatch's own thread.
  ListWatch(Store& store, std::string prefix, WatchCallback on_event);
  ~ListWatch();
  ListWatch(const ListWatch&) = delete;
  ListWatch& operator=(const ListWatch&) = delete;

  // The first listing and watch; their error when either fails.
  Status start();
  void stop();
  // How many times the watch ended and the prefix was listed again.
  int resyncs() const;

 private:
  Status list_and_watch();
  void run();

  Store& store_;
  const std::string prefix_;
  WatchCallback on_event_;
  std::mutex keys_mutex_;
  std::set<std::string> keys_;  // the keys delivered and not deleted since
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool resync_ = false;
  bool stopping_ = false;
  int resyncs_ = 0;
  std::unique_ptr<WatchHandle> watch_;
  std::thread thread_;
};

}  // namespace nebula::store
