#pragma once
// Resource types of DESIGN.md §2 as plain structs, and their JSON form. JSON stays at the edges
// (HTTP, store documents); code inside works on these structs.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/result.h"

namespace nebula::api {

// Keys in the store: /nebula/<plural>/<name>.
inline constexpr const char* kKeyRoot = "/nebula/";
std::string store_key(const std::string& plural, const std::string& name);
std::string store_prefix(const std::string& plural);

struct Metadata {
  std::string name;
  std::string uid;
  int64_t created_ms = 0;  // Unix milliseconds
  int64_t revision = 0;    // the store's mod_revision; filled on read, ignored on write
  std::map<std::string, std::string> labels;
};

struct Gpu {
  int index = 0;
  std::string uuid;
  std::string name;
  int64_t memory_total_mb = 0;
  int64_t memory_used_mb = 0;
  double utilization = 0;  // percent
  double temperature_c = 0;
  double power_w = 0;
};

struct NodeSpec {
  bool drain = false;
  int64_t reserved_vram_mb = 0;  // kept free on every GPU of the node (other users of the cards)
};

struct NodeStatus {
  std::vector<Gpu> gpus;
  std::vector<std::string> engines;                    // engines this node can run
  std::map<std::string, std::string> engine_versions;  // engine -> version its binary reports
  std::string gpu_probe;                               // nvml | nvidia-smi | sim | none
  std::vector<std::string> models;  // in the node's cache: "org/name@rev" (whole) or "org/name@rev/FILE"
  std::string agent_url;            // the agent's own listener (logs, health)
  int64_t heartbeat_ms = 0;
  bool ready = false;
  std::string message;
};

// A Hugging Face model reference ("org/name", "hf://org/name@rev/file.gguf", "hf.co/org/name")
// as the key nodes report cached models by: "org/name@rev" for a repository, "org/name@rev/FILE"
// for one file of it (revision "main" by default); "" for anything else (local paths, catalog
// names, Ollama tags).
std::string hub_repo_key(const std::string& model);

struct Node {
  Metadata metadata;
  NodeSpec spec;
  NodeStatus status;
};

// Overrides of what the VRAM estimator reads from the model; 0 = from the model.
struct ModelShapeOverride {
  int64_t weights_mb = 0;
  int layers = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int64_t overhead_mb = 0;  // engine overhead per replica, summed over its GPUs
};

struct DeploymentSpec {
  std::string model;
  std::string engine = "sim";
  int replicas = 1;
  int gpus_per_replica = 1;
  int max_context = 0;  // 0 = the engine's default
  int max_seqs = 0;     // 0 = the engine's default
  int64_t vram_mb = 0;  // per replica, summed over its GPUs; 0 = estimate from the model
  std::vector<std::string> engine_args;
  std::map<std::string, std::string> env;
  int priority = 0;
  std::string dtype;                                 // weights: "" = the model's own (fp16, bf16, fp8, int8, int4)
  std::string kv_cache_dtype;                        // "" = 16-bit (fp16, bf16, fp8, fp32)
  double gpu_memory_utilization = 0;                 // fraction of each card the engine claims; 0 = engine default
  std::string placement = "spread";                  // spread | binpack
  std::map<std::string, std::string> node_selector;  // node labels that must all match
  std::string gpu_type;                              // "" = any; else GPUs whose name contains it (case-insensitive)
  ModelShapeOverride shape;
  // Scale-to-zero: after idle_timeout_ms without a request, replicas sleep (vLLM sleep level 1 or
  // 2) or stop; the next request wakes or starts them. 0 = never idle.
  int64_t idle_timeout_ms = 0;
  std::string on_idle = "sleep-l1";  // sleep-l1 | sleep-l2 | stop
  // Rolling updates, with Kubernetes' semantics: a count ("1") or a percentage of replicas
  // ("25%"; surge rounds up, unavailable rounds down). Surge: replicas of the new plan started
  // beyond `replicas`; unavailable: Ready replicas that may be missing meanwhile. Not both 0.
  std::string max_surge = "1";
  std::string max_unavailable = "0";
  // How the gateway chooses among the replicas (router::make_policy's spec, e.g. "session" or
  // "prefix+load,prefix=2,queue=1,kv=1"); "" = the default, prefix+load. Not part of a plan: changing it
  // restarts no engine.
  std::string routing;
};

// One plan of a deployment: what its engines run. The spec fields that change an engine (model,
// engine, args, env, context, sequences, GPUs, dtypes, VRAM, node selection) define it; any
// change to them, or a restart, starts a new plan, which the controller rolls replicas over to.
struct PlanRevision {
  int64_t version = 0;
  int64_t created_ms = 0;
  std::string cause;    // why it was made: "created", "spec changed", "restart", "undo to plan N"
  std::string outcome;  // "" current or rolling out | Complete | RolledBack | Superseded
  DeploymentSpec spec;  // the spec when the plan was made
};

// The rollout in progress or the last one, for `nebula rollout status`.
namespace rollout_state {
inline constexpr const char* kProgressing = "Progressing";
inline constexpr const char* kComplete = "Complete";
inline constexpr const char* kRolledBack = "RolledBack";
inline constexpr const char* kSuperseded = "Superseded";  // a plan outcome: replaced before it completed
}  // namespace rollout_state
struct RolloutStatus {
  std::string state;  // "" none yet | Progressing | Complete | RolledBack
  int64_t from_version = 0;
  int64_t to_version = 0;
  int64_t started_ms = 0;
  int64_t finished_ms = 0;
  std::string message;
};

struct DeploymentStatus {
  int ready_replicas = 0;
  int replicas = 0;   // replicas that exist (any phase)
  std::string phase;  // Pending | Progressing | Ready | Idle | Failed
  std::string message;
  int64_t last_request_ms = 0;    // written by the gateway, at most once a second
  int64_t idle_since_ms = 0;      // 0 = awake; else when its replicas were put to sleep or stopped
  int64_t wake_requested_ms = 0;  // a request arrived for an idle deployment, or `nebula wake`
  // `nebula sleep`: asleep until a later wake_requested_ms (a request or `nebula wake`), whatever
  // idle_timeout_ms says. Asleep on demand while sleep_requested_ms > wake_requested_ms.
  int64_t sleep_requested_ms = 0;
  bool evicted = false;  // idle, and stopped to make room for another: starts on wake
  // Plans (the controller's): replicas converge to plan_version, which is the newest plan unless
  // a failed rollout rolled back to an older one. 0 until the controller made the first plan.
  int64_t plan_version = 0;
  int64_t restart_requested_ms = 0;  // `nebula restart`: a new plan with the same spec
  RolloutStatus rollout;
  std::vector<PlanRevision> plans;  // oldest first, the last kMaxPlans
};
inline constexpr size_t kMaxPlans = 10;

struct Deployment {
  Metadata metadata;
  DeploymentSpec spec;
  DeploymentStatus status;
};

// Replica phases (DESIGN.md §2).
namespace phase {
inline constexpr const char* kPending = "Pending";
inline constexpr const char* kScheduled = "Scheduled";
inline constexpr const char* kStarting = "Starting";
inline constexpr const char* kReady = "Ready";
// Ready, but its liveness probe fails: out of routing; the agent restarts it past a threshold.
inline constexpr const char* kUnhealthy = "Unhealthy";
inline constexpr const char* kStopping = "Stopping";
inline constexpr const char* kFailed = "Failed";
inline constexpr const char* kUnknown = "Unknown";  // its node stopped reporting
inline constexpr const char* kSleeping = "Sleeping";
inline constexpr const char* kDownloading = "Downloading";  // the agent fetches the model files
}  // namespace phase

struct ReplicaSpec {
  std::string deployment;
  std::string model;
  std::string engine;
  std::string node;          // "" until scheduled
  std::vector<int> gpus;     // GPU indices on the node
  int64_t vram_mb = 0;       // reserved across its GPUs
  int64_t plan_version = 0;  // the deployment's plan it runs (DeploymentStatus::plan_version)
  bool stop = false;         // desired: stopped and removed (scale down, deployment deleted)
  // Desired: out of routing since then (its plan was superseded); the controller sets `stop`
  // once the gateway has no request in flight to it, or after the drain timeout. 0 = serving.
  int64_t draining_since_ms = 0;
  int sleep_level = 0;  // desired: 0 awake, 1 or 2 asleep (vLLM sleep levels)
  int max_context = 0;
  int max_seqs = 0;
  std::vector<std::string> engine_args;
  std::map<std::string, std::string> env;
};

struct ReplicaStatus {
  std::string phase = phase::kPending;
  std::string endpoint;  // "http://127.0.0.1:PORT" once started
  int port = 0;
  int pid = 0;
  int restarts = 0;
  std::string last_error;
  int64_t next_restart_ms = 0;  // wall time of the next restart after a crash (backoff), 0 = none
  std::string message;
  int64_t plan_version = 0;  // the plan the agent runs
  int64_t updated_ms = 0;
};

struct Replica {
  Metadata metadata;
  ReplicaSpec spec;
  ReplicaStatus status;
};

struct Event {
  Metadata metadata;
  int64_t time_ms = 0;
  std::string object;           // "deployment/chat", "replica/chat-abc12", "node/n1"
  std::string type = "Normal";  // Normal | Warning
  std::string reason;
  std::string message;
};

// JSON round-trip. from_json functions give InvalidArgument naming the bad field.
json to_json(const Metadata& value);
json to_json(const Gpu& value);
json to_json(const Node& value);
json to_json(const Deployment& value);
json to_json(const DeploymentSpec& value);
json to_json(const Replica& value);
json to_json(const ReplicaStatus& value);
json to_json(const NodeStatus& value);
json to_json(const Event& value);
json to_json(const PlanRevision& value);
json to_json(const RolloutStatus& value);

// A replica as the store keeps it: every field that holds its default (0, "", false, an empty
// list or map, phase Pending) is left out, and so are `kind` (the key says it) and
// metadata.revision (the store's own). replica_from_json reads it back to the same Replica; the
// HTTP API never hands it out as it is (its routes answer to_json). About half the bytes of
// to_json for a placed replica: every byte of a placement crosses etcd's JSON gateway as base64
// several times (the write, the watch, a listing).
json to_stored_json(const Replica& value);

Result<Node> node_from_json(const json& value);
Result<NodeStatus> node_status_from_json(const json& value);
Result<Deployment> deployment_from_json(const json& value);
Result<DeploymentSpec> deployment_spec_from_json(const json& value);
Result<Replica> replica_from_json(const json& value);
Result<ReplicaStatus> replica_status_from_json(const json& value);
Result<Event> event_from_json(const json& value);

// Names: lowercase letters, digits and '-', 1 to 63 characters, starting with a letter or digit.
Status validate_name(const std::string& name);
// Checks the spec a user gave (engine known, counts in range).
Status validate(const DeploymentSpec& spec);
// max_surge / max_unavailable as a replica count for `replicas` replicas: "N" or "P%" (rounded
// up when round_up, else down). InvalidArgument naming `field` when malformed.
Result<int> rollout_count(const std::string& value, int replicas, bool round_up, const char* field);
// True when the two specs run the same engines (the fields that define a plan are equal).
bool same_plan(const DeploymentSpec& a, const DeploymentSpec& b);
// True while `nebula sleep` holds the deployment asleep: asked after the last wake (a request or
// `nebula wake`).
bool sleep_requested(const DeploymentStatus& status);
// Where a deployment stands for sleep and wake: "awake", "sleep-requested" (the controller has not
// acted yet), "asleep", "stopped" (on_idle: stop, or evicted while idle) or "wake-requested".
std::string sleep_state(const Deployment& deployment);

// The engines Nebula knows how to run.
const std::vector<std::string>& known_engines();

}  // namespace nebula::api
