#include "sim/formats.h"

#include <fmt/format.h>

#include "common/ids.h"
#include "http/sse.h"
#include "sim/sim.h"
#include "sim/tokenizer.h"

namespace nebula::sim {
namespace {

http::Response json_response(int status, const json& body, http::Headers headers) {
  headers.push_back({"Content-Type", "application/json"});
  return http::Response{status, std::move(headers), dump_json(body)};
}

awaitable<void> send(http::ResponseWriter& writer, http::Response response) {
  co_await writer.send(std::move(response));
}

std::string text_of(const Generation& generation, int tokens) {
  std::string text;
  for (int index = 0; index < tokens && index < generation.completion_tokens(); ++index) {
    text += generation.tokens[static_cast<size_t>(index)];
  }
  return text;
}

// ---- OpenAI / vLLM.

class OpenAiFormat final : public CompletionFormat {
 public:
  std::string progress_events(Completion& completion, const std::vector<ChoiceProgress>& progress,
                              std::vector<int>& sent, std::vector<bool>& ended) const override {
    if (completion.formatters.empty()) {
      for (size_t index = 0; index < completion.generations.size(); ++index) {
        completion.formatters.emplace_back(completion.identity, static_cast<int>(index));
      }
    }
    const CompletionIdentity& identity = completion.identity;
    bool chat = identity.endpoint == Endpoint::ChatCompletions;
    bool calls = chat && !identity.tool_call.empty();
    std::string events;
    for (size_t index = 0; index < progress.size(); ++index) {
      const Generation& generation = completion.generations[index];
      int total = generation.completion_tokens();
      int choice = static_cast<int>(index);
      while (sent[index] < progress[index].tokens && sent[index] < total) {
        int token = sent[index]++;
        if (token == 0 && chat) events += http::format_sse(dump_json(role_chunk_json(identity, choice)));
        const std::string& text = generation.tokens[static_cast<size_t>(token)];
        bool last = token + 1 == total;
        if (calls) {
          // The arguments in pieces, then the finish in a chunk of its own (as OpenAI sends it).
          events += http::format_sse(dump_json(
              tool_chunk_json(identity, choice, tool_arguments_piece(text, token == 0, last), token == 0, nullptr)));
          if (last)
            events += http::format_sse(dump_json(tool_finish_chunk_json(identity, choice, generation.finish_reason)));
          continue;
        }
        // Completions' echo: the prompt comes in the first chunk, before the first token.
        bool echoing = token == 0 && !generation.echo_tokens.empty();
        std::string chunk_text = echoing ? generation.echo_text() + text : text;
        json logprobs = identity.logprobs
                            ? logprobs_json(identity.endpoint, generation, *identity.logprobs,
                                            static_cast<size_t>(token), static_cast<size_t>(token) + 1, token == 0)
                            : json(nullptr);
        if (last) {
          events += http::format_sse(dump_json(chunk_json(identity, choice, chunk_text, &generation.finish_reason,
                                                          generation.stop_reason, std::move(logprobs))));
        } else if (identity.logprobs || echoing) {
          events += http::format_sse(
              dump_json(chunk_json(identity, choice, chunk_text, nullptr, std::nullopt, std::move(logprobs))));
        } else if (!text.empty()) {
          completion.formatters[index].append(events, text);
        }
      }
      if (progress[index].finished && !ended[index]) {
        ended[index] = true;
        if (total == 0) {  // nothing generated: the role chunk and an empty finishing chunk
          if (chat) events += http::format_sse(dump_json(role_chunk_json(identity, choice)));
          if (calls) {
            events += http::format_sse(dump_json(tool_chunk_json(identity, choice, tool_arguments(""), true, nullptr)));
            events += http::format_sse(dump_json(tool_finish_chunk_json(identity, choice, generation.finish_reason)));
          } else {
            events += http::format_sse(dump_json(chunk_json(identity, choice, generation.echo_text(),
                                                            &generation.finish_reason, generation.stop_reason)));
          }
        }
      }
    }
    return events;
  }

  std::string tail_events(const Completion& completion) const override {
    std::string events;
    if (completion.request.include_usage) {
      events += http::format_sse(dump_json(usage_chunk_json(completion.identity, completion.usage)));
    }
    events += http::format_sse("[DONE]");
    return events;
  }

