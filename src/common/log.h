#pragma once
// Logging goes through spdlog. Call init_logging once in main; every component then uses
// spdlog::info/warn/error directly.
#include <spdlog/spdlog.h>

#include <string>

namespace nebula {

// level: trace|debug|info|warn|error|off. Logs go to stderr.
void init_logging(const std::string& level);

}  // namespace nebula
