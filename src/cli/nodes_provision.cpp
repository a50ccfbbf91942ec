// `nebula nodes add USER@HOST`, `nodes upgrade NAME|--all` and `nodes rm NAME --uninstall`: nodes
// provisioned over SSH (src/provision). What a node was installed with (how to reach it, where
// its files are) is kept in <data-dir>/nodes/NAME.json on this machine, for upgrade and uninstall.
#include <fmt/format.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli/cli.h"
#include "common/config.h"
#include "provision/provision.h"

namespace nebula::cli {

namespace {

namespace fs = std::filesystem;
using provision::ServiceManager;

// The management API as provisioning needs it.
class ApiCluster final : public provision::Cluster {
 public:
  explicit ApiCluster(const ClientFlags& flags) : client_(flags) {}

  std::string server_url() const override { return client_.server(); }

  Result<provision::JoinToken> create_join_token(const std::string& description) override {
    auto created = client_.call("POST", "/api/v1/tokens", json{{"ttl", "0"}, {"description", description}}.dump());
    if (!created) return created.error();
    return provision::JoinToken{created->value("id", ""), created->value("token", "")};
  }

  Result<bool> join_token_valid(const std::string& id) override {
    auto listing = client_.call("GET", "/api/v1/tokens");
    if (!listing) return listing.error();
    int64_t now =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    for (const auto& item : (*listing)["items"]) {
      if (item.value("id", "") != id) continue;
      int64_t expires = item.value("expires_ms", int64_t{0});
      return expires == 0 || expires > now;
    }
    return false;
  }

  Status revoke_join_token(const std::string& id) override {
    int status = 0;
    auto revoked = client_.call("DELETE", api_path({"tokens", id}), "", &status);
    if (!revoked && status != 404) return revoked.error();
    return {};
  }

  Result<provision::NodeState> node(const std::string& name) override {
    int status = 0;
    auto found = client_.call("GET", api_path({"nodes", name}), "", &status);
    if (!found && status == 404) return provision::NodeState{};
    if (!found) return found.error();
    const json& node_status = (*found)["status"];
    return provision::NodeState{true, node_status.value("ready", false), node_status.value("heartbeat_ms", int64_t{0})};
  }

  Status remove_node(const std::string& name) override {
    int status = 0;
    auto removed = client_.call("DELETE", api_path({"nodes", name}) + "?force=1", "", &status);
    if (!removed && status != 404) return removed.error();
    return {};
  }

  Status set_node_labels(const std::string& name, const std::map<std::string, std::string>& labels) override {
    auto set = client_.call("PUT", api_path({"nodes", name, "labels"}), json{{"labels", labels}}.dump());
    if (!set) return set.error();
    return {};
  }

