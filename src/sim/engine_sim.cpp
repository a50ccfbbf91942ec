#include "sim/sim.h"

#include <fmt/format.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <stdexcept>

#include "common/ids.h"
#include "common/log.h"
#include "http/http.h"
#include "http/sse.h"
#include "sim/formats.h"
#include "sim/generator.h"
#include "sim/metrics_text.h"
#include "sim/tokenizer.h"
#include "sim/wire.h"

namespace nebula::sim {
namespace {

using SteadyTime = std::chrono::steady_clock::time_point;

GenerationMode mode_or_throw(const std::string& mode) {
  auto parsed = parse_generation_mode(mode);
  if (!parsed) throw std::invalid_argument(fmt::format("unknown engine-sim mode '{}' (use lorem or echo)", mode));
  return *parsed;
}

Dialect dialect_or_throw(const std::string& dialect) {
  auto parsed = parse_dialect(dialect);
  if (!parsed) {
    throw std::invalid_argument(
        fmt::format("unknown engine-sim dialect '{}' (use vllm, sglang, llamacpp, tgi or ollama)", dialect));
  }
  return *parsed;
}

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::chrono::nanoseconds from_seconds(double seconds) {
  return std::chrono::nanoseconds(static_cast<int64_t>(std::max(0.0, seconds) * 1e9));
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
  return simulated_error(status, fmt::format("simulated error (X-Sim-Error: {})", status));
}

// vLLM's answers to a prompt that leaves no room, or a max_tokens beyond the room left.
ApiError context_length_error(int max_model_len, int prompt_tokens, std::optional<int> requested_max_tokens,
                              Endpoint endpoint) {
  const char* input = endpoint == Endpoint::ChatCompletions ? "messages" : "prompt";
  std::string message =
      requested_max_tokens && prompt_tokens < max_model_len
          ? fmt::format(
                "'max_tokens' or 'max_completion_tokens' is too large: {}. This model's maximum context length is {} "
                "tokens and your request has {} input tokens ({} > {} - {}).",
                *requested_max_tokens, max_model_len, prompt_tokens, *requested_max_tokens, max_model_len,
                prompt_tokens)
          : fmt::format(
                "This model's maximum context length is {} tokens. However, your request has {} input tokens. Please "
                "reduce the length of the input {}.",
                max_model_len, prompt_tokens, input);
  return ApiError{400, std::move(message), "invalid_request_error", input, "context_length_exceeded"};
}

awaitable<void> send_response(http::ResponseWriter& writer, http::Response response) {
  co_await writer.send(std::move(response));
}

awaitable<void> sleep_for(std::chrono::nanoseconds duration) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_after(duration);
  boost::system::error_code ignored;
  co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
}

// Where the engine's step loop leaves news for one request's handler: tokens per choice, and
// whether each choice finished. Lives on the io_context thread.
class Mailbox {
 public:
  Mailbox(asio::any_io_executor executor, size_t choices) : timer_(executor), progress_(choices) {
    timer_.expires_at(SteadyTime::max());
  }
  struct Progress {
    int tokens = 0;
    bool finished = false;
    int cached_tokens = 0;
  };
  void update(size_t choice, const SeqUpdate& update) {
    progress_[choice] = Progress{update.tokens, update.finished, update.cached_tokens};
    news_ = true;
    timer_.cancel();
  }
  // Wakes a waiter without progress (its client went away).
  void wake() {
    news_ = true;
    timer_.cancel();
  }
  // The model process serving this request is gone (router mode: the model was unloaded): the
  // handler ends the request without an answer.
  void cut() {
    cut_ = true;
    wake();
  }
  bool was_cut() const { return cut_; }
  // Returns once there is news not yet waited for.
  awaitable<void> wait() {
    while (!news_) {
      timer_.expires_at(SteadyTime::max());
      boost::system::error_code ignored;
      co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
    news_ = false;
  }
  const std::vector<Progress>& progress() const { return progress_; }
  bool all_finished() const {
    for (const Progress& choice : progress_) {
      if (!choice.finished) return false;
    }
    return true;
  }

 private:
  asio::steady_timer timer_;
  std::vector<Progress> progress_;
  bool news_ = false;
  bool cut_ = false;
};

}  // namespace

ResolvedSim resolve(const SimOptions& options) {
  const Profile* base = find_profile(options.profile);
  if (!base) {
    throw std::invalid_argument(
        fmt::format("unknown engine-sim profile '{}' (use one of: {})", options.profile, profile_names()));
  }
  dialect_or_throw(options.dialect);
  ResolvedSim resolved;
  Profile& profile = resolved.profile;
  profile = *base;
  auto apply = [](auto& field, const auto& override_value) {
    if (override_value) field = *override_value;
  };
  apply(profile.step_base_ms, options.step_base_ms);
  apply(profile.prefill_step_ms, options.prefill_step_ms);
  apply(profile.prefill_ms_per_token, options.prefill_ms_per_token);
  apply(profile.decode_ms_per_seq, options.decode_ms_per_seq);
  apply(profile.step_noise, options.step_noise);
  apply(profile.max_num_seqs, options.max_num_seqs);
  apply(profile.max_num_batched_tokens, options.max_num_batched_tokens);
  apply(profile.gpu_memory_gb, options.gpu_memory_gb);
  apply(profile.gpu_memory_utilization, options.gpu_memory_utilization);
  apply(profile.weights_gb, options.weights_gb);
  apply(profile.kv_bytes_per_token, options.kv_bytes_per_token);
  apply(profile.wake_l1_seconds, options.wake_l1_seconds);
  apply(profile.wake_l2_seconds, options.wake_l2_seconds);
  apply(profile.startup_seconds, options.startup_seconds);
  apply(profile.hidden_size, options.embedding_dim);

  EngineConfig& engine = resolved.engine;
  engine.block_size = options.block_size;
  engine.num_kv_blocks = options.kv_blocks.value_or(kv_blocks_for(profile, options.block_size));
  engine.max_num_seqs = profile.max_num_seqs;
  engine.max_num_batched_tokens = profile.max_num_batched_tokens;
  engine.max_model_len = options.max_model_len;
  engine.enable_prefix_caching = options.enable_prefix_caching;
  engine.enable_chunked_prefill = options.enable_chunked_prefill;
  engine.cost = StepCost{profile.step_base_ms, profile.prefill_step_ms, profile.prefill_ms_per_token,
                         profile.decode_ms_per_seq, profile.step_noise};
  engine.seed = options.seed;
  resolved.startup_seconds = profile.startup_seconds;
  resolved.embedding_dim = profile.hidden_size;
  return resolved;
}

// g++ 12 miscompiles braced initialisers (JSON ones above all) inside coroutines, so every
// response is built by a plain function and the coroutines below only await.
struct EngineSim::State {
  State(asio::io_context& io_context, SimOptions sim_options)
      : io(io_context),
        options(std::move(sim_options)),
        resolved(resolve(options)),
        mode(mode_or_throw(options.mode)),
        dialect(dialect_or_throw(options.dialect)),
        engine(resolved.engine),
        created(unix_seconds()),
        origin(std::chrono::steady_clock::now()),
        ready_at(origin + from_seconds(resolved.startup_seconds)),
        fault_rng(options.seed ^ 0xfa17ULL) {
    if (!options.router) return;
    if (dialect != Dialect::Llamacpp)
      throw std::invalid_argument("router mode is llama-server's: use --dialect llamacpp");
    // The router starts with no model loaded: nothing of it on the GPU.
    router_state = RouterState::Unloaded;
    weights_on_gpu = false;
    kv_on_gpu = false;
    engine.sleep();
  }

