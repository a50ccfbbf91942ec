#include "sim/wire.h"

#include <algorithm>

#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "sim/tokenizer.h"

namespace nebula::sim {
namespace {

ApiError invalid(std::string message, std::string param = "") {
  return ApiError{400, std::move(message), "invalid_request_error", std::move(param), ""};
}

json null_or(const std::string& text) {
  return text.empty() ? json(nullptr) : json(text);
}

// The text of a chat message's content: a string, a list of parts (text parts are kept), or null.
std::optional<ApiError> content_text(const json& content, std::string& out) {
  if (content.is_null()) return std::nullopt;
  if (content.is_string()) {
    out = content.get<std::string>();
    return std::nullopt;
  }
  if (!content.is_array()) return invalid("message content must be a string or a list of content parts", "messages");
  for (const json& part : content) {
    if (!part.is_object()) return invalid("each content part must be an object", "messages");
    auto text = part.find("text");
    if (part.value("type", "") == "text" && text != part.end()) {
      if (!text->is_string()) return invalid("a text content part's text must be a string", "messages");
      if (!out.empty()) out += '\n';
      out += text->get<std::string>();
    }
  }
  return std::nullopt;
}

bool known_role(const std::string& role) {
  for (const char* known : {"system", "developer", "user", "assistant", "tool", "function"}) {
    if (role == known) return true;
  }
  return false;
}

std::optional<ApiError> parse_messages(const json& body, CompletionRequest& out) {
  auto messages = body.find("messages");
  if (messages == body.end() || messages->is_null()) return invalid("'messages' is required", "messages");
  if (!messages->is_array() || messages->empty()) {
    return invalid("'messages' must be a non-empty list of messages", "messages");
  }
  for (size_t index = 0; index < messages->size(); ++index) {
    const json& message = (*messages)[index];
    if (!message.is_object() || !message.contains("role") || !message["role"].is_string()) {
      return invalid("each message must be an object with a string 'role'", "messages");
    }
    if (!known_role(message["role"].get<std::string>())) {
      return invalid(fmt::format("Invalid value: {}. Supported values are: 'system', 'assistant', 'user', "
                                 "'function', 'tool', and 'developer'.",
                                 message["role"].dump()),
                     fmt::format("messages[{}].role", index));
    }
    std::string text;
    if (auto error = content_text(message.contains("content") ? message["content"] : json(nullptr), text)) {
      return error;
    }
    out.prompt_tokens += count_tokens(text);
    if (!out.prompt_text.empty()) out.prompt_text += '\n';
    out.prompt_text += text;
    if (message["role"] == "user") out.echo_text = text;
  }
  return std::nullopt;
}

bool token_list(const json& value) {
  if (!value.is_array() || value.empty()) return false;
  return std::all_of(value.begin(), value.end(), [](const json& item) { return item.is_number_integer(); });
}

// vLLM refuses ids outside the vocabulary; the simulator's has every id from 0 to 2^31 - 1.
std::optional<ApiError> check_token_ids(const json& ids) {
  for (const json& id : ids) {
    bool inside = id.is_number_unsigned() ? id.get<uint64_t>() <= 0x7fffffffU
                                          : id.get<int64_t>() >= 0 && id.get<int64_t>() <= 0x7fffffff;
    if (!inside) return invalid(fmt::format("Token id {} is out of vocabulary", id.dump()), "prompt");
  }
  return std::nullopt;
}

// A token-id prompt: one token each, written as their numbers (echo mode repeats them so).
Prompt token_prompt(const json& ids) {
  Prompt prompt;
  for (const json& token : ids) {
    if (!prompt.text.empty()) prompt.text += ' ';
    prompt.text += std::to_string(token.get<int64_t>());
  }
  prompt.tokens = static_cast<int>(ids.size());
  return prompt;
}

// vLLM's prompt shapes: a string, a list of strings, a list of token ids, or a list of those.
std::optional<ApiError> parse_prompt(const json& body, CompletionRequest& out) {
  auto prompt = body.find("prompt");
  if (prompt == body.end() || prompt->is_null()) return invalid("'prompt' is required", "prompt");
  constexpr const char* kShapes =
      "'prompt' must be a string, a list of strings, token ids, or a list of token-id lists";
  if (prompt->is_string()) {
    out.prompts.push_back(Prompt{prompt->get<std::string>(), count_tokens(prompt->get<std::string>())});
  } else if (token_list(*prompt)) {
    if (auto error = check_token_ids(*prompt)) return error;
    out.prompts.push_back(token_prompt(*prompt));
  } else if (prompt->is_array() && !prompt->empty()) {
    for (const json& item : *prompt) {
      if (item.is_string()) {
        out.prompts.push_back(Prompt{item.get<std::string>(), count_tokens(item.get<std::string>())});
      } else if (token_list(item)) {
        if (auto error = check_token_ids(item)) return error;
        out.prompts.push_back(token_prompt(item));
      } else {
        return invalid(kShapes, "prompt");
      }
    }
  } else {
    return invalid(kShapes, "prompt");
  }
  out.prompt_text = out.prompts.front().text;
  out.prompt_tokens = out.prompts.front().tokens;
  out.echo_text = out.prompt_text;
  return std::nullopt;
}

std::optional<ApiError> parse_max_tokens(const json& body, const char* field, CompletionRequest& out) {
  auto value = body.find(field);
  if (value == body.end() || value->is_null()) return std::nullopt;
  if (!value->is_number_integer()) return invalid(fmt::format("'{}' must be an integer", field), field);
  int64_t max_tokens = value->get<int64_t>();
  if (max_tokens < 1) return invalid(fmt::format("max_tokens must be at least 1, got {}.", max_tokens), field);
  out.max_tokens = static_cast<int>(std::min<int64_t>(max_tokens, 1 << 30));
  return std::nullopt;
}

std::optional<ApiError> check_sampling_ranges(const json& body);

std::optional<ApiError> parse_sampling(const json& body, CompletionRequest& out) {
  if (out.endpoint == Endpoint::ChatCompletions) {
    if (auto error = parse_max_tokens(body, "max_completion_tokens", out)) return error;
  }
  if (!out.max_tokens) {
    if (auto error = parse_max_tokens(body, "max_tokens", out)) return error;
  }
  if (auto error = check_sampling_ranges(body)) return error;
  if (auto stop = body.find("stop"); stop != body.end() && !stop->is_null()) {
    if (stop->is_string()) {
      out.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& item : *stop) {
        if (!item.is_string()) return invalid("'stop' must be a string or a list of strings", "stop");
        out.stop.push_back(item.get<std::string>());
      }
    } else {
      return invalid("'stop' must be a string or a list of strings", "stop");
    }
    for (const std::string& text : out.stop) {
      if (text.empty()) return invalid("stop cannot contain an empty string.", "stop");
    }
  }
  if (auto seed = body.find("seed"); seed != body.end() && !seed->is_null()) {
    if (!seed->is_number_integer()) return invalid("'seed' must be an integer", "seed");
    out.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : static_cast<uint64_t>(seed->get<int64_t>());
  }
  if (auto n = body.find("n"); n != body.end() && !n->is_null()) {
    if (!n->is_number_integer()) return invalid("'n' must be an integer", "n");
    if (n->get<int64_t>() < 1) return invalid(fmt::format("n must be at least 1, got {}.", n->dump()), "n");
    if (n->get<int64_t>() > 128) return invalid("engine-sim serves at most 128 choices per prompt ('n')", "n");
    out.n = static_cast<int>(n->get<int64_t>());
  }
  if (auto ignore_eos = body.find("ignore_eos"); ignore_eos != body.end() && !ignore_eos->is_null()) {
    if (!ignore_eos->is_boolean()) return invalid("'ignore_eos' must be a boolean", "ignore_eos");
    out.ignore_eos = ignore_eos->get<bool>();
  }
  if (auto stream = body.find("stream"); stream != body.end() && !stream->is_null()) {
    if (!stream->is_boolean()) return invalid("'stream' must be a boolean", "stream");
    out.stream = stream->get<bool>();
  }
  if (auto options = body.find("stream_options"); options != body.end() && !options->is_null()) {
    if (!options->is_object()) return invalid("'stream_options' must be an object", "stream_options");
    // vLLM refuses stream_options that say something ({} is falsy in Python) without stream.
    if (!out.stream && !options->empty()) {
      return invalid("Stream options can only be defined when `stream=True`.", "stream_options");
    }
    auto include_usage = options->find("include_usage");
    out.include_usage = include_usage != options->end() && include_usage->is_boolean() && include_usage->get<bool>();
  }
  return std::nullopt;
}

// vLLM's SamplingParams checks, with its messages; the values themselves do not change the text.
std::optional<ApiError> check_sampling_ranges(const json& body) {
  struct Range {
    const char* field;
    double low;
    double high;
    bool low_open;
    const char* message;  // {} = the value
  };
  static constexpr Range kRanges[] = {
      {"temperature", 0, HUGE_VAL, false, "temperature must be non-negative, got {}."},
      {"top_p", 0, 1, true, "top_p must be in (0, 1], got {}."},
      {"min_p", 0, 1, false, "min_p must be in [0, 1], got {}."},
      {"presence_penalty", -2, 2, false, "presence_penalty must be in [-2, 2], got {}."},
      {"frequency_penalty", -2, 2, false, "frequency_penalty must be in [-2, 2], got {}."},
      {"repetition_penalty", 0, HUGE_VAL, true, "repetition_penalty must be greater than zero, got {}."},
  };
  for (const Range& range : kRanges) {
    auto value = body.find(range.field);
    if (value == body.end() || value->is_null()) continue;
    if (!value->is_number()) return invalid(fmt::format("'{}' must be a number", range.field), range.field);
    double number = value->get<double>();
    bool below = range.low_open ? number <= range.low : number < range.low;
    if (below || number > range.high || std::isnan(number)) {
      return invalid(fmt::format(fmt::runtime(range.message), value->dump()), range.field);
    }
  }
  if (auto top_k = body.find("top_k"); top_k != body.end() && !top_k->is_null()) {
    if (!top_k->is_number_integer()) return invalid("top_k must be an integer", "top_k");
    if (top_k->get<int64_t>() < -1) {
      return invalid(fmt::format("top_k must be 0 (disable), or at least 1, got {}.", top_k->dump()), "top_k");
    }
  }
  return std::nullopt;
}

// Chat: `logprobs` (bool) and `top_logprobs`; completions: `logprobs` (a count) and `echo`.
std::optional<ApiError> parse_logprobs(const json& body, CompletionRequest& out) {
  auto logprobs = body.find("logprobs");
  bool given = logprobs != body.end() && !logprobs->is_null();
  if (out.endpoint == Endpoint::ChatCompletions) {
    if (given && !logprobs->is_boolean()) return invalid("'logprobs' must be a boolean", "logprobs");
    bool wanted = given && logprobs->get<bool>();
    int top = 0;
    if (auto top_logprobs = body.find("top_logprobs"); top_logprobs != body.end() && !top_logprobs->is_null()) {
      if (!top_logprobs->is_number_integer()) return invalid("'top_logprobs' must be an integer", "top_logprobs");
      int64_t value = top_logprobs->get<int64_t>();
      if (value < 0) return invalid("`top_logprobs` must be a positive value.", "top_logprobs");
      if (value > 0 && !wanted) {
        return invalid("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs");
      }
      top = static_cast<int>(std::min<int64_t>(value, 1 << 20));
    }
    if (wanted) out.logprobs = top;
    return std::nullopt;
  }
  if (given) {
    if (!logprobs->is_number_integer()) return invalid("'logprobs' must be an integer", "logprobs");
    if (logprobs->get<int64_t>() < 0) return invalid("`logprobs` must be a positive value.", "logprobs");
    out.logprobs = static_cast<int>(std::min<int64_t>(logprobs->get<int64_t>(), 1 << 20));
  }
  if (auto suffix = body.find("suffix"); suffix != body.end() && !suffix->is_null()) {
    return invalid("suffix is not currently supported", "suffix");  // vLLM's answer
  }
  if (auto echo = body.find("echo"); echo != body.end() && !echo->is_null()) {
    if (!echo->is_boolean()) return invalid("'echo' must be a boolean", "echo");
    out.echo = echo->get<bool>();
  }
  return std::nullopt;
}

// response_format {"type": "text" | "json_object" | "json_schema", "json_schema": {"name",
// "schema", "strict"}}. Read from the body parsed again with its key order kept.
std::optional<ApiError> parse_response_format(std::string_view body, CompletionRequest& out) {
  ordered_json object = ordered_json::parse(body, nullptr, false);
  auto format = object.find("response_format");
  if (format == object.end() || format->is_null()) return std::nullopt;
  constexpr const char* kParam = "response_format";
  if (!format->is_object() || !format->contains("type") || !(*format)["type"].is_string()) {
    return invalid("'response_format' must be an object with a 'type'", kParam);
  }
  std::string type = (*format)["type"].get<std::string>();
  if (type == "text") return std::nullopt;
  if (type == "json_object") {
    out.format = OutputFormat::JsonObject;
    return std::nullopt;
  }
  if (type != "json_schema") {
    return invalid(fmt::format("response_format type must be 'text', 'json_object' or 'json_schema', got '{}'", type),
                   kParam);
  }
  auto spec = format->find("json_schema");
  if (spec == format->end() || !spec->is_object()) {
    return invalid("response_format of type 'json_schema' needs a 'json_schema' object", kParam);
  }
  if (!spec->contains("name") || !(*spec)["name"].is_string()) {
    return invalid("response_format.json_schema.name is required and must be a string", kParam);
  }
  if (spec->contains("strict") && !(*spec)["strict"].is_boolean() && !(*spec)["strict"].is_null()) {
    return invalid("response_format.json_schema.strict must be a boolean", kParam);
  }
  auto schema = spec->find("schema");
  if (schema == spec->end() || schema->is_null()) {
    return invalid("response_format.json_schema.schema is required", kParam);
  }
  if (auto error = schema_error(*schema)) {
    return invalid(fmt::format("Invalid JSON schema in response_format: {}", *error), kParam);
  }
  out.format = OutputFormat::JsonSchema;
  out.schema = *schema;
  return std::nullopt;
}

json identity_json(const CompletionIdentity& identity, bool chunk) {
  const char* object = identity.endpoint == Endpoint::Completions ? "text_completion"
                       : chunk                                    ? "chat.completion.chunk"
                                                                  : "chat.completion";
  return json{{"id", identity.id}, {"object", object}, {"created", identity.created}, {"model", identity.model}};
}

json stop_reason_json(const std::optional<std::string>& stop_reason) {
  return stop_reason ? json(*stop_reason) : json(nullptr);
}

}  // namespace