  http::Response whole_response(const Completion& completion) const override {
    return json_response(200, completion_json(completion.identity, completion.generations, completion.usage),
                         completion.headers);
  }
};

std::optional<ApiError> parse_openai(http::Request& request, Completion& completion, Endpoint endpoint) {
  if (auto error = parse_completion_request(endpoint, request.body, completion.request)) return error;
  completion.identity.endpoint = endpoint;
  completion.identity.id = (endpoint == Endpoint::ChatCompletions ? "chatcmpl-" : "cmpl-") + random_id(32);
  completion.identity.tool_call = completion.request.tool_call;
  completion.identity.logprobs = completion.request.logprobs;
  return std::nullopt;
}

// ---- Native bodies: SGLang /generate, TGI /generate(_stream), llama.cpp /completion.

ApiError invalid(std::string message) {
  return ApiError{400, std::move(message), "invalid_request_error", "", ""};
}

// Reads the fields the native APIs share into a CompletionRequest.
std::optional<ApiError> native_request(const json& body, const char* prompt_field, const json& params,
                                       const char* max_tokens_field, CompletionRequest& out) {
  auto prompt = body.find(prompt_field);
  if (prompt == body.end() || !prompt->is_string()) return invalid(fmt::format("'{}' must be a string", prompt_field));
  out.endpoint = Endpoint::Completions;
  out.prompt_text = prompt->get<std::string>();
  out.echo_text = out.prompt_text;
  out.prompt_tokens = count_tokens(out.prompt_text);
  if (auto max_tokens = params.find(max_tokens_field); max_tokens != params.end() && !max_tokens->is_null()) {
    if (!max_tokens->is_number_integer()) return invalid(fmt::format("'{}' must be an integer", max_tokens_field));
    int64_t value = max_tokens->get<int64_t>();
    if (value >= 1) out.max_tokens = static_cast<int>(std::min<int64_t>(value, 1 << 30));
  }
  if (auto stop = params.find("stop"); stop != params.end() && !stop->is_null()) {
    if (stop->is_string()) {
      out.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& item : *stop) {
        if (item.is_string()) out.stop.push_back(item.get<std::string>());
      }
    }
  }
  if (auto seed = params.find("seed"); seed != params.end() && seed->is_number_integer()) {
    out.seed = static_cast<uint64_t>(seed->get<int64_t>());
  }
  if (auto ignore_eos = params.find("ignore_eos"); ignore_eos != params.end() && ignore_eos->is_boolean()) {
    out.ignore_eos = ignore_eos->get<bool>();
  }
  if (auto stream = body.find("stream"); stream != body.end() && stream->is_boolean()) out.stream = stream->get<bool>();
  return std::nullopt;
}

Result<json> object_body(const http::Request& request) {
  Result<json> parsed = parse_json(request.body);
  if (parsed && !parsed->is_object())
    return Error{ErrorCode::InvalidArgument, "the request body must be a JSON object"};
  return parsed;
}

const json& member_or_empty(const json& body, const char* name) {
  static const json kEmpty = json::object();
  auto it = body.find(name);
  return it != body.end() && it->is_object() ? *it : kEmpty;
}

std::optional<ApiError> parse_sglang_generate(http::Request& request, Completion& completion) {
  Result<json> body = object_body(request);
  if (!body) return invalid(body.error().message);
  if (auto error = native_request(*body, "text", member_or_empty(*body, "sampling_params"), "max_new_tokens",
                                  completion.request)) {
    return error;
  }
  if (!completion.request.max_tokens) completion.request.max_tokens = 128;  // SGLang's default max_new_tokens
  completion.identity.id = random_id(32);
  return std::nullopt;
}

std::optional<ApiError> parse_tgi_generate(http::Request& request, Completion& completion) {
  Result<json> body = object_body(request);
  if (!body) return invalid(body.error().message);
  if (auto error =
          native_request(*body, "inputs", member_or_empty(*body, "parameters"), "max_new_tokens", completion.request)) {
    return error;
  }
  if (!completion.request.max_tokens) completion.request.max_tokens = 100;  // TGI's default max_new_tokens
  return std::nullopt;
}

std::optional<ApiError> parse_tgi_generate_stream(http::Request& request, Completion& completion) {
  auto error = parse_tgi_generate(request, completion);
  completion.request.stream = true;
  return error;
}

std::optional<ApiError> parse_llamacpp_completion(http::Request& request, Completion& completion) {
  Result<json> body = object_body(request);
  if (!body) return invalid(body.error().message);
  if (auto error = native_request(*body, "prompt", *body, "n_predict", completion.request)) return error;
  return std::nullopt;
}

json sglang_meta(const Completion& completion, size_t choice, int tokens, bool finished) {
  const Generation& generation = completion.generations[choice];
  json finish = nullptr;
  if (finished) {
    if (generation.finish_reason == FinishReason::Length) {
      finish = {{"type", "length"}, {"length", generation.completion_tokens()}};
    } else {
      finish = {{"type", "stop"}, {"matched", generation.stop_reason ? json(*generation.stop_reason) : json(nullptr)}};
    }
  }
  return json{{"id", completion.identity.id},
              {"finish_reason", finish},
              {"prompt_tokens", completion.usage.prompt_tokens},
              {"completion_tokens", tokens},
              {"cached_tokens", completion.usage.cached_tokens}};
}

class SglangFormat final : public CompletionFormat {
 public:
  std::string progress_events(Completion& completion, const std::vector<ChoiceProgress>& progress,
                              std::vector<int>& sent, std::vector<bool>& ended) const override {
    // SGLang streams the whole text so far in every event.
    std::string events;
    for (size_t index = 0; index < progress.size(); ++index) {
      bool finishing = progress[index].finished && !ended[index];
      if (sent[index] == progress[index].tokens && !finishing) continue;
      sent[index] = progress[index].tokens;
      ended[index] = progress[index].finished;
      json event = {{"text", text_of(completion.generations[index], sent[index])},
                    {"meta_info", sglang_meta(completion, index, sent[index], progress[index].finished)},
                    {"index", index}};
      events += http::format_sse(dump_json(event));
    }
    return events;
  }
  std::string tail_events(const Completion&) const override { return http::format_sse("[DONE]"); }
  http::Response whole_response(const Completion& completion) const override {
    const Generation& generation = completion.generations[0];
    json body = {{"text", generation.text()},
                 {"meta_info", sglang_meta(completion, 0, generation.completion_tokens(), true)}};
    return json_response(200, body, completion.headers);
  }
};

const char* tgi_finish(const Generation& generation) {
  if (generation.finish_reason == FinishReason::Length) return "length";
  return generation.stop_reason ? "stop_sequence" : "eos_token";
}

class TgiFormat final : public CompletionFormat {
 public:
  std::string progress_events(Completion& completion, const std::vector<ChoiceProgress>& progress,
                              std::vector<int>& sent, std::vector<bool>& ended) const override {
    std::string events;
    const Generation& generation = completion.generations[0];
    int total = generation.completion_tokens();
    while (sent[0] < progress[0].tokens && sent[0] < total) {
      int token = sent[0]++;
      const std::string& text = generation.tokens[static_cast<size_t>(token)];
      bool last = token + 1 == total;
      json event = {
          {"index", token},
          {"token", {{"id", token_id(text)}, {"text", text}, {"logprob", -0.25}, {"special", false}}},
          {"generated_text", last ? json(generation.text()) : json(nullptr)},
          {"details",
           last ? json{{"finish_reason", tgi_finish(generation)}, {"generated_tokens", total}, {"seed", nullptr}}
                : json(nullptr)}};
      events += "data:" + dump_json(event) + "\n\n";
    }
    if (progress[0].finished) ended[0] = true;
    return events;
  }
  std::string tail_events(const Completion&) const override { return ""; }
  http::Response whole_response(const Completion& completion) const override {
    const Generation& generation = completion.generations[0];
    json body = {{"generated_text", generation.text()},
                 {"details",
                  {{"finish_reason", tgi_finish(generation)},
                   {"generated_tokens", generation.completion_tokens()},
                   {"seed", nullptr}}}};
    return json_response(200, body, completion.headers);
  }
  http::Response error_response(const ApiError& error, http::Headers headers) const override {
    json body = {{"error", error.message}, {"error_type", error.status == 429 ? "overloaded" : "validation"}};
    return json_response(error.status, body, std::move(headers));
  }
};

json llamacpp_final(const Completion& completion) {
  const Generation& generation = completion.generations[0];
  const char* stop_type = generation.finish_reason == FinishReason::Length ? "limit"
                          : generation.stop_reason                         ? "word"
                                                                           : "eos";
  return json{{"content", generation.text()},
              {"stop", true},
              {"model", completion.identity.model},
              {"tokens_predicted", generation.completion_tokens()},
              {"tokens_evaluated", completion.usage.prompt_tokens},
              {"tokens_cached", completion.usage.cached_tokens},
              {"stop_type", stop_type},
              {"stopping_word", generation.stop_reason.value_or("")},
              {"truncated", false}};
}

class LlamacppFormat final : public CompletionFormat {
 public:
  std::string progress_events(Completion& completion, const std::vector<ChoiceProgress>& progress,
                              std::vector<int>& sent, std::vector<bool>& ended) const override {
    std::string events;
    const Generation& generation = completion.generations[0];
    while (sent[0] < progress[0].tokens && sent[0] < generation.completion_tokens()) {
      int token = sent[0]++;
      json event = {{"content", generation.tokens[static_cast<size_t>(token)]}, {"stop", false}, {"index", 0}};
      events += http::format_sse(dump_json(event));
    }
    if (progress[0].finished && !ended[0]) {
      ended[0] = true;
      json last = llamacpp_final(completion);
      last["content"] = "";
      events += http::format_sse(dump_json(last));
    }
    return events;
  }
  std::string tail_events(const Completion&) const override { return ""; }
  http::Response whole_response(const Completion& completion) const override {
    return json_response(200, llamacpp_final(completion), completion.headers);
  }
  http::Response error_response(const ApiError& error, http::Headers headers) const override {
    json body = {{"error", {{"code", error.status}, {"message", error.message}, {"type", error.type}}}};
    return json_response(error.status, body, std::move(headers));
  }
};

const SglangFormat& sglang_format() {
  static const SglangFormat format;
  return format;
}
const TgiFormat& tgi_format() {
  static const TgiFormat format;
  return format;
}
const LlamacppFormat& llamacpp_format() {
  static const LlamacppFormat format;
  return format;
}

json sglang_server_info(const DialectContext& context) {
  const EngineConfig& config = context.resolved->engine;
  return json{{"model_path", context.options->model},
              {"served_model_name", context.options->model},
              {"context_length", config.max_model_len},
              {"max_total_num_tokens", config.num_kv_blocks * config.block_size},
              {"max_running_requests", config.max_num_seqs},
              {"chunked_prefill_size", config.max_num_batched_tokens},
              {"page_size", config.block_size},
              {"version", "sim"}};
}

}  // namespace

