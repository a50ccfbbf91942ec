#pragma once
// EtcdStore: the Store on an etcd v3 cluster, through etcd's JSON gateway (POST /v3/kv/...,
// /v3/watch, /v3/lease/...), but for put_batches, which speaks etcd's gRPC API (see there).
// Several `nebula server` processes share one cluster this way.
//
// Revisions: etcd's first revision is 1 for an empty cluster; the store's revision is etcd's
// minus one, so an empty cluster is at revision 0 as the Store contract says.
// Threading: thread-safe. Requests run on one private I/O thread; the calling thread waits for
// them. Watch callbacks run on that thread too, so a callback that called back into the store
// would wait on itself: such a call fails with Internal instead.
// Endpoints: requests go to the current endpoint; when it cannot be reached the next one is
// tried. A watch whose stream breaks resumes on the next endpoint from the revision after the
// last one it delivered; when etcd compacted that revision meanwhile the watch ends with
// Compacted (WatchEndCallback).
// Reads and unconditional puts are retried on the next endpoint until request_timeout (a put
// applied twice changes nothing but the revision). Compare-and-swap writes, deletes and lease
// grants are retried only when the request could not be sent (connection refused): one whose
// answer was lost fails with Unavailable, its outcome unknown, since a blind retry could answer
// Conflict or NotFound for a write that took effect.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "store/store.h"

namespace nebula::store {

struct EtcdOptions {
  std::vector<std::string> endpoints;  // "http://127.0.0.1:2379" or "https://...", at least one
  // TLS: the CA that signed the members' certificates, and a client certificate and key when the
  // cluster requires one (--client-cert-auth).
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // etcd authentication: the user's token is fetched at first use and again when etcd says it
  // is no longer valid (expired, or a member that never issued it).
  std::string user;
  std::string password;
  // One request, all endpoints tried included.
  std::chrono::milliseconds request_timeout{10'000};
  // A watch stream silent this long has its member asked for its status (a cheap request); a
  // member that fails to answer twice in a row, watch_probe apart, is left for the next one.
  // This finds a member that hangs (paused, partitioned) without closing the connection.
  std::chrono::milliseconds watch_probe{5'000};
  // put_batches: the most transactions in flight at once (1: one after another).
  size_t batches_in_flight = kBatchesInFlight;
  // put_batches over etcd's own gRPC API (etcd_txn_client.h), which costs etcd about half the
  // CPU of the JSON gateway per transaction; false: through the JSON gateway like every other
  // call. Either way a batch that gRPC could not send goes through the JSON gateway.
  bool grpc_batches = true;
};

// Parses "etcd://h1:2379,h2:2379[?options]" (options: tls=1, ca=PATH, cert=PATH, key=PATH,
// user=NAME, password=SECRET, timeout_ms=N, grpc=0). InvalidArgument with a clear message otherwise.
Result<EtcdOptions> parse_etcd_url(const std::string& url);

class EtcdStore final : public Store {
 public:
  // Connects to the first endpoint that answers (and authenticates); Unavailable when none does.
  static Result<std::unique_ptr<EtcdStore>> open(EtcdOptions options);
  ~EtcdStore() override;
  EtcdStore(const EtcdStore&) = delete;
  EtcdStore& operator=(const EtcdStore&) = delete;

  Result<std::optional<KeyValue>> get(const std::string& key) override;
  Result<ListResult> list(const std::string& prefix) override;
  Result<int64_t> put(const std::string& key, const std::string& value,
                      Precondition precondition = Precondition::none(), int64_t lease = 0) override;
  Result<int64_t> remove(const std::string& key, Precondition precondition = Precondition::none()) override;
  // One etcd transaction: a compare per precondition, a put per key, at one revision. Not retried
  // once sent (as a compare-and-swap put).
  Result<std::vector<int64_t>> put_all(const std::vector<Put>& puts) override;
  // Up to options.batches_in_flight transactions at once, each as put_all sends it: over gRPC
  // (options.grpc_batches) to the current endpoint, else (or when gRPC cannot connect to it, or
  // etcd refused the token there) through the JSON gateway, each on its own connection.
  std::vector<Result<std::vector<int64_t>>> put_batches(const std::vector<std::vector<Put>>& batches) override;
  // The cluster's revision now (a request); the last one seen when no member answers.
  int64_t revision() override;
  Result<std::unique_ptr<WatchHandle>> watch(const std::string& prefix, int64_t from_revision, WatchCallback callback,
                                             WatchEndCallback on_end = {}) override;
  // Without etcd's prev_kv: each value crosses the wire and is encoded once, not twice.
  Result<std::unique_ptr<WatchHandle>> watch_values(const std::string& prefix, int64_t from_revision,
                                                    WatchCallback callback, WatchEndCallback on_end = {}) override;
  // ttl is rounded up to whole seconds (etcd's unit; etcd may raise it to its minimum).
  Result<int64_t> grant_lease(int64_t ttl_ms) override;
  Status keep_alive(int64_t lease) override;
  Status revoke_lease(int64_t lease) override;
  int expire_leases() override { return 0; }

  // Drops the history before `revision` (etcd's compaction): watches from older revisions fail
  // with Compacted, and live watches that still had them to deliver end with Compacted.
  Status compact(int64_t revision);
  // The endpoint requests go to now.
  std::string current_endpoint() const;
  // put_batches' transactions that etcd answered over gRPC (the others went through the gateway).
  uint64_t txns_over_grpc() const;

  struct Impl;

 private:
  explicit EtcdStore(std::shared_ptr<Impl> impl);
  Result<std::unique_ptr<WatchHandle>> open_watch(const std::string& prefix, int64_t from_revision,
                                                  WatchCallback callback, WatchEndCallback on_end, bool with_prev);
  std::shared_ptr<Impl> impl_;
};

}  // namespace nebula::store
