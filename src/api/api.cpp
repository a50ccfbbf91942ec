#include "api/api.h"

#include "api/read.h"

#include <fmt/format.h>

#include <algorithm>
#include <tuple>

namespace nebula::api {

std::string store_key(const std::string& plural, const std::string& name) {
  return std::string(kKeyRoot) + plural + "/" + name;
}
std::string store_prefix(const std::string& plural) {
  return std::string(kKeyRoot) + plural + "/";
}

namespace {
using namespace detail;

Gpu gpu_from(const json& value) {
  require_object(value, "a GPU");
  Gpu gpu;
  read(value, "index", gpu.index);
  read(value, "uuid", gpu.uuid);
  read(value, "name", gpu.name);
  read(value, "memory_total_mb", gpu.memory_total_mb);
  read(value, "memory_used_mb", gpu.memory_used_mb);
  read(value, "utilization", gpu.utilization);
  read(value, "temperature_c", gpu.temperature_c);
  read(value, "power_w", gpu.power_w);
  return gpu;
}

NodeStatus node_status_from(const json& object) {
  NodeStatus status;
  if (auto it = object.find("gpus"); it != object.end() && !it->is_null()) {
    if (!it->is_array()) throw FieldError("field 'gpus' must be an array");
    for (const auto& gpu : *it) status.gpus.push_back(gpu_from(gpu));
  }
  read(object, "engines", status.engines);
  read(object, "engine_versions", status.engine_versions);
  read(object, "gpu_probe", status.gpu_probe);
  read(object, "models", status.models);
  read(object, "agent_url", status.agent_url);
  read(object, "heartbeat_ms", status.heartbeat_ms);
  read(object, "ready", status.ready);
  read(object, "message", status.message);
  return status;
}

DeploymentSpec deployment_spec_from(const json& object) {
  DeploymentSpec spec;
  read(object, "model", spec.model);
  read(object, "engine", spec.engine);
  read(object, "replicas", spec.replicas);
  read(object, "gpus_per_replica", spec.gpus_per_replica);
  read(object, "max_context", spec.max_context);
  read(object, "max_seqs", spec.max_seqs);
  read(object, "vram_mb", spec.vram_mb);
  read(object, "engine_args", spec.engine_args);
  read(object, "env", spec.env);
  read(object, "priority", spec.priority);
  read(object, "dtype", spec.dtype);
  read(object, "kv_cache_dtype", spec.kv_cache_dtype);
  read(object, "gpu_memory_utilization", spec.gpu_memory_utilization);
  read(object, "idle_timeout_ms", spec.idle_timeout_ms);
  read(object, "on_idle", spec.on_idle);
  read(object, "placement", spec.placement);
  read(object, "node_selector", spec.node_selector);
  read(object, "gpu_type", spec.gpu_type);
  const json& shape = object_field(object, "shape");
  read(shape, "weights_mb", spec.shape.weights_mb);
  read(shape, "layers", spec.shape.layers);
  read(shape, "kv_heads", spec.shape.kv_heads);
  read(shape, "head_dim", spec.shape.head_dim);
  read(shape, "overhead_mb", spec.shape.overhead_mb);
  read(object, "max_surge", spec.max_surge);
  read(object, "max_unavailable", spec.max_unavailable);
  read(object, "routing", spec.routing);
  return spec;
}

RolloutStatus rollout_status_from(const json& object) {
  RolloutStatus rollout;
  read(object, "state", rollout.state);
  read(object, "from_version", rollout.from_version);
  read(object, "to_version", rollout.to_version);
  read(object, "started_ms", rollout.started_ms);
  read(object, "finished_ms", rollout.finished_ms);
  read(object, "message", rollout.message);
  return rollout;
}

PlanRevision plan_revision_from(const json& object) {
  require_object(object, "a plan");
  PlanRevision plan;
  read(object, "version", plan.version);
  read(object, "created_ms", plan.created_ms);
  read(object, "cause", plan.cause);
  read(object, "outcome", plan.outcome);
  plan.spec = deployment_spec_from(object_field(object, "spec"));
  return plan;
}

ReplicaStatus replica_status_from(const json& object) {
  ReplicaStatus status;
  read(object, "phase", status.phase);
  read(object, "endpoint", status.endpoint);
  read(object, "port", status.port);
  read(object, "pid", status.pid);
  read(object, "restarts", status.restarts);
  read(object, "last_error", status.last_error);
  read(object, "next_restart_ms", status.next_restart_ms);
  read(object, "message", status.message);
  read(object, "plan_version", status.plan_version);
  read(object, "updated_ms", status.updated_ms);
  return status;
}

}  // namespace

json to_json(const Metadata& value) {
  json object = {{"name", value.name}, {"uid", value.uid}, {"created_ms", value.created_ms}};
  if (value.revision) object["revision"] = value.revision;
  if (!value.labels.empty()) object["labels"] = value.labels;
  return object;
}

json to_json(const Gpu& value) {
  return {{"index", value.index},
          {"uuid", value.uuid},
          {"name", value.name},
          {"memory_total_mb", value.memory_total_mb},
          {"memory_used_mb", value.memory_used_mb},
          {"utilization", value.utilization},
          {"temperature_c", value.temperature_c},
          {"power_w", value.power_w}};
}

json to_json(const NodeStatus& value) {
  json gpus = json::array();
  for (const auto& gpu : value.gpus) gpus.push_back(to_json(gpu));
  return {{"gpus", gpus},
          {"engines", value.engines},
          {"engine_versions", value.engine_versions},
          {"gpu_probe", value.gpu_probe},
          {"models", value.models},
          {"agent_url", value.agent_url},
          {"heartbeat_ms", value.heartbeat_ms},
          {"ready", value.ready},
          {"message", value.message}};
}

json to_json(const Node& value) {
  return {{"kind", "Node"},
          {"metadata", to_json(value.metadata)},
          {"spec", {{"drain", value.spec.drain}, {"reserved_vram_mb", value.spec.reserved_vram_mb}}},
          {"status", to_json(value.status)}};
}

json to_json(const DeploymentSpec& spec) {
  json object = {{"model", spec.model},
                 {"engine", spec.engine},
                 {"replicas", spec.replicas},
                 {"gpus_per_replica", spec.gpus_per_replica},
                 {"max_context", spec.max_context},
                 {"max_seqs", spec.max_seqs},
                 {"vram_mb", spec.vram_mb},
                 {"engine_args", spec.engine_args},
                 {"env", spec.env},
                 {"priority", spec.priority}};
  // Fields added for placement are written only when set, so older documents read the same.
  if (!spec.dtype.empty()) object["dtype"] = spec.dtype;
  if (!spec.kv_cache_dtype.empty()) object["kv_cache_dtype"] = spec.kv_cache_dtype;
  if (spec.gpu_memory_utilization > 0) object["gpu_memory_utilization"] = spec.gpu_memory_utilization;
  if (spec.placement != "spread") object["placement"] = spec.placement;
  if (!spec.node_selector.empty()) object["node_selector"] = spec.node_selector;
  if (!spec.gpu_type.empty()) object["gpu_type"] = spec.gpu_type;
  if (spec.idle_timeout_ms > 0) object["idle_timeout_ms"] = spec.idle_timeout_ms;
  // on_idle also says how an on-demand sleep (POST .../sleep) acts, timeout or not.
  if (spec.idle_timeout_ms > 0 || spec.on_idle != "sleep-l1") object["on_idle"] = spec.on_idle;
  const auto& shape = spec.shape;
  if (shape.weights_mb || shape.layers || shape.kv_heads || shape.head_dim || shape.overhead_mb) {
    object["shape"] = {{"weights_mb", shape.weights_mb},
                       {"layers", shape.layers},
                       {"kv_heads", shape.kv_heads},
                       {"head_dim", shape.head_dim},
                       {"overhead_mb", shape.overhead_mb}};
  }
  if (spec.max_surge != "1") object["max_surge"] = spec.max_surge;
  if (spec.max_unavailable != "0") object["max_unavailable"] = spec.max_unavailable;
  if (!spec.routing.empty()) object["routing"] = spec.routing;
  return object;
}

json to_json(const PlanRevision& value) {
  return {{"version", value.version},
          {"created_ms", value.created_ms},
          {"cause", value.cause},
          {"outcome", value.outcome},
          {"spec", to_json(value.spec)}};
}

json to_json(const RolloutStatus& value) {
  return {{"state", value.state},           {"from_version", value.from_version}, {"to_version", value.to_version},
          {"started_ms", value.started_ms}, {"finished_ms", value.finished_ms},   {"message", value.message}};
}

namespace {
json plans_json(const std::vector<PlanRevision>& plans) {
  json array = json::array();
  for (const auto& plan : plans) array.push_back(to_json(plan));
  return array;
}
}  // namespace

json to_json(const Deployment& value) {
  return {{"kind", "Deployment"},
          {"metadata", to_json(value.metadata)},
          {"spec", to_json(value.spec)},
          {"status",
           {{"ready_replicas", value.status.ready_replicas},
            {"replicas", value.status.replicas},
            {"phase", value.status.phase},
            {"message", value.status.message},
            {"last_request_ms", value.status.last_request_ms},
            {"idle_since_ms", value.status.idle_since_ms},
            {"wake_requested_ms", value.status.wake_requested_ms},
            {"sleep_requested_ms", value.status.sleep_requested_ms},
            {"evicted", value.status.evicted},
            {"plan_version", value.status.plan_version},
            {"restart_requested_ms", value.status.restart_requested_ms},
            {"rollout", to_json(value.status.rollout)},
            {"plans", plans_json(value.status.plans)}}}};
}

json to_json(const ReplicaStatus& value) {
  return {{"phase", value.phase},
          {"endpoint", value.endpoint},
          {"port", value.port},
          {"pid", value.pid},
          {"restarts", value.restarts},
          {"last_error", value.last_error},
          {"message", value.message},
          {"plan_version", value.plan_version},
          {"updated_ms", value.updated_ms},
          {"next_restart_ms", value.next_restart_ms}};
}

json to_json(const Replica& value) {
  const auto& spec = value.spec;
  return {{"kind", "Replica"},
          {"metadata", to_json(value.metadata)},
          {"spec",
           {{"deployment", spec.deployment},
            {"model", spec.model},
            {"engine", spec.engine},
            {"node", spec.node},
            {"gpus", spec.gpus},
            {"vram_mb", spec.vram_mb},
            {"plan_version", spec.plan_version},
            {"stop", spec.stop},
            {"draining_since_ms", spec.draining_since_ms},
            {"sleep_level", spec.sleep_level},
            {"max_context", spec.max_context},
            {"max_seqs", spec.max_seqs},
            {"engine_args", spec.engine_args},
            {"env", spec.env}}},
          {"status", to_json(value.status)}};
}

json to_stored_json(const Replica& value) {
  // Each field once, and only when it differs from what replica_from_json leaves in a field
  // that is missing (the defaults of the structs).
  const Replica defaults;
  json metadata = json::object();
  if (!value.metadata.name.empty()) metadata["name"] = value.metadata.name;
  if (!value.metadata.uid.empty()) metadata["uid"] = value.metadata.uid;
  if (value.metadata.created_ms != 0) metadata["created_ms"] = value.metadata.created_ms;
  if (!value.metadata.labels.empty()) metadata["labels"] = value.metadata.labels;

  const auto& spec = value.spec;
  json spec_json = json::object();
  if (!spec.deployment.empty()) spec_json["deployment"] = spec.deployment;
  if (!spec.model.empty()) spec_json["model"] = spec.model;
  if (!spec.engine.empty()) spec_json["engine"] = spec.engine;
  if (!spec.node.empty()) spec_json["node"] = spec.node;
  if (!spec.gpus.empty()) spec_json["gpus"] = spec.gpus;
  if (spec.vram_mb != 0) spec_json["vram_mb"] = spec.vram_mb;
  if (spec.plan_version != 0) spec_json["plan_version"] = spec.plan_version;
  if (spec.stop) spec_json["stop"] = true;
  if (spec.draining_since_ms != 0) spec_json["draining_since_ms"] = spec.draining_since_ms;
  if (spec.sleep_level != 0) spec_json["sleep_level"] = spec.sleep_level;
  if (spec.max_context != 0) spec_json["max_context"] = spec.max_context;
  if (spec.max_seqs != 0) spec_json["max_seqs"] = spec.max_seqs;
  if (!spec.engine_args.empty()) spec_json["engine_args"] = spec.engine_args;
  if (!spec.env.empty()) spec_json["env"] = spec.env;

  const auto& status = value.status;
  json status_json = json::object();
  if (status.phase != defaults.status.phase) status_json["phase"] = status.phase;
  if (!status.endpoint.empty()) status_json["endpoint"] = status.endpoint;
  if (status.port != 0) status_json["port"] = status.port;
  if (status.pid != 0) status_json["pid"] = status.pid;
  if (status.restarts != 0) status_json["restarts"] = status.restarts;
  if (!status.last_error.empty()) status_json["last_error"] = status.last_error;
  if (!status.message.empty()) status_json["message"] = status.message;
  if (status.plan_version != 0) status_json["plan_version"] = status.plan_version;
  if (status.updated_ms != 0) status_json["updated_ms"] = status.updated_ms;
  if (status.next_restart_ms != 0) status_json["next_restart_ms"] = status.next_restart_ms;

  json object = json::object();
  object["metadata"] = std::move(metadata);
  if (!spec_json.empty()) object["spec"] = std::move(spec_json);
  if (!status_json.empty()) object["status"] = std::move(status_json);
  return object;
}

json to_json(const Event& value) {
  return {{"kind", "Event"},          {"metadata", to_json(value.metadata)},
          {"time_ms", value.time_ms}, {"object", value.object},
          {"type", value.type},       {"reason", value.reason},
          {"message", value.message}};
}

Result<Node> node_from_json(const json& value) {
  return guarded([&] {
    require_object(value, "a Node");
    Node node;
    node.metadata = metadata_from(value);
    read(object_field(value, "spec"), "drain", node.spec.drain);
    read(object_field(value, "spec"), "reserved_vram_mb", node.spec.reserved_vram_mb);
    node.status = node_status_from(object_field(value, "status"));
    return node;
  });
}

Result<NodeStatus> node_status_from_json(const json& value) {
  return guarded([&] {
    require_object(value, "a node status");
    return node_status_from(value);
  });
}

Result<DeploymentSpec> deployment_spec_from_json(const json& value) {
  return guarded([&] {
    require_object(value, "a deployment spec");
    return deployment_spec_from(value);
  });
}

Result<Deployment> deployment_from_json(const json& value) {
  return guarded([&] {
    require_object(value, "a Deployment");
    Deployment deployment;
    deployment.metadata = metadata_from(value);
    deployment.spec = deployment_spec_from(object_field(value, "spec"));
    const json& status = object_field(value, "status");
    read(status, "ready_replicas", deployment.status.ready_replicas);
    read(status, "replicas", deployment.status.replicas);
    read(status, "phase", deployment.status.phase);
    read(status, "message", deployment.status.message);
    read(status, "last_request_ms", deployment.status.last_request_ms);
    read(status, "idle_since_ms", deployment.status.idle_since_ms);
    read(status, "wake_requested_ms", deployment.status.wake_requested_ms);
    read(status, "sleep_requested_ms", deployment.status.sleep_requested_ms);
    read(status, "evicted", deployment.status.evicted);
    read(status, "plan_version", deployment.status.plan_version);
    read(status, "restart_requested_ms", deployment.status.restart_requested_ms);
    deployment.status.rollout = rollout_status_from(object_field(status, "rollout"));
    if (auto plans = status.find("plans"); plans != status.end() && !plans->is_null()) {
      if (!plans->is_array()) throw FieldError("field 'plans' must be an array");
      for (const auto& plan : *plans) deployment.status.plans.push_back(plan_revision_from(plan));
    }
    return deployment;
  });
}

Result<Replica> replica_from_json(const json& value) {
  return guarded([&] {
    require_object(value, "a Replica");
    Replica replica;
    replica.metadata = metadata_from(value);
    const json& spec = object_field(value, "spec");
    read(spec, "deployment", replica.spec.deployment);
    read(spec, "model", replica.spec.model);
    read(spec, "engine", replica.spec.engine);
    read(spec, "node", replica.spec.node);
    read(spec, "gpus", replica.spec.gpus);
    read(spec, "vram_mb", replica.spec.vram_mb);
    read(spec, "plan_version", replica.spec.plan_version);
    read(spec, "stop", replica.spec.stop);
    read(spec, "draining_since_ms", replica.spec.draining_since_ms);
    read(spec, "max_context", replica.spec.max_context);
    read(spec, "max_seqs", replica.spec.max_seqs);
    read(spec, "engine_args", replica.spec.engine_args);
    read(spec, "env", replica.spec.env);
    read(spec, "sleep_level", replica.spec.sleep_level);
    replica.status = replica_status_from(object_field(value, "status"));
    return replica;
  });
}

Result<ReplicaStatus> replica_status_from_json(const json& value) {
  return guarded([&] {
    require_object(value, "a replica status");
    return replica_status_from(value);
  });
}

Result<Event> event_from_json(const json& value) {
  return guarded([&] {
    require_object(value, "an Event");
    Event event;
    event.metadata = metadata_from(value);
    read(value, "time_ms", event.time_ms);
    read(value, "object", event.object);
    read(value, "type", event.type);
    read(value, "reason", event.reason);
    read(value, "message", event.message);
    return event;
  });
}

Status validate_name(const std::string& name) {
  bool valid = !name.empty() && name.size() <= 63 && name.front() != '-';
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) valid = false;
  }
  if (!valid) {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("invalid name '{}': use 1-63 lowercase letters, digits and '-'", name));
  }
  return {};
}

