#pragma once
// The OpenAI-compatible gateway: /v1/models, /v1/chat/completions, /v1/completions,
// /v1/embeddings and /v1/responses; API keys, rate limits, usage accounting, a fair admission
// queue, circuit breaking and metrics. Resolves the model to a deployment, has the deployment's
// routing policy choose among its Ready replicas with free capacity (router/policy.h), and relays
// the engine's answer, streaming SSE event by event. Every error leaves as OpenAI error JSON with
// an x-request-id.
//
// Threading: request handling runs on the server's single I/O thread; the endpoint table is also
// fed from store watch callbacks (other threads) and is locked.
#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "common/asio.h"

#include <boost/asio/steady_timer.hpp>
#include "auth/auth.h"
#include "gateway/limits.h"
#include "gateway/metrics.h"
#include "gateway/response_store.h"
#include "gateway/responses.h"
#include "gateway/usage.h"
#include "http/http.h"
#include "router/endpoint_table.h"
#include "router/policy.h"
#include "store/list_watch.h"
#include "store/store.h"

namespace boost::asio {
class thread_pool;
}
namespace spdlog {
class logger;
}
namespace nebula::xtrace {
class Client;
}

namespace nebula::gateway {

struct Options {
  bool require_keys = false;  // --auth keys
  std::chrono::milliseconds connect_timeout{5'000};
  // Until the engine sends response headers (a cold engine's first token can take long).
  std::chrono::milliseconds first_byte_timeout{300'000};
  // Longest silence between two pieces of a streamed body.
  std::chrono::milliseconds idle_timeout{120'000};
  // The whole request, queueing included.
  std::chrono::milliseconds total_timeout{600'000};
  // Replicas tried for one request while nothing has reached the client.
  int max_attempts = 3;
  // Requests one replica takes at once when its deployment sets no max_seqs.
  int replica_capacity = 256;
  // Admission queue per deployment.
  size_t max_queue = 1024;
  std::chrono::milliseconds queue_timeout{30'000};
  // Circuit breaker: open after this many consecutive failures, probe again after the cool-down.
  int breaker_failures = 3;
  std::chrono::milliseconds breaker_cooldown{5'000};
  std::chrono::milliseconds usage_flush_interval{1'000};
  // How often each Ready replica's /metrics is read for its engine's own load (--load-scrape-interval);
  // 0 = never.
  std::chrono::milliseconds load_scrape_interval{1'000};
  // Makes each deployment's routing policy from its spec.routing: router::make_policy, or a fake
  // a test puts at this seam.
  std::function<Result<std::unique_ptr<router::Policy>>(std::string_view spec, const router::PolicyOptions& options)>
      make_policy = router::make_policy;
  std::string access_log_path;  // "" = no access log
  // Where per-key limits are counted: null = in this process (MemoryLimiter); a RedisLimiter
  // shares them among gateways.
  std::shared_ptr<Limiter> limiter;
  // Where stored responses live (gateway/response_store.h): null = this process's memory.
  std::shared_ptr<ResponseStore> responses;
  // Reporting to xtrace (--xtrace, docs/xtrace.md): one trace and GENERATION observation per
  // request, queued on the client's own thread; null = off. The client may be shared (the agent
  // of `nebula up` reports through it too).
  std::shared_ptr<xtrace::Client> xtrace;
  bool xtrace_content = false;  // --xtrace-content: prompts and answers go into the traces
  // --signals xtrace: the kv-load scorers see xtrace's pending_requests and kv_cache_usage of a
  // replica while they are fresh (the client's "router" limits), its own scrape otherwise.
  bool xtrace_signals = false;
};

class Gateway {
 public:
  Gateway(store::Store& store, asio::io_context& io, Options options = {});
  ~Gateway();
  // Loads deployments, replicas, keys and usage and follows changes from then on.
  Status start();
  void stop();
  // /v1/*, /metrics, /api/v1/keys and /api/v1/usage.
  void add_routes(http::Router& router);

  // API keys, and the guard of the management API.
  auth::Guard& auth() { return auth_; }
  router::EndpointTable& table() { return table_; }
  UsageRecorder& usage() { return usage_; }

 private:
  struct Call;
  struct Waiter;
  // One inference request as a pipeline (serve.cpp): admit(), relay(), finish().
  awaitable<void> serve(http::Request& request, http::ResponseWriter& writer, int kind);
  // Admission (serve.cpp): the caller's key, the request's fields, its model, the conversation a
  // Responses request continues and the body for the engine. The refusal to send, or nullopt with
  // `call` ready for check_limits() (or, without a key, to relay: call.admitted).
  awaitable<std::optional<http::Response>> admit(Call& call, const http::Request& request);
  // The key's limits, last step of admission: the refusal to send, or nullopt with the call
  // counted by the limiter. Waits on a shared limiter without blocking the I/O thread.
  awaitable<std::optional<http::Response>> check_limits(Call& call);
  // /v1/responses: the conversation a request continues (previous_response_id) joined to its
  // input; the refusal when that response is unknown to this key (or an earlier turn of it is
  // gone) or the response store cannot be reached. And the storing of an answer as one turn.
  awaitable<std::optional<http::Response>> attach_conversation(Call& call, int64_t& prior_bytes);
  awaitable<void> store_response(Call& call, const json& response);
  // Runs a call on the response store: inline for one in memory, else on responses_pool_.
  template <class Work>
  awaitable<std::invoke_result_t<Work&>> on_responses(Work work);
  // Relay (relay.cpp): tries replicas until one answers (nothing is retried once the client got
  // a byte), relays a whole answer or an event stream, translating for /v1/responses. Returns
  // the status the call ends with.
  awaitable<int> relay(Call& call, http::ResponseWriter& writer);
  awaitable<int> relay_answer(Call& call, http::StreamingResponse& response, http::ResponseWriter& writer);
  awaitable<int> relay_stream(Call& call, http::StreamingResponse& response, http::ResponseWriter& writer);
  // Replica slots (admission_queue.cpp): a free replica at once, or a place in the deployment's
  // fair queue until one frees up.
  awaitable<Result<std::shared_ptr<router::Endpoint>>> acquire(Call& call, const std::set<std::string>& exclude,
                                                               http::ResponseWriter& writer);
  void release(const std::shared_ptr<router::Endpoint>& endpoint, int64_t tokens);
  void dispatch_queue(const std::string& deployment);
  // Open breakers (engine_errors.cpp). A request that no replica can take because every
  // replica's breaker is open gets the engine's last error at once (waiting would only time out
  // in the queue); a breaker that opens wakes the queue when its cool-down ends, so a waiter is
  // sent to the replica as soon as it may take one.
  struct EngineError {
    int status = 0;
    std::string body;
    std::string retry_after;
  };
  void note_engine_error(const std::string& deployment, EngineError error);
  bool breakers_all_open(const std::string& deployment, const std::set<std::string>& exclude) const;
  http::Response breaker_refusal(const Call& call) const;
  void breaker_failed(const std::shared_ptr<router::Endpoint>& endpoint);
  std::map<std::string, EngineError> engine_errors_;  // per deployment; I/O thread only
  // Routing (routing.cpp): the replica the deployment's Policy chooses among the table's
  // candidates, its slot taken (outstanding and in-flight tokens); nullptr when none is free.
  std::shared_ptr<router::Endpoint> choose(const std::string& deployment, router::RouteContext& context,
                                           const std::set<std::string>& exclude);
  // The deployment's policy, made again when its spec.routing changed.
  router::Policy& policy_for(const std::string& deployment);
  // What the deployment's policy learnt about a replica that left routing, or about a deployment
  // that is gone, is dropped.
  void forget_replica(const std::string& deployment, const std::string& replica);
  void forget_deployment(const std::string& deployment);
  // Engine load (load_scraper.cpp): every load_scrape_interval, each Ready replica's /metrics is
  // read (one read per replica at a time) into its Endpoint::engine.
  awaitable<void> scrape_loads();
  awaitable<void> scrape_load(std::shared_ptr<router::Endpoint> endpoint);
  // --signals xtrace: each Ready replica's pending requests and KV usage as xtrace last said,
  // while fresh, over its own scrape (load_scraper.cpp).
  void apply_xtrace_signals();
  // One trace per request to xtrace (access_log.cpp).
  void report_trace(const Call& call, int status, int64_t prompt, int64_t completion);
  // nebula_router_* lines for /metrics: the age and figures of each replica's engine load.
  std::string router_metrics() const;
  // Everything /metrics shows.
  std::string metrics_text() const;
  // Background responses (background.cpp): start_background() answers with the queued response
  // and runs the call on its own; cancel_background() stops one. I/O thread only.
  awaitable<void> start_background(std::shared_ptr<Call> call, http::ResponseWriter& writer);
  awaitable<void> run_background(std::shared_ptr<Call> call);
  std::optional<json> cancel_background(const std::string& id, const std::string& key_id);
  // Stores the state of a background response (queued, in progress, failed, cancelled).
  awaitable<void> put_background(Call& call, json response);
  std::map<std::string, std::shared_ptr<Call>> background_;  // response id -> its call, while it runs
  // Accounting (access_log.cpp): limiter, usage, metrics and the access log line.
  void finish(Call& call, int status);
  awaitable<http::Response> stored_response_answer(const http::Request& request, bool erase);
  awaitable<void> stored_response(http::Request& request, http::ResponseWriter& writer, bool erase);
  void add_usage_routes(http::Router& router);
  // /api/v1/gateway/state: what stateless gateways list, watch and write (replica_routes.cpp).
  void add_replica_routes(http::Router& router);
  // GET /v1/models/{id}, GET /v1/responses/{id}/input_items, POST /v1/responses/{id}/cancel
  // (openai_routes.cpp).
  void add_openai_routes(http::Router& router);
  http::Response model_answer(const http::Request& request) const;
  awaitable<http::Response> input_items_answer(const http::Request& request);
  awaitable<http::Response> cancel_answer(const http::Request& request);
  // Scale-to-zero: remembers when each deployment was last asked for (written to its status once
  // a second), and asks the controller to wake an idle one, once per idle period.
  void note_request(const std::string& deployment);
  bool waking(const std::string& deployment) const;
  awaitable<void> report_activity();
  // Non-streamed requests waiting for their engine's answer. Watching a client for leaving costs
  // a read operation, a coroutine and a timer (~10 % of a small request's CPU), and most answers
  // come in milliseconds: watch_sweep() starts the watch only for those still waiting after
  // 100 ms, checking every 50 ms while any request waits. I/O thread only.
  struct Unwatched {
    Call* call;
    http::ResponseWriter* writer;
    std::chrono::steady_clock::time_point since;
    bool watched = false;
  };
  std::list<Unwatched> unwatched_;
  bool sweeping_ = false;  // watch_sweep() runs
  awaitable<void> watch_sweep();
  void write_deployment_status(const std::string& deployment, const std::function<bool(json& status)>& change);

  store::Store& store_;
  asio::io_context& io_;
  Options options_;
  router::EndpointTable table_;
  auth::Guard auth_;
  std::shared_ptr<Limiter> limiter_;
  UsageRecorder usage_;
  Metrics metrics_;
  std::unique_ptr<http::Client> client_;
  std::shared_ptr<ResponseStore> responses_;
  std::unique_ptr<asio::thread_pool> responses_pool_;  // for a store that blocks
  // Deployments and replicas, relisted when the store ends a watch (etcd compaction).
  std::vector<std::unique_ptr<store::ListWatch>> watches_;
  std::map<std::string, std::list<Waiter*>> queues_;  // per deployment; I/O thread only
  struct DeploymentPolicy {
    std::string spec;  // the spec.routing it was made for (a refused one included)
    std::unique_ptr<router::Policy> policy;
  };
  std::map<std::string, DeploymentPolicy> policies_;  // I/O thread only
  std::unique_ptr<asio::steady_timer> scrape_timer_;
  std::map<std::string, uint64_t> last_served_;  // key -> admission sequence; I/O thread only
  uint64_t admission_sequence_ = 0;
  std::map<std::string, int64_t> last_request_ms_;  // I/O thread only
  std::map<std::string, int64_t> reported_ms_;      // what report_activity last wrote
  std::map<std::string, int64_t> wake_sent_for_;    // idle_since of the idle period a wake was sent for
  std::unique_ptr<asio::steady_timer> activity_timer_;
  std::unique_ptr<asio::steady_timer> watch_timer_;
  std::atomic<bool> stopping_{false};  // set by stop() on any thread, read on the I/O thread
  std::shared_ptr<spdlog::logger> access_log_;
  // Access log lines not yet handed to access_log_: written in one piece once a second (or every
  // 64 KiB), not a logger call per line. Guarded by access_mutex_ (stop() may run elsewhere).
  std::mutex access_mutex_;
  std::string access_pending_;
  void flush_access_log();
};

using auth::openai_error;

}  // namespace nebula::gateway
