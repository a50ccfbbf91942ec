#include "api/keys.h"

#include "api/read.h"

namespace nebula::api {

using detail::read;

namespace {
json key_json(const ApiKey& value, bool with_hash) {
  json object = {{"kind", "ApiKey"},
                 {"metadata", to_json(value.metadata)},
                 {"display_name", value.display_name},
                 {"scope", value.scope},
                 {"models", value.models},
                 {"rpm", value.rpm},
                 {"tpm", value.tpm},
                 {"max_concurrency", value.max_concurrency},
                 {"budget_tokens", value.budget_tokens},
                 {"priority", value.priority},
                 {"expires_ms", value.expires_ms},
                 {"revoked", value.revoked},
                 {"last_used_ms", value.last_used_ms}};
  if (with_hash) object["hash"] = value.hash;
  return object;
}

}  // namespace

json to_json(const ApiKey& value) {
  return key_json(value, false);
}
json to_stored_json(const ApiKey& value) {
  return key_json(value, true);
}

Result<ApiKey> api_key_from_json(const json& value) {
  try {
    if (!value.is_object()) return make_error(ErrorCode::InvalidArgument, "an ApiKey must be a JSON object");
    ApiKey key;
    key.metadata = detail::metadata_from(value);
    read(value, "display_name", key.display_name);
    read(value, "scope", key.scope);
    read(value, "hash", key.hash);
    read(value, "models", key.models);
    read(value, "rpm", key.rpm);
    read(value, "tpm", key.tpm);
    read(value, "max_concurrency", key.max_concurrency);
    read(value, "budget_tokens", key.budget_tokens);
    read(value, "priority", key.priority);
    read(value, "expires_ms", key.expires_ms);
    read(value, "revoked", key.revoked);
    read(value, "last_used_ms", key.last_used_ms);
    return key;
  } catch (const std::exception& error) {
    return make_error(ErrorCode::InvalidArgument, std::string("invalid ApiKey: ") + error.what());
  }
}

json to_json(const UsageRecord& value) {
  return {{"key", value.key},
          {"model", value.model},
          {"day", value.day},
          {"requests", value.requests},
          {"errors", value.errors},
          {"prompt_tokens", value.prompt_tokens},
          {"completion_tokens", value.completion_tokens},
          {"cached_tokens", value.cached_tokens},
          {"total_tokens", value.prompt_tokens + value.completion_tokens}};
}

Result<UsageRecord> usage_from_json(const json& value) {
  try {
    if (!value.is_object()) return make_error(ErrorCode::InvalidArgument, "a usage record must be a JSON object");
    UsageRecord record;
    read(value, "key", record.key);
    read(value, "model", record.model);
    read(value, "day", record.day);
    read(value, "requests", record.requests);
    read(value, "errors", record.errors);
    read(value, "prompt_tokens", record.prompt_tokens);
    read(value, "completion_tokens", record.completion_tokens);
    read(value, "cached_tokens", record.cached_tokens);
    return record;
  } catch (const std::exception& error) {
    return make_error(ErrorCode::InvalidArgument, std::string("invalid usage record: ") + error.what());
  }
}

std::string usage_key(const UsageRecord& record) {
  return std::string(kKeyRoot) + "usage/" + record.day + "/" + record.key + "/" + record.model;
}

}  // namespace nebula::api
