// The relay: replicas are tried in turn until one answers (a failure before the first byte
// counts against that replica's breaker and is retried elsewhere), then the engine's answer goes
// to the client whole, or event by event for a stream, translated for /v1/responses.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cstring>

#include "common/asio.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/clock.h"
#include "common/ids.h"
#include "gateway/call.h"
#include "gateway/request_json.h"
#include "gateway/responses.h"
#include "http/sse.h"

namespace nebula::gateway {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {
http::Headers stream_headers(const http::Headers& call_headers) {
  http::Headers headers = http::event_stream_headers();
  for (const auto& header : call_headers) headers.push_back(header);
  return headers;
}

http::Headers upstream_headers(const std::string& request_id, const std::string& traceparent,
                               const std::string& tracestate) {
  http::Headers headers{
      {"Content-Type", "application/json"}, {"X-Request-Id", request_id}, {"traceparent", traceparent}};
  if (!tracestate.empty()) headers.push_back({"tracestate", tracestate});
  return headers;
}

// The text of a whole chat or completions answer, for --xtrace-content.
std::string answer_text(const std::string& body) {
  auto answer = parse_json(body);
  if (!answer || !answer->is_object()) return {};
  auto choices = answer->find("choices");
  if (choices == answer->end() || !choices->is_array() || choices->empty() || !(*choices)[0].is_object()) return {};
  const json& choice = (*choices)[0];
  if (auto message = choice.find("message"); message != choice.end() && message->is_object()) {
    if (auto content = message->find("content"); content != message->end() && content->is_string()) return *content;
  }
  if (auto text = choice.find("text"); text != choice.end() && text->is_string()) return *text;
  return {};
}

bool retryable_status(int status) {
  return status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
}

// Where the value of "name" starts in a JSON text (after the colon and spaces), or npos. A cheap
// scan, not a parser: good enough to classify an engine's stream chunks, never to read them.
size_t value_start(std::string_view data, std::string_view name) {
  char quoted[64];
  if (name.size() + 2 > sizeof quoted) return std::string_view::npos;
  quoted[0] = '"';
  std::memcpy(quoted + 1, name.data(), name.size());
  quoted[name.size() + 1] = '"';
  // glibc's memmem, not string_view::find: that calls memchr and memcmp at every quote, and an
  // event is full of quotes.
  const void* found = memmem(data.data(), data.size(), quoted, name.size() + 2);
  if (!found) return std::string_view::npos;
  size_t i = static_cast<size_t>(static_cast<const char*>(found) - data.data()) + name.size() + 2;
  while (i < data.size() && (data[i] == ' ' || data[i] == '\t')) ++i;
  if (i >= data.size() || data[i] != ':') return std::string_view::npos;
  ++i;
  while (i < data.size() && (data[i] == ' ' || data[i] == '\t')) ++i;
  return i < data.size() ? i : std::string_view::npos;
}

// "name" is present with a value other than null.
bool value_present(std::string_view data, std::string_view name) {
  size_t i = value_start(data, name);
  return i != std::string_view::npos && data[i] != 'n';
}

// "name" holds a non-empty string.
bool nonempty_string_field(std::string_view data, std::string_view name) {
  size_t i = value_start(data, name);
  return i != std::string_view::npos && data[i] == '"' && i + 1 < data.size() && data[i + 1] != '"';
}

http::Response error_for(const Error& error, const http::Headers& headers) {
  switch (error.code) {
    case ErrorCode::ResourceExhausted: {
      http::Headers with_retry = headers;
      with_retry.push_back({"Retry-After", "1"});
      with_retry.push_back({"retry-after-ms", "1000"});  // what the OpenAI SDKs read first
      return call_error(with_retry, 429, error.message, "rate_limit_exceeded", "rate_limit_exceeded");
    }
    case ErrorCode::Timeout: return call_error(headers, 503, error.message, "server_error", "queue_timeout");
    default: return call_error(headers, 503, error.message, "server_error", "service_unavailable");
  }
}
}  // namespace

awaitable<int> Gateway::relay(Call& call, http::ResponseWriter& writer) {
  const std::string path = kUpstreamPaths[call.kind];
  std::set<std::string> tried;
  std::string last_failure;
  std::optional<http::Response> engine_error;
  metrics_.in_flight(call.model, 1);
  struct InFlight {
    Metrics& metrics;
    std::string model;
    ~InFlight() { metrics.in_flight(model, -1); }
  } in_flight{metrics_, call.model};

  for (int attempt = 0; attempt < options_.max_attempts; ++attempt) {
    auto acquired = co_await acquire(call, tried, writer);
    if (call.client_gone) co_return 499;
    if (!acquired) {
      if (!last_failure.empty() && acquired.error().code == ErrorCode::Unavailable) break;
      http::Response refusal = call.breakers_open ? breaker_refusal(call) : error_for(acquired.error(), call.headers);
      int status = refusal.status;
      co_await writer.send(std::move(refusal));
      co_return status;
    }
    std::shared_ptr<router::Endpoint> endpoint = std::move(*acquired);
    struct Slot {
      Gateway& gateway;
      std::shared_ptr<router::Endpoint> endpoint;
      int64_t tokens;
      ~Slot() { gateway.release(endpoint, tokens); }
    } slot{*this, endpoint, call.route.prompt_tokens + call.route.output_tokens};
    tried.insert(endpoint->replica);
    call.replica = endpoint->replica;
    endpoint->breaker.sent();

    auto left = std::chrono::duration_cast<milliseconds>(call.deadline - SteadyClock::now());
    // A non-streamed answer arrives whole at the end: if it takes a while, watch for its client
    // leaving meanwhile (watch_sweep). Registered until this attempt ends.
    struct WatchLater {
      Gateway& gateway;
      std::optional<std::list<Unwatched>::iterator> entry;
      ~WatchLater() {
        if (entry) gateway.unwatched_.erase(*entry);
      }
    } watch_later{*this, std::nullopt};
    if (!call.stream && !call.watching) {
      watch_later.entry = unwatched_.insert(unwatched_.end(), Unwatched{&call, &writer, SteadyClock::now()});
      if (!sweeping_) {
        sweeping_ = true;
        asio::co_spawn(io_, watch_sweep(), asio::detached);
      }
    }
    auto upstream = co_await client_->open("POST", endpoint->url + path, call.upstream_body,
                                           upstream_headers(call.request_id, call.traceparent, call.tracestate),
                                           std::min(options_.first_byte_timeout, std::max(left, milliseconds(1))),
                                           &call.upstream_cancel);
    if (call.client_gone) co_return 499;  // the engine's request was cancelled with the connection
    bool failed = !upstream || retryable_status((*upstream)->status);
    if (failed) {
      // Nothing reached the client yet: count it against the replica and try another.
      if (upstream) {
        last_failure = fmt::format("HTTP {}", (*upstream)->status);
      } else {
        last_failure = upstream.error().message;
      }
      endpoint->breaker.failed(SteadyClock::now(), {options_.breaker_failures, options_.breaker_cooldown});
      metrics_.upstream_error(call.model);
      spdlog::warn("gateway: {} replica {} failed before the first byte: {}", call.request_id, endpoint->replica,
                   last_failure);
      if (upstream) {
        // Keep the engine's own error: it is what the client gets if no other replica serves.
        auto body = co_await (*upstream)->read_all(options_.idle_timeout);
        engine_error = http::Response{};
        engine_error->status = (*upstream)->status;
        engine_error->headers = call.headers;
        engine_error->headers.push_back({"Content-Type", "application/json"});
        std::string retry_after = (*upstream)->header("retry-after");
        if (!retry_after.empty()) engine_error->headers.push_back({"Retry-After", retry_after});
        if (body) engine_error->body = *body;
        note_engine_error(call.model, {engine_error->status, engine_error->body, retry_after});
      } else {
        note_engine_error(call.model, {});
      }
      breaker_failed(endpoint);
      continue;
    }
    endpoint->breaker.succeeded();
    auto& response = *upstream.value();
    // From here on nothing is retried: the answer is the call's, whole or streamed.
    if (response.header("content-type").rfind("text/event-stream", 0) == 0) {
      co_return co_await relay_stream(call, response, writer);
    }
    co_return co_await relay_answer(call, response, writer);
  }
  if (engine_error) {
    int status = engine_error->status;
    co_await writer.send(std::move(*engine_error));
    co_return status;
  }
  std::string message = fmt::format("no replica of `{}` could serve the request: {}", call.model, last_failure);
  if (last_failure.empty()) message = fmt::format("no replica of `{}` is ready", call.model);
  co_await writer.send(call_error(call.headers, 503, message, "server_error", "service_unavailable"));
  co_return 503;
}

awaitable<int> Gateway::relay_answer(Call& call, http::StreamingResponse& response, http::ResponseWriter& writer) {
  call.upstream = &response;
  auto body = co_await response.read_all(options_.idle_timeout);
  call.upstream = nullptr;
  if (call.client_gone) co_return 499;
  if (!body) {
    co_await writer.send(call_error(call.headers, 502, "the engine's answer broke off: " + body.error().message,
                                    "server_error", "upstream_error"));
    co_return 502;
  }
  http::Response relayed;
  relayed.status = response.status;
  relayed.headers = std::move(call.headers);  // the call answers with this response
  relayed.headers.push_back({"Content-Type", "application/json"});
  relayed.body = std::move(*body);
  if (response.status == 200) {
    if (call.kind != kResponses) {
      call.usage = usage_of(relayed.body, relayed.body.capacity());  // the answer itself is relayed as it came
      if (call.capture_content) call.output_text = answer_text(relayed.body);
    } else if (auto answer = parse_json(relayed.body); answer && answer->is_object()) {
      call.usage = answer->value("usage", json());
      std::string id = call.response_id.empty() ? "resp_" + random_id(24) : call.response_id;
      json translated =
          chat_to_response(*answer, id, call.model, to_unix_ms(std::chrono::system_clock::now()) / 1000, call.body);
      if (call.capture_content) call.output_text = answer_text(relayed.body);
      co_await store_response(call, translated);
      relayed.body = dump(translated);
    }
  }
  int status = relayed.status;
  co_await writer.send(std::move(relayed));
  co_return status;
}

awaitable<int> Gateway::relay_stream(Call& call, http::StreamingResponse& response, http::ResponseWriter& writer) {
  if (!co_await writer.start_stream(response.status, stream_headers(call.headers))) {
    response.cancel();
    co_return 499;
  }
  std::optional<ResponsesStream> translation;
  if (call.kind == kResponses) {
    translation.emplace("resp_" + random_id(24), call.model, to_unix_ms(std::chrono::system_clock::now()) / 1000,
                        call.body);
    if (!co_await writer.write(translation->begin())) {
      response.cancel();
      co_return 499;
    }
  }
  http::SseParser parser;
  std::vector<http::SseEvent> events;
  SteadyClock::time_point last_token{};
  bool client_gone = false;
  bool broken = false;
  bool stored = false;  // the translated response, in the response store
  std::string broken_because;
  while (!client_gone && !broken) {
    auto left_now = std::chrono::duration_cast<milliseconds>(call.deadline - SteadyClock::now());
    auto piece = co_await response.read(std::min(options_.idle_timeout, std::max(left_now, milliseconds(1))));
    if (!piece) {
      spdlog::warn("gateway: {} stream from {} broke: {}", call.request_id, call.replica, piece.error().message);
      broken = true;
      broken_because = piece.error().message;
      break;
    }
    if (piece->empty()) break;
    events.clear();
    parser.feed(*piece, events);
    std::string out;
    for (const auto& event : events) {
      if (event.data == "[DONE]") {
        if (translation) {
          out += translation->end(call.usage);
          // Stored before the client reads response.completed, so that its next request, to
          // whichever gateway, can continue from it.
          co_await store_response(call, translation->final_response());
          stored = true;
        } else {
          out += http::format_sse(event.data, event.event);
        }
        continue;
      }
      // The hot path: most chunks carry one token and no usage, and are relayed without a JSON
      // parse. Only usage chunks, and chunks the Responses translation must read, are parsed.
      bool usage_only = false;
      bool has_text = false;
      std::string text;
      std::string tool_events;  // Responses events for the chunk's tool-call pieces
      if (translation || call.capture_content || value_present(event.data, "usage")) {
        auto chunk = parse_json(event.data);
        if (chunk && chunk->is_object()) {
          auto usage = chunk->find("usage");
          if (usage != chunk->end() && usage->is_object()) call.usage = *usage;
          auto choices = chunk->find("choices");
          usage_only = usage != chunk->end() && usage->is_object() && choices != chunk->end() && choices->is_array() &&
                       choices->empty();
          if (choices != chunk->end() && choices->is_array() && !choices->empty()) {
            const auto& choice = (*choices)[0];
            if (translation && choice.contains("finish_reason") && choice["finish_reason"].is_string()) {
              translation->set_finish_reason(choice["finish_reason"].get<std::string>());
            }
            if (choice.contains("delta") && choice["delta"].contains("content") &&
                choice["delta"]["content"].is_string()) {
              text = choice["delta"]["content"].get<std::string>();
            } else if (choice.contains("text") && choice["text"].is_string()) {
              text = choice["text"].get<std::string>();
            }
            if (translation && choice.contains("delta") && choice["delta"].contains("tool_calls")) {
              tool_events = translation->tool_calls(choice["delta"]["tool_calls"]);
            }
          }
        }
        has_text = !text.empty() || !tool_events.empty();
        if (call.capture_content) call.output_text += text;
      } else {
        has_text = nonempty_string_field(event.data, "content") || nonempty_string_field(event.data, "text");
      }
      if (has_text) {
        auto now = SteadyClock::now();
        if (call.ttft_s < 0) {
          call.ttft_s = std::chrono::duration<double>(now - call.start).count();
        } else {
          metrics_.inter_token(call.model, std::chrono::duration<double>(now - last_token).count());
        }
        last_token = now;
        call.relayed_chunks += 1;
      }
      if (translation) {
        out += translation->delta(text);
        out += tool_events;
      } else if (!usage_only || call.client_wants_usage) {
        out += http::format_sse(event.data, event.event);
      }
    }
    if (!out.empty() && !co_await writer.write(out)) client_gone = true;
  }
  if (client_gone) {
    response.cancel();  // the engine stops generating at once
    co_return 499;
  }
  if (broken) {
    // The engine broke off: the client gets an error event its SDK raises (an APIError), then
    // the end of the stream, not a cut connection it would take for a network failure.
    response.cancel();
    std::string message = "the engine's stream broke off: " + broken_because;
    std::string out = translation ? translation->fail(message) : stream_error_event(message);
    if (co_await writer.write(out)) {
      co_await writer.finish();
    } else {
      writer.abort();
    }
    co_return 502;
  }
  co_await writer.finish();
  if (translation && !stored) co_await store_response(call, translation->final_response());
  co_return response.status;
}

// Runs while some request waits unwatched (started by serve(), so an idle gateway has no timer).
// Runs while some request waits unwatched (started by relay(), so an idle gateway has no timer).
awaitable<void> Gateway::watch_sweep() {
  while (!stopping_ && !unwatched_.empty()) {
    watch_timer_->expires_after(std::chrono::milliseconds(50));
    boost::system::error_code ec;
    co_await watch_timer_->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (stopping_) co_return;
    auto started_before = SteadyClock::now() - std::chrono::milliseconds(100);
    for (auto& entry : unwatched_) {
      if (entry.watched || entry.since > started_before) continue;
      entry.watched = true;
      entry.call->watch_client(*entry.writer);
    }
  }
  sweeping_ = false;
}

}  // namespace nebula::gateway
