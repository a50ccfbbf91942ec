#pragma once
// What a stateless gateway (`nebula gateway --server URL`) knows of the cluster: a read-only
// copy of the server's deployments, replicas, API keys and usage, fed by a list and then a watch
// of /api/v1/gateway/state (the Kubernetes informer's shape), and listed afresh whenever the
// watch breaks. It is a store::Store, so the gateway runs on it unchanged: reads and watches are
// served from the copy; writes (usage, the keys' last use, a deployment's last request) go to the
// server, compare-and-swap included, and update the copy with what the server answered.
//
// The server's side (replica_routes.cpp): GET /api/v1/gateway/state lists the mirrored
// prefixes ({"revision", "kvs": [{"key", "value", "mod_revision", "create_revision",
// "version"}]}); ?watch=1&revision=N streams their changes from N as newline-delimited
// {"type": "PUT"|"DELETE", "key", "value", "revision"} (410 when N was compacted: list again);
// POST /api/v1/gateway/state {"op": "put"|"delete", "key", "value", "mod_revision"} writes one
// key (mod_revision: -1 no condition, 0 absent, N at revision N), answered {"revision"}, or 409
// with the current key-value. A write may carry an "id": the server answers a repeated id as it
// answered the first (its latest 100,000 ids), so a write whose answer was lost is sent again
// without being applied twice. Admin keys only, as all of /api/v1.
//
// Several servers of one cluster (on one etcd, so one revision history) may be named: the copy
// follows one of them and moves to the next when it stops answering (a refused connection, a
// timeout, a 5xx), listing afresh from it. A write unanswered by one is sent to the next with the
// same id; the ids a server remembers are its own, so what keeps such a write from counting twice
// there is its compare-and-swap (every write a gateway makes has one: usage, last use, activity).
//
// Threading: the watch runs on the io_context given, and watch callbacks run there, under the
// copy's lock (never call back into the store from one). Reads may come from any thread. Writes
// block on the server (a client of their own, locked), as a SQLite write blocks on the disk.
#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/asio.h"
#include "common/ids.h"
#include "common/json.h"
#include "http/http.h"
#include "store/store.h"

namespace nebula::gateway {

// The store prefixes a gateway needs, under api::kKeyRoot: deployments, replicas, apikeys, usage.
const std::vector<std::string>& mirrored_prefixes();
// May a gateway write this key (usage, a key's last use, a deployment's last request)?
bool gateway_may_write(std::string_view key);

class MirrorStore final : public store::Store {
 public:
  // servers: "http://host:port", one or more of one cluster; api_key: an admin key ("" when the
  // servers need none).
  MirrorStore(asio::io_context& io, std::vector<std::string> servers, std::string api_key);
  MirrorStore(asio::io_context& io, std::string server, std::string api_key)
      : MirrorStore(io, std::vector<std::string>{std::move(server)}, std::move(api_key)) {}
  ~MirrorStore() override;
  // Lists the server's state (blocking; an error when the server cannot be read), then follows
  // it on the io_context.
  Status start();
  void stop();
  // True while the watch is live (false between a broken watch and the next listing).
  bool following() const;
  uint64_t resyncs() const;
  // The server followed now, and how many times the copy moved to another server.
  std::string server() const;
  uint64_t failovers() const { return failovers_.load(); }

  Result<std::optional<store::KeyValue>> get(const std::string& key) override;
  Result<store::ListResult> list(const std::string& prefix) override;
  Result<int64_t> put(const std::string& key, const std::string& value,
                      store::Precondition precondition = store::Precondition::none(), int64_t lease = 0) override;
  Result<int64_t> remove(const std::string& key,
                         store::Precondition precondition = store::Precondition::none()) override;
  int64_t revision() override;
  // Its watches never end: a broken watch of the server is healed by a listing delivered as events.
  Result<std::unique_ptr<store::WatchHandle>> watch(const std::string& prefix, int64_t from_revision,
                                                    store::WatchCallback callback,
                                                    store::WatchEndCallback on_end = {}) override;
  Result<int64_t> grant_lease(int64_t ttl_ms) override;
  Status keep_alive(int64_t lease) override;
  Status revoke_lease(int64_t lease) override;
  int expire_leases() override { return 0; }

 private:
  struct Watcher {
    uint64_t id;
    std::string prefix;
    store::WatchCallback callback;
  };
  class Handle;
  awaitable<void> follow();
  // Replaces the copy with a listing: every difference becomes an event for the watchers.
  void resync(std::map<std::string, store::KeyValue> listed, int64_t revision);
  void apply(const store::WatchEvent& event);  // under mutex_
  void unwatch(uint64_t id);
  // One request to the servers: the current one, then each of the others while the answer is a
  // failure to connect or a 5xx (the last answer is returned).
  Result<http::Response> call(const std::string& method, const std::string& target, const std::string& body);
  // The index of the server followed now, and moving on from `failed` (unless another caller
  // already did).
  size_t current() const;
  void next_server(size_t failed);
  // A write to the server, with an id of its own; sent again (same id) when unanswered.
  Result<http::Response> write(json request);
  http::Headers auth_headers() const;

  asio::io_context& io_;
  std::vector<std::string> servers_;
  std::atomic<size_t> current_{0};  // index into servers_
  std::atomic<uint64_t> failovers_{0};
  std::string api_key_;
  mutable std::mutex mutex_;
  std::map<std::string, store::KeyValue> kvs_;
  int64_t revision_ = 0;
  std::deque<store::WatchEvent> history_;  // the latest events, for watches from a past revision
  std::vector<Watcher> watchers_;
  uint64_t next_watcher_ = 1;
  bool following_ = false;
  uint64_t resyncs_ = 0;
  std::mutex write_mutex_;
  std::string writer_id_ = "gw-" + random_id(16);
  uint64_t write_sequence_ = 0;  // guarded by write_mutex_
  std::unique_ptr<http::BlockingClient> writer_;
  std::unique_ptr<http::Client> client_;  // the watch's, on io_
  std::shared_ptr<bool> stopped_ = std::make_shared<bool>(false);
  std::unique_ptr<http::StreamingResponse>* streaming_ = nullptr;  // the watch being read; io_ only
};

}  // namespace nebula::gateway