json llamacpp_props(const DialectContext& context) {
  const EngineConfig& config = context.resolved->engine;
  return json{{"default_generation_settings", {{"n_ctx", config.max_model_len}, {"model", context.options->model}}},
              {"total_slots", config.max_num_seqs},
              {"model_path", context.options->model},
              {"build_info", "nebula engine-sim"}};
}

json llamacpp_slots(const DialectContext& context) {
  const EngineConfig& config = context.resolved->engine;
  json slots = json::array();
  size_t busy = context.engine->running();
  for (int id = 0; id < config.max_num_seqs; ++id) {
    slots.push_back(
        json{{"id", id}, {"n_ctx", config.max_model_len}, {"is_processing", static_cast<size_t>(id) < busy}});
  }
  return slots;
}

namespace {

json tgi_info(const DialectContext& context) {
  const EngineConfig& config = context.resolved->engine;
  return json{{"model_id", context.options->model},
              {"model_dtype", "torch.bfloat16"},
              {"max_concurrent_requests", config.max_num_seqs},
              {"max_input_tokens", config.max_model_len - 1},
              {"max_total_tokens", config.max_model_len},
              {"max_batch_total_tokens", config.num_kv_blocks * config.block_size},
              {"router", "text-generation-router"},
              {"version", "sim"}};
}

}  // namespace

