#include "gateway/gateway.h"
#include "gateway/request_json.h"

#include <fmt/compile.h>
#include <fmt/format.h>
#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstring>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "api/api.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/json.h"
#include "common/subprocess.h"
#include "gateway/responses.h"
#include "http/sse.h"

namespace nebula::gateway {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

http::Response openai_error(int status, const std::string& message, const std::string& type, const std::string& code) {
  return http::error_json(status, message, code, type);
}

// ---------------------------------------------------------------------------------------------
// Endpoint table

namespace {
// Phases on the way to Ready: a request for a deployment whose replicas are here waits for them.
bool is_starting(const std::string& phase) {
  return phase == api::phase::kPending || phase == api::phase::kScheduled || phase == api::phase::kDownloading ||
         phase == api::phase::kStarting;
}
}  // namespace

void EndpointTable::set_on_change(std::function<void(const std::string&)> callback) {
  std::lock_guard lock(mutex_);
  on_change_ = std::move(callback);
}

void EndpointTable::set_on_endpoint_gone(std::function<void(const std::string&)> callback) {
  std::lock_guard lock(mutex_);
  on_endpoint_gone_ = std::move(callback);
}

void EndpointTable::apply(const std::string& key, const std::string* value) {
  static const std::string kDeployments = api::store_prefix("deployments");
  static const std::string kReplicas = api::store_prefix("replicas");
  std::string changed;
  std::string gone;  // the URL of an engine that left the table
  std::function<void(const std::string&)> notify;
  std::function<void(const std::string&)> notify_gone;
  {
    std::lock_guard lock(mutex_);
    notify = on_change_;
    notify_gone = on_endpoint_gone_;
    if (key.rfind(kDeployments, 0) == 0) {
      changed = key.substr(kDeployments.size());
      if (!value) {
        deployments_.erase(changed);
      } else if (auto document = parse_json(*value)) {
        if (auto deployment = api::deployment_from_json(*document)) {
          std::string unschedulable;
          if (deployment->status.phase == "Pending") unschedulable = deployment->status.message;
          deployments_[changed] = {deployment->metadata.created_ms, deployment->spec.max_seqs,
                                   deployment->status.idle_since_ms, deployment->status.wake_requested_ms,
                                   unschedulable};
        }
      }
    } else if (key.rfind(kReplicas, 0) == 0) {
      std::string name = key.substr(kReplicas.size());
      if (!value) {
        if (auto it = replicas_.find(name); it != replicas_.end()) {
          changed = it->second.deployment;
          if (it->second.endpoint) gone = it->second.endpoint->url;
          replicas_.erase(it);
        }
      } else if (auto document = parse_json(*value)) {
        if (auto replica = api::replica_from_json(*document)) {
          auto& entry = replicas_[name];
          entry.deployment = replica->spec.deployment;
          changed = entry.deployment;
          // A draining replica (its plan superseded) takes no new request; its entry keeps the
          // endpoint so drained() can tell when the requests in flight to it have finished.
          bool leaving = replica->spec.stop || replica->spec.draining_since_ms > 0;
          entry.draining = replica->spec.draining_since_ms > 0 && !replica->spec.stop;
          entry.starting = !leaving && is_starting(replica->status.phase);
          bool serving = replica->status.phase == api::phase::kReady && !leaving && !replica->status.endpoint.empty() &&
                         replica->status.plan_version == replica->spec.plan_version;
          if (entry.draining) {
            // keep the endpoint (if any) for its in-flight count
          } else if (!serving) {
            if (entry.endpoint) gone = entry.endpoint->url;
            entry.endpoint.reset();
          } else if (!entry.endpoint || entry.endpoint->url != replica->status.endpoint) {
            if (entry.endpoint) gone = entry.endpoint->url;
            entry.endpoint = std::make_shared<Endpoint>();
            entry.endpoint->replica = name;
            entry.endpoint->deployment = entry.deployment;
            entry.endpoint->url = replica->status.endpoint;
          }
        }
      }
    }
  }
  if (notify && !changed.empty()) notify(changed);
  if (notify_gone && !gone.empty()) notify_gone(gone);
}

bool EndpointTable::drained(const std::string& replica) const {
  std::lock_guard lock(mutex_);
  auto it = replicas_.find(replica);
  if (it == replicas_.end() || !it->second.endpoint) return true;
  return it->second.draining && it->second.endpoint->outstanding.load() == 0;
}

size_t EndpointTable::starting_count(const std::string& deployment) const {
  std::lock_guard lock(mutex_);
  size_t count = 0;
  for (const auto& [name, entry] : replicas_) {
    if (entry.deployment == deployment && entry.starting) ++count;
  }
  return count;
}

bool EndpointTable::has_deployment(const std::string& name) const {
  std::lock_guard lock(mutex_);
  return deployments_.count(name) > 0;
}

std::vector<std::string> EndpointTable::deployments() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> names;
  for (const auto& [name, entry] : deployments_) names.push_back(name);
  return names;
}

int64_t EndpointTable::created_ms(const std::string& deployment) const {
  std::lock_guard lock(mutex_);
  auto it = deployments_.find(deployment);
  return it == deployments_.end() ? 0 : it->second.created_ms;
}