  asio::io_context& io;
  const SimOptions options;
  const ResolvedSim resolved;
  const GenerationMode mode;
  const Dialect dialect;
  Engine engine;
  const int64_t created;
  const SteadyTime origin;
  const SteadyTime ready_at;

  // The step loop's timer and the deadline it is armed for (io thread only).
  asio::steady_timer* loop_timer = nullptr;
  SteadyTime armed = SteadyTime::max();
  std::atomic<bool> stopped{false};
  // Mirrors for other threads.
  std::atomic<size_t> running_count{0};
  std::atomic<size_t> waiting_count{0};

  // Faults.
  uint64_t requests_received = 0;
  uint64_t fault_rng;
  bool hung = false;

  // Sleep mode: what is off the GPU.
  int sleep_level = 0;
  bool weights_on_gpu = true;
  bool kv_on_gpu = true;

  // Router mode (llamacpp): the model's status in GET /models. Every load and unload bumps the
  // generation, so the end of a load that was unloaded meanwhile changes nothing.
  enum class RouterState { Unloaded, Loading, Loaded, Sleeping };
  RouterState router_state = RouterState::Loaded;
  uint64_t router_generation = 0;
  // Requests the model's process is serving (router mode): an unload ends them.
  std::vector<std::weak_ptr<Mailbox>> routed;
  SteadyTime idle_since = SteadyTime::max();  // router mode: when the model last had nothing to do

  // A router answers at once; its model's load takes startup_seconds instead.
  bool ready() const { return options.router || std::chrono::steady_clock::now() >= ready_at; }
  SimDuration sim_now() const { return std::chrono::steady_clock::now() - origin; }

  void publish_counts() {
    running_count.store(engine.running(), std::memory_order_relaxed);
    waiting_count.store(engine.waiting(), std::memory_order_relaxed);
  }

  // Re-arms the step loop when the engine now has something to do sooner than it was waiting for.
  void kick() {
    publish_counts();
    if (!loop_timer) return;
    auto next = engine.next_event_time();
    if (next && origin + *next < armed) loop_timer->cancel();
  }

  static awaitable<void> drive(std::shared_ptr<State> state) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    // Unregisters the timer however the frame ends: handlers destroyed after it (at shutdown)
    // still call kick().
    struct Registration {
      State* state;
      ~Registration() { state->loop_timer = nullptr; }
    } registration{state.get()};
    state->loop_timer = &timer;
    while (!state->stopped) {
      auto next = state->engine.next_event_time();
      state->armed = next ? state->origin + *next : SteadyTime::max();
      timer.expires_at(state->armed);
      boost::system::error_code ignored;
      co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
      if (state->stopped) break;
      state->engine.advance_to(state->sim_now());
      state->publish_counts();
    }
  }

