#pragma once
// What the gateway reads from an OpenAI request body before routing it, and the usage of an
// engine's answer. The request is read with simdjson's DOM
// parser: it validates the whole body (a bad one is refused with a clear message) without
// building an object per value. The body itself goes upstream untouched unless it must change
// (streams ask for usage; /v1/responses is translated), and only then is it parsed into a json.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/json.h"
#include "common/result.h"

namespace nebula::gateway {

// The OpenAI endpoint a body was sent to; the values are the gateway's route kinds.
enum class Api { Any = -1, Chat = 0, Completions = 1, Embeddings = 2, Responses = 3 };

// A field OpenAI refuses with a 400 of its own: the message as OpenAI words it, the field
// (`param`) and OpenAI's `code` (empty_array, integer_below_min_value, invalid_type, ...).
struct RequestProblem {
  std::string message;
  std::string param;
  std::string code;
};

struct RequestFacts {
  std::string model;           // "" when absent or not a string
  bool stream = false;         // "stream": true
  bool include_usage = false;  // "stream_options": {"include_usage": true}
  // Bytes of prompt text: message contents (strings, or the text of content parts), "prompt"
  // and "input" (a string, or the strings of an array).
  int64_t prompt_bytes = 0;
  // max_completion_tokens, else max_tokens, else max_output_tokens: the first that is an integer.
  std::optional<int64_t> max_tokens;
  std::string user;  // "user", when a string: the end user, a routing session key
  // The prompt text the same bytes count, concatenated in order, up to kPromptTextLimit bytes:
  // what prefix routing hashes.
  std::string prompt_text;
  // The first field OpenAI would refuse, checked as OpenAI checks it for `api` (required fields,
  // types, ranges: max_tokens, max_completion_tokens and max_output_tokens >= 1, n in 1..128,
  // temperature in 0..2, top_p in 0..1, penalties in -2..2, top_logprobs in 0..20); nullopt when
  // none.
  std::optional<RequestProblem> problem;
};

// Prefix hashes cover at most this many bytes of a prompt (router::block_hashes' defaults).
inline constexpr size_t kPromptTextLimit = 64 * 512;

// InvalidArgument naming the problem when the body is not JSON or not an object. Field problems
// are not errors here: they are reported in `problem`, for the caller to refuse with OpenAI's code.
Result<RequestFacts> read_request(std::string_view body, Api api = Api::Any);

// The `usage` object of an engine's JSON answer, read without building the whole document
// (simdjson's on-demand parser skips everything else): its integer counts, and those of its
// nested objects (prompt_tokens_details.cached_tokens); null when absent, not an object or cut
// off.
// capacity: how many bytes from answer.data() may be read; with SIMDJSON_PADDING (64) to spare
// past the answer it is parsed in place, else copied first.
json usage_of(std::string_view answer, size_t capacity = 0);

// One count of an engine's `usage` ("prompt_tokens", ...): 0 when missing or not an integer.
int64_t usage_tokens(const json& usage, const char* field);

}  // namespace nebula::gateway