std::shared_ptr<Endpoint> EndpointTable::pick(const std::string& deployment, const std::set<std::string>& exclude,
                                              int default_capacity, SteadyClock::time_point now) {
  std::lock_guard lock(mutex_);
  int capacity = default_capacity;
  if (auto it = deployments_.find(deployment); it != deployments_.end() && it->second.capacity > 0) {
    capacity = it->second.capacity;
  }
  std::vector<std::shared_ptr<Endpoint>> least;
  int fewest = 0;
  for (const auto& [name, entry] : replicas_) {
    if (entry.deployment != deployment || !entry.endpoint || entry.draining || exclude.count(name)) continue;
    const auto& endpoint = entry.endpoint;
    int outstanding = endpoint->outstanding.load();
    if (outstanding >= capacity) continue;
    // An open breaker admits one probe after its cool-down.
    if (endpoint->consecutive_failures > 0 && (now < endpoint->open_until || endpoint->probing)) continue;
    if (least.empty() || outstanding < fewest) {
      least.clear();
      fewest = outstanding;
    }
    if (outstanding == fewest) least.push_back(endpoint);
  }
  if (least.empty()) return nullptr;
  return least[round_robin_++ % least.size()];
}

int64_t EndpointTable::idle_since_ms(const std::string& deployment) const {
  std::lock_guard lock(mutex_);
  auto it = deployments_.find(deployment);
  return it == deployments_.end() ? 0 : it->second.idle_since_ms;
}

std::string EndpointTable::unschedulable(const std::string& deployment) const {
  std::lock_guard lock(mutex_);
  auto it = deployments_.find(deployment);
  return it == deployments_.end() ? std::string() : it->second.unschedulable;
}

int64_t EndpointTable::wake_requested_ms(const std::string& deployment) const {
  std::lock_guard lock(mutex_);
  auto it = deployments_.find(deployment);
  return it == deployments_.end() ? 0 : it->second.wake_requested_ms;
}

size_t EndpointTable::ready_count(const std::string& deployment, const std::set<std::string>& exclude) const {
  std::lock_guard lock(mutex_);
  size_t count = 0;
  for (const auto& [name, entry] : replicas_) {
    if (entry.deployment == deployment && entry.endpoint && !entry.draining && !exclude.count(name)) ++count;
  }
  return count;
}

// ---------------------------------------------------------------------------------------------
// Gateway

namespace {
enum Kind { kChat = 0, kCompletions = 1, kEmbeddings = 2, kResponses = 3 };
const char* kUpstreamPaths[] = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/chat/completions"};
}  // namespace

struct Gateway::Waiter {
  explicit Waiter(asio::io_context& io) : timer(io) {}
  std::string key;
  int priority = 0;
  uint64_t sequence = 0;
  std::set<std::string> exclude;
  asio::steady_timer timer;
  std::shared_ptr<Endpoint> granted;
  std::string failure;  // set when waiting became pointless (the deployment cannot start)
};

// One request through the gateway, from authentication to accounting.
struct Gateway::Call {
  int kind = kChat;
  std::string request_id;
  SteadyClock::time_point start = SteadyClock::now();
  SteadyClock::time_point deadline;
  std::shared_ptr<const api::ApiKey> key;  // null without auth
  std::string key_id = "anonymous";
  std::string model;
  json body;
  bool stream = false;
  bool client_wants_usage = false;
  int64_t estimated_tokens = 0;
  uint64_t ticket = 0;
  bool admitted = false;  // counted by the limiter
  std::string replica;
  double ttft_s = -1;
  json usage;  // the engine's usage object
  int64_t relayed_chunks = 0;
  http::Headers headers;  // sent on every response: x-request-id, x-ratelimit-*
  // While the client waits without being written to (queue, non-streamed answer): what to
  // cancel if it leaves.
  bool client_gone = false;
  bool watching = false;
  Waiter* waiting = nullptr;
  http::Cancellation upstream_cancel;
  http::StreamingResponse* upstream = nullptr;
  // /v1/responses: the items up to this request's input, stored with the answer unless the
  // client sent "store": false.
  json conversation;
  bool store_response = false;

  // From here until the answer is written, a client that leaves cancels what it waits for.
  void watch_client(http::ResponseWriter& writer) {
    if (watching) return;
    watching = true;
    writer.on_client_gone([this] {
      client_gone = true;
      if (waiting) waiting->timer.cancel();
      upstream_cancel.cancel();
      if (upstream) upstream->cancel();
    });
  }
};

Gateway::Gateway(store::Store& store, asio::io_context& io, Options options)
    : store_(store), io_(io), options_(options), usage_(store, options.usage_flush_interval) {
  http::ClientOptions client_options;
  client_options.connect_timeout = options.connect_timeout;
  // Keep a connection per concurrent request to a replica, up to 512 (nginx's `keepalive 512` in
  // the benchmark): with the default 64, a burst of 256 streams reconnected 192 of them each time.
  client_options.max_idle_per_host = 512;
  client_ = std::make_unique<http::Client>(io, client_options);
  if (!options.access_log_path.empty()) {
    // Its lines name keys and clients: readable by the owner only, and never inherited by a child.
    spdlog::file_event_handlers private_file;
    private_file.after_open = [](const spdlog::filename_t&, std::FILE* file) {
      ::fchmod(::fileno(file), 0600);
      set_close_on_exec(::fileno(file));
    };
    access_log_ =
        std::make_shared<spdlog::logger>("access", std::make_shared<spdlog::sinks::rotating_file_sink_mt>(
                                                       options.access_log_path, 64 << 20, 3, false, private_file));
    access_log_->set_pattern("%v");
    // Flushed once a second by report_activity(), not per line: a crash loses at most the last
    // second of access log lines, as it does of usage.
    access_log_->flush_on(spdlog::level::err);
  }
}

Gateway::~Gateway() {
  stop();
}

void Gateway::stop() {
  stopping_ = true;
  for (auto* timer : {activity_timer_.get(), watch_timer_.get()}) {
    if (timer) asio::post(io_, [timer] { timer->cancel(); });
  }
  if (watch_) watch_->cancel();
  watch_.reset();
  usage_.stop();
  flush_access_log();
}

void Gateway::flush_access_log() {
  if (!access_log_) return;
  std::string lines;
  {
    std::lock_guard lock(access_mutex_);
    lines.swap(access_pending_);
  }
  if (!lines.empty()) {
    lines.pop_back();  // the logger ends the last line
    access_log_->info(lines);
  }
  access_log_->flush();
}

