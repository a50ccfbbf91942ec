#pragma once
// Who may hold a node's name, and what a node may say about itself: the rules behind the join,
// node status, replica status and node removal routes (docs/security.md). Plain functions over
// the store and api types, so they are unit-tested without a server.
#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "api/api.h"
#include "api/keys.h"
#include "common/result.h"
#include "store/store.h"

namespace nebula::controlplane {

// A node is live while it is Ready and was heard from within node_timeout. A live node's name is
// held: only its own agent (presenting the node's key) may join with it. The node's heartbeat_ms
// must include its lease (with_lease below).
bool node_live(const api::Node& node, int64_t now_ms, std::chrono::milliseconds node_timeout);

// Liveness apart from status, as Kubernetes does with node Lease objects: each heartbeat renews a
// small key of its own, /nebula/nodeleases/NAME = {"renewed_ms": T} (wall ms), and the Node
// document is written only when what the node reports changes (its GPUs, engines, models...),
// so an idle cluster's heartbeats are tiny writes that wake no controller.
std::string node_lease_prefix();
std::string node_lease_key(const std::string& node);
std::string node_lease_value(int64_t renewed_ms);
// The renewal time in a lease value; nullopt when it is not one.
std::optional<int64_t> parse_node_lease(const std::string& value);
Status renew_node_lease(store::Store& store, const std::string& node, int64_t now_ms);
// When the node last renewed its lease; 0 without one (or on a store error).
int64_t node_lease_ms(store::Store& store, const std::string& node);
// Every node's lease renewal, by node name.
std::map<std::string, int64_t> node_leases(store::Store& store);
// A heartbeat rewrites the Node document only when the node was NotReady, when what it reports
// changed (its GPUs' identity, memory and use of memory; engines and their versions; the probe;
// cached models; the agent's URL), or when the document is older than kNodeStatusRefreshMs (GPU
// utilization, temperature and power change all the time and are refreshed at that pace).
inline constexpr int64_t kNodeStatusRefreshMs = 15'000;
bool needs_status_write(const api::NodeStatus& stored, const api::NodeStatus& reported, int64_t now_ms);
// The node as readers see it: status.heartbeat_ms is its last heartbeat, the later of the Node
// document's (written on a change) and its lease's.
void with_lease(api::Node& node, int64_t lease_ms);

// The node's current key (scope node, issued at its last join, not revoked or expired).
std::optional<api::ApiKey> current_node_key(store::Store& store, const std::string& node, int64_t now_ms);
// True when secret is the node's current key.
bool is_node_key(store::Store& store, const std::string& node, const std::string& secret, int64_t now_ms);
// Revokes every live key issued to the node; returns their ids. on_revoked, when set, is called
// with each id as soon as the store holds its revocation (before the next key is revoked, so a
// write failing midway still reports the keys it did revoke).
Result<std::vector<std::string>> revoke_node_keys(
    store::Store& store, const std::string& node,
    const std::function<void(const std::string& key_id)>& on_revoked = {});
// What the server presents to the node's agent when it calls it (engine logs): the hex SHA-256
// of the node's current key, which the agent computes from the key it holds. "" when the node
// has no key.
std::string agent_credential(store::Store& store, const std::string& node, int64_t now_ms);

// Bounds on what a GPU report may claim: no real GPU is near these.
inline constexpr size_t kMaxGpusPerNode = 64;
inline constexpr int64_t kMaxGpuMemoryMb = 1 << 20;  // 1 TiB
// InvalidArgument naming the first implausible field of a node's GPU report.
Status check_gpus(const std::vector<api::Gpu>& gpus);
// "" when the two reports name the same GPUs (index, uuid, model, memory); otherwise what changed,
// for the node's event.
std::string gpu_change(const std::vector<api::Gpu>& before, const std::vector<api::Gpu>& after);

// A replica's endpoint must be on the node that reports it: its host is the address the report
// came from (the request's peer), with the loopback names equivalent when the peer is loopback.
// PermissionDenied otherwise; an endpoint that is not an http URL is InvalidArgument.
Status check_endpoint(const std::string& endpoint, const std::string& peer);

// Environment variables that change how a process is loaded or which code it runs (the dynamic
// loader's LD_*, interpreters' module paths and start-up hooks, PATH). True for such a key.
bool loader_env_key(const std::string& key);
// Without API keys anyone who can reach the server could set them, so they need an admin key:
// PermissionDenied naming the key when keys are not required and env holds one.
Status check_engine_env(const std::map<std::string, std::string>& env, bool keys_required);

}  // namespace nebula::controlplane
