#include "controlplane/node_admission.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>
#include <tuple>

#include "common/ids.h"
#include "http/http.h"

namespace nebula::controlplane {

namespace {

const std::string kKeysPrefix = std::string(api::kKeyRoot) + "apikeys/";

std::string node_key_name(const std::string& node) {
  return "node/" + node;
}

// Every key issued to the node, revoked ones included.
std::vector<api::ApiKey> node_keys(store::Store& store, const std::string& node) {
  std::vector<api::ApiKey> keys;
  auto listing = store.list(kKeysPrefix);
  if (!listing) return keys;
  for (const auto& kv : listing->kvs) {
    auto document = parse_json(kv.value);
    if (!document) continue;
    auto key = api::api_key_from_json(*document);
    if (key && key->scope == api::scope::kNode && key->display_name == node_key_name(node)) {
      keys.push_back(std::move(*key));
    }
  }
  return keys;
}

bool is_loopback_host(std::string host) {
  if (host.size() > 7 && host.rfind("::ffff:", 0) == 0) host = host.substr(7);
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

// "::ffff:10.0.0.5" (an IPv4 peer on a dual-stack socket) is 10.0.0.5.
std::string plain_address(std::string host) {
  if (host.size() > 7 && host.rfind("::ffff:", 0) == 0 && host.find('.') != std::string::npos) host = host.substr(7);
  std::transform(host.begin(), host.end(), host.begin(), [](unsigned char c) { return std::tolower(c); });
  return host;
}

std::string describe(const std::vector<api::Gpu>& gpus) {
  if (gpus.empty()) return "none";
  std::string text;
  for (const auto& gpu : gpus) {
    if (!text.empty()) text += ", ";
    text += fmt::format("{}: {} {} MiB", gpu.index, gpu.name.empty() ? "?" : gpu.name, gpu.memory_total_mb);
  }
  return text;
}

}  // namespace

bool node_live(const api::Node& node, int64_t now_ms, std::chrono::milliseconds node_timeout) {
  return node.status.ready && now_ms - node.status.heartbeat_ms <= node_timeout.count();
}

std::string node_lease_prefix() {
  return api::store_prefix("nodeleases");
}

std::string node_lease_key(const std::string& node) {
  return api::store_key("nodeleases", node);
}

std::string node_lease_value(int64_t renewed_ms) {
  return json{{"renewed_ms", renewed_ms}}.dump();
}

std::optional<int64_t> parse_node_lease(const std::string& value) {
  auto document = parse_json(value);
  if (!document || !document->is_object()) return std::nullopt;
  auto renewed = document->find("renewed_ms");
  if (renewed == document->end() || !renewed->is_number_integer()) return std::nullopt;
  return renewed->get<int64_t>();
}

Status renew_node_lease(store::Store& store, const std::string& node, int64_t now_ms) {
  auto written = store.put(node_lease_key(node), node_lease_value(now_ms));
  if (!written) return written.error();
  return {};
}

int64_t node_lease_ms(store::Store& store, const std::string& node) {
  auto kv = store.get(node_lease_key(node));
  if (!kv || !kv->has_value()) return 0;
  return parse_node_lease((*kv)->value).value_or(0);
}

std::map<std::string, int64_t> node_leases(store::Store& store) {
  std::map<std::string, int64_t> leases;
  auto listing = store.list(node_lease_prefix());
  if (!listing) return leases;
  const std::string prefix = node_lease_prefix();
  for (const auto& kv : listing->kvs) {
    if (auto renewed = parse_node_lease(kv.value)) leases[kv.key.substr(prefix.size())] = *renewed;
  }
  return leases;
}

bool needs_status_write(const api::NodeStatus& stored, const api::NodeStatus& reported, int64_t now_ms) {
  if (!stored.ready || now_ms - stored.heartbeat_ms >= kNodeStatusRefreshMs || now_ms < stored.heartbeat_ms) {
    return true;
  }
  auto gpu_key = [](const api::Gpu& gpu) {
    return std::tie(gpu.index, gpu.uuid, gpu.name, gpu.memory_total_mb, gpu.memory_used_mb);
  };
  if (stored.gpus.size() != reported.gpus.size()) return true;
  for (size_t i = 0; i < stored.gpus.size(); ++i) {
    if (gpu_key(stored.gpus[i]) != gpu_key(reported.gpus[i])) return true;
  }
  return stored.engines != reported.engines || stored.engine_versions != reported.engine_versions ||
         stored.gpu_probe != reported.gpu_probe || stored.models != reported.models ||
         stored.agent_url != reported.agent_url;
}

void with_lease(api::Node& node, int64_t lease_ms) {
  node.status.heartbeat_ms = std::max(node.status.heartbeat_ms, lease_ms);
}

std::optional<api::ApiKey> current_node_key(store::Store& store, const std::string& node, int64_t now_ms) {
  for (auto& key : node_keys(store, node)) {
    if (!key.revoked && (key.expires_ms == 0 || key.expires_ms > now_ms)) return key;
  }
  return std::nullopt;
}

bool is_node_key(store::Store& store, const std::string& node, const std::string& secret, int64_t now_ms) {
  if (secret.empty()) return false;
  auto key = current_node_key(store, node, now_ms);
  return key && key->hash == sha256_hex(secret);
}

Result<std::vector<std::string>> revoke_node_keys(store::Store& store, const std::string& node,
                                                  const std::function<void(const std::string& key_id)>& on_revoked) {
  std::vector<std::string> revoked;
  for (const auto& key : node_keys(store, node)) {
    if (key.revoked) continue;
    auto written = store::update(store, kKeysPrefix + key.metadata.name,
                                 [](const std::optional<std::string>& current) -> Result<std::optional<std::string>> {
                                   if (!current) return std::optional<std::string>();
                                   auto document = parse_json(*current);
                                   if (!document) return document.error();
                                   auto parsed = api::api_key_from_json(*document);
                                   if (!parsed) return parsed.error();
                                   parsed->revoked = true;
                                   return std::optional<std::string>(api::to_stored_json(*parsed).dump());
                                 });
    if (!written) return written.error();
    revoked.push_back(key.metadata.name);
    if (on_revoked) on_revoked(key.metadata.name);
  }
  return revoked;
}

std::string agent_credential(store::Store& store, const std::string& node, int64_t now_ms) {
  auto key = current_node_key(store, node, now_ms);
  return key ? key->hash : std::string();
}

Status check_gpus(const std::vector<api::Gpu>& gpus) {
  auto refuse = [](const std::string& why) {
    return make_error(ErrorCode::InvalidArgument, "implausible GPU report: " + why);
  };
  if (gpus.size() > kMaxGpusPerNode) {
    return refuse(fmt::format("{} GPUs (at most {} per node)", gpus.size(), kMaxGpusPerNode));
  }
  std::set<int> indices;
  for (const auto& gpu : gpus) {
    if (gpu.index < 0 || gpu.index >= static_cast<int>(kMaxGpusPerNode)) {
      return refuse(fmt::format("GPU index {} (0 to {})", gpu.index, kMaxGpusPerNode - 1));
    }
    if (!indices.insert(gpu.index).second) return refuse(fmt::format("GPU index {} reported twice", gpu.index));
    if (gpu.memory_total_mb < 0 || gpu.memory_total_mb > kMaxGpuMemoryMb) {
      return refuse(fmt::format("GPU {} has memory_total_mb {} (at most {}, 1 TiB)", gpu.index, gpu.memory_total_mb,
                                kMaxGpuMemoryMb));
    }
    if (gpu.memory_used_mb < 0 || gpu.memory_used_mb > kMaxGpuMemoryMb) {
      return refuse(fmt::format("GPU {} has memory_used_mb {}", gpu.index, gpu.memory_used_mb));
    }
    if (!(gpu.utilization >= 0 && gpu.utilization <= 100)) {
      return refuse(fmt::format("GPU {} has utilization {} (0 to 100)", gpu.index, gpu.utilization));
    }
  }
  return {};
}

std::string gpu_change(const std::vector<api::Gpu>& before, const std::vector<api::Gpu>& after) {
  auto identity = [](const std::vector<api::Gpu>& gpus) {
    std::vector<std::tuple<int, std::string, std::string, int64_t>> ids;
    for (const auto& gpu : gpus) ids.emplace_back(gpu.index, gpu.uuid, gpu.name, gpu.memory_total_mb);
    std::sort(ids.begin(), ids.end());
    return ids;
  };
  if (identity(before) == identity(after)) return {};
  return fmt::format("GPUs changed from [{}] to [{}]", describe(before), describe(after));
}

Status check_endpoint(const std::string& endpoint, const std::string& peer) {
  if (endpoint.empty()) return {};
  auto url = http::Url::parse(endpoint);
  if (!url || url->scheme != "http") {
    return make_error(ErrorCode::InvalidArgument, "endpoint '" + endpoint + "' is not an http://HOST:PORT URL");
  }
  std::string host = plain_address(url->host);
  std::string from = plain_address(peer);
  if (host == from || (is_loopback_host(host) && is_loopback_host(from))) return {};
  return make_error(ErrorCode::PermissionDenied,
                    fmt::format("endpoint {} is not on the reporting node: its host must be the node's own "
                                "address ({} as the server sees it)",
                                endpoint, from.empty() ? "unknown" : from));
}

bool loader_env_key(const std::string& key) {
  static const std::set<std::string> exact = {
      "PATH",           "GCONV_PATH",        "GLIBC_TUNABLES",   "LOCPATH",
      "PYTHONPATH",     "PYTHONHOME",        "PYTHONSTARTUP",    "PYTHONUSERBASE",
      "PYTHONWARNINGS", "PYTHONBREAKPOINT",  "PYTHONPLATLIBDIR", "PYTHONEXECUTABLE",
      "NODE_OPTIONS",   "NODE_PATH",         "BASH_ENV",         "ENV",
      "PERL5OPT",       "PERL5LIB",          "PERLLIB",          "RUBYOPT",
      "RUBYLIB",        "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",    "JDK_JAVA_OPTIONS",
  };
  return key.rfind("LD_", 0) == 0 || key.rfind("DYLD_", 0) == 0 || exact.count(key) > 0;
}

Status check_engine_env(const std::map<std::string, std::string>& env, bool keys_required) {
  if (keys_required) return {};
  for (const auto& [key, value] : env) {
    if (loader_env_key(key)) {
      return make_error(ErrorCode::PermissionDenied,
                        "env " + key +
                            " changes how the engine's process is loaded and needs an admin key: start the server "
                            "with --auth keys to set it (docs/security.md)");
    }
  }
  return {};
}

}  // namespace nebula::controlplane
