// Replica slots: a request takes a free slot on a Ready replica at once, or waits in its
// deployment's bounded queue, fair across keys, until one frees up, a replica starts, or its
// queue timeout passes. I/O thread only.
#include <fmt/format.h>

#include <algorithm>

#include "common/asio.h"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "gateway/call.h"

namespace nebula::gateway {

using SteadyClock = std::chrono::steady_clock;

awaitable<Result<std::shared_ptr<router::Endpoint>>> Gateway::acquire(Call& call, const std::set<std::string>& exclude,
                                                                      http::ResponseWriter& writer) {
  auto& queue = queues_[call.model];
  // Nobody waiting: take a free slot directly. Otherwise queue behind them (no barging).
  if (queue.empty()) {
    if (auto endpoint = choose(call.model, call.route, exclude)) co_return endpoint;
  }
  // An idle deployment being woken (or started), or one whose replicas are starting (just
  // deployed, or replaced one at a time by a rollout), is worth waiting for; otherwise no ready
  // replica means 503 at once.
  if (table_.ready_count(call.model, exclude) == 0 && !waking(call.model) && table_.starting_count(call.model) == 0) {
    co_return make_error(ErrorCode::Unavailable, fmt::format("no replica of `{}` is ready", call.model));
  }
  if (std::string reason = table_.unschedulable(call.model); !reason.empty() && table_.ready_count(call.model) == 0) {
    co_return make_error(ErrorCode::Unavailable, fmt::format("`{}` cannot start: {}", call.model, reason));
  }
  if (breakers_all_open(call.model, exclude)) {
    call.breakers_open = true;
    co_return make_error(ErrorCode::Unavailable,
                         fmt::format("every replica of `{}` has its circuit breaker open", call.model));
  }
  if (queue.size() >= options_.max_queue) {
    co_return make_error(
        ErrorCode::ResourceExhausted,
        fmt::format("`{}` is at capacity and its queue is full ({} waiting)", call.model, queue.size()));
  }
  Waiter waiter(io_);
  waiter.key = call.key_id;
  waiter.priority = call.key ? call.key->priority : 0;
  waiter.exclude = exclude;
  waiter.route = &call.route;
  auto deadline = std::min(call.deadline, SteadyClock::now() + options_.queue_timeout);
  waiter.timer.expires_at(deadline);
  queue.push_back(&waiter);
  metrics_.queue_depth(call.model, 1);
  call.waiting = &waiter;
  call.watch_client(writer);
  boost::system::error_code ec;
  co_await waiter.timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  call.waiting = nullptr;
  queue.remove(&waiter);
  metrics_.queue_depth(call.model, -1);
  if (waiter.granted) co_return waiter.granted;
  if (!waiter.failure.empty()) {
    call.breakers_open = waiter.breakers_open;
    co_return make_error(ErrorCode::Unavailable, waiter.failure);
  }
  if (call.client_gone) co_return make_error(ErrorCode::Unavailable, "the client went away while queued");
  co_return make_error(ErrorCode::Timeout, fmt::format("`{}` had no free replica within {} ms", call.model,
                                                       options_.queue_timeout.count()));
}

void Gateway::release(const std::shared_ptr<router::Endpoint>& endpoint, int64_t tokens) {
  endpoint->outstanding -= 1;
  endpoint->inflight_tokens -= tokens;
  dispatch_queue(endpoint->deployment);
}

// Hands free slots to waiters: highest priority first, then the key served longest ago, so one
// key's burst cannot starve another's.
void Gateway::dispatch_queue(const std::string& deployment) {
  auto found = queues_.find(deployment);
  if (found == queues_.end()) return;
  auto& queue = found->second;
  // Waiting for a deployment that cannot be placed (and nothing could be evicted for it) is
  // pointless: fail the waiters now with the scheduler's reason.
  std::string unschedulable = table_.unschedulable(deployment);
  if (!unschedulable.empty() && table_.ready_count(deployment) == 0) {
    for (Waiter* waiter : queue) {
      waiter->failure = fmt::format("`{}` cannot start: {}", deployment, unschedulable);
      waiter->timer.cancel();
    }
    queue.clear();
    return;
  }
  while (!queue.empty()) {
    // Fairness order: priority, then the key served longest ago. A waiter that cannot use any
    // free replica (it already tried them) does not block the ones behind it.
    std::vector<Waiter*> order(queue.begin(), queue.end());
    std::stable_sort(order.begin(), order.end(), [this](const Waiter* a, const Waiter* b) {
      if (a->priority != b->priority) return a->priority > b->priority;
      return last_served_[a->key] < last_served_[b->key];
    });
    bool granted = false;
    for (Waiter* waiter : order) {
      auto endpoint = choose(deployment, *waiter->route, waiter->exclude);
      if (!endpoint) continue;
      waiter->granted = endpoint;
      last_served_[waiter->key] = ++admission_sequence_;
      queue.remove(waiter);
      waiter->timer.cancel();
      granted = true;
      break;
    }
    if (!granted) break;
  }
  // Those left wait for a replica that may take them; if only open breakers are left, none will
  // before their cool-down: they get the engine's error now.
  std::vector<Waiter*> hopeless;
  for (Waiter* waiter : queue) {
    if (breakers_all_open(deployment, waiter->exclude)) hopeless.push_back(waiter);
  }
  for (Waiter* waiter : hopeless) {
    waiter->failure = fmt::format("every replica of `{}` has its circuit breaker open", deployment);
    waiter->breakers_open = true;
    queue.remove(waiter);
    waiter->timer.cancel();
  }
}

}  // namespace nebula::gateway