const std::vector<std::string>& known_engines() {
  static const std::vector<std::string> engines = {"sim", "vllm",   "sglang", "llamacpp",
                                                   "tgi", "ollama", "docker", "command"};
  return engines;
}

Status validate(const DeploymentSpec& spec) {
  if (spec.model.empty()) return make_error(ErrorCode::InvalidArgument, "spec.model is required");
  const auto& engines = known_engines();
  if (std::find(engines.begin(), engines.end(), spec.engine) == engines.end()) {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("unknown engine '{}' (one of: {})", spec.engine, fmt::join(engines, ", ")));
  }
  if (spec.replicas < 0 || spec.replicas > 1000) {
    return make_error(ErrorCode::InvalidArgument, "spec.replicas must be between 0 and 1000");
  }
  if (spec.gpus_per_replica < 0 || spec.gpus_per_replica > 64) {
    return make_error(ErrorCode::InvalidArgument, "spec.gpus_per_replica must be between 0 and 64");
  }
  if (spec.max_context < 0 || spec.max_seqs < 0 || spec.vram_mb < 0) {
    return make_error(ErrorCode::InvalidArgument, "max_context, max_seqs and vram_mb cannot be negative");
  }
  const auto& shape = spec.shape;
  if (shape.weights_mb < 0 || shape.layers < 0 || shape.kv_heads < 0 || shape.head_dim < 0 || shape.overhead_mb < 0) {
    return make_error(ErrorCode::InvalidArgument, "spec.shape values cannot be negative");
  }
  if (spec.idle_timeout_ms < 0)
    return make_error(ErrorCode::InvalidArgument, "spec.idle_timeout_ms cannot be negative");
  if (spec.on_idle != "sleep-l1" && spec.on_idle != "sleep-l2" && spec.on_idle != "stop") {
    return make_error(ErrorCode::InvalidArgument, "spec.on_idle must be sleep-l1, sleep-l2 or stop");
  }
  if (!(spec.gpu_memory_utilization >= 0 && spec.gpu_memory_utilization <= 1)) {
    return make_error(ErrorCode::InvalidArgument, "spec.gpu_memory_utilization must be between 0 and 1");
  }
  if (spec.placement != "spread" && spec.placement != "binpack") {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("unknown placement '{}' (spread or binpack)", spec.placement));
  }
  static const std::vector<std::string> kDtypes = {"",         "auto",     "fp32", "float32",  "fp16",
                                                   "float16",  "half",     "bf16", "bfloat16", "fp8",
                                                   "fp8_e4m3", "fp8_e5m2", "int8", "int4"};
  for (const auto* field : {&spec.dtype, &spec.kv_cache_dtype}) {
    if (std::find(kDtypes.begin(), kDtypes.end(), *field) == kDtypes.end()) {
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("unknown dtype '{}' (fp32, fp16, bf16, fp8, int8 or int4)", *field));
    }
  }
  if (spec.kv_cache_dtype == "int4") {
    return make_error(ErrorCode::InvalidArgument, "kv_cache_dtype int4 is not supported (fp16, bf16, fp8, fp32)");
  }
  auto surge = rollout_count(spec.max_surge, 100, true, "spec.max_surge");
  if (!surge) return surge.error();
  auto unavailable = rollout_count(spec.max_unavailable, 100, false, "spec.max_unavailable");
  if (!unavailable) return unavailable.error();
  if (*surge == 0 && *unavailable == 0) {
    return make_error(ErrorCode::InvalidArgument,
                      "spec.max_surge and spec.max_unavailable cannot both be 0 (a rollout could not progress)");
  }
  return {};
}

