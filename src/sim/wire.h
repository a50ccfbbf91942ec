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
#include "sim/structured.h"

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

// One prompt of a completions request (a string, or token ids written as their numbers).
struct Prompt {
  std::string text;
  int tokens = 0;
};

struct CompletionRequest {
  Endpoint endpoint = Endpoint::ChatCompletions;
  std::string model;        // "" when the body named none
  std::string prompt_text;  // every message content (chat) or the (first) prompt, joined by '\n'
  std::string echo_text;    // the last user message (chat) or the (first) prompt
  int prompt_tokens = 0;
  // Completions: every prompt of the request, in order (a list of prompts gets n choices each).
  // Empty elsewhere: the one prompt above.
  std::vector<Prompt> prompts;
  bool echo = false;  // completions: the prompt comes back before each completion
  // Logprobs with this many top alternatives per token: chat `logprobs: true` with
  // `top_logprobs` (0 when unset), completions `logprobs: N`. nullopt = not asked for.
  std::optional<int> logprobs;
  // response_format: text, json_object, or json_schema with `schema` (checked).
  OutputFormat format = OutputFormat::Text;
  ordered_json schema;
  std::optional<int> max_tokens;
  std::vector<std::string> stop;
  std::optional<uint64_t> seed;
  int n = 1;                // choices to generate
  bool ignore_eos = false;  // keep generating past the natural end (echo mode) up to max_tokens
  bool stream = false;
  bool include_usage = false;
  // Chat with function `tools`: the function every choice calls instead of answering in text,
  // when `tool_choice` requires one ("required": the first tool; {"type":"function",
  // "function":{"name":N}}: N). "" otherwise ("auto" and "none" answer in text).
  std::string tool_call;
};

// Parses and validates a POST body; error is set when the body is unusable.
std::optional<ApiError> parse_completion_request(Endpoint endpoint, std::string_view body, CompletionRequest& out);

// What every chunk and response of one completion repeats.
struct CompletionIdentity {
  Endpoint endpoint = Endpoint::ChatCompletions;
  std::string id;  // "chatcmpl-..." or "cmpl-..."
  int64_t created = 0;
  std::string model;
  std::string tool_call;        // CompletionRequest::tool_call
  std::optional<int> logprobs;  // CompletionRequest::logprobs
};

// A tool call's arguments: the generated text as {"text": TEXT}. Streamed, they arrive in pieces,
// one per token: `{"text":"` and the first token, then each token (JSON-escaped), the last with
// `"}` after it; the pieces join into the whole.
std::string tool_arguments(std::string_view text);
// One token's piece of them: with the opening on the first, the closing on the last.
std::string tool_arguments_piece(std::string_view token, bool first, bool last);
// The id of choice `index`'s tool call: "call_" and the completion's id.
std::string tool_call_id(const CompletionIdentity& identity, int index);
// A streamed chunk with one piece of choice `index`'s tool call: the first names the call (id,
// type, function name); the last carries finish_reason ("tool_calls" when the model stopped by
// itself, else the reason).
json tool_chunk_json(const CompletionIdentity& identity, int index, std::string_view piece, bool first,
                     const FinishReason* finish_reason);
// The chunk that ends a choice's tool call, as OpenAI sends it: an empty delta with finish_reason
// ("tool_calls" when the model stopped by itself, else the reason).
json tool_finish_chunk_json(const CompletionIdentity& identity, int index, FinishReason finish_reason);

struct Usage {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;  // prompt tokens served from the prefix cache
  // prompt_tokens_details {cached_tokens} is sent (vLLM: --enable-prompt-tokens-details), else null.
  bool details = true;
};

// A streamed chunk carrying one token's text for choice `index`; finish_reason is set on the
// last one only. `logprobs` is the chunk's logprobs object (null when not asked for).
json chunk_json(const CompletionIdentity& identity, int index, std::string_view text, const FinishReason* finish_reason,
                const std::optional<std::string>& stop_reason, json logprobs = nullptr);

// The logprobs object of tokens [first, last) of a generation, in the endpoint's shape. Chat:
// {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}] x top}]}.
// Completions: {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}, where the
// echoed prompt's tokens come first when with_echo (the first with null logprobs) and offsets
// count from the start of the choice's text.
json logprobs_json(Endpoint endpoint, const Generation& generation, int top, size_t first, size_t last, bool with_echo);
// The first chat chunk vLLM sends for each choice: delta {"role":"assistant","content":""}.
json role_chunk_json(const CompletionIdentity& identity, int index);

// The SSE event of a token chunk that does not finish its choice, formatted without building a
// JSON value (this is the hot path of a busy engine). Equal, as JSON, to chunk_json().
class TokenEventFormatter {
 public:
  TokenEventFormatter(const CompletionIdentity& identity, int index);
  void append(std::string& out, std::string_view text) const;

 private:
  std::string prefix_;
  std::string suffix_;
};
// The last chunk when stream_options.include_usage is set: empty choices and the usage.
json usage_chunk_json(const CompletionIdentity& identity, const Usage& usage);
// The non-streamed response, one choice per generation.
json completion_json(const CompletionIdentity& identity, const std::vector<Generation>& generations,
                     const Usage& usage);
json usage_json(const Usage& usage);

// POST /v1/embeddings: one text (or token-id list) per input.
struct EmbeddingRequest {
  std::string model;
  std::vector<std::string> inputs;  // token-id inputs become their ids joined by spaces
  std::vector<int> input_tokens;
  bool base64 = false;  // encoding_format "base64": little-endian float32
  std::optional<int> dimensions;
};
std::optional<ApiError> parse_embedding_request(std::string_view body, EmbeddingRequest& out);
// A deterministic unit vector for text: equal texts give equal vectors.
std::vector<float> embedding_vector(std::string_view text, int dimensions);
json embedding_json(const std::vector<float>& vector, int index, bool base64);

// POST /tokenize: {"prompt": text} or {"messages": [...]} (vLLM's shapes).
struct TokenizeRequest {
  std::string model;
  std::string text;
};
std::optional<ApiError> parse_tokenize_request(std::string_view body, TokenizeRequest& out);

// JSON text that never throws on invalid UTF-8 (it is replaced).
std::string dump_json(const json& value);

}  // namespace nebula::sim
