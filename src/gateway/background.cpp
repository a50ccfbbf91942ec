// Background responses (`POST /v1/responses` with "background": true): the client gets the
// response at once with status "queued" and polls GET /v1/responses/{id}; the call goes through
// the same relay as any other, with no client on the other end, and its answer replaces the
// stored response ("completed", "incomplete", "failed", or "cancelled" by
// POST /v1/responses/{id}/cancel). Accounting (limits, usage) is the same as for a waiting
// client's request, done when the call ends.
#include "common/asio.h"

#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include "common/clock.h"
#include "common/ids.h"
#include "gateway/call.h"
#include "gateway/offload.h"
#include "gateway/responses.h"

namespace nebula::gateway {

namespace {
// What relay() answers for a call no client waits on: kept to describe a failure.
class KeptAnswer final : public http::ResponseWriter {
 public:
  awaitable<void> send(http::Response response) override {
    status = response.status;
    body = std::move(response.body);
    answered_ = true;
    co_return;
  }
  awaitable<bool> start_stream(int stream_status, http::Headers) override {
    status = stream_status;
    answered_ = true;
    co_return true;
  }
  awaitable<bool> write(std::string_view data) override {
    body.append(data);
    co_return true;
  }
  awaitable<void> finish() override { co_return; }
  void abort() override {}
  bool answered() const override { return answered_; }
  void on_client_gone(std::function<void()>) override {}  // cancel_background() stands in for it
  bool client_gone() const override { return false; }

  int status = 0;
  std::string body;

 private:
  bool answered_ = false;
};

// The stored response of a background call in `status`, before or without an answer.
json pending_response(const json& request, const std::string& id, const std::string& model, int64_t created_s,
                      const std::string& status) {
  json response = response_echo(request);
  response.update({{"id", id},
                   {"object", "response"},
                   {"created_at", created_s},
                   {"status", status},
                   {"incomplete_details", nullptr},
                   {"model", model},
                   {"output", json::array()},
                   {"usage", nullptr}});
  return response;
}

// The engine's (or the gateway's) error answer as a Response object's `error`.
json response_error(int status, const std::string& body) {
  json error = {{"code", "server_error"}, {"message", "the request failed with HTTP " + std::to_string(status)}};
  auto parsed = parse_json(body);
  if (parsed && parsed->is_object() && (*parsed)["error"].is_object()) {
    const json& details = (*parsed)["error"];
    if (details.contains("message") && details["message"].is_string()) error["message"] = details["message"];
    if (details.contains("code") && details["code"].is_string()) error["code"] = details["code"];
  }
  return error;
}
}  // namespace

awaitable<void> Gateway::put_background(Call& call, json response) {
  StoredTurn turn{std::move(response), call.turn_input.is_array() ? call.turn_input : json::array(), call.previous_id,
                  call.conversation_root};
  auto stored = co_await on_responses([&] { return responses_->put(call.key_id, call.response_id, turn); });
  if (!stored) spdlog::warn("background response {} was not stored: {}", call.response_id, stored.error().message);
}

awaitable<void> Gateway::start_background(std::shared_ptr<Call> call, http::ResponseWriter& writer) {
  call->response_id = "resp_" + random_id(24);
  call->created_s = to_unix_ms(std::chrono::system_clock::now()) / 1000;
  json queued = pending_response(call->body, call->response_id, call->model, call->created_s, "queued");
  // Stored now, so that GET finds it while it runs; the answer replaces it.
  co_await put_background(*call, queued);
  background_[call->response_id] = call;
  co_await writer.send(with_headers(http::Response::json_body(200, queued), call->headers));
  asio::co_spawn(io_, run_background(std::move(call)), asio::detached);
}

awaitable<void> Gateway::run_background(std::shared_ptr<Call> call) {
  const std::string id = call->response_id;
  co_await put_background(*call, pending_response(call->body, id, call->model, call->created_s, "in_progress"));
  KeptAnswer answer;
  call->store_response = true;  // a background response is always stored
  int status = co_await relay(*call, answer);
  background_.erase(id);
  // A 200 stored the translated answer under `id`; anything else leaves it to say what happened.
  if (call->client_gone || status != 200) {
    json ended =
        pending_response(call->body, id, call->model, call->created_s, call->client_gone ? "cancelled" : "failed");
    if (!call->client_gone) ended["error"] = response_error(answer.status, answer.body);
    co_await put_background(*call, std::move(ended));
  }
  finish(*call, call->client_gone ? 499 : status);
}

std::optional<json> Gateway::cancel_background(const std::string& id, const std::string& key_id) {
  auto running = background_.find(id);
  if (running == background_.end() || running->second->key_id != key_id) return std::nullopt;
  Call& call = *running->second;
  // As if its client had left: out of the queue, or the engine's request cancelled.
  call.client_gone = true;
  if (call.waiting) call.waiting->timer.cancel();
  call.upstream_cancel.cancel();
  if (call.upstream) call.upstream->cancel();
  return pending_response(call.body, id, call.model, call.created_s, "cancelled");
}

}  // namespace nebula::gateway
