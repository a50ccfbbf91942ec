#pragma once
// How a completion leaves the simulator: OpenAI/vLLM's chat and text completions, and the native
// generate endpoints of SGLang, TGI and llama.cpp. Plain functions and classes only (no
// coroutines), so JSON is never built inside a coroutine (g++ 12).
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/asio.h"
#include "common/json.h"
#include "http/http.h"
#include "sim/engine.h"
#include "sim/generator.h"
#include "sim/metrics_text.h"
#include "sim/wire.h"

namespace nebula::sim {

struct SimOptions;
struct ResolvedSim;

// A request on its way through the engine: what was asked, what each choice will say.
struct Completion {
  http::Headers headers;  // for the response
  CompletionRequest request;
  CompletionIdentity identity;
  std::vector<Generation> generations;          // one per choice
  std::vector<std::string> choice_prompts;      // the prompt each choice continues
  Usage usage;                                  // cached_tokens is filled as the engine reports it
  std::vector<TokenEventFormatter> formatters;  // the OpenAI format's, one per choice, made on first use
};

struct ChoiceProgress {
  int tokens = 0;
  bool finished = false;
};

class CompletionFormat {
 public:
  virtual ~CompletionFormat() = default;
  virtual http::Headers stream_headers(const Completion& completion) const;
  // The stream events for the tokens produced since sent[i] (advanced to progress[i].tokens), and
  // the ends of choices that finished (ended[i] set).
  virtual std::string progress_events(Completion& completion, const std::vector<ChoiceProgress>& progress,
                                      std::vector<int>& sent, std::vector<bool>& ended) const = 0;
  // What follows once every choice ended.
  virtual std::string tail_events(const Completion& completion) const = 0;
  virtual http::Response whole_response(const Completion& completion) const = 0;
  // OpenAI's error JSON by default.
  virtual http::Response error_response(const ApiError& error, http::Headers headers) const;
};

const CompletionFormat& openai_format();

// An OpenAI-shaped error for a simulated failure with this status (429, 500, 503, ...).
ApiError simulated_error(int status, std::string message);

// Parsers: fill completion.request and completion.identity from the body.
using NativeParser = std::optional<ApiError> (*)(http::Request& request, Completion& completion);
std::optional<ApiError> parse_openai_chat(http::Request& request, Completion& completion);
std::optional<ApiError> parse_openai_completion(http::Request& request, Completion& completion);

http::Response dialect_health_ok(Dialect dialect);
http::Response dialect_health_starting(Dialect dialect);

json models_json(const std::string& model, int64_t created, int max_model_len);
json tokenize_json(const std::vector<uint32_t>& tokens, int max_model_len);
json embeddings_json(const EmbeddingRequest& request, int dimensions, const std::string& model, const std::string& id,
                     int64_t created);
json is_sleeping_json(bool sleeping);

// llama-server's router (router mode of the llamacpp dialect): its error shape
// {"error": {"code": status, "message", "type"}}, GET /models (one model and its status: unloaded,
// loading or loaded), and GET /props without ?model=.
http::Response llamacpp_error(int status, const std::string& message, const std::string& type);
json router_models_json(const std::string& model, const std::string& status, int64_t created, bool list_default);
json router_props_json();

// What the dialects' info endpoints report. Read on the io thread.
struct DialectContext {
  const SimOptions* options = nullptr;
  const ResolvedSim* resolved = nullptr;
  const Engine* engine = nullptr;
};
// llama.cpp's GET /props and GET /slots.
json llamacpp_props(const DialectContext& context);
json llamacpp_slots(const DialectContext& context);
using GenerationHandler =
    std::function<awaitable<void>(http::Request&, http::ResponseWriter&, const CompletionFormat&, NativeParser)>;
// Ollama's model management (/api/tags, /api/pull, /api/copy, /api/ps, /api/generate without a
// prompt to load or unload with keep_alive, /api/version, GET /); ollama_api.cpp.
void add_ollama_routes(http::Router& router, std::function<DialectContext()> context);
// Adds the dialect's native endpoints (nothing for vLLM, whose API is the OpenAI one).
void add_dialect_routes(Dialect dialect, http::Router& router, GenerationHandler generate,
                        std::function<DialectContext()> context);

}  // namespace nebula::sim
