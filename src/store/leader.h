#pragma once
// LeaderElection: one holder of a key among the processes sharing a store (several `nebula
// server` on one etcd). The holder wrote the key in a create-if-absent transaction, bound to a
// lease it keeps alive; when it dies the lease expires, etcd deletes the key, and the next
// candidate to try creates it. A holder that cannot renew its lease for two thirds of the TTL
// steps down before the lease can expire, so two holders never both believe they lead for
// longer than a renewal's round trip (writes are compare-and-swap besides).
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "store/store.h"

namespace nebula::store {

class LeaderElection {
 public:
  struct Options {
    std::string key = "/nebula/leader";
    std::string identity;  // what the key holds while this process leads (its URL, pid)
    std::chrono::milliseconds ttl{2000};
    // How often a follower tries to take the key, and a leader renews (ttl / 4 when 0).
    std::chrono::milliseconds retry_interval{250};
    std::chrono::milliseconds renew_interval{0};
  };
  // Called on the election's thread: on_elected when this process becomes the leader, on_lost
  // when it stops being one (also at stop()). Each may take a while (starting or stopping the
  // controllers); renewals wait meanwhile, so keep them well under the TTL.
  LeaderElection(Store& store, Options options, std::function<void()> on_elected, std::function<void()> on_lost);
  ~LeaderElection();
  LeaderElection(const LeaderElection&) = delete;
  LeaderElection& operator=(const LeaderElection&) = delete;

  void start();
  // Steps down (revoking the lease, so a successor need not wait for the TTL) and stops.
  void stop();
  bool is_leader() const;

 private:
  enum class State { Following, Leading };
  void run();
  // Steps down once the last renewal is older than two thirds of the TTL, even while a renewal
  // is stuck in a store call (an unreachable etcd can hold one for its whole request timeout).
  void watch_deadline();
  bool try_to_lead();
  bool renew();
  void step_down(bool revoke);

  Store& store_;
  Options options_;
  std::function<void()> on_elected_;
  std::function<void()> on_lost_;
  std::mutex callbacks_mutex_;  // on_elected_ and on_lost_ never overlap
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  State state_ = State::Following;
  int64_t lease_ = 0;
  std::chrono::steady_clock::time_point renewed_at_;
  std::thread thread_;
  std::thread watchdog_;
};

}  // namespace nebula::store
