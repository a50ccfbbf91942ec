#pragma once
// sim::Engine: the simulated GPU engine without HTTP. A vLLM-v1-like scheduler (continuous
// batching, chunked prefill, max_num_seqs / max_num_batched_tokens budgets, preemption of the
// newest running sequence) over a paged KV cache with prefix caching, timed by a step-cost model.
//
// Time is a seam: the engine never reads a clock. Whoever drives it says what time it is
// (advance_to) and asks when it next has something to do (next_event_time). The HTTP server
// drives it from a steady-clock timer; benchmarks and tests drive it in virtual time, as fast as
// the CPU allows, and get the same results apart from scheduling noise:
//
//   Engine engine(config);
//   for (auto& arrival : trace) { engine.advance_to(arrival.time); engine.submit(arrival.request); }
//   engine.run_until_idle();
//
// Not thread-safe: call it from one thread (the HTTP server's io_context thread).
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "sim/kv_cache.h"

namespace nebula::sim {

// Simulated time since the engine was made.
using SimDuration = std::chrono::nanoseconds;
using SeqId = uint64_t;

// step_time = base + (prefill_step if the step prefills) + prefill_tokens * prefill_per_token
//           + decode_seqs * decode_per_seq, times (1 + noise * z) with z ~ N(0,1) from a seeded RNG.
struct StepCost {
  double base_ms = 6;
  double prefill_step_ms = 0;
  double prefill_ms_per_token = 0.035;
  double decode_ms_per_seq = 0.06;
  double noise = 0.02;  // relative standard deviation; 0 = deterministic step times

  // The noiseless step time in milliseconds.
  double step_ms(int prefill_tokens, int decode_seqs) const;
};

struct EngineConfig {
  int block_size = 16;
  int num_kv_blocks = 4096;
  int max_num_seqs = 256;
  int max_num_batched_tokens = 8192;
  int max_model_len = 8192;
  bool enable_prefix_caching = true;
  bool enable_chunked_prefill = true;
  StepCost cost;
  uint64_t seed = 0;  // the step-noise RNG
};

// Histogram with Prometheus semantics: bucket i counts observations <= bounds[i]; the last count
// is the +Inf overflow. Values are seconds.
struct Histogram {
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);

  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // bounds.size() + 1, not cumulative
  double sum = 0;
  uint64_t count = 0;
};

// vLLM's bucket bounds for its latency histograms.
std::vector<double> ttft_buckets();
std::vector<double> itl_buckets();
std::vector<double> request_latency_buckets();
std::vector<double> generated_tokens_buckets();

struct EngineMetrics {
  uint64_t prompt_tokens = 0;         // counted when a sequence's prefill completes
  uint64_t generation_tokens = 0;     // every generated token
  uint64_t prefix_cache_queries = 0;  // prompt tokens looked up at admission
  uint64_t prefix_cache_hits = 0;     // of which found in the cache
  uint64_t preemptions = 0;
  uint64_t steps = 0;
  uint64_t finished_stop = 0, finished_length = 0, finished_abort = 0;
  Histogram time_to_first_token{ttft_buckets()};
  Histogram inter_token_latency{itl_buckets()};
  Histogram e2e_latency{request_latency_buckets()};
  Histogram queue_time{request_latency_buckets()};
  Histogram generated_tokens{generated_tokens_buckets()};  // per finished request (TGI's histogram)
};

// What a sequence has done by the end of a step; passed to its callback.
struct SeqUpdate {
  SeqId id = 0;
  int tokens = 0;         // generated so far
  bool finished = false;  // all its tokens (or, with output_tokens 0, its prefill) are done
  int cached_tokens = 0;  // prompt tokens the prefix cache supplied at its first admission
  SimDuration time{0};    // the end of the step
};
// Called after each step in which the sequence produced a token or finished. It may call
// submit() and abort(); it must not call advance_to() or run_until_idle().
using SeqCallback = std::function<void(const SeqUpdate&)>;

enum class FinishKind { Stop, Length };

struct SeqRequest {
  std::vector<uint32_t> prompt;            // token ids (see tokenize())
  int output_tokens = 1;                   // tokens it will generate; 0 = prefill only (an embedding)
  FinishKind finish = FinishKind::Length;  // the finish_reason it ends with, for the metrics
  SeqCallback on_update;
};

class Engine {
 public:
  // Throws std::invalid_argument when the configuration cannot serve one max_model_len
  // sequence (as vLLM refuses to start) or a value is out of range.
  explicit Engine(EngineConfig config);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a sequence arriving now(). The caller has checked prompt + output_tokens against
  // max_model_len; longer sequences are cut to fit.
  SeqId submit(SeqRequest request);
  // Drops a sequence wherever it is and frees its KV blocks at once. Unknown ids are ignored.
  void abort(SeqId id);

  // When the engine next has something to do: the end of the step in flight, now() when a step
  // can start, nullopt when idle, frozen or asleep.
  std::optional<SimDuration> next_event_time() const;
  // Runs every step that ends at or before `time`, starting new ones back to back, and moves
  // now() to `time` (never backwards).
  void advance_to(SimDuration time);
  // Virtual time: runs steps until no sequence is left (or the engine is frozen or asleep).
  void run_until_idle();
  SimDuration now() const { return now_; }

  // A hung engine (fault injection): no step starts or ends until unfrozen.
  void set_frozen(bool frozen);
  // Sleep mode: drops the KV cache and its prefix cache (vLLM resets the prefix cache on both
  // levels). False, changing nothing, while any sequence is queued or running.
  bool sleep();
  void wake();
  bool sleeping() const { return sleeping_; }

  size_t running() const { return running_.size(); }
  size_t waiting() const { return waiting_.size(); }
  const EngineMetrics& metrics() const { return metrics_; }
  const KvCache& kv_cache() const { return kv_; }
  const EngineConfig& config() const { return config_; }

 private:
  struct Seq;
  struct Step {
    SimDuration end{0};
    std::vector<std::pair<SeqId, int>> scheduled;  // sequence, tokens computed in this step
  };

  bool begin_step();
  void finish_step();
  bool schedule_running(int& budget, Step& step, int& prefill_tokens, int& decode_seqs);
  void schedule_waiting(int& budget, Step& step, int& prefill_tokens, int& decode_seqs);
  void preempt(Seq& seq);
  void count_scheduled(const Seq& seq, int tokens, int& prefill_tokens, int& decode_seqs) const;
  double noise_factor();
  void remove_from_queues(Seq& seq);

  EngineConfig config_;
  KvCache kv_;
  SimDuration now_{0};
  SeqId next_id_ = 1;
  std::unordered_map<SeqId, std::unique_ptr<Seq>> seqs_;
  std::deque<Seq*> waiting_;
  std::vector<Seq*> running_;  // in admission order: the back is the newest
  std::optional<Step> step_;
  bool frozen_ = false;
  bool sleeping_ = false;
  bool stalled_ = false;  // the last attempt scheduled nothing; cleared by anything that changes that
  uint64_t rng_state_;
  EngineMetrics metrics_;
};

}  // namespace nebula::sim
