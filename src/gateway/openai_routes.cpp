// The OpenAI endpoints that read what the gateway knows and call no engine:
// GET /v1/models/{id}, GET /v1/responses/{id}/input_items and POST /v1/responses/{id}/cancel.
#include <fmt/format.h>

#include <algorithm>

#include "common/clock.h"
#include "gateway/call.h"
#include "gateway/gateway.h"
#include "gateway/offload.h"
#include "gateway/responses.h"

namespace nebula::gateway {

namespace {
using http::Request;
using http::Response;
using http::ResponseWriter;

Response model_not_found(const std::string& model) {
  return openai_error(404, fmt::format("The model `{}` does not exist or you do not have access to it.", model),
                      "invalid_request_error", "model_not_found");
}
}  // namespace

Response Gateway::model_answer(const Request& request) const {
  std::shared_ptr<const api::ApiKey> key;
  if (auto refusal = auth_.inference_refusal(request, key)) return std::move(*refusal);
  const std::string& model = request.params.at("id");
  // A model the key may not use is as unknown to it as one that does not exist.
  bool allowed =
      !key || key->models.empty() || std::find(key->models.begin(), key->models.end(), model) != key->models.end();
  if (!allowed || !table_.has_deployment(model)) return model_not_found(model);
  return Response::json_body(
      200,
      json{{"id", model}, {"object", "model"}, {"created", table_.created_ms(model) / 1000}, {"owned_by", "nebula"}});
}

awaitable<Response> Gateway::input_items_answer(const Request& request) {
  std::shared_ptr<const api::ApiKey> key;
  if (auto refusal = auth_.inference_refusal(request, key)) co_return std::move(*refusal);
  const std::string key_id = key ? key->metadata.name : "anonymous";
  const std::string& id = request.params.at("id");
  auto conversation = co_await on_responses([&] { return responses_->conversation(key_id, id); });
  if (!conversation) co_return response_store_error(conversation.error());
  if (!conversation->missing.empty()) {
    co_return openai_error(404, broken_chain_message("Response", id, conversation->missing), "invalid_request_error",
                           "not_found");
  }
  auto page = input_items_page(conversation->response, conversation->items, request.query);
  if (!page) co_return openai_error(400, page.error().message, "invalid_request_error", "invalid_request");
  co_return Response::json_body(200, *page);
}

// Only a background response that has not finished can be cancelled (background.cpp).
awaitable<Response> Gateway::cancel_answer(const Request& request) {
  std::shared_ptr<const api::ApiKey> key;
  if (auto refusal = auth_.inference_refusal(request, key)) co_return std::move(*refusal);
  const std::string key_id = key ? key->metadata.name : "anonymous";
  const std::string& id = request.params.at("id");
  if (auto cancelled = cancel_background(id, key_id)) co_return Response::json_body(200, *cancelled);
  auto stored = co_await on_responses([&] { return responses_->response(key_id, id); });
  if (!stored) co_return response_store_error(stored.error());
  if (stored->value("background", json(false)) != true) {
    co_return openai_error(400, "Only responses created with background=true can be cancelled.",
                           "invalid_request_error", "invalid_request");
  }
  json status = stored->value("status", json(""));
  if (status == "cancelled") co_return Response::json_body(200, *stored);
  if (status == "queued" || status == "in_progress") {
    // Stored in a shared store by another server or gateway, which runs it (or ran it and died).
    co_return openai_error(409,
                           "This response runs on another gateway: it can be cancelled only through the gateway that "
                           "started it.",
                           "invalid_request_error", "response_elsewhere");
  }
  co_return openai_error(400, "Cannot cancel a response that has finished.", "invalid_request_error",
                         "invalid_request");
}

void Gateway::add_openai_routes(http::Router& router) {
  router.add("GET", "/v1/models/{id}", [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(model_answer(request));
  });
  router.add("GET", "/v1/responses/{id}/input_items",
             [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
               co_await writer.send(co_await input_items_answer(request));
             });
  router.add("POST", "/v1/responses/{id}/cancel", [this](Request& request, ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(co_await cancel_answer(request));
  });
}

}  // namespace nebula::gateway