json error_json(const ApiError& error) {
  return json{{"error",
               {{"message", error.message},
                {"type", error.type},
                {"param", null_or(error.param)},
                {"code", null_or(error.code)}}}};
}

namespace {
// `tools` and `tool_choice` of a chat request: which function the answer calls, if any.
std::optional<ApiError> parse_tools(const json& body, CompletionRequest& out) {
  auto tools = body.find("tools");
  auto choice = body.find("tool_choice");
  bool has_choice = choice != body.end() && !choice->is_null();
  if (tools == body.end() || tools->is_null()) {
    // vLLM: any tool_choice but "none" needs tools ("auto" too).
    if (has_choice && *choice != "none") {
      return invalid("When using `tool_choice`, `tools` must be set.", "tool_choice");
    }
    return std::nullopt;
  }
  if (!tools->is_array()) return invalid("'tools' must be a list", "tools");
  std::vector<std::string> names;
  for (const json& tool : *tools) {
    if (!tool.is_object() || tool.value("type", json()) != "function" || !tool.contains("function") ||
        !tool["function"].is_object() || !tool["function"].contains("name") || !tool["function"]["name"].is_string()) {
      return invalid("each tool must be {\"type\":\"function\",\"function\":{\"name\":...}}", "tools");
    }
    names.push_back(tool["function"]["name"].get<std::string>());
  }
  if (!has_choice) return std::nullopt;
  if (choice->is_string()) {
    std::string mode = choice->get<std::string>();
    if (mode == "required") {
      if (names.empty()) return invalid("tool_choice 'required' needs at least one tool", "tool_choice");
      out.tool_call = names.front();
    } else if (mode != "auto" && mode != "none") {
      return invalid("'tool_choice' must be none, auto, required or a named function", "tool_choice");
    }
    return std::nullopt;
  }
  if (choice->is_object() && choice->contains("function") && (*choice)["function"].is_object() &&
      (*choice)["function"].contains("name") && (*choice)["function"]["name"].is_string()) {
    std::string name = (*choice)["function"]["name"];
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      return invalid("The tool specified in `tool_choice` does not match any of the specified `tools`", "tool_choice");
    }
    out.tool_call = name;
    return std::nullopt;
  }
  return invalid("'tool_choice' must be none, auto, required or a named function", "tool_choice");
}
}  // namespace