 private:
  ApiClient client_;
};

// How to reach a provisioned node and where its files are.
struct NodeRecord {
  std::string name;
  std::string user;
  std::string host;
  int port = 0;
  std::string identity;
  std::string ssh_config;
  std::vector<std::string> ssh_options;
  provision::Layout layout;
  ServiceManager manager = ServiceManager::Detached;
  std::string token_id;
  std::string server;
};

std::string records_dir() {
  const char* data_dir = std::getenv("NEBULA_DATA_DIR");
  return (data_dir && *data_dir ? std::string(data_dir) : default_data_dir()) + "/nodes";
}

json record_json(const NodeRecord& record) {
  return json{{"name", record.name},
              {"user", record.user},
              {"host", record.host},
              {"port", record.port},
              {"identity", record.identity},
              {"ssh_config", record.ssh_config},
              {"ssh_options", record.ssh_options},
              {"bin_dir", record.layout.bin_dir},
              {"unit_dir", record.layout.unit_dir},
              {"data_dir", record.layout.data_dir},
              {"service", record.manager == ServiceManager::Systemd ? "systemd" : "detached"},
              {"token_id", record.token_id},
              {"server", record.server}};
}

Status save_record(const NodeRecord& record) {
  std::error_code error;
  fs::create_directories(records_dir(), error);
  ::chmod(records_dir().c_str(), 0700);
  std::string path = records_dir() + "/" + record.name + ".json";
  std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    out << record_json(record).dump(2) << "\n";
    if (!out) return make_error(ErrorCode::Internal, "cannot write " + temp);
  }
  fs::rename(temp, path, error);
  if (error) return make_error(ErrorCode::Internal, "cannot write " + path + ": " + error.message());
  return {};
}

Result<NodeRecord> load_record(const std::string& name) {
  std::string path = records_dir() + "/" + name + ".json";
  std::ifstream in(path);
  if (!in) {
    return make_error(ErrorCode::NotFound,
                      fmt::format("node {} was not added with `nebula nodes add` from here (no {})", name, path));
  }
  std::stringstream text;
  text << in.rdbuf();
  auto parsed = parse_json(text.str());
  if (!parsed || !parsed->is_object()) return make_error(ErrorCode::InvalidArgument, path + ": not a node record");
  try {
    NodeRecord record;
    record.name = parsed->value("name", name);
    record.user = parsed->value("user", "");
    record.host = parsed->value("host", "");
    record.port = parsed->value("port", 0);
    record.identity = parsed->value("identity", "");
    record.ssh_config = parsed->value("ssh_config", "");
    record.ssh_options = parsed->value("ssh_options", std::vector<std::string>{});
    record.layout.bin_dir = parsed->value("bin_dir", record.layout.bin_dir);
    record.layout.unit_dir = parsed->value("unit_dir", record.layout.unit_dir);
    record.layout.data_dir = parsed->value("data_dir", record.layout.data_dir);
    record.manager =
        parsed->value("service", "detached") == "systemd" ? ServiceManager::Systemd : ServiceManager::Detached;
    record.token_id = parsed->value("token_id", "");
    record.server = parsed->value("server", "");
    if (auto valid = provision::check_layout(record.layout); !valid) return valid.error();
    return record;
  } catch (const json::exception& error) {
    return make_error(ErrorCode::InvalidArgument, path + ": " + error.what());
  }
}

provision::SshTarget target_of(const NodeRecord& record) {
  provision::SshTarget target;
  target.user = record.user;
  target.host = record.host;
  target.port = record.port;
  target.identity = record.identity;
  target.config = record.ssh_config;
  target.options = record.ssh_options;
  return target;
}

void print_step(const std::string& step, const std::string& message) {
  std::cout << fmt::format("  {:<9}{}\n", step, message) << std::flush;
}

std::string this_binary() {
  std::error_code error;
  auto path = fs::read_symlink("/proc/self/exe", error);
  return error ? std::string() : path.string();
}

// "a b  c" -> {"a","b","c"}; single and double quotes group words ("--engine-arg 'x y'").
Result<std::vector<std::string>> split_words(const std::string& text) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  char quote = 0;
  for (char c : text) {
    if (quote) {
      if (c == quote) {
        quote = 0;
      } else {
        word += c;
      }
    } else if (c == '\'' || c == '"') {
      quote = c;
      in_word = true;
    } else if (c == ' ' || c == '\t') {
      if (in_word) words.push_back(word);
      word.clear();
      in_word = false;
    } else {
      word += c;
      in_word = true;
    }
  }
  if (quote) return make_error(ErrorCode::InvalidArgument, "--agent-args: an unclosed quote");
  if (in_word) words.push_back(word);
  return words;
}

Result<std::map<std::string, std::string>> parse_labels(const std::vector<std::string>& values) {
  std::map<std::string, std::string> labels;
  for (const auto& value : values) {
    for (const auto& pair : split_commas(value)) {
      auto equals = pair.find('=');
      if (equals == std::string::npos || equals == 0) {
        return make_error(ErrorCode::InvalidArgument, "--labels '" + pair + "': expected KEY=VALUE");
      }
      std::string key = pair.substr(0, equals);
      for (char c : pair) {
        if (std::iscntrl(static_cast<unsigned char>(c)))
          return make_error(ErrorCode::InvalidArgument, "--labels: control characters are not allowed");
      }
      if (key.size() > 63) return make_error(ErrorCode::InvalidArgument, "--labels '" + key + "': key too long");
      labels[key] = pair.substr(equals + 1);
    }
  }
  return labels;
}

bool loopback_host(const std::string& host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || host.rfind("127.", 0) == 0;
}

// http://127.0.0.1:8080 -> true.
bool loopback_url(const std::string& url) {
  auto scheme = url.find("://");
  std::string rest = scheme == std::string::npos ? url : url.substr(scheme + 3);
  std::string host = rest.substr(0, rest.find_first_of("/"));
  if (!host.empty() && host[0] == '[') {
    host = host.substr(0, host.find(']') + 1);
  } else {
    host = host.substr(0, host.find(':'));
  }
  return loopback_host(host);
}

int report(const provision::StepError& error) {
  std::cerr << "error: " << error.to_string() << "\n";
  return 1;
}

}  // namespace

struct NodeProvisioning::State {
  const ClientFlags& flags;
  CLI::App* add = nullptr;
  CLI::App* upgrade = nullptr;
  CLI::App* remove = nullptr;
  // nodes add
  std::string destination;
  int port = 0;
  std::string identity;
  std::string name;
  std::vector<std::string> labels;
  std::string agent_args;
  bool accept_new_host_key = false;
  std::string ssh_config;
  std::vector<std::string> ssh_options;
  std::string remote_dir;
  provision::Layout layout;
  std::string service = "auto";
  std::string timeout = "2m";
  std::string binary;
  // nodes upgrade
  std::string upgrade_name;
  bool all = false;
  // nodes rm
  bool uninstall = false;
  bool purge = false;