  double gpu_memory_used_bytes() const {
    // A router without its model has no model process, so no CUDA context either.
    if (options.router && router_state != RouterState::Loaded) return 0;  // unloaded, loading or asleep
    const Profile& profile = resolved.profile;
    double kv_pool =
        static_cast<double>(resolved.engine.num_kv_blocks) * resolved.engine.block_size * profile.kv_bytes_per_token;
    double used = profile.reserved_gb * 1e9;
    if (weights_on_gpu) used += profile.weights_gb * 1e9;
    if (kv_on_gpu) used += kv_pool;
    return used;
  }

  double next_uniform() {
    uint64_t z = (fault_rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) * 0x1.0p-53;
  }

  static http::Headers response_headers(const http::Request& request) {
    http::Headers headers;
    if (std::string request_id = request.header("x-request-id"); !request_id.empty()) {
      headers.push_back({"x-request-id", request_id});
    }
    // The trace context it was sent, echoed back as it came (W3C traceparent).
    if (std::string traceparent = request.header("traceparent"); !traceparent.empty() && traceparent.size() <= 128) {
      headers.push_back({"traceparent", traceparent});
    }
    return headers;
  }

  static http::Response json_response(int status, const json& body, http::Headers headers) {
    headers.push_back({"Content-Type", "application/json"});
    return http::Response{status, std::move(headers), dump_json(body)};
  }

  static http::Response error_response(const ApiError& error, http::Headers headers) {
    if (error.status == 429) headers.push_back({"retry-after", "1"});
    return json_response(error.status, error_json(error), std::move(headers));
  }

  // The checks every inference request goes through, in order: starting, asleep, faults.
  // Counts the request. May crash the process or hang the engine.
  std::optional<ApiError> admission_error(const http::Request& request) {
    if (!ready()) return ApiError{503, "the engine is starting", "server_error", "", "service_unavailable"};
    if (sleep_level > 0 || !weights_on_gpu || !kv_on_gpu) {
      return ApiError{503, "the engine is sleeping; POST /wake_up first", "server_error", "", "service_unavailable"};
    }
    ++requests_received;
    if (options.crash_after > 0 && requests_received > static_cast<uint64_t>(options.crash_after)) {
      spdlog::error("engine-sim: simulated crash at request {} (--crash-after {})", requests_received,
                    options.crash_after);
      if (options.crash) {
        options.crash();
      } else {
        std::_Exit(1);
      }
    }
    if (options.hang_after > 0 && requests_received > static_cast<uint64_t>(options.hang_after) && !hung) {
      spdlog::error("engine-sim: simulated hang at request {} (--hang-after {})", requests_received,
                    options.hang_after);
      hung = true;
      engine.set_frozen(true);
    }
    if (auto error = forced_error(request.header("x-sim-error"))) return error;
    if (options.fail_rate > 0 && next_uniform() < options.fail_rate) {
      static constexpr int kStatuses[] = {429, 500, 503};
      int status = kStatuses[static_cast<int>(next_uniform() * 3) % 3];
      return simulated_error(status, fmt::format("simulated failure (--fail-rate {})", options.fail_rate));
    }
    return std::nullopt;
  }

  // Validates a parsed request against the model and decides every choice's text.
  std::optional<ApiError> plan_completion(Completion& completion) {
    CompletionRequest& parsed = completion.request;
    if (!parsed.model.empty() && parsed.model != options.model) {
      return ApiError{404, fmt::format("The model `{}` does not exist.", parsed.model), "invalid_request_error",
                      "model", "model_not_found"};
    }
    if (parsed.logprobs && *parsed.logprobs > options.max_logprobs) {
      return ApiError{400,
                      fmt::format("Requested sample logprobs of {}, which is greater than max allowed: {}",
                                  *parsed.logprobs, options.max_logprobs),
                      "invalid_request_error",
                      parsed.endpoint == Endpoint::ChatCompletions ? "top_logprobs" : "logprobs", ""};
    }
    std::vector<Prompt> prompts = parsed.prompts;
    if (prompts.empty()) prompts.push_back(Prompt{parsed.prompt_text, parsed.prompt_tokens});
    GenerationInput input;
    input.stop = parsed.stop;
    input.ignore_eos = parsed.ignore_eos;
    input.format = parsed.format;
    input.schema = parsed.format == OutputFormat::JsonSchema ? &parsed.schema : nullptr;
    input.top_logprobs = parsed.logprobs;
    input.echo = parsed.echo;
    uint64_t seed = parsed.seed.value_or(options.seed);
    for (const Prompt& prompt : prompts) {
      // vLLM's rule: without max_tokens a completion may fill the context (its generation
      // config's max_new_tokens, --default-max-tokens here, may cap it).
      int room = options.max_model_len - prompt.tokens;
      int max_tokens =
          parsed.max_tokens.value_or(options.default_max_tokens ? std::min(*options.default_max_tokens, room) : room);
      if (room < 1 || max_tokens > room) {
        return context_length_error(options.max_model_len, prompt.tokens, parsed.max_tokens,
                                    completion.identity.endpoint);
      }
      bool only_prompt = parsed.prompts.empty();
      input.prompt_text = only_prompt ? parsed.prompt_text : prompt.text;
      input.echo_text = only_prompt ? parsed.echo_text : prompt.text;
      input.max_tokens = max_tokens;
      for (int index = 0; index < parsed.n; ++index) {
        input.seed = seed + static_cast<uint64_t>(index) * 0x9e3779b97f4a7c15ULL;
        completion.generations.push_back(generate(mode, input));
        completion.choice_prompts.push_back(input.prompt_text);
      }
      completion.usage.prompt_tokens += prompt.tokens;
    }
    completion.identity.created = unix_seconds();
    completion.identity.model = options.model;
    completion.usage.details = options.enable_prompt_tokens_details;
    for (const Generation& generation : completion.generations) {
      completion.usage.completion_tokens += generation.completion_tokens();
    }
    return std::nullopt;
  }