Status Gateway::start() {
  int64_t first_listing = -1;
  for (const char* plural : {"deployments", "replicas"}) {
    auto listing = store_.list(api::store_prefix(plural));
    if (!listing) return listing.error();
    if (first_listing < 0) first_listing = listing->revision;
    for (const auto& kv : listing->kvs) table_.apply(kv.key, &kv.value);
  }
  // Replaying every change after the first listing closes the gap between the listings and the
  // watch; applying whole documents in revision order makes the replay idempotent.
  auto watch = store_.watch(api::kKeyRoot, first_listing + 1, [this](const store::WatchEvent& event) {
    table_.apply(event.kv.key, event.type == store::WatchEvent::Type::Put ? &event.kv.value : nullptr);
  });
  if (!watch) return watch.error();
  watch_ = std::move(*watch);
  // A replica that became Ready may serve queued requests: wake the queue on the I/O thread.
  table_.set_on_change(
      [this](const std::string& deployment) { asio::post(io_, [this, deployment] { dispatch_queue(deployment); }); });
  // Everything a replica holds goes with it: idle connections to its engine are closed (on the
  // I/O thread, which owns the pool's sockets), not left in CLOSE-WAIT until the pool is next used.
  table_.set_on_endpoint_gone([this](const std::string& url) {
    asio::post(io_, [this, url] {
      if (auto parsed = http::Url::parse(url)) client_->close_idle(parsed->origin());
    });
  });
  if (auto started = keys_.start(store_); !started) return started;
  activity_timer_ = std::make_unique<asio::steady_timer>(io_);
  asio::co_spawn(io_, report_activity(), asio::detached);
  watch_timer_ = std::make_unique<asio::steady_timer>(io_);
  return usage_.start();
}

Result<std::string> Gateway::bootstrap_admin_key() {
  auto listing = store_.list(std::string(api::kKeyRoot) + "apikeys/");
  if (!listing) return listing.error();
  for (const auto& kv : listing->kvs) {
    auto document = parse_json(kv.value);
    if (!document) continue;
    auto key = api::api_key_from_json(*document);
    if (key && key->scope == api::scope::kAdmin && !key->revoked) return std::string();
  }
  api::ApiKey admin;
  admin.display_name = "bootstrap-admin";
  admin.scope = api::scope::kAdmin;
  auto created = create_key(store_, admin, to_unix_ms(std::chrono::system_clock::now()));
  if (!created) return created.error();
  return created->secret;
}

Result<std::string> Gateway::issue_node_key(const std::string& node) {
  // One live key per node: a rejoin revokes the keys the node was given before.
  if (auto listing = store_.list(std::string(api::kKeyRoot) + "apikeys/")) {
    for (const auto& kv : listing->kvs) {
      auto document = parse_json(kv.value);
      if (!document) continue;
      auto old = api::api_key_from_json(*document);
      if (old && old->scope == api::scope::kNode && old->display_name == "node/" + node && !old->revoked) {
        (void)revoke_key(store_, old->metadata.name);
      }
    }
  }
  api::ApiKey key;
  key.display_name = "node/" + node;
  key.scope = api::scope::kNode;
  auto created = create_key(store_, key, to_unix_ms(std::chrono::system_clock::now()));
  if (!created) return created.error();
  return created->secret;
}

std::optional<http::Response> Gateway::guard_management(const http::Request& request) const {
  if (!options_.require_keys) return std::nullopt;
  const std::string& path = request.path;
  bool management = path.rfind("/api/", 0) == 0 || path == "/metrics";
  if (!management || path == "/api/v1/nodes/join") return std::nullopt;
  auto key = keys_.authenticate(bearer_token(request), to_unix_ms(std::chrono::system_clock::now()));
  if (!key) return openai_error(401, key.error().message, "invalid_request_error", "invalid_api_key");
  const std::string& scope = (*key)->scope;
  if (scope == api::scope::kAdmin) return std::nullopt;
  auto refusal = [&scope] {
    return openai_error(403, "this API key may not use the management API (scope " + scope + ")",
                        "invalid_request_error", "permission_denied");
  };
  if (scope != api::scope::kNode) return refusal();
  // A node's key does what its agent does and no more: read replicas; report its own node's
  // status; report the status of, and remove, the replicas placed on its node. No drain, no
  // deletion, nothing of another node's.
  const std::string& method = request.method;
  const std::string own_node = (*key)->display_name.rfind("node/", 0) == 0 ? (*key)->display_name.substr(5) : "";
  if (own_node.empty()) return refusal();
  auto named = [&path](std::string_view prefix, std::string_view suffix) -> std::optional<std::string> {
    if (path.size() <= prefix.size() + suffix.size() || path.rfind(prefix, 0) != 0 ||
        path.compare(path.size() - suffix.size(), suffix.size(), suffix) != 0) {
      return std::nullopt;
    }
    std::string name = path.substr(prefix.size(), path.size() - prefix.size() - suffix.size());
    if (name.find('/') != std::string::npos) return std::nullopt;
    return name;
  };
  if (method == "GET" && (path == "/api/v1/replicas" || named("/api/v1/replicas/", ""))) return std::nullopt;
  if (method == "PUT") {
    if (auto node = named("/api/v1/nodes/", "/status")) {
      if (*node == own_node) return std::nullopt;
      return openai_error(403, "a node's key may report only its own node's status", "invalid_request_error",
                          "permission_denied");
    }
  }
  std::optional<std::string> replica;
  if (method == "PUT") replica = named("/api/v1/replicas/", "/status");
  if (method == "DELETE") replica = named("/api/v1/replicas/", "");
  if (!replica) return refusal();
  // The replica's node, from the store: one the store does not have is left to the handler (404).
  auto stored = store_.get(api::store_key("replicas", *replica));
  if (!stored || !*stored) return std::nullopt;
  auto document = parse_json((*stored)->value);
  std::string placed_on;
  if (document) {
    if (auto parsed = api::replica_from_json(*document)) placed_on = parsed->spec.node;
  }
  if (placed_on == own_node) return std::nullopt;
  return openai_error(403, "a node's key may change only the replicas on its own node", "invalid_request_error",
                      "permission_denied");
}

