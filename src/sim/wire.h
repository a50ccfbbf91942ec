#pragma once
// The OpenAI/vLLM wire format of the simulator: request bodies in, chunks and responses out.
// The only sim file that sees JSON besides the route handlers.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "sim/generator.h"

namespace nebula::sim {

enum class Endpoint { ChatCompletions, Completions };

struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // "" = null
  std::string code;   // "" = null
};
// {"error": {"message", "type", "param", "code"}}
json error_json(const ApiError& error);

struct CompletionRequest {
  Endpoint endpoint = Endpoint::ChatCompletions;
  std::string model;        // "" when the body named none
  std::string prompt_text;  // every message content (chat) or the prompt, joined by '\n'
  std::string echo_text;    // the last user message (chat) or the prompt
  int prompt_tokens = 0;
  std::optional<int> max_tokens;
  std::vector<std::string> stop;
  std::optional<uint64_t> seed;
  bool stream = false;
  bool include_usage = false;
};

// Parses and validates a POST body; error is set when the body is unusable.
std::optional<ApiError> parse_completion_request(Endpoint endpoint, std::string_view body, CompletionRequest& out);

// What every chunk and response of one completion repeats.
struct CompletionIdentity {
  Endpoint endpoint = Endpoint::ChatCompletions;
  std::string id;  // "chatcmpl-..." or "cmpl-..."
  int64_t created = 0;
  std::string model;
};

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

// A streamed chunk carrying one token's text; finish_reason is set on the last one only.
json chunk_json(const CompletionIdentity& identity, std::string_view text, const FinishReason* finish_reason,
                const std::optional<std::string>& stop_reason);
// The first chat chunk vLLM sends: delta {"role":"assistant","content":""}.
json role_chunk_json(const CompletionIdentity& identity);
// The last chunk when stream_options.include_usage is set: empty choices and the usage.
json usage_chunk_json(const CompletionIdentity& identity, const Usage& usage);
// The non-streamed response.
json completion_json(const CompletionIdentity& identity, const Generation& generation, const Usage& usage);

// JSON text that never throws on invalid UTF-8 (it is replaced).
std::string dump_json(const json& value);

}  // namespace nebula::sim
