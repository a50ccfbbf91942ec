#pragma once
// The Responses API (POST /v1/responses) translated to and from chat completions, for engines
// that lack it.
#include <string>

#include "common/json.h"
#include "common/result.h"

namespace nebula::gateway {

// A chat-completions body for a Responses request: `instructions` becomes a system message,
// `input` (a string or a list of message items) the messages, max_output_tokens max_tokens.
// Sampling fields (temperature, top_p, seed, stop, ...) pass through.
Result<json> responses_to_chat(const json& request);

// A Responses object for a finished chat completion.
json chat_to_response(const json& completion, const std::string& response_id, const std::string& model,
                      int64_t created_s);

// Turns a stream of chat chunks into the Responses event sequence, each event with its `type`
// and an increasing `sequence_number`.
class ResponsesStream {
 public:
  ResponsesStream(std::string response_id, std::string model, int64_t created_s);
  // response.created, response.in_progress, response.output_item.added, response.content_part.added
  std::string begin();
  // response.output_text.delta (empty text gives "")
  std::string delta(const std::string& text);
  // The chat stream's finish_reason, when a chunk carries one.
  void set_finish_reason(std::string reason) { finish_reason_ = std::move(reason); }
  // output_text.done, content_part.done, output_item.done, and response.completed (with usage), or
  // response.incomplete when the finish reason was "length" or "content_filter"
  std::string end(const json& chat_usage);

 private:
  std::string event(const std::string& type, json body);
  json response_object(const std::string& status, const json& usage) const;
  std::string id_;
  std::string item_id_;
  std::string model_;
  int64_t created_s_;
  int sequence_ = 0;
  std::string text_;
  std::string finish_reason_;
};

// {input_tokens, output_tokens, total_tokens} from a chat `usage`.
json responses_usage(const json& chat_usage);

}  // namespace nebula::gateway
