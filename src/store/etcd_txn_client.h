#pragma once
// EtcdTxnClient: etcd's own gRPC API (KV.Txn) for the store's heaviest call, a controller pass's
// placements (EtcdStore::put_batches: thousands of compare-and-swap puts in transactions of 128).
// Through the JSON gateway each transaction is decoded from JSON and re-encoded for etcd's gRPC
// server inside etcd; measured on a one-member etcd 3.4, 79 transactions of 128 puts and their
// compares cost etcd 0.48-0.51 s of CPU through the gateway and 0.22-0.25 s over gRPC
// (docs/benchmarks.md). Everything else stays on the JSON gateway (EtcdStore).
//
// gRPC types stay in etcd_txn_client.cpp (and its generated code): this header includes none.
// Thread-safe; a run blocks its caller and uses threads of its own for the transactions in flight.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "store/store.h"

namespace nebula::store {

struct EtcdTxnOptions {
  // TLS (for https:// endpoints): the CA of the members' certificates (empty: the system's) and
  // a client certificate and key when the cluster asks for one.
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // One transaction, sent to its answer.
  std::chrono::milliseconds timeout{10'000};
  // How long a run waits for a connection to the member before giving up (nothing sent).
  std::chrono::milliseconds connect_timeout{2'000};
};

// The store's revision N as etcd numbers it: etcd's first revision is 1 for an empty cluster,
// the store's 0 (etcd_store.h), so etcd's is the store's plus one.
inline int64_t etcd_revision(int64_t store_revision) {
  return store_revision + 1;
}

// A transaction's answer: whether its compares held, and etcd's revision after it.
struct EtcdTxnAnswer {
  bool succeeded = false;
  int64_t revision = 0;  // etcd's own (the store's plus one)
};

class EtcdTxnClient {
 public:
  // Reads the PEM files named in options; an error naming the file that cannot be read.
  static Result<std::unique_ptr<EtcdTxnClient>> make(EtcdTxnOptions options);
  ~EtcdTxnClient();
  EtcdTxnClient(const EtcdTxnClient&) = delete;
  EtcdTxnClient& operator=(const EtcdTxnClient&) = delete;

  // Sends each batch as one transaction (a compare per precondition, a put per key; nothing on
  // failure) to the member at `endpoint` ("http://HOST:PORT" or "https://..."), up to
  // `in_flight` at once, with etcd's auth token when not empty. Unavailable, with nothing sent,
  // when no connection to the member can be made within connect_timeout, and then for a minute
  // without trying. Otherwise one answer
  // per batch: Unauthenticated when etcd refused the token (not applied), InvalidArgument or
  // PermissionDenied when etcd refused the request (not applied), Unavailable when the answer
  // was lost (the outcome unknown, as for the JSON gateway).
  Result<std::vector<Result<EtcdTxnAnswer>>> run(const std::string& endpoint, const std::string& token,
                                                 const std::vector<const std::vector<Put>*>& batches, size_t in_flight);

 private:
  struct Channels;
  explicit EtcdTxnClient(EtcdTxnOptions options, std::unique_ptr<Channels> channels);

  EtcdTxnOptions options_;
  std::unique_ptr<Channels> channels_;
};

}  // namespace nebula::store
