// --responses and its flags, for `nebula up`, `nebula server` and `nebula gateway`.
#include <spdlog/spdlog.h>

#include "cli/cli.h"
#include "common/config.h"
#include "gateway/redis_connection.h"
#include "gateway/response_store.h"

namespace nebula::cli {

void add_responses_flags(CLI::App& app, ResponsesFlags& flags) {
  app.add_option("--responses", flags.url,
                 "Where stored responses live: memory, sqlite://PATH or redis://HOST[:PORT] (shared by several "
                 "servers and gateways; default: sqlite in the data dir for a server on SQLite, else the --limits "
                 "Redis, else memory)");
  app.add_option("--responses-retention", flags.retention,
                 "How long a stored response is kept after its last use (as part of a conversation too)")
      ->check(duration_value(1'000))
      ->capture_default_str();
  app.add_option("--responses-per-key", flags.per_key,
                 "Most responses one API key keeps (its least recently used go first)")
      ->check(CLI::Range(size_t{1}, size_t{100'000'000}))
      ->capture_default_str();
}

Result<std::shared_ptr<gateway::ResponseStore>> make_response_store(const ResponsesFlags& flags,
                                                                    const std::string& fallback) {
  gateway::ResponseStoreOptions options;
  auto retention = parse_duration(flags.retention);
  if (!retention) return make_error(ErrorCode::InvalidArgument, "--responses-retention: " + retention.error().message);
  options.retention = *retention;
  options.per_key = flags.per_key;
  std::string url = flags.url.empty() ? fallback : flags.url;
  if (url.empty() || url == "memory") {
    spdlog::warn(
        "stored responses are kept in this process's memory: a restart forgets them, and another server or "
        "gateway cannot continue them (--responses sqlite://PATH or redis://HOST:PORT)");
    url = "memory";
  }
  auto store = gateway::open_response_store(url, options);
  if (!store) return make_error(store.error().code, "--responses: " + store.error().message);
  if (url != "memory") {
    // Said at info level only when chosen: the default (beside the server's state) is the usual.
    spdlog::log(flags.url.empty() ? spdlog::level::debug : spdlog::level::info,
                "stored responses: {} (kept {} after last use)", gateway::redacted_redis_url(url), flags.retention);
  }
  return store;
}

}  // namespace nebula::cli
