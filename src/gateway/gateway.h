#pragma once
// The OpenAI-compatible gateway: /v1/models, /v1/chat/completions, /v1/completions. Resolves the
// model to a deployment, picks a Ready replica (least outstanding requests), and relays the
// engine's answer, streaming SSE chunk by chunk. Errors leave as OpenAI error JSON.
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/asio.h"
#include "http/http.h"
#include "store/store.h"

namespace nebula::gateway {

struct Options {
  std::chrono::milliseconds connect_timeout{5'000};
  // Until the engine sends response headers (a cold engine's first token can take long).
  std::chrono::milliseconds first_byte_timeout{300'000};
  // Longest silence between two pieces of a streamed body.
  std::chrono::milliseconds idle_timeout{120'000};
  // Replicas tried for one request when connecting fails (before any byte reached the client).
  int max_attempts = 3;
};

// A replica the router can send to. `outstanding` counts requests in flight through this gateway.
struct Endpoint {
  std::string replica;
  std::string url;  // "http://127.0.0.1:PORT"
  std::atomic<int> outstanding{0};
};

// Deployments and their Ready replicas, kept current from a store watch. Thread-safe.
class EndpointTable {
 public:
  // Applies one stored document (a Deployment or Replica) or its deletion.
  void apply(const std::string& key, const std::string* value);
  bool has_deployment(const std::string& name) const;
  std::vector<std::string> deployments() const;
  int64_t created_ms(const std::string& deployment) const;
  // The Ready replica of the deployment with the fewest outstanding requests, skipping `exclude`;
  // ties go round-robin. nullptr when none is Ready.
  std::shared_ptr<Endpoint> pick(const std::string& deployment, const std::set<std::string>& exclude);
  size_t ready_count(const std::string& deployment) const;

 private:
  struct ReplicaEntry {
    std::string deployment;
    std::shared_ptr<Endpoint> endpoint;  // null unless Ready and not stopping
  };
  mutable std::mutex mutex_;
  std::map<std::string, int64_t> deployments_;  // name -> created_ms
  std::map<std::string, ReplicaEntry> replicas_;
  size_t round_robin_ = 0;
};

class Gateway {
 public:
  Gateway(store::Store& store, asio::io_context& io, Options options = {});
  ~Gateway();
  // Loads deployments and replicas and follows changes from then on.
  Status start();
  void add_routes(http::Router& router);
  EndpointTable& table() { return table_; }

 private:
  awaitable<void> proxy(http::Request& request, http::ResponseWriter& writer, const std::string& path);

  store::Store& store_;
  asio::io_context& io_;
  Options options_;
  EndpointTable table_;
  std::unique_ptr<http::Client> client_;
  std::unique_ptr<store::WatchHandle> watch_;
};

// {"error":{"message","type","param":null,"code"}} with the matching status.
http::Response openai_error(int status, const std::string& message, const std::string& type, const std::string& code);

}  // namespace nebula::gateway
