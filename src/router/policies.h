#pragma once
// The policies make_policy() builds. Each is small and lives in its own file.
#include <deque>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "router/lru.h"
#include "router/policy.h"
#include "router/prefix_index.h"
#include "router/random.h"

namespace nebula::router {

// The fewest requests in flight from this gateway; ties go round-robin.
class LeastOutstanding : public Policy {
 public:
  std::optional<size_t> choose(const RouteContext& context, std::span<const Candidate> candidates) override;
  std::string describe() const override { return "least-outstanding"; }

 private:
  size_t next_ = 0;
};

// Each candidate in turn, whatever its load.
class RoundRobin : public Policy {
 public:
  std::optional<size_t> choose(const RouteContext& context, std::span<const Candidate> candidates) override;
  std::string describe() const override { return "round-robin"; }

 private:
  size_t next_ = 0;
};

// Two candidates drawn at random, the one with fewer requests in flight (Mitzenmacher's "power
// of two choices": nearly least-outstanding's balance without looking at every replica).
class PowerOfTwo : public Policy {
 public:
  explicit PowerOfTwo(uint64_t seed) : random_(seed) {}
  std::optional<size_t> choose(const RouteContext& context, std::span<const Candidate> candidates) override;
  std::string describe() const override { return "power-of-two"; }

 private:
  Random random_;
};

// Session affinity: consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam). A
// session key hashes onto a ring of virtual nodes; it goes to the first replica clockwise that is
// a candidate and below load_bound x the mean load (requests in flight, this one included). A
// session keeps the replica it was last sent to while that one is a candidate and below the
// bound; a replica leaving moves only its own sessions. No session key: least-outstanding.
class SessionAffinity : public Policy {
 public:
  struct Settings {
    double load_bound = 1.25;
    int virtual_nodes = 100;
    size_t max_sessions = 100'000;  // sessions remembered, least recently routed forgotten first
  };
  SessionAffinity(Settings settings, uint64_t seed, std::string spec);
  std::optional<size_t> choose(const RouteContext& context, std::span<const Candidate> candidates) override;
  void routed(const RouteContext& context, const std::string& replica) override;
  void removed(const std::string& replica) override;
  std::string describe() const override { return spec_; }

  // The replica a session was last sent to ("" = none remembered).
  std::string assigned(const std::string& session_key) const;

 private:
  void add_to_ring(const std::string& replica);

  Settings settings_;
  uint64_t seed_;
  std::string spec_;
  std::vector<std::string> replicas_;              // by id; "" = a removed replica's free slot
  std::vector<std::pair<uint64_t, size_t>> ring_;  // (position, replica id), sorted
  std::unordered_map<std::string, size_t> replica_id_;
  Lru<std::string, std::string> sessions_;  // session key -> replica
  std::vector<int> candidate_of_;           // per replica id, scratch for choose()
  LeastOutstanding fallback_;
};

// SGLang's cache-aware routing: the replica that probably holds the longest prefix of the prompt
// when it matches more than `threshold` of the prompt's blocks, unless the load is imbalanced
// (max - min requests in flight above balance_abs and max above balance_rel x min); otherwise,
// and when imbalanced, the least loaded.
class PrefixAware : public Policy {
 public:
  struct Settings {
    double threshold = 0.5;
    double balance_abs = 32;
    double balance_rel = 1.5;
    size_t default_blocks = 8192;
  };
  PrefixAware(Settings settings, uint64_t seed, std::string spec);
  std::optional<size_t> choose(const RouteContext& context, std::span<const Candidate> candidates) override;
  void routed(const RouteContext& context, const std::string& replica) override;
  void removed(const std::string& replica) override { index_.remove(replica); }
  std::string describe() const override { return spec_; }

  const PrefixIndex& index() const { return index_; }

 private:
  Settings settings_;
  std::string spec_;
  PrefixIndex index_;
  LeastOutstanding fallback_;
};

// llm-d's shape: filters narrow the candidates, then scorers each give every remaining one a
// score in 0..1 (higher is better); the highest weighted sum wins, ties broken by the seeded
// generator.
class Filter {
 public:
  virtual ~Filter() = default;
  // Called once per choice with every candidate still in, before keep().
  virtual void prepare(const RouteContext& context, std::span<const Candidate> candidates) {}
  // Whether the candidate may stay. When a filter would leave nothing, it is skipped.
  virtual bool keep(const RouteContext& context, const Candidate& candidate) const = 0;
};

class Scorer {
 public:
  virtual ~Scorer() = default;
  virtual std::string_view name() const = 0;
  // One score in 0..1 per candidate, into `scores` (same size as candidates).
  virtual void score(const RouteContext& context, std::span<const Candidate> candidates, std::span<double> scores) = 0;
  virtual void routed(const RouteContext& context, const std::string& replica) {}
  virtual void removed(const std::string& replica) {}
};

class ScoredPolicy : public Policy {
 public:
  struct Weighted {
    std::unique_ptr<Scorer> scorer;
    double weight = 1;
  };
  ScoredPolicy(std::string spec, std::vector<std::unique_ptr<Filter>> filters, std::vector<Weighted> scorers,
               uint64_t seed);
  std::optional<size_t> choose(const RouteContext& context, std::span<const Candidate> candidates) override;
  void routed(const RouteContext& context, const std::string& replica) override;
  void removed(const std::string& replica) override;
  std::string describe() const override { return spec_; }

