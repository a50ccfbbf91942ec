#include "sim/sim.h"

#include <fmt/format.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <charconv>
#include <chrono>
#include <csignal>
#include <stdexcept>

#include "common/ids.h"
#include "common/log.h"
#include "http/http.h"
#include "http/sse.h"
#include "sim/generator.h"
#include "sim/pacer.h"
#include "sim/wire.h"

namespace nebula::sim {
namespace {

GenerationMode mode_or_throw(const std::string& mode) {
  auto parsed = parse_generation_mode(mode);
  if (!parsed) throw std::invalid_argument(fmt::format("unknown engine-sim mode '{}' (use lorem or echo)", mode));
  return *parsed;
}

PacingModel pacing_model(const SimOptions& options) {
  return PacingModel{options.ttft_base_ms, options.prefill_ms_per_token, options.itl_ms,
                     options.itl_ms_per_running_seq};
}

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

http::Response json_response(int status, const json& body, http::Headers headers) {
  headers.push_back({"Content-Type", "application/json"});
  return http::Response{status, std::move(headers), dump_json(body)};
}

// The error X-Sim-Error asks for, in the shape an engine or OpenAI would send it.
std::optional<ApiError> forced_error(const std::string& header) {
  if (header.empty()) return std::nullopt;
  int status = 0;
  auto [end, parse_error] = std::from_chars(header.data(), header.data() + header.size(), status);
  if (parse_error != std::errc() || end != header.data() + header.size() || status < 400 || status > 599) {
    return ApiError{400, fmt::format("X-Sim-Error must be an HTTP status from 400 to 599, got '{}'", header),
                    "invalid_request_error", "", ""};
  }
  std::string message = fmt::format("simulated error (X-Sim-Error: {})", status);
  if (status == 429) return ApiError{429, message, "rate_limit_error", "", "rate_limit_exceeded"};
  if (status == 503) return ApiError{503, message, "server_error", "", "service_unavailable"};
  if (status >= 500) return ApiError{status, message, "server_error", "", "internal_error"};
  return ApiError{status, message, "invalid_request_error", "", ""};
}

ApiError context_length_error(int max_model_len, int prompt_tokens, std::optional<int> requested_max_tokens,
                              Endpoint endpoint) {
  const char* input = endpoint == Endpoint::ChatCompletions ? "messages" : "prompt";
  std::string message =
      requested_max_tokens
          ? fmt::format(
                "This model's maximum context length is {} tokens. However, you requested {} tokens ({} in the {}, "
                "{} in the completion). Please reduce the length of the {} or completion.",
                max_model_len, prompt_tokens + *requested_max_tokens, prompt_tokens, input, *requested_max_tokens,
                input)
          : fmt::format(
                "This model's maximum context length is {} tokens. However, your {} resulted in {} tokens. Please "
                "reduce the length of the {}.",
                max_model_len, input, prompt_tokens, input);
  return ApiError{400, std::move(message), "invalid_request_error", input, "context_length_exceeded"};
}

awaitable<void> send_response(http::ResponseWriter& writer, http::Response response) {
  co_await writer.send(std::move(response));
}

}  // namespace

// g++ 12 miscompiles braced initialisers (JSON ones above all) inside coroutines, so every
// response is built by a plain function and the coroutines below only await.
struct EngineSim::State {
  explicit State(SimOptions sim_options)
      : options(std::move(sim_options)),
        mode(mode_or_throw(options.mode)),
        pacer(pacing_model(options)),
        created(unix_seconds()),
        ready_at(std::chrono::steady_clock::now() +
                 std::chrono::nanoseconds(static_cast<int64_t>(std::max(0.0, options.startup_seconds) * 1e9))) {}

  const SimOptions options;
  const GenerationMode mode;
  Pacer pacer;
  const int64_t created;
  const std::chrono::steady_clock::time_point ready_at;
  std::atomic<uint64_t> prompt_tokens_total{0};

  bool ready() const { return std::chrono::steady_clock::now() >= ready_at; }

  // A completion decided before its first token: either an error to send or the whole generation.
  struct Completion {
    std::optional<ApiError> error;
    http::Headers headers;  // for the response
    CompletionRequest request;
    CompletionIdentity identity;
    Generation generation;
    Usage usage;
  };

  static http::Headers response_headers(const http::Request& request) {
    http::Headers headers;
    if (std::string request_id = request.header("x-request-id"); !request_id.empty()) {
      headers.push_back({"x-request-id", request_id});
    }
    return headers;
  }

