#pragma once
// The Responses API (POST /v1/responses) translated to and from chat completions, for engines
// that lack it.
#include <map>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/result.h"

namespace nebula::gateway {

// A chat-completions body for a Responses request: `instructions` becomes a system message,
// `input` (a string or a list of items) the messages: message items by role, function_call items
// as an assistant turn's tool_calls, function_call_output items as tool messages. Function
// `tools`, `tool_choice` and `parallel_tool_calls` become chat's; `text.format` (json_object,
// json_schema) becomes response_format; max_output_tokens max_tokens. Sampling fields
// (temperature, top_p, seed, stop, ...) pass through. Other tool and item types are refused.
Result<json> responses_to_chat(const json& request);

// What a Response object repeats of its request, with OpenAI's defaults for what the request
// left out: instructions, tools, tool_choice, parallel_tool_calls, temperature, top_p, metadata,
// previous_response_id, store, text, max_output_tokens, background, truncation, user, reasoning,
// and error (null). A request that is not an object gives the defaults.
json response_echo(const json& request);

// A Responses object for a finished chat completion: a message item for its text (also when
// there is neither text nor a call), and a function_call item for each tool call; with the
// request's fields (response_echo).
json chat_to_response(const json& completion, const std::string& response_id, const std::string& model,
                      int64_t created_s, const json& request = json());

// GET /v1/responses/{id}/input_items: a page of the items a stored response was given (its
// conversation without its output items), as OpenAI lists them: messages with typed content
// parts and an id each (stable: made from the response id and the position when the client sent
// none). query: `order` asc|desc (default desc, newest first), `limit` 1..100 (default 20),
// `after` an item id. InvalidArgument for a bad query.
Result<json> input_items_page(const json& response, const json& conversation,
                              const std::map<std::string, std::string>& query);

// Turns a stream of chat chunks into the Responses event sequence, each event with its `type`
// and an increasing `sequence_number`. Output items are numbered in the order they start: the
// message when its first text arrives, each function call when its first piece does.
class ResponsesStream {
 public:
  // request: the Responses request, whose fields every response object repeats (response_echo).
  ResponsesStream(std::string response_id, std::string model, int64_t created_s, json request = json());
  // response.created, response.in_progress
  std::string begin();
  // response.output_text.delta, after output_item.added and content_part.added for the first
  // (empty text gives "")
  std::string delta(const std::string& text);
  // A chunk's delta.tool_calls: response.output_item.added for a call's first piece, then
  // response.function_call_arguments.delta for each piece of its arguments
  std::string tool_calls(const json& deltas);
  // The chat stream's finish_reason, when a chunk carries one.
  void set_finish_reason(std::string reason) { finish_reason_ = std::move(reason); }
  // Each item's done events in output order (output_text.done, content_part.done and
  // output_item.done for the message; function_call_arguments.done and output_item.done for a
  // call), then response.completed (with usage), or response.incomplete when the finish reason
  // was "length" or "content_filter"
  std::string end(const json& chat_usage);
  // The engine broke off mid-answer: response.failed (the response with status "failed" and its
  // `error`), then an `error` event. The error event carries OpenAI's fields (code, message,
  // param) and an `error` object as well, which the SDKs raise as an APIError.
  std::string fail(const std::string& message);
  // The response object of response.completed (or .incomplete, or .failed), once end() or
  // fail() made it.
  const json& final_response() const { return final_; }

 private:
  struct Call {
    int chat_index = 0;
    std::string item_id;
    std::string call_id;
    std::string name;
    std::string arguments;
    int output_index = 0;
  };
  std::string event(const std::string& type, json body);
  std::string open_message();
  const Call* call_at(int output_index) const;  // the call at that output index, if any
  json output_items(const std::string& status) const;
  json response_object(const std::string& status, const json& usage) const;
  std::string id_;
  std::string item_id_;
  std::string model_;
  int64_t created_s_;
  json echo_;  // response_echo() of the request
  int sequence_ = 0;
  std::string text_;
  std::string finish_reason_;
  json final_;
  int message_index_ = -1;  // the message's output_index once it started
  int next_index_ = 0;
  std::vector<Call> calls_;
};

// A Responses request's `input` as a list of items: a string is one user message item.
json input_items(const json& input);

// An error event for a chat or text completion stream the engine broke off:
// `data: {"error":{"message","type":"server_error","param":null,"code":"upstream_error"}}`, which
// the SDKs raise as an APIError (the stream then ends without `[DONE]`).
std::string stream_error_event(const std::string& message);

// {input_tokens, input_tokens_details: {cached_tokens}, output_tokens, output_tokens_details:
// {reasoning_tokens}, total_tokens} from a chat `usage` (the details are always there: clients
// such as the Agents SDK read them unconditionally).
json responses_usage(const json& chat_usage);

}  // namespace nebula::gateway
