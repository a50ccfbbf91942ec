#include "store/leader.h"

#include <spdlog/spdlog.h>

namespace nebula::store {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

LeaderElection::LeaderElection(Store& store, Options options, std::function<void()> on_elected,
                               std::function<void()> on_lost)
    : store_(store), options_(std::move(options)), on_elected_(std::move(on_elected)), on_lost_(std::move(on_lost)) {
  if (options_.renew_interval.count() <= 0) options_.renew_interval = options_.ttl / 4;
}

LeaderElection::~LeaderElection() {
  stop();
}

void LeaderElection::start() {
  thread_ = std::thread([this] { run(); });
  watchdog_ = std::thread([this] { watch_deadline(); });
}

void LeaderElection::watch_deadline() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    wake_.wait_for(lock, options_.renew_interval, [this] { return stopping_; });
    if (stopping_ || state_ != State::Leading) continue;
    if (Clock::now() - renewed_at_ <= options_.ttl * 2 / 3) continue;
    lock.unlock();
    spdlog::warn("leader election: no renewal for two thirds of the lease; stepping down");
    step_down(/*revoke=*/false);
    lock.lock();
  }
}

void LeaderElection::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  if (thread_.joinable()) thread_.join();
}

bool LeaderElection::is_leader() const {
  std::lock_guard lock(mutex_);
  return state_ == State::Leading;
}

void LeaderElection::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    State state = state_;
    lock.unlock();
    milliseconds next = options_.retry_interval;
    if (state == State::Following) {
      if (try_to_lead()) {
        spdlog::info("leader election: this server leads ({})", options_.identity);
        std::lock_guard callbacks(callbacks_mutex_);
        on_elected_();
        next = options_.renew_interval;
      }
    } else if (renew()) {
      next = options_.renew_interval;
    } else {
      step_down(/*revoke=*/false);
    }
    lock.lock();
    wake_.wait_for(lock, next, [this] { return stopping_; });
  }
  bool leading = state_ == State::Leading;
  lock.unlock();
  if (leading) step_down(/*revoke=*/true);
}

bool LeaderElection::try_to_lead() {
  // Cheap while someone leads: one read. Only a free key is worth a lease.
  auto holder = store_.get(options_.key);
  if (!holder || holder->has_value()) return false;
  auto lease = store_.grant_lease(options_.ttl.count());
  if (!lease) return false;
  auto granted_at = Clock::now();
  auto written = store_.put(options_.key, options_.identity, Precondition::absent(), *lease);
  if (!written) {
    (void)store_.revoke_lease(*lease);
    return false;
  }
  std::lock_guard lock(mutex_);
  state_ = State::Leading;
  lease_ = *lease;
  renewed_at_ = granted_at;
  return true;
}

bool LeaderElection::renew() {
  int64_t lease;
  Clock::time_point renewed_at;
  {
    std::lock_guard lock(mutex_);
    lease = lease_;
    renewed_at = renewed_at_;
  }
  auto sent_at = Clock::now();
  auto renewed = store_.keep_alive(lease);
  if (renewed) {
    std::lock_guard lock(mutex_);
    if (lease_ == lease) renewed_at_ = sent_at;  // not when the watchdog stepped down meanwhile
    return true;
  }
  if (renewed.error().code == ErrorCode::NotFound) {
    spdlog::warn("leader election: the lease expired; stepping down");
    return false;
  }
  // The store is unreachable: lead on while the lease surely lasts, not a moment longer.
  if (Clock::now() - renewed_at > options_.ttl * 2 / 3) {
    spdlog::warn("leader election: cannot renew the lease ({}); stepping down", renewed.error().message);
    return false;
  }
  return true;
}

void LeaderElection::step_down(bool revoke) {
  int64_t lease;
  {
    std::lock_guard lock(mutex_);
    if (state_ != State::Leading) return;
    state_ = State::Following;
    lease = lease_;
    lease_ = 0;
  }
  // Serialized with on_elected_ (the main loop's): the watchdog may step down meanwhile.
  std::lock_guard callbacks(callbacks_mutex_);
  on_lost_();
  if (revoke) (void)store_.revoke_lease(lease);
  spdlog::info("leader election: this server no longer leads");
}

}  // namespace nebula::store