  explicit State(const ClientFlags& client_flags) : flags(client_flags) {}
};

NodeProvisioning::NodeProvisioning(CLI::App& nodes, CLI::App& remove, const ClientFlags& flags)
    : state_(std::make_unique<State>(flags)) {
  State& s = *state_;
  s.add = nodes.add_subcommand("add", "Provision a machine over SSH: copy nebula, install and start its agent");
  s.add->add_option("destination", s.destination, "[USER@]HOST, as for ssh")->required();
  s.add->add_option("--port", s.port, "SSH port (default: as ssh decides, 22)")->check(whole_number(1, 65535));
  s.add->add_option("--identity", s.identity, "SSH private key file (ssh -i)")->check(CLI::ExistingFile);
  s.add->add_option("--name", s.name, "Node name (default: the machine's host name)");
  s.add->add_option("--labels", s.labels, "Node labels, KEY=VALUE[,KEY=VALUE] (for placement selectors)")
      ->allow_extra_args(false);
  s.add->add_option("--agent-args", s.agent_args, "More `nebula agent` flags, e.g. \"--sim-gpus 2xH100-80GB\"");
  s.add->add_flag("--accept-new-host-key", s.accept_new_host_key,
                  "Trust the host key of a machine not yet in known_hosts (a changed key is still refused)");
  s.add->add_option("--ssh-config", s.ssh_config, "ssh configuration file (ssh -F)")->check(CLI::ExistingFile);
  s.add->add_option("--ssh-option", s.ssh_options, "ssh option KEY=VALUE (ssh -o), repeatable")
      ->allow_extra_args(false);
  s.add->add_option("--remote-dir", s.remote_dir,
                    "Install everything under this remote directory (DIR/bin, DIR/systemd, DIR/data)");
  s.add->add_option("--bin-dir", s.layout.bin_dir, "Remote directory of the nebula binary")->capture_default_str();
  s.add->add_option("--unit-dir", s.layout.unit_dir, "Remote directory of the systemd unit")->capture_default_str();
  s.add->add_option("--agent-data-dir", s.layout.data_dir, "Remote data dir of the agent")->capture_default_str();
  s.add->add_option("--service", s.service, "auto (systemd where it runs), systemd or detached")->capture_default_str();
  s.add->add_option("--timeout", s.timeout, "How long to wait for the node to be Ready")
      ->check(duration_value(1))
      ->capture_default_str();
  s.add->add_option("--binary", s.binary, "The nebula binary to install (default: this one)")->check(CLI::ExistingFile);

  s.upgrade = nodes.add_subcommand("upgrade", "Copy a new nebula to provisioned nodes and restart their agents");
  s.upgrade->add_option("node", s.upgrade_name, "Node name");
  s.upgrade->add_flag("--all", s.all, "Every node added from this machine, one at a time");
  s.upgrade->add_option("--binary", s.binary, "The nebula binary to install (default: this one)")
      ->check(CLI::ExistingFile);
  s.upgrade->add_option("--timeout", s.timeout, "How long to wait for each node to be Ready again")
      ->check(duration_value(1))
      ->capture_default_str();

  s.remove = &remove;
  remove.add_flag("--uninstall", s.uninstall,
                  "Also stop its agent and engines and remove what `nebula nodes add` installed there");
  remove.add_flag("--purge", s.purge, "With --uninstall: also remove the remote data dir (logs, models)");
}

NodeProvisioning::~NodeProvisioning() = default;