namespace {
json models_json(const EndpointTable& table, const api::ApiKey* key) {
  json data = json::array();
  for (const auto& name : table.deployments()) {
    if (key && !key->models.empty() && std::find(key->models.begin(), key->models.end(), name) == key->models.end()) {
      continue;
    }
    data.push_back(
        {{"id", name}, {"object", "model"}, {"created", table.created_ms(name) / 1000}, {"owned_by", "nebula"}});
  }
  return json{{"object", "list"}, {"data", data}};
}

// The output a request may ask for, for the up-front charge: its limit, else a typical answer
// (corrected once the engine reports); embeddings produce none.
int64_t requested_output_tokens(const RequestFacts& facts, int kind) {
  if (kind == kEmbeddings) return 0;
  return facts.max_tokens ? std::max<int64_t>(0, *facts.max_tokens) : 256;
}

int64_t cached_tokens(const json& usage) {
  if (!usage.is_object()) return 0;
  auto details = usage.find("prompt_tokens_details");
  if (details == usage.end() || !details->is_object()) return 0;
  return usage_tokens(*details, "cached_tokens");
}

constexpr size_t kAccessLogBatch = 64 * 1024;

// Appends format_rfc3339(time), for the access log: the date and time up to the second are
// formatted once per second instead of once per line.
void append_log_time(std::string& out, std::chrono::system_clock::time_point time) {
  thread_local int64_t cached_second = -1;
  thread_local std::string cached_prefix;  // "2026-11-23T23:02:14."
  int64_t ms = to_unix_ms(time);
  int64_t second = ms / 1000;
  if (second != cached_second) {
    cached_prefix = format_rfc3339(std::chrono::system_clock::time_point(std::chrono::seconds(second)));
    cached_prefix.resize(cached_prefix.size() - 4);  // "000Z"
    cached_second = second;
  }
  int millis = static_cast<int>(ms % 1000);
  out.append(cached_prefix);
  out.push_back(static_cast<char>('0' + millis / 100));
  out.push_back(static_cast<char>('0' + millis / 10 % 10));
  out.push_back(static_cast<char>('0' + millis % 10));
  out.push_back('Z');
}

// Appends a JSON string literal, escaped by hand for the access log (see finish()): quote,
// backslash and control characters escaped, and every byte above 0x7f as \u00XX, so a client's id
// in any encoding gives a valid line (not a faithful one: a UTF-8 character shows as its bytes).
void append_json_quoted(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c < 0x20 || c > 0x7e) {
      out.append("\\u00");
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  out.push_back('"');
}

void append_number(std::string& out, int64_t value) {
  fmt::format_int text(value);
  out.append(text.data(), text.size());
}

// A millisecond figure with microsecond precision: "12.345".
void append_ms(std::string& out, double seconds) {
  char text[32];
  auto end = fmt::format_to_n(text, sizeof text, FMT_COMPILE("{:.3f}"), seconds * 1000);
  out.append(text, end.size);
}

http::Response with_headers(http::Response response, const http::Headers& headers) {
  for (const auto& header : headers) response.headers.push_back(header);
  return response;
}

http::Headers stream_headers(const http::Headers& call_headers) {
  http::Headers headers = http::event_stream_headers();
  for (const auto& header : call_headers) headers.push_back(header);
  return headers;
}

http::Headers upstream_headers(const std::string& request_id) {
  return {{"Content-Type", "application/json"}, {"X-Request-Id", request_id}};
}

bool retryable_status(int status) {
  return status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
}

std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
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
}  // namespace

namespace {
json deleted_response_json(const std::string& id) {
  return json{{"id", id}, {"object", "response"}, {"deleted", true}};
}
}  // namespace

std::optional<http::Response> Gateway::inference_refusal(const http::Request& request,
                                                         std::shared_ptr<const api::ApiKey>& key) const {
  if (!options_.require_keys) return std::nullopt;
  auto found = keys_.authenticate(bearer_token(request), to_unix_ms(std::chrono::system_clock::now()));
  if (!found) return openai_error(401, found.error().message, "invalid_request_error", "invalid_api_key");
  if ((*found)->scope == api::scope::kNode) {
    return openai_error(403, "node keys cannot call the inference API", "invalid_request_error", "permission_denied");
  }
  key = *found;
  return std::nullopt;
}

// GET and DELETE /v1/responses/{id}: a response this key stored.
http::Response Gateway::stored_response_answer(const http::Request& request, bool erase) {
  std::shared_ptr<const api::ApiKey> key;
  if (auto refusal = inference_refusal(request, key)) return std::move(*refusal);
  const std::string key_id = key ? key->metadata.name : "anonymous";
  const std::string& id = request.params.at("id");
  if (erase) {
    if (responses_.erase(id, key_id)) return http::Response::json_body(200, deleted_response_json(id));
  } else if (const json* stored = responses_.response(id, key_id)) {
    return http::Response::json_body(200, *stored);
  }
  return openai_error(404, fmt::format("Response with id '{}' not found.", id), "invalid_request_error", "not_found");
}

awaitable<void> Gateway::stored_response(http::Request& request, http::ResponseWriter& writer, bool erase) {
  co_await writer.send(stored_response_answer(request, erase));
}

