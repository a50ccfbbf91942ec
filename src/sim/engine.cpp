#include "sim/engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace nebula::sim {

struct Engine::Seq {
  SeqId id = 0;
  int prompt_len = 0;
  std::vector<uint64_t> block_hashes;  // of the prompt's full blocks
  int output_target = 0;
  FinishKind finish = FinishKind::Length;
  SeqCallback on_update;

  int generated = 0;
  int num_computed = 0;  // tokens whose KV is in the cache
  std::vector<int> blocks;
  size_t published = 0;    // leading blocks published to the prefix cache
  int cached_tokens = -1;  // set at the first admission
  bool prompt_counted = false;
  bool in_running = false;
  bool finished = false;
  SimDuration arrival{0};
  SimDuration last_token{0};

  int num_tokens() const { return prompt_len + generated; }
};

double StepCost::step_ms(int prefill_tokens, int decode_seqs) const {
  return base_ms + (prefill_tokens > 0 ? prefill_step_ms : 0.0) + prefill_tokens * prefill_ms_per_token +
         decode_seqs * decode_ms_per_seq;
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds(std::move(upper_bounds)), counts(bounds.size() + 1, 0) {}

void Histogram::observe(double value) {
  size_t bucket = std::lower_bound(bounds.begin(), bounds.end(), value) - bounds.begin();
  ++counts[bucket];
  sum += value;
  ++count;
}

// The bounds of vllm/v1/metrics/loggers.py.
std::vector<double> ttft_buckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
          1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
}
std::vector<double> itl_buckets() {
  return {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
}
std::vector<double> request_latency_buckets() {
  return {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
          30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
}
std::vector<double> generated_tokens_buckets() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384};
}

namespace {

EngineConfig validated(EngineConfig config) {
  if (config.max_num_seqs < 1) throw std::invalid_argument("max_num_seqs must be at least 1");
  if (config.max_num_batched_tokens < 1) throw std::invalid_argument("max_num_batched_tokens must be at least 1");
  if (config.max_model_len < 1) throw std::invalid_argument("max_model_len must be at least 1");
  if (config.block_size < 1) throw std::invalid_argument("block_size must be at least 1");
  // Without chunking a prompt must fit one step, so vLLM raises the budget to max_model_len.
  if (!config.enable_chunked_prefill) {
    config.max_num_batched_tokens = std::max(config.max_num_batched_tokens, config.max_model_len);
  }
  int64_t capacity = static_cast<int64_t>(config.num_kv_blocks) * config.block_size;
  if (config.num_kv_blocks < 1 || capacity < config.max_model_len) {
    throw std::invalid_argument(fmt::format(
        "the KV cache holds {} tokens ({} blocks of {}), less than max_model_len {}: lower --max-model-len or give "
        "the cache more memory",
        std::max<int64_t>(capacity, 0), config.num_kv_blocks, config.block_size, config.max_model_len));
  }
  return config;
}

double seconds(SimDuration duration) {
  return std::chrono::duration<double>(duration).count();
}

}  // namespace

Engine::Engine(EngineConfig config)
    : config_(validated(std::move(config))),
      kv_(config_.num_kv_blocks, config_.block_size),
      rng_state_(config_.seed ^ 0x5eed5eed5eedULL) {}

Engine::~Engine() = default;

SeqId Engine::submit(SeqRequest request) {
  auto seq = std::make_unique<Seq>();
  seq->id = next_id_++;
  if (static_cast<int>(request.prompt.size()) > config_.max_model_len) {
    request.prompt.resize(static_cast<size_t>(config_.max_model_len));
  }
  seq->prompt_len = static_cast<int>(request.prompt.size());
  if (config_.enable_prefix_caching) seq->block_hashes = prompt_block_hashes(request.prompt, config_.block_size);
  seq->output_target = std::clamp(request.output_tokens, 0, config_.max_model_len - seq->prompt_len);
  // A prompt has at least one token for the engine to compute (vLLM adds BOS).
  if (seq->prompt_len == 0) seq->prompt_len = 1;
  seq->finish = request.finish;
  seq->on_update = std::move(request.on_update);
  seq->arrival = now_;
  SeqId id = seq->id;
  waiting_.push_back(seq.get());
  seqs_.emplace(id, std::move(seq));
  stalled_ = false;
  return id;
}

void Engine::remove_from_queues(Seq& seq) {
  if (seq.in_running) {
    running_.erase(std::find(running_.begin(), running_.end(), &seq));
    seq.in_running = false;
  } else {
    auto it = std::find(waiting_.begin(), waiting_.end(), &seq);
    if (it != waiting_.end()) waiting_.erase(it);
  }
}

