#include "sim/engine.h"

#include <gtest/gtest.h>

#include <map>

#include "sim/kv_cache.h"
#include "sim/profile.h"
#include "sim/sim.h"
#include "sim/tokenizer.h"

namespace nebula::sim {
namespace {

using namespace std::chrono_literals;

// Calibration tests run the engine in virtual time: exact, and fast.

std::vector<uint32_t> prompt_of(int tokens, uint32_t salt = 0) {
  std::vector<uint32_t> prompt;
  for (int i = 0; i < tokens; ++i) prompt.push_back(static_cast<uint32_t>(i) * 2654435761U + salt);
  return prompt;
}

EngineConfig quiet_config() {
  EngineConfig config;
  config.cost = StepCost{5.0, 0.0, 0.1, 0.2, 0.0};  // base 5 ms, 0.1 ms per prompt token, 0.2 ms per decode
  config.num_kv_blocks = 4096;
  config.max_num_seqs = 256;
  config.max_num_batched_tokens = 8192;
  return config;
}

// What one sequence went through, in simulated time.
struct Trace {
  std::vector<SimDuration> token_times;
  bool finished = false;
  int cached_tokens = -1;
  SimDuration finished_at{0};
};

class Recorder {
 public:
  SeqId submit(Engine& engine, std::vector<uint32_t> prompt, int output_tokens) {
    SimDuration arrival = engine.now();
    SeqRequest request;
    request.prompt = std::move(prompt);
    request.output_tokens = output_tokens;
    auto slot = std::make_shared<Trace>();
    request.on_update = [slot](const SeqUpdate& update) {
      while (static_cast<int>(slot->token_times.size()) < update.tokens) slot->token_times.push_back(update.time);
      slot->cached_tokens = update.cached_tokens;
      if (update.finished) {
        slot->finished = true;
        slot->finished_at = update.time;
      }
    };
    SeqId id = engine.submit(std::move(request));
    traces_[id] = slot;
    arrivals_[id] = arrival;
    return id;
  }
  const Trace& trace(SeqId id) { return *traces_.at(id); }
  double ttft_ms(SeqId id) {
    return std::chrono::duration<double, std::milli>(trace(id).token_times.at(0) - arrivals_.at(id)).count();
  }
  // Mean gap between consecutive tokens.
  double itl_ms(SeqId id) {
    const auto& times = trace(id).token_times;
    return std::chrono::duration<double, std::milli>(times.back() - times.front()).count() / (times.size() - 1);
  }

