#pragma once
// API keys and usage records (DESIGN.md §2: ApiKey). A key's secret is shown once; the store keeps
// only its SHA-256 and a visible prefix.
#include <cstdint>
#include <string>
#include <vector>

#include "api/api.h"

namespace nebula::api {

namespace scope {
inline constexpr const char* kAdmin = "admin";          // everything
inline constexpr const char* kInference = "inference";  // /v1 only
inline constexpr const char* kNode = "node";            // an agent: nodes and replicas only
}  // namespace scope

struct ApiKey {
  Metadata metadata;  // name = the key id (the visible prefix after "nb-")
  std::string display_name;
  std::string scope = scope::kInference;
  std::string hash;                 // hex SHA-256 of the whole secret
  std::vector<std::string> models;  // empty = every model
  int64_t rpm = 0;                  // requests per minute; 0 = unlimited
  int64_t tpm = 0;                  // tokens per minute
  int64_t max_concurrency = 0;
  int64_t budget_tokens = 0;  // per calendar month (UTC)
  int priority = 0;           // admission queue: higher goes first
  int64_t expires_ms = 0;     // 0 = never
  bool revoked = false;
  // The last request the key authenticated, Unix ms; 0 = never. Written by the server at most
  // once a minute (auth::Guard), so up to a minute behind in the store.
  int64_t last_used_ms = 0;
};

// One key × model × day of usage.
struct UsageRecord {
  std::string key;    // key id, or "anonymous" without auth
  std::string model;  // deployment name
  std::string day;    // YYYY-MM-DD (UTC)
  int64_t requests = 0;
  int64_t errors = 0;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
};

json to_json(const ApiKey& value);         // never includes the hash
json to_stored_json(const ApiKey& value);  // includes the hash
Result<ApiKey> api_key_from_json(const json& value);
json to_json(const UsageRecord& value);
Result<UsageRecord> usage_from_json(const json& value);

// Store key of a usage record: /nebula/usage/<day>/<key>/<model>.
std::string usage_key(const UsageRecord& record);

}  // namespace nebula::api