void Engine::abort(SeqId id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end() || it->second->finished) return;
  Seq& seq = *it->second;
  remove_from_queues(seq);
  kv_.release(seq.blocks);
  ++metrics_.finished_abort;
  seqs_.erase(it);  // a step in flight looks its sequences up by id and skips this one
  stalled_ = false;
}

std::optional<SimDuration> Engine::next_event_time() const {
  if (frozen_) return std::nullopt;
  if (step_) return step_->end;
  if (sleeping_ || stalled_ || (waiting_.empty() && running_.empty())) return std::nullopt;
  return now_;
}

void Engine::advance_to(SimDuration time) {
  while (!frozen_) {
    if (!step_ && !begin_step()) break;
    if (step_->end > time) break;
    now_ = step_->end;
    finish_step();
  }
  now_ = std::max(now_, time);
}

void Engine::run_until_idle() {
  while (auto next = next_event_time()) advance_to(*next);
}

void Engine::set_frozen(bool frozen) {
  frozen_ = frozen;
}

bool Engine::sleep() {
  if (!seqs_.empty() || step_) return false;
  kv_.reset();
  sleeping_ = true;
  return true;
}

void Engine::wake() {
  sleeping_ = false;
  stalled_ = false;
}

double Engine::noise_factor() {
  if (config_.cost.noise <= 0) return 1.0;
  // Irwin-Hall: the sum of 12 uniforms minus 6 is close to N(0,1) and needs nothing platform-specific.
  double sum = 0;
  for (int i = 0; i < 12; ++i) {
    uint64_t z = (rng_state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    sum += static_cast<double>(z >> 11) * 0x1.0p-53;
  }
  return std::max(0.5, 1.0 + config_.cost.noise * (sum - 6.0));
}

void Engine::count_scheduled(const Seq& seq, int tokens, int& prefill_tokens, int& decode_seqs) const {
  // A decode computes the one token sampled last step; anything else (prompt chunks, recompute
  // after preemption) is prefill work.
  if (tokens == 1 && seq.generated > 0 && seq.num_computed == seq.num_tokens() - 1) {
    ++decode_seqs;
  } else {
    prefill_tokens += tokens;
  }
}

void Engine::preempt(Seq& seq) {
  // vLLM's recompute preemption: the blocks go, and the sequence starts over from the front of
  // the queue (its prompt may still be in the prefix cache).
  kv_.release(seq.blocks);
  seq.num_computed = 0;
  seq.published = 0;
  seq.in_running = false;
  waiting_.push_front(&seq);
  ++metrics_.preemptions;
}

bool Engine::schedule_running(int& budget, Step& step, int& prefill_tokens, int& decode_seqs) {
  bool preempted = false;
  size_t index = 0;
  while (index < running_.size() && budget > 0) {
    Seq& seq = *running_[index];
    int tokens = seq.num_tokens() - seq.num_computed;
    if (tokens > budget) {
      if (!config_.enable_chunked_prefill) {
        ++index;
        continue;
      }
      tokens = budget;
    }
    bool scheduled = false;
    while (true) {
      if (kv_.allocate(seq.blocks, {}, seq.num_computed + tokens)) {
        scheduled = true;
        break;
      }
      Seq* victim = running_.back();
      running_.pop_back();
      preempt(*victim);
      preempted = true;
      if (victim == &seq) break;
    }
    if (!scheduled) break;  // it preempted itself: it was the newest, nothing after it runs
    count_scheduled(seq, tokens, prefill_tokens, decode_seqs);
    step.scheduled.emplace_back(seq.id, tokens);
    budget -= tokens;
    ++index;
  }
  return preempted;
}

void Engine::schedule_waiting(int& budget, Step& step, int& prefill_tokens, int& decode_seqs) {
  while (!waiting_.empty() && budget > 0 && static_cast<int>(running_.size()) < config_.max_num_seqs) {
    Seq& seq = *waiting_.front();
    // At least the last token is always computed, so a fully cached prompt still yields logits.
    size_t max_cached_blocks = static_cast<size_t>((seq.num_tokens() - 1) / config_.block_size);
    std::vector<int> prefix;
    if (config_.enable_prefix_caching) prefix = kv_.find_prefix(seq.block_hashes, max_cached_blocks);
    int cached = static_cast<int>(prefix.size()) * config_.block_size;
    int tokens = seq.num_tokens() - cached;
    if (tokens > budget) {
      if (!config_.enable_chunked_prefill) break;
      tokens = budget;
    }
    if (!kv_.allocate(seq.blocks, prefix, cached + tokens)) break;
    waiting_.pop_front();
    seq.num_computed = cached;
    seq.published = prefix.size();
    if (seq.cached_tokens < 0) {
      seq.cached_tokens = cached;
      if (config_.enable_prefix_caching) {
        metrics_.prefix_cache_queries += static_cast<uint64_t>(seq.prompt_len);
        metrics_.prefix_cache_hits += static_cast<uint64_t>(cached);
      }
      metrics_.queue_time.observe(seconds(now_ - seq.arrival));
    }
    seq.in_running = true;
    running_.push_back(&seq);
    count_scheduled(seq, tokens, prefill_tokens, decode_seqs);
    step.scheduled.emplace_back(seq.id, tokens);
    budget -= tokens;
  }
}

bool Engine::begin_step() {
  if (sleeping_ || stalled_ || (waiting_.empty() && running_.empty())) return false;
  Step step;
  int budget = config_.max_num_batched_tokens;
  int prefill_tokens = 0;
  int decode_seqs = 0;
  bool preempted = schedule_running(budget, step, prefill_tokens, decode_seqs);
  // Like vLLM, a step that had to preempt admits nobody new.
  if (!preempted) schedule_waiting(budget, step, prefill_tokens, decode_seqs);
  if (step.scheduled.empty()) {
    stalled_ = true;
    return false;
  }
  double ms = config_.cost.step_ms(prefill_tokens, decode_seqs) * noise_factor();
  step.end = now_ + SimDuration(static_cast<int64_t>(std::max(ms, 0.0) * 1e6));
  step_ = std::move(step);
  return true;
}

void Engine::finish_step() {
  Step step = std::move(*step_);
  step_.reset();
  ++metrics_.steps;
  struct Notice {
    SeqUpdate update;
    SeqCallback finished_callback;  // moved out of a finished sequence; empty otherwise
  };
  std::vector<Notice> notices;
  bool any_finished = false;
  for (auto [id, tokens] : step.scheduled) {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) continue;  // aborted during the step
    Seq& seq = *it->second;
    if (!seq.in_running) continue;  // preempted after being scheduled (cannot happen within a step)
    seq.num_computed += tokens;
    if (config_.enable_prefix_caching) {
      size_t full = static_cast<size_t>(std::min(seq.num_computed, seq.prompt_len) / config_.block_size);
      if (full > seq.published) {
        kv_.publish(seq.blocks, seq.block_hashes, seq.published, full);
        seq.published = full;
      }
    }
    if (seq.num_computed < seq.num_tokens()) continue;  // a prefill chunk that is not the last
    if (!seq.prompt_counted) {
      seq.prompt_counted = true;
      metrics_.prompt_tokens += static_cast<uint64_t>(seq.prompt_len);
    }
    if (seq.output_target > 0) {
      ++seq.generated;
      ++metrics_.generation_tokens;
      if (seq.generated == 1)
        metrics_.time_to_first_token.observe(seconds(now_ - seq.arrival));
      else
        metrics_.inter_token_latency.observe(seconds(now_ - seq.last_token));
      seq.last_token = now_;
    }
    Notice notice;
    notice.update =
        SeqUpdate{seq.id, seq.generated, seq.generated >= seq.output_target, std::max(seq.cached_tokens, 0), now_};
    if (notice.update.finished) {
      seq.finished = true;
      any_finished = true;
      metrics_.e2e_latency.observe(seconds(now_ - seq.arrival));
      metrics_.generated_tokens.observe(static_cast<double>(seq.generated));
      ++(seq.finish == FinishKind::Stop ? metrics_.finished_stop : metrics_.finished_length);
      kv_.release(seq.blocks);
      notice.finished_callback = std::move(seq.on_update);
    }
    notices.push_back(std::move(notice));
  }
  if (any_finished) {
    std::erase_if(running_, [](const Seq* seq) { return seq->finished; });
    for (const Notice& notice : notices) {
      if (notice.update.finished) seqs_.erase(notice.update.id);
    }
    stalled_ = false;
  }
  for (Notice& notice : notices) {
    if (notice.update.finished) {
      if (notice.finished_callback) notice.finished_callback(notice.update);
      continue;
    }
    auto it = seqs_.find(notice.update.id);  // an earlier callback may have aborted it
    if (it != seqs_.end() && it->second->on_update) it->second->on_update(notice.update);
  }
}

}  // namespace nebula::sim
