#include "sim/pacer.h"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace nebula::sim {
namespace {
std::chrono::nanoseconds from_ms(double ms) {
  return std::chrono::nanoseconds(static_cast<int64_t>(ms > 0 ? ms * 1e6 : 0));
}

class RunningGuard {
 public:
  explicit RunningGuard(std::atomic<size_t>& running) : running_(running) { ++running_; }
  ~RunningGuard() { --running_; }
  RunningGuard(const RunningGuard&) = delete;
  RunningGuard& operator=(const RunningGuard&) = delete;

 private:
  std::atomic<size_t>& running_;
};
}  // namespace

std::chrono::nanoseconds PacingModel::time_to_first_token(int prompt_tokens, size_t other_running) const {
  return from_ms(ttft_base_ms + prompt_tokens * prefill_ms_per_token +
                 static_cast<double>(other_running) * itl_ms_per_running_seq);
}

std::chrono::nanoseconds PacingModel::inter_token_latency(size_t other_running) const {
  return from_ms(itl_ms + static_cast<double>(other_running) * itl_ms_per_running_seq);
}

awaitable<bool> Pacer::run(int prompt_tokens, int token_count, TokenCallback on_token) {
  size_t others = running_.load();
  RunningGuard guard(running_);
  asio::steady_timer timer(co_await asio::this_coro::executor);
  // Deadlines advance from the previous deadline, not from now, so time spent writing does not
  // slow the pace down.
  auto deadline = std::chrono::steady_clock::now() + model_.time_to_first_token(prompt_tokens, others);
  for (int index = 0; index < token_count; ++index) {
    if (index > 0) {
      size_t running = running_.load();
      deadline += model_.inter_token_latency(running > 0 ? running - 1 : 0);
    }
    timer.expires_at(deadline);
    co_await timer.async_wait(asio::use_awaitable);
    ++generated_tokens_;
    if (!co_await on_token(index)) co_return false;
  }
  if (token_count == 0) {
    timer.expires_at(deadline);
    co_await timer.async_wait(asio::use_awaitable);
  }
  co_return true;
}

}  // namespace nebula::sim