  // Hands every choice of the completion to the engine; updates land in the mailbox.
  std::vector<SeqId> submit(const Completion& completion, const std::shared_ptr<Mailbox>& mailbox) {
    engine.advance_to(sim_now());
    std::vector<SeqId> ids;
    for (size_t index = 0; index < completion.generations.size(); ++index) {
      const Generation& generation = completion.generations[index];
      SeqRequest sequence;
      sequence.prompt = tokenize(completion.choice_prompts[index]);
      sequence.output_tokens = generation.completion_tokens();
      sequence.finish = generation.finish_reason == FinishReason::Stop ? FinishKind::Stop : FinishKind::Length;
      sequence.on_update = [mailbox, index](const SeqUpdate& update) { mailbox->update(index, update); };
      ids.push_back(engine.submit(std::move(sequence)));
    }
    kick();
    return ids;
  }

  void abort(const std::vector<SeqId>& ids) {
    for (SeqId id : ids) engine.abort(id);
    kick();
  }

  // Aborts the sequences of a request whose handler ends early (client gone, server stopping).
  class AbortGuard {
   public:
    AbortGuard(std::shared_ptr<State> state, std::vector<SeqId> ids) : state_(std::move(state)), ids_(std::move(ids)) {}
    ~AbortGuard() {
      if (state_) state_->abort(ids_);
    }
    AbortGuard(const AbortGuard&) = delete;
    AbortGuard& operator=(const AbortGuard&) = delete;
    void release() { state_.reset(); }

   private:
    std::shared_ptr<State> state_;
    std::vector<SeqId> ids_;
  };

  static void fill_cached_tokens(Completion& completion, const Mailbox& mailbox) {
    completion.usage.cached_tokens = mailbox.progress().empty() ? 0 : mailbox.progress()[0].cached_tokens;
  }

  // Runs a planned completion through the engine and answers in `format`, streamed or not.
  static awaitable<void> run_completion(std::shared_ptr<State> state, Completion& completion,
                                        const CompletionFormat& format, http::ResponseWriter& writer) {
    auto mailbox = std::make_shared<Mailbox>(co_await asio::this_coro::executor, completion.generations.size());
    AbortGuard guard(state, state->submit(completion, mailbox));
    state->track_routed(mailbox);
    bool stream = completion.request.stream;
    if (stream && !co_await writer.start_stream(200, format.stream_headers(completion))) co_return;
    // Watch for the client leaving while nothing is written to it (queued, or a non-streamed
    // answer), so its sequences and KV blocks are freed at once.
    writer.on_client_gone([mailbox] { mailbox->wake(); });
    std::vector<int> sent(completion.generations.size(), 0);
    std::vector<bool> ended(completion.generations.size(), false);
    while (true) {
      co_await mailbox->wait();
      if (writer.client_gone()) co_return;  // the guard aborts the sequences
      if (mailbox->was_cut()) throw_unloaded();
      fill_cached_tokens(completion, *mailbox);
      if (stream) {
        std::string events = format.progress_events(completion, mailbox_progress(*mailbox), sent, ended);
        if (!events.empty() && !co_await writer.write(events)) co_return;
      }
      if (mailbox->all_finished()) break;
    }
    guard.release();
    if (!stream) co_return co_await writer.send(format.whole_response(completion));
    std::string tail = format.tail_events(completion);
    if (!tail.empty() && !co_await writer.write(tail)) co_return;
    co_await writer.finish();
  }

  // The real router's model process exits on unload: its requests end without the rest of their
  // answer. Thrown from a handler, this makes the server close the connection (a 500 when nothing
  // was sent yet).
  [[noreturn]] static void throw_unloaded() { throw std::runtime_error("the model was unloaded"); }

  void track_routed(const std::shared_ptr<Mailbox>& mailbox) {
    if (!options.router) return;
    std::erase_if(routed, [](const std::weak_ptr<Mailbox>& weak) { return weak.expired(); });
    routed.push_back(mailbox);
  }

  static std::vector<ChoiceProgress> mailbox_progress(const Mailbox& mailbox) {
    std::vector<ChoiceProgress> progress;
    progress.reserve(mailbox.progress().size());
    for (const Mailbox::Progress& choice : mailbox.progress()) progress.push_back({choice.tokens, choice.finished});
    return progress;
  }

  // Parses with `parse` (which fills completion.request) and answers through the engine.
  template <typename Parse>
  static awaitable<void> handle_generation(std::shared_ptr<State> state, http::Request& request,
                                           http::ResponseWriter& writer, const CompletionFormat& format, Parse parse) {
    if (state->options.router) {
      std::optional<http::Response> refusal = co_await route_request(state, request, body_model(request));
      if (refusal) co_return co_await writer.send(std::move(*refusal));
    }
    if (state->options.log_requests) {
      spdlog::info("engine-sim: {} {} x-request-id={} traceparent={}", request.method, request.path,
                   request.header("x-request-id"), request.header("traceparent"));
    }
    Completion completion;
    completion.headers = response_headers(request);
    std::optional<ApiError> error = state->admission_error(request);
    if (!error) error = parse(request, completion);
    if (!error) error = state->plan_completion(completion);
    if (error) co_return co_await writer.send(format.error_response(*error, completion.headers));
    co_await run_completion(state, completion, format, writer);
  }