  static http::Response error_response(const ApiError& error, http::Headers headers) {
    if (error.status == 429) headers.push_back({"retry-after", "1"});
    return json_response(error.status, error_json(error), std::move(headers));
  }

  static ApiError starting_error() {
    return ApiError{503, "the engine is starting", "server_error", "", "service_unavailable"};
  }

  http::Response health_response() const { return http::Response{ready() ? 200 : 503, http::Headers(), ""}; }

  http::Response models_response(const http::Request& request) const {
    if (!ready()) return error_response(starting_error(), response_headers(request));
    json model = {{"id", options.model},
                  {"object", "model"},
                  {"created", created},
                  {"owned_by", "nebula-sim"},
                  {"root", options.model},
                  {"parent", nullptr},
                  {"max_model_len", options.max_model_len}};
    json body = {{"object", "list"}, {"data", json::array({std::move(model)})}};
    return json_response(200, body, response_headers(request));
  }

  http::Response metrics_response() const {
    std::string label = fmt::format("{{model_name=\"{}\"}}", options.model);
    std::string text;
    auto metric = [&](const char* name, const char* type, const char* help, uint64_t value) {
      text += fmt::format("# HELP {} {}\n# TYPE {} {}\n{}{} {}\n", name, help, name, type, name, label, value);
    };
    metric("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", pacer.running());
    metric("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", 0);
    metric("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", prompt_tokens_total.load());
    metric("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
           pacer.generated_tokens());
    return http::Response::text(200, std::move(text), "text/plain; version=0.0.4; charset=utf-8");
  }

  Completion prepare_completion(Endpoint endpoint, const http::Request& request) {
    Completion completion;
    completion.headers = response_headers(request);
    if (!ready()) {
      completion.error = starting_error();
      return completion;
    }
    if ((completion.error = forced_error(request.header("x-sim-error")))) return completion;
    CompletionRequest& parsed = completion.request;
    if ((completion.error = parse_completion_request(endpoint, request.body, parsed))) return completion;
    if (!parsed.model.empty() && parsed.model != options.model) {
      completion.error = ApiError{404, fmt::format("The model `{}` does not exist.", parsed.model),
                                  "invalid_request_error", "model", "model_not_found"};
      return completion;
    }
    int room = options.max_model_len - parsed.prompt_tokens;
    int max_tokens = parsed.max_tokens.value_or(std::min(options.default_max_tokens, room));
    if (max_tokens < 1 || max_tokens > room) {
      completion.error = context_length_error(options.max_model_len, parsed.prompt_tokens, parsed.max_tokens, endpoint);
      return completion;
    }
    GenerationInput input;
    input.prompt_text = parsed.prompt_text;
    input.echo_text = parsed.echo_text;
    input.max_tokens = max_tokens;
    input.stop = parsed.stop;
    input.seed = parsed.seed.value_or(options.seed);
    completion.generation = generate(mode, input);
    completion.identity.endpoint = endpoint;
    completion.identity.id = (endpoint == Endpoint::ChatCompletions ? "chatcmpl-" : "cmpl-") + random_id(32);
    completion.identity.created = unix_seconds();
    completion.identity.model = options.model;
    completion.usage = Usage{parsed.prompt_tokens, completion.generation.completion_tokens()};
    if (parsed.stream) {
      completion.headers.push_back({"Content-Type", "text/event-stream; charset=utf-8"});
      completion.headers.push_back({"Cache-Control", "no-cache"});
    }
    prompt_tokens_total += static_cast<uint64_t>(parsed.prompt_tokens);
    spdlog::debug("engine-sim: {} prompt_tokens={} max_tokens={} stream={}", completion.identity.id,
                  parsed.prompt_tokens, max_tokens, parsed.stream);
    return completion;
  }

  // The SSE events for token `index`: the role chunk first (chat), then the token's text unless a
  // stop string left it empty; the last token's chunk carries the finish reason, even when empty.
  // With no tokens at all, index 0 stands for the end of the completion.
  static std::string token_events(const Completion& completion, int index) {
    const Generation& generation = completion.generation;
    bool last = index + 1 >= generation.completion_tokens();
    std::string events;
    if (index == 0 && completion.identity.endpoint == Endpoint::ChatCompletions) {
      events += http::format_sse(dump_json(role_chunk_json(completion.identity)));
    }
    std::string_view text = index < generation.completion_tokens() ? std::string_view(generation.tokens[index]) : "";
    if (!text.empty() || last) {
      events += http::format_sse(dump_json(
          chunk_json(completion.identity, text, last ? &generation.finish_reason : nullptr, generation.stop_reason)));
    }
    return events;
  }