http::Headers CompletionFormat::stream_headers(const Completion& completion) const {
  http::Headers headers = completion.headers;
  headers.push_back({"Content-Type", "text/event-stream; charset=utf-8"});
  headers.push_back({"Cache-Control", "no-cache"});
  return headers;
}

http::Response CompletionFormat::error_response(const ApiError& error, http::Headers headers) const {
  if (error.status == 429) headers.push_back({"retry-after", "1"});
  return json_response(error.status, error_json(error), std::move(headers));
}

const CompletionFormat& openai_format() {
  static const OpenAiFormat format;
  return format;
}

ApiError simulated_error(int status, std::string message) {
  if (status == 429) return ApiError{429, std::move(message), "rate_limit_error", "", "rate_limit_exceeded"};
  if (status == 503) return ApiError{503, std::move(message), "server_error", "", "service_unavailable"};
  if (status >= 500) return ApiError{status, std::move(message), "server_error", "", "internal_error"};
  return ApiError{status, std::move(message), "invalid_request_error", "", ""};
}

std::optional<ApiError> parse_openai_chat(http::Request& request, Completion& completion) {
  return parse_openai(request, completion, Endpoint::ChatCompletions);
}

std::optional<ApiError> parse_openai_completion(http::Request& request, Completion& completion) {
  return parse_openai(request, completion, Endpoint::Completions);
}

http::Response dialect_health_ok(Dialect dialect) {
  if (dialect == Dialect::Llamacpp) return json_response(200, json{{"status", "ok"}}, {});
  return http::Response{200, {}, ""};
}