 private:
  std::map<SeqId, std::shared_ptr<Trace>> traces_;
  std::map<SeqId, SimDuration> arrivals_;
};

TEST(SimKvCache, ChainedHashesShareOnlyCommonPrefixes) {
  auto a = prompt_of(64);
  auto b = a;
  b[20] ^= 1;  // differs inside block 1 (tokens 16..31)
  auto hashes_a = prompt_block_hashes(a, 16);
  auto hashes_b = prompt_block_hashes(b, 16);
  ASSERT_EQ(hashes_a.size(), 4u);
  EXPECT_EQ(hashes_a[0], hashes_b[0]);
  for (size_t i = 1; i < 4; ++i) EXPECT_NE(hashes_a[i], hashes_b[i]) << "block " << i << " must chain its prefix";
  EXPECT_EQ(prompt_block_hashes(prompt_of(15), 16).size(), 0u) << "only full blocks are hashed";

  KvCache cache(16, 16);
  std::vector<int> table;
  ASSERT_TRUE(cache.allocate(table, {}, 64));
  cache.publish(table, hashes_a, 0, 4);
  cache.release(table);
  EXPECT_EQ(cache.free_blocks(), 16);
  EXPECT_EQ(cache.find_prefix(hashes_a, 10).size(), 4u);
  EXPECT_EQ(cache.find_prefix(hashes_b, 10).size(), 1u);
  EXPECT_EQ(cache.find_prefix(hashes_a, 2).size(), 2u);
}

TEST(SimKvCache, EvictsLeastRecentlyUsedAndNeverHeldBlocks) {
  KvCache cache(8, 4);
  auto first = prompt_block_hashes(prompt_of(16, 1), 4);   // 4 blocks
  auto second = prompt_block_hashes(prompt_of(16, 2), 4);  // 4 blocks
  std::vector<int> table;
  ASSERT_TRUE(cache.allocate(table, {}, 16));
  cache.publish(table, first, 0, 4);
  cache.release(table);
  ASSERT_TRUE(cache.allocate(table, {}, 16));
  cache.publish(table, second, 0, 4);
  EXPECT_FALSE(cache.allocate(table, {}, 40)) << "8 blocks cannot hold 40 tokens";
  cache.release(table);
  EXPECT_EQ(cache.cached_blocks(), 8);
  // Reusing the first prompt makes it the most recently used; a new 4-block allocation then
  // evicts the second prompt's blocks.
  auto prefix = cache.find_prefix(first, 4);
  ASSERT_EQ(prefix.size(), 4u);
  ASSERT_TRUE(cache.allocate(table, prefix, 16));
  cache.release(table);
  ASSERT_TRUE(cache.allocate(table, {}, 16));
  EXPECT_EQ(cache.evictions(), 4u);
  EXPECT_EQ(cache.find_prefix(first, 4).size(), 4u);
  EXPECT_EQ(cache.find_prefix(second, 4).size(), 0u);
  EXPECT_NEAR(cache.usage(), 0.5, 1e-9);
  EXPECT_FALSE(cache.reset()) << "blocks are held";
  cache.release(table);
  EXPECT_TRUE(cache.reset());
  EXPECT_EQ(cache.cached_blocks(), 0);
}

TEST(SimEngine, TtftFollowsTheStepEquation) {
  for (int prompt_tokens : {100, 1000, 4000}) {
    Engine engine(quiet_config());
    Recorder recorder;
    SeqId id = recorder.submit(engine, prompt_of(prompt_tokens), 10);
    engine.run_until_idle();
    // One prefill step, then one decode step per further token.
    EXPECT_DOUBLE_EQ(recorder.ttft_ms(id), 5.0 + prompt_tokens * 0.1) << prompt_tokens;
    EXPECT_NEAR(recorder.itl_ms(id), 5.0 + 0.2, 1e-6);
    EXPECT_TRUE(recorder.trace(id).finished);
    EXPECT_EQ(engine.metrics().prompt_tokens, static_cast<uint64_t>(prompt_tokens));
    EXPECT_EQ(engine.metrics().generation_tokens, 10u);
  }
}

TEST(SimEngine, TtftAndItlRiseWithConcurrentLoad) {
  // Mean TTFT, and the gap between tokens 6 and 7, when every sequence is decoding.
  auto mean_latencies = [](int concurrency) {
    Engine engine(quiet_config());
    Recorder recorder;
    std::vector<SeqId> ids;
    for (int i = 0; i < concurrency; ++i) ids.push_back(recorder.submit(engine, prompt_of(200, i + 1), 20));
    engine.run_until_idle();
    double ttft = 0, itl = 0;
    for (SeqId id : ids) {
      ttft += recorder.ttft_ms(id);
      const auto& times = recorder.trace(id).token_times;
      itl += std::chrono::duration<double, std::milli>(times[6] - times[5]).count();
    }
    return std::pair(ttft / concurrency, itl / concurrency);
  };
  auto [ttft_1, itl_1] = mean_latencies(1);
  auto [ttft_64, itl_64] = mean_latencies(64);
  // 64 prompts of 200 tokens = 12,800 tokens: two prefill steps at an 8,192-token budget.
  EXPECT_GT(ttft_64, 5 * ttft_1);
  EXPECT_NEAR(itl_1, 5.2, 1e-6);
  EXPECT_NEAR(itl_64, 5.0 + 64 * 0.2, 1e-6) << "inter-token latency grows with the batch";
  // The whole-stream mean is higher still: decode steps that carry other prompts' prefill are long.
  Engine engine(quiet_config());
  Recorder recorder;
  std::vector<SeqId> ids;
  for (int i = 0; i < 64; ++i) ids.push_back(recorder.submit(engine, prompt_of(200, i + 1), 20));
  engine.run_until_idle();
  EXPECT_GT(recorder.itl_ms(ids[0]), 5.0 + 64 * 0.2);
}

TEST(SimEngine, ChunkedPrefillSplitsALongPromptAcrossSteps) {
  EngineConfig config = quiet_config();
  config.max_num_batched_tokens = 512;
  Engine engine(config);
  Recorder recorder;
  SeqId id = recorder.submit(engine, prompt_of(2000), 2);
  engine.run_until_idle();
  // ceil(2000 / 512) = 4 prefill steps.
  EXPECT_DOUBLE_EQ(recorder.ttft_ms(id), 4 * 5.0 + 2000 * 0.1);
  EXPECT_EQ(engine.metrics().steps, 5u);
}

TEST(SimEngine, MaxNumSeqsBoundsTheBatch) {
  EngineConfig config = quiet_config();
  config.max_num_seqs = 4;
  Engine engine(config);
  Recorder recorder;
  for (int i = 0; i < 10; ++i) recorder.submit(engine, prompt_of(10, i), 50);
  engine.advance_to(1ms);
  EXPECT_EQ(engine.running(), 4u);
  EXPECT_EQ(engine.waiting(), 6u);
  engine.run_until_idle();
  EXPECT_EQ(engine.running(), 0u);
  EXPECT_EQ(engine.metrics().generation_tokens, 500u);
  EXPECT_EQ(engine.metrics().queue_time.count, 10u);
}

TEST(SimEngine, RepeatedPromptHitsThePrefixCache) {
  Engine engine(quiet_config());
  Recorder recorder;
  SeqId first = recorder.submit(engine, prompt_of(1000), 4);
  engine.run_until_idle();
  SeqId second = recorder.submit(engine, prompt_of(1000), 4);
  engine.run_until_idle();
  EXPECT_EQ(recorder.trace(first).cached_tokens, 0);
  // Every full block but the one holding the last token (always recomputed): 62 x 16.
  EXPECT_EQ(recorder.trace(second).cached_tokens, 992);
  EXPECT_DOUBLE_EQ(recorder.ttft_ms(second), 5.0 + (1000 - 992) * 0.1);
  EXPECT_LT(recorder.ttft_ms(second), recorder.ttft_ms(first) / 10);
  EXPECT_EQ(engine.metrics().prefix_cache_queries, 2000u);
  EXPECT_EQ(engine.metrics().prefix_cache_hits, 992u);

  // A prompt sharing only the first 500 tokens reuses 31 blocks.
  auto partial = prompt_of(1000);
  partial[500] ^= 7;
  SeqId third = recorder.submit(engine, partial, 1);
  engine.run_until_idle();
  EXPECT_EQ(recorder.trace(third).cached_tokens, 496);

  EngineConfig off = quiet_config();
  off.enable_prefix_caching = false;
  Engine uncached(off);
  recorder.submit(uncached, prompt_of(1000), 1);
  uncached.run_until_idle();
  SeqId again = recorder.submit(uncached, prompt_of(1000), 1);
  uncached.run_until_idle();
  EXPECT_EQ(recorder.trace(again).cached_tokens, 0);
}

TEST(SimEngine, FullKvCacheEvictsThenPreemptsTheNewestSequence) {
  EngineConfig config = quiet_config();
  config.block_size = 16;
  config.num_kv_blocks = 64;  // 1,024 tokens
  config.max_model_len = 1024;
  Engine engine(config);
  Recorder recorder;
  // Fill the prefix cache with finished prompts, then run four 500-token sequences at once.
  for (int i = 0; i < 3; ++i) recorder.submit(engine, prompt_of(300, 100 + i), 1);
  engine.run_until_idle();
  EXPECT_GT(engine.kv_cache().cached_blocks(), 0);
  EXPECT_DOUBLE_EQ(engine.kv_cache().usage(), 0.0) << "finished sequences hold nothing; their blocks are evictable";
  std::vector<SeqId> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(recorder.submit(engine, prompt_of(200, 10 + i), 300));
  double peak_usage = 0;
  while (auto next = engine.next_event_time()) {
    engine.advance_to(*next);
    peak_usage = std::max(peak_usage, engine.kv_cache().usage());
  }
  EXPECT_GT(engine.kv_cache().evictions(), 0u) << "cached blocks are evicted before anyone is preempted";
  EXPECT_GT(engine.metrics().preemptions, 0u) << "4 x 500 tokens do not fit in 1,024";
  EXPECT_GT(peak_usage, 0.9);
  for (SeqId id : ids) {
    EXPECT_TRUE(recorder.trace(id).finished);
    EXPECT_EQ(recorder.trace(id).token_times.size(), 300u);
  }
  // The oldest sequence is never the one preempted, so it finishes first.
  EXPECT_LE(recorder.trace(ids[0]).finished_at, recorder.trace(ids[3]).finished_at);
  EXPECT_EQ(engine.kv_cache().free_blocks(), 64);
  EXPECT_EQ(engine.metrics().generation_tokens, 3u + 1200u);
}

TEST(SimEngine, AbortFreesTheSequenceAndItsBlocks) {
  Engine engine(quiet_config());
  Recorder recorder;
  SeqId id = recorder.submit(engine, prompt_of(500), 1000);
  engine.advance_to(200ms);
  EXPECT_EQ(engine.running(), 1u);
  EXPECT_GT(engine.kv_cache().usage(), 0.0);
  engine.abort(id);
  EXPECT_EQ(engine.running(), 0u);
  EXPECT_DOUBLE_EQ(engine.kv_cache().usage(), 0.0);
  EXPECT_EQ(engine.metrics().finished_abort, 1u);
  EXPECT_FALSE(engine.next_event_time().has_value() && engine.running() > 0);
  engine.run_until_idle();
  EXPECT_FALSE(recorder.trace(id).finished);
}

TEST(SimEngine, ASeedReproducesTimingsInVirtualTime) {
  auto run = [](uint64_t seed) {
    EngineConfig config = quiet_config();
    config.cost.noise = 0.05;
    config.seed = seed;
    Engine engine(config);
    Recorder recorder;
    std::vector<SeqId> ids;
    // An open-loop trace: a request every 7 ms for 2 simulated seconds.
    for (int i = 0; i < 300; ++i) {
      engine.advance_to(std::chrono::milliseconds(7 * i));
      ids.push_back(recorder.submit(engine, prompt_of(50 + i % 200, i % 5), 10 + i % 30));
    }
    engine.run_until_idle();
    std::vector<int64_t> times;
    for (SeqId id : ids) {
      for (SimDuration time : recorder.trace(id).token_times) times.push_back(time.count());
    }
    return times;
  };
  auto first = run(42);
  EXPECT_EQ(run(42), first);
  EXPECT_NE(run(43), first);
}

TEST(SimEngine, VirtualTimeReplaysAnHourQuickly) {
  EngineConfig config = quiet_config();
  Engine engine(config);
  uint64_t finished = 0;
  auto started = std::chrono::steady_clock::now();
  // 2 requests per second for an hour of simulated time.
  for (int i = 0; i < 7200; ++i) {
    engine.advance_to(std::chrono::milliseconds(500 * i));
    SeqRequest request;
    request.prompt = prompt_of(100, i % 11);
    request.output_tokens = 50;
    request.on_update = [&finished](const SeqUpdate& update) { finished += update.finished ? 1 : 0; };
    engine.submit(std::move(request));
  }
  engine.run_until_idle();
  EXPECT_EQ(finished, 7200u);
  EXPECT_GE(engine.now(), 3599s);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 20s);
}

TEST(SimEngine, SleepDropsTheKvAndPrefixCache) {
  Engine engine(quiet_config());
  Recorder recorder;
  SeqId busy = recorder.submit(engine, prompt_of(100), 100);
  engine.advance_to(10ms);
  EXPECT_FALSE(engine.sleep()) << "a sequence is running";
  engine.abort(busy);
  recorder.submit(engine, prompt_of(1000), 1);
  engine.run_until_idle();
  EXPECT_GT(engine.kv_cache().cached_blocks(), 0);
  ASSERT_TRUE(engine.sleep());
  EXPECT_TRUE(engine.sleeping());
  EXPECT_EQ(engine.kv_cache().cached_blocks(), 0);
  SeqId queued = recorder.submit(engine, prompt_of(1000), 1);
  EXPECT_FALSE(engine.next_event_time().has_value()) << "nothing runs while asleep";
  engine.wake();
  engine.run_until_idle();
  EXPECT_EQ(recorder.trace(queued).cached_tokens, 0);
}

TEST(SimEngine, RefusesACacheThatCannotHoldOneSequence) {
  EngineConfig config = quiet_config();
  config.num_kv_blocks = 10;
  config.max_model_len = 1000;
  EXPECT_THROW(Engine{config}, std::invalid_argument);
}

TEST(SimProfiles, DeriveKvCapacityFromMemory) {
  for (const char* name : {"h100-8b", "h100-70b-tp4", "a100-13b", "rtx4090-8b", "cpu-tiny"}) {
    const Profile* profile = find_profile(name);
    ASSERT_NE(profile, nullptr) << name;
    SimOptions options;
    options.profile = name;
    ResolvedSim resolved = resolve(options);
    EXPECT_GE(resolved.engine.num_kv_blocks * 16, 8192) << name << " must hold a default-length sequence";
    Engine engine(resolved.engine);  // does not throw
  }
  // Llama-3.1-8B on an H100: (80 x 0.9 - 16.1 - 2.5) GB / 128 KiB per token = about 407k tokens.
  SimOptions options;
  options.profile = "h100-8b";
  ResolvedSim h100 = resolve(options);
  EXPECT_NEAR(h100.engine.num_kv_blocks * 16.0, 53.4e9 / 131072, 16);
  EXPECT_EQ(h100.startup_seconds, 35);
  options.kv_blocks = 1000;
  options.step_base_ms = 1.5;
  options.startup_seconds = 0;
  ResolvedSim overridden = resolve(options);
  EXPECT_EQ(overridden.engine.num_kv_blocks, 1000);
  EXPECT_EQ(overridden.engine.cost.base_ms, 1.5);
  EXPECT_EQ(overridden.startup_seconds, 0);
  options.profile = "b200-1t";
  EXPECT_THROW(resolve(options), std::invalid_argument);
}

}  // namespace
}  // namespace nebula::sim