 private:
  std::string spec_;
  std::vector<std::unique_ptr<Filter>> filters_;
  std::vector<Weighted> scorers_;
  // Ties go in turn from a seeded start: even when scores say nothing (an idle deployment, short
  // prompts), where random picks drift apart (7 to 3 over 10 requests).
  uint64_t next_tie_;
};

// Whether an engine-reported figure may be used: read, and within `freshness` of now.
bool fresh(const EngineLoad& load, SteadyClock::time_point now, std::chrono::milliseconds freshness);

// Requests this gateway sent a replica since its engine's figures were read: the engine could not
// count them yet. Without them, every request between two scrapes would go to the replica that
// looked least loaded at the last one.
class SentSinceScrape {
 public:
  void routed(const RouteContext& context, const std::string& replica);
  void removed(const std::string& replica) { sent_.erase(replica); }
  // Requests and their estimated tokens sent to the replica after `since`.
  std::pair<int, int64_t> after(const std::string& replica, SteadyClock::time_point since);

 private:
  struct Sent {
    SteadyClock::time_point at;
    int64_t tokens = 0;
  };
  static constexpr size_t kMaxRemembered = 4096;  // per replica
  // The requests remembered and their tokens added up, kept as they come and go: after() is asked
  // for every candidate of every request, and summing up to 4,096 entries each time cost a busy
  // gateway 8 % of its CPU.
  struct Window {
    std::deque<Sent> sent;
    int64_t tokens = 0;
  };
  std::unordered_map<std::string, Window> sent_;
};

// Drops candidates whose engine says their KV cache is at least `kv_max` full (fresh figures
// only): a full cache queues or preempts.
class KvFullFilter : public Filter {
 public:
  KvFullFilter(double kv_max, std::chrono::milliseconds freshness) : kv_max_(kv_max), freshness_(freshness) {}
  bool keep(const RouteContext& context, const Candidate& candidate) const override;

 private:
  double kv_max_;
  std::chrono::milliseconds freshness_;
};

// Bounded loads (Mirrokni, Thorup and Zadimoghaddam, as the session policy uses them): with m
// requests in flight over n candidates, a candidate already at ceil(bound x (m + 1) / n) takes
// no more. Affinity (a cached prefix) then spills a hot prompt onto a second replica instead of
// piling it onto one. bound 0 = off.
class LoadBoundFilter : public Filter {
 public:
  explicit LoadBoundFilter(double bound) : bound_(bound) {}
  void prepare(const RouteContext& context, std::span<const Candidate> candidates) override;
  bool keep(const RouteContext& context, const Candidate& candidate) const override;

 private:
  double bound_;
  double capacity_ = 0;
};

// The share of the prompt's blocks the candidate probably has cached (PrefixIndex).
class PrefixScorer : public Scorer {
 public:
  explicit PrefixScorer(size_t default_blocks) : index_(default_blocks) {}
  std::string_view name() const override { return "prefix"; }
  void score(const RouteContext& context, std::span<const Candidate> candidates, std::span<double> scores) override;
  void routed(const RouteContext& context, const std::string& replica) override;
  void removed(const std::string& replica) override { index_.remove(replica); }

 private:
  PrefixIndex index_;
};

// What the engine-load scorers share: engine figures younger than `freshness`, and the requests
// sent each replica since its figures were read.
class EngineLoadScorer : public Scorer {
 public:
  explicit EngineLoadScorer(std::chrono::milliseconds freshness) : freshness_(freshness) {}
  void routed(const RouteContext& context, const std::string& replica) override { sent_.routed(context, replica); }
  void removed(const std::string& replica) override { sent_.removed(replica); }

 protected:
  std::chrono::milliseconds freshness_;
  SentSinceScrape sent_;
};

// Shorter queues score higher, min-max over the candidates: the engines' waiting requests (plus
// those sent since their figures were read) while every candidate's figures are fresh, else the
// gateway's own requests in flight.
class QueueScorer : public EngineLoadScorer {
 public:
  using EngineLoadScorer::EngineLoadScorer;
  std::string_view name() const override { return "queue"; }
  void score(const RouteContext& context, std::span<const Candidate> candidates, std::span<double> scores) override;
};

// Free KV cache scores higher: 1 - usage while every candidate's figures are fresh (usage plus
// the tokens sent since, over the capacity when known); else the gateway's own in-flight tokens,
// over each engine's capacity when every one is known, else min-max.
class KvScorer : public EngineLoadScorer {
 public:
  using EngineLoadScorer::EngineLoadScorer;
  std::string_view name() const override { return "kv"; }
  void score(const RouteContext& context, std::span<const Candidate> candidates, std::span<double> scores) override;
};

// Fewer requests in flight from this gateway score higher, min-max over the candidates.
class OutstandingScorer : public Scorer {
 public:
  std::string_view name() const override { return "outstanding"; }
  void score(const RouteContext& context, std::span<const Candidate> candidates, std::span<double> scores) override;
};

// Lower is better: (max - value) / (max - min) for each value; 1 for all when they are equal.
void min_max_scores(std::span<const double> values, std::span<double> scores);

}  // namespace nebula::router