http::Response dialect_health_starting(Dialect dialect) {
  if (dialect == Dialect::Llamacpp) {
    return json_response(
        503, json{{"error", {{"code", 503}, {"message", "Loading model"}, {"type", "unavailable_error"}}}}, {});
  }
  return http::Response{503, {}, ""};
}

json models_json(const std::string& model, int64_t created, int max_model_len) {
  json entry = {{"id", model},
                {"object", "model"},
                {"created", created},
                {"owned_by", "nebula-sim"},
                {"root", model},
                {"parent", nullptr},
                {"max_model_len", max_model_len}};
  return json{{"object", "list"}, {"data", json::array({std::move(entry)})}};
}

json tokenize_json(const std::vector<uint32_t>& tokens, int max_model_len) {
  return json{{"count", tokens.size()}, {"max_model_len", max_model_len}, {"tokens", tokens}, {"token_strs", nullptr}};
}

json embeddings_json(const EmbeddingRequest& request, int dimensions, const std::string& model, const std::string& id,
                     int64_t created) {
  json data = json::array();
  int prompt_tokens = 0;
  for (size_t index = 0; index < request.inputs.size(); ++index) {
    data.push_back(
        embedding_json(embedding_vector(request.inputs[index], dimensions), static_cast<int>(index), request.base64));
    prompt_tokens += request.input_tokens[index];
  }
  return json{{"id", id},
              {"object", "list"},
              {"created", created},
              {"model", model},
              {"data", std::move(data)},
              {"usage", {{"prompt_tokens", prompt_tokens}, {"total_tokens", prompt_tokens}}}};
}

http::Response llamacpp_error(int status, const std::string& message, const std::string& type) {
  return json_response(status, json{{"error", {{"code", status}, {"message", message}, {"type", type}}}}, {});
}

json router_models_json(const std::string& model, const std::string& status, int64_t created, bool list_default) {
  auto entry = [created](const std::string& id, const std::string& value) {
    return json{{"id", id},
                {"object", "model"},
                {"owned_by", "llamacpp"},
                {"created", created},
                {"status", {{"value", value}, {"args", json::array({"llama-server", "--alias", id})}}}};
  };
  json data = json::array();
  // llama-server lists its models by name; the implicit `default` section sorts first.
  if (list_default) data.push_back(entry("default", "unloaded"));
  data.push_back(entry(model, status));
  return json{{"data", std::move(data)}, {"object", "list"}};
}

json router_props_json() {
  return json{{"role", "router"},
              {"model_alias", "llama-server"},
              {"model_path", "none"},
              {"default_generation_settings", {{"params", json::object()}, {"n_ctx", 0}}}};
}

json is_sleeping_json(bool sleeping) {
  return json{{"is_sleeping", sleeping}};
}

void add_dialect_routes(Dialect dialect, http::Router& router, GenerationHandler generate,
                        std::function<DialectContext()> context) {
  auto info_route = [&router, context](const char* path, json (*build)(const DialectContext&)) {
    router.add("GET", path, [context, build](http::Request&, http::ResponseWriter& writer) {
      return send(writer, json_response(200, build(context()), {}));
    });
  };
  auto generate_route = [&router, generate](const char* path, const CompletionFormat& format, NativeParser parse) {
    router.add("POST", path, [generate, &format, parse](http::Request& request, http::ResponseWriter& writer) {
      return generate(request, writer, format, parse);
    });
  };
  switch (dialect) {
    case Dialect::Sglang:
      generate_route("/generate", sglang_format(), parse_sglang_generate);
      info_route("/get_model_info", [](const DialectContext& c) {
        return json{{"model_path", c.options->model}, {"tokenizer_path", c.options->model}, {"is_generation", true}};
      });
      info_route("/get_server_info", sglang_server_info);
      router.add("GET", "/health_generate", [](http::Request&, http::ResponseWriter& writer) {
        return send(writer, http::Response{200, {}, ""});
      });
      break;
    case Dialect::Tgi:
      generate_route("/generate", tgi_format(), parse_tgi_generate);
      generate_route("/generate_stream", tgi_format(), parse_tgi_generate_stream);
      info_route("/info", tgi_info);
      break;
    case Dialect::Llamacpp:
      generate_route("/completion", llamacpp_format(), parse_llamacpp_completion);
      info_route("/props", llamacpp_props);
      info_route("/slots", llamacpp_slots);
      break;
    case Dialect::Ollama: add_ollama_routes(router, std::move(context)); break;
    case Dialect::Vllm: break;
  }
}

}  // namespace nebula::sim
