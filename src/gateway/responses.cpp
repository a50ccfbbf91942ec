#include "gateway/responses.h"

#include <fmt/format.h>

#include <algorithm>

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

namespace {
// Responses `tools` as chat `tools`: function tools only (the hosted tools, web search and the
// like, are OpenAI's services, not an engine's).
Result<json> chat_tools(const json& tools) {
  if (!tools.is_array()) return make_error(ErrorCode::InvalidArgument, "'tools' must be a list");
  json out = json::array();
  for (const auto& tool : tools) {
    if (!tool.is_object()) return make_error(ErrorCode::InvalidArgument, "each tool must be an object");
    auto type = string_field(tool, "type", "");
    if (!type) return type.error();
    if (*type != "function") {
      return make_error(ErrorCode::InvalidArgument, "unsupported tool type '" + *type + "' (only function tools)");
    }
    auto name = string_field(tool, "name", "");
    if (!name) return name.error();
    if (name->empty()) return make_error(ErrorCode::InvalidArgument, "a function tool needs a 'name'");
    json function = {{"name", *name}};
    for (const char* field : {"description", "parameters", "strict"}) {
      if (tool.contains(field) && !tool[field].is_null()) function[field] = tool[field];
    }
    out.push_back({{"type", "function"}, {"function", std::move(function)}});
  }
  return out;
}

// tool_choice: "auto", "none" and "required" as they are; {"type":"function","name":N} as chat's
// {"type":"function","function":{"name":N}}.
Result<json> chat_tool_choice(const json& choice) {
  if (choice.is_string()) return choice;
  if (choice.is_object() && choice.value("type", json()) == "function" && choice.contains("name") &&
      choice["name"].is_string()) {
    return json{{"type", "function"}, {"function", {{"name", choice["name"]}}}};
  }
  return make_error(ErrorCode::InvalidArgument,
                    "'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"name\":...}");
}

// text.format as chat's response_format: json_schema and json_object; "text" is the default.
Result<json> chat_response_format(const json& text) {
  if (!text.is_object() || !text.contains("format")) return json();
  const json& format = text["format"];
  auto type = format.is_object() ? string_field(format, "type", "text") : Result<std::string>(std::string("?"));
  if (!type) return type.error();
  if (*type == "text") return json();
  if (*type == "json_object") return json{{"type", "json_object"}};
  if (*type == "json_schema") {
    json schema = {{"name", format.value("name", json("response"))}};
    for (const char* field : {"schema", "strict", "description"}) {
      if (format.contains(field)) schema[field] = format[field];
    }
    return json{{"type", "json_schema"}, {"json_schema", std::move(schema)}};
  }
  return make_error(ErrorCode::InvalidArgument, "unsupported text.format; use text, json_object or json_schema");
}

}  // namespace

