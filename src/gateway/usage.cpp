#include "gateway/usage.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <ctime>

namespace nebula::gateway {

namespace {
const std::string kUsagePrefix = std::string(api::kKeyRoot) + "usage/";

void add_counts(api::UsageRecord& into, const api::UsageRecord& from) {
  into.requests += from.requests;
  into.errors += from.errors;
  into.prompt_tokens += from.prompt_tokens;
  into.completion_tokens += from.completion_tokens;
  into.cached_tokens += from.cached_tokens;
}
}  // namespace

std::string utc_day(std::chrono::system_clock::time_point when) {
  std::time_t seconds = std::chrono::system_clock::to_time_t(when);
  // Asked for on every request (usage and the monthly budget): the last answer per thread.
  thread_local std::time_t cached_day = -1;
  thread_local std::string cached;
  if (seconds >= 0 && seconds / 86400 == cached_day) return cached;
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  std::string day = fmt::format("{:04d}-{:02d}-{:02d}", utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday);
  if (seconds >= 0) {
    cached_day = seconds / 86400;
    cached = day;
  }
  return day;
}

UsageRecorder::UsageRecorder(store::Store& store, std::chrono::milliseconds flush_interval)
    : store_(store), flush_interval_(flush_interval) {}

UsageRecorder::~UsageRecorder() {
  stop();
}

Status UsageRecorder::start() {
  auto listing = store_.list(kUsagePrefix);
  if (!listing) return listing.error();
  for (const auto& kv : listing->kvs) {
    auto document = parse_json(kv.value);
    if (!document) continue;
    auto record = api::usage_from_json(*document);
    if (!record) continue;
    month_totals_[{record->day.substr(0, 7), record->key}] += record->prompt_tokens + record->completion_tokens;
  }
  thread_ = std::thread([this] { run(); });
  return {};
}

void UsageRecorder::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  (void)flush();
}

void UsageRecorder::run() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    wake_.wait_for(lock, flush_interval_, [this] { return stopping_; });
    if (stopping_) break;
    lock.unlock();
    if (auto flushed = flush(); !flushed) spdlog::warn("usage: flush failed: {}", flushed.error().message);
    lock.lock();
  }
}

void UsageRecorder::record(const std::string& key, const std::string& model, const UsageDelta& delta,
                           std::chrono::system_clock::time_point when) {
  std::string day = utc_day(when);
  std::lock_guard lock(mutex_);
  auto& record = pending_[{day, key, model}];
  record.day = day;
  record.key = key;
  record.model = model;
  add_counts(record, {key, model, day, 1, delta.error ? 1 : 0, delta.prompt_tokens, delta.completion_tokens,
                      delta.cached_tokens});
  month_totals_[{day.substr(0, 7), key}] += delta.prompt_tokens + delta.completion_tokens;
}

int64_t UsageRecorder::month_tokens(const std::string& key, std::chrono::system_clock::time_point when) const {
  std::lock_guard lock(mutex_);
  auto it = month_totals_.find({utc_day(when).substr(0, 7), key});
  return it == month_totals_.end() ? 0 : it->second;
}

Status UsageRecorder::flush() {
  std::map<Slot, api::UsageRecord> batch;
  {
    std::lock_guard lock(mutex_);
    batch.swap(pending_);
  }
  Status result;
  for (auto& [slot, delta] : batch) {
    std::string key = api::usage_key(delta);
    auto written = store::update(store_, key,
                                 [&](const std::optional<std::string>& current) -> Result<std::optional<std::string>> {
                                   api::UsageRecord total = delta;
                                   if (current) {
                                     auto document = parse_json(*current);
                                     if (document) {
                                       if (auto stored = api::usage_from_json(*document)) add_counts(total, *stored);
                                     }
                                   }
                                   return std::optional<std::string>(api::to_json(total).dump());
                                 });
    if (!written) {
      // Keep the counts for the next flush rather than lose them.
      std::lock_guard lock(mutex_);
      auto& back = pending_[slot];
      if (back.day.empty()) {
        back = delta;
      } else {
        add_counts(back, delta);
      }
      result = make_error(ErrorCode::Unavailable, "could not write " + key);
    }
  }
  return result;
}

std::vector<api::UsageRecord> UsageRecorder::query(const std::string& key, const std::string& model,
                                                   const std::string& since_day) {
  std::map<Slot, api::UsageRecord> merged;
  auto add = [&](const api::UsageRecord& record) {
    if (!key.empty() && record.key != key) return;
    if (!model.empty() && record.model != model) return;
    if (!since_day.empty() && record.day < since_day) return;
    auto& slot = merged[{record.day, record.key, record.model}];
    if (slot.day.empty()) {
      slot = record;
    } else {
      add_counts(slot, record);
    }
  };
  if (auto listing = store_.list(kUsagePrefix)) {
    for (const auto& kv : listing->kvs) {
      auto document = parse_json(kv.value);
      if (!document) continue;
      if (auto record = api::usage_from_json(*document)) add(*record);
    }
  }
  {
    std::lock_guard lock(mutex_);
    for (const auto& [slot, record] : pending_) add(record);
  }
  std::vector<api::UsageRecord> records;
  for (auto& [slot, record] : merged) records.push_back(std::move(record));
  return records;
}

}  // namespace nebula::gateway