Result<int> rollout_count(const std::string& value, int replicas, bool round_up, const char* field) {
  auto bad = [&] {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{} must be a count or a percentage such as 1 or 25% (got '{}')", field, value));
  };
  bool percent = !value.empty() && value.back() == '%';
  std::string digits = percent ? value.substr(0, value.size() - 1) : value;
  if (digits.empty() || digits.size() > 6 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return bad();
  }
  int number = std::stoi(digits);
  if (!percent) return number;
  if (number > 100) return bad();
  int scaled = number * std::max(replicas, 0);
  return round_up ? (scaled + 99) / 100 : scaled / 100;
}

bool same_plan(const DeploymentSpec& a, const DeploymentSpec& b) {
  auto key = [](const DeploymentSpec& spec) {
    return std::tie(spec.model, spec.engine, spec.gpus_per_replica, spec.max_context, spec.max_seqs, spec.vram_mb,
                    spec.engine_args, spec.env, spec.dtype, spec.kv_cache_dtype, spec.gpu_memory_utilization,
                    spec.node_selector, spec.gpu_type, spec.shape.weights_mb, spec.shape.layers, spec.shape.kv_heads,
                    spec.shape.head_dim, spec.shape.overhead_mb);
  };
  return key(a) == key(b);
}

bool sleep_requested(const DeploymentStatus& status) {
  return status.sleep_requested_ms > status.wake_requested_ms;
}

