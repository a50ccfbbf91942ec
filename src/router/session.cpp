#include <algorithm>
#include <cmath>

#include "router/policies.h"

namespace nebula::router {

SessionAffinity::SessionAffinity(Settings settings, uint64_t seed, std::string spec)
    : settings_(settings), seed_(seed), spec_(std::move(spec)), sessions_(settings.max_sessions) {}

void SessionAffinity::add_to_ring(const std::string& replica) {
  size_t id = replicas_.size();
  auto free_slot = std::find(replicas_.begin(), replicas_.end(), std::string());
  if (free_slot != replicas_.end()) {
    id = static_cast<size_t>(free_slot - replicas_.begin());
    *free_slot = replica;
  } else {
    replicas_.push_back(replica);
  }
  replica_id_[replica] = id;
  // A replica's points depend only on its name and the seed, so every gateway (and every
  // restart) with the same seed builds the same ring.
  for (int point = 0; point < settings_.virtual_nodes; ++point) {
    ring_.emplace_back(hash_text(replica + "#" + std::to_string(point), seed_), id);
  }
  std::sort(ring_.begin(), ring_.end());
}

void SessionAffinity::removed(const std::string& replica) {
  auto it = replica_id_.find(replica);
  if (it == replica_id_.end()) return;
  size_t id = it->second;
  std::erase_if(ring_, [id](const auto& point) { return point.second == id; });
  replicas_[id].clear();
  replica_id_.erase(it);
  sessions_.erase_if([&](const std::string&, const std::string& assigned) { return assigned == replica; });
}

std::optional<size_t> SessionAffinity::choose(const RouteContext& context, std::span<const Candidate> candidates) {
  if (candidates.empty()) return std::nullopt;
  if (context.session_key.empty()) return fallback_.choose(context, candidates);
  for (const auto& candidate : candidates) {
    if (!replica_id_.count(candidate.replica)) add_to_ring(candidate.replica);
  }
  // Bounded loads: with this request counted, no replica may hold more than
  // ceil(load_bound x mean). The least loaded always fits, since load_bound >= 1.
  int64_t total = 0;
  for (const auto& candidate : candidates) total += std::max(candidate.outstanding, 0);
  auto bound = static_cast<int64_t>(
      std::ceil(settings_.load_bound * static_cast<double>(total + 1) / static_cast<double>(candidates.size())));
  auto fits = [&](size_t index) { return int64_t{candidates[index].outstanding} + 1 <= bound; };

  candidate_of_.assign(replicas_.size(), -1);
  for (size_t index = 0; index < candidates.size(); ++index) {
    candidate_of_[replica_id_[candidates[index].replica]] = static_cast<int>(index);
  }
  if (const std::string* assigned = sessions_.find(context.session_key)) {
    auto id = replica_id_.find(*assigned);
    if (id != replica_id_.end() && candidate_of_[id->second] >= 0 && fits(candidate_of_[id->second])) {
      return candidate_of_[id->second];
    }
  }
  uint64_t position = hash_text(context.session_key, seed_);
  auto start = std::lower_bound(ring_.begin(), ring_.end(), std::make_pair(position, size_t{0}));
  for (size_t step = 0; step < ring_.size(); ++step) {
    auto point = start + static_cast<std::ptrdiff_t>(step);
    if (point >= ring_.end()) point -= static_cast<std::ptrdiff_t>(ring_.size());
    int index = candidate_of_[point->second];
    if (index >= 0 && fits(index)) return index;
  }
  return fallback_.choose(context, candidates);  // unreachable: the least loaded fits
}

void SessionAffinity::routed(const RouteContext& context, const std::string& replica) {
  if (!context.session_key.empty()) sessions_.put(context.session_key, replica);
}

std::string SessionAffinity::assigned(const std::string& session_key) const {
  const std::string* replica = sessions_.find(session_key);
  return replica ? *replica : "";
}

}  // namespace nebula::router
