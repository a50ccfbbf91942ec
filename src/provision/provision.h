#pragma once
// Provisioning a node over SSH (`nebula nodes add|upgrade`, `nodes rm --uninstall`) and the
// systemd units of `nebula service install`. The remote machine is reached through the system's
// OpenSSH client, run as a subprocess, so the user's ~/.ssh/config, agent and known_hosts apply.
//
// A run is a list of named steps. Each step that changes the remote machine first records how to
// undo itself; when a later step fails, the undo actions run in reverse and the machine is left as
// it was. Every step compares what is there with what it would write, so a second run with the
// same binary and settings changes nothing.
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "common/result.h"

namespace nebula::provision {

// ---------------------------------------------------------------------------------------------
// Local commands and the remote shell.

struct CommandOutput {
  int exit_code = -1;  // -1 when it was killed (a timeout) or ended by a signal
  std::string out;
  std::string err;
  bool timed_out = false;
};

// Runs argv to completion, stdout and stderr captured apart (each kept up to 1 MiB), stdin from
// stdin_path ("" = /dev/null). Killed after `timeout`.
Result<CommandOutput> run_captured(const std::vector<std::string>& argv, const std::string& stdin_path = "",
                                   std::chrono::milliseconds timeout = std::chrono::minutes(10));

// `text` as one word for a POSIX shell: single-quoted, embedded quotes escaped.
std::string shell_quote(const std::string& text);

// Where scripts run: the seam between the steps and SSH. Production is SshRemote; tests also run
// the steps against a local `sh` in a temporary directory.
class Remote {
 public:
  virtual ~Remote() = default;
  // Runs a POSIX sh script there; stdin from a local file when stdin_path is given. An error is a
  // failure to reach the machine at all; a script that fails is a nonzero exit_code.
  virtual Result<CommandOutput> run(const std::string& script, const std::string& stdin_path = "") = 0;
  // "root@gpu1:22", for messages.
  virtual std::string describe() const = 0;
};

struct SshTarget {
  std::string user;  // "" = as ssh decides (config, then the local user)
  std::string host;
  int port = 0;                      // 0 = as ssh decides (config, then 22)
  std::string identity;              // -i FILE
  std::string config;                // -F FILE
  std::vector<std::string> options;  // -o KEY=VALUE, each
  bool accept_new_host_key = false;  // StrictHostKeyChecking=accept-new instead of yes
  std::chrono::milliseconds command_timeout = std::chrono::minutes(10);
};

// "[USER@]HOST" as typed: refuses what ssh would read as an option or what no host name holds
// (a leading '-', spaces, control characters, an empty user or host).
Result<SshTarget> parse_destination(const std::string& destination);
// A --ssh-option value: KEY=VALUE with a plain key.
Status check_ssh_option(const std::string& option);

class SshRemote final : public Remote {
 public:
  explicit SshRemote(SshTarget target) : target_(std::move(target)) {}
  Result<CommandOutput> run(const std::string& script, const std::string& stdin_path = "") override;
  std::string describe() const override;
  // The ssh command line for a remote command (without running it).
  std::vector<std::string> ssh_argv(const std::string& remote_command) const;
  const SshTarget& target() const { return target_; }

