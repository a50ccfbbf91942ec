#include "gateway/responses.h"

#include <fmt/format.h>

#include "common/ids.h"
#include "gateway/request_json.h"
#include "http/sse.h"

namespace nebula::gateway {

namespace {
// Content of a Responses message item: a string, or parts of type input_text/output_text.
Result<std::string> item_text(const json& content) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array())
    return make_error(ErrorCode::InvalidArgument, "input item content must be a string or a list");
  std::string text;
  for (const auto& part : content) {
    if (!part.is_object() || !part.contains("text") || !part["text"].is_string()) {
      return make_error(ErrorCode::InvalidArgument, "only text content parts are supported in input items");
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

// A string field, `fallback` when absent; an error naming it when it is of another type (a
// client's body, so never an exception).
Result<std::string> string_field(const json& object, const char* name, const std::string& fallback) {
  auto value = object.find(name);
  if (value == object.end() || value->is_null()) return fallback;
  if (!value->is_string()) return make_error(ErrorCode::InvalidArgument, fmt::format("'{}' must be a string", name));
  return value->get<std::string>();
}
}  // namespace

Result<json> responses_to_chat(const json& request) {
  json chat = json::object();
  json messages = json::array();
  if (request.contains("instructions") && request["instructions"].is_string()) {
    messages.push_back({{"role", "system"}, {"content", request["instructions"]}});
  }
  auto input = request.find("input");
  if (input == request.end()) return make_error(ErrorCode::InvalidArgument, "'input' is required");
  if (input->is_string()) {
    messages.push_back({{"role", "user"}, {"content", *input}});
  } else if (input->is_array()) {
    for (const auto& item : *input) {
      if (!item.is_object()) return make_error(ErrorCode::InvalidArgument, "each input item must be an object");
      auto type = string_field(item, "type", "message");
      if (!type) return type.error();
      if (*type != "message") {
        return make_error(ErrorCode::InvalidArgument, "unsupported input item type '" + *type + "'");
      }
      auto text = item_text(item.value("content", json()));
      if (!text) return text.error();
      auto role = string_field(item, "role", "user");
      if (!role) return role.error();
      messages.push_back({{"role", *role}, {"content", *text}});
    }
  } else {
    return make_error(ErrorCode::InvalidArgument, "'input' must be a string or a list of items");
  }
  auto model = string_field(request, "model", "");
  if (!model) return model.error();
  chat["model"] = *model;
  chat["messages"] = std::move(messages);
  if (request.contains("max_output_tokens")) chat["max_tokens"] = request["max_output_tokens"];
  for (const char* field : {"temperature", "top_p", "seed", "stop", "user", "frequency_penalty", "presence_penalty"}) {
    if (request.contains(field)) chat[field] = request[field];
  }
  auto stream_field = request.find("stream");
  bool stream = stream_field != request.end() && stream_field->is_boolean() && stream_field->get<bool>();
  chat["stream"] = stream;
  if (stream) chat["stream_options"] = {{"include_usage", true}};
  return chat;
}

json responses_usage(const json& chat_usage) {
  int64_t input = usage_tokens(chat_usage, "prompt_tokens");
  int64_t output = usage_tokens(chat_usage, "completion_tokens");
  return {{"input_tokens", input}, {"output_tokens", output}, {"total_tokens", input + output}};
}

namespace {
json message_item(const std::string& item_id, const std::string& status, const std::string& text, bool with_text) {
  json content = json::array();
  if (with_text) content.push_back({{"type", "output_text"}, {"text", text}, {"annotations", json::array()}});
  return {{"type", "message"}, {"id", item_id}, {"status", status}, {"role", "assistant"}, {"content", content}};
}

// A chat finish_reason as a Responses status and incomplete_details: an answer cut by the token
// limit or by a content filter is "incomplete", as OpenAI reports it.
std::pair<std::string, json> response_status(const std::string& finish_reason) {
  if (finish_reason == "length") return {"incomplete", {{"reason", "max_output_tokens"}}};
  if (finish_reason == "content_filter") return {"incomplete", {{"reason", "content_filter"}}};
  return {"completed", nullptr};
}
}  // namespace

json chat_to_response(const json& completion, const std::string& response_id, const std::string& model,
                      int64_t created_s) {
  std::string text;
  std::string finish_reason;
  if (completion.contains("choices") && completion["choices"].is_array() && !completion["choices"].empty()) {
    const auto& choice = completion["choices"][0];
    const json message = choice.is_object() ? choice.value("message", json::object()) : json::object();
    if (message.contains("content") && message["content"].is_string()) text = message["content"];
    if (choice.contains("finish_reason") && choice["finish_reason"].is_string())
      finish_reason = choice["finish_reason"];
  }
  auto [status, details] = response_status(finish_reason);
  return {{"id", response_id},
          {"object", "response"},
          {"created_at", created_s},
          {"status", status},
          {"incomplete_details", details},
          {"model", model},
          {"output", json::array({message_item("msg_" + random_id(24), status, text, true)})},
          {"usage", responses_usage(completion.value("usage", json()))}};
}

ResponsesStream::ResponsesStream(std::string response_id, std::string model, int64_t created_s)
    : id_(std::move(response_id)), item_id_("msg_" + random_id(24)), model_(std::move(model)), created_s_(created_s) {}

std::string ResponsesStream::event(const std::string& type, json body) {
  body["type"] = type;
  body["sequence_number"] = sequence_++;
  return http::format_sse(body.dump(-1, ' ', false, json::error_handler_t::replace), type);
}

json ResponsesStream::response_object(const std::string& status, const json& usage) const {
  json output = json::array();
  if (status != "in_progress") output.push_back(message_item(item_id_, status, text_, true));
  json response = {{"id", id_},        {"object", "response"}, {"created_at", created_s_},
                   {"status", status}, {"model", model_},      {"output", output}};
  response["incomplete_details"] = status == "incomplete" ? response_status(finish_reason_).second : json(nullptr);
  response["usage"] = usage.is_null() ? json(nullptr) : usage;
  return response;
}

std::string ResponsesStream::begin() {
  std::string out = event("response.created", {{"response", response_object("in_progress", nullptr)}});
  out += event("response.in_progress", {{"response", response_object("in_progress", nullptr)}});
  out += event("response.output_item.added",
               {{"output_index", 0}, {"item", message_item(item_id_, "in_progress", "", false)}});
  out += event("response.content_part.added",
               {{"item_id", item_id_},
                {"output_index", 0},
                {"content_index", 0},
                {"part", {{"type", "output_text"}, {"text", ""}, {"annotations", json::array()}}}});
  return out;
}

std::string ResponsesStream::delta(const std::string& text) {
  if (text.empty()) return {};
  text_ += text;
  return event("response.output_text.delta",
               {{"item_id", item_id_}, {"output_index", 0}, {"content_index", 0}, {"delta", text}});
}

std::string ResponsesStream::end(const json& chat_usage) {
  std::string out = event("response.output_text.done",
                          {{"item_id", item_id_}, {"output_index", 0}, {"content_index", 0}, {"text", text_}});
  out += event("response.content_part.done",
               {{"item_id", item_id_},
                {"output_index", 0},
                {"content_index", 0},
                {"part", {{"type", "output_text"}, {"text", text_}, {"annotations", json::array()}}}});
  std::string status = response_status(finish_reason_).first;
  out +=
      event("response.output_item.done", {{"output_index", 0}, {"item", message_item(item_id_, status, text_, true)}});
  // response.completed, or response.incomplete when the answer was cut short.
  out += event("response." + status, {{"response", response_object(status, responses_usage(chat_usage))}});
  return out;
}

}  // namespace nebula::gateway
