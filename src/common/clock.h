#pragma once
// Clock: the seam for time. Production code asks a Clock; tests use FakeClock to move time by hand.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

namespace nebula {

class Clock {
 public:
  virtual ~Clock() = default;
  // Wall-clock time, for timestamps that leave the process (heartbeats, events).
  virtual std::chrono::system_clock::time_point wall_now() const = 0;
  // Monotonic time, for durations and timeouts.
  virtual std::chrono::steady_clock::time_point steady_now() const = 0;
};

class SystemClock final : public Clock {
 public:
  std::chrono::system_clock::time_point wall_now() const override { return std::chrono::system_clock::now(); }
  std::chrono::steady_clock::time_point steady_now() const override { return std::chrono::steady_clock::now(); }
  static SystemClock& instance();
};

// A clock that only moves when told to. Thread-safe.
class FakeClock final : public Clock {
 public:
  std::chrono::system_clock::time_point wall_now() const override {
    return std::chrono::system_clock::time_point(std::chrono::nanoseconds(offset_ns_.load()) + wall_base_);
  }
  std::chrono::steady_clock::time_point steady_now() const override {
    return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(offset_ns_.load()));
  }
  void advance(std::chrono::nanoseconds by) { offset_ns_ += by.count(); }

 private:
  std::atomic<int64_t> offset_ns_{0};
  std::chrono::system_clock::duration wall_base_ = std::chrono::hours(24 * 365 * 56);
};

// Milliseconds since the Unix epoch.
int64_t to_unix_ms(std::chrono::system_clock::time_point time);
// RFC 3339 in UTC with milliseconds, e.g. 2026-11-23T15:19:59.123Z.
std::string format_rfc3339(std::chrono::system_clock::time_point time);

}  // namespace nebula