void Gateway::add_routes(http::Router& router) {
  router.add("GET", "/v1/models", [this](http::Request& request, http::ResponseWriter& writer) -> awaitable<void> {
    std::shared_ptr<const api::ApiKey> key;
    if (options_.require_keys) {
      auto found = keys_.authenticate(bearer_token(request), to_unix_ms(std::chrono::system_clock::now()));
      if (!found) {
        co_await writer.send(openai_error(401, found.error().message, "invalid_request_error", "invalid_api_key"));
        co_return;
      }
      key = *found;
    }
    co_await writer.send(http::Response::json_body(200, models_json(table_, key.get())));
  });
  const std::pair<const char*, int> routes[] = {{"/v1/chat/completions", kChat},
                                                {"/v1/completions", kCompletions},
                                                {"/v1/embeddings", kEmbeddings},
                                                {"/v1/responses", kResponses}};
  for (const auto& [path, kind] : routes) {
    int route_kind = kind;
    router.add("POST", path, [this, route_kind](http::Request& request, http::ResponseWriter& writer) {
      return serve(request, writer, route_kind);
    });
  }
  router.add("GET", "/v1/responses/{id}", [this](http::Request& request, http::ResponseWriter& writer) {
    return stored_response(request, writer, false);
  });
  router.add("DELETE", "/v1/responses/{id}", [this](http::Request& request, http::ResponseWriter& writer) {
    return stored_response(request, writer, true);
  });
  router.add("GET", "/metrics", [this](http::Request&, http::ResponseWriter& writer) -> awaitable<void> {
    co_await writer.send(
        http::Response::text(200, metrics_.render() + http::render_server_metrics(), "text/plain; version=0.0.4"));
  });
  add_key_routes(router);
  add_openai_routes(router);
}

// ---------------------------------------------------------------------------------------------
// Admission: a bounded queue per deployment, fair across keys

awaitable<Result<std::shared_ptr<Endpoint>>> Gateway::acquire(Call& call, const std::set<std::string>& exclude,
                                                              http::ResponseWriter& writer) {
  auto& queue = queues_[call.model];
  // Nobody waiting: take a free slot directly. Otherwise queue behind them (no barging).
  if (queue.empty()) {
    if (auto endpoint = table_.pick(call.model, exclude, options_.replica_capacity, SteadyClock::now())) {
      endpoint->outstanding += 1;
      co_return endpoint;
    }
  }
  // An idle deployment being woken (or started), or one whose replicas are starting (just
  // deployed, or replaced one at a time by a rollout), is worth waiting for; otherwise no ready
  // replica means 503 at once.
  if (table_.ready_count(call.model, exclude) == 0 && !waking(call.model) && table_.starting_count(call.model) == 0) {
    co_return make_error(ErrorCode::Unavailable, fmt::format("no replica of `{}` is ready", call.model));
  }
  if (std::string reason = table_.unschedulable(call.model); !reason.empty() && table_.ready_count(call.model) == 0) {
    co_return make_error(ErrorCode::Unavailable, fmt::format("`{}` cannot start: {}", call.model, reason));
  }
  if (queue.size() >= options_.max_queue) {
    co_return make_error(
        ErrorCode::ResourceExhausted,
        fmt::format("`{}` is at capacity and its queue is full ({} waiting)", call.model, queue.size()));
  }
  Waiter waiter(io_);
  waiter.key = call.key_id;
  waiter.priority = call.key ? call.key->priority : 0;
  waiter.exclude = exclude;
  auto deadline = std::min(call.deadline, SteadyClock::now() + options_.queue_timeout);
  waiter.timer.expires_at(deadline);
  queue.push_back(&waiter);
  metrics_.queue_depth(call.model, 1);
  call.waiting = &waiter;
  call.watch_client(writer);
  boost::system::error_code ec;
  co_await waiter.timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  call.waiting = nullptr;
  queue.remove(&waiter);
  metrics_.queue_depth(call.model, -1);
  if (waiter.granted) co_return waiter.granted;
  if (!waiter.failure.empty()) co_return make_error(ErrorCode::Unavailable, waiter.failure);
  if (call.client_gone) co_return make_error(ErrorCode::Unavailable, "the client went away while queued");
  co_return make_error(ErrorCode::Timeout, fmt::format("`{}` had no free replica within {} ms", call.model,
                                                       options_.queue_timeout.count()));
}

void Gateway::release(const std::shared_ptr<Endpoint>& endpoint) {
  endpoint->outstanding -= 1;
  dispatch_queue(endpoint->deployment);
}

// Hands free slots to waiters: highest priority first, then the key served longest ago, so one
// key's burst cannot starve another's.
void Gateway::dispatch_queue(const std::string& deployment) {
  auto found = queues_.find(deployment);
  if (found == queues_.end()) return;
  auto& queue = found->second;
  // Waiting for a deployment that cannot be placed (and nothing could be evicted for it) is
  // pointless: fail the waiters now with the scheduler's reason.
  std::string unschedulable = table_.unschedulable(deployment);
  if (!unschedulable.empty() && table_.ready_count(deployment) == 0) {
    for (Waiter* waiter : queue) {
      waiter->failure = fmt::format("`{}` cannot start: {}", deployment, unschedulable);
      waiter->timer.cancel();
    }
    queue.clear();
    return;
  }
  while (!queue.empty()) {
    // Fairness order: priority, then the key served longest ago. A waiter that cannot use any
    // free replica (it already tried them) does not block the ones behind it.
    std::vector<Waiter*> order(queue.begin(), queue.end());
    std::stable_sort(order.begin(), order.end(), [this](const Waiter* a, const Waiter* b) {
      if (a->priority != b->priority) return a->priority > b->priority;
      return last_served_[a->key] < last_served_[b->key];
    });
    bool granted = false;
    for (Waiter* waiter : order) {
      auto endpoint = table_.pick(deployment, waiter->exclude, options_.replica_capacity, SteadyClock::now());
      if (!endpoint) continue;
      endpoint->outstanding += 1;
      waiter->granted = endpoint;
      last_served_[waiter->key] = ++admission_sequence_;
      queue.remove(waiter);
      waiter->timer.cancel();
      granted = true;
      break;
    }
    if (!granted) return;
  }
}