  // What follows the last token: the finish chunk of an empty completion, the usage chunk when
  // asked for, and [DONE].
  static std::string tail_events(const Completion& completion) {
    std::string events;
    if (completion.usage.completion_tokens == 0) events = token_events(completion, 0);
    if (completion.request.include_usage) {
      events += http::format_sse(dump_json(usage_chunk_json(completion.identity, completion.usage)));
    }
    events += http::format_sse("[DONE]");
    return events;
  }

  static awaitable<bool> emit_token(http::ResponseWriter& writer, const Completion& completion, int index) {
    std::string events = token_events(completion, index);
    if (events.empty()) co_return true;
    co_return co_await writer.write(events);
  }

  static awaitable<bool> ignore_token(int index) { co_return true; }

  static awaitable<void> handle_completion(std::shared_ptr<State> state, Endpoint endpoint, http::Request& request,
                                           http::ResponseWriter& writer) {
    Completion completion = state->prepare_completion(endpoint, request);
    if (completion.error) co_return co_await writer.send(error_response(*completion.error, completion.headers));
    int prompt_tokens = completion.usage.prompt_tokens;
    int token_count = completion.usage.completion_tokens;
    if (!completion.request.stream) {
      co_await state->pacer.run(prompt_tokens, token_count, &ignore_token);
      co_return co_await writer.send(json_response(
          200, completion_json(completion.identity, completion.generation, completion.usage), completion.headers));
    }
    if (!co_await writer.start_stream(200, completion.headers)) co_return;
    bool finished = co_await state->pacer.run(prompt_tokens, token_count, [&writer, &completion](int index) {
      return emit_token(writer, completion, index);
    });
    if (finished) co_await writer.write(tail_events(completion));
    co_await writer.finish();
  }
};

EngineSim::EngineSim(asio::io_context& io, SimOptions options) : state_(std::make_shared<State>(std::move(options))) {}

EngineSim::~EngineSim() = default;

void EngineSim::add_routes(http::Router& router) {
  auto state = state_;
  router.add("GET", "/health", [state](http::Request& request, http::ResponseWriter& writer) {
    return send_response(writer, state->health_response());
  });
  router.add("GET", "/v1/models", [state](http::Request& request, http::ResponseWriter& writer) {
    return send_response(writer, state->models_response(request));
  });
  router.add("GET", "/metrics", [state](http::Request& request, http::ResponseWriter& writer) {
    return send_response(writer, state->metrics_response());
  });
  router.add("POST", "/v1/chat/completions", [state](http::Request& request, http::ResponseWriter& writer) {
    return State::handle_completion(state, Endpoint::ChatCompletions, request, writer);
  });
  router.add("POST", "/v1/completions", [state](http::Request& request, http::ResponseWriter& writer) {
    return State::handle_completion(state, Endpoint::Completions, request, writer);
  });
}

const SimOptions& EngineSim::options() const {
  return state_->options;
}
bool EngineSim::ready() const {
  return state_->ready();
}
size_t EngineSim::running() const {
  return state_->pacer.running();
}

int run_engine_sim(const SimOptions& options) {
  asio::io_context io(1);
  http::Router router;
  std::unique_ptr<EngineSim> engine;
  try {
    engine = std::make_unique<EngineSim>(io, options);
  } catch (const std::invalid_argument& error) {
    spdlog::error("engine-sim: {}", error.what());
    return 2;
  }
  engine->add_routes(router);
  http::Server server(io, std::move(router));
  Result<uint16_t> port = server.listen(HostPort{options.host, options.port});
  if (!port) {
    spdlog::error("engine-sim: {}", port.error().message);
    return 1;
  }
  spdlog::info("engine-sim serving model '{}' ({} mode) on http://{}", options.model, options.mode,
               HostPort{options.host, *port}.to_string());
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& error, int signal_number) {
    if (error) return;
    spdlog::info("engine-sim: signal {}, shutting down", signal_number);
    // Server::stop() closes the connections from a posted handler; stop the loop after it ran.
    server.stop();
    asio::post(io, [&io] { io.stop(); });
  });
  io.run();
  return 0;
}

}  // namespace nebula::sim