Result<json> responses_to_chat(const json& request) {
  if (!request.is_object()) return make_error(ErrorCode::InvalidArgument, "the request body must be a JSON object");
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
      if (*type == "function_call") {
        // A call the model made earlier: consecutive calls are one assistant turn.
        auto call_id = string_field(item, "call_id", "");
        auto name = string_field(item, "name", "");
        auto arguments = string_field(item, "arguments", "{}");
        for (const auto* field : {&call_id, &name, &arguments}) {
          if (!*field) return field->error();
        }
        if (call_id->empty() || name->empty()) {
          return make_error(ErrorCode::InvalidArgument, "a function_call item needs 'call_id' and 'name'");
        }
        json call = {
            {"id", *call_id}, {"type", "function"}, {"function", {{"name", *name}, {"arguments", *arguments}}}};
        if (messages.empty() || messages.back().value("role", "") != "assistant" ||
            !messages.back().contains("tool_calls")) {
          messages.push_back({{"role", "assistant"}, {"content", nullptr}, {"tool_calls", json::array()}});
        }
        messages.back()["tool_calls"].push_back(std::move(call));
        continue;
      }
      if (*type == "function_call_output") {
        auto call_id = string_field(item, "call_id", "");
        if (!call_id) return call_id.error();
        if (call_id->empty())
          return make_error(ErrorCode::InvalidArgument, "a function_call_output item needs 'call_id'");
        auto output = item_text(item.value("output", json("")));  // a string, or text parts
        if (!output) return output.error();
        messages.push_back({{"role", "tool"}, {"tool_call_id", *call_id}, {"content", *output}});
        continue;
      }
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
  for (const char* field : {"temperature", "top_p", "seed", "stop", "user", "frequency_penalty", "presence_penalty",
                            "parallel_tool_calls"}) {
    if (request.contains(field)) chat[field] = request[field];
  }
  if (request.contains("tools") && !request["tools"].is_null()) {
    auto tools = chat_tools(request["tools"]);
    if (!tools) return tools.error();
    if (!tools->empty()) chat["tools"] = std::move(*tools);
  }
  if (request.contains("tool_choice") && !request["tool_choice"].is_null()) {
    auto choice = chat_tool_choice(request["tool_choice"]);
    if (!choice) return choice.error();
    chat["tool_choice"] = std::move(*choice);
  }
  if (request.contains("text")) {
    auto format = chat_response_format(request["text"]);
    if (!format) return format.error();
    if (!format->is_null()) chat["response_format"] = std::move(*format);
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
  int64_t cached = 0;
  int64_t reasoning = 0;
  if (chat_usage.is_object()) {
    if (auto details = chat_usage.find("prompt_tokens_details"); details != chat_usage.end()) {
      cached = usage_tokens(*details, "cached_tokens");
    }
    if (auto details = chat_usage.find("completion_tokens_details"); details != chat_usage.end()) {
      reasoning = usage_tokens(*details, "reasoning_tokens");
    }
  }
  return {{"input_tokens", input},
          {"input_tokens_details", {{"cached_tokens", cached}}},
          {"output_tokens", output},
          {"output_tokens_details", {{"reasoning_tokens", reasoning}}},
          {"total_tokens", input + output}};
}

json response_echo(const json& request) {
  const json fields = request.is_object() ? request : json::object();
  auto field = [&fields](const char* name, json fallback) {
    auto value = fields.find(name);
    return value == fields.end() || value->is_null() ? fallback : *value;
  };
  json text = field("text", json::object());
  if (!text.is_object()) text = json::object();
  if (!text.contains("format") || !text["format"].is_object()) text["format"] = {{"type", "text"}};
  json metadata = field("metadata", json::object());
  return {{"instructions", field("instructions", nullptr)},
          {"tools", field("tools", json::array())},
          {"tool_choice", field("tool_choice", "auto")},
          {"parallel_tool_calls", field("parallel_tool_calls", true)},
          {"temperature", field("temperature", 1.0)},
          {"top_p", field("top_p", 1.0)},
          {"metadata", metadata.is_object() ? metadata : json::object()},
          {"previous_response_id", field("previous_response_id", nullptr)},
          {"store", field("store", true)},
          {"text", std::move(text)},
          {"max_output_tokens", field("max_output_tokens", nullptr)},
          {"background", field("background", false)},
          {"truncation", field("truncation", "disabled")},
          {"user", field("user", nullptr)},
          {"reasoning", {{"effort", nullptr}, {"summary", nullptr}}},
          {"error", nullptr}};
}

namespace {
// A message's text part, as output items and the content_part events carry it.
json text_part(const std::string& text) {
  return {{"type", "output_text"}, {"text", text}, {"annotations", json::array()}};
}

json message_item(const std::string& item_id, const std::string& status, const std::string& text, bool with_text) {
  json content = json::array();
  if (with_text) content.push_back(text_part(text));
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

namespace {
json function_call_item(const std::string& item_id, const std::string& call_id, const std::string& name,
                        const std::string& arguments, const std::string& status) {
  return {{"type", "function_call"}, {"id", item_id},   {"call_id", call_id}, {"name", name},
          {"arguments", arguments},  {"status", status}};
}

// A string member of a json object, "" when absent or not a string (an engine's answer).
std::string string_of(const json& object, const char* name) {
  if (!object.is_object()) return {};
  auto value = object.find(name);
  return value != object.end() && value->is_string() ? value->get<std::string>() : std::string();
}
}  // namespace

json chat_to_response(const json& completion, const std::string& response_id, const std::string& model,
                      int64_t created_s, const json& request) {
  std::string text;
  std::string finish_reason;
  json calls = json::array();
  if (completion.contains("choices") && completion["choices"].is_array() && !completion["choices"].empty()) {
    const auto& choice = completion["choices"][0];
    const json message = choice.is_object() ? choice.value("message", json::object()) : json::object();
    if (message.contains("content") && message["content"].is_string()) text = message["content"];
    if (choice.contains("finish_reason") && choice["finish_reason"].is_string())
      finish_reason = choice["finish_reason"];
    if (message.contains("tool_calls") && message["tool_calls"].is_array()) calls = message["tool_calls"];
  }
  auto [status, details] = response_status(finish_reason);
  json output = json::array();
  // The model's text, when it wrote any or called nothing; then each function call, as an item.
  if (!text.empty() || calls.empty()) output.push_back(message_item("msg_" + random_id(24), status, text, true));
  for (const auto& call : calls) {
    const json function = call.is_object() ? call.value("function", json::object()) : json::object();
    std::string call_id = string_of(call, "id");
    if (call_id.empty()) call_id = "call_" + random_id(24);
    output.push_back(function_call_item("fc_" + random_id(24), call_id, string_of(function, "name"),
                                        string_of(function, "arguments"), "completed"));
  }
  json response = response_echo(request);
  response.update({{"id", response_id},
                   {"object", "response"},
                   {"created_at", created_s},
                   {"status", status},
                   {"incomplete_details", details},
                   {"model", model},
                   {"output", std::move(output)},
                   {"usage", responses_usage(completion.value("usage", json()))}});
  return response;
}

ResponsesStream::ResponsesStream(std::string response_id, std::string model, int64_t created_s, json request)
    : id_(std::move(response_id)),
      item_id_("msg_" + random_id(24)),
      model_(std::move(model)),
      created_s_(created_s),
      echo_(response_echo(request)) {}

std::string ResponsesStream::event(const std::string& type, json body) {
  body["type"] = type;
  body["sequence_number"] = sequence_++;
  return http::format_sse(body.dump(-1, ' ', false, json::error_handler_t::replace), type);
}

const ResponsesStream::Call* ResponsesStream::call_at(int output_index) const {
  for (const auto& call : calls_) {
    if (call.output_index == output_index) return &call;
  }
  return nullptr;
}

json ResponsesStream::output_items(const std::string& status) const {
  json output = json::array();
  for (int index = 0; index < next_index_; ++index) {
    if (index == message_index_) {
      output.push_back(message_item(item_id_, status, text_, true));
    } else if (const Call* call = call_at(index)) {
      output.push_back(function_call_item(call->item_id, call->call_id, call->name, call->arguments, "completed"));
    }
  }
  return output;
}

json ResponsesStream::response_object(const std::string& status, const json& usage) const {
  json output = status == "in_progress" ? json::array() : output_items(status);
  json response = echo_;
  response.update({{"id", id_},
                   {"object", "response"},
                   {"created_at", created_s_},
                   {"status", status},
                   {"model", model_},
                   {"output", output}});
  response["incomplete_details"] = status == "incomplete" ? response_status(finish_reason_).second : json(nullptr);
  response["usage"] = usage.is_null() ? json(nullptr) : usage;
  return response;
}

std::string ResponsesStream::begin() {
  std::string out = event("response.created", {{"response", response_object("in_progress", nullptr)}});
  out += event("response.in_progress", {{"response", response_object("in_progress", nullptr)}});
  return out;
}

// The message item and its text part, announced when the first text arrives (an answer that only
// calls functions has none).
std::string ResponsesStream::open_message() {
  message_index_ = next_index_++;
  std::string out = event("response.output_item.added", {{"output_index", message_index_},
                                                         {"item", message_item(item_id_, "in_progress", "", false)}});
  out +=
      event("response.content_part.added",
            {{"item_id", item_id_}, {"output_index", message_index_}, {"content_index", 0}, {"part", text_part("")}});
  return out;
}

std::string ResponsesStream::delta(const std::string& text) {
  if (text.empty()) return {};
  std::string out;
  if (message_index_ < 0) out = open_message();
  text_ += text;
  out += event("response.output_text.delta",
               {{"item_id", item_id_}, {"output_index", message_index_}, {"content_index", 0}, {"delta", text}});
  return out;
}

std::string ResponsesStream::tool_calls(const json& deltas) {
  if (!deltas.is_array()) return {};
  std::string out;
  for (const auto& delta : deltas) {
    if (!delta.is_object()) continue;
    int chat_index = delta.contains("index") && delta["index"].is_number_integer() ? delta["index"].get<int>() : 0;
    const json function = delta.value("function", json::object());
    auto call = std::find_if(calls_.begin(), calls_.end(), [&](const Call& c) { return c.chat_index == chat_index; });
    if (call == calls_.end()) {
      // The first piece of a call names it: the item is announced, its arguments follow in pieces.
      Call fresh;
      fresh.chat_index = chat_index;
      fresh.item_id = "fc_" + random_id(24);
      fresh.call_id = string_of(delta, "id");
      if (fresh.call_id.empty()) fresh.call_id = "call_" + random_id(24);
      fresh.name = string_of(function, "name");
      fresh.output_index = next_index_++;
      calls_.push_back(fresh);
      call = calls_.end() - 1;
      out += event("response.output_item.added",
                   {{"output_index", call->output_index},
                    {"item", function_call_item(call->item_id, call->call_id, call->name, "", "in_progress")}});
    } else if (call->name.empty()) {
      call->name = string_of(function, "name");
    }
    std::string arguments = string_of(function, "arguments");
    if (arguments.empty()) continue;
    call->arguments += arguments;
    out += event("response.function_call_arguments.delta",
                 {{"item_id", call->item_id}, {"output_index", call->output_index}, {"delta", arguments}});
  }
  return out;
}

std::string ResponsesStream::end(const json& chat_usage) {
  std::string out;
  if (message_index_ < 0 && calls_.empty()) out = open_message();  // an answer with no text at all
  std::string status = response_status(finish_reason_).first;
  // Every item closes, in output order.
  for (int index = 0; index < next_index_; ++index) {
    if (index == message_index_) {
      out += event("response.output_text.done",
                   {{"item_id", item_id_}, {"output_index", index}, {"content_index", 0}, {"text", text_}});
      out += event("response.content_part.done",
                   {{"item_id", item_id_}, {"output_index", index}, {"content_index", 0}, {"part", text_part(text_)}});
      out += event("response.output_item.done",
                   {{"output_index", index}, {"item", message_item(item_id_, status, text_, true)}});
      continue;
    }
    if (const Call* call = call_at(index)) {
      out += event("response.function_call_arguments.done",
                   {{"item_id", call->item_id}, {"output_index", index}, {"arguments", call->arguments}});
      out +=
          event("response.output_item.done",
                {{"output_index", index},
                 {"item", function_call_item(call->item_id, call->call_id, call->name, call->arguments, "completed")}});
    }
  }
  // response.completed, or response.incomplete when the answer was cut short.
  final_ = response_object(status, responses_usage(chat_usage));
  out += event("response." + status, {{"response", final_}});
  return out;
}

std::string ResponsesStream::fail(const std::string& message) {
  json error = {{"code", "server_error"}, {"message", message}};
  final_ = response_object("failed", nullptr);
  final_["error"] = error;
  std::string out = event("response.failed", {{"response", final_}});
  out += event("error", {{"code", "server_error"},
                         {"message", message},
                         {"param", nullptr},
                         {"error", {{"type", "server_error"}, {"code", "server_error"}, {"message", message}}}});
  return out;
}

std::string stream_error_event(const std::string& message) {
  json error = {
      {"error", {{"message", message}, {"type", "server_error"}, {"param", nullptr}, {"code", "upstream_error"}}}};
  return http::format_sse(error.dump(-1, ' ', false, json::error_handler_t::replace), "");
}

json input_items(const json& input) {
  if (input.is_string()) return json::array({{{"role", "user"}, {"content", input}}});
  return input.is_array() ? input : json::array();
}

namespace {
// An input item as the input_items listing shows it: a message has a type, a status and its
// content as typed parts (a string becomes one input_text part, output_text for the assistant).
json listed_item(json item, const std::string& fallback_id) {
  if (!item.is_object()) item = {{"type", "message"}, {"role", "user"}, {"content", item}};
  if (!item.contains("id") || !item["id"].is_string()) item["id"] = fallback_id;
  if (!item.contains("type")) item["type"] = "message";
  if (item["type"] == "message") {
    std::string role = item.value("role", json("user")).is_string() ? item.value("role", "user") : "user";
    if (item.contains("content") && item["content"].is_string()) {
      const char* part = role == "assistant" ? "output_text" : "input_text";
      item["content"] = json::array({{{"type", part}, {"text", item["content"]}}});
    }
    if (!item.contains("status")) item["status"] = "completed";
  }
  return item;
}
}  // namespace

Result<json> input_items_page(const json& response, const json& conversation,
                              const std::map<std::string, std::string>& query) {
  auto text = [&query](const char* name, const char* fallback) {
    auto value = query.find(name);
    return value == query.end() ? std::string(fallback) : value->second;
  };
  std::string order = text("order", "desc");
  if (order != "asc" && order != "desc") {
    return make_error(ErrorCode::InvalidArgument, "Invalid 'order': expected 'asc' or 'desc'.");
  }
  std::string limit_text = text("limit", "20");
  int limit = 0;
  if (limit_text.empty() || limit_text.size() > 3 ||
      !std::all_of(limit_text.begin(), limit_text.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      (limit = std::stoi(limit_text)) < 1 || limit > 100) {
    return make_error(ErrorCode::InvalidArgument, "Invalid 'limit': expected an integer from 1 to 100.");
  }
  size_t outputs = response.contains("output") && response["output"].is_array() ? response["output"].size() : 0;
  size_t inputs = conversation.is_array() && conversation.size() >= outputs ? conversation.size() - outputs : 0;
  std::string response_id = response.value("id", json("")).is_string() ? response.value("id", "") : "";
  std::string id_stem = "msg_" + (response_id.rfind("resp_", 0) == 0 ? response_id.substr(5) : response_id);
  std::vector<json> items;
  items.reserve(inputs);
  for (size_t index = 0; index < inputs; ++index) {
    items.push_back(listed_item(conversation[index], fmt::format("{}_{}", id_stem, index)));
  }
  if (order == "desc") std::reverse(items.begin(), items.end());
  size_t first = 0;
  if (std::string after = text("after", ""); !after.empty()) {
    auto found = std::find_if(items.begin(), items.end(), [&after](const json& item) { return item["id"] == after; });
    if (found == items.end()) {
      return make_error(ErrorCode::InvalidArgument, fmt::format("Invalid 'after': no input item '{}'.", after));
    }
    first = static_cast<size_t>(found - items.begin()) + 1;
  }
  json data = json::array();
  for (size_t index = first; index < items.size() && data.size() < static_cast<size_t>(limit); ++index) {
    data.push_back(std::move(items[index]));
  }
  bool has_more = first + data.size() < items.size();
  json page = {{"object", "list"}, {"data", data}, {"has_more", has_more}};
  page["first_id"] = data.empty() ? json(nullptr) : data.front()["id"];
  page["last_id"] = data.empty() ? json(nullptr) : data.back()["id"];
  return page;
}

}  // namespace nebula::gateway