  // ---- Non-generation endpoints: plain functions.

  http::Response health_response() const {
    if (!ready()) return dialect_health_starting(dialect);
    return dialect_health_ok(dialect);
  }

  http::Response models_response(const http::Request& request) const {
    if (options.router)
      return json_response(
          200, router_models_json(options.model, router_status(), created, options.router_lists_default), {});
    if (!ready()) return error_response(starting_error(), response_headers(request));
    return json_response(200, models_json(options.model, created, options.max_model_len), response_headers(request));
  }

  static ApiError starting_error() {
    return ApiError{503, "the engine is starting", "server_error", "", "service_unavailable"};
  }

  http::Response metrics_response() const {
    ServerGauges gauges;
    gauges.model = options.model;
    gauges.gpu_memory_used_bytes = gpu_memory_used_bytes();
    gauges.sleeping = sleep_level > 0;
    gauges.requests_received = requests_received;
    return http::Response::text(200, render_metrics(dialect, engine, gauges),
                                "text/plain; version=0.0.4; charset=utf-8");
  }

  http::Response tokenize_response(const http::Request& request) const {
    TokenizeRequest parsed;
    if (auto error = parse_tokenize_request(request.body, parsed)) return error_response(*error, {});
    return json_response(200, tokenize_json(tokenize(parsed.text), options.max_model_len), {});
  }

  // Embeddings: each input is a prefill-only sequence through the engine, so they cost GPU time
  // like any prompt. Returns the inputs to submit, or an error.
  std::optional<ApiError> plan_embeddings(const http::Request& request, EmbeddingRequest& parsed) {
    if (auto error = admission_error(request)) return error;
    if (auto error = parse_embedding_request(request.body, parsed)) return error;
    if (!parsed.model.empty() && parsed.model != options.model) {
      return ApiError{404, fmt::format("The model `{}` does not exist.", parsed.model), "invalid_request_error",
                      "model", "model_not_found"};
    }
    for (int tokens : parsed.input_tokens) {
      if (tokens > options.max_model_len) {
        return context_length_error(options.max_model_len, tokens, std::nullopt, Endpoint::Completions);
      }
    }
    return std::nullopt;
  }

  std::vector<SeqId> submit_embeddings(const EmbeddingRequest& parsed, const std::shared_ptr<Mailbox>& mailbox) {
    engine.advance_to(sim_now());
    std::vector<SeqId> ids;
    for (size_t index = 0; index < parsed.inputs.size(); ++index) {
      SeqRequest sequence;
      sequence.prompt = tokenize(parsed.inputs[index]);
      sequence.output_tokens = 0;
      sequence.finish = FinishKind::Stop;
      sequence.on_update = [mailbox, index](const SeqUpdate& update) { mailbox->update(index, update); };
      ids.push_back(engine.submit(std::move(sequence)));
    }
    kick();
    return ids;
  }

  http::Response embeddings_response(const EmbeddingRequest& parsed) const {
    int dimensions = parsed.dimensions.value_or(resolved.embedding_dim);
    return json_response(
        200, embeddings_json(parsed, dimensions, options.model, "embd-" + random_id(32), unix_seconds()), {});
  }

  static awaitable<void> handle_embeddings(std::shared_ptr<State> state, http::Request& request,
                                           http::ResponseWriter& writer) {
    if (state->options.router) {
      std::optional<http::Response> refusal = co_await route_request(state, request, body_model(request));
      if (refusal) co_return co_await writer.send(std::move(*refusal));
    }
    EmbeddingRequest parsed;
    if (auto error = state->plan_embeddings(request, parsed)) {
      co_return co_await writer.send(error_response(*error, response_headers(request)));
    }
    auto mailbox = std::make_shared<Mailbox>(co_await asio::this_coro::executor, parsed.inputs.size());
    AbortGuard guard(state, state->submit_embeddings(parsed, mailbox));
    state->track_routed(mailbox);
    while (!mailbox->all_finished()) {
      co_await mailbox->wait();
      if (mailbox->was_cut()) throw_unloaded();
    }
    guard.release();
    co_await writer.send(state->embeddings_response(parsed));
  }

  // ---- Sleep mode (vLLM's dev-mode endpoints).

  // Starts sleeping at the request's level: the response to send once `duration` has passed.
  struct SleepPlan {
    http::Response response{200, {}, ""};
    std::chrono::nanoseconds duration{0};
  };
  SleepPlan begin_sleep(const http::Request& request) {
    SleepPlan plan;
    std::string level_text = request.query_or("level", "1");
    if (level_text != "1" && level_text != "2") {
      plan.response = error_response(ApiError{400, fmt::format("sleep level must be 1 or 2, got '{}'", level_text),
                                              "invalid_request_error", "level", ""},
                                     {});
      return plan;
    }
    if (sleep_level > 0) return plan;
    if (!engine.sleep()) {
      plan.response = error_response(
          ApiError{400, fmt::format("cannot sleep with {} requests in flight", engine.running() + engine.waiting()),
                   "invalid_request_error", "", ""},
          {});
      return plan;
    }
    int level = level_text == "1" ? 1 : 2;
    sleep_level = level;
    weights_on_gpu = false;
    kv_on_gpu = false;
    spdlog::info("engine-sim: sleeping at level {}", level);
    // Level 1 copies the weights to CPU RAM (as long as copying them back); level 2 drops them.
    plan.duration =
        from_seconds(level == 1 ? resolved.profile.wake_l1_seconds : 0.1 * resolved.profile.wake_l1_seconds);
    return plan;
  }

