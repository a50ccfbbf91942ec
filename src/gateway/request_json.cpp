#include "gateway/request_json.h"

#include <fmt/format.h>
#include <simdjson.h>

namespace nebula::gateway {

namespace {
// The length of a string value (0 for any other), its text appended to `prompt` up to the limit.
int64_t string_bytes(simdjson::dom::element value, std::string& prompt) {
  std::string_view text;
  if (value.get_string().get(text)) return 0;
  if (prompt.size() < kPromptTextLimit) prompt.append(text.substr(0, kPromptTextLimit - prompt.size()));
  return static_cast<int64_t>(text.size());
}
}  // namespace

Result<RequestFacts> read_request(std::string_view body) {
  thread_local simdjson::dom::parser parser;
  simdjson::dom::element document;
  if (auto error = parser.parse(body.data(), body.size(), true).get(document)) {
    return make_error(ErrorCode::InvalidArgument, fmt::format("invalid JSON: {}", simdjson::error_message(error)));
  }
  simdjson::dom::object root;
  if (document.get_object().get(root)) {
    return make_error(ErrorCode::InvalidArgument, "the request body must be a JSON object");
  }
  RequestFacts facts;
  std::string_view model;
  if (!root["model"].get_string().get(model)) facts.model = std::string(model);
  std::string_view user;
  if (!root["user"].get_string().get(user)) facts.user = std::string(user);
  bool flag = false;
  facts.stream = !root["stream"].get_bool().get(flag) && flag;
  simdjson::dom::object options;
  if (!root["stream_options"].get_object().get(options)) {
    facts.include_usage = !options["include_usage"].get_bool().get(flag) && flag;
  }
  simdjson::dom::array messages;
  if (!root["messages"].get_array().get(messages)) {
    for (auto message : messages) {
      simdjson::dom::element content;
      if (!message.is_object() || message["content"].get(content)) continue;
      simdjson::dom::array parts;
      if (!content.get_array().get(parts)) {
        for (auto part : parts) {
          simdjson::dom::element text;
          if (part.is_object() && !part["text"].get(text)) facts.prompt_bytes += string_bytes(text, facts.prompt_text);
        }
      } else {
        facts.prompt_bytes += string_bytes(content, facts.prompt_text);
      }
    }
  }
  for (const char* field : {"prompt", "input"}) {
    simdjson::dom::element value;
    if (root[field].get(value)) continue;
    simdjson::dom::array items;
    if (!value.get_array().get(items)) {
      for (auto item : items) facts.prompt_bytes += string_bytes(item, facts.prompt_text);
    } else {
      facts.prompt_bytes += string_bytes(value, facts.prompt_text);
    }
  }
  for (const char* field : {"max_completion_tokens", "max_tokens", "max_output_tokens"}) {
    int64_t limit = 0;
    simdjson::dom::element value;
    if (root[field].get(value) || !value.is_int64()) continue;
    if (!value.get_int64().get(limit)) {
      facts.max_tokens = limit;
      break;
    }
  }
  return facts;
}

namespace {
// The integer fields of an on-demand object, and (one level down) of its objects: what usage
// accounting reads. Built directly: parsing the usage text again with nlohmann cost ~4 % of a
// small request's CPU. False when the object is cut off or malformed.
bool read_counts(simdjson::ondemand::object object, json& out, int depth) {
  out = json::object();
  for (auto field : object) {
    std::string_view key;
    simdjson::ondemand::value value;
    simdjson::ondemand::json_type type;
    if (field.unescaped_key().get(key) || field.value().get(value) || value.type().get(type)) return false;
    if (type == simdjson::ondemand::json_type::number) {
      int64_t count = 0;
      if (!value.get_int64().get(count)) out[std::string(key)] = count;
    } else if (type == simdjson::ondemand::json_type::object && depth == 0) {
      simdjson::ondemand::object nested;
      json counts;
      if (value.get_object().get(nested) || !read_counts(nested, counts, depth + 1)) return false;
      out[std::string(key)] = std::move(counts);
    }
  }
  return true;
}
}  // namespace

int64_t usage_tokens(const json& usage, const char* field) {
  if (!usage.is_object()) return 0;
  auto value = usage.find(field);
  return value != usage.end() && value->is_number_integer() ? value->get<int64_t>() : 0;
}

namespace {
json usage_in(simdjson::ondemand::parser& parser, const simdjson::padded_string_view& text) {
  simdjson::ondemand::document document;
  if (parser.iterate(text).get(document)) return nullptr;
  simdjson::ondemand::object root;
  if (document.get_object().get(root)) return nullptr;
  simdjson::ondemand::object usage;
  if (root.find_field_unordered("usage").get_object().get(usage)) return nullptr;
  json counts;
  if (!read_counts(usage, counts, 0)) return nullptr;
  return counts;
}
}  // namespace

json usage_of(std::string_view answer, size_t capacity) {
  thread_local simdjson::ondemand::parser parser;
  if (capacity >= answer.size() + simdjson::SIMDJSON_PADDING) {
    // The bytes past the answer are the caller's and readable: parse in place.
    return usage_in(parser, simdjson::padded_string_view(answer.data(), answer.size(), capacity));
  }
  simdjson::padded_string padded(answer);
  return usage_in(parser, padded);
}

}  // namespace nebula::gateway
