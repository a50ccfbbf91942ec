#pragma once
// When tokens come out. The walking skeleton paces every sequence on its own timer with a latency
// model that grows with the number of running sequences; the continuous-batching scheduler will
// replace this class behind the same run() contract.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>

#include "common/asio.h"

namespace nebula::sim {

struct PacingModel {
  double ttft_base_ms = 20;
  double prefill_ms_per_token = 0.05;
  double itl_ms = 10;
  double itl_ms_per_running_seq = 0.2;

  // Time to first token for a prompt while `other_running` sequences are decoding: the prefill
  // plus one step of the running batch it has to join.
  std::chrono::nanoseconds time_to_first_token(int prompt_tokens, size_t other_running) const;
  // Gap between two tokens of a sequence while `other_running` other sequences decode with it.
  std::chrono::nanoseconds inter_token_latency(size_t other_running) const;
};

// Called with each token index in order when that token is due. Returns false to stop (the
// client is gone).
using TokenCallback = std::function<awaitable<bool>(int token_index)>;

// Thread-safe: run() may be awaited from any number of coroutines on any threads.
class Pacer {
 public:
  explicit Pacer(PacingModel model) : model_(model) {}

  // Counts the sequence as running, waits the time to first token, then hands out token_count
  // tokens one inter-token latency apart. Returns false when on_token stopped it early. The
  // sequence stops counting as running when run() returns or its coroutine is destroyed.
  awaitable<bool> run(int prompt_tokens, int token_count, TokenCallback on_token);

  size_t running() const { return running_.load(); }
  uint64_t generated_tokens() const { return generated_tokens_.load(); }

 private:
  PacingModel model_;
  std::atomic<size_t> running_{0};
  std::atomic<uint64_t> generated_tokens_{0};
};

}  // namespace nebula::sim
