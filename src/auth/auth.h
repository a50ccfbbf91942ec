#pragma once
// Who may call what: API keys (auth/keys.h), the refusals of the inference API and of the
// management API, the bootstrap admin key, the keys agents get when they join, and the
// /api/v1/keys routes.
#include <memory>
#include <optional>
#include <string>

#include "auth/keys.h"
#include "http/http.h"
#include "store/store.h"

namespace nebula::auth {

// Threading: the refusals may run on any thread (the key ring is locked); the rest calls the
// store and blocks.
class Guard {
 public:
  // `require_keys`: --auth keys; without it only the agent endpoints' node keys are issued, and
  // every request passes.
  Guard(store::Store& store, bool require_keys) : store_(store), require_keys_(require_keys) {}
  // Loads the keys and follows changes from then on.
  Status start() { return keys_.start(store_); }
  bool require_keys() const { return require_keys_; }

  // Who makes an inference call: `key` (left null without --auth keys), or the 401 or 403 to send
  // (node keys cannot call the inference API).
  std::optional<http::Response> inference_refusal(const http::Request& request,
                                                  std::shared_ptr<const api::ApiKey>& key) const;
  // The key of a request that lists models: any valid key (nullptr without --auth keys), or the 401.
  std::optional<http::Response> listing_refusal(const http::Request& request,
                                                std::shared_ptr<const api::ApiKey>& key) const;
  // The management API's guard: with keys required, /api/v1 and /metrics need an admin key (a
  // node key for the agent endpoints of its own node); nullopt lets the request through.
  std::optional<http::Response> management_refusal(const http::Request& request) const;

  // Creates the first admin key if none exists; returns its secret ("" when one existed).
  Result<std::string> bootstrap_admin_key();
  // A key for an agent that joined (scope node); revokes the keys the node was given before.
  Result<std::string> issue_node_key(const std::string& node);

  // POST, GET /api/v1/keys and DELETE /api/v1/keys/{id}.
  void add_routes(http::Router& router);

  const KeyRing& keys() const { return keys_; }

 private:
  store::Store& store_;
  bool require_keys_;
  KeyRing keys_;
};

// {"error":{"message","type","param":null,"code"}} with the matching status.
http::Response openai_error(int status, const std::string& message, const std::string& type, const std::string& code);

}  // namespace nebula::auth
