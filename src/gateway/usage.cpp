#include "gateway/usage.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <ctime>

#include "common/ids.h"
#include "common/json.h"

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
    : store_(store), flush_interval_(flush_interval), writer_id_("u-" + random_id(16)) {}

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
  std::vector<std::pair<Slot, Unconfirmed>> batches;
  {
    std::lock_guard lock(mutex_);
    // New counts become a batch of their own only once the record's previous batch is settled:
    // a batch whose outcome is unknown is retried unchanged, never merged with newer counts.
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (unconfirmed_.count(it->first)) {
        ++it;
        continue;
      }
      unconfirmed_[it->first] = Unconfirmed{next_sequence_++, std::move(it->second)};
      it = pending_.erase(it);
    }
    batches.assign(unconfirmed_.begin(), unconfirmed_.end());
  }
  Status result;
  for (const auto& [slot, batch] : batches) {
    if (auto written = write(batch); !written) {
      // Kept, to be sent again as it is at the next flush.
      result = make_error(ErrorCode::Unavailable,
                          "could not write " + api::usage_key(batch.counts) + ": " + written.error().message);
      continue;
    }
    std::lock_guard lock(mutex_);
    unconfirmed_.erase(slot);
  }
  return result;
}

Status UsageRecorder::write(const Unconfirmed& batch) {
  std::string key = api::usage_key(batch.counts);
  int64_t now_s =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  int64_t oldest_s = now_s - std::chrono::duration_cast<std::chrono::seconds>(kUsageWriterMemory).count();
  auto written =
      store::update(store_, key, [&](const std::optional<std::string>& current) -> Result<std::optional<std::string>> {
        api::UsageRecord total = batch.counts;
        json writers = json::object();
        if (current) {
          auto document = parse_json(*current);
          if (document && document->is_object()) {
            if (auto stored = api::usage_from_json(*document)) add_counts(total, *stored);
            auto found = document->find("writers");
            if (found != document->end() && found->is_object()) writers = *found;
          }
        }
        auto mine = writers.find(writer_id_);
        if (mine != writers.end() && mine->is_array() && !mine->empty() && (*mine)[0].is_number_unsigned() &&
            (*mine)[0].get<uint64_t>() >= batch.sequence) {
          return std::optional<std::string>();  // took effect already: its answer was lost
        }
        json kept = json::object();
        for (auto& [writer, last] : writers.items()) {
          // [sequence, unix seconds]; anything else is dropped.
          if (last.is_array() && last.size() == 2 && last[1].is_number_integer() &&
              last[1].get<int64_t>() >= oldest_s) {
            kept[writer] = last;
          }
        }
        kept[writer_id_] = json::array({batch.sequence, now_s});
        json document = api::to_json(total);
        document["writers"] = std::move(kept);
        return std::optional<std::string>(document.dump());
      });
  if (!written) return written.error();
  return {};
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
    // Unconfirmed batches count as pending: one whose answer was lost may show twice until it
    // is settled.
    std::lock_guard lock(mutex_);
    for (const auto& [slot, record] : pending_) add(record);
    for (const auto& [slot, batch] : unconfirmed_) add(batch.counts);
  }
  std::vector<api::UsageRecord> records;
  for (auto& [slot, record] : merged) records.push_back(std::move(record));
  return records;
}

}  // namespace nebula::gateway