std::string sleep_state(const Deployment& deployment) {
  const auto& status = deployment.status;
  bool asked_to_sleep = sleep_requested(status);
  if (status.idle_since_ms > 0) {
    if (!asked_to_sleep && status.wake_requested_ms >= status.idle_since_ms) return "wake-requested";
    return deployment.spec.on_idle == "stop" || status.evicted ? "stopped" : "asleep";
  }
  return asked_to_sleep ? "sleep-requested" : "awake";
}

std::string hub_repo_key(const std::string& model) {
  std::string text = model;
  for (const char* prefix : {"hf://", "https://huggingface.co/", "huggingface.co/", "hf.co/"}) {
    if (text.rfind(prefix, 0) == 0) {
      text = text.substr(std::char_traits<char>::length(prefix));
      break;
    }
  }
  if (text.empty() || text[0] == '/' || text[0] == '.' || text[0] == '~') return "";
  size_t slash = text.find('/');
  if (slash == std::string::npos || slash == 0) return "";
  size_t end = text.find('/', slash + 1);
  std::string name = text.substr(slash + 1, end == std::string::npos ? std::string::npos : end - slash - 1);
  std::string file = end == std::string::npos ? "" : text.substr(end);
  std::string revision = "main";
  if (size_t at = name.find('@'); at != std::string::npos) {
    revision = name.substr(at + 1);
    name = name.substr(0, at);
  }
  if (name.empty() || revision.empty()) return "";
  return text.substr(0, slash) + "/" + name + "@" + revision + file;
}

}  // namespace nebula::api
