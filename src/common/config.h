#pragma once
// Small parsers for user-facing values: durations, sizes, host:port, and the data directory.
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace nebula {

// "250ms", "10s", "10m", "2h", "1d", or a bare number of seconds.
Result<std::chrono::milliseconds> parse_duration(std::string_view text);
// "24GB", "80GiB", "512MB", "1024" (MiB). Returns mebibytes.
Result<int64_t> parse_size_mb(std::string_view text);

struct HostPort {
  std::string host;
  uint16_t port = 0;
  std::string to_string() const;
};
// "127.0.0.1:8080", ":8080" (all interfaces), "[::1]:8080", "localhost:0".
Result<HostPort> parse_host_port(std::string_view text);

// $HOME/.nebula, or ./.nebula when HOME is unset. `~` at the start of a path expands to HOME.
std::string default_data_dir();
std::string expand_home(const std::string& path);

}  // namespace nebula
