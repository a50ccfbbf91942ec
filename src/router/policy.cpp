#include "router/policy.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>

#include "api/spec_check.h"
#include "router/policies.h"
#include "router/spec.h"

namespace nebula::router {

namespace {

constexpr double kMaxWeight = 1000;

// Parameters shared by the scored policies.
constexpr ParamDef kQueueWeight{"queue", 1, 0, kMaxWeight, false, true, "weight of the queue scorer"};
constexpr ParamDef kKvWeight{"kv", 1, 0, kMaxWeight, false, true, "weight of the KV cache scorer"};
constexpr ParamDef kKvMax{"kv-max", 1, 0, 1, false, false, "drop replicas whose KV cache is at least this full"};
constexpr ParamDef kLoadBound{"load-bound",
                              0,
                              0,
                              100,
                              false,
                              false,
                              "a replica at this x the mean requests in flight takes no more (0 = no bound)"};
// prefix+load's bound is on by default: without it a popular prefix piles onto one replica
// (docs/benchmarks.md, routing_bench (b): 1.5-1.8x the least busy one's load, against 1.3-1.4).
constexpr ParamDef kPrefixLoadBound{"load-bound",
                                    1.25,
                                    0,
                                    100,
                                    false,
                                    false,
                                    "a replica at this x the mean requests in flight takes no more (0 = no bound)"};
constexpr ParamDef kMaxBlocks{"max-blocks",
                              8192,
                              1,
                              static_cast<double>(kMaxIndexBlocks),
                              true,
                              false,
                              "prefix blocks remembered per replica while its KV capacity is unknown"};

using Make = std::function<std::unique_ptr<Policy>(const ParamValues&, const std::string& spec, const PolicyOptions&)>;

struct PolicyKind {
  std::string_view name;
  std::vector<ParamDef> params;
  Make make;
};

std::unique_ptr<Policy> make_scored(const ParamValues& values, const std::string& spec, const PolicyOptions& options,
                                    bool with_prefix) {
  std::vector<std::unique_ptr<Filter>> filters;
  filters.push_back(std::make_unique<KvFullFilter>(values.at("kv-max"), options.load_freshness));
  filters.push_back(std::make_unique<LoadBoundFilter>(values.at("load-bound")));
  std::vector<ScoredPolicy::Weighted> scorers;
  if (with_prefix) {
    scorers.push_back(
        {std::make_unique<PrefixScorer>(static_cast<size_t>(values.at("max-blocks"))), values.at("prefix")});
  }
  scorers.push_back({std::make_unique<QueueScorer>(options.load_freshness), values.at("queue")});
  scorers.push_back({std::make_unique<KvScorer>(options.load_freshness), values.at("kv")});
  if (with_prefix) scorers.push_back({std::make_unique<OutstandingScorer>(), values.at("outstanding")});
  std::erase_if(scorers, [](const ScoredPolicy::Weighted& weighted) { return weighted.weight <= 0; });
  return std::make_unique<ScoredPolicy>(spec, std::move(filters), std::move(scorers), options.seed);
}

const std::vector<PolicyKind>& kinds() {
  static const std::vector<PolicyKind> all = {
      {"least-outstanding", {}, [](auto&, auto&, auto&) { return std::make_unique<LeastOutstanding>(); }},
      {"round-robin", {}, [](auto&, auto&, auto&) { return std::make_unique<RoundRobin>(); }},
      {"power-of-two",
       {},
       [](auto&, auto&, const PolicyOptions& options) { return std::make_unique<PowerOfTwo>(options.seed); }},
      {"session",
       {{"load-bound", 1.25, 1, 100, false, false, "a replica above this x the mean load takes no new session"},
        {"vnodes", 100, 1, 1000, true, false, "points per replica on the hash ring"}},
       [](const ParamValues& values, const std::string& spec, const PolicyOptions& options) {
         SessionAffinity::Settings settings;
         settings.load_bound = values.at("load-bound");
         settings.virtual_nodes = static_cast<int>(values.at("vnodes"));
         return std::make_unique<SessionAffinity>(settings, options.seed, spec);
       }},
      {"prefix",
       {{"threshold", 0.5, 0, 1, false, false, "follow the longest cached prefix when it covers more than this share"},
        {"balance-abs", 32, 0, 1e6, false, false, "imbalanced when max - min in flight is above this ..."},
        {"balance-rel", 1.5, 1, 1e6, false, false, "... and max is above this x min"},
        kMaxBlocks},
       [](const ParamValues& values, const std::string& spec, const PolicyOptions& options) {
         PrefixAware::Settings settings;
         settings.threshold = values.at("threshold");
         settings.balance_abs = values.at("balance-abs");
         settings.balance_rel = values.at("balance-rel");
         settings.default_blocks = static_cast<size_t>(values.at("max-blocks"));
         return std::make_unique<PrefixAware>(settings, options.seed, spec);
       }},
      {"kv-load",
       {kQueueWeight, kKvWeight, kKvMax, kLoadBound},
       [](const ParamValues& values, const std::string& spec, const PolicyOptions& options) {
         return make_scored(values, spec, options, false);
       }},
      {"prefix+load",
       {{"prefix", 2, 0, kMaxWeight, false, true, "weight of the prefix-match scorer"},
        kQueueWeight,
        kKvWeight,
        {"outstanding", 0, 0, kMaxWeight, false, true, "weight of the requests-in-flight scorer"},
        kKvMax,
        kPrefixLoadBound,
        kMaxBlocks},
       [](const ParamValues& values, const std::string& spec, const PolicyOptions& options) {
         return make_scored(values, spec, options, true);
       }},
  };
  return all;
}

std::string kind_names() {
  std::string names;
  for (const auto& kind : kinds()) names += (names.empty() ? "" : ", ") + std::string(kind.name);
  return names;
}

}  // namespace

const char* const kDefaultPolicy = "prefix+load";

std::string policy_names() {
  return kind_names() + "; scorers of prefix+load: prefix, queue, kv, outstanding";
}

Result<std::unique_ptr<Policy>> make_policy(std::string_view spec, const PolicyOptions& options) {
  // The default, chosen by bench/routing_bench (docs/benchmarks.md): on shared prefixes and
  // multi-turn chat it beats least-outstanding many times over, and on unrelated prompts it
  // matches it.
  if (spec.empty()) spec = kDefaultPolicy;
  auto parts = split_spec(spec);
  if (!parts) return parts.error();
  const auto& all = kinds();
  auto kind = std::find_if(all.begin(), all.end(), [&](const PolicyKind& k) { return k.name == parts->name; });
  if (kind == all.end()) {
    std::vector<std::string> names;
    for (const auto& k : all) names.emplace_back(k.name);
    auto close = api::closest_names(parts->name, names);
    std::string hint =
        close.empty() ? fmt::format("one of: {}", kind_names()) : fmt::format("did you mean '{}'?", close.front());
    return Error{ErrorCode::InvalidArgument, fmt::format("unknown routing policy '{}' ({})", parts->name, hint)};
  }
  auto values = read_params(*parts, kind->params);
  if (!values) return values.error();
  return kind->make(*values, format_spec(kind->name, kind->params, *values), options);
}

}  // namespace nebula::router