  // What /wake_up?tags=... restores and how long it takes; the state changes when it is done.
  struct WakePlan {
    bool weights = false;
    bool kv_cache = false;
    std::chrono::nanoseconds duration{0};
  };
  WakePlan plan_wake(const http::Request& request) const {
    WakePlan plan;
    // Router::query keeps one value per name; a repeated tags parameter arrives comma-joined or once.
    std::string tags = request.query_or("tags", "");
    plan.weights = tags.empty() || tags.find("weights") != std::string::npos;
    plan.kv_cache = tags.empty() || tags.find("kv_cache") != std::string::npos;
    if (plan.weights && !weights_on_gpu) {
      plan.duration +=
          from_seconds(sleep_level == 2 ? resolved.profile.wake_l2_seconds : resolved.profile.wake_l1_seconds);
    }
    if (plan.kv_cache && !kv_on_gpu) plan.duration += std::chrono::milliseconds(50);  // re-allocating the pool
    return plan;
  }

  http::Response finish_wake(const WakePlan& plan) {
    if (plan.weights) weights_on_gpu = true;
    if (plan.kv_cache) kv_on_gpu = true;
    if (weights_on_gpu && kv_on_gpu && sleep_level > 0) {
      sleep_level = 0;
      engine.wake();
      kick();
      spdlog::info("engine-sim: awake");
    }
    return http::Response{200, {}, ""};
  }

  static awaitable<void> handle_sleep(std::shared_ptr<State> state, http::Request& request,
                                      http::ResponseWriter& writer) {
    SleepPlan plan = state->begin_sleep(request);
    co_await sleep_for(plan.duration);
    co_await writer.send(std::move(plan.response));
  }

  static awaitable<void> handle_wake(std::shared_ptr<State> state, http::Request& request,
                                     http::ResponseWriter& writer) {
    WakePlan plan = state->plan_wake(request);
    co_await sleep_for(plan.duration);
    co_await writer.send(state->finish_wake(plan));
  }

  http::Response is_sleeping_response() const { return json_response(200, is_sleeping_json(sleep_level > 0), {}); }

  // ---- Router mode (llama-server started without -m): plain functions, then the coroutines.

  const char* router_status() const {
    switch (router_state) {
      case RouterState::Unloaded: return "unloaded";
      case RouterState::Loading: return "loading";
      case RouterState::Loaded: return "loaded";
      case RouterState::Sleeping: return "sleeping";
    }
    return "unloaded";
  }

  // The "model" of a JSON body; "" when there is none (the router then refuses the request).
  static std::string body_model(const http::Request& request) {
    auto body = parse_json(request.body);
    if (!body || !body->is_object()) return "";
    auto model = body->find("model");
    return model != body->end() && model->is_string() ? model->get<std::string>() : "";
  }

  // What the router does with a request for `model` before passing it on (llama.cpp's
  // router_validate_model): an error, or load the model first (autoload), or pass it on.
  struct Route {
    std::optional<http::Response> refusal;
    bool load = false;
  };
  Route route(const std::string& model, const http::Request& request) const {
    Route route;
    if (model.empty()) {
      route.refusal = llamacpp_error(400, "model name is missing from the request", "invalid_request_error");
    } else if (model != options.model) {
      route.refusal = llamacpp_error(400, "model not found", "invalid_request_error");
    } else if (router_state == RouterState::Sleeping) {
      route.load = true;  // a sleeping model wakes for the request, autoload or not
    } else if (router_state != RouterState::Loaded) {
      std::string autoload = request.query_or("autoload", "");
      route.load = autoload.empty() ? options.models_autoload : autoload == "true" || autoload == "1";
      if (!route.load) route.refusal = llamacpp_error(400, "model is not loaded", "invalid_request_error");
    }
    return route;
  }

  // Unloaded (or Sleeping) -> Loading now -> Loaded after startup_seconds (a model process
  // starting, or waking).
  static void begin_load(const std::shared_ptr<State>& state) {
    if (state->router_state != RouterState::Unloaded && state->router_state != RouterState::Sleeping) return;
    state->router_state = RouterState::Loading;
    uint64_t generation = ++state->router_generation;
    spdlog::info("engine-sim: loading model {}", state->options.model);
    asio::co_spawn(state->io, finish_load_later(state, generation), asio::detached);
  }

  void finish_load(uint64_t generation) {
    if (stopped || generation != router_generation || router_state != RouterState::Loading) return;
    router_state = RouterState::Loaded;
    weights_on_gpu = true;
    kv_on_gpu = true;
    engine.wake();
    idle_since = std::chrono::steady_clock::now();
    kick();
    spdlog::info("engine-sim: model {} loaded", options.model);
  }