// ---------------------------------------------------------------------------------------------
// Scale-to-zero

void Gateway::note_request(const std::string& deployment) {
  int64_t now = to_unix_ms(std::chrono::system_clock::now());
  last_request_ms_[deployment] = now;
  int64_t idle_since = table_.idle_since_ms(deployment);
  if (idle_since == 0 || wake_sent_for_[deployment] == idle_since) return;
  // The first request of an idle period asks for a wake; the rest wait in the queue for it, so a
  // burst causes one wake (one start), not many.
  wake_sent_for_[deployment] = idle_since;
  write_deployment_status(deployment, [now](json& status) {
    status["wake_requested_ms"] = now;
    return true;
  });
}

bool Gateway::waking(const std::string& deployment) const {
  if (table_.idle_since_ms(deployment) > 0) return true;
  int64_t woken = table_.wake_requested_ms(deployment);
  int64_t now = to_unix_ms(std::chrono::system_clock::now());
  return woken > 0 && now - woken < options_.queue_timeout.count();
}

void Gateway::write_deployment_status(const std::string& deployment, const std::function<bool(json& status)>& change) {
  (void)store::update(store_, api::store_key("deployments", deployment),
                      [&](const std::optional<std::string>& current) -> Result<std::optional<std::string>> {
                        if (!current) return std::optional<std::string>();
                        auto document = parse_json(*current);
                        if (!document || !document->is_object()) return std::optional<std::string>();
                        if (!(*document)["status"].is_object()) (*document)["status"] = json::object();
                        if (!change((*document)["status"])) return std::optional<std::string>();
                        return std::optional<std::string>(dump(*document));
                      });
}

// Runs while some request waits unwatched (started by serve(), so an idle gateway has no timer).
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

