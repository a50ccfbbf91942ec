#include "gateway/request_json.h"

#include <fmt/format.h>
#include <simdjson.h>

#include <cmath>

namespace nebula::gateway {

namespace {
// The length of a string value (0 for any other), its text appended to `prompt` up to the limit.
int64_t string_bytes(simdjson::dom::element value, std::string& prompt) {
  std::string_view text;
  if (value.get_string().get(text)) return 0;
  if (prompt.size() < kPromptTextLimit) prompt.append(text.substr(0, kPromptTextLimit - prompt.size()));
  return static_cast<int64_t>(text.size());
}

const char* type_name(simdjson::dom::element value) {
  switch (value.type()) {
    case simdjson::dom::element_type::ARRAY: return "an array";
    case simdjson::dom::element_type::OBJECT: return "an object";
    case simdjson::dom::element_type::STRING: return "a string";
    case simdjson::dom::element_type::BOOL: return "a boolean";
    case simdjson::dom::element_type::NULL_VALUE: return "null";
    case simdjson::dom::element_type::DOUBLE: return "a decimal";
    default: return "an integer";
  }
}

std::string number_text(double value) {
  bool whole = std::fabs(value) < 1e15 && value == static_cast<double>(static_cast<int64_t>(value));
  return whole ? fmt::format("{}", static_cast<int64_t>(value)) : fmt::format("{}", value);
}

// OpenAI's checks of the fields a request may carry, each on a field that is present and not
// null (null means the default, for OpenAI as for the engines).
class FieldChecker {
 public:
  explicit FieldChecker(simdjson::dom::object root) : root_(root) {}
  std::optional<RequestProblem> problem;

  void integer(const char* name, std::optional<int64_t> min, std::optional<int64_t> max) {
    simdjson::dom::element value;
    if (problem || !present(name, value)) return;
    int64_t number = 0;
    if (!value.is_int64() || value.get_int64().get(number)) return wrong_type(name, value, "an integer");
    if (min && number < *min)
      return out_of_range(name, "integer", true, static_cast<double>(*min), static_cast<double>(number));
    if (max && number > *max)
      return out_of_range(name, "integer", false, static_cast<double>(*max), static_cast<double>(number));
  }

  void decimal(const char* name, double min, double max) {
    simdjson::dom::element value;
    if (problem || !present(name, value)) return;
    double number = 0;
    if (!value.is_number() || value.get_double().get(number)) return wrong_type(name, value, "a decimal");
    if (number < min) return out_of_range(name, "decimal", true, min, number);
    if (number > max) return out_of_range(name, "decimal", false, max, number);
  }

  void required(const char* name) {
    simdjson::dom::element value;
    if (problem || !root_[name].get(value)) return;
    problem =
        RequestProblem{fmt::format("Missing required parameter: '{}'.", name), name, "missing_required_parameter"};
  }

  bool is_true(const char* name) { return boolean(name) == 1; }
  bool is_false(const char* name) { return boolean(name) == 0; }
  void refuse(const char* name, const char* code, const char* message) {
    if (!problem) problem = RequestProblem{message, name, code};
  }

  void nonempty_array(const char* name) {
    simdjson::dom::element value;
    if (problem || !present(name, value)) return;
    simdjson::dom::array items;
    if (value.get_array().get(items)) return wrong_type(name, value, "an array");
    if (items.size() == 0) {
      problem = RequestProblem{
          fmt::format("Invalid '{}': empty array. Expected an array with minimum length 1, but got an empty array "
                      "instead.",
                      name),
          name, "empty_array"};
    }
  }

 private:
  // 1 when the field is true, 0 when false, -1 when absent, null or not a boolean.
  int boolean(const char* name) {
    simdjson::dom::element value;
    bool on = false;
    if (!present(name, value) || value.get_bool().get(on)) return -1;
    return on ? 1 : 0;
  }
  bool present(const char* name, simdjson::dom::element& value) { return !root_[name].get(value) && !value.is_null(); }
  void wrong_type(const char* name, simdjson::dom::element value, const char* expected) {
    problem = RequestProblem{
        fmt::format("Invalid type for '{}': expected {}, but got {} instead.", name, expected, type_name(value)), name,
        "invalid_type"};
  }
  // kind: "integer" or "decimal"; below: under the minimum (else above the maximum).
  void out_of_range(const char* name, const char* kind, bool below, double bound, double got) {
    const char* side = below ? "below minimum" : "above maximum";
    problem = RequestProblem{fmt::format("Invalid '{}': {} {} value. Expected a value {} {}, but got {} instead.", name,
                                         kind, side, below ? ">=" : "<=", number_text(bound), number_text(got)),
                             name, fmt::format("{}_{}_value", kind, below ? "below_min" : "above_max")};
  }
  simdjson::dom::object root_;
};

std::optional<RequestProblem> check_fields(simdjson::dom::object root, Api api) {
  FieldChecker check(root);
  switch (api) {
    case Api::Chat:
      check.required("messages");
      check.nonempty_array("messages");
      break;
    case Api::Completions: check.required("prompt"); break;
    case Api::Embeddings: check.required("input"); break;
    case Api::Responses:
      check.required("input");
      // A background response is polled (GET), not streamed, and must be stored to be polled.
      if (check.is_true("background") && check.is_true("stream")) {
        check.refuse("background", "unsupported_value",
                     "background responses are polled with GET /v1/responses/{id}, not streamed: send 'stream' false");
      }
      if (check.is_true("background") && check.is_false("store")) {
        check.refuse("store", "unsupported_value", "a background response must be stored: send 'store' true");
      }
      break;
    case Api::Any: break;
  }
  check.integer("max_tokens", 1, std::nullopt);
  check.integer("max_completion_tokens", 1, std::nullopt);
  check.integer("max_output_tokens", 1, std::nullopt);  // OpenAI asks for 16; engines take 1
  check.integer("n", 1, 128);
  check.decimal("temperature", 0, 2);
  check.decimal("top_p", 0, 1);
  check.decimal("presence_penalty", -2, 2);
  check.decimal("frequency_penalty", -2, 2);
  check.integer("top_logprobs", 0, 20);
  return check.problem;
}
}  // namespace

Result<RequestFacts> read_request(std::string_view body, Api api) {
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
  facts.problem = check_fields(root, api);
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