  // --sleep-idle-seconds (llama-server's): a loaded model with nothing to do for that long frees
  // the GPU and shows as "sleeping"; the next request for it wakes it (a load's time).
  static awaitable<void> sleep_when_idle(std::shared_ptr<State> state) {
    while (!state->stopped) {
      co_await sleep_for(std::chrono::milliseconds(50));
      if (state->router_state != RouterState::Loaded) continue;
      auto now = std::chrono::steady_clock::now();
      if (state->engine.running() > 0 || state->engine.waiting() > 0) {
        state->idle_since = now;
      } else if (now - state->idle_since >= from_seconds(state->options.sleep_idle_seconds) && state->engine.sleep()) {
        ++state->router_generation;
        state->router_state = RouterState::Sleeping;
        state->weights_on_gpu = false;
        state->kv_on_gpu = false;
        spdlog::info("engine-sim: model {} is sleeping (idle)", state->options.model);
      }
    }
  }

  // Frees the weights and KV cache once the requests in flight, which the unload ended, have let go
  // of their sequences (a moment later). Until then it stays "loaded".
  bool finish_unload(uint64_t generation) {
    if (stopped || generation != router_generation) return true;
    if (!engine.sleep()) return false;
    router_state = RouterState::Unloaded;
    weights_on_gpu = false;
    kv_on_gpu = false;
    spdlog::info("engine-sim: model {} unloaded", options.model);
    return true;
  }

  // POST /models/load {"model": NAME}: answers at once, loads in the background.
  static http::Response load_response(const std::shared_ptr<State>& state, const http::Request& request) {
    if (body_model(request) != state->options.model)
      return llamacpp_error(404, "model is not found", "not_found_error");
    if (state->router_state != RouterState::Unloaded) {
      return llamacpp_error(400, "model is already running", "invalid_request_error");
    }
    begin_load(state);
    return json_response(200, json{{"success", true}}, {});
  }

  // POST /models/unload {"model": NAME}: answers at once, unloads in the background.
  static http::Response unload_response(const std::shared_ptr<State>& state, const http::Request& request) {
    if (body_model(request) != state->options.model) {
      return llamacpp_error(400, "model is not found", "invalid_request_error");
    }
    if (state->router_state == RouterState::Unloaded) {
      return llamacpp_error(400, "model is not running", "invalid_request_error");
    }
    uint64_t generation = ++state->router_generation;
    if (state->router_state == RouterState::Loading || state->router_state == RouterState::Sleeping) {
      state->router_state = RouterState::Unloaded;  // nothing of it on the GPU
    } else {
      // The model's process exits: whatever it was answering ends with it.
      for (const auto& weak : state->routed) {
        if (auto mailbox = weak.lock()) mailbox->cut();
      }
      state->routed.clear();
      asio::co_spawn(state->io, unload_when_idle(state, generation), asio::detached);
    }
    return json_response(200, json{{"success", true}}, {});
  }

  static awaitable<void> finish_load_later(std::shared_ptr<State> state, uint64_t generation) {
    co_await sleep_for(from_seconds(state->resolved.startup_seconds));
    state->finish_load(generation);
  }

  static awaitable<void> unload_when_idle(std::shared_ptr<State> state, uint64_t generation) {
    while (!state->finish_unload(generation)) co_await sleep_for(std::chrono::milliseconds(10));
  }

  static http::Response load_failed_response(const std::string& model) {
    return llamacpp_error(500, "model name=" + model + " failed to load", "server_error");
  }

  // The router's part of a request for `model`: nullopt to pass it on (loading the model first when
  // autoload says so), else the refusal to send.
  static awaitable<std::optional<http::Response>> route_request(std::shared_ptr<State> state, http::Request& request,
                                                                std::string model) {
    Route decided = state->route(model, request);
    if (decided.refusal) co_return std::move(decided.refusal);
    if (!decided.load) co_return std::nullopt;
    begin_load(state);
    while (state->router_state == RouterState::Loading && !state->stopped) {
      co_await sleep_for(std::chrono::milliseconds(10));
    }
    if (state->router_state != RouterState::Loaded) co_return load_failed_response(model);
    co_return std::nullopt;
  }

  // A GET endpoint the router passes on by ?model= (/metrics, /props, /slots), or a POST one it
  // passes on by the body's "model" (/tokenize): `build` makes the model's answer.
  template <typename Build>
  static awaitable<void> handle_routed(std::shared_ptr<State> state, http::Request& request,
                                       http::ResponseWriter& writer, std::string model, Build build) {
    std::optional<http::Response> refusal = co_await route_request(state, request, std::move(model));
    if (refusal) co_return co_await writer.send(std::move(*refusal));
    co_await writer.send(build());
  }

  // A hung engine answers nothing: the handler waits until the connection or server goes.
  static awaitable<void> hang_forever() {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    timer.expires_at(SteadyTime::max());
    boost::system::error_code ignored;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
  }

  static awaitable<void> handle_health(std::shared_ptr<State> state, http::Request& request,
                                       http::ResponseWriter& writer) {
    if (state->hung) co_await hang_forever();
    co_await writer.send(state->health_response());
  }
};

EngineSim::EngineSim(asio::io_context& io, SimOptions options)
    : state_(std::make_shared<State>(io, std::move(options))) {
  asio::co_spawn(io, State::drive(state_), asio::detached);
  if (state_->options.router && state_->options.sleep_idle_seconds > 0) {
    asio::co_spawn(io, State::sleep_when_idle(state_), asio::detached);
  }
}