 private:
  SshTarget target_;
};

// The SSH failures a user can act on, recognised in ssh's stderr (exit status 255).
enum class SshFailure { None, UnknownHostKey, ChangedHostKey, AuthenticationRefused, Unreachable, Other };
SshFailure classify_ssh_failure(const CommandOutput& output);

// The host's keys as `ssh-keygen -lf` shows them ("256 SHA256:... [127.0.0.1]:2222 (ED25519)"),
// read with ssh-keyscan; an error when it cannot be read.
Result<std::string> host_key_fingerprints(const SshTarget& target);

// SHA-256 of a local file, hex.
Result<std::string> file_sha256(const std::string& path);

// ---------------------------------------------------------------------------------------------
// systemd units.

enum class Role { Up, Server, Agent };
Result<Role> parse_role(const std::string& name);
const char* role_name(Role role);

struct UnitSpec {
  Role role = Role::Agent;
  std::string binary;             // absolute path of nebula
  std::vector<std::string> args;  // after `nebula ROLE`
  std::string user;               // User=; "" = root
  std::string description;        // "" = one per role
};
// The unit file: Restart= and TimeoutStopSec= per role, and KillMode=process for the agent, whose
// stop leaves its engines running for the next agent to re-adopt (up and server stop theirs).
// Refuses arguments systemd cannot hold (newlines, control characters).
Result<std::string> systemd_unit(const UnitSpec& spec);
// `arg` as one word of an ExecStart= line: quoted when needed, % and $ escaped.
Result<std::string> systemd_quote(const std::string& arg);
std::string unit_name(Role role);  // "nebula-agent.service"

// ---------------------------------------------------------------------------------------------
// The server, as provisioning needs it: join tokens and node readiness. The CLI implements it over
// the management API; tests may fake it.

struct JoinToken {
  std::string id;
  std::string secret;
};

struct NodeState {
  bool exists = false;
  bool ready = false;
  int64_t heartbeat_ms = 0;
};

class Cluster {
 public:
  virtual ~Cluster() = default;
  virtual std::string server_url() const = 0;
  virtual Result<JoinToken> create_join_token(const std::string& description) = 0;
  // True when the token with this id exists and has not expired.
  virtual Result<bool> join_token_valid(const std::string& id) = 0;
  virtual Status revoke_join_token(const std::string& id) = 0;
  virtual Result<NodeState> node(const std::string& name) = 0;
  // Removes the node (force: even while it is Ready); a node that is not there is no error.
  virtual Status remove_node(const std::string& name) = 0;
  // Sets the node's labels (replacing those it had).
  virtual Status set_node_labels(const std::string& name, const std::map<std::string, std::string>& labels) = 0;
};

// ---------------------------------------------------------------------------------------------
// The installation on the remote machine.

enum class ServiceManager { Auto, Systemd, Detached };
Result<ServiceManager> parse_service_manager(const std::string& name);

struct Layout {
  std::string bin_dir = "/usr/local/bin";
  std::string unit_dir = "/etc/systemd/system";
  std::string data_dir = "/var/lib/nebula";
  // Everything under one directory (tests, or a machine where the user owns no system paths).
  static Layout under(const std::string& root);
  std::string binary() const { return bin_dir + "/nebula"; }
  std::string unit_file() const { return unit_dir + "/nebula-agent.service"; }
  std::string config_file() const { return data_dir + "/agent.yaml"; }
  std::string pid_file() const { return data_dir + "/agent.pid"; }
  std::string log_file() const { return data_dir + "/agent.log"; }
};
// Each path must be absolute and plain (no '..', no control characters, no trailing '/').
Status check_layout(const Layout& layout);

struct AddOptions {
  std::string name;  // "" = the remote host name
  std::map<std::string, std::string> labels;
  std::vector<std::string> agent_args;  // more `nebula agent` flags
  std::string local_binary;             // the nebula to copy
  Layout layout;
  ServiceManager manager = ServiceManager::Auto;
  std::chrono::milliseconds ready_timeout = std::chrono::minutes(2);
  // How often the remote agent is checked while waiting (it may have died: port in use).
  std::chrono::milliseconds poll_interval = std::chrono::milliseconds(500);
};

// Agent flags the provisioning sets itself and --agent-args may not: --server, --token, --config,
// --name, --data-dir, and anything that is not a flag at the start.
Status check_agent_args(const std::vector<std::string>& args);

// What a run did, for the local record of provisioned nodes and for tests.
struct Installed {
  std::string name;
  ServiceManager manager = ServiceManager::Detached;
  std::string token_id;
  bool binary_copied = false;
  bool config_changed = false;
  bool restarted = false;
};

// Progress of a run: one line per step ("copy", "binary is current (sha256 ab12...)").
using Progress = std::function<void(const std::string& step, const std::string& message)>;

// A failed step: which one, what went wrong and the remote output that says why.
struct StepError {
  std::string step;
  std::string message;
  std::string remote_output;
  bool rolled_back = false;
  std::string to_string() const;
};

template <typename T>
using StepResult = std::variant<T, StepError>;

// `nebula nodes add`: connect, check the OS and architecture, copy the binary, create a join
// token, write agent.yaml and the service, start it, wait until the node is Ready.
StepResult<Installed> add_node(Remote& remote, Cluster& cluster, const AddOptions& options, const Progress& progress);

struct UpgradeOptions {
  std::string name;
  std::string local_binary;
  Layout layout;
  ServiceManager manager = ServiceManager::Detached;  // as it was installed
  std::chrono::milliseconds ready_timeout = std::chrono::minutes(2);
  std::chrono::milliseconds poll_interval = std::chrono::milliseconds(500);
};
// `nebula nodes upgrade`: copy the new binary and restart the agent (its engines keep running
// and are re-adopted); nothing when the binary is current.
StepResult<Installed> upgrade_node(Remote& remote, Cluster& cluster, const UpgradeOptions& options,
                                   const Progress& progress);

struct UninstallOptions {
  std::string name;
  Layout layout;
  ServiceManager manager = ServiceManager::Detached;
  std::string token_id;
  bool purge = false;  // also the data dir's model cache and logs
};
// `nebula nodes rm --uninstall`: stop the agent and its engines, remove the service, binary and
// agent files, revoke the join token and remove the node.
StepResult<bool> uninstall_node(Remote& remote, Cluster& cluster, const UninstallOptions& options,
                                const Progress& progress);

}  // namespace nebula::provision
