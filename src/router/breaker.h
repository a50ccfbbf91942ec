#pragma once
// A replica's circuit breaker, as the gateway keeps one per endpoint. The rules: a failure (no
// answer, or a retryable status before the first byte) makes the replica Suspect: it takes one
// request at a time until one succeeds. After `failures_to_open` consecutive failures it is Open
// and takes nothing for the cool-down; then it is due a probe, a single request whose outcome
// closes it or opens it again.
//
// Threading: not synchronised; the gateway touches a breaker on its I/O thread only.
#include <chrono>

namespace nebula::router {

struct BreakerRules {
  int failures_to_open = 3;
  std::chrono::milliseconds cooldown{5'000};
};

class Breaker {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  enum class State {
    Closed,   // no recent failure: any number of requests
    Suspect,  // failed lately but not open (below the threshold, or its cool-down over): one
              // request at a time, whose outcome closes it or counts another failure
    Open,     // too many failures: nothing until open_until
    Probing,  // one request is in flight to find out whether it recovered
  };

  State state(TimePoint now) const;
  // True when a new request may go to the replica now.
  bool allows(TimePoint now) const;
  // A request was sent; after a failure it is the single request the breaker lets through.
  void sent();
  void failed(TimePoint now, const BreakerRules& rules);
  void succeeded();
  int consecutive_failures() const { return consecutive_failures_; }
  TimePoint open_until() const { return open_until_; }

 private:
  int consecutive_failures_ = 0;
  TimePoint open_until_{};
  bool probing_ = false;  // a request sent while failures were counted has not ended
};

}  // namespace nebula::router
