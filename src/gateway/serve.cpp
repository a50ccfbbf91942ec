// One inference request as a pipeline: admit() (who asks, for what, within which limits), relay()
// (to a replica and back) and finish() (accounting). Each step's result says what comes next.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "common/asio.h"  // must precede Asio headers
#include "common/ids.h"

#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "gateway/call.h"
#include "gateway/offload.h"
#include "gateway/request_json.h"
#include "gateway/responses.h"
#include "gateway/route_context.h"
#include "xtrace/xtrace.h"

namespace nebula::gateway {

using SteadyClock = std::chrono::steady_clock;

namespace {
constexpr size_t kMaxTracestate = 512;  // the W3C limit

// The W3C trace context of a call: the client's traceparent when it is valid (a malformed one is
// replaced, never forwarded, and its tracestate dropped with it), else a new trace. The engine
// gets a child span of it; the client gets that traceparent back.
struct TraceContext {
  std::string trace_id;
  std::string traceparent;  // for the engine and the client
  std::string tracestate;
};
TraceContext trace_context(const http::Request& request) {
  TraceContext context;
  auto incoming = xtrace::TraceParent::parse(request.header("traceparent"));
  xtrace::TraceParent trace = incoming ? *incoming : xtrace::TraceParent::make();
  if (incoming) {
    std::string state = request.header("tracestate");
    if (state.size() <= kMaxTracestate && state.find_first_of("\r\n") == std::string::npos) {
      context.tracestate = state;
    }
  }
  xtrace::TraceParent upstream = trace.child();
  context.trace_id = upstream.trace_id;
  context.traceparent = upstream.format();
  return context;
}
}  // namespace

awaitable<void> Gateway::serve(http::Request& request, http::ResponseWriter& writer, int kind) {
  auto owned = std::make_shared<Call>();  // shared: a background call outlives this handler
  Call& call = *owned;
  call.kind = kind;
  call.deadline = call.start + options_.total_timeout;
  call.request_id = request.header("x-request-id");
  if (call.request_id.empty()) call.request_id = "req-" + random_id(20);
  call.path = request.path;
  call.headers.reserve(10);  // the id, traceparent, six rate-limit headers, Content-Type
  call.headers.push_back({"X-Request-Id", call.request_id});
  auto trace = trace_context(request);
  call.trace_id = std::move(trace.trace_id);
  call.traceparent = std::move(trace.traceparent);
  call.tracestate = std::move(trace.tracestate);
  call.headers.push_back({"traceparent", call.traceparent});

  if (options_.xtrace && options_.xtrace_content) {
    call.capture_content = true;
    if (auto parsed = parse_json(request.body); parsed && parsed->is_object()) {
      for (const char* field : {"messages", "prompt", "input"}) {
        if (auto found = parsed->find(field); found != parsed->end()) {
          call.input = std::move(*found);
          break;
        }
      }
    }
  }
  int status = 0;
  auto refusal = co_await admit(call, request);
  if (!refusal && !call.admitted) refusal = co_await check_limits(call);
  if (refusal) {
    status = refusal->status;
    co_await writer.send(std::move(*refusal));
  } else if (call.background) {
    co_await start_background(owned, writer);  // which finishes the call when it is done
    co_return;
  } else {
    status = co_await relay(call, writer);
  }
  finish(call, status);
}

namespace {
// The output a request may ask for, for the up-front charge: its limit, else a typical answer
// (corrected once the engine reports); embeddings produce none.
int64_t requested_output_tokens(const RequestFacts& facts, int kind) {
  if (kind == kEmbeddings) return 0;
  return facts.max_tokens ? std::max<int64_t>(0, *facts.max_tokens) : 256;
}

// A field OpenAI refuses, refused as OpenAI does: 400 with its param and code.
http::Response problem_error(const http::Headers& headers, const RequestProblem& problem) {
  return with_headers(http::Response::json_body(400, json{{"error",
                                                           {{"message", problem.message},
                                                            {"type", "invalid_request_error"},
                                                            {"param", problem.param},
                                                            {"code", problem.code}}}}),
                      headers);
}

struct Prepared {
  std::optional<json> body;  // what the engine gets; nullopt = the client's body, byte for byte
  bool client_wants_usage = false;
};

// The body sent upstream: streams always ask for usage (so accounting is exact); the final usage
// chunk is stripped later when the client did not ask for it. Unknown fields pass untouched.
Result<Prepared> prepare_upstream(const json& body, int kind, const RequestFacts& facts) {
  Prepared prepared;
  if (kind == kResponses) {
    auto chat = responses_to_chat(body);
    if (!chat) return chat.error();
    prepared.body = std::move(*chat);
    return prepared;
  }
  if (facts.stream && kind != kEmbeddings) {
    prepared.client_wants_usage = facts.include_usage;
    prepared.body = body;
    auto& options = (*prepared.body)["stream_options"];
    if (!options.is_object()) options = json::object();  // e.g. null: the engine gets a valid one
    options["include_usage"] = true;
  }
  return prepared;
}

}  // namespace

awaitable<std::optional<http::Response>> Gateway::admit(Call& call, const http::Request& request) {
  if (auto refusal = auth_.inference_refusal(request, call.key))
    co_return with_headers(std::move(*refusal), call.headers);
  if (call.key) call.key_id = call.key->metadata.name;

  auto facts = read_request(request.body, static_cast<Api>(call.kind));
  if (!facts)
    co_return call_error(call.headers, 400, facts.error().message, "invalid_request_error", "invalid_request");
  call.model = facts->model;
  if (call.model.empty()) {
    co_return call_error(call.headers, 400, "you must provide a model parameter", "invalid_request_error",
                         "invalid_request");
  }
  call.stream = facts->stream && call.kind != kEmbeddings;
  if (call.key && !call.key->models.empty() &&
      std::find(call.key->models.begin(), call.key->models.end(), call.model) == call.key->models.end()) {
    auto refusal = call_error(call.headers, 403, fmt::format("this API key may not use the model `{}`", call.model),
                              "invalid_request_error", "model_not_allowed");
    call.model.clear();  // a name the client chose: keep it out of the per-model metrics
    co_return refusal;
  }
  if (!table_.has_deployment(call.model)) {
    auto refusal = call_error(call.headers, 404, fmt::format("The model `{}` does not exist.", call.model),
                              "invalid_request_error", "model_not_found");
    call.model.clear();  // keep unknown names out of the per-model metrics
    co_return refusal;
  }
  if (facts->problem) co_return problem_error(call.headers, *facts->problem);
  note_request(call.model);
  // The body is parsed into a json only when it must change on its way upstream.
  if (call.kind == kResponses || call.stream) {
    auto parsed = parse_json(request.body);
    if (parsed) call.body = std::move(*parsed);
  }
  if (call.kind == kResponses) {
    auto background = call.body.is_object() ? call.body.find("background") : call.body.end();
    call.background = background != call.body.end() && background->is_boolean() && background->get<bool>();
  }
  int64_t prior_bytes = 0;
  if (call.kind == kResponses) {
    if (auto refusal = co_await attach_conversation(call, prior_bytes)) co_return refusal;
  }
  auto prepared = prepare_upstream(call.body, call.kind, *facts);
  if (!prepared) {
    co_return call_error(call.headers, 400, prepared.error().message, "invalid_request_error", "invalid_request");
  }
  call.client_wants_usage = prepared->client_wants_usage;
  call.upstream_body = prepared->body ? dump(*prepared->body) : request.body;
  call.route = route_context(request, *facts, call.kind == kResponses ? &*prepared->body : nullptr,
                             call.conversation_root, prior_bytes);
  call.route.deployment = call.model;
  call.route.output_tokens = requested_output_tokens(*facts, call.kind);
  call.route.priority = call.key ? call.key->priority : 0;
  call.estimated_tokens = call.route.prompt_tokens + call.route.output_tokens;

  if (!call.key) call.admitted = true;  // no limits to check
  co_return std::nullopt;               // else check_limits() is next
}

namespace {
// Limiter::admit_async() as an awaitable: the limiter may answer on its own thread, so the answer
// is posted back to the coroutine's executor. An admission that can no longer be delivered (the
// I/O context went away with the coroutine waiting) is finished at once: its slot does not leak.
awaitable<Admission> admit_async(const std::shared_ptr<Limiter>& limiter, const api::ApiKey& key,
                                 int64_t estimated_tokens, int64_t month_used_tokens, Limiter::TimePoint now) {
  auto executor = co_await asio::this_coro::executor;
  co_return co_await asio::async_initiate<const asio::use_awaitable_t<>&, void(Admission)>(
      [&](auto handler) {
        auto waiting = std::make_shared<decltype(handler)>(std::move(handler));
        limiter->admit_async(
            key, estimated_tokens, month_used_tokens, now,
            [waiting, executor, limiter, key_id = key.metadata.name, estimated_tokens](Admission admission) {
              struct Delivery {
                std::shared_ptr<Limiter> limiter;
                std::string key_id;
                int64_t estimated_tokens = 0;
                Admission admission;
                bool delivered = false;
                ~Delivery() {
                  if (!delivered && admission.ticket != 0) {
                    limiter->finish(key_id, admission.ticket, estimated_tokens, estimated_tokens, SteadyClock::now());
                  }
                }
              };
              auto delivery = std::make_shared<Delivery>();  // in place: a moved-from copy would finish
              delivery->limiter = limiter;
              delivery->key_id = key_id;
              delivery->estimated_tokens = estimated_tokens;
              delivery->admission = std::move(admission);
              asio::post(executor, [waiting, delivery] {
                delivery->delivered = true;
                (*waiting)(std::move(delivery->admission));
              });
            });
      },
      asio::use_awaitable);
}
}  // namespace

awaitable<std::optional<http::Response>> Gateway::check_limits(Call& call) {
  auto admission =
      co_await admit_async(limiter_, *call.key, call.estimated_tokens,
                           usage_.month_tokens(call.key_id, std::chrono::system_clock::now()), SteadyClock::now());
  if (!admission.allowed) co_return with_headers(Limiter::refusal(*call.key, admission), call.headers);
  call.admitted = true;
  call.ticket = admission.ticket;
  for (auto& header : Limiter::headers(*call.key, admission.window)) call.headers.push_back(std::move(header));
  co_return std::nullopt;
}

awaitable<std::optional<http::Response>> Gateway::attach_conversation(Call& call, int64_t& prior_bytes) {
  if (!call.body.is_object()) co_return std::nullopt;  // the translation refuses it
  auto store = call.body.find("store");
  call.store_response = store == call.body.end() || !store->is_boolean() || store->get<bool>();
  auto input = call.body.find("input");
  if (input == call.body.end() || !(input->is_string() || input->is_array())) co_return std::nullopt;
  call.turn_input = input_items(*input);
  auto previous = call.body.find("previous_response_id");
  if (previous == call.body.end() || previous->is_null()) co_return std::nullopt;
  if (!previous->is_string()) {
    co_return call_error(call.headers, 404, fmt::format("Previous response with id '{}' not found.", previous->dump()),
                         "invalid_request_error", "previous_response_not_found");
  }
  call.previous_id = previous->get<std::string>();
  auto prior = co_await on_responses([&] { return responses_->conversation(call.key_id, call.previous_id); });
  if (!prior) {
    if (prior.error().code != ErrorCode::NotFound)
      co_return with_headers(response_store_error(prior.error()), call.headers);
    co_return call_error(call.headers, 404, fmt::format("Previous response with id '{}' not found.", call.previous_id),
                         "invalid_request_error", "previous_response_not_found");
  }
  if (!prior->missing.empty()) {
    co_return call_error(call.headers, 404, broken_chain_message("Previous response", call.previous_id, prior->missing),
                         "invalid_request_error", "previous_response_not_found");
  }
  prior_bytes = static_cast<int64_t>(prior->bytes);
  call.conversation_root = prior->root;
  json conversation = std::move(prior->items);
  for (const auto& item : call.turn_input) conversation.push_back(item);
  *input = std::move(conversation);  // the engine sees the whole conversation
  co_return std::nullopt;
}

awaitable<void> Gateway::store_response(Call& call, const json& response) {
  if (!call.store_response || !response.is_object() || !response.contains("id") || !response["id"].is_string()) {
    co_return;
  }
  StoredTurn turn{response, call.turn_input.is_array() ? call.turn_input : json::array(), call.previous_id,
                  call.conversation_root};
  std::string id = response["id"].get<std::string>();
  auto stored = co_await on_responses([&] { return responses_->put(call.key_id, id, turn); });
  if (!stored) spdlog::warn("response {} was not stored: {}", id, stored.error().message);
}

}  // namespace nebula::gateway
