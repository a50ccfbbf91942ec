#pragma once
// Replica choice. The gateway hands a Policy the request's RouteContext and the candidates that
// passed the filters every policy shares (Ready, not draining, the current plan version, breaker
// closed or due a probe, below capacity), and the policy returns which one to use. Policies see
// no HTTP: a new one is a new file here, never an edit to the gateway.
//
// A policy is made per deployment from its spec (`spec.routing`, `--routing`), e.g.
// "least-outstanding", "session", "prefix+load,prefix=2,queue=1,kv=1". Instances are called on
// the gateway's I/O thread only and need no locking. Given the same seed and the same calls in
// the same order, a policy makes the same choices.
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace nebula::router {

using SteadyClock = std::chrono::steady_clock;

// What an engine last said about its own load, scraped from its /metrics. A figure is -1 when
// the engine does not export it; `at` is when it was read (the epoch: never).
struct EngineLoad {
  double waiting = -1;             // requests queued inside the engine
  double running = -1;             // requests it is generating for
  double kv_usage = -1;            // share of its KV cache in use, 0..1
  int64_t kv_capacity_tokens = 0;  // tokens its KV cache holds, 0 = unknown
  SteadyClock::time_point at{};
  // waiting and kv_usage came from xtrace's signals (--signals xtrace), judged fresh by their
  // own timestamps when `at` was set, not from the engine's /metrics.
  bool from_signals = false;
};

// One replica the request may go to.
struct Candidate {
  std::string replica;
  int outstanding = 0;          // requests the gateway has in flight to it
  int64_t inflight_tokens = 0;  // their estimated prompt + output tokens
  int capacity = 0;             // requests it takes at once
  EngineLoad engine;
};

// The request, as far as routing cares.
struct RouteContext {
  std::string deployment;
  // X-Session-Id, else the body's `user`, else the conversation a previous_response_id
  // continues; "" when none.
  std::string session_key;
  // Chained hashes of the prompt's leading blocks (block_hashes()): hash i covers everything up
  // to the end of block i, so two prompts share hash i only when they share that whole prefix.
  std::vector<uint64_t> prefix_hashes;
  int64_t prompt_tokens = 0;  // estimated
  int64_t output_tokens = 0;  // estimated (max_tokens, or a default)
  int priority = 0;
  SteadyClock::time_point now{};
};

class Policy {
 public:
  virtual ~Policy() = default;
  // The index in `candidates` of the replica to use; nullopt only when candidates is empty.
  virtual std::optional<size_t> choose(const RouteContext& context, std::span<const Candidate> candidates) = 0;
  // The request was sent to `replica` (what prefix and session policies learn from).
  virtual void routed(const RouteContext& context, const std::string& replica) {}
  // The replica left the deployment: forget what was learnt about it.
  virtual void removed(const std::string& replica) {}
  // The canonical spec, as `nebula get` shows it ("prefix+load,prefix=2,queue=1,kv=1").
  virtual std::string describe() const = 0;
};

struct PolicyOptions {
  uint64_t seed = 0;
  // An engine-reported figure older than this is ignored (the gateway's own counts are used).
  std::chrono::milliseconds load_freshness{5'000};
};

// What "" means: prefix+load (with its defaults).
extern const char* const kDefaultPolicy;
// The policy a spec names, or InvalidArgument with a message naming what is wrong. "" is the
// default policy, kDefaultPolicy.
Result<std::unique_ptr<Policy>> make_policy(std::string_view spec, const PolicyOptions& options = {});
// The policy names and scorer names a spec may use, for help texts and errors.
std::string policy_names();

// Prompt text to prefix hashes: chained hashes of consecutive `block_chars`-byte blocks of
// `text` (a final partial block is not hashed), at most `max_blocks` of them.
std::vector<uint64_t> block_hashes(std::string_view text, size_t block_chars = 64, size_t max_blocks = 512);

}  // namespace nebula::router