EngineSim::~EngineSim() {
  state_->stopped = true;
  asio::post(state_->io, [state = state_] {
    if (state->loop_timer) state->loop_timer->cancel();
  });
}

void EngineSim::add_routes(http::Router& router) {
  auto state = state_;
  router.add("GET", "/health", [state](http::Request& request, http::ResponseWriter& writer) {
    return State::handle_health(state, request, writer);
  });
  router.add("GET", "/v1/models", [state](http::Request& request, http::ResponseWriter& writer) {
    return send_response(writer, state->models_response(request));
  });
  if (state->options.router) add_router_routes(router);
  if (state->dialect != Dialect::Ollama && !state->options.router) {
    router.add("GET", "/metrics", [state](http::Request& request, http::ResponseWriter& writer) {
      return send_response(writer, state->metrics_response());
    });
  }
  router.add("POST", "/v1/chat/completions", [state](http::Request& request, http::ResponseWriter& writer) {
    return State::handle_generation(state, request, writer, openai_format(), parse_openai_chat);
  });
  router.add("POST", "/v1/completions", [state](http::Request& request, http::ResponseWriter& writer) {
    return State::handle_generation(state, request, writer, openai_format(), parse_openai_completion);
  });
  router.add("POST", "/v1/embeddings", [state](http::Request& request, http::ResponseWriter& writer) {
    return State::handle_embeddings(state, request, writer);
  });
  router.add("POST", "/tokenize", [state](http::Request& request, http::ResponseWriter& writer) {
    return send_response(writer, state->tokenize_response(request));
  });
  if (state->dialect == Dialect::Vllm) {
    router.add("POST", "/sleep", [state](http::Request& request, http::ResponseWriter& writer) {
      return State::handle_sleep(state, request, writer);
    });
    router.add("POST", "/wake_up", [state](http::Request& request, http::ResponseWriter& writer) {
      return State::handle_wake(state, request, writer);
    });
    router.add("GET", "/is_sleeping", [state](http::Request& request, http::ResponseWriter& writer) {
      return send_response(writer, state->is_sleeping_response());
    });
    router.add("POST", "/collective_rpc", [state](http::Request& request, http::ResponseWriter& writer) {
      // vLLM's level-2 wake calls reload_weights here; the simulated reload happens in wake_up.
      return send_response(writer, http::Response{200, {}, "{\"results\":[null]}"});
    });
  }
  add_dialect_routes(
      state->dialect, router,
      [state](http::Request& request, http::ResponseWriter& writer, const CompletionFormat& format,
              NativeParser parse) { return State::handle_generation(state, request, writer, format, parse); },
      [state]() {
        return DialectContext{&state->options, &state->resolved, &state->engine};
      });
}

// llama-server's router: model management, and the GET endpoints it passes on by ?model= (its
// POST ones are routed in the handlers). Added before the dialect's own, so these win.
void EngineSim::add_router_routes(http::Router& router) {
  auto state = state_;
  router.add("GET", "/models", [state](http::Request& request, http::ResponseWriter& writer) {
    return send_response(writer, state->models_response(request));
  });
  router.add("POST", "/models/load", [state](http::Request& request, http::ResponseWriter& writer) {
    return send_response(writer, State::load_response(state, request));
  });
  router.add("POST", "/models/unload", [state](http::Request& request, http::ResponseWriter& writer) {
    return send_response(writer, State::unload_response(state, request));
  });
  router.add("GET", "/metrics", [state](http::Request& request, http::ResponseWriter& writer) {
    return State::handle_routed(state, request, writer, request.query_or("model"),
                                [state] { return state->metrics_response(); });
  });
  router.add("GET", "/props", [state](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
    if (request.query_or("model").empty())
      return send_response(writer, State::json_response(200, router_props_json(), {}));
    return State::handle_routed(state, request, writer, request.query_or("model"), [state] {
      return State::json_response(
          200, llamacpp_props(DialectContext{&state->options, &state->resolved, &state->engine}), {});
    });
  });
  router.add("GET", "/slots", [state](http::Request& request, http::ResponseWriter& writer) {
    return State::handle_routed(state, request, writer, request.query_or("model"), [state] {
      return State::json_response(
          200, llamacpp_slots(DialectContext{&state->options, &state->resolved, &state->engine}), {});
    });
  });
  router.add("POST", "/tokenize", [state](http::Request& request, http::ResponseWriter& writer) {
    return State::handle_routed(state, request, writer, State::body_model(request),
                                [state, &request] { return state->tokenize_response(request); });
  });
}

const SimOptions& EngineSim::options() const {
  return state_->options;
}
bool EngineSim::ready() const {
  return state_->ready();
}
size_t EngineSim::running() const {
  return state_->running_count.load();
}
size_t EngineSim::waiting() const {
  return state_->waiting_count.load();
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
  ResolvedSim resolved = resolve(options);
  spdlog::info(
      "engine-sim serving model '{}' ({} mode, {} dialect, profile {}: {} KV blocks of {} tokens) on http://{}",
      options.model, options.mode, options.dialect, resolved.profile.name, resolved.engine.num_kv_blocks,
      resolved.engine.block_size, HostPort{options.host, *port}.to_string());
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