std::optional<ApiError> parse_completion_request(Endpoint endpoint, std::string_view body, CompletionRequest& out) {
  out = CompletionRequest{};
  out.endpoint = endpoint;
  Result<json> parsed = parse_json(body);
  if (!parsed) return invalid(parsed.error().message);
  if (!parsed->is_object()) return invalid("the request body must be a JSON object");
  const json& object = *parsed;
  if (auto model = object.find("model"); model != object.end() && !model->is_null()) {
    if (!model->is_string()) return invalid("'model' must be a string", "model");
    out.model = model->get<std::string>();
  }
  auto error = endpoint == Endpoint::ChatCompletions ? parse_messages(object, out) : parse_prompt(object, out);
  if (error) return error;
  if (endpoint == Endpoint::ChatCompletions) {
    if (auto tools_error = parse_tools(object, out)) return tools_error;
  }
  if (auto sampling_error = parse_sampling(object, out)) return sampling_error;
  if (auto logprobs_error = parse_logprobs(object, out)) return logprobs_error;
  if (object.contains("response_format")) return parse_response_format(body, out);
  return std::nullopt;
}

json usage_json(const Usage& usage) {
  return json{{"prompt_tokens", usage.prompt_tokens},
              {"completion_tokens", usage.completion_tokens},
              {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
              {"prompt_tokens_details", usage.details ? json{{"cached_tokens", usage.cached_tokens}} : json(nullptr)}};
}

json role_chunk_json(const CompletionIdentity& identity, int index) {
  json chunk = identity_json(identity, true);
  chunk["choices"] = json::array({json{{"index", index},
                                       {"delta", {{"role", "assistant"}, {"content", ""}}},
                                       {"logprobs", nullptr},
                                       {"finish_reason", nullptr}}});
  return chunk;
}

json chunk_json(const CompletionIdentity& identity, int index, std::string_view text, const FinishReason* finish_reason,
                const std::optional<std::string>& stop_reason, json logprobs) {
  json chunk = identity_json(identity, true);
  json choice = {{"index", index}};
  if (identity.endpoint == Endpoint::ChatCompletions) {
    choice["delta"] = {{"content", text}};
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = std::move(logprobs);
  choice["finish_reason"] = finish_reason ? json(to_string(*finish_reason)) : json(nullptr);
  if (finish_reason) choice["stop_reason"] = stop_reason_json(stop_reason);
  chunk["choices"] = json::array({std::move(choice)});
  return chunk;
}

std::string tool_arguments_piece(std::string_view token, bool first, bool last) {
  std::string quoted = dump_json(json(token));  // the token as a JSON string, quotes included
  std::string piece = first ? "{\"text\":\"" : "";
  piece.append(quoted, 1, quoted.size() - 2);
  if (last) piece += "\"}";
  return piece;
}

std::string tool_arguments(std::string_view text) {
  return tool_arguments_piece(text, true, true);
}

std::string tool_call_id(const CompletionIdentity& identity, int index) {
  std::string id = "call_" + identity.id.substr(std::min<size_t>(identity.id.size(), 9));
  if (index > 0) id += "_" + std::to_string(index);
  return id;
}

json tool_chunk_json(const CompletionIdentity& identity, int index, std::string_view piece, bool first,
                     const FinishReason* finish_reason) {
  json chunk = identity_json(identity, true);
  json call = {{"index", 0}, {"function", {{"arguments", piece}}}};
  if (first) {
    call["id"] = tool_call_id(identity, index);
    call["type"] = "function";
    call["function"]["name"] = identity.tool_call;
  }
  json choice = {{"index", index}, {"delta", {{"tool_calls", json::array({std::move(call)})}}}, {"logprobs", nullptr}};
  choice["finish_reason"] = finish_reason
                                ? json(*finish_reason == FinishReason::Stop ? "tool_calls" : to_string(*finish_reason))
                                : json(nullptr);
  chunk["choices"] = json::array({std::move(choice)});
  return chunk;
}

json tool_finish_chunk_json(const CompletionIdentity& identity, int index, FinishReason finish_reason) {
  json chunk = identity_json(identity, true);
  json choice = {{"index", index},
                 {"delta", json::object()},
                 {"logprobs", nullptr},
                 {"finish_reason", finish_reason == FinishReason::Stop ? "tool_calls" : to_string(finish_reason)}};
  chunk["choices"] = json::array({std::move(choice)});
  return chunk;
}

namespace {

json bytes_of(std::string_view token) {
  json bytes = json::array();
  for (unsigned char c : token) bytes.push_back(static_cast<int>(c));
  return bytes;
}

// vLLM floors logprobs at -9999 so that JSON never carries -inf.
double shown(double logprob) {
  return std::max(logprob, -9999.0);
}

json chat_logprobs_json(const Generation& generation, int top, size_t first, size_t last) {
  json content = json::array();
  for (size_t index = first; index < last && index < generation.logprobs.size(); ++index) {
    const TokenLogprob& entry = generation.logprobs[index];
    const std::string& token = generation.tokens[index];
    json alternatives = json::array();
    for (size_t rank = 0; rank < entry.top.size() && static_cast<int>(rank) < top; ++rank) {
      const auto& [text, logprob] = entry.top[rank];
      // The chosen token's text is what was emitted (a stop string may have shortened it).
      const std::string& shown_text = rank == 0 ? token : text;
      alternatives.push_back(json{{"token", shown_text}, {"logprob", shown(logprob)}, {"bytes", bytes_of(shown_text)}});
    }
    content.push_back(json{{"token", token},
                           {"logprob", shown(entry.logprob)},
                           {"bytes", bytes_of(token)},
                           {"top_logprobs", std::move(alternatives)}});
  }
  return json{{"content", std::move(content)}};
}

void append_completion_logprob(json& out, const std::string& token, const TokenLogprob* entry, size_t offset) {
  out["tokens"].push_back(token);
  out["text_offset"].push_back(offset);
  if (!entry) {
    out["token_logprobs"].push_back(nullptr);
    out["top_logprobs"].push_back(nullptr);
    return;
  }
  out["token_logprobs"].push_back(shown(entry->logprob));
  json alternatives = json::object();
  for (size_t rank = 0; rank < entry->top.size(); ++rank) {
    const std::string& text = rank == 0 ? token : entry->top[rank].first;
    if (!alternatives.contains(text)) alternatives[text] = shown(entry->top[rank].second);
  }
  out["top_logprobs"].push_back(std::move(alternatives));
}

json completion_logprobs_json(const Generation& generation, size_t first, size_t last, bool with_echo) {
  json out = {{"tokens", json::array()},
              {"token_logprobs", json::array()},
              {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  size_t offset = 0;
  for (size_t index = 0; index < generation.echo_tokens.size(); ++index) {
    const std::string& token = generation.echo_tokens[index];
    if (with_echo) {
      const TokenLogprob* entry =
          index == 0 || index - 1 >= generation.echo_logprobs.size() ? nullptr : &generation.echo_logprobs[index - 1];
      append_completion_logprob(out, token, entry, offset);
    }
    offset += token.size();
  }
  for (size_t index = 0; index < last && index < generation.tokens.size(); ++index) {
    const std::string& token = generation.tokens[index];
    if (index >= first && index < generation.logprobs.size()) {
      append_completion_logprob(out, token, &generation.logprobs[index], offset);
    }
    offset += token.size();
  }
  return out;
}

}  // namespace

json logprobs_json(Endpoint endpoint, const Generation& generation, int top, size_t first, size_t last,
                   bool with_echo) {
  if (endpoint == Endpoint::ChatCompletions) return chat_logprobs_json(generation, top, first, last);
  return completion_logprobs_json(generation, first, last, with_echo);
}

json usage_chunk_json(const CompletionIdentity& identity, const Usage& usage) {
  json chunk = identity_json(identity, true);
  chunk["choices"] = json::array();
  chunk["usage"] = usage_json(usage);
  return chunk;
}

json completion_json(const CompletionIdentity& identity, const std::vector<Generation>& generations,
                     const Usage& usage) {
  json response = identity_json(identity, false);
  json choices = json::array();
  for (size_t index = 0; index < generations.size(); ++index) {
    const Generation& generation = generations[index];
    json choice = {{"index", index}};
    bool calls = identity.endpoint == Endpoint::ChatCompletions && !identity.tool_call.empty();
    if (calls) {
      json call = {{"id", tool_call_id(identity, static_cast<int>(index))},
                   {"type", "function"},
                   {"function", {{"name", identity.tool_call}, {"arguments", tool_arguments(generation.text())}}}};
      choice["message"] = {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", json::array({call})}};
    } else if (identity.endpoint == Endpoint::ChatCompletions) {
      choice["message"] = {{"role", "assistant"}, {"content", generation.text()}};
    } else {
      choice["text"] = generation.echo_text() + generation.text();
    }
    choice["logprobs"] = identity.logprobs && !calls ? logprobs_json(identity.endpoint, generation, *identity.logprobs,
                                                                     0, generation.tokens.size(), true)
                                                     : json(nullptr);
    choice["finish_reason"] =
        calls && generation.finish_reason == FinishReason::Stop ? "tool_calls" : to_string(generation.finish_reason);
    choice["stop_reason"] = stop_reason_json(generation.stop_reason);
    choices.push_back(std::move(choice));
  }
  response["choices"] = std::move(choices);
  response["usage"] = usage_json(usage);
  return response;
}

TokenEventFormatter::TokenEventFormatter(const CompletionIdentity& identity, int index) {
  // The members chunk_json() has (nlohmann orders them alphabetically; the text goes first here).
  std::string identity_members = dump_json(identity_json(identity, true));  // {"created":..,"object":..}
  identity_members = identity_members.substr(1, identity_members.size() - 2);
  std::string choice_rest = fmt::format("\"finish_reason\":null,\"index\":{},\"logprobs\":null}}],", index);
  if (identity.endpoint == Endpoint::ChatCompletions) {
    prefix_ = "data: {\"choices\":[{\"delta\":{\"content\":";
    suffix_ = "}," + choice_rest;
  } else {
    prefix_ = "data: {\"choices\":[{\"text\":";
    suffix_ = "," + choice_rest;
  }
  suffix_ += identity_members + "}\n\n";
}

void TokenEventFormatter::append(std::string& out, std::string_view text) const {
  out += prefix_;
  bool plain = true;
  for (unsigned char c : text) {
    if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\') {
      plain = false;
      break;
    }
  }
  if (plain) {
    out += '"';
    out += text;
    out += '"';
  } else {
    out += dump_json(json(text));
  }
  out += suffix_;
}

namespace {

std::optional<ApiError> read_model(const json& object, std::string& model) {
  if (auto it = object.find("model"); it != object.end() && !it->is_null()) {
    if (!it->is_string()) return invalid("'model' must be a string", "model");
    model = it->get<std::string>();
  }
  return std::nullopt;
}

std::string token_ids_text(const json& ids) {
  std::string text;
  for (const json& id : ids) {
    if (!text.empty()) text += ' ';
    text += std::to_string(id.get<int64_t>());
  }
  return text;
}

bool all_integers(const json& list) {
  for (const json& item : list) {
    if (!item.is_number_integer()) return false;
  }
  return true;
}

uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::string base64(const unsigned char* data, size_t size) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((size + 2) / 3 * 4);
  for (size_t i = 0; i < size; i += 3) {
    uint32_t chunk = static_cast<uint32_t>(data[i]) << 16;
    if (i + 1 < size) chunk |= static_cast<uint32_t>(data[i + 1]) << 8;
    if (i + 2 < size) chunk |= data[i + 2];
    out += kAlphabet[(chunk >> 18) & 63];
    out += kAlphabet[(chunk >> 12) & 63];
    out += i + 1 < size ? kAlphabet[(chunk >> 6) & 63] : '=';
    out += i + 2 < size ? kAlphabet[chunk & 63] : '=';
  }
  return out;
}

}  // namespace

std::optional<ApiError> parse_embedding_request(std::string_view body, EmbeddingRequest& out) {
  out = EmbeddingRequest{};
  Result<json> parsed = parse_json(body);
  if (!parsed) return invalid(parsed.error().message);
  if (!parsed->is_object()) return invalid("the request body must be a JSON object");
  const json& object = *parsed;
  if (auto error = read_model(object, out.model)) return error;
  auto input = object.find("input");
  if (input == object.end() || input->is_null()) return invalid("'input' is required", "input");
  auto add = [&out](std::string text, int tokens) {
    out.inputs.push_back(std::move(text));
    out.input_tokens.push_back(tokens);
  };
  if (input->is_string()) {
    add(input->get<std::string>(), count_tokens(input->get<std::string>()));
  } else if (input->is_array() && !input->empty() && all_integers(*input)) {
    add(token_ids_text(*input), static_cast<int>(input->size()));
  } else if (input->is_array() && !input->empty()) {
    for (const json& item : *input) {
      if (item.is_string()) {
        add(item.get<std::string>(), count_tokens(item.get<std::string>()));
      } else if (item.is_array() && !item.empty() && all_integers(item)) {
        add(token_ids_text(item), static_cast<int>(item.size()));
      } else {
        return invalid("'input' must be a string, a list of strings, or token ids", "input");
      }
    }
  } else {
    return invalid("'input' must be a string, a list of strings, or token ids", "input");
  }
  if (auto format = object.find("encoding_format"); format != object.end() && !format->is_null()) {
    if (*format == "base64") {
      out.base64 = true;
    } else if (*format != "float") {
      return invalid("'encoding_format' must be \"float\" or \"base64\"", "encoding_format");
    }
  }
  if (auto dimensions = object.find("dimensions"); dimensions != object.end() && !dimensions->is_null()) {
    if (!dimensions->is_number_integer() || dimensions->get<int64_t>() < 1 || dimensions->get<int64_t>() > 65536) {
      return invalid("'dimensions' must be a positive integer", "dimensions");
    }
    out.dimensions = static_cast<int>(dimensions->get<int64_t>());
  }
  return std::nullopt;
}

std::vector<float> embedding_vector(std::string_view text, int dimensions) {
  uint64_t state = 0xcbf29ce484222325ULL;
  for (unsigned char c : text) {
    state ^= c;
    state *= 0x100000001b3ULL;
  }
  std::vector<float> vector(static_cast<size_t>(std::max(dimensions, 1)));
  double norm = 0;
  for (float& value : vector) {
    value = static_cast<float>(static_cast<double>(splitmix(state) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
    norm += static_cast<double>(value) * value;
  }
  float scale = norm > 0 ? static_cast<float>(1.0 / std::sqrt(norm)) : 1.0f;
  for (float& value : vector) value *= scale;
  return vector;
}

json embedding_json(const std::vector<float>& vector, int index, bool base64_format) {
  json item = {{"object", "embedding"}, {"index", index}};
  if (base64_format) {
    // Little-endian float32, as OpenAI and vLLM send it.
    std::string bytes(vector.size() * 4, '\0');
    for (size_t i = 0; i < vector.size(); ++i) {
      uint32_t bits;
      std::memcpy(&bits, &vector[i], 4);
      for (int b = 0; b < 4; ++b) bytes[i * 4 + b] = static_cast<char>((bits >> (8 * b)) & 0xff);
    }
    item["embedding"] = base64(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  } else {
    item["embedding"] = vector;
  }
  return item;
}

std::optional<ApiError> parse_tokenize_request(std::string_view body, TokenizeRequest& out) {
  out = TokenizeRequest{};
  Result<json> parsed = parse_json(body);
  if (!parsed) return invalid(parsed.error().message);
  if (!parsed->is_object()) return invalid("the request body must be a JSON object");
  const json& object = *parsed;
  if (auto error = read_model(object, out.model)) return error;
  CompletionRequest request;
  std::optional<ApiError> error;
  if (auto content = object.find("content"); content != object.end() && content->is_string()) {
    out.text = content->get<std::string>();  // llama.cpp's shape
    return std::nullopt;
  }
  if (object.contains("messages")) {
    request.endpoint = Endpoint::ChatCompletions;
    error = parse_messages(object, request);
  } else {
    request.endpoint = Endpoint::Completions;
    error = parse_prompt(object, request);
  }
  if (error) return error;
  out.text = request.prompt_text;
  return std::nullopt;
}

std::string dump_json(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace nebula::sim
