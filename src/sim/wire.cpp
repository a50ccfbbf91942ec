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
  if (auto n = body.find("n"); n != body.end() && !n->is_null()) {
    if (!n->is_number_integer() || n->get<int64_t>() < 1 || n->get<int64_t>() > 128) {
      return invalid("'n' must be an integer from 1 to 128", "n");
    }
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
  if (tools == body.end() || tools->is_null()) return std::nullopt;
  if (!tools->is_array()) return invalid("'tools' must be a list", "tools");
  std::vector<std::string> names;
  for (const json& tool : *tools) {
    if (!tool.is_object() || tool.value("type", json()) != "function" || !tool.contains("function") ||
        !tool["function"].is_object() || !tool["function"].contains("name") || !tool["function"]["name"].is_string()) {
      return invalid("each tool must be {\"type\":\"function\",\"function\":{\"name\":...}}", "tools");
    }
    names.push_back(tool["function"]["name"].get<std::string>());
  }
  auto choice = body.find("tool_choice");
  if (choice == body.end() || choice->is_null()) return std::nullopt;
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
      return invalid("tool_choice names a function that is not in 'tools': " + name, "tool_choice");
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
  return parse_sampling(object, out);
}

json usage_json(const Usage& usage) {
  return json{{"prompt_tokens", usage.prompt_tokens},
              {"completion_tokens", usage.completion_tokens},
              {"total_tokens", usage.prompt_tokens + usage.completion_tokens},
              {"prompt_tokens_details", {{"cached_tokens", usage.cached_tokens}}}};
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
                const std::optional<std::string>& stop_reason) {
  json chunk = identity_json(identity, true);
  json choice = {{"index", index}};
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
      choice["text"] = generation.text();
    }
    choice["logprobs"] = nullptr;
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
