#include "sim/wire.h"

#include <fmt/format.h>

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

std::optional<ApiError> parse_messages(const json& body, CompletionRequest& out) {
  auto messages = body.find("messages");
  if (messages == body.end() || messages->is_null()) return invalid("'messages' is required", "messages");
  if (!messages->is_array() || messages->empty()) {
    return invalid("'messages' must be a non-empty list of messages", "messages");
  }
  for (const json& message : *messages) {
    if (!message.is_object() || !message.contains("role") || !message["role"].is_string()) {
      return invalid("each message must be an object with a string 'role'", "messages");
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

std::optional<ApiError> parse_prompt(const json& body, CompletionRequest& out) {
  auto prompt = body.find("prompt");
  if (prompt == body.end() || prompt->is_null()) return invalid("'prompt' is required", "prompt");
  const json* single = &*prompt;
  if (prompt->is_array()) {
    bool token_ids = !prompt->empty() && (*prompt)[0].is_number_integer();
    if (!token_ids) {
      if (prompt->size() != 1) return invalid("engine-sim accepts exactly one prompt per request", "prompt");
      single = &(*prompt)[0];
    }
  }
  if (single->is_string()) {
    out.prompt_text = single->get<std::string>();
    out.prompt_tokens = count_tokens(out.prompt_text);
  } else if (single->is_array() && !single->empty()) {
    // Token ids: one token each; echo mode repeats them as numbers.
    for (const json& token : *single) {
      if (!token.is_number_integer()) return invalid("a token-id prompt must be a list of integers", "prompt");
      if (!out.prompt_text.empty()) out.prompt_text += ' ';
      out.prompt_text += std::to_string(token.get<int64_t>());
    }
    out.prompt_tokens = static_cast<int>(single->size());
  } else {
    return invalid("'prompt' must be a string, a list of one string, or a list of token ids", "prompt");
  }
  out.echo_text = out.prompt_text;
  return std::nullopt;
}

std::optional<ApiError> parse_max_tokens(const json& body, const char* field, CompletionRequest& out) {
  auto value = body.find(field);
  if (value == body.end() || value->is_null()) return std::nullopt;
  if (!value->is_number_integer()) return invalid(fmt::format("'{}' must be an integer", field), field);
  int64_t max_tokens = value->get<int64_t>();
  if (max_tokens < 1) return invalid(fmt::format("'{}' must be at least 1, got {}", field, max_tokens), field);
  out.max_tokens = static_cast<int>(std::min<int64_t>(max_tokens, 1 << 30));
  return std::nullopt;
}

std::optional<ApiError> parse_sampling(const json& body, CompletionRequest& out) {
  if (out.endpoint == Endpoint::ChatCompletions) {
    if (auto error = parse_max_tokens(body, "max_completion_tokens", out)) return error;
  }
  if (!out.max_tokens) {
    if (auto error = parse_max_tokens(body, "max_tokens", out)) return error;
  }
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
  }
  if (auto seed = body.find("seed"); seed != body.end() && !seed->is_null()) {
    if (!seed->is_number_integer()) return invalid("'seed' must be an integer", "seed");
    out.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : static_cast<uint64_t>(seed->get<int64_t>());
  }
  if (auto n = body.find("n"); n != body.end() && !n->is_null() && *n != 1) {
    return invalid("engine-sim supports only n=1", "n");
  }
  if (auto stream = body.find("stream"); stream != body.end() && !stream->is_null()) {
    if (!stream->is_boolean()) return invalid("'stream' must be a boolean", "stream");
    out.stream = stream->get<bool>();
  }
  if (auto options = body.find("stream_options"); options != body.end() && options->is_object()) {
    auto include_usage = options->find("include_usage");
    out.include_usage = include_usage != options->end() && include_usage->is_boolean() && include_usage->get<bool>();
  }
  return std::nullopt;
}

json identity_json(const CompletionIdentity& identity, bool chunk) {
  const char* object = identity.endpoint == Endpoint::Completions ? "text_completion"
                       : chunk                                    ? "chat.completion.chunk"
                                                                  : "chat.completion";
  return json{{"id", identity.id}, {"object", object}, {"created", identity.created}, {"model", identity.model}};
}

json usage_json(const Usage& usage) {
  return json{{"prompt_tokens", usage.prompt_tokens},
              {"completion_tokens", usage.completion_tokens},
              {"total_tokens", usage.prompt_tokens + usage.completion_tokens}};
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
  return parse_sampling(object, out);
}

json role_chunk_json(const CompletionIdentity& identity) {
  json chunk = identity_json(identity, true);
  chunk["choices"] = json::array({json{{"index", 0},
                                       {"delta", {{"role", "assistant"}, {"content", ""}}},
                                       {"logprobs", nullptr},
                                       {"finish_reason", nullptr}}});
  return chunk;
}

json chunk_json(const CompletionIdentity& identity, std::string_view text, const FinishReason* finish_reason,
                const std::optional<std::string>& stop_reason) {
  json chunk = identity_json(identity, true);
  json choice = {{"index", 0}};
  if (identity.endpoint == Endpoint::ChatCompletions) {
    choice["delta"] = {{"content", text}};
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = finish_reason ? json(to_string(*finish_reason)) : json(nullptr);
  if (finish_reason) choice["stop_reason"] = stop_reason_json(stop_reason);
  chunk["choices"] = json::array({std::move(choice)});
  return chunk;
}

json usage_chunk_json(const CompletionIdentity& identity, const Usage& usage) {
  json chunk = identity_json(identity, true);
  chunk["choices"] = json::array();
  chunk["usage"] = usage_json(usage);
  return chunk;
}

json completion_json(const CompletionIdentity& identity, const Generation& generation, const Usage& usage) {
  json response = identity_json(identity, false);
  json choice = {{"index", 0}};
  if (identity.endpoint == Endpoint::ChatCompletions) {
    choice["message"] = {{"role", "assistant"}, {"content", generation.text()}};
  } else {
    choice["text"] = generation.text();
  }
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = to_string(generation.finish_reason);
  choice["stop_reason"] = stop_reason_json(generation.stop_reason);
  response["choices"] = json::array({std::move(choice)});
  response["usage"] = usage_json(usage);
  return response;
}

std::string dump_json(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace nebula::sim