std::optional<int> NodeProvisioning::run(const std::string& removed_node) {
  State& s = *state_;
  std::string binary = s.binary.empty() ? this_binary() : s.binary;
  auto timeout = parse_duration(s.timeout);
  if (!timeout) return usage_error(*s.add, timeout.error().message);

  if (s.add->parsed()) {
    auto target = provision::parse_destination(s.destination);
    if (!target) return usage_error(*s.add, target.error().message);
    target->port = s.port;
    target->identity = s.identity;
    target->config = s.ssh_config;
    target->accept_new_host_key = s.accept_new_host_key;
    for (const auto& option : s.ssh_options) {
      if (auto valid = provision::check_ssh_option(option); !valid) return usage_error(*s.add, valid.error().message);
    }
    target->options = s.ssh_options;
    if (!s.name.empty()) {
      if (auto valid = check_name(s.name); !valid) return usage_error(*s.add, valid.error().message);
    }
    auto labels = parse_labels(s.labels);
    if (!labels) return usage_error(*s.add, labels.error().message);
    auto words = split_words(s.agent_args);
    if (!words) return usage_error(*s.add, words.error().message);
    if (auto valid = provision::check_agent_args(*words); !valid) return usage_error(*s.add, valid.error().message);
    auto manager = provision::parse_service_manager(s.service);
    if (!manager) return usage_error(*s.add, manager.error().message);
    provision::AddOptions options;
    options.name = s.name;
    options.labels = *labels;
    options.agent_args = *words;
    options.local_binary = binary;
    options.layout = s.remote_dir.empty() ? s.layout : provision::Layout::under(s.remote_dir);
    if (auto valid = provision::check_layout(options.layout); !valid) return usage_error(*s.add, valid.error().message);
    options.manager = *manager;
    options.ready_timeout = *timeout;
    ApiCluster cluster(s.flags);
    provision::SshRemote remote(*target);
    std::cout << "Adding " << remote.describe() << " to " << cluster.server_url() << "\n";
    if (loopback_url(cluster.server_url()) && !loopback_host(target->host)) {
      std::cout << "  warning: " << cluster.server_url() << " is a loopback address, which the agent on "
                << target->host << " cannot reach: give --server an address that machine reaches\n";
    }
    auto added = provision::add_node(remote, cluster, options, print_step);
    if (auto* failed = std::get_if<provision::StepError>(&added)) return report(*failed);
    const auto& installed = std::get<provision::Installed>(added);
    NodeRecord record;
    record.name = installed.name;
    record.user = target->user;
    record.host = target->host;
    record.port = target->port;
    record.identity = s.identity.empty() ? "" : fs::absolute(s.identity).string();
    record.ssh_config = s.ssh_config.empty() ? "" : fs::absolute(s.ssh_config).string();
    record.ssh_options = s.ssh_options;
    record.layout = options.layout;
    record.manager = installed.manager;
    record.token_id = installed.token_id;
    record.server = cluster.server_url();
    if (auto saved = save_record(record); !saved) return fail(saved.error().message);
    bool changed = installed.binary_copied || installed.config_changed || installed.restarted;
    std::cout << "node " << installed.name << " is Ready" << (changed ? "" : " (nothing changed)") << "\n";
    return 0;
  }

  if (s.upgrade->parsed()) {
    if (s.all == !s.upgrade_name.empty()) return usage_error(*s.upgrade, "give a node name or --all");
    std::vector<std::string> names;
    if (s.all) {
      std::error_code error;
      for (const auto& entry : fs::directory_iterator(records_dir(), error)) {
        if (entry.path().extension() == ".json") names.push_back(entry.path().stem().string());
      }
      std::sort(names.begin(), names.end());
      if (names.empty()) {
        std::cout << "no nodes were added from this machine (" << records_dir() << " is empty)\n";
        return 0;
      }
    } else {
      if (auto valid = check_name(s.upgrade_name); !valid) return usage_error(*s.upgrade, valid.error().message);
      names.push_back(s.upgrade_name);
    }
    ApiCluster cluster(s.flags);
    for (const auto& name : names) {
      auto record = load_record(name);
      if (!record) return fail(record.error().message);
      provision::SshRemote remote(target_of(*record));
      std::cout << "Upgrading node " << name << " (" << remote.describe() << ")\n";
      provision::UpgradeOptions options;
      options.name = name;
      options.local_binary = binary;
      options.layout = record->layout;
      options.manager = record->manager;
      options.ready_timeout = *timeout;
      auto upgraded = provision::upgrade_node(remote, cluster, options, print_step);
      if (auto* failed = std::get_if<provision::StepError>(&upgraded)) return report(*failed);
      const auto& installed = std::get<provision::Installed>(upgraded);
      std::cout << "node " << name << (installed.restarted ? " upgraded and Ready\n" : " is current\n");
    }
    return 0;
  }

  if (s.uninstall && !removed_node.empty()) {
    auto record = load_record(removed_node);
    if (!record) return fail(record.error().message);
    ApiCluster cluster(s.flags);
    provision::SshRemote remote(target_of(*record));
    std::cout << "Uninstalling node " << removed_node << " (" << remote.describe() << ")\n";
    provision::UninstallOptions options;
    options.name = removed_node;
    options.layout = record->layout;
    options.manager = record->manager;
    options.token_id = record->token_id;
    options.purge = s.purge;
    auto removed = provision::uninstall_node(remote, cluster, options, print_step);
    if (auto* failed = std::get_if<provision::StepError>(&removed)) return report(*failed);
    std::error_code error;
    fs::remove(records_dir() + "/" + removed_node + ".json", error);
    std::cout << "node " << removed_node << " uninstalled and removed\n";
    return 0;
  }
  if (s.purge && !removed_node.empty()) return usage_error(*s.remove, "--purge goes with --uninstall");
  return std::nullopt;
}

}  // namespace nebula::cli
