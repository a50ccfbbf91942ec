#pragma once
// Who may call what: API keys (auth/keys.h), the refusals of the inference API and of the
// management API, the bootstrap admin key, the keys agents get when they join, and the
// /api/v1/keys routes.
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

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
  // `last_use_interval`: how often the keys' last use is written to the store.
  Guard(store::Store& store, bool require_keys, std::chrono::milliseconds last_use_interval = std::chrono::seconds(60))
      : store_(store), require_keys_(require_keys), last_use_interval_(last_use_interval) {}
  // Writes the last uses not yet written.
  ~Guard();
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;
  // Loads the keys and follows changes from then on; starts writing the keys' last use (a
  // thread of its own, since store writes block).
  Status start();
  // Writes the keys used since the last write with the time of their latest use.
  Status record_last_use();
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
  // A key revoked in the store by another part of this process (a removed node's): refused from
  // now on (KeyRing::revoked_here).
  void revoked_here(const std::string& id) { keys_.revoked_here(id); }

 private:
  store::Store& store_;
  bool require_keys_;
  std::chrono::milliseconds last_use_interval_;
  KeyRing keys_;
  std::mutex recorder_mutex_;
  std::condition_variable recorder_wake_;
  bool stopping_ = false;
  std::thread recorder_;
};

// {"error":{"message","type","param":null,"code"}} with the matching status.
http::Response openai_error(int status, const std::string& message, const std::string& type, const std::string& code);

}  // namespace nebula::auth