// Once a second: the deployments asked for since the last round get their last_request_ms.
awaitable<void> Gateway::report_activity() {
  while (!stopping_) {
    activity_timer_->expires_after(std::chrono::seconds(1));
    boost::system::error_code ec;
    co_await activity_timer_->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (stopping_) co_return;
    flush_access_log();
    for (const auto& [deployment, when] : last_request_ms_) {
      if (reported_ms_[deployment] == when) continue;
      reported_ms_[deployment] = when;
      int64_t at = when;
      write_deployment_status(deployment, [at](json& status) {
        status["last_request_ms"] = at;
        return true;
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Serving one request

void Gateway::finish(Call& call, int status) {
  auto now = SteadyClock::now();
  int64_t prompt = usage_tokens(call.usage, "prompt_tokens");
  int64_t completion = usage_tokens(call.usage, "completion_tokens");
  int64_t cached = cached_tokens(call.usage);
  if (call.usage.is_null() && call.relayed_chunks > 0) completion = call.relayed_chunks;  // a cut stream
  if (call.admitted && call.key) {
    limiter_.finish(call.key_id, call.ticket, call.estimated_tokens, prompt + completion, now);
  }
  if (call.admitted) {
    usage_.record(call.key_id, call.model, {prompt, completion, cached, status >= 400},
                  std::chrono::system_clock::now());
  }
  double duration = std::chrono::duration<double>(now - call.start).count();
  if (!call.model.empty()) {
    metrics_.request_done({call.model, call.key_id, status, call.ttft_s, duration, prompt, completion});
  }
  if (access_log_) {
    // Appended by hand: a json object per line, a json value per string to escape it, or even a
    // runtime format string cost more than the rest of the bookkeeping. The request id comes from
    // the client, hence the escaping.
    std::lock_guard lock(access_mutex_);
    std::string& out = access_pending_;
    out.append("{\"time\":\"");
    append_log_time(out, std::chrono::system_clock::now());
    out.append("\",\"id\":");
    append_json_quoted(out, call.request_id);
    out.append(",\"key\":");
    append_json_quoted(out, call.key_id);
    out.append(",\"model\":");
    append_json_quoted(out, call.model);
    out.append(",\"replica\":");
    append_json_quoted(out, call.replica);
    out.append(",\"status\":");
    append_number(out, status);
    out.append(call.stream ? ",\"stream\":true" : ",\"stream\":false");
    out.append(",\"prompt_tokens\":");
    append_number(out, prompt);
    out.append(",\"completion_tokens\":");
    append_number(out, completion);
    out.append(",\"cached_tokens\":");
    append_number(out, cached);
    out.append(",\"ttft_ms\":");
    if (call.ttft_s < 0) {
      out.append("null");
    } else {
      append_ms(out, call.ttft_s);
    }
    out.append(",\"duration_ms\":");
    append_ms(out, duration);
    out.append("}\n");
    if (out.size() < kAccessLogBatch) return;
  }
  if (access_log_) flush_access_log();
}

namespace {
// What the client gets for an error, with the call's headers.
http::Response call_error(const std::vector<http::Header>& headers, int status, const std::string& message,
                          const std::string& type, const std::string& code) {
  return with_headers(openai_error(status, message, type, code), headers);
}

http::Response error_for(const Error& error, const http::Headers& headers) {
  switch (error.code) {
    case ErrorCode::ResourceExhausted: {
      http::Headers with_retry = headers;
      with_retry.push_back({"Retry-After", "1"});
      return call_error(with_retry, 429, error.message, "rate_limit_exceeded", "rate_limit_exceeded");
    }
    case ErrorCode::Timeout: return call_error(headers, 503, error.message, "server_error", "queue_timeout");
    default: return call_error(headers, 503, error.message, "server_error", "service_unavailable");
  }
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

bool Gateway::attach_conversation(Call& call, int64_t& prior_bytes) {
  if (!call.body.is_object()) return true;  // the translation refuses it
  auto store = call.body.find("store");
  call.store_response = store == call.body.end() || !store->is_boolean() || store->get<bool>();
  auto input = call.body.find("input");
  if (input == call.body.end() || !(input->is_string() || input->is_array())) return true;
  json conversation = json::array();
  auto previous = call.body.find("previous_response_id");
  bool continues = previous != call.body.end() && !previous->is_null();
  if (continues) {
    size_t bytes = 0;
    const json* prior =
        previous->is_string() ? responses_.conversation(previous->get<std::string>(), call.key_id, &bytes) : nullptr;
    if (!prior) {
      if (!previous->is_string()) *previous = previous->dump();  // named in the error as sent
      return false;
    }
    conversation = *prior;
    prior_bytes = static_cast<int64_t>(bytes);
  }
  for (const auto& item : input_items(*input)) conversation.push_back(item);
  if (continues) *input = conversation;  // the engine sees the whole conversation
  call.conversation = std::move(conversation);
  return true;
}

void Gateway::store_response(Call& call, const json& response) {
  if (!call.store_response || !response.is_object() || !response.contains("id")) return;
  json conversation = std::move(call.conversation);
  if (!conversation.is_array()) conversation = json::array();
  if (response.contains("output") && response["output"].is_array()) {
    for (const auto& item : response["output"]) conversation.push_back(item);
  }
  responses_.put(response["id"].get<std::string>(), call.key_id, response, std::move(conversation));
}

awaitable<void> Gateway::serve(http::Request& request, http::ResponseWriter& writer, int kind) {
  Call call;
  call.kind = kind;
  call.deadline = call.start + options_.total_timeout;
  call.request_id = request.header("x-request-id");
  if (call.request_id.empty()) call.request_id = "req-" + random_id(20);
  call.headers.reserve(9);  // the id, six rate-limit headers, Content-Type
  call.headers.push_back({"X-Request-Id", call.request_id});

  if (auto refusal = inference_refusal(request, call.key)) {
    int status = refusal->status;
    co_await writer.send(with_headers(std::move(*refusal), call.headers));
    finish(call, status);
    co_return;
  }
  if (call.key) call.key_id = call.key->metadata.name;

  auto facts = read_request(request.body);
  if (!facts) {
    co_await writer.send(
        call_error(call.headers, 400, facts.error().message, "invalid_request_error", "invalid_request"));
    finish(call, 400);
    co_return;
  }
  call.model = facts->model;
  if (call.model.empty()) {
    co_await writer.send(call_error(call.headers, 400, "you must provide a model parameter", "invalid_request_error",
                                    "invalid_request"));
    finish(call, 400);
    co_return;
  }
  call.stream = facts->stream && kind != kEmbeddings;
  if (call.key && !call.key->models.empty() &&
      std::find(call.key->models.begin(), call.key->models.end(), call.model) == call.key->models.end()) {
    co_await writer.send(call_error(call.headers, 403,
                                    fmt::format("this API key may not use the model `{}`", call.model),
                                    "invalid_request_error", "model_not_allowed"));
    call.model.clear();  // a name the client chose: keep it out of the per-model metrics
    finish(call, 403);
    co_return;
  }
  if (!table_.has_deployment(call.model)) {
    co_await writer.send(call_error(call.headers, 404, fmt::format("The model `{}` does not exist.", call.model),
                                    "invalid_request_error", "model_not_found"));
    std::string unknown;
    call.model.swap(unknown);  // keep unknown names out of the per-model metrics
    finish(call, 404);
    co_return;
  }
  note_request(call.model);
  // The body is parsed into a json only when it must change on its way upstream.
  if (kind == kResponses || call.stream) {
    auto parsed = parse_json(request.body);
    if (parsed) call.body = std::move(*parsed);
  }
  int64_t prior_bytes = 0;
  if (kind == kResponses && !attach_conversation(call, prior_bytes)) {
    co_await writer.send(call_error(
        call.headers, 404,
        fmt::format("Previous response with id '{}' not found.", call.body["previous_response_id"].get<std::string>()),
        "invalid_request_error", "previous_response_not_found"));
    finish(call, 404);
    co_return;
  }
  auto prepared = prepare_upstream(call.body, kind, *facts);
  if (!prepared) {
    co_await writer.send(
        call_error(call.headers, 400, prepared.error().message, "invalid_request_error", "invalid_request"));
    finish(call, 400);
    co_return;
  }
  call.client_wants_usage = prepared->client_wants_usage;
  call.estimated_tokens = (facts->prompt_bytes + prior_bytes) / 4 + 1 + requested_output_tokens(*facts, kind);

  if (call.key) {
    auto now = SteadyClock::now();
    auto admission = limiter_.admit(*call.key, call.estimated_tokens,
                                    usage_.month_tokens(call.key_id, std::chrono::system_clock::now()), now);
    if (!admission.allowed) {
      http::Headers headers = call.headers;
      for (auto& header : limiter_.headers(*call.key, now)) headers.push_back(header);
      headers.push_back({"retry-after", std::to_string(admission.retry_after_s)});
      co_await writer.send(call_error(headers, 429, admission.message, "rate_limit_exceeded", "rate_limit_exceeded"));
      finish(call, 429);
      co_return;
    }
    call.admitted = true;
    call.ticket = admission.ticket;
    for (auto& header : limiter_.headers(*call.key, now)) call.headers.push_back(std::move(header));
  } else {
    call.admitted = true;
  }

  const std::string upstream_body = prepared->body ? dump(*prepared->body) : request.body;
  const std::string path = kUpstreamPaths[kind];
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
    if (call.client_gone) {
      finish(call, 499);
      co_return;
    }
    if (!acquired) {
      if (!last_failure.empty() && acquired.error().code == ErrorCode::Unavailable) break;
      http::Response refusal = error_for(acquired.error(), call.headers);
      int status = refusal.status;
      co_await writer.send(std::move(refusal));
      finish(call, status);
      co_return;
    }
    std::shared_ptr<Endpoint> endpoint = std::move(*acquired);
    struct Slot {
      Gateway& gateway;
      std::shared_ptr<Endpoint> endpoint;
      ~Slot() { gateway.release(endpoint); }
    } slot{*this, endpoint};
    tried.insert(endpoint->replica);
    call.replica = endpoint->replica;
    if (endpoint->consecutive_failures > 0) endpoint->probing = true;

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
    auto upstream = co_await client_->open(
        "POST", endpoint->url + path, upstream_body, upstream_headers(call.request_id),
        std::min(options_.first_byte_timeout, std::max(left, milliseconds(1))), &call.upstream_cancel);
    if (call.client_gone) {
      finish(call, 499);  // the engine's request was cancelled with the connection
      co_return;
    }
    bool failed = !upstream || retryable_status((*upstream)->status);
    if (failed) {
      // Nothing reached the client yet: count it against the replica and try another.
      if (upstream) {
        last_failure = fmt::format("HTTP {}", (*upstream)->status);
      } else {
        last_failure = upstream.error().message;
      }
      endpoint->probing = false;
      endpoint->consecutive_failures += 1;
      if (endpoint->consecutive_failures >= options_.breaker_failures) {
        endpoint->open_until = SteadyClock::now() + options_.breaker_cooldown;
      }
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
      }
      continue;
    }
    endpoint->consecutive_failures = 0;
    endpoint->probing = false;
    auto& response = *upstream.value();
    bool event_stream = response.header("content-type").rfind("text/event-stream", 0) == 0;

    if (!event_stream) {
      call.upstream = &response;
      auto body = co_await response.read_all(options_.idle_timeout);
      call.upstream = nullptr;
      if (call.client_gone) {
        finish(call, 499);
        co_return;
      }
      if (!body) {
        co_await writer.send(call_error(call.headers, 502, "the engine's answer broke off: " + body.error().message,
                                        "server_error", "upstream_error"));
        finish(call, 502);
        co_return;
      }
      http::Response relayed;
      relayed.status = response.status;
      relayed.headers = std::move(call.headers);  // the call answers with this response
      relayed.headers.push_back({"Content-Type", "application/json"});
      relayed.body = std::move(*body);
      if (response.status == 200) {
        if (kind != kResponses) {
          call.usage = usage_of(relayed.body, relayed.body.capacity());  // the answer itself is relayed as it came
        } else if (auto answer = parse_json(relayed.body); answer && answer->is_object()) {
          call.usage = answer->value("usage", json());
          json translated = chat_to_response(*answer, "resp_" + random_id(24), call.model,
                                             to_unix_ms(std::chrono::system_clock::now()) / 1000);
          store_response(call, translated);
          relayed.body = dump(translated);
        }
      }
      int status = relayed.status;
      co_await writer.send(std::move(relayed));
      finish(call, status);
      co_return;
    }

    // A stream: relay event by event as each arrives. From here on nothing is retried.
    if (!co_await writer.start_stream(response.status, stream_headers(call.headers))) {
      response.cancel();
      finish(call, 499);
      co_return;
    }
    std::optional<ResponsesStream> translation;
    if (kind == kResponses) {
      translation.emplace("resp_" + random_id(24), call.model, to_unix_ms(std::chrono::system_clock::now()) / 1000);
      if (!co_await writer.write(translation->begin())) {
        response.cancel();
        finish(call, 499);
        co_return;
      }
    }
    http::SseParser parser;
    std::vector<http::SseEvent> events;
    SteadyClock::time_point last_token{};
    bool client_gone = false;
    bool broken = false;
    while (!client_gone && !broken) {
      auto left_now = std::chrono::duration_cast<milliseconds>(call.deadline - SteadyClock::now());
      auto piece = co_await response.read(std::min(options_.idle_timeout, std::max(left_now, milliseconds(1))));
      if (!piece) {
        spdlog::warn("gateway: {} stream from {} broke: {}", call.request_id, endpoint->replica, piece.error().message);
        broken = true;
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
        if (translation || value_present(event.data, "usage")) {
          auto chunk = parse_json(event.data);
          if (chunk && chunk->is_object()) {
            auto usage = chunk->find("usage");
            if (usage != chunk->end() && usage->is_object()) call.usage = *usage;
            auto choices = chunk->find("choices");
            usage_only = usage != chunk->end() && usage->is_object() && choices != chunk->end() &&
                         choices->is_array() && choices->empty();
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
    if (client_gone || broken) {
      response.cancel();           // the engine stops generating at once
      if (broken) writer.abort();  // the client sees a cut stream, not a clean end
      int status = 502;
      if (client_gone) status = 499;
      finish(call, status);
      co_return;
    }
    co_await writer.finish();
    if (translation) store_response(call, translation->final_response());
    finish(call, response.status);
    co_return;
  }
  if (engine_error) {
    int status = engine_error->status;
    co_await writer.send(std::move(*engine_error));
    finish(call, status);
    co_return;
  }
  std::string message = fmt::format("no replica of `{}` could serve the request: {}", call.model, last_failure);
  if (last_failure.empty()) message = fmt::format("no replica of `{}` is ready", call.model);
  co_await writer.send(call_error(call.headers, 503, message, "server_error", "service_unavailable"));
  finish(call, 503);
}

}  // namespace nebula::gateway
